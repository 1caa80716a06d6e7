// A worker process: runs one engine for the runner that forked it, and
// sends its samples and totals back over the IPC channel.

import { isPagepairError } from '../protocol/errors.js';
import { Engine } from './engine.js';
import type { FromWorker, ToWorker } from './hosts.js';
import { encodeSample, encodeTotals } from './stats.js';

let engine: Engine | null = null;

function send(m: FromWorker): void {
  process.send?.(m);
}

function reportError(err: unknown): void {
  send({ type: 'error', code: isPagepairError(err) ? err.code : 'INTERNAL', message: err instanceof Error ? err.message : String(err) });
}

async function handle(m: ToWorker): Promise<void> {
  switch (m.type) {
    case 'setup':
      engine = await Engine.create(m.setup, { onSample: (s) => send({ type: 'sample', sample: encodeSample(s) }) });
      send({ type: 'ready' });
      return;
    case 'prefill':
      send({ type: 'prefilled', stats: await engine!.prefill() });
      return;
    case 'go':
      send({ type: 'done', totals: encodeTotals(await engine!.run(m.t0EpochMs)) });
      return;
    case 'stop':
      engine?.stop();
      return;
    case 'close':
      await engine?.close();
      process.disconnect?.();
      return;
  }
}

process.on('message', (raw) => {
  handle(raw as ToWorker).catch((err: unknown) => {
    reportError(err);
    setTimeout(() => process.exit(1), 100).unref();
  });
});
// Ctrl-C reaches the whole process group: the runner decides when this engine
// stops (so the report still comes), not the signal.
process.on('SIGINT', () => undefined);
process.on('SIGTERM', () => undefined);
// The runner gone means the run is over.
process.on('disconnect', () => {
  void engine?.close().finally(() => process.exit(0));
  if (engine === null) process.exit(0);
});
