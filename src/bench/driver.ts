// The load of one run of one cell: a closed loop of `inflight` workers spread
// over the connections, each issuing its next operation as soon as the last
// one is answered, on pages drawn uniformly from its connection's range.
// Warm-up operations are issued like the others and not counted.

import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { build } from 'hdr-histogram-js';
import { Prng } from '../core/prng.js';
import { PagepairError } from '../protocol/errors.js';
import { cpuPerOp, cpuShares, cpuSnapshot, type CpuSnapshot } from './cpu-share.js';
import { nsToUs } from './stats.js';
import type { BenchOp, RunResult } from './types.js';

/** One connection as the driver sees it, whatever is behind it. */
export interface BenchConnection {
  /** Pages this connection's operations range over. */
  readonly pages: number;
  write(page: number): Promise<unknown>;
  read(page: number): Promise<unknown>;
}

export interface DriveOptions {
  op: BenchOp;
  inflight: number;
  warmupMs: number;
  measureMs: number;
  seed: number;
  /** How long the last operations may take to come back after the end. */
  drainTimeoutMs?: number;
  /** The benchmark's processes (itself included), to tell their CPU time from everyone else's. */
  ourPids?: readonly number[];
  /** The processes of the row under test, by pid: their CPU time per operation is reported. */
  rowProcesses?: ReadonlyMap<number, string>;
}

/** A run stops early once this many operations failed: something is broken, not slow. */
const ERRORS_MAX = 1000;
const DRAIN_TIMEOUT_MS_DEFAULT = 15_000;

/** CLOCK_MONOTONIC in µs: the clock V8 stamps CPU profile samples with, the same in every process. */
function monotonicUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

export async function driveRun(conns: readonly BenchConnection[], o: DriveOptions): Promise<RunResult> {
  if (conns.length === 0) throw new PagepairError('BAD_FIELD', 'no connections to drive', 'connections');
  if (!Number.isInteger(o.inflight) || o.inflight < 1) throw new PagepairError('BAD_FIELD', `inflight must be at least 1, got ${o.inflight}`, 'inflight');
  // Nanoseconds, 3 significant digits: 0.1% resolution from 1 µs to minutes.
  const hist = build({ lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000_000, numberOfSignificantValueDigits: 3 });
  const startMs = performance.now();
  const measureFromMs = startMs + o.warmupMs;
  const endMs = measureFromMs + o.measureMs;
  let ops = 0;
  let errors = 0;
  let firstError: string | null = null;
  const ourPids = o.ourPids ?? [process.pid];
  let cpuAtStart: CpuSnapshot | null = null;
  let windowStartUs = 0;
  let stop = false;

  const worker = async (index: number): Promise<void> => {
    const conn = conns[index % conns.length]!;
    const prng = new Prng((o.seed * 0x9e37_79b1 + index * 0x85eb_ca6b) >>> 0);
    const isWrite = o.op === 'write';
    while (!stop) {
      const t0 = performance.now();
      if (t0 >= endMs) return;
      if (cpuAtStart === null && t0 >= measureFromMs) {
        cpuAtStart = cpuSnapshot(ourPids);
        windowStartUs = monotonicUs();
      }
      const page = prng.below(conn.pages);
      try {
        await (isWrite ? conn.write(page) : conn.read(page));
      } catch (err) {
        errors++;
        firstError ??= err instanceof Error ? `${(err as { code?: string }).code ?? err.name}: ${err.message}` : String(err);
        if (errors >= ERRORS_MAX || (err instanceof PagepairError && err.code === 'NOT_ACTIVE')) stop = true;
        continue;
      }
      const t1 = performance.now();
      if (t1 >= measureFromMs && t1 <= endMs) {
        ops++;
        hist.recordValue(Math.max(1, Math.round((t1 - t0) * 1e6)));
      }
    }
  };

  const workers = Promise.all(Array.from({ length: o.inflight }, (_, i) => worker(i)));
  const drainTimeoutMs = o.drainTimeoutMs ?? DRAIN_TIMEOUT_MS_DEFAULT;
  let drainTimer: NodeJS.Timeout | undefined;
  const drained = await Promise.race([
    workers.then(() => true),
    new Promise<false>((resolve) => {
      drainTimer = setTimeout(() => resolve(false), o.warmupMs + o.measureMs + drainTimeoutMs);
    }),
  ]);
  clearTimeout(drainTimer);
  const cpuAtEnd = cpuSnapshot(ourPids);
  const windowEndUs = monotonicUs();
  if (!drained) {
    stop = true;
    throw new PagepairError('TIMEOUT', `operations still unanswered ${drainTimeoutMs} ms after the run ended`);
  }
  const shares = cpuShares(cpuAtStart ?? cpuAtEnd, cpuAtEnd);
  const perOp = cpuPerOp(cpuAtStart ?? cpuAtEnd, cpuAtEnd, ops);
  const cpuUsPerOp: Record<string, number> = {};
  const clientUs = perOp.get(process.pid);
  if (clientUs !== undefined) cpuUsPerOp['bench client'] = clientUs;
  for (const [pid, name] of o.rowProcesses ?? []) {
    const us = perOp.get(pid);
    if (us !== undefined) cpuUsPerOp[name] = us;
  }
  const seconds = o.measureMs / 1000;
  const empty = hist.totalCount === 0;
  const result: RunResult = {
    ops,
    errors,
    firstError,
    seconds,
    opsPerSec: Math.round(ops / seconds),
    p50Us: empty ? Number.NaN : nsToUs(hist.getValueAtPercentile(50)),
    p90Us: empty ? Number.NaN : nsToUs(hist.getValueAtPercentile(90)),
    p99Us: empty ? Number.NaN : nsToUs(hist.getValueAtPercentile(99)),
    p999Us: empty ? Number.NaN : nsToUs(hist.getValueAtPercentile(99.9)),
    maxUs: empty ? Number.NaN : nsToUs(hist.maxValue),
    meanUs: empty ? Number.NaN : nsToUs(hist.mean),
    machineBusyPct: shares.machineBusyPct,
    othersBusyPct: shares.othersPct,
    cpuUsPerOp,
    windowMonotonicUs: [windowStartUs === 0 ? windowEndUs : windowStartUs, windowEndUs],
    loadAvg1: Math.round((loadavg()[0] ?? 0) * 100) / 100,
  };
  hist.destroy();
  return result;
}
