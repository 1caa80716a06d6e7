// What `pagepair device replace` and `pagepair scrub` share on a stopped
// pair (a serving one runs the job itself: online-job.ts): their options
// read and checked, the look for a live controller (refused, or a loud
// warning under --force), progress, and a rebuild or scrub that Ctrl-C
// stops cleanly (the pool's own abort signal, so a rebuild cut short
// leaves its device labelled stale, never half trusted).

import { PagepairError, isPagepairError } from '../protocol/errors.js';
import { loadConfig, type ControllerConfig } from '../runtime/config.js';
import type { PageStore } from '../store/page-store.js';
import { partnerConfigFor } from '../workload/command.js';
import { parseSize } from '../workload/units.js';
import { progressSink, type ProgressSink, type ProgressSinkOptions } from './progress-bar.js';
import { checkServing, describeServing, heartbeatsSince, type ServingCheck, type ServingCheckOptions } from './serving-check.js';

/** What tests (and the command) pass in besides the options: where output goes, how long to watch. */
export interface OfflineJobIo {
  /** Warnings and notes (stderr). */
  warn?: (line: string) => void;
  /** Progress sinks (default: a bar on a terminal, lines elsewhere). */
  progress?: (what: string, unit: ProgressSinkOptions['unit']) => ProgressSink;
  serving?: ServingCheckOptions;
  /** Stops the job (the command wires Ctrl-C to it); in online mode, stops following it. */
  signal?: AbortSignal;
  /** When a controller serves (online-job.ts): how long a connection to it may take, how often its status is read. */
  online?: { connectTimeoutMs?: number; pollMs?: number };
}

export interface ConfigPair {
  /** --config as given. */
  configPath: string;
  cfg: ControllerConfig;
  /** The partner's configuration, when given or found beside --config. */
  partnerCfg: ControllerConfig | undefined;
}

export function loadConfigs(config: string | undefined, partnerConfig: string | undefined): ConfigPair {
  if (config === undefined || config === '') throw new PagepairError('BAD_FIELD', 'which pair? give --config controllers/a.json (a controller\'s configuration naming store.pool)', '--config');
  const cfg = loadConfig(config);
  return { configPath: config, cfg, partnerCfg: partnerConfigFor(config, cfg, partnerConfig) };
}

/** --rate: a size a second ("100MiB", "100MiB/s"); absent: no limit (0). */
export function parseRate(text: string | undefined): number {
  if (text === undefined) return 0;
  return parseSize(text.replace(/\/s(ec)?$/i, ''), '--rate');
}

/**
 * Refuse when a controller looks alive (or, with force, say so loudly and
 * go on). Resolves with what was seen, to compare against afterwards.
 */
export async function refuseWhileServing(store: PageStore, pair: ConfigPair, force: boolean, command: string, io: OfflineJobIo): Promise<ServingCheck> {
  const warn = io.warn ?? ((line: string) => process.stderr.write(line));
  const seen = await checkServing(store, pair.cfg, pair.partnerCfg, io.serving);
  if (seen.alive.length === 0) return seen;
  const why = describeServing(seen.alive);
  if (!force) {
    throw new PagepairError(
      'BUSY',
      `${command} runs on a stopped pair only unless a controller of the pair answers at its client address (it then runs the job itself, holding off the partner's writes): none answered, yet ${why}. Wait until it serves, or stop the pair (or, if you are sure nothing serves this store, give --force)`,
      seen.alive.map((s) => s.controller).join(','),
    );
  }
  warn(`\n!!! WARNING: --force: ${why}.\n!!! ${command} goes on anyway: if a controller IS serving this store, its writes during the ${command} may be lost or leave the pool's redundancy wrong.\n\n`);
  return seen;
}

/** After the job: a controller whose heartbeat moved meanwhile started during it. */
export async function warnIfStartedMeanwhile(store: PageStore, seen: ServingCheck, command: string, io: OfflineJobIo): Promise<string[]> {
  const moved = await heartbeatsSince(store, seen.slots).catch(() => []);
  if (moved.length > 0) {
    const warn = io.warn ?? ((line: string) => process.stderr.write(line));
    warn(`!!! WARNING: ${moved.join(' and ')} wrote a heartbeat while the ${command} ran: it started meanwhile; run \`pagepair scrub\` again with the pair stopped\n`);
  }
  return moved;
}

export function sinkFor(io: OfflineJobIo, what: string, unit: ProgressSinkOptions['unit'] = 'bytes'): ProgressSink {
  return io.progress !== undefined ? io.progress(what, unit) : progressSink(what, { unit });
}

/** An AbortSignal that Ctrl-C (SIGINT, SIGTERM) fires, for the length of `run`. */
export async function withInterrupt<T>(run: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const stop = (): void => {
    // On a stopped pair the job stops (the pool lets go first); on a serving one only the following does.
    process.stderr.write('\ninterrupted...\n');
    ac.abort(new PagepairError('SHUTTING_DOWN', 'interrupted'));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    return await run(ac.signal);
  } catch (err) {
    if (ac.signal.aborted && !isPagepairError(err)) throw new PagepairError('SHUTTING_DOWN', `interrupted: ${err instanceof Error ? err.message : String(err)}`);
    throw err;
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}
