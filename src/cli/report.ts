// `pagepair report <a.json> [<b.json>]`: one workload report summarized, or
// two side by side with the ratio b/a of every figure, so a change to the
// pair (or to the machine) shows as numbers rather than impressions.

import { PagepairError } from '../protocol/errors.js';
import { readJsonFile } from '../workload/json-file.js';
import { formatBlockSizes, formatDistribution, type JobSpec } from '../workload/job.js';
import { formatBytesPerSec, formatUs } from '../workload/progress.js';
import { formatReportSummary, parseReport, type WorkloadReport } from '../workload/report.js';

export interface ReportOptions {
  /** Print JSON (the comparison rows, or the summary fields) instead of text. */
  json?: boolean;
}

export interface ComparisonRow {
  metric: string;
  a: number;
  b: number;
  /** b / a; null when a is 0. */
  ratio: number | null;
  /** Whether a larger value is better (throughput) or worse (latency, errors). */
  higherIsBetter: boolean;
}

export async function loadReport(path: string): Promise<WorkloadReport> {
  return parseReport(readJsonFile(path, 'report', 'report'), path);
}

export function compareReports(a: WorkloadReport, b: WorkloadReport): ComparisonRow[] {
  const rows: ComparisonRow[] = [];
  const add = (metric: string, va: number, vb: number, higherIsBetter: boolean): void => {
    rows.push({ metric, a: va, b: vb, ratio: va === 0 ? null : vb / va, higherIsBetter });
  };
  add('ops/s', a.totals.opsPerSec, b.totals.opsPerSec, true);
  add('MiB/s', a.totals.bytesPerSec / 2 ** 20, b.totals.bytesPerSec / 2 ** 20, true);
  add('read ops/s', a.totals.readOpsPerSec, b.totals.readOpsPerSec, true);
  add('write ops/s', a.totals.writeOpsPerSec, b.totals.writeOpsPerSec, true);
  for (const [op, la, lb] of [
    ['read', a.latency.read, b.latency.read],
    ['write', a.latency.write, b.latency.write],
  ] as const) {
    if (la.count === 0 && lb.count === 0) continue;
    add(`${op} mean µs`, la.meanUs, lb.meanUs, false);
    add(`${op} p50 µs`, la.p50Us, lb.p50Us, false);
    add(`${op} p90 µs`, la.p90Us, lb.p90Us, false);
    add(`${op} p99 µs`, la.p99Us, lb.p99Us, false);
    add(`${op} p99.9 µs`, la.p999Us, lb.p999Us, false);
    add(`${op} max µs`, la.maxUs, lb.maxUs, false);
  }
  add('errors', a.totals.errors, b.totals.errors, false);
  add('verification errors', a.totals.verifyErrors, b.totals.verifyErrors, false);
  add('failovers', a.totals.failovers, b.totals.failovers, false);
  return rows;
}

/** The job fields two reports ran with differently, so a comparison says what it compares. */
export function jobDifferences(a: JobSpec, b: JobSpec): string[] {
  const show = (k: keyof JobSpec, v: JobSpec[keyof JobSpec]): string => {
    if (k === 'blockSizes') return formatBlockSizes(v as JobSpec['blockSizes']);
    if (k === 'distribution') return formatDistribution(v as JobSpec['distribution']);
    return JSON.stringify(v);
  };
  const keys = Object.keys(a) as (keyof JobSpec)[];
  return keys.filter((k) => k !== 'description' && show(k, a[k]) !== show(k, b[k])).map((k) => `${k}: ${show(k, a[k])} -> ${show(k, b[k])}`);
}

function fmt(metric: string, v: number): string {
  if (metric.endsWith('µs')) return formatUs(v);
  if (metric === 'MiB/s') return v.toFixed(1);
  if (Number.isInteger(v)) return v.toLocaleString('en-US');
  return (Math.round(v * 10) / 10).toLocaleString('en-US');
}

export function formatComparison(a: WorkloadReport, b: WorkloadReport, pathA: string, pathB: string): string {
  const rows = compareReports(a, b);
  const diffs = jobDifferences(a.job, b.job);
  const w = [22, 14, 14, 9];
  const line = (cells: string[]): string => `  ${cells[0]!.padEnd(w[0]!)}${cells[1]!.padStart(w[1]!)}${cells[2]!.padStart(w[2]!)}${cells[3]!.padStart(w[3]! + 2)}${cells[4] ?? ''}`;
  const out = [
    `a: ${pathA}`,
    `   job ${a.job.name}, ${a.startedAt}, ${a.summary}`,
    `b: ${pathB}`,
    `   job ${b.job.name}, ${b.startedAt}, ${b.summary}`,
    diffs.length === 0 ? '   same job settings' : `   job settings that differ: ${diffs.join('; ')}`,
    '',
    line(['', 'a', 'b', 'b/a']),
  ];
  for (const r of rows) {
    const ratio = r.ratio === null ? (r.b === 0 ? '=' : 'new') : `${r.ratio.toFixed(2)}x`;
    const better = r.ratio === null || Math.abs(r.ratio - 1) < 0.02 ? '' : (r.ratio > 1) === r.higherIsBetter ? '  better' : '  worse';
    out.push(line([r.metric, fmt(r.metric, r.a), fmt(r.metric, r.b), ratio, better]));
  }
  if (a.machine.cpuModel !== b.machine.cpuModel || a.machine.cpuCount !== b.machine.cpuCount || a.machine.node !== b.machine.node) {
    out.push('', `  note: different machines or runtimes (a: ${a.machine.cpuCount} x ${a.machine.cpuModel}, node ${a.machine.node}; b: ${b.machine.cpuCount} x ${b.machine.cpuModel}, node ${b.machine.node})`);
  }
  return out.join('\n');
}

/**
 * `pagepair report`: with one path, the report's summary; with two, a
 * side-by-side comparison. Resolves to the text (or JSON) to print.
 */
export async function runReport(paths: string[], opts: ReportOptions = {}): Promise<string> {
  if (paths.length < 1 || paths.length > 2) throw new PagepairError('BAD_FIELD', 'report takes one report to summarize or two to compare', 'report');
  const reports = await Promise.all(paths.map((p) => loadReport(p)));
  const [a, b] = reports as [WorkloadReport, WorkloadReport | undefined];
  if (b === undefined) {
    if (opts.json === true) {
      const { intervals: _i, latency, ...rest } = a;
      const strip = (l: typeof latency.read): Omit<typeof l, 'histogram'> => {
        const { histogram: _h, ...s } = l;
        return s;
      };
      return JSON.stringify({ ...rest, intervals: a.intervals.length, latency: { all: strip(latency.all), read: strip(latency.read), write: strip(latency.write) } }, null, 2);
    }
    return formatReportSummary(a) + `\n  ${a.intervals.length} intervals of ${a.job.intervalMs} ms; peak ${formatBytesPerSec(Math.max(0, ...a.intervals.map((i) => i.bytesPerSec)))}, lowest ${Math.min(...a.intervals.filter((i) => !i.warmup).map((i) => i.opsPerSec)).toLocaleString('en-US')} ops/s in one interval`;
  }
  if (opts.json === true) return JSON.stringify({ a: paths[0], b: paths[1], jobDifferences: jobDifferences(a.job, b.job), rows: compareReports(a, b) }, null, 2);
  return formatComparison(a, b, paths[0]!, paths[1]!);
}
