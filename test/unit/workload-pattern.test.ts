import { describe, expect, it } from 'vitest';
import { Ledger, UNKNOWN_WRITE } from '../../src/workload/ledger.js';
import { PatternMaker, WRITE_ZERO } from '../../src/workload/pattern.js';

const CHUNK = 4096;

describe('self-describing block data', () => {
  const maker = new PatternMaker(0xabcdef01, CHUNK);

  it('reads back the write a chunk holds', () => {
    const buf = Buffer.alloc(3 * CHUNK);
    maker.fill(buf, 0, buf.length, 10, 77);
    for (let i = 0; i < 3; i++) expect(maker.check(buf, i * CHUNK, 10 + i)).toEqual({ writeNo: 77 });
  });

  it('different writes and different chunks give different bytes', () => {
    const a = Buffer.alloc(CHUNK);
    const b = Buffer.alloc(CHUNK);
    const c = Buffer.alloc(CHUNK);
    maker.fill(a, 0, CHUNK, 5, 1);
    maker.fill(b, 0, CHUNK, 5, 2);
    maker.fill(c, 0, CHUNK, 6, 1);
    expect(a.equals(b)).toBe(false);
    expect(a.subarray(16).equals(b.subarray(16))).toBe(false);
    expect(a.subarray(16).equals(c.subarray(16))).toBe(false);
  });

  it('zeros are write #0; anything else without a header is corrupt', () => {
    const buf = Buffer.alloc(CHUNK);
    expect(maker.check(buf, 0, 3)).toEqual({ writeNo: WRITE_ZERO });
    buf[100] = 1;
    expect(maker.check(buf, 0, 3)).toEqual({ corrupt: 'no header and not zeros' });
  });

  it("catches another chunk's data, another run's data, and a torn chunk", () => {
    const buf = Buffer.alloc(CHUNK);
    maker.fill(buf, 0, CHUNK, 8, 5);
    expect(maker.check(buf, 0, 9)).toMatchObject({ corrupt: expect.stringMatching(/holds chunk 8's data/) });
    const other = new PatternMaker(0x12345678, CHUNK);
    expect(other.check(buf, 0, 8)).toMatchObject({ corrupt: expect.stringMatching(/another run/) });
    const torn = Buffer.alloc(CHUNK);
    maker.fill(torn, 0, CHUNK, 8, 6);
    buf.copy(torn, 2048, 2048);
    expect(maker.check(torn, 0, 8)).toMatchObject({ corrupt: expect.stringMatching(/byte 2048 differs/) });
  });
});

describe('the ledger of what each grain may hold', () => {
  it('one operation per grain at a time', () => {
    const l = new Ledger(8, 'zero');
    expect(l.tryReserve(2, 3)).toBe(true);
    expect(l.tryReserve(4, 2)).toBe(false);
    expect(l.tryReserve(5, 2)).toBe(true);
    l.release(2, 3);
    expect(l.tryReserve(0, 3)).toBe(true);
  });

  it('an acknowledged write is the only value; a failed one adds a possibility until a read settles it', () => {
    const l = new Ledger(4, 'zero');
    expect(l.allowed(1)).toEqual([WRITE_ZERO]);
    l.writeAcked(0, 2, 5);
    expect(l.allowed(1)).toEqual([5]);
    l.writeFailed(1, 1, 6);
    expect(l.allowed(1)).toEqual([5, 6]);
    expect(l.isAllowed(1, 6)).toBe(true);
    expect(l.isAllowed(1, 4)).toBe(false);
    l.settle(1, 6);
    expect(l.allowed(1)).toEqual([6]);
    l.writeFailed(0, 1, 7);
    l.writeAcked(0, 1, 8);
    expect(l.allowed(0)).toEqual([8]);
  });

  it('a reused allocation holds unknown data until this run writes it', () => {
    const l = new Ledger(2, 'unknown');
    expect(l.allowed(0)).toBeNull();
    expect(l.isAllowed(0, 12345)).toBe(true);
    l.writeFailed(0, 1, 3);
    expect(l.allowed(0)).toBeNull();
    l.writeAcked(0, 1, 4);
    expect(l.allowed(0)).toEqual([4]);
    expect(UNKNOWN_WRITE).toBe(0xffff_ffff);
  });
});
