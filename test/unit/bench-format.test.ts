import { describe, expect, it } from 'vitest';
import { benchOptionsFromCli, formatBench } from '../../src/cli/bench.js';
import { benchSettings, JOURNAL_NOTE } from '../../src/bench/run.js';
import { checkTargets, medianOfRuns, medianServerCpu, memoryCheck } from '../../src/bench/stats.js';
import { summarizeProfile, type CpuProfile } from '../../src/bench/cpu-profile.js';
import type { BenchConfigName, BenchOp, BenchReport, CellResult, RunResult } from '../../src/bench/types.js';
import { refusedField } from './helpers/refused-field.js';

const MiB = 1024 * 1024;

function run(opsPerSec: number, p50Us: number, errors = 0): RunResult {
  return {
    ops: opsPerSec,
    errors,
    firstError: errors > 0 ? 'BUSY: too many' : null,
    seconds: 1,
    opsPerSec,
    p50Us,
    p90Us: p50Us * 2,
    p99Us: p50Us * 4,
    p999Us: p50Us * 8,
    maxUs: p50Us * 10,
    meanUs: p50Us,
    machineBusyPct: 60,
    othersBusyPct: 12,
    cpuUsPerOp: { 'bench client': 20, 'mirrored controller A': 30, 'mirrored controller B': 25 },
    windowMonotonicUs: [0, 0],
    loadAvg1: 0.5,
  };
}

function cell(config: BenchConfigName, op: BenchOp, inflight: number, opsPerSec: number, p50Us: number, errors = 0): CellResult {
  const runs = [run(opsPerSec, p50Us, errors)];
  return { config, op, inflight, connections: inflight === 1 ? 1 : 4, target: config === 'mirrored' ? 'A+B' : 'A', requestBytes: 4168, replyBytes: 32, pagesStaged: 0, runs, median: medianOfRuns(runs), medianServerCpuUsPerOp: medianServerCpu(runs) };
}

function report(cells: CellResult[], journal = false): BenchReport {
  return {
    version: 1,
    startedAt: '2026-11-22T00:00:00.000Z',
    finishedAt: '2026-11-22T00:01:00.000Z',
    settings: benchSettings({}),
    machine: {
      hostname: 'h',
      platform: 'linux',
      cpus: 2,
      cpuModel: 'cpu',
      totalMemBytes: 1,
      node: 'v20',
      ws: '8.23.0',
      loadAvgStart: [0.1, 0.2, 0.3],
      loadAvgEnd: [1, 1, 1],
      busyBeforeStartPct: 3,
      waitedForQuietSeconds: 0,
    },
    cells,
    targets: checkTargets(cells),
    memory: [memoryCheck('mirrored', 'A', { rssBytes: 200 * MiB, cachedBytes: 64 * MiB, cacheBytesMax: 256 * MiB }, 128 * MiB)],
    notes: journal ? [{ row: 'mirrored + journal', note: JOURNAL_NOTE }] : [],
    profiles: [],
  };
}

/** [ops a second, p50 µs, errors?] of one configuration's cells: write at 1 and 32 in flight, then read at 1 and 32. */
type Row = [opsPerSec: number, p50Us: number, errors?: number];

function cellsOf(config: BenchConfigName, w1: Row, w32: Row, r1: Row, r32: Row): CellResult[] {
  return [
    cell(config, 'write', 1, ...w1),
    cell(config, 'write', 32, ...w32),
    cell(config, 'read', 1, ...r1),
    cell(config, 'read', 32, ...r32),
  ];
}

const FULL = [
  ...cellsOf('echo', [15_000, 60], [45_000, 670], [15_500, 58], [46_000, 650]),
  ...cellsOf('relay', [7_000, 130], [30_000, 1000], [7_100, 128], [31_000, 990]),
  ...cellsOf('single', [9_000, 100], [40_000, 780], [9_500, 95], [42_000, 740]),
  ...cellsOf('mirrored', [5_000, 180], [30_000, 1050, 2], [9_400, 96], [42_000, 745]),
];

describe('formatBench', () => {
  it('prints one row per configuration with ops/s, p50 and p99 for each column', () => {
    const text = formatBench(report(FULL));
    const lines = text.split('\n');
    const header = lines.find((l) => l.includes('write x1'))!;
    for (const col of ['write x1', 'write x32', 'read x1', 'read x32']) expect(header).toContain(col);
    expect(lines.find((l) => l.startsWith('configuration'))).toMatch(/ops\/s\s+p50 µs\s+p99 µs/);
    const mirrored = lines.find((l) => l.startsWith('mirrored pair'))!;
    expect(mirrored).toContain('5,000');
    expect(mirrored).toContain('180');
    expect(mirrored).toContain('720'); // p99 = 4 x p50
    expect(lines.find((l) => l.startsWith('floor: ws echo'))).toContain('45,000');
  });

  it('prints the ratios, the targets with PASS or MISS, errors, memory and the machine', () => {
    const text = formatBench(report(FULL));
    expect(text).toMatch(/mirrored p50 \/ relay p50\s+\|\s+1\.38/);
    expect(text).toMatch(/mirrored ops\/s \/ single\s+\|\s+0\.56\s+\|\s+0\.75/);
    expect(text).toMatch(/PASS\s+mirrored write latency @1\s+1\.38/);
    expect(text).toMatch(/PASS\s+mirrored writes @32 vs single\s+0\.75/);
    expect(text).toMatch(/MISS\s+mirrored writes @32\s+30,000/);
    expect(text).toMatch(/PASS\s+cache-hit reads @32 vs echo\s+0\.91/);
    expect(text).toContain('errors in mirrored write x32: 2 (first: BUSY: too many)');
    expect(text).toMatch(/PASS\s+mirrored A\s+RSS\s+200 MiB/);
    expect(text).toContain('3% busy before start');
    // 30 + 25 µs in the controllers, 20 in the client.
    expect(text).toMatch(/^mirrored pair\s+\|\s+55 \(20\)\s+\|/m);
    expect(text).toContain('noise: other processes used 12% of the machine in the median run, 12% at most (figures from a shared machine');
  });

  it('says whether every measured read hit the cache', () => {
    expect(formatBench(report(FULL))).toContain('reads: every measured read hit the cache');
    const missed = FULL.map((c) => (c.config === 'mirrored' && c.op === 'read' && c.inflight === 32 ? { ...c, pagesStaged: 7 } : c));
    expect(formatBench(report(missed))).toContain('reads: pages read from the store while measuring: mirrored x32: 7');
  });

  it('shows the journal row as a note, never as figures', () => {
    const text = formatBench(report(FULL, true));
    const row = text.split('\n').find((l) => l.startsWith('mirrored + journal'))!;
    expect(row).toContain('mirrored pair with a journal: not built yet');
    expect(row).not.toMatch(/\d{2,}/);
    expect(formatBench(report(FULL))).not.toContain('journal');
  });

  it('shows missing cells as "-" and their targets as n/a', () => {
    const text = formatBench(report(FULL.filter((c) => c.config !== 'relay')));
    expect(text).toMatch(/n\/a\s+mirrored write latency @1\s+not measured/);
    expect(text.split('\n').find((l) => l.startsWith('floor: relay'))).toMatch(/\|\s+-\s+\|/);
  });
});

describe('benchOptionsFromCli', () => {
  it('turns the command line into options', () => {
    const o = benchOptionsFromCli({ runs: '5', seconds: '2.5', inflight: '1, 8,32', ops: 'read', configs: 'echo,mirrored', block: '4KiB', workingSet: '32MiB', target: 'A', journal: true, json: 'r.json' });
    expect(o).toMatchObject({ runs: 5, seconds: 2.5, inflight: [1, 8, 32], ops: ['read'], configs: ['echo', 'mirrored'], blockBytes: 4096, workingSetBytes: 32 * MiB, mirroredTarget: 'A', journal: true, json: 'r.json' });
    expect(o.progress).toBeUndefined();
    const progress = (): void => undefined;
    expect(benchOptionsFromCli({}, progress).progress).toBe(progress);
    expect(benchOptionsFromCli({ quiet: true }, progress).progress).toBeUndefined();
  });

  it('refuses 0 in flight, unknown operations, negative sizes, with the option named', () => {
    const field = (raw: Parameters<typeof benchOptionsFromCli>[0]): string | undefined => refusedField(() => benchOptionsFromCli(raw));
    expect(field({ inflight: '1,0' })).toBe('inflight');
    expect(field({ inflight: ',' })).toBe('inflight');
    expect(field({ ops: 'write,append' })).toBe('ops');
    expect(field({ configs: 'echo,raid5' })).toBe('configs');
    expect(field({ workingSet: '-64MiB' })).toBe('working-set');
    expect(field({ block: '0' })).toBe('block');
    expect(field({ runs: '0' })).toBe('runs');
    expect(field({ seconds: '0' })).toBe('seconds');
    expect(field({ target: 'B' })).toBe('target');
  });
});

describe('summarizeProfile', () => {
  it('charges each time delta to its sample and ranks self time, idle apart', () => {
    const frame = (functionName: string, url = ''): CpuProfile['nodes'][number]['callFrame'] => ({ functionName, url, lineNumber: 9 });
    const p: CpuProfile = {
      nodes: [
        { id: 1, callFrame: frame('(root)') },
        { id: 2, callFrame: frame('(idle)') },
        { id: 3, callFrame: frame('encode', 'file:///work/main/dist/protocol/codec.js') },
        { id: 4, callFrame: frame('onMessage', 'file:///work/main/dist/core/controller.js') },
        { id: 5, callFrame: frame('(garbage collector)') },
      ],
      startTime: 0,
      endTime: 1000,
      // Deltas (µs) before each sample: the span after sample i is deltas[i + 1].
      samples: [3, 3, 4, 2, 5, 3],
      timeDeltas: [0, 100_000, 200_000, 300_000, 50_000, 150_000],
    };
    const s = summarizeProfile(p);
    expect(s.idleMs).toBe(50);
    expect(s.busyMs).toBe(750);
    expect(s.functions[0]).toMatchObject({ name: 'encode (protocol/codec.js:10)' });
    expect(s.functions.map((f) => f.name)).toEqual(['encode (protocol/codec.js:10)', 'onMessage (core/controller.js:10)', '(garbage collector)']);
    // encode: 100 + 200 = 300 ms of 300 + 300 + 150 = 750 ms busy.
    expect(s.functions[0]!.selfPct).toBe(40);
    expect(s.files[0]).toMatchObject({ name: 'protocol/codec.js', selfPct: 40 });
  });

  it('counts only the samples inside the given windows', () => {
    const frame = (functionName: string): CpuProfile['nodes'][number]['callFrame'] => ({ functionName, url: '', lineNumber: 0 });
    const p: CpuProfile = {
      nodes: [
        { id: 1, callFrame: frame('setup') },
        { id: 2, callFrame: frame('hot') },
      ],
      startTime: 1_000_000,
      endTime: 1_400_000,
      // Samples at 1.1 s, 1.2 s, 1.3 s, 1.4 s (µs on the monotonic clock).
      samples: [1, 2, 2, 1],
      timeDeltas: [100_000, 100_000, 100_000, 100_000],
    };
    expect(summarizeProfile(p).functions.map((f) => f.name)).toEqual(['hot', 'setup']);
    const s = summarizeProfile(p, 10, [[1_150_000, 1_350_000]]);
    expect(s.functions).toEqual([{ name: 'hot', selfMs: 200, selfPct: 100 }]);
  });
});
