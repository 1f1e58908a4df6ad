import { InvalidInputError } from '../../common/errors.js';

/**
 * The text descriptor of a VMDK (a file of its own, or embedded in a sparse extent): the disk type, the
 * parent link, and the extents that make up the disk in order.
 */
export interface VmdkExtentLine {
  access: string;
  sectors: number;
  type: string;
  fileName: string | null;
  /** Start of the extent's data inside its file, in sectors (FLAT extents). */
  offsetSectors: number;
}

export interface VmdkDescriptor {
  createType: string | null;
  /** True when the descriptor names a parent (a delta / linked-clone disk). */
  hasParent: boolean;
  extents: VmdkExtentLine[];
}

const EXTENT_LINE = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?/;

export function parseVmdkDescriptor(text: string, where: string): VmdkDescriptor {
  let createType: string | null = null;
  let hasParent = false;
  const extents: VmdkExtentLine[] = [];
  for (const rawLine of text.split(/\r?\n/)) {
    const line = rawLine.replace(/\0.*$/s, '').trim();
    if (!line || line.startsWith('#')) continue;
    const kv = /^([A-Za-z.]+)\s*=\s*"?([^"]*)"?$/.exec(line);
    if (kv) {
      const [, key, value] = kv;
      if (key === 'createType') createType = value;
      if (key === 'parentCID' && value.toLowerCase() !== 'ffffffff') hasParent = true;
      if (key === 'parentFileNameHint') hasParent = true;
      continue;
    }
    const m = EXTENT_LINE.exec(line);
    if (m) {
      const sectors = Number(m[2]);
      const offsetSectors = m[5] ? Number(m[5]) : 0;
      if (!Number.isSafeInteger(sectors * 512) || !Number.isSafeInteger(offsetSectors * 512)) {
        throw new InvalidInputError(`VMDK extent size in ${where} is absurd: ${line}`);
      }
      extents.push({ access: m[1], sectors, type: m[3], fileName: m[4] ?? null, offsetSectors });
    }
  }
  return { createType, hasParent, extents };
}
