// `pagepair device replace` and `pagepair scrub` while the pair serves: the
// job goes to a controller that answers at its client address (--config's,
// or its partner's when that one does not answer) as a C_POOL_JOB, and the
// command follows it in that controller's status (poolJob) with the same
// progress bar as on a stopped pair. The controller runs it under its own
// pool object, which holds off the partner's writes to what it copies (the
// pool's labels and core.poolBarrier). Ctrl-C stops following only: the job
// goes on in the controller, and `pagepair status` shows it.
//
// When no controller answers, the command takes the stopped pair's path
// (offline-job.ts), which still refuses when a controller looks alive there.

import { setTimeout as sleep } from 'node:timers/promises';
import { PagepairClient } from '../client/client.js';
import { ErrorCode, PagepairError, isPagepairError, type ErrorCodeName } from '../protocol/errors.js';
import type { ControllerStatus } from '../runtime/controller-process.js';
import type { PoolJobReport, PoolJobStatus } from '../runtime/pool-job.js';
import type { PoolStatus } from '../store/pool.js';
import { sinkFor, type ConfigPair, type OfflineJobIo } from './offline-job.js';
import type { ProgressSink } from './progress-bar.js';

export type OnlineJobRequest = { kind: 'replace'; slot: number; device: string; rateBytesPerSec: number } | { kind: 'scrub'; repair: boolean; rateBytesPerSec: number };

/** A job started on a serving controller. */
export interface OnlineJob {
  client: PagepairClient;
  /** The controller running it: A or B. */
  controller: string;
  jobId: number;
}

/** What a job ended with, from the controller's status. */
export interface OnlineJobEnd {
  job: PoolJobStatus;
  report: PoolJobReport;
  /** The controller's pool as it stands after the job. */
  pool: PoolStatus;
}

const CONNECT_TIMEOUT_MS = 3_000;
/** How long the job's reply (its device opened) or a status may take. */
const REQUEST_TIMEOUT_MS = 60_000;
const POLL_MS_DEFAULT = 250;

interface Candidate {
  letter: string;
  host: string;
  port: number;
  tls: boolean;
}

function dialable(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::' || host === '[::]') return '::1';
  return host;
}

/** --config's controller first, then its partner, at their client addresses. */
function candidates(pair: ConfigPair): Candidate[] {
  const cfg = pair.cfg;
  const tls = cfg.tls.mode === 'require';
  const out: Candidate[] = [{ letter: cfg.idLetter, host: dialable(cfg.listen.client.host), port: cfg.listen.client.port, tls }];
  if (cfg.partner !== null) out.push({ letter: cfg.partner.idLetter, host: dialable(cfg.partner.client.host), port: cfg.partner.client.port, tls });
  return out;
}

/**
 * Start `req` on a serving controller of the pair: null when no controller
 * answers at its client address (the pair is stopped: the offline path
 * runs). A controller that answers but does not serve (fenced, joining) is
 * passed over for its partner; when none serves, its refusal is thrown, and
 * so is any other refusal (a bad slot, a device that cannot be opened, a job
 * running already), as the controller typed it.
 */
export async function startOnlineJob(pair: ConfigPair, req: OnlineJobRequest, io: OfflineJobIo = {}): Promise<OnlineJob | null> {
  let refusal: PagepairError | null = null;
  for (const c of candidates(pair)) {
    const dial = (timeoutMs: number): Promise<PagepairClient> => PagepairClient.connect({ host: c.host, port: c.port, token: pair.cfg.clientToken, tls: c.tls, name: `pagepair-${req.kind}`, timeoutMs });
    let client: PagepairClient;
    try {
      // A quick look first (a hung controller that accepts and never says hello must not hold the command up),
      // then a connection whose requests may take long: the job's reply waits for its device to be opened.
      await (await dial(io.online?.connectTimeoutMs ?? CONNECT_TIMEOUT_MS)).close();
      client = await dial(REQUEST_TIMEOUT_MS);
    } catch {
      continue;
    }
    if (client.pairId !== pair.cfg.pairId) {
      await client.close();
      throw new PagepairError('BAD_CONFIG', `the controller at ${c.host}:${c.port} (${c.letter}'s client address in ${pair.cfg.sourceName}) serves pair ${client.pairId}, not ${pair.cfg.pairId}`, 'pairId');
    }
    try {
      const jobId = await client.poolJob(req.kind === 'replace' ? { kind: 'replace', slot: req.slot, device: req.device, rateBytesPerSec: req.rateBytesPerSec } : { kind: 'scrub', repair: req.repair, rateBytesPerSec: req.rateBytesPerSec });
      return { client, controller: c.letter, jobId };
    } catch (err) {
      await client.close();
      if (isPagepairError(err, 'NOT_ACTIVE')) {
        refusal = new PagepairError('NOT_ACTIVE', `controller ${c.letter}: ${err.message}`);
        continue;
      }
      if (isPagepairError(err, 'TIMEOUT')) {
        throw new PagepairError('TIMEOUT', `controller ${c.letter} did not answer the ${req.kind} in time (${err.message}): it may have started it; \`pagepair status\` shows its pool job`);
      }
      if (isPagepairError(err)) throw new PagepairError(err.code, `controller ${c.letter} refused the ${req.kind}: ${err.message}`, err.field);
      throw err;
    }
  }
  if (refusal !== null) throw refusal;
  return null;
}

/** The sink's title for a job in a phase. */
function titleOf(job: PoolJobStatus): string {
  if (job.kind === 'replace') return `rebuilding slot ${job.slot ?? '?'} onto ${job.device ?? '?'}`;
  if (job.phase === 'pages') return 'checking page CRCs';
  return job.repair ? 'scrubbing and repairing the pool' : 'scrubbing the pool';
}

/**
 * Follow the job in its controller's status until it ends, with progress;
 * resolves with its report, rejects with its error. io.signal (Ctrl-C) stops
 * following, not the job. The client is closed at the end.
 */
export async function followOnlineJob(job: OnlineJob, pair: ConfigPair, io: OfflineJobIo = {}): Promise<OnlineJobEnd> {
  const pollMs = io.online?.pollMs ?? POLL_MS_DEFAULT;
  let sink: ProgressSink | null = null;
  let phase = '';
  const where = `controller ${job.controller}`;
  try {
    for (;;) {
      if (io.signal?.aborted === true) {
        throw new PagepairError(
          'SHUTTING_DOWN',
          `stopped following: the ${jobName(job)} goes on in ${where}; \`pagepair status --config ${pair.configPath}${job.controller !== pair.cfg.idLetter ? ` --controller ${job.controller}` : ''}\` shows its progress and its result`,
        );
      }
      let st: ControllerStatus;
      try {
        st = (await job.client.status()) as ControllerStatus;
      } catch (err) {
        throw new PagepairError(
          'NOT_ACTIVE',
          `lost ${where} while following its ${jobName(job)} (${err instanceof Error ? err.message : String(err)}): if it stopped, the job stopped with it (a rebuild cut short leaves its device stale, never trusted); \`pagepair status\` or, the pair stopped, \`pagepair pool status\` shows where the pool is`,
        );
      }
      const j = st.poolJob;
      if (j == null || j.id !== job.jobId) throw new PagepairError('INTERNAL', `${where}'s status shows ${j == null ? 'no pool job' : `pool job ${j.id}`}, not job ${job.jobId}: was it restarted?`);
      if (j.phase !== phase || sink === null) {
        sink?.stop();
        phase = j.phase;
        sink = sinkFor(io, titleOf(j));
      }
      if (j.totalBytes > 0) sink.update(j.doneBytes, j.totalBytes);
      if (j.state === 'failed') {
        const e = j.error ?? { code: 'INTERNAL', message: 'failed, no reason given' };
        throw new PagepairError(isErrorCode(e.code) ? e.code : 'INTERNAL', `the ${jobName(job)} in ${where} failed: ${e.message}`);
      }
      if (j.state === 'done') {
        if (j.report === undefined || st.pool === null) throw new PagepairError('INTERNAL', `${where}'s ${jobName(job)} ended with no report`);
        return { job: j, report: j.report, pool: st.pool };
      }
      await sleepOrAbort(pollMs, io.signal);
    }
  } finally {
    sink?.stop();
    await job.client.close().catch(() => undefined);
  }
}

function jobName(job: OnlineJob): string {
  return `pool job ${job.jobId}`;
}

function isErrorCode(code: string): code is ErrorCodeName {
  return Object.hasOwn(ErrorCode, code);
}

async function sleepOrAbort(ms: number, signal: AbortSignal | undefined): Promise<void> {
  try {
    await sleep(ms, undefined, signal !== undefined ? { signal } : {});
  } catch {
    // aborted: the loop says so
  }
}
