import { describe, expect, it } from 'vitest';
import { Prng } from '../../src/core/prng.js';
import { makePicker, makeSizePicker, zipfCdf } from '../../src/workload/distribution.js';
import { parseBlockSizes } from '../../src/workload/job.js';

const DRAWS = 100_000;

function histogram(pick: () => number, positions: number): Uint32Array {
  const counts = new Uint32Array(positions);
  for (let i = 0; i < DRAWS; i++) counts[pick()]!++;
  return counts;
}

describe('access distributions (seed 7)', () => {
  it('uniform covers every position about equally', () => {
    const p = makePicker({ kind: 'uniform' }, new Prng(7));
    const counts = histogram(() => p.pick(4096, 100), 100);
    for (const c of counts) expect(Math.abs(c - DRAWS / 100)).toBeLessThan(DRAWS / 100 / 4);
  });

  it('zipf 0.99 draws rank r in proportion to 1/(r+1)^0.99', () => {
    const n = 1000;
    const p = makePicker({ kind: 'zipf', theta: 0.99 }, new Prng(7));
    const counts = histogram(() => p.pick(4096, n), n);
    const cdf = zipfCdf(n, 0.99);
    // The hottest block alone takes about 1/H(n, theta) of the draws (~13%).
    expect(counts[0]! / DRAWS).toBeCloseTo(cdf[0]!, 2);
    const top10pct = counts.slice(0, n / 10).reduce((s, c) => s + c, 0) / DRAWS;
    expect(top10pct).toBeCloseTo(cdf[n / 10 - 1]!, 2);
    expect(top10pct).toBeGreaterThan(0.6);
    expect(counts[0]!).toBeGreaterThan(counts[1]!);
    expect(counts[1]!).toBeGreaterThan(counts[10]!);
    expect(counts[10]!).toBeGreaterThan(counts[500]!);
  });

  it('a steeper zipf is more skewed', () => {
    const share0 = (theta: number): number => {
      const p = makePicker({ kind: 'zipf', theta }, new Prng(7));
      let hits = 0;
      for (let i = 0; i < DRAWS; i++) if (p.pick(4096, 1000) === 0) hits++;
      return hits / DRAWS;
    };
    expect(share0(1.2)).toBeGreaterThan(share0(0.99) + 0.05);
    expect(share0(0.5)).toBeLessThan(0.05);
  });

  it('hotspot 90/10 sends 90% of the operations to the first 10% of the positions, spread evenly there', () => {
    const p = makePicker({ kind: 'hotspot', opsPct: 90, blocksPct: 10 }, new Prng(7));
    const counts = histogram(() => p.pick(4096, 1000), 1000);
    const hot = counts.slice(0, 100).reduce((s, c) => s + c, 0) / DRAWS;
    expect(hot).toBeGreaterThan(0.89);
    expect(hot).toBeLessThan(0.91);
    // Within the hot set no position is favoured.
    for (const c of counts.slice(0, 100)) expect(Math.abs(c - (0.9 * DRAWS) / 100)).toBeLessThan((0.9 * DRAWS) / 100 / 3);
  });

  it('sequential walks the positions in order and wraps', () => {
    const p = makePicker({ kind: 'sequential' }, new Prng(7));
    expect(Array.from({ length: 10 }, () => p.pick(4096, 4))).toEqual([0, 1, 2, 3, 0, 1, 2, 3, 0, 1]);
  });

  it('sequential with a mix of sizes keeps one cursor: each operation starts at or after where the last ended', () => {
    const p = makePicker({ kind: 'sequential' }, new Prng(7));
    const partBytes = 64 * 1024;
    const sizes = [4096, 8192, 4096, 16384, 4096, 4096, 8192];
    const offsets = sizes.map((s) => p.pick(s, partBytes / s) * s);
    expect(offsets).toEqual([0, 8192, 16384, 32768, 49152, 53248, 57344]);
    for (const [i, s] of sizes.entries()) expect(offsets[i]! % s).toBe(0);
  });
});

describe('block size mix', () => {
  it('picks each size by its share (seed 7)', () => {
    const pick = makeSizePicker(parseBlockSizes('4k:70,64k:30'), new Prng(7));
    let small = 0;
    for (let i = 0; i < DRAWS; i++) if (pick() === 4096) small++;
    expect(small / DRAWS).toBeGreaterThan(0.69);
    expect(small / DRAWS).toBeLessThan(0.71);
  });

  it('one size is always that size', () => {
    const pick = makeSizePicker(parseBlockSizes('8k'), new Prng(7));
    expect(new Set(Array.from({ length: 100 }, pick))).toEqual(new Set([8192]));
  });
});
