// The client-level pools benchmark's pure parts: which layouts a --layouts
// list names, the store section each layout's controllers get, the median,
// and the table with its ratios to one device. No timing.

import { describe, expect, it } from 'vitest';
import { formatPoolClientTable, medianOf, parsePoolLayouts, poolStoreSection, type PoolClientRow } from '../../src/bench/pool-clients.js';
import type { RunResult } from '../../src/bench/types.js';

function run(opsPerSec: number, errors = 0): RunResult {
  return {
    ops: opsPerSec,
    errors,
    firstError: errors > 0 ? 'IO_ERROR: gone' : null,
    seconds: 1,
    opsPerSec,
    p50Us: 100,
    p90Us: 200,
    p99Us: 400,
    p999Us: 800,
    maxUs: 1000,
    meanUs: 120,
    machineBusyPct: 50,
    othersBusyPct: 0,
    cpuUsPerOp: {},
    windowMonotonicUs: [0, 1],
    loadAvg1: 1,
  };
}

describe('pool benchmark, client level', () => {
  it('takes known layouts in the table order, each once, and refuses others', () => {
    expect(parsePoolLayouts('parity2-5, one,one')).toEqual(['one', 'parity2-5']);
    expect(() => parsePoolLayouts('raid5')).toThrow(/unknown layout "raid5"/);
    expect(() => parsePoolLayouts(' , ')).toThrow(/no layouts/);
  });

  it('gives one device a store file and each pool its members, chunk only for parity', () => {
    expect(poolStoreSection('one', '/t', 256, 65536)).toEqual({ section: { path: '/t/one.img', sizeBytes: 256 }, memberPaths: ['/t/one.img'] });
    const mirror = poolStoreSection('mirror-2', '/t', 256, 65536);
    expect(mirror.section).toEqual({ pool: { layout: 'mirror', devices: ['/t/d0.img', '/t/d1.img'], deviceBytes: 256 } });
    const p2 = poolStoreSection('parity2-5', '/t', 256, 65536);
    expect(p2.memberPaths).toHaveLength(5);
    expect(p2.section).toMatchObject({ pool: { layout: 'parity2', chunkBytes: 65536 } });
  });

  it('takes the median of odd and even counts', () => {
    expect(medianOf([3, 1, 2])).toBe(2);
    expect(medianOf([4, 1, 3, 2])).toBe(2.5);
    expect(Number.isNaN(medianOf([]))).toBe(true);
  });

  it('prints medians with ratios to one device healthy, and - where nothing was measured', () => {
    const rows: PoolClientRow[] = [
      { layout: 'one', healthy: [run(10_000), run(12_000), run(8_000)], degraded: null },
      { layout: 'parity-4', healthy: [run(5_000)], degraded: [run(2_500, 3)] },
    ];
    expect(formatPoolClientTable(rows).split('\n')).toEqual([
      'layout    writes/s  ratio  degraded  ratio  errors',
      'one         10,000   1.00         -      -       0',
      'parity-4     5,000   0.50     2,500   0.25       3',
    ]);
    // Without the one-device row there is nothing to divide by.
    expect(formatPoolClientTable(rows.slice(1)).split('\n')[1]).toBe('parity-4     5,000      -     2,500      -       3');
  });
});
