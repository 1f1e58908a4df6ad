import fastcdc from 'fastcdc-wasm';

/**
 * fastcdc-wasm's get_chunks() through its raw WASM exports. The published wrapper copies the input into WASM
 * memory and, because the Rust side takes `&mut [u8]`, copies all of it back out afterwards, and it mallocs
 * and frees the input buffer on every call: a third of a cut's time on a 16 MiB window. Here the input buffer
 * is allocated once and grown only when a larger range arrives, and nothing is copied back. The cut points
 * are those of get_chunks(); the same WASM function computes them.
 */
interface RawExports {
  memory: WebAssembly.Memory;
  __wbindgen_malloc(size: number): number;
  __wbindgen_free(ptr: number, size: number): void;
  __wbindgen_add_to_stack_pointer(delta: number): number;
  get_chunks(retptr: number, ptr: number, len: number, min: number, avg: number, max: number): void;
}

const wasm = (fastcdc as unknown as { __wasm: RawExports }).__wasm;
let inputPtr = 0;
let inputCapacity = 0;

/** Reserves WASM memory for ranges of up to `bytes`, so the first real window does not pay for growing it. */
export function reserveCutCapacity(bytes: number): void {
  if (bytes <= inputCapacity) return;
  if (inputCapacity > 0) wasm.__wbindgen_free(inputPtr, inputCapacity);
  inputCapacity = 0;
  inputPtr = wasm.__wbindgen_malloc(bytes);
  inputCapacity = bytes;
}

/** Same answer as fastcdc.get_chunks(bytes, ...): 0, each cut, and bytes.length. */
export function cutOffsets(bytes: Uint8Array, min: number, avg: number, max: number): Uint32Array {
  if (bytes.length === 0) return fastcdc.get_chunks(bytes, min, avg, max);
  reserveCutCapacity(bytes.length);
  new Uint8Array(wasm.memory.buffer, inputPtr, bytes.length).set(bytes);
  const retptr = wasm.__wbindgen_add_to_stack_pointer(-16);
  try {
    wasm.get_chunks(retptr, inputPtr, bytes.length, min, avg, max);
    // The result vector was allocated inside the call, which may have grown (and so replaced) the memory buffer.
    const words = new Int32Array(wasm.memory.buffer, retptr, 2);
    const [ptr, len] = [words[0], words[1]];
    const offsets = new Uint32Array(wasm.memory.buffer, ptr, len).slice();
    wasm.__wbindgen_free(ptr, len * 4);
    return offsets;
  } finally {
    wasm.__wbindgen_add_to_stack_pointer(16);
  }
}
