// Parity over a stripe of data blocks (issue 14: the parity and parity2
// layouts; first step, not yet used by a device). P is the XOR of the data
// blocks; Q is the sum of g^i · D_i over GF(2^8) with the polynomial
// x^8 + x^4 + x^3 + x^2 + 1 (0x11d) and g = 2, as RAID-6 commonly uses. With
// P one lost block comes back; with P and Q any two.

const POLY = 0x11d;
const EXP = new Uint8Array(512);
const LOG = new Uint8Array(256);

(() => {
  let x = 1;
  for (let i = 0; i < 255; i++) {
    EXP[i] = x;
    LOG[x] = i;
    x <<= 1;
    if (x & 0x100) x ^= POLY;
  }
  for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255]!;
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

function sameLength(blocks: readonly Buffer[]): number {
  const n = blocks[0]?.length ?? 0;
  for (const b of blocks) if (b.length !== n) throw new RangeError('the blocks of a stripe have one length');
  return n;
}

/** P: the XOR of the data blocks. */
export function parityP(data: readonly Buffer[]): Buffer {
  const p = Buffer.alloc(sameLength(data));
  for (const d of data) for (let i = 0; i < p.length; i++) p[i]! ^= d[i]!;
  return p;
}

/** Q: the sum of g^i · D_i over the data blocks. */
export function parityQ(data: readonly Buffer[]): Buffer {
  const q = Buffer.alloc(sameLength(data));
  data.forEach((d, k) => {
    const c = gfPow2(k);
    for (let i = 0; i < q.length; i++) q[i]! ^= gfMul(c, d[i]!);
  });
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
    out.forEach((d, i) => {
      if (i !== x) for (let j = 0; j < len; j++) rebuilt[j]! ^= d[j]!;
    });
    out[x] = rebuilt;
    return out;
  }
  if (q === null) throw new RangeError('with no Q, one lost block can come back, and only with P');
  if (lost.length === 1) {
    // P is lost too: D_x = (Q xor sum of the others' g^i·D_i) / g^x.
    const x = lost[0]!;
    const partial = parityQ(out.map((d, i) => (i === x ? Buffer.alloc(len) : d)));
    const gx = gfPow2(x);
    const rebuilt = Buffer.alloc(len);
    for (let j = 0; j < len; j++) rebuilt[j] = gfDiv(q[j]! ^ partial[j]!, gx);
    out[x] = rebuilt;
    return out;
  }
  if (p === null) throw new RangeError('two data blocks lost need both P and Q');
  // Two data blocks x < y lost: with Pxy = P xor the others and Qxy = Q xor
  // the others' g^i·D_i, D_x + D_y = Pxy and g^x·D_x + g^y·D_y = Qxy, so
  // D_x = (Qxy + g^y·Pxy) / (g^x + g^y) and D_y = Pxy + D_x.
  const [x, y] = lost as [number, number];
  const zeroed = out.map((d, i) => (i === x || i === y ? Buffer.alloc(len) : d));
  const pxy = parityP([...zeroed, p]);
  const qPartial = parityQ(zeroed);
  const gx = gfPow2(x);
  const gy = gfPow2(y);
  const denom = gx ^ gy;
  const dx = Buffer.alloc(len);
  const dy = Buffer.alloc(len);
  for (let j = 0; j < len; j++) {
    const qxy = q[j]! ^ qPartial[j]!;
    dx[j] = gfDiv(qxy ^ gfMul(gy, pxy[j]!), denom);
    dy[j] = pxy[j]! ^ dx[j]!;
  }
  out[x] = dx;
  out[y] = dy;
  return out;
}
