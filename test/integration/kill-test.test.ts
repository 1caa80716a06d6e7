// `pagepair kill-test` end to end: a real pair killed, paused and
// partitioned under the workload generator's recorded load; the history must
// check out, every cycle must print its line, and the run must leave a
// workload report and a chart with the faults and recoveries marked.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseReport } from '../../src/workload/report.js';
import { killTestLeftovers } from './helpers.js';
import { recovered, useKillTestRuns, type KillTestRun } from './kill-test-runs.js';

const run = useKillTestRuns();

function killTest(mode: string, cycles: number, extra: readonly string[]): Promise<KillTestRun> {
  return run(mode, ['--mode', mode, '--cycles', String(cycles), '--seed', '7', '--clients', '2', '--inflight', '4', ...extra]);
}

// The last run leaves a paused controller alive (no fence action): resumed, it
// must refuse the reads that waited for it and rejoin, not serve from its old cache.
describe.each([
  ['kill', 3, []],
  ['pause', 3, []],
  ['partition', 3, []],
  ['pause', 2, ['--fence-action', 'none']],
] as const)('pagepair kill-test --mode %s --cycles %d %j', (mode, cycles, extra) => {
  it('recovers every cycle, loses nothing, reads nothing stale, and leaves no process behind', async () => {
    const r = await killTest(mode, cycles, extra);
    const { result, diagnosis } = recovered(r, cycles);
    expect(result.mode).toBe(mode);
    expect(result.totals.ops).toBeGreaterThan(0);
    for (const c of result.cycles) {
      expect(c.takeoverMs).not.toBeNull();
      expect(c.ops).toBeGreaterThan(0);
    }
    // One printed line per cycle.
    const lines = r.stderr.split('\n').filter((l) => /^cycle +\d+ +\w+ +victim [AB] +stall +\d+ ms +takeover +\d+ ms +resync +\d+ ms +ops +\d+ +errors \d+/.test(l));
    expect(lines.map((l) => Number(/^cycle +(\d+)/.exec(l)![1])), r.stderr).toEqual(Array.from({ length: cycles }, (_, i) => i + 1));
    if (extra.length > 0) {
      for (const c of result.cycles) expect(c.victimFate, diagnosis).toMatch(/^resumed; 0 of \d+ reads sent while paused were answered/);
    }
    // The history is there for `pagepair check`.
    expect(existsSync(join(r.dir, 'history.jsonl'))).toBe(true);
    // Live progress: interval lines and the pair's events as they happened.
    expect(r.stderr).toMatch(/ops\/s .* p99 .* errors \d+/);
    expect(r.stderr).toMatch(/>> (takeover|fenced): /);
    // The workload report and its chart, with the faults, the takeovers and the recoveries in them.
    expect(result.reportPath).toBe(join(r.dir, 'report.json'));
    expect(result.chartPath).toBe(join(r.dir, 'report.svg'));
    const report = parseReport(JSON.parse(readFileSync(result.reportPath!, 'utf8')), result.reportPath!);
    expect(report.ok).toBe(true);
    expect(report.check).toMatchObject({ verdict: 'linearizable' });
    expect(report.faults?.cycles).toHaveLength(cycles);
    expect(report.readBack).toMatchObject({ errors: 0, verifyErrors: 0 });
    expect(report.readBack!.bytes).toBe(report.job.sizeBytes);
    expect(report.totals.readsVerified).toBeGreaterThan(0);
    const kinds = new Set(report.events.map((e) => e.kind));
    expect([...kinds]).toEqual(expect.arrayContaining([mode, mode === 'partition' ? 'fenced' : 'takeover', 'mirrored']));
    expect(report.intervals.length).toBeGreaterThan(2);
    const svg = readFileSync(result.chartPath!, 'utf8');
    expect(svg).toMatch(new RegExp(`pagepair kill-test · ${cycles} × ${mode}`));
    expect(svg).toMatch(mode === 'partition' ? />fenced B</ : />takeover [AB]</);
    expect(svg).toMatch(/>mirrored [AB]/);
    expect(killTestLeftovers(r.dir)).toEqual([]);
  }, 110_000);
});
