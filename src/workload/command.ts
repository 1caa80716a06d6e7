// What `pagepair workload` does once its options are parsed: resolve the
// job (or every job of a file that holds several, one after another), run
// it against the pair a configuration names with live progress, write the
// report and the chart, and say how it went. Kept apart from the
// command-line wiring so the CLI stays a thin layer and tests can call it.

import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { checkHistory } from '../checker/linearizability.js';
import { PagepairError } from '../protocol/errors.js';
import { loadConfig, type ControllerConfig } from '../runtime/config.js';
import { resolveJobs } from './job-file.js';
import type { JobInput, JobSpec } from './job.js';
import { formatBytesPerSec, formatUs, progressPrinter } from './progress.js';
import { Recording, summarizeCheck } from './recording.js';
import { attachCheck, defaultReportBase, formatReportSummary, resolveReportBase, writeReportFiles, type WorkloadReport } from './report.js';
import { controllersFromConfig, nbdEndpointsFromConfigs, runWorkloadJob, type RunHandle } from './runner.js';
import { resolveNbdTls, type NbdTlsChoice, type NbdTlsCredentials } from '../client/nbd-client.js';
import type { NbdEndpoint } from '../client/nbd-pair-client.js';

export interface WorkloadCommandOptions {
  cfg: ControllerConfig;
  /** The partner's configuration: with --transport nbd, where it serves NBD (its listen.nbd). */
  partnerCfg?: ControllerConfig;
  /** A ready job's name or a job file (optionally ":<job>"); a file with several jobs runs them all, in order. */
  job?: string;
  /** Fields from the command line (jobInputFromCli); they win over the job file. */
  input?: JobInput;
  /**
   * Where the report goes: <out>.json and <out>.svg (<out>-<job>.* when
   * several jobs run), or into <out> when it is a directory (default
   * workload-reports/<job>-<time>).
   */
  out?: string;
  /**
   * Also record a history for the checker into this file (JSON lines), read
   * the whole working set back at the end, and check the history: the job
   * runs in this process (workers 1) on fresh allocations.
   */
  history?: string;
  /** Print the report as JSON at the end instead of the text summary (progress then goes to `note`). */
  json?: boolean;
  /** WebSocket clients connect with TLS (--tls); they always do when the configuration's tls.mode is "require". */
  tls?: boolean;
  /** With --transport nbd: NBD over TLS (STARTTLS) with a key of this file (--tls-psk-file); default the configuration's own when it requires TLS. */
  nbdTls?: NbdTlsChoice;
  /** Progress lines (default: console.log, or console.error with json). */
  print?: (line: string) => void;
  /** Aborting ends the run early; the report covers what ran. Default: the first SIGINT or SIGTERM. */
  signal?: AbortSignal;
  onStart?: (run: RunHandle) => void;
}

export interface JobRun {
  job: JobSpec;
  report: WorkloadReport;
  jsonPath: string;
  svgPath: string;
}

export interface WorkloadCommandResult extends JobRun {
  /** Every job that ran, in order (one, or each job of a file that holds several); the fields above are the last. */
  runs: JobRun[];
  /** What to print at the end. */
  text: string;
  /** 0 when no operation failed, every read verified and a recorded history checked out, in every job; 1 otherwise. */
  exitCode: number;
}

/**
 * The partner's configuration (for its NBD address): the file given, or the
 * partner's id in lower case beside `configPath` (b.json beside a.json) when
 * that file is there and is the partner's; undefined otherwise.
 */
export function partnerConfigFor(configPath: string, cfg: ControllerConfig, given?: string): ControllerConfig | undefined {
  if (given !== undefined) {
    const p = loadConfig(given);
    if (cfg.partner === null || p.idLetter !== cfg.partner.idLetter) {
      throw new PagepairError('BAD_FIELD', `${given} is controller ${p.idLetter}'s configuration, not the partner of ${cfg.idLetter}`, 'partnerConfig');
    }
    return p;
  }
  if (cfg.partner === null) return undefined;
  const guess = join(dirname(configPath), `${cfg.partner.idLetter.toLowerCase()}.json`);
  if (!existsSync(guess)) return undefined;
  try {
    const p = loadConfig(guess);
    return p.idLetter === cfg.partner.idLetter ? p : undefined;
  } catch {
    return undefined;
  }
}

/** The jobs, a bad value given on the command line refused by its option's name as typed. */
function jobsOf(o: WorkloadCommandOptions): JobSpec[] {
  const input = o.input ?? {};
  try {
    return resolveJobs({ ...(o.job !== undefined ? { job: o.job } : {}), input });
  } catch (err) {
    const field = err instanceof PagepairError ? err.field : undefined;
    if (err instanceof PagepairError && err.code === 'BAD_FIELD' && field !== undefined && Object.hasOwn(input, field)) {
      const flag = `--${field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
      throw new PagepairError('BAD_FIELD', `${flag}: ${err.message}`, field);
    }
    throw err;
  }
}

export async function runWorkloadCommand(o: WorkloadCommandOptions): Promise<WorkloadCommandResult> {
  const jobs = jobsOf(o);
  const controllers = controllersFromConfig(o.cfg, o.tls);
  for (const job of jobs) {
    if (job.target === 'both' && controllers.length < 2) {
      throw new PagepairError('BAD_FIELD', `${o.cfg.sourceName} has no partner; use --target ${o.cfg.idLetter}`, 'target');
    }
  }
  if (o.history !== undefined && jobs.length > 1) {
    throw new PagepairError('BAD_FIELD', `--history records one job; ${o.job ?? ''} holds ${jobs.length} (pick one as ${o.job ?? 'file'}:<job>)`, 'history');
  }
  const print = o.print ?? (o.json === true ? (l: string) => console.error(l) : (l: string) => console.log(l));
  let signal = o.signal;
  let detach = (): void => undefined;
  if (signal === undefined) {
    const abort = new AbortController();
    let signals = 0;
    const onSignal = (): void => {
      // The first stops the run (the report still comes); a second stops the process.
      if (++signals > 1) process.exit(130);
      print('-- stopping: finishing the operations in flight (again to quit at once)');
      abort.abort();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    detach = () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    };
    signal = abort.signal;
  }
  const runs: JobRun[] = [];
  try {
    for (const job of jobs) {
      // Stopped during one job, the jobs after it do not start.
      if (signal.aborted && runs.length > 0) break;
      if (jobs.length > 1) print(`== job ${runs.length + 1} of ${jobs.length}: ${job.name}`);
      const run = await runOne(o, job, signal, print, jobs.length > 1);
      runs.push(run);
      if (jobs.length > 1 && o.json !== true) print(`${formatReportSummary(run.report)}\n  report ${run.jsonPath}\n  chart  ${run.svgPath}`);
    }
  } finally {
    detach();
  }
  const last = runs[runs.length - 1]!;
  const exitCode = runs.every((r) => r.report.ok) ? 0 : 1;
  let text: string;
  if (o.json === true) text = JSON.stringify(jobs.length > 1 ? runs.map((r) => r.report) : last.report, null, 2);
  else if (jobs.length > 1) text = formatRunsTable(runs);
  else text = `${formatReportSummary(last.report)}\n  report ${last.jsonPath}\n  chart  ${last.svgPath}`;
  return { ...last, runs, text, exitCode };
}

function withNbdTls(endpoints: NbdEndpoint[], tls: NbdTlsCredentials | undefined): NbdEndpoint[] {
  return tls === undefined ? endpoints : endpoints.map((e) => ({ ...e, tls }));
}

async function runOne(o: WorkloadCommandOptions, job: JobSpec, signal: AbortSignal, print: (line: string) => void, several: boolean): Promise<JobRun> {
  const record = o.history !== undefined ? new Recording({ seed: job.seed, job: job.name, summary: 'pagepair workload --history' }) : null;
  const report = await runWorkloadJob(controllersFromConfig(o.cfg, o.tls), job, {
    onProgress: progressPrinter(print),
    signal,
    ...(o.onStart !== undefined ? { onStart: o.onStart } : {}),
    ...(record !== null ? { record } : {}),
    ...(job.transport === 'nbd'
      ? { nbd: withNbdTls(nbdEndpointsFromConfigs(o.partnerCfg !== undefined ? [o.cfg, o.partnerCfg] : [o.cfg]), resolveNbdTls(o.nbdTls, o.cfg.tls)) }
      : {}),
  });
  if (record !== null && o.history !== undefined) {
    await record.writeTo(o.history);
    const ops = record.ops();
    print(`-- check: ${ops.length} operations written to ${o.history}; checking them for lost writes and stale reads`);
    attachCheck(report, summarizeCheck(checkHistory(ops), o.history));
  }
  const fallback = defaultReportBase(job, new Date(report.startedAt));
  // Several jobs with one base path: each gets its name appended.
  const isBase = o.out !== undefined && resolveReportBase(o.out, fallback) === o.out;
  const out = several && isBase ? `${o.out!.replace(/\.(json|svg)$/i, '')}-${job.name}` : o.out;
  const { jsonPath, svgPath } = writeReportFiles(report, resolveReportBase(out, fallback));
  return { job, report, jsonPath, svgPath };
}

/** The jobs of a file side by side, one line each. */
function formatRunsTable(runs: readonly JobRun[]): string {
  const rows = runs.map((r) => {
    const t = r.report.totals;
    const l = r.report.latency.all;
    return [r.job.name, Math.round(t.opsPerSec).toLocaleString('en-US'), formatBytesPerSec(t.bytesPerSec), formatUs(l.count > 0 ? l.p50Us : null), formatUs(l.count > 0 ? l.p99Us : null), String(t.errors + t.verifyErrors), r.report.ok ? 'ok' : 'FAILED', r.jsonPath];
  });
  const head = ['job', 'ops/s', 'throughput', 'p50', 'p99', 'errors', '', 'report'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => (i >= 1 && i <= 5 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [`${runs.length} jobs:`, line(head), ...rows.map(line)].join('\n');
}
