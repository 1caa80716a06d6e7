// npm run fuzz: every fuzz target at a million inputs (by default), then a
// slower pass of each over real sockets, and a table of the figures. Exits 1
// on any crash, hang, or a target that no longer serves.

import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { E2E_TARGETS } from './e2e.js';
import { formatFinding, formatTable, Where } from './runner.js';
import type { RunOptions, TargetResult } from './runner.js';
import { TARGETS } from './targets.js';
import type { WorkerJob, WorkerReport } from './worker.js';

/** No input finished for this long: the worker is stuck (the in-thread bound is 2 to 10 s). */
const STALL_MS = 30_000;

/**
 * Runs one target in a worker thread under a watchdog: an input that never
 * yields is stopped and reported as a hang, with its case.
 */
function runInWorker(name: string, shownAs: string, e2e: boolean, opts: Omit<RunOptions, 'onProgress' | 'where'>): Promise<TargetResult> {
  const where = new Where();
  const job: WorkerJob = { target: name, e2e, opts, shared: where.shared };
  const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: job });
  const started = performance.now();
  return new Promise<TargetResult>((resolve) => {
    let lastInputs = -1;
    let lastChange = performance.now();
    let settled = false;
    const finish = (r: TargetResult): void => {
      if (settled) return;
      settled = true;
      clearInterval(watchdog);
      resolve(r);
    };
    const failed = (kind: 'crash' | 'hang', message: string): TargetResult => ({
      target: shownAs,
      inputs: where.inputs,
      cases: 0,
      crashes: kind === 'crash' ? 1 : 0,
      hangs: kind === 'hang' ? 1 : 0,
      stillServing: false,
      seconds: (performance.now() - started) / 1000,
      findings: [{ kind, target: name, seed: opts.seed, batch: where.batch, index: where.index, splits: [], label: `stopped in case ${where.batch}:${where.index}`, hex: where.hex, message }],
    });
    const watchdog = setInterval(() => {
      const inputs = where.inputs;
      if (inputs !== lastInputs) {
        lastInputs = inputs;
        lastChange = performance.now();
        return;
      }
      if (performance.now() - lastChange < STALL_MS) return;
      void worker.terminate();
      finish(failed('hang', `no input finished for ${STALL_MS / 1000} s: the worker was stopped`));
    }, 1000);
    worker.on('message', (m: WorkerReport) => {
      if (m.kind === 'progress') console.log(`  ${shownAs}: ${m.done}/${m.total} inputs, ${m.seconds.toFixed(0)} s, ${(m.done / m.seconds).toFixed(0)}/s`);
      else {
        finish(m.result);
        // Whatever the target left behind (timers, sockets closing) goes with the thread.
        void worker.terminate();
      }
    });
    worker.on('error', (err) => finish(failed('crash', `the worker failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`)));
    worker.on('exit', (code) => finish(failed('crash', `the worker exited (${code}) without a result`)));
  });
}

const HELP = `usage: npm run fuzz -- [options]

  --target NAME     run one target (${TARGETS.map((t) => t.name).join(', ')}); default all
  --inputs N        inputs per target (default 1000000)
  --e2e-inputs N    inputs per target over real sockets (default 3000; 0 skips)
  --seed S          seed (default 1); a run is the same for the same seed
  --replay B:I      run only case I of batch B (from a failure report), every split of it
  --help            this text

Each input is one generated or mutated byte string delivered whole or split
at one offset (every offset for short inputs, random ones for long inputs).
Oracle: nothing escapes (EscapeGuard count 0, no unhandled rejection), no
handler logs an error, every reply is well formed (a typed error or a
close), each input finishes within 2 s, and the target serves a well-formed
request correctly afterwards. Each target runs in a worker thread; one
that finishes no input for 30 s is stopped and reported as a hang.`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      target: { type: 'string' },
      inputs: { type: 'string', default: '1000000' },
      'e2e-inputs': { type: 'string', default: '3000' },
      seed: { type: 'string', default: '1' },
      replay: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const inputs = Number(values.inputs);
  const e2eInputs = Number(values['e2e-inputs']);
  const seed = Number(values.seed);
  if (!Number.isSafeInteger(inputs) || inputs < 0 || !Number.isSafeInteger(seed) || !Number.isSafeInteger(e2eInputs) || e2eInputs < 0) {
    console.error('--inputs, --e2e-inputs and --seed take integers\n');
    console.error(HELP);
    return 2;
  }
  let only: { batch: number; index: number } | undefined;
  if (values.replay !== undefined) {
    const m = /^(\d+):(\d+)$/.exec(values.replay);
    if (m === null) {
      console.error('--replay takes BATCH:INDEX');
      return 2;
    }
    only = { batch: Number(m[1]), index: Number(m[2]) };
  }
  const targets = values.target === undefined ? TARGETS : TARGETS.filter((t) => t.name === values.target);
  if (targets.length === 0) {
    console.error(`no target ${values.target}; targets: ${TARGETS.map((t) => t.name).join(', ')}`);
    return 2;
  }

  const rows: TargetResult[] = [];
  for (const target of targets) {
    console.log(`fuzz ${target.name}: ${target.description}; ${only ? `replaying ${values.replay}` : `${inputs} inputs`}, seed ${seed}`);
    const r = await runInWorker(target.name, target.name, false, { inputs: only !== undefined ? Number.MAX_SAFE_INTEGER : inputs, seed, only });
    rows.push(r);
    for (const f of r.findings) console.log(formatFinding(f));
    const e2e = E2E_TARGETS[target.name];
    if (e2e !== undefined && e2eInputs > 0 && only === undefined) {
      console.log(`fuzz ${target.name} over real sockets: ${e2eInputs} inputs`);
      const re = await runInWorker(target.name, e2e.name, true, { inputs: e2eInputs, seed, inputTimeoutMs: 5000 });
      rows.push(re);
      for (const f of re.findings) console.log(formatFinding(f));
    }
  }
  console.log('');
  console.log(formatTable(rows));
  const bad = rows.some((r) => r.crashes > 0 || r.hangs > 0 || !r.stillServing);
  return bad ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(2);
  },
);
