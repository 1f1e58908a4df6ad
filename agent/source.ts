/**
 * What the backup pipeline reads: the guest's view of a disk, whatever holds it (a raw file, a block device,
 * stdin, or a container format under agent/formats/). The pipeline knows nothing of formats.
 */
export interface ImageSource {
  /** Bytes in the virtual disk; null when unknown in advance (stdin). */
  readonly size: number | null;
  /** The device's logical sector size: the smallest unit a failing read is narrowed down to. */
  readonly sectorSize: number;
  /** 'raw', 'qcow2', 'vhd', 'vmdk', 'vdi': recorded in the manifest. */
  readonly format: string;
  /** True when `read` can be called at any offset again (files, devices, containers); false for stdin. */
  readonly seekable: boolean;
  /**
   * Fills `buf` from `offset` and returns the bytes read: less than buf.length only at the end of the disk.
   * A sequential source (stdin) only accepts the offset that follows the previous read.
   * Throws an error with code 'EIO' when the medium cannot be read; the pipeline then narrows the range.
   */
  read(buf: Buffer, offset: number): Promise<number>;
  close(): Promise<void>;
}
