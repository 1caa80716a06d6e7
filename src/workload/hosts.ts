// Where an engine runs: in the runner's own process, or in a worker process
// (so both cores can push). The runner drives either through the same
// small interface; a worker speaks plain messages over the IPC channel.

import { fork, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { PagepairError } from '../protocol/errors.js';
import { Engine, type EngineSetup } from './engine.js';
import type { Recording } from './recording.js';
import { decodeSample, decodeTotals, type EncodedSample, type EngineTotals, type IntervalSample, type PrefillStats, type ReadBackStats } from './stats.js';

export interface EngineHost {
  prefill(): Promise<PrefillStats>;
  run(t0EpochMs: number): Promise<EngineTotals>;
  /** Only an engine in this process reads back (the history it records lives here). */
  readBack?(): Promise<ReadBackStats>;
  stop(): void;
  close(): Promise<void>;
}

export type ToWorker =
  | { type: 'setup'; setup: EngineSetup }
  | { type: 'prefill' }
  | { type: 'go'; t0EpochMs: number }
  | { type: 'stop' }
  | { type: 'close' };

export type FromWorker =
  | { type: 'ready' }
  | { type: 'prefilled'; stats: PrefillStats }
  | { type: 'sample'; sample: EncodedSample }
  | { type: 'done'; totals: EngineTotals<string> }
  | { type: 'closed' }
  | { type: 'error'; code: string; message: string };

export async function inProcessHost(setup: EngineSetup, onSample: (s: IntervalSample) => void, recording?: Recording): Promise<EngineHost> {
  const engine = await Engine.create(setup, { onSample, ...(recording !== undefined ? { recording } : {}) });
  return {
    prefill: () => engine.prefill(),
    run: (t0) => engine.run(t0),
    readBack: () => engine.readBack(),
    stop: () => engine.stop(),
    close: () => engine.close(),
  };
}

/**
 * The compiled worker script. Running from the TypeScript sources (tests),
 * the worker still has to be JavaScript: the build in dist/ is used.
 */
export function workerScriptPath(): string {
  const here = fileURLToPath(import.meta.url);
  const candidates = here.endsWith('.ts')
    ? [fileURLToPath(new URL('../../dist/workload/worker.js', import.meta.url))]
    : [fileURLToPath(new URL('./worker.js', import.meta.url))];
  const hit = candidates.find((p) => existsSync(p));
  if (hit === undefined) {
    throw new PagepairError('BAD_CONFIG', `workers need the compiled worker script (${candidates.join(', ')}); run \`npm run build\` first`, 'workers');
  }
  return hit;
}

export async function workerHost(setup: EngineSetup, onSample: (s: IntervalSample) => void): Promise<EngineHost> {
  const child: ChildProcess = fork(workerScriptPath(), [], {
    serialization: 'advanced',
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    // A test runner's loaders and flags mean nothing to the worker.
    execArgv: [],
  });
  let waiting: { type: FromWorker['type']; resolve(m: FromWorker): void; reject(e: Error): void } | null = null;
  let failure: Error | null = null;
  const fail = (err: Error): void => {
    failure ??= err;
    const w = waiting;
    waiting = null;
    w?.reject(failure);
  };
  child.on('message', (raw) => {
    const m = raw as FromWorker;
    if (m.type === 'sample') {
      onSample(decodeSample(m.sample));
      return;
    }
    if (m.type === 'error') {
      fail(new PagepairError(m.code as ConstructorParameters<typeof PagepairError>[0], `worker ${setup.engineIndex}: ${m.message}`));
      return;
    }
    if (waiting !== null && waiting.type === m.type) {
      const w = waiting;
      waiting = null;
      w.resolve(m);
    }
  });
  const exited = new Promise<void>((resolve) =>
    child.once('exit', (code, signal) => {
      fail(new PagepairError('INTERNAL', `worker ${setup.engineIndex} exited (${signal ?? code}) before it was done`));
      resolve();
    }),
  );
  child.on('error', (err) => fail(new PagepairError('INTERNAL', `worker ${setup.engineIndex}: ${err.message}`)));
  const ask = <T extends FromWorker['type']>(msg: ToWorker, expect: T): Promise<Extract<FromWorker, { type: T }>> =>
    new Promise((resolve, reject) => {
      if (failure !== null) {
        reject(failure);
        return;
      }
      waiting = { type: expect, resolve: resolve as (m: FromWorker) => void, reject };
      child.send(msg);
    });

  try {
    await ask({ type: 'setup', setup }, 'ready');
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return {
    prefill: async () => (await ask({ type: 'prefill' }, 'prefilled')).stats,
    run: async (t0EpochMs) => decodeTotals((await ask({ type: 'go', t0EpochMs }, 'done')).totals),
    stop: () => {
      if (child.connected) child.send({ type: 'stop' } satisfies ToWorker);
    },
    close: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        if (child.connected) child.send({ type: 'close' } satisfies ToWorker);
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}
