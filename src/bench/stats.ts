// The arithmetic of a benchmark: medians over repeated runs, ratios between
// rows, and the targets as PASS or MISS. Pure, so it is tested on
// made-up figures.

import type { BenchConfigName, BenchOp, CellResult, ControllerMemory, RunResult, TargetCheck, Verdict } from './types.js';

/** Median of a non-empty list; the mean of the middle two for an even count. NaN for an empty one. */
export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * Each figure's median on its own (ops/s, p50 and p99 need not come from the
 * same run): a noisy machine spoils one run's throughput without spoiling
 * another's latency.
 */
export function medianOfRuns(runs: readonly RunResult[]): CellResult['median'] {
  return {
    opsPerSec: median(runs.map((r) => r.opsPerSec)),
    p50Us: median(runs.map((r) => r.p50Us)),
    p99Us: median(runs.map((r) => r.p99Us)),
  };
}

/** The row's processes' CPU per operation (the benchmark's client left out), median over runs. */
export function medianServerCpu(runs: readonly RunResult[]): number | null {
  const sums = runs.flatMap((r) => {
    const entries = Object.entries(r.cpuUsPerOp).filter(([name]) => name !== 'bench client');
    return entries.length === 0 ? [] : [entries.reduce((sum, [, us]) => sum + us, 0)];
  });
  return sums.length === 0 ? null : median(sums);
}

export function findCell(cells: readonly CellResult[], config: BenchConfigName, op: BenchOp, inflight: number): CellResult | undefined {
  return cells.find((c) => c.config === config && c.op === op && c.inflight === inflight);
}

/** a / b, or null when either is missing or b is not positive. */
export function ratio(a: number | undefined, b: number | undefined): number | null {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b <= 0) return null;
  return a / b;
}

function verdict(value: number | null, cmp: '<=' | '>=', bound: number): Verdict {
  if (value === null) return 'n/a';
  return (cmp === '<=' ? value <= bound : value >= bound) ? 'PASS' : 'MISS';
}

/** The in-flight counts the targets name. */
export const TARGET_INFLIGHT_LOW = 1;
export const TARGET_INFLIGHT_HIGH = 32;

export const TARGET_BOUNDS = Object.freeze({
  mirroredWriteP50OverRelayMax: 1.5,
  mirroredOverSingleWritesMin: 0.7,
  mirroredWritesPerSecMin: 40_000,
  cacheHitReadsOverEchoMin: 0.9,
  mirroredOverRedisWritesMin: 1,
});

/** The targets, each a ratio or a figure with PASS, MISS, or n/a when a cell it needs was not measured. */
export function checkTargets(cells: readonly CellResult[]): TargetCheck[] {
  const lo = TARGET_INFLIGHT_LOW;
  const hi = TARGET_INFLIGHT_HIGH;
  const b = TARGET_BOUNDS;
  const get = (config: BenchConfigName, op: BenchOp, inflight: number): CellResult['median'] | undefined =>
    findCell(cells, config, op, inflight)?.median;

  const latency = ratio(get('mirrored', 'write', lo)?.p50Us, get('relay', 'write', lo)?.p50Us);
  const vsSingle = ratio(get('mirrored', 'write', hi)?.opsPerSec, get('single', 'write', hi)?.opsPerSec);
  const writes = get('mirrored', 'write', hi)?.opsPerSec ?? null;
  const reads = ratio(get('mirrored', 'read', hi)?.opsPerSec, get('echo', 'read', hi)?.opsPerSec);
  const redis = get('redis', 'write', lo);
  const vsRedis = ratio(get('mirrored', 'write', lo)?.opsPerSec, redis?.opsPerSec);
  // Judged only when the Redis row ran: it is skipped where redis-server is not installed.
  const redisTargets: TargetCheck[] =
    redis === undefined
      ? []
      : [
          {
            name: `mirrored writes @${lo} vs Redis`,
            formula: `mirrored write ops/s @${lo} / Redis SET + WAIT 1 ops/s @${lo}`,
            value: vsRedis,
            target: `>= ${b.mirroredOverRedisWritesMin}`,
            verdict: verdict(vsRedis, '>=', b.mirroredOverRedisWritesMin),
          },
        ];
  return [
    {
      name: `mirrored write latency @${lo}`,
      formula: `mirrored write p50 @${lo} / relay write p50 @${lo}`,
      value: latency,
      target: `<= ${b.mirroredWriteP50OverRelayMax}`,
      verdict: verdict(latency, '<=', b.mirroredWriteP50OverRelayMax),
    },
    {
      name: `mirrored writes @${hi} vs single`,
      formula: `mirrored write ops/s @${hi} / single write ops/s @${hi}`,
      value: vsSingle,
      target: `>= ${b.mirroredOverSingleWritesMin}`,
      verdict: verdict(vsSingle, '>=', b.mirroredOverSingleWritesMin),
    },
    {
      name: `mirrored writes @${hi}`,
      formula: `mirrored write ops/s @${hi}`,
      value: writes !== null && Number.isFinite(writes) ? writes : null,
      target: `>= ${b.mirroredWritesPerSecMin}`,
      verdict: verdict(writes !== null && Number.isFinite(writes) ? writes : null, '>=', b.mirroredWritesPerSecMin),
    },
    {
      name: `cache-hit reads @${hi} vs echo`,
      formula: `mirrored read ops/s @${hi} / echo read ops/s @${hi}`,
      value: reads,
      target: `>= ${b.cacheHitReadsOverEchoMin}`,
      verdict: verdict(reads, '>=', b.cacheHitReadsOverEchoMin),
    },
    ...redisTargets,
  ];
}

/** A controller's memory at the end of the run against its cache size plus the allowed overhead. */
export function memoryCheck(
  config: BenchConfigName,
  controller: string,
  status: { rssBytes: number; cachedBytes: number; cacheBytesMax: number; counters?: object },
  rssOverheadBytesMax: number,
): ControllerMemory {
  const overCacheBytes = status.rssBytes - status.cacheBytesMax;
  return {
    config,
    controller,
    rssBytes: status.rssBytes,
    cachedBytes: status.cachedBytes,
    cacheBytesMax: status.cacheBytesMax,
    overCacheBytes,
    pagesStaged: numberOr0((status.counters as { pagesStaged?: unknown } | undefined)?.pagesStaged),
    counters: Object.fromEntries(Object.entries(status.counters ?? {}).filter((e): e is [string, number] => typeof e[1] === 'number')),
    verdict: overCacheBytes <= rssOverheadBytesMax ? 'PASS' : 'MISS',
  };
}

function numberOr0(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}

/** How a latency distribution reads back in microseconds; values are recorded in nanoseconds. */
export function nsToUs(ns: number): number {
  return Math.round(ns / 100) / 10;
}
