import { writeFile } from 'node:fs/promises';

/**
 * Builds a differencing VHD by hand (qemu cannot create one): a child of `parentName` whose listed blocks
 * hold `sectors` (block-relative sector runs) of a fill byte, with every other sector of those blocks
 * filled with 0xEE garbage that the sector bitmap marks as "not here" and a reader must not return.
 */
export interface ChildBlock {
  block: number;
  runs: [firstSector: number, count: number][];
  fill: number;
}

const BLOCK = 2 * 1024 * 1024;

function checksum(buf: Buffer, at: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) if (i < at || i >= at + 4) sum += buf[i];
  return ~sum >>> 0;
}

export async function writeDifferencingVhd(
  path: string,
  size: number,
  parentName: string,
  blocks: ChildBlock[],
): Promise<void> {
  const entries = Math.ceil(size / BLOCK);
  const locatorAt = 1536;
  const batAt = 2048;
  const batBytes = Math.ceil((entries * 4) / 512) * 512;
  const dataStart = batAt + batBytes;
  const bitmapBytes = 512;
  const blockBytes = bitmapBytes + BLOCK;

  const footer = Buffer.alloc(512);
  footer.write('conectix', 0, 'latin1');
  footer.writeUInt32BE(2, 8);
  footer.writeUInt32BE(0x00010000, 12);
  footer.writeBigUInt64BE(512n, 16);
  footer.write('qem2', 28, 'latin1');
  footer.writeBigUInt64BE(BigInt(size), 40);
  footer.writeBigUInt64BE(BigInt(size), 48);
  footer.writeUInt16BE(65535, 56);
  footer[58] = 16;
  footer[59] = 255;
  footer.writeUInt32BE(4, 60);
  footer.writeUInt32BE(checksum(footer, 64), 64);

  const header = Buffer.alloc(1024);
  header.write('cxsparse', 0, 'latin1');
  header.writeBigUInt64BE(0xffffffffffffffffn, 8);
  header.writeBigUInt64BE(BigInt(batAt), 16);
  header.writeUInt32BE(0x00010000, 24);
  header.writeUInt32BE(entries, 28);
  header.writeUInt32BE(BLOCK, 32);
  Buffer.from(parentName, 'utf16le').swap16().copy(header, 64);
  const locator = Buffer.from(`.\\${parentName}`, 'utf16le');
  header.write('W2ru', 576, 'latin1');
  header.writeUInt32BE(512, 580);
  header.writeUInt32BE(locator.length, 584);
  header.writeBigUInt64BE(BigInt(locatorAt), 592);
  header.writeUInt32BE(checksum(header, 36), 36);

  const bat = Buffer.alloc(batBytes, 0xff);
  const body = Buffer.alloc(blocks.length * blockBytes);
  blocks.forEach((b, i) => {
    bat.writeUInt32BE((dataStart + i * blockBytes) / 512, b.block * 4);
    const at = i * blockBytes;
    body.fill(0xee, at + bitmapBytes, at + blockBytes);
    for (const [first, count] of b.runs) {
      for (let s = first; s < first + count; s++) body[at + (s >>> 3)] |= 0x80 >>> (s & 7);
      body.fill(b.fill, at + bitmapBytes + first * 512, at + bitmapBytes + (first + count) * 512);
    }
  });
  const locatorSector = Buffer.alloc(512);
  locator.copy(locatorSector);
  await writeFile(path, Buffer.concat([footer, header, locatorSector, bat, body, footer]));
}
