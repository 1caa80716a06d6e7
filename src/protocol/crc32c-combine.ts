// CRC-32C of a concatenation from the CRCs of its parts: crc(A ++ B) from
// crc(A), crc(B) and the length of B, without reading any bytes. The codec
// uses it to checksum a frame whose page data already has a known CRC (a
// cached page carries its own), so a 4 KiB page is not read a second time.
//
// The method is the usual one for reflected CRCs: appending len(B) zero bytes
// to A multiplies its CRC by x^(8 len(B)) modulo the polynomial; B's CRC is
// then XORed in (the initial value and final XOR cancel out).

const POLY_REFLECTED = 0x82f63b78;

/** a * b modulo the CRC polynomial (bit-reflected representation). */
function multModP(a: number, b: number): number {
  let m = 0x8000_0000;
  let p = 0;
  for (;;) {
    if ((a & m) !== 0) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY_REFLECTED : b >>> 1;
  }
  return p >>> 0;
}

/** X2N[k] = x^(2^k) modulo the polynomial. */
const X2N: number[] = (() => {
  const table: number[] = [];
  let p = 0x4000_0000; // x^1
  table.push(p);
  for (let k = 1; k < 64; k++) {
    p = multModP(p, p);
    table.push(p);
  }
  return table;
})();

/** x^(8 n) modulo the polynomial: the operator that appends n zero bytes. */
function zeroBytesOperator(n: number): number {
  let p = 0x8000_0000; // x^0
  let k = 3; // 8 = 2^3
  while (n > 0) {
    if (n % 2 === 1) p = multModP(X2N[k]!, p);
    n = Math.floor(n / 2);
    k++;
  }
  return p;
}

/**
 * Multiplying by a fixed operator is linear in the other factor, so it can be
 * tabled a byte at a time: four lookups instead of a 32-step loop. A table
 * takes ~1000 multiplications to build, so only lengths that recur get one:
 * powers of two, which page sizes are (at most one table per bit).
 */
const tables: (Int32Array | undefined)[] = [];

/** Lengths crc32cCombine is fast for: a power of two from 2^9 (512 bytes) to 2^30. */
export function combinesFast(length: number): boolean {
  return length >= 512 && length <= 0x4000_0000 && (length & (length - 1)) === 0;
}

function operatorTable(lengthB: number): Int32Array {
  const bit = Math.log2(lengthB);
  let t = tables[bit];
  if (t !== undefined) return t;
  const op = zeroBytesOperator(lengthB);
  t = new Int32Array(4 * 256);
  for (let k = 0; k < 4; k++) {
    for (let v = 0; v < 256; v++) t[k * 256 + v] = multModP(op, (v << (8 * k)) >>> 0);
  }
  tables[bit] = t;
  return t;
}

/**
 * CRC-32C of A ++ B, given crcA = crc32c(A), crcB = crc32c(B) and
 * lengthB = B.length (a safe non-negative integer). Fast (four table
 * lookups) when combinesFast(lengthB); a few microseconds otherwise.
 */
export function crc32cCombine(crcA: number, crcB: number, lengthB: number): number {
  if (lengthB === 0) return crcA >>> 0;
  if (combinesFast(lengthB)) {
    const t = operatorTable(lengthB);
    return (t[crcA & 0xff]! ^ t[256 + ((crcA >>> 8) & 0xff)]! ^ t[512 + ((crcA >>> 16) & 0xff)]! ^ t[768 + (crcA >>> 24)]! ^ crcB) >>> 0;
  }
  return (multModP(zeroBytesOperator(lengthB), crcA >>> 0) ^ crcB) >>> 0;
}
