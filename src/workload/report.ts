// The result of a run as a JSON document (its schema is in
// docs/workload.md), a text summary of it, and the files a run leaves: the
// report and its chart side by side.

import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { cpus, hostname, platform, release, arch, totalmem } from 'node:os';
import { basename, dirname, join, sep } from 'node:path';
import type { Histogram } from 'hdr-histogram-js';
import { PagepairError } from '../protocol/errors.js';
import { renderChart } from './chart.js';
import { describeJob, type JobSpec } from './job.js';
import type { PairEvent } from './pair-monitor.js';
import { formatBytes, formatBytesPerSec, formatUs } from './progress.js';
import { encodeHistogram, errorCounts, mergeInto, newHistogram, summarizeHistogram, type EngineTotals, type ErrorCounts, type LatencySummary, type ReadBackStats } from './stats.js';
import type { IntervalRecord } from './timeseries.js';

export const REPORT_SCHEMA = 'pagepair-workload-report/1';

export interface MachineInfo {
  hostname: string;
  platform: string;
  release: string;
  arch: string;
  cpuCount: number;
  cpuModel: string;
  cpuSpeedMHz: number;
  totalMemBytes: number;
  node: string;
}

export interface LatencyReport extends LatencySummary {
  /** The HDR histogram, compressed and base64-encoded (hdr-histogram-js encodeIntoCompressedBase64). */
  histogram: string;
}

export interface ReportTotals extends ErrorCounts {
  ops: number;
  readOps: number;
  writeOps: number;
  readBytes: number;
  writeBytes: number;
  /** The measured window: from the end of the warm-up to the last answer. */
  elapsedS: number;
  opsPerSec: number;
  bytesPerSec: number;
  readOpsPerSec: number;
  writeOpsPerSec: number;
  readsVerified: number;
  failovers: number;
}

/** The whole working set read back after a recorded run, every block checked against its last acknowledged write. */
export interface ReadBackReport extends ErrorCounts {
  reads: number;
  bytes: number;
  seconds: number;
}

/** The checker's verdict on the history the run recorded (kill test, workload --history). */
export interface HistoryCheckReport {
  /** Where the history was written (null: not kept). */
  historyPath: string | null;
  ops: number;
  verdict: 'linearizable' | 'violations' | 'inconclusive';
  byKind: Record<string, number>;
  /** The first violations, spelled out. */
  violations: string[];
  inconclusiveKeys: number;
}

/** One fault the kill test injected, and what it measured. */
export interface FaultCycle {
  cycle: number;
  mode: string;
  /** The controller killed or paused; in partition mode the one that ended fenced. */
  victim: string;
  survivor: string;
  /** Longest time in the cycle's window in which no operation completed. */
  stallMs: number;
  /** From the fault until the survivor reported 'alone' (and, partitioned, the other 'fenced'). */
  takeoverMs: number | null;
  /** From the restart (or the healed link, or the resumed process) until both reported 'mirrored'. */
  resyncMs: number | null;
  /** Epoch the survivor serves in after takeover. */
  epoch: number | null;
  /** Operations answered and failed in the cycle's window. */
  ops: number;
  errors: number;
  /** Pause mode: what became of the paused process. */
  victimFate?: string;
  problems: string[];
}

/** Medians and maxima over a kill test's cycles. */
export interface FaultTotals {
  cycles: number;
  stallMedianMs: number;
  stallMaxMs: number;
  takeoverMedianMs: number;
  takeoverMaxMs: number;
  resyncMedianMs: number;
  resyncMaxMs: number;
}

/** The faults of a kill test, beside the run they hurt. */
export interface FaultsReport {
  mode: string;
  seed: number;
  cycles: FaultCycle[];
  totals: FaultTotals;
  problems: string[];
}

export interface WorkloadReport {
  schema: typeof REPORT_SCHEMA;
  tool: { name: 'pagepair'; version: string };
  job: JobSpec;
  summary: string;
  /** When the run's clock started (after connecting, allocating and the prefill). */
  startedAt: string;
  machine: MachineInfo;
  target: { controllers: { id: string; host: string; port: number }[] };
  allocations: { name: string; guid: string; usedBytes: number; pageSizeBytes: number; reused: boolean }[];
  prefill: { bytes: number; ops: number; errors: number; seconds: number } | null;
  totals: ReportTotals;
  latency: { all: LatencyReport; read: LatencyReport; write: LatencyReport };
  intervals: IntervalRecord[];
  events: PairEvent[];
  /** Each controller's role before and after the run (null: did not answer). */
  pair: { before: Record<string, string | null>; after: Record<string, string | null> };
  /** Recorded runs only: the working set read back at the end. */
  readBack: ReadBackReport | null;
  /** Recorded runs only: the history's verdict (set by the caller that checked it). */
  check: HistoryCheckReport | null;
  /** Kill tests only: the faults and their measurements. */
  faults: FaultsReport | null;
  /** No errors, no verification errors (read-back included), and a history, if checked, without violations. */
  ok: boolean;
}

export function machineInfo(): MachineInfo {
  const c = cpus();
  return {
    hostname: hostname(),
    platform: platform(),
    release: release(),
    arch: arch(),
    cpuCount: c.length,
    cpuModel: c[0]?.model ?? 'unknown',
    cpuSpeedMHz: c[0]?.speed ?? 0,
    totalMemBytes: totalmem(),
    node: process.version,
  };
}

function latencyReport(h: Histogram): LatencyReport {
  return { ...summarizeHistogram(h), histogram: encodeHistogram(h) };
}

export interface ReportParts {
  version: string;
  job: JobSpec;
  startedAtEpochMs: number;
  controllers: { id: string; host: string; port: number }[];
  allocations: WorkloadReport['allocations'];
  prefill: WorkloadReport['prefill'];
  /** The engines' totals, summed, and the measured window. */
  measured: Omit<EngineTotals, 'endMs' | 'readHist' | 'writeHist'> & { elapsedS: number };
  readHist: Histogram;
  writeHist: Histogram;
  intervals: IntervalRecord[];
  events: PairEvent[];
  pair: WorkloadReport['pair'];
  readBack?: ReadBackStats | null;
}

export function buildReport(p: ReportParts): WorkloadReport {
  const m = p.measured;
  const rb = p.readBack ?? null;
  const readBack: ReadBackReport | null =
    rb === null
      ? null
      : { reads: rb.reads, bytes: rb.bytes, ...errorCounts(rb), seconds: Math.round(rb.elapsedMs) / 1000 };
  const all = newHistogram();
  mergeInto(all, p.readHist);
  mergeInto(all, p.writeHist);
  const ops = m.readOps + m.writeOps;
  const per = (n: number): number => (m.elapsedS > 0 ? Math.round((n / m.elapsedS) * 10) / 10 : 0);
  return {
    schema: REPORT_SCHEMA,
    tool: { name: 'pagepair', version: p.version },
    job: p.job,
    summary: describeJob(p.job),
    startedAt: new Date(p.startedAtEpochMs).toISOString(),
    machine: machineInfo(),
    target: { controllers: p.controllers },
    allocations: p.allocations,
    prefill: p.prefill,
    totals: {
      ops,
      readOps: m.readOps,
      writeOps: m.writeOps,
      readBytes: m.readBytes,
      writeBytes: m.writeBytes,
      elapsedS: Math.round(m.elapsedS * 1000) / 1000,
      opsPerSec: per(ops),
      bytesPerSec: Math.round(per(m.readBytes + m.writeBytes)),
      readOpsPerSec: per(m.readOps),
      writeOpsPerSec: per(m.writeOps),
      ...errorCounts(m),
      readsVerified: m.readsVerified,
      failovers: m.failovers,
    },
    latency: { all: latencyReport(all), read: latencyReport(p.readHist), write: latencyReport(p.writeHist) },
    intervals: p.intervals,
    events: p.events,
    pair: p.pair,
    readBack,
    check: null,
    faults: null,
    ok: m.errors === 0 && m.verifyErrors === 0 && (readBack === null || (readBack.errors === 0 && readBack.verifyErrors === 0)),
  };
}

/** Adds the checker's verdict on the run's history; a history that is not proven linearizable makes the report not ok. */
export function attachCheck(r: WorkloadReport, check: HistoryCheckReport): void {
  r.check = check;
  if (check.verdict !== 'linearizable') r.ok = false;
}

/** Adds a kill test's faults; a cycle with problems makes the report not ok. */
export function attachFaults(r: WorkloadReport, faults: FaultsReport): void {
  r.faults = faults;
  if (faults.problems.length > 0 || faults.cycles.some((c) => c.problems.length > 0)) r.ok = false;
}

/** Reads back a report, refusing what is not one. */
export function parseReport(json: unknown, source: string): WorkloadReport {
  const r = json as Partial<WorkloadReport> | null;
  if (typeof r !== 'object' || r === null || r.schema !== REPORT_SCHEMA) {
    throw new PagepairError('BAD_FIELD', `${source} is not a workload report (schema ${REPORT_SCHEMA})`, 'report');
  }
  if (typeof r.totals !== 'object' || typeof r.latency !== 'object' || !Array.isArray(r.intervals) || typeof r.job !== 'object') {
    throw new PagepairError('BAD_FIELD', `${source}: the report lacks totals, latency, intervals or job`, 'report');
  }
  // Reports written before read-back, checks and faults existed simply have none.
  return { readBack: null, check: null, faults: null, ...r } as WorkloadReport;
}

function latencyLine(name: string, l: LatencySummary): string {
  if (l.count === 0) return `  ${name.padEnd(6)} no operations`;
  return (
    `  ${name.padEnd(6)} ${l.count.toLocaleString('en-US').padStart(11)} ops   mean ${formatUs(l.meanUs).padStart(9)}` +
    `  p50 ${formatUs(l.p50Us).padStart(9)}  p90 ${formatUs(l.p90Us).padStart(9)}  p99 ${formatUs(l.p99Us).padStart(9)}` +
    `  p99.9 ${formatUs(l.p999Us).padStart(9)}  max ${formatUs(l.maxUs).padStart(9)}`
  );
}

/** A run's result in a few lines, fio-like. */
export function formatReportSummary(r: WorkloadReport): string {
  const t = r.totals;
  const pairEvents = r.events.filter((e) => e.kind !== 'resync-progress');
  const lines = [
    `job ${r.job.name}: ${r.summary}`,
    `  started ${r.startedAt} on ${r.machine.cpuCount} x ${r.machine.cpuModel}, node ${r.machine.node}`,
    `  working set ${r.allocations.length} allocation(s): ${r.allocations.map((a) => `${a.name}${a.reused ? ' (reused)' : ''}`).join(', ')}`,
    ...(r.prefill !== null ? [`  prefill ${r.prefill.ops} writes, ${formatBytes(r.prefill.bytes)} in ${r.prefill.seconds.toFixed(1)} s (not counted)`] : []),
    `  ${t.ops.toLocaleString('en-US')} ops in ${t.elapsedS.toFixed(1)} s = ${Math.round(t.opsPerSec).toLocaleString('en-US')} ops/s, ${formatBytesPerSec(t.bytesPerSec)}` +
      `  (reads ${Math.round(t.readOpsPerSec).toLocaleString('en-US')}/s, writes ${Math.round(t.writeOpsPerSec).toLocaleString('en-US')}/s)`,
    latencyLine('reads', r.latency.read),
    latencyLine('writes', r.latency.write),
    `  ${errorsText(t)}   verification errors ${t.verifyErrors} of ${t.readsVerified.toLocaleString('en-US')} reads checked   failovers ${t.failovers}`,
    ...t.verifyFailures.map((f) => `  ! ${f}`),
    ...readBackLines(r),
    ...checkLines(r),
    ...faultLines(r),
    ...(pairEvents.length > 0 ? ['  pair events:', ...pairEvents.map((e) => `    ${(e.tMs / 1000).toFixed(2).padStart(8)} s  ${e.kind.padEnd(12)} ${e.detail}`)] : []),
  ];
  return lines.join('\n');
}

/** "errors 3 (TIMEOUT 2, FENCED 1)". */
function errorsText(c: ErrorCounts): string {
  const codes = Object.entries(c.errorCodes);
  return `errors ${c.errors}${codes.length > 0 ? ` (${codes.map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}`;
}

function readBackLines(r: WorkloadReport): string[] {
  const b = r.readBack;
  if (b === null) return [];
  return [
    `  read back ${formatBytes(b.bytes)} in ${b.reads} reads (${b.seconds.toFixed(1)} s): ${errorsText(b)}, verification errors ${b.verifyErrors}`,
    ...b.verifyFailures.map((f) => `  ! ${f}`),
  ];
}

function checkLines(r: WorkloadReport): string[] {
  const c = r.check;
  if (c === null) return [];
  const kinds = Object.entries(c.byKind).filter(([, v]) => v > 0);
  return [
    `  history ${c.ops.toLocaleString('en-US')} ops${c.historyPath !== null ? ` (${c.historyPath})` : ''}: ${c.verdict}, violations ${c.violations.length > 0 ? kinds.map(([k, v]) => `${k} ${v}`).join(', ') : 0}` +
      (c.inconclusiveKeys > 0 ? `, undecided keys ${c.inconclusiveKeys}` : ''),
    ...c.violations.map((v) => `  ! ${v}`),
  ];
}

function faultLines(r: WorkloadReport): string[] {
  const f = r.faults;
  if (f === null) return [];
  const t = f.totals;
  const ms = (v: number | null): string => (v === null ? '-' : `${Math.round(v)} ms`);
  return [
    `  ${t.cycles} ${f.mode} cycles (seed ${f.seed}): stall median ${ms(t.stallMedianMs)}, max ${ms(t.stallMaxMs)}; takeover median ${ms(t.takeoverMedianMs)}, max ${ms(t.takeoverMaxMs)}; resync median ${ms(t.resyncMedianMs)}, max ${ms(t.resyncMaxMs)}`,
    ...f.cycles.map(
      (c) =>
        `    cycle ${String(c.cycle).padStart(3)}  victim ${c.victim}  stall ${ms(c.stallMs).padStart(7)}  takeover ${ms(c.takeoverMs).padStart(7)}  resync ${ms(c.resyncMs).padStart(7)}` +
        `${c.victimFate !== undefined ? `  (${c.victimFate})` : ''}${c.problems.length > 0 ? `  PROBLEMS: ${c.problems.join('; ')}` : ''}`,
    ),
    ...f.problems.map((p) => `  ! ${p}`),
  ];
}

/** Where a run's files go by default: ./workload-reports/<job>-<time>.{json,svg}. */
export function defaultReportBase(job: JobSpec, startedAt: Date = new Date()): string {
  const stamp = startedAt.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z').replace('T', '-');
  return `workload-reports/${job.name}-${stamp}`;
}

/** `out` as the files' base path, or, when it names a directory (one that exists, or ends in '/'), the default name in it. */
export function resolveReportBase(out: string | undefined, defaultBase: string): string {
  if (out === undefined || out === '') return defaultBase;
  const isDir = out.endsWith('/') || out.endsWith(sep) || (existsSync(out) && statSync(out).isDirectory());
  return isDir ? join(out, basename(defaultBase)) : out;
}

/** Writes <base>.json and <base>.svg; returns their paths. */
export function writeReportFiles(r: WorkloadReport, base: string): { jsonPath: string; svgPath: string } {
  const stem = base.replace(/\.(json|svg)$/i, '');
  const jsonPath = `${stem}.json`;
  const svgPath = `${stem}.svg`;
  mkdirSync(dirname(jsonPath), { recursive: true });
  writeFileSync(jsonPath, `${JSON.stringify(r, null, 2)}\n`);
  writeFileSync(svgPath, renderChart(r));
  return { jsonPath, svgPath };
}
