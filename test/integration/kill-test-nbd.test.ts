// `pagepair kill-test --transport nbd`: the same kill, pause and partition
// cycles, with the load reaching the pair through each controller's NBD
// export: clients on A and on B write the same 64 blocks, and a request lost
// with a controller is sent again to the other one. The history must check
// out and no process may be left behind.

import { existsSync, readFileSync, rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import type { KillTestResult } from '../../src/cli/kill-test.js';
import { parseReport } from '../../src/workload/report.js';
import { killTestLeftovers, runKillTestCli } from './helpers.js';

const dirs: string[] = [];

afterAll(() => {
  for (const d of dirs) {
    killTestLeftovers(d);
    rmSync(d, { recursive: true, force: true });
  }
});

async function killTest(mode: string, cycles: number): Promise<{ code: number | null; stdout: string; stderr: string; dir: string }> {
  return runKillTestCli(`nbd-${mode}`, ['--transport', 'nbd', '--mode', mode, '--cycles', String(cycles), '--seed', '11', '--clients', '4', '--inflight', '4', '--blocks', '64'], dirs);
}

describe.each([
  ['kill', 2],
  ['pause', 2],
  ['partition', 2],
] as const)('pagepair kill-test --transport nbd --mode %s --cycles %d', (mode, cycles) => {
  it('recovers every cycle over NBD, the history is linearizable, and no process is left behind', async () => {
    const started = Date.now();
    const r = await killTest(mode, cycles);
    const diagnosis = `exit ${r.code}\n--- stderr\n${r.stderr.slice(-4000)}\n--- stdout\n${r.stdout.slice(-4000)}`;
    expect(r.code, diagnosis).toBe(0);
    const result = JSON.parse(r.stdout) as KillTestResult;
    console.log(
      `kill-test --transport nbd --mode ${mode}: ${cycles} cycles in ${((Date.now() - started) / 1000).toFixed(1)} s, ${result.totals.ops} ops, ` +
        `failovers ${result.workload?.failovers}, violations ${result.totals.violations}, verdict ${result.check?.verdict}`,
    );
    expect(result.ok, diagnosis).toBe(true);
    expect(result.cycles).toHaveLength(cycles);
    expect(result.totals.violations).toBe(0);
    expect(result.totals.lostWrites).toBe(0);
    expect(result.totals.staleReads).toBe(0);
    expect(result.totals.verifyErrors).toBe(0);
    expect(result.check?.verdict).toBe('linearizable');
    // Both controllers' copies of every page, compared at the end as `pagepair verify` does.
    expect(result.copies?.pagesChecked).toBeGreaterThan(0);
    expect(result.copies?.differ).toBe(0);
    for (const c of result.cycles) {
      expect(c.problems, diagnosis).toEqual([]);
      expect(c.resyncMs).not.toBeNull();
    }
    // The clients reached the pair over NBD, and those of the lost controller went to the other.
    const report = parseReport(JSON.parse(readFileSync(result.reportPath!, 'utf8')), result.reportPath!);
    expect(report.job.transport).toBe('nbd');
    expect(report.summary).toMatch(/over NBD/);
    expect(report.check).toMatchObject({ verdict: 'linearizable' });
    expect(report.readBack).toMatchObject({ errors: 0, verifyErrors: 0 });
    if (mode !== 'partition') expect(result.workload!.failovers).toBeGreaterThan(0);
    expect(existsSync(result.chartPath!)).toBe(true);
    expect(killTestLeftovers(r.dir)).toEqual([]);
  }, 110_000);
});
