// The result of a run as a JSON document (its schema is in
// docs/workload.md), a text summary of it, and the files a run leaves: the
// report and its chart side by side.

import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, hostname, platform, release, arch, totalmem } from 'node:os';
import { dirname } from 'node:path';
import type { Histogram } from 'hdr-histogram-js';
import { PagepairError } from '../errors.js';
import { renderChart } from './chart.js';
import { describeJob, type JobSpec } from './job.js';
import type { PairEvent } from './pair-monitor.js';
import { formatBytesPerSec, formatUs } from './progress.js';
import { encodeHistogram, mergeInto, newHistogram, summarizeHistogram, type LatencySummary } from './stats.js';
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

export interface ReportTotals {
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
  errors: number;
  errorCodes: Record<string, number>;
  verifyErrors: number;
  verifyFailures: string[];
  readsVerified: number;
  failovers: number;
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
  /** No errors and no verification errors. */
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
  measured: {
    readOps: number;
    writeOps: number;
    readBytes: number;
    writeBytes: number;
    elapsedS: number;
    errors: number;
    errorCodes: Record<string, number>;
    verifyErrors: number;
    verifyFailures: string[];
    readsVerified: number;
    failovers: number;
  };
  readHist: Histogram;
  writeHist: Histogram;
  intervals: IntervalRecord[];
  events: PairEvent[];
  pair: WorkloadReport['pair'];
}

export function buildReport(p: ReportParts): WorkloadReport {
  const m = p.measured;
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
      errors: m.errors,
      errorCodes: m.errorCodes,
      verifyErrors: m.verifyErrors,
      verifyFailures: m.verifyFailures,
      readsVerified: m.readsVerified,
      failovers: m.failovers,
    },
    latency: { all: latencyReport(all), read: latencyReport(p.readHist), write: latencyReport(p.writeHist) },
    intervals: p.intervals,
    events: p.events,
    pair: p.pair,
    ok: m.errors === 0 && m.verifyErrors === 0,
  };
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
  return r as WorkloadReport;
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
  const codes = Object.entries(t.errorCodes);
  const pairEvents = r.events.filter((e) => e.kind !== 'resync-progress');
  const lines = [
    `job ${r.job.name}: ${r.summary}`,
    `  started ${r.startedAt} on ${r.machine.cpuCount} x ${r.machine.cpuModel}, node ${r.machine.node}`,
    `  working set ${r.allocations.length} allocation(s): ${r.allocations.map((a) => `${a.name}${a.reused ? ' (reused)' : ''}`).join(', ')}`,
    ...(r.prefill !== null ? [`  prefill ${r.prefill.ops} writes, ${formatBytesPerSec(r.prefill.bytes)} in ${r.prefill.seconds.toFixed(1)} s (not counted)`] : []),
    `  ${t.ops.toLocaleString('en-US')} ops in ${t.elapsedS.toFixed(1)} s = ${Math.round(t.opsPerSec).toLocaleString('en-US')} ops/s, ${formatBytesPerSec(t.bytesPerSec)}` +
      `  (reads ${Math.round(t.readOpsPerSec).toLocaleString('en-US')}/s, writes ${Math.round(t.writeOpsPerSec).toLocaleString('en-US')}/s)`,
    latencyLine('reads', r.latency.read),
    latencyLine('writes', r.latency.write),
    `  errors ${t.errors}${codes.length > 0 ? ` (${codes.map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}   verification errors ${t.verifyErrors} of ${t.readsVerified.toLocaleString('en-US')} reads checked   failovers ${t.failovers}`,
    ...t.verifyFailures.map((f) => `  ! ${f}`),
    ...(pairEvents.length > 0 ? ['  pair events:', ...pairEvents.map((e) => `    ${(e.tMs / 1000).toFixed(2).padStart(8)} s  ${e.kind.padEnd(12)} ${e.detail}`)] : []),
  ];
  return lines.join('\n');
}

/** Where a run's files go by default: ./workload-reports/<job>-<time>.{json,svg}. */
export function defaultReportBase(job: JobSpec, startedAt: Date = new Date()): string {
  const stamp = startedAt.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z').replace('T', '-');
  return `workload-reports/${job.name}-${stamp}`;
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
