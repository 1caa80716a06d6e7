import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { crc32c, crc32cNative, crc32cRange, crc32cTable } from '../../src/protocol/crc32c.js';

/** Bit-at-a-time CRC-32C, straight from the definition, to check the sliced tables against. */
function crc32cBitwise(data: Uint8Array, seed = 0): number {
  let crc = ~seed >>> 0;
  for (const byte of data) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return ~crc >>> 0;
}

describe('crc32c', () => {
  it('gives the published check values', () => {
    expect(crc32c(Buffer.from('123456789', 'ascii'))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa);
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
    expect(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i))).toBe(0x46dd794e);
    expect(crc32c(new Uint8Array(0))).toBe(0);
  });

  it('returns an unsigned 32-bit number', () => {
    const crc = crc32c(Buffer.from('123456789', 'ascii'));
    expect(crc).toBeGreaterThan(0x7fffffff);
    expect(Number.isInteger(crc)).toBe(true);
  });

  it('matches the bitwise definition for every length and alignment', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(16), fc.nat(), (bytes, skip, seed) => {
        const start = Math.min(skip, bytes.length);
        const view = bytes.subarray(start);
        const s = seed >>> 0;
        expect(crc32c(view, s)).toBe(crc32cBitwise(view, s));
      }),
      { seed: 42, numRuns: 2000 },
    );
  });

  it('continues from a seed: crc(a ++ b) === crc(b, crc(a))', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), fc.uint8Array({ maxLength: 100 }), (a, b) => {
        const whole = new Uint8Array(a.length + b.length);
        whole.set(a);
        whole.set(b, a.length);
        expect(crc32c(b, crc32c(a))).toBe(crc32c(whole));
      }),
      { seed: 42, numRuns: 1000 },
    );
  });

  it('crc32cRange is crc32c of the same subarray', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(), fc.nat(), (bytes, x, y) => {
        const a = bytes.length === 0 ? 0 : x % (bytes.length + 1);
        const b = bytes.length === 0 ? 0 : y % (bytes.length + 1);
        const [start, end] = a <= b ? [a, b] : [b, a];
        expect(crc32cRange(bytes, start, end)).toBe(crc32c(bytes.subarray(start, end)));
      }),
      { seed: 42, numRuns: 1000 },
    );
  });

  it('changes when any single bit of a page flips', () => {
    const page = Buffer.alloc(4096);
    for (let i = 0; i < page.length; i++) page[i] = (i * 31 + 7) & 0xff;
    const good = crc32c(page);
    for (let bit = 0; bit < page.length * 8; bit += 97) {
      page[bit >> 3]! ^= 1 << (bit & 7);
      expect(crc32c(page)).not.toBe(good);
      page[bit >> 3]! ^= 1 << (bit & 7);
    }
    expect(crc32c(page)).toBe(good);
  });
});

describe('crc32c, native and table-driven', () => {
  it('loads the native implementation on this machine', () => {
    expect(crc32cNative).toBe(true);
  });

  it('agree on long inputs, seeds and ranges (fixed seed)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 9000 }), fc.integer({ min: 0, max: 0xffffffff }), fc.nat(), (bytes, seed, cut) => {
        const buf = Buffer.from(bytes);
        expect(crc32c(buf, seed)).toBe(crc32cTable(buf, 0, buf.length, seed));
        const start = bytes.length === 0 ? 0 : cut % bytes.length;
        expect(crc32cRange(buf, start, buf.length, seed)).toBe(crc32cTable(buf, start, buf.length, seed));
        expect(crc32c(buf)).toBe(crc32cBitwise(buf));
      }),
      { seed: 7, numRuns: 300 },
    );
  });
});
