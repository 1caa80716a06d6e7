// Stripe parity (issue 14, first step): GF(2^8) arithmetic, P and Q, and a
// stripe coming back from any one lost block (P) or any two (P and Q),
// checked on random stripes by fast-check.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { gfDiv, gfMul, gfPow2, parityP, parityQ, recoverStripe } from '../../src/store/parity.js';

const stripe = fc
  .tuple(fc.integer({ min: 2, max: 10 }), fc.integer({ min: 1, max: 64 }))
  .chain(([k, len]) => fc.array(fc.uint8Array({ minLength: len, maxLength: len }), { minLength: k, maxLength: k }))
  .map((blocks) => blocks.map((b) => Buffer.from(b)));

describe('GF(2^8)', () => {
  it('multiplies and divides as a field: a·b/b = a, a·1 = a, and g has order 255', () => {
    for (let a = 0; a < 256; a++) {
      expect(gfMul(a, 1)).toBe(a);
      for (let b = 1; b < 256; b += 7) expect(gfDiv(gfMul(a, b), b)).toBe(a);
    }
    const seen = new Set<number>();
    for (let i = 0; i < 255; i++) seen.add(gfPow2(i));
    expect(seen.size).toBe(255);
    expect(gfPow2(255)).toBe(1);
    expect(gfMul(0x80, 2)).toBe(0x1d); // x^8 reduced by 0x11d
  });
});

describe('stripe parity', () => {
  it('with P, any one lost data block comes back', () => {
    fc.assert(
      fc.property(stripe, fc.nat(), (data, pick) => {
        const lost = pick % data.length;
        const got = recoverStripe(data.map((d, i) => (i === lost ? null : d)), parityP(data), null);
        expect(got[lost]).toEqual(data[lost]);
      }),
      { seed: 1, numRuns: 300 },
    );
  });

  it('with P and Q, any two lost blocks (data, P or Q) come back', () => {
    fc.assert(
      fc.property(stripe, fc.nat(), fc.nat(), (data, a, b) => {
        const n = data.length + 2; // data, then P, then Q
        const x = a % n;
        const y = (x + 1 + (b % (n - 1))) % n;
        const p = parityP(data);
        const q = parityQ(data);
        const gone = new Set([x, y]);
        const got = recoverStripe(
          data.map((d, i) => (gone.has(i) ? null : d)),
          gone.has(data.length) ? null : p,
          gone.has(data.length + 1) ? null : q,
        );
        expect(got).toEqual(data);
      }),
      { seed: 2, numRuns: 500 },
    );
  });

  it('refuses what parity cannot restore', () => {
    const data = [Buffer.alloc(4, 1), Buffer.alloc(4, 2), Buffer.alloc(4, 3)];
    expect(() => recoverStripe([null, null, null], parityP(data), parityQ(data))).toThrow(/3 data blocks lost/);
    expect(() => recoverStripe([null, null, data[2]!], parityP(data), null)).toThrow(/with no Q/);
    expect(() => recoverStripe([null, data[1]!, data[2]!], null, null)).toThrow(/with no Q/);
    expect(() => recoverStripe([data[0]!, Buffer.alloc(3)], null, null)).toThrow(/one length/);
  });
});
