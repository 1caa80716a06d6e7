// `pagepair kill-test --transport nbd`: the same kill, pause and partition
// cycles, with the load reaching the pair through each controller's NBD
// export: clients on A and on B write the same 64 blocks, and a request lost
// with a controller is sent again to the other one. The history must check
// out and no process may be left behind.

import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseReport } from '../../src/workload/report.js';
import { killTestLeftovers } from './helpers.js';
import { recovered, useKillTestRuns, type KillTestRun } from './kill-test-runs.js';

const run = useKillTestRuns();

function killTest(mode: string, cycles: number): Promise<KillTestRun> {
  return run(`nbd-${mode}`, ['--transport', 'nbd', '--mode', mode, '--cycles', String(cycles), '--seed', '11', '--clients', '4', '--inflight', '4', '--blocks', '64']);
}

describe.each([
  ['kill', 2],
  ['pause', 2],
  ['partition', 2],
] as const)('pagepair kill-test --transport nbd --mode %s --cycles %d', (mode, cycles) => {
  it('recovers every cycle over NBD, the history is linearizable, and no process is left behind', async () => {
    const started = Date.now();
    const r = await killTest(mode, cycles);
    const { result } = recovered(r, cycles);
    console.log(
      `kill-test --transport nbd --mode ${mode}: ${cycles} cycles in ${((Date.now() - started) / 1000).toFixed(1)} s, ${result.totals.ops} ops, ` +
        `failovers ${result.workload?.failovers}, violations ${result.totals.violations}, verdict ${result.check?.verdict}`,
    );
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
