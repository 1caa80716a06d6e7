// What the commands that hurt a pair of their own share (kill-test,
// nbd-kill-test, attach-kill-test): a seed, a working directory kept on
// request, the controllers' timings, a stop on SIGINT or SIGTERM that still
// reports, and the verdict printed as text or JSON with the exit code it
// sets.

import type { Command } from 'commander';
import { parsePositiveInt } from '../workload/units.js';

/** --seed, --dir and --keep; `holds` says what the working directory holds. */
export function addRunDirOptions(cmd: Command, seed: { help: string; default: string }, holds: string): Command {
  return cmd
    .option('--seed <n>', seed.help, seed.default)
    .option('--dir <path>', `working directory: ${holds} (default: a new temporary directory)`)
    .option('--keep', 'keep the working directory (it is kept anyway when the test fails)');
}

/** --heartbeat-ms and --partner-timeout-ms of both controllers. */
export function addPairTimingOptions(cmd: Command): Command {
  return cmd.option('--heartbeat-ms <ms>', 'heartbeatIntervalMs of both controllers', '100').option('--partner-timeout-ms <ms>', 'partnerTimeoutMs of both controllers', '500');
}

/** The options of addRunDirOptions and addPairTimingOptions, checked. */
export function runDirAndTimings(raw: Record<string, unknown>): { dir?: string; keep: boolean; heartbeatIntervalMs: number; partnerTimeoutMs: number } {
  return {
    ...(typeof raw.dir === 'string' ? { dir: raw.dir } : {}),
    keep: raw.keep === true,
    heartbeatIntervalMs: parsePositiveInt(String(raw.heartbeatMs), 'heartbeat-ms', 60_000),
    partnerTimeoutMs: parsePositiveInt(String(raw.partnerTimeoutMs), 'partner-timeout-ms', 600_000),
  };
}

/** Aborted by the first SIGINT or SIGTERM: the run stops what it started and still reports. */
export function abortOnSignals(): AbortSignal {
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return abort.signal;
}

/** Where a run's lines go: standard error when the result is printed as JSON, else standard output. */
export function linePrinter(json: boolean): (line: string) => void {
  return json ? (line) => console.error(line) : (line) => console.log(line);
}

/** The result, as JSON or as text, and the exit code by its verdict. */
export function printVerdict<R extends { ok: boolean }>(r: R, json: boolean, text: (r: R) => string): void {
  console.log(json ? JSON.stringify(r, null, 2) : text(r));
  process.exitCode = r.ok ? 0 : 1;
}
