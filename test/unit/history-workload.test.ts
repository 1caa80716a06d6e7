// The pieces of the recorded workload that need no controller: the block
// pattern that names its value, and the stall measured from completion times.

import { describe, expect, it } from 'vitest';
import { TimeLog, decodeValue, valuePattern } from '../../src/cli/history-workload.js';

const SEED = 42;
const BYTES = 4096;

describe('valuePattern / decodeValue', () => {
  it('reads back the value a block was written with, and zeros as 0', () => {
    for (const value of [1, 2, 77, 0xffff_ffff]) {
      expect(decodeValue(SEED, 5, valuePattern(SEED, 5, value, BYTES), BYTES)).toEqual({ value });
    }
    expect(decodeValue(SEED, 5, Buffer.alloc(BYTES), BYTES)).toEqual({ value: 0 });
    expect(valuePattern(SEED, 5, 3, BYTES).equals(valuePattern(SEED, 5, 4, BYTES))).toBe(false);
  });

  it('calls a torn block, another block, another seed or garbage corrupt', () => {
    const torn = valuePattern(SEED, 5, 3, BYTES);
    valuePattern(SEED, 5, 4, BYTES).copy(torn, 2048, 2048);
    expect(decodeValue(SEED, 5, torn, BYTES)).toEqual({ corrupt: expect.stringMatching(/byte 2048 differs/) });
    expect(decodeValue(SEED, 6, valuePattern(SEED, 5, 3, BYTES), BYTES)).toEqual({ corrupt: expect.stringMatching(/block 5/) });
    expect(decodeValue(SEED, 5, valuePattern(SEED + 1, 5, 3, BYTES), BYTES)).toEqual({ corrupt: expect.stringMatching(/seed/) });
    const junk = Buffer.alloc(BYTES);
    junk[100] = 1;
    expect(decodeValue(SEED, 5, junk, BYTES)).toEqual({ corrupt: expect.stringMatching(/byte 100/) });
    expect(decodeValue(SEED, 5, Buffer.alloc(BYTES - 1), BYTES)).toEqual({ corrupt: expect.stringMatching(/bytes instead/) });
  });
});

describe('TimeLog', () => {
  const log = new TimeLog();
  for (const t of [10, 20, 30, 500, 510, 900]) log.push(t);

  it('counts the entries in a window', () => {
    expect(log.countBetween(0, 1000)).toBe(6);
    expect(log.countBetween(20, 500)).toBe(2); // (20, 500]
    expect(log.countBetween(901, 2000)).toBe(0);
  });

  it('measures the longest gap from the last entry before the window to its end', () => {
    // From 30 (before the window) to 500.
    expect(log.longestGap(100, 600)).toBe(470);
    // The tail counts: nothing after 900 until the window ends at 2000.
    expect(log.longestGap(100, 2000)).toBe(1100);
    // A window with no entry before it starts counting at its own start.
    expect(new TimeLog().longestGap(5, 25)).toBe(20);
  });

  it('grows past its first buffer', () => {
    const big = new TimeLog();
    for (let i = 0; i < 40_000; i++) big.push(i);
    expect(big.length).toBe(40_000);
    expect(big.countBetween(-1, 39_999)).toBe(40_000);
    expect(big.longestGap(0, 39_999)).toBe(1);
  });
});
