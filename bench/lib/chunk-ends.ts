import type { FileHandle } from 'node:fs/promises';
import { cutOffsets } from '../../agent/backup/fastcdc-direct.js';
import { cutWindow } from '../../agent/backup/window-cutter.js';
import { zeroRunCutter } from '../../agent/backup/zero-runs.js';
import type { ChunkerParams } from '../../repo-engine/manifest-codec.js';

const WINDOW = 16 * 1024 * 1024;

/** Chunk ends of one whole-image fastcdc pass, windowed as the agent cuts (untimed). */
export async function chunkEnds(file: FileHandle, size: number, chunker: ChunkerParams): Promise<number[]> {
  const pad = chunker.max;
  const cut = zeroRunCutter(cutOffsets);
  let slot = Buffer.alloc(pad + WINDOW);
  let other = Buffer.alloc(pad + WINDOW);
  const ends: number[] = [];
  let carryFrom = pad;
  let carryEnd = pad;
  for (let offset = 0; ; ) {
    const fresh = Math.min(WINDOW, size - offset);
    const carry = carryEnd - carryFrom;
    other.copy(slot, pad - carry, carryFrom, carryEnd);
    await file.read(slot, pad, fresh, offset);
    const eof = offset + fresh >= size;
    const from = pad - carry;
    const to = pad + fresh;
    const imageOffset = offset - carry;
    const w = cutWindow(
      { buf: slot, from, to, final: eof, imageOffset, imageSize: size, chunker, previous: null },
      cut,
      () => new Uint8Array(32),
    );
    for (const end of w.ends) ends.push(offset + (end - pad));
    [slot, other] = [other, slot];
    carryFrom = w.carryFrom;
    carryEnd = to;
    offset += fresh;
    if (eof) break;
  }
  return ends;
}
