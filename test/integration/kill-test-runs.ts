// What the two `pagepair kill-test` suites (over the client protocol and
// over NBD) share: runs in fresh directories, cleared after the file, and
// the checks every run must pass whatever its mode.

import { rmSync } from 'node:fs';
import { afterAll, expect } from 'vitest';
import type { KillTestResult } from '../../src/cli/kill-test.js';
import { killTestLeftovers, runKillTestCli } from './helpers.js';

export interface KillTestRun {
  code: number | null;
  stdout: string;
  stderr: string;
  dir: string;
}

/** Returns a runner of `pagepair kill-test <args>`; its directories, and whatever still runs in them, go after the file's tests. */
export function useKillTestRuns(): (label: string, args: readonly string[]) => Promise<KillTestRun> {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) {
      killTestLeftovers(d);
      rmSync(d, { recursive: true, force: true });
    }
  });
  return (label, args) => runKillTestCli(label, args, dirs);
}

/**
 * The result of a run that recovered every one of its `cycles`: exit 0, ok,
 * nothing lost, stale or misread, a linearizable history, both copies of every
 * page equal, and each cycle without a problem and resynced. With the text
 * that explains a failure.
 */
export function recovered(r: KillTestRun, cycles: number): { result: KillTestResult; diagnosis: string } {
  const diagnosis = `exit ${r.code}\n--- stderr\n${r.stderr.slice(-4000)}\n--- stdout\n${r.stdout.slice(-4000)}`;
  expect(r.code, diagnosis).toBe(0);
  const result = JSON.parse(r.stdout) as KillTestResult;
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
  return { result, diagnosis };
}
