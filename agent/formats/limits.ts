/**
 * Bounds every reader enforces before trusting a header: a corrupt or hostile image must not make the agent
 * allocate gigabytes, loop forever or read a disk "bigger" than any real one.
 */
export const MAX_VIRTUAL_SIZE = 64 * 1024 ** 4; // 64 TiB
export const MAX_CHAIN_DEPTH = 16;
/** Bytes of metadata tables (L2 tables, grain tables, bitmaps) kept in memory per image. */
export const TABLE_CACHE_BYTES = 32 * 1024 * 1024;
/** Largest table read whole at open (qcow2 L1, VHD BAT, VDI block map): qemu's own L1 limit is 32 MiB. */
export const MAX_TOP_TABLE_BYTES = 64 * 1024 * 1024;
export const SECTOR = 512;
