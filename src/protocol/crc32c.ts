// CRC-32C (Castagnoli), the checksum of frames and pages. Node 20 has no
// native CRC-32C (zlib.crc32 is the IEEE polynomial). Long inputs (pages)
// go to @node-rs/crc32 (SSE4.2 / ARMv8 CRC instructions; ~3x faster on a
// 4 KiB page here) when it loads; short ones, and every platform it does not
// load on, use the table-driven slicing-by-8 below, which gives the same
// results (the tests compare the two).

import { createRequire } from 'node:module';

type NativeCrc = (input: Buffer, initialState?: number) => number;

/** Below this many bytes the call into native code costs more than it saves. */
const NATIVE_BYTES_MIN = 256;

const native: NativeCrc | null = loadNative();

function loadNative(): NativeCrc | null {
  try {
    const mod = createRequire(import.meta.url)('@node-rs/crc32') as { crc32c?: NativeCrc };
    return typeof mod.crc32c === 'function' ? mod.crc32c : null;
  } catch {
    return null;
  }
}

/** Whether page-sized checksums run in native code here. */
export const crc32cNative = native !== null;

const POLY_REFLECTED = 0x82f63b78;

// Int32Array, not Uint32Array: values above 2^31 would leave V8's small-integer
// fast path and turn every XOR into floating-point work.
const TABLE = buildTable();

function buildTable(): Int32Array {
  const t = new Int32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY_REFLECTED : c >>> 1;
    t[n] = c;
  }
  // Table k advances a byte through k further zero bytes.
  for (let n = 0; n < 256; n++) {
    let c = t[n]!;
    for (let k = 1; k < 8; k++) {
      c = t[c & 0xff]! ^ (c >>> 8);
      t[k * 256 + n] = c;
    }
  }
  return t;
}

/**
 * CRC-32C of `data`, as an unsigned 32-bit number. Pass a previous result as
 * `seed` to continue it over more bytes: crc32c(b, crc32c(a)) === crc32c(a ++ b).
 */
export function crc32c(data: Uint8Array, seed = 0): number {
  if (native !== null && data.length >= NATIVE_BYTES_MIN) return native(asBuffer(data), seed) >>> 0;
  return crc32cTable(data, 0, data.length, seed);
}

/** CRC-32C of data[start, end), without making a subarray view first. */
export function crc32cRange(data: Uint8Array, start: number, end: number, seed = 0): number {
  if (native !== null && end - start >= NATIVE_BYTES_MIN) return native(asBuffer(data).subarray(start, end), seed) >>> 0;
  return crc32cTable(data, start, end, seed);
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** The table-driven CRC-32C of data[start, end): the reference the native one must match. */
export function crc32cTable(data: Uint8Array, start: number, end: number, seed = 0): number {
  const t = TABLE;
  let crc = ~seed | 0;
  let i = start;
  const end8 = start + ((end - start) & ~7);
  while (i < end8) {
    const lo = crc ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24));
    const hi = data[i + 4]! | (data[i + 5]! << 8) | (data[i + 6]! << 16) | (data[i + 7]! << 24);
    crc =
      t[1792 + (lo & 0xff)]! ^
      t[1536 + ((lo >>> 8) & 0xff)]! ^
      t[1280 + ((lo >>> 16) & 0xff)]! ^
      t[1024 + (lo >>> 24)]! ^
      t[768 + (hi & 0xff)]! ^
      t[512 + ((hi >>> 8) & 0xff)]! ^
      t[256 + ((hi >>> 16) & 0xff)]! ^
      t[hi >>> 24]!;
    i += 8;
  }
  while (i < end) {
    crc = t[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8);
    i++;
  }
  return ~crc >>> 0;
}
