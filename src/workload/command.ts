// What `pagepair workload` does once its options are parsed: resolve the
// job, run it against the pair a configuration names with live progress,
// write the report and the chart, and say how it went. Kept apart from the
// command-line wiring so the CLI stays a thin layer and tests can call it.

import { PagepairError } from '../errors.js';
import type { ControllerConfig } from '../runtime/config.js';
import { resolveJob } from './job-file.js';
import type { JobInput, JobSpec } from './job.js';
import { progressPrinter } from './progress.js';
import { defaultReportBase, formatReportSummary, writeReportFiles, type WorkloadReport } from './report.js';
import { controllersFromConfig, runWorkloadJob, type RunHandle } from './runner.js';

export interface WorkloadCommandOptions {
  cfg: ControllerConfig;
  /** A ready job's name or a job file (optionally ":<job>"). */
  job?: string;
  /** Fields from the command line (jobInputFromCli); they win over the job file. */
  input?: JobInput;
  /** Where the report goes: <out>.json and <out>.svg (default workload-reports/<job>-<time>). */
  out?: string;
  /** Print the report as JSON at the end instead of the text summary (progress then goes to `note`). */
  json?: boolean;
  /** Progress lines (default: console.log, or console.error with json). */
  print?: (line: string) => void;
  /** Aborting ends the run early; the report covers what ran. Default: the first SIGINT or SIGTERM. */
  signal?: AbortSignal;
  onStart?: (run: RunHandle) => void;
}

export interface WorkloadCommandResult {
  job: JobSpec;
  report: WorkloadReport;
  jsonPath: string;
  svgPath: string;
  /** What to print at the end. */
  text: string;
  /** 0 when no operation failed and every read verified; 1 otherwise. */
  exitCode: number;
}

export async function runWorkloadCommand(o: WorkloadCommandOptions): Promise<WorkloadCommandResult> {
  const job = resolveJob({ ...(o.job !== undefined ? { job: o.job } : {}), input: o.input ?? {} });
  const controllers = controllersFromConfig(o.cfg);
  if (job.target === 'both' && controllers.length < 2) {
    throw new PagepairError('BAD_FIELD', `${o.cfg.sourceName} has no partner; use --target ${o.cfg.idLetter}`, 'target');
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
  let report: WorkloadReport;
  try {
    report = await runWorkloadJob(controllers, job, { onProgress: progressPrinter(print), signal, ...(o.onStart !== undefined ? { onStart: o.onStart } : {}) });
  } finally {
    detach();
  }
  const { jsonPath, svgPath } = writeReportFiles(report, o.out ?? defaultReportBase(job, new Date(report.startedAt)));
  const text = o.json === true ? JSON.stringify(report, null, 2) : `${formatReportSummary(report)}\n  report ${jsonPath}\n  chart  ${svgPath}`;
  return { job, report, jsonPath, svgPath, text, exitCode: report.ok ? 0 : 1 };
}
