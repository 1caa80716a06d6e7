// Parity over a stripe of data blocks (issue 14: the parity and parity2
// layouts, used by parity-device.ts). P is the XOR of the data blocks; Q is
// the sum of g^i · D_i over GF(2^8) with the polynomial
// x^8 + x^4 + x^3 + x^2 + 1 (0x11d) and g = 2, as RAID-6 commonly uses. With
// P one lost block comes back; with P and Q any two.
//
// The byte loops work on whole Buffers in place (xorInto, mulXorInto,
// mulInto): no closure per byte, 32-bit words where both buffers are
// aligned, and a product table of 64 KiB built once, so a row of a pool is
// a few passes over its chunks.

const POLY = 0x11d;
const EXP = new Uint8Array(512);
const LOG = new Uint8Array(256);
/** MUL[a * 256 + b] = a · b. */
const MUL = new Uint8Array(256 * 256);

(() => {
  let x = 1;
  for (let i = 0; i < 255; i++) {
    EXP[i] = x;
    LOG[x] = i;
    x <<= 1;
    if (x & 0x100) x ^= POLY;
  }
  for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255]!;
  for (let a = 1; a < 256; a++) for (let b = 1; b < 256; b++) MUL[a * 256 + b] = EXP[LOG[a]! + LOG[b]!]!;
})();

/** a · b in GF(2^8). */
export function gfMul(a: number, b: number): number {
  if (a === 0 || b === 0) return 0;
  return EXP[LOG[a]! + LOG[b]!]!;
}

/** a / b in GF(2^8); b must not be 0. */
export function gfDiv(a: number, b: number): number {
  if (b === 0) throw new RangeError('division by zero in GF(2^8)');
  if (a === 0) return 0;
  return EXP[LOG[a]! + 255 - LOG[b]!]!;
}

/** g^i. */
export function gfPow2(i: number): number {
  return EXP[i % 255]!;
}

function words(b: Buffer): Int32Array | null {
  return (b.byteOffset & 3) === 0 && (b.length & 3) === 0 ? new Int32Array(b.buffer, b.byteOffset, b.length >> 2) : null;
}

/** dst ^= src, byte for byte over dst's length (src at least as long). */
export function xorInto(dst: Buffer, src: Buffer): void {
  const n = dst.length;
  if (src.length < n) throw new RangeError('xorInto: the source is shorter than the destination');
  const dw = words(dst);
  const sw = dw === null ? null : words(src.length === n ? src : src.subarray(0, n));
  if (dw !== null && sw !== null) {
    for (let i = 0; i < dw.length; i++) dw[i]! ^= sw[i]!;
    return;
  }
  for (let i = 0; i < n; i++) dst[i]! ^= src[i]!;
}

/** dst ^= c · src over GF(2^8). */
export function mulXorInto(dst: Buffer, src: Buffer, c: number): void {
  if (c === 0) return;
  if (c === 1) return xorInto(dst, src);
  const n = dst.length;
  if (src.length < n) throw new RangeError('mulXorInto: the source is shorter than the destination');
  const row = MUL.subarray(c * 256, c * 256 + 256);
  for (let i = 0; i < n; i++) dst[i]! ^= row[src[i]!]!;
}

/** dst = c · dst over GF(2^8). */
export function mulInPlace(dst: Buffer, c: number): void {
  if (c === 1) return;
  const row = MUL.subarray(c * 256, c * 256 + 256);
  for (let i = 0; i < dst.length; i++) dst[i] = row[dst[i]!]!;
}

function sameLength(blocks: readonly Buffer[]): number {
  const n = blocks[0]?.length ?? 0;
  for (const b of blocks) if (b.length !== n) throw new RangeError('the blocks of a stripe have one length');
  return n;
}

/** P: the XOR of the data blocks. */
export function parityP(data: readonly Buffer[]): Buffer {
  const p = Buffer.alloc(sameLength(data));
  for (const d of data) xorInto(p, d);
  return p;
}

/** Q: the sum of g^i · D_i over the data blocks. */
export function parityQ(data: readonly Buffer[]): Buffer {
  const q = Buffer.alloc(sameLength(data));
  for (let k = 0; k < data.length; k++) mulXorInto(q, data[k]!, gfPow2(k));
  return q;
}

/**
 * The stripe with its lost blocks filled in. `data` holds the data blocks
 * (null where lost), `p` and `q` the parities (null where lost or not kept:
 * a single-parity layout has no Q). At most two blocks of data, P and Q
 * may be lost, and only one when there is no Q. Returns the data blocks.
 */
export function recoverStripe(data: readonly (Buffer | null)[], p: Buffer | null, q: Buffer | null): Buffer[] {
  const lost = data.flatMap((d, i) => (d === null ? [i] : []));
  const len = sameLength([...data, p, q].filter((b): b is Buffer => b !== null));
  const out = data.map((d) => (d === null ? Buffer.alloc(len) : d));
  if (lost.length === 0) return out;
  if (lost.length > 2) throw new RangeError(`${lost.length} data blocks lost: parity restores two at most`);
  if (lost.length === 1 && p !== null) {
    // D_x = P xor the other data blocks.
    const x = lost[0]!;
    const rebuilt = Buffer.from(p);
    for (let i = 0; i < out.length; i++) if (i !== x) xorInto(rebuilt, out[i]!);
    out[x] = rebuilt;
    return out;
  }
  if (q === null) throw new RangeError('with no Q, one lost block can come back, and only with P');
  if (lost.length === 1) {
    // P is lost too: D_x = (Q xor sum of the others' g^i·D_i) / g^x.
    const x = lost[0]!;
    const rebuilt = Buffer.from(q);
    for (let i = 0; i < out.length; i++) if (i !== x) mulXorInto(rebuilt, out[i]!, gfPow2(i));
    mulInPlace(rebuilt, gfDiv(1, gfPow2(x)));
    out[x] = rebuilt;
    return out;
  }
  if (p === null) throw new RangeError('two data blocks lost need both P and Q');
  // Two data blocks x < y lost: with Pxy = P xor the others and Qxy = Q xor
  // the others' g^i·D_i, D_x + D_y = Pxy and g^x·D_x + g^y·D_y = Qxy, so
  // D_x = (Qxy + g^y·Pxy) / (g^x + g^y) and D_y = Pxy + D_x.
  const [x, y] = lost as [number, number];
  const pxy = Buffer.from(p);
  const dx = Buffer.from(q); // Qxy, then Qxy + g^y·Pxy, then D_x
  for (let i = 0; i < out.length; i++) {
    if (i === x || i === y) continue;
    xorInto(pxy, out[i]!);
    mulXorInto(dx, out[i]!, gfPow2(i));
  }
  const gy = gfPow2(y);
  mulXorInto(dx, pxy, gy);
  mulInPlace(dx, gfDiv(1, gfPow2(x) ^ gy));
  xorInto(pxy, dx); // now D_y
  out[x] = dx;
  out[y] = pxy;
  return out;
}
