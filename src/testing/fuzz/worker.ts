// One fuzz target in a worker thread, so that the command's watchdog can
// stop an input that never yields (a loop no timer of this thread would
// interrupt) and report it as a hang, with the case it was running.

import { parentPort, workerData } from 'node:worker_threads';
import { E2E_TARGETS } from './e2e.js';
import { runTarget, Where } from './runner.js';
import type { RunOptions } from './runner.js';
import { TARGETS } from './targets.js';

export interface WorkerJob {
  target: string;
  /** The real-socket pass of the target instead. */
  e2e: boolean;
  opts: Omit<RunOptions, 'onProgress' | 'where'>;
  shared: SharedArrayBuffer;
}

export type WorkerReport = { kind: 'progress'; done: number; total: number; seconds: number } | { kind: 'done'; result: Awaited<ReturnType<typeof runTarget>> };

const job = workerData as WorkerJob;
const target = job.e2e ? E2E_TARGETS[job.target] : TARGETS.find((t) => t.name === job.target);
if (target === undefined) throw new Error(`no fuzz target ${job.target}`);
const result = await runTarget(target, {
  ...job.opts,
  where: new Where(job.shared),
  onProgress: (done, total, seconds) => parentPort!.postMessage({ kind: 'progress', done, total, seconds } satisfies WorkerReport),
});
parentPort!.postMessage({ kind: 'done', result } satisfies WorkerReport);
