import { describe, expect, it } from 'vitest';
import { benchSettings, connectionsFor } from '../../src/bench/run.js';
import { checkTargets, median, medianOfRuns, medianServerCpu, memoryCheck, nsToUs, ratio } from '../../src/bench/stats.js';
import { frameSizes } from '../../src/bench/frames.js';
import { cpuPerOp, cpuShares, type CpuSnapshot } from '../../src/bench/cpu-share.js';
import type { BenchConfigName, BenchOp, CellResult, RunResult } from '../../src/bench/types.js';
import { refusedField } from './helpers/refused-field.js';

function run(opsPerSec: number, p50Us: number, p99Us: number): RunResult {
  return {
    ops: opsPerSec * 3,
    errors: 0,
    firstError: null,
    seconds: 3,
    opsPerSec,
    p50Us,
    p90Us: p50Us,
    p99Us,
    p999Us: p99Us,
    maxUs: p99Us,
    meanUs: p50Us,
    machineBusyPct: 50,
    othersBusyPct: null,
    cpuUsPerOp: {},
    windowMonotonicUs: [0, 0],
    loadAvg1: 1,
  };
}

function cell(config: BenchConfigName, op: BenchOp, inflight: number, opsPerSec: number, p50Us: number): CellResult {
  const runs = [run(opsPerSec, p50Us, p50Us * 3)];
  return { config, op, inflight, connections: 1, target: 'A', requestBytes: 1, replyBytes: 1, pagesStaged: 0, runs, median: medianOfRuns(runs), medianServerCpuUsPerOp: medianServerCpu(runs) };
}

describe('bench statistics', () => {
  it('takes the median of odd and even counts and of nothing', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([10, 1, 4, 2])).toBe(3);
    expect(median([7])).toBe(7);
    expect(median([])).toBeNaN();
  });

  it('takes each figure’s median on its own, not one run’s', () => {
    const m = medianOfRuns([run(100, 50, 900), run(300, 10, 100), run(200, 30, 500)]);
    expect(m).toEqual({ opsPerSec: 200, p50Us: 30, p99Us: 500 });
  });

  it('gives no ratio when a side is missing or not positive', () => {
    expect(ratio(3, 2)).toBe(1.5);
    expect(ratio(undefined, 2)).toBeNull();
    expect(ratio(3, undefined)).toBeNull();
    expect(ratio(3, 0)).toBeNull();
    expect(ratio(Number.NaN, 2)).toBeNull();
  });

  it('checks the issue’s targets, PASS and MISS at the bounds', () => {
    const cells = [
      cell('relay', 'write', 1, 10_000, 100),
      cell('mirrored', 'write', 1, 6_000, 150), // exactly 1.5x the relay: PASS
      cell('single', 'write', 32, 60_000, 500),
      cell('mirrored', 'write', 32, 41_000, 700), // 0.683 of single: MISS; 41k absolute: PASS
      cell('echo', 'read', 32, 100_000, 300),
      cell('mirrored', 'read', 32, 90_000, 330), // exactly 0.9: PASS
    ];
    const t = checkTargets(cells);
    expect(t.map((x) => x.verdict)).toEqual(['PASS', 'MISS', 'PASS', 'PASS']);
    expect(t[0]!.value).toBeCloseTo(1.5);
    expect(t[1]!.value).toBeCloseTo(41 / 60);
    expect(t[2]!.value).toBe(41_000);
    expect(t[3]!.value).toBeCloseTo(0.9);
  });

  it('says n/a for a target whose cells were not measured', () => {
    const t = checkTargets([cell('mirrored', 'write', 32, 39_999, 700)]);
    expect(t.map((x) => x.verdict)).toEqual(['n/a', 'n/a', 'MISS', 'n/a']);
  });

  it('judges memory against the cache size plus the allowed overhead', () => {
    const MiB = 1024 * 1024;
    expect(memoryCheck('mirrored', 'A', { rssBytes: 300 * MiB, cachedBytes: 64 * MiB, cacheBytesMax: 256 * MiB }, 64 * MiB).verdict).toBe('PASS');
    const over = memoryCheck('mirrored', 'B', { rssBytes: 321 * MiB, cachedBytes: 64 * MiB, cacheBytesMax: 256 * MiB }, 64 * MiB);
    expect(over.verdict).toBe('MISS');
    expect(over.overCacheBytes).toBe(65 * MiB);
  });

  it('turns nanoseconds into microseconds with one decimal', () => {
    expect(nsToUs(123_456)).toBe(123.5);
    expect(nsToUs(40)).toBe(0);
  });

  it('sizes the floors’ messages like pagepair’s 4 KiB frames', () => {
    const w = frameSizes('write', 4096);
    const r = frameSizes('read', 4096);
    expect(w.requestBytes).toBeGreaterThan(4096);
    expect(w.requestBytes).toBeLessThan(4096 + 128);
    expect(w.replyBytes).toBeLessThan(128);
    expect(r.requestBytes).toBeLessThan(128);
    expect(r.replyBytes).toBeGreaterThan(4096);
  });
});

describe('bench CPU accounting', () => {
  const snap = (idle: number, total: number, byPid: [number, number][]): CpuSnapshot => ({
    machineIdleMs: idle,
    machineTotalMs: total,
    oursMs: byPid.reduce((sum, [, ms]) => sum + ms, 0),
    byPidMs: new Map(byPid),
  });

  it('splits the machine’s busy time into ours and everyone else’s', () => {
    // 2 cores over 1 s: 2000 ms in all, 500 idle; our two processes used 1200 ms.
    const a = snap(0, 0, [[10, 100], [11, 50]]);
    const b = snap(500, 2000, [[10, 900], [11, 450]]);
    expect(cpuShares(a, b)).toEqual({ machineBusyPct: 75, oursPct: 60, othersPct: 15 });
  });

  it('never gives others a negative share, and says nothing it cannot know', () => {
    expect(cpuShares(snap(0, 0, [[10, 0]]), snap(1000, 2000, [[10, 1500]])).othersPct).toBe(0);
    const unknown = { machineIdleMs: 1000, machineTotalMs: 2000, oursMs: null, byPidMs: new Map<number, number>() };
    expect(cpuShares(snap(0, 0, []), unknown)).toEqual({ machineBusyPct: 50, oursPct: null, othersPct: null });
  });

  it('charges each process’s CPU to the operations, skipping processes seen once', () => {
    const per = cpuPerOp(snap(0, 0, [[10, 100], [11, 0]]), snap(0, 0, [[10, 400], [11, 150], [12, 99]]), 10_000);
    expect([...per]).toEqual([
      [10, 30],
      [11, 15],
    ]);
  });

  it('sums the row’s processes, not the client, and takes the median over runs', () => {
    const r = (client: number, a: number, b: number): RunResult => ({ ...run(1, 1, 1), cpuUsPerOp: { 'bench client': client, 'controller A': a, 'controller B': b } });
    expect(medianServerCpu([r(99, 10, 5), r(1, 30, 30), r(50, 20, 0)])).toBe(20);
    expect(medianServerCpu([run(1, 1, 1)])).toBeNull();
  });
});

describe('bench settings', () => {
  it('fills the defaults of the issue', () => {
    const s = benchSettings({});
    expect(s.runs).toBe(3);
    expect(s.seconds).toBe(3);
    expect(s.inflight).toEqual([1, 32]);
    expect(s.ops).toEqual(['write', 'read']);
    expect(s.configs).toEqual(['echo', 'relay', 'single', 'mirrored', 'redis']);
    expect(s.blockBytes).toBe(4096);
    expect(s.workingSetBytes).toBe(64 * 1024 * 1024);
  });

  it('refuses what makes no sense, naming the option', () => {
    const field = (o: Parameters<typeof benchSettings>[0]): string | undefined => refusedField(() => benchSettings(o));
    expect(field({ inflight: [0] })).toBe('inflight');
    expect(field({ inflight: [] })).toBe('inflight');
    expect(field({ runs: 0 })).toBe('runs');
    expect(field({ seconds: -1 })).toBe('seconds');
    expect(field({ ops: ['append' as BenchOp] })).toBe('ops');
    expect(field({ configs: ['raid' as BenchConfigName] })).toBe('configs');
    expect(field({ blockBytes: 3000 })).toBe('blockBytes');
    expect(field({ workingSetBytes: -4096 })).toBe('workingSetBytes');
    expect(field({ workingSetBytes: 512 * 1024 * 1024, cacheBytesMax: 256 * 1024 * 1024 })).toBe('cacheBytesMax');
    expect(field({ connections: 0 })).toBe('connections');
    expect(field({ runs: 2 })).toBeUndefined();
  });

  it('uses one connection for one operation in flight and at most `connections` otherwise', () => {
    expect(connectionsFor(1, 4)).toBe(1);
    expect(connectionsFor(2, 4)).toBe(2);
    expect(connectionsFor(32, 4)).toBe(4);
  });
});
