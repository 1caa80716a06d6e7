// Runs one job against a pair: allocates (or reuses) the working set,
// splits it and the clients across the engines (this process or worker
// processes), prefills, starts every engine on the same instant, merges
// their samples into the time series, watches the pair, and builds the
// report. Allocation, flush and release go through a failing-over client so
// a controller lost mid-run does not strand the working set.

import { readFileSync } from 'node:fs';
import { PagepairClient, controllerAddresses, type ControllerAddress } from '../client/client.js';
import type { NbdEndpoint } from '../client/nbd-pair-client.js';
import { PairClient } from '../client/pair-client.js';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import type { ControllerConfig } from '../runtime/config.js';
import type { EngineClientOptions, EngineSetup, AllocationRef } from './engine.js';
import { inProcessHost, workerHost, type EngineHost } from './hosts.js';
import { describeJob, grainBytes, stripeBytes, type JobSpec, type Target } from './job.js';
import { PairMonitor, epochNowMs, type PairEvent, type PairEventKind } from './pair-monitor.js';
import type { ProgressEvent } from './progress.js';
import type { Recording } from './recording.js';
import { buildReport, type WorkloadReport } from './report.js';
import { mergeInto, newHistogram, type EngineTotals, type PrefillStats, type ReadBackStats } from './stats.js';
import { TimeSeries } from './timeseries.js';

export interface RunOptions {
  /** Live progress: phases, one record per interval, pair events. */
  onProgress?: (ev: ProgressEvent) => void;
  /** Aborting ends the run early (the operations in flight finish); the report covers what ran. */
  signal?: AbortSignal;
  /** Watch the controllers' status and record pair events (default true). */
  monitor?: boolean;
  monitorPollMs?: number;
  /** Called once the run's clock starts, with a handle to mark events (e.g. "kill") or stop. */
  onStart?: (run: RunHandle) => void;
  /**
   * Record a history for the checker into this (see recording.ts): the job
   * then runs in this process, on fresh allocations, with every read
   * verified, and ends by reading the whole working set back.
   */
  record?: Recording;
  /** PairClient timing of the engines' clients and of the allocating client. */
  client?: EngineClientOptions;
  /** With job.transport nbd: where each controller serves NBD (nbdEndpointsFromConfigs). */
  nbd?: NbdEndpoint[];
}

export interface RunHandle {
  /** Records an event at this instant; it goes to the progress output, the report and the chart. */
  mark(kind: PairEventKind, detail: string, controller?: string | null): void;
  /**
   * A controller's new role, seen by the caller (before the pair monitor's
   * next poll): recorded as an event of `kind` at this instant, unless the
   * monitor already reported that role; the monitor then does not report it again.
   */
  markRole(controller: string, role: string, kind: PairEventKind, detail: string): void;
  stop(): void;
  /** ms since the run's start. */
  elapsedMs(): number;
}

const VERSION = (() => {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
})();

/** Both controllers of the pair a configuration names (A first), or the one when it has no partner. */
export function controllersFromConfig(cfg: ControllerConfig, tls?: boolean): ControllerAddress[] {
  const self: ControllerAddress = {
    id: cfg.idLetter,
    host: cfg.listen.client.host === '0.0.0.0' ? '127.0.0.1' : cfg.listen.client.host,
    port: cfg.listen.client.port,
    token: cfg.clientToken,
    ...(tls === true || cfg.tls.mode === 'require' ? { tls: true } : {}),
  };
  if (cfg.partner === null) return [self];
  const all = controllerAddresses({
    id: cfg.idLetter,
    clientToken: cfg.clientToken,
    listen: cfg.listen,
    partner: { id: cfg.partner.idLetter, client: cfg.partner.client },
    tls: cfg.tls,
  }, { tls: tls === true }).all;
  return [...all].sort((a, b) => a.id.localeCompare(b.id));
}

function checkTarget(controllers: readonly ControllerAddress[], target: Target): void {
  if (controllers.length === 0) throw new PagepairError('BAD_FIELD', 'no controller to drive', 'target');
  if (target !== 'both' && !controllers.some((c) => c.id === target)) {
    throw new PagepairError('BAD_FIELD', `target ${target}: the configuration names only ${controllers.map((c) => c.id).join(', ')}`, 'target');
  }
}

function checkNbd(controllers: readonly ControllerAddress[], target: Target, nbd: readonly NbdEndpoint[]): void {
  const need = target === 'both' ? controllers.map((c) => c.id) : [target];
  const missing = need.filter((id) => !nbd.some((e) => e.id === id));
  if (missing.length > 0) {
    throw new PagepairError('BAD_FIELD', `--transport nbd: no NBD address for controller ${missing.join(' and ')} (listen.nbd in its configuration)`, 'transport');
  }
}

/**
 * Where the controllers serve NBD, from their configurations' listen.nbd
 * (TCP; a controller listening on every interface is reached on loopback).
 * A configuration names its partner's client and peer ports but not its
 * NBD address, so the partner's own configuration is needed for it.
 */
export function nbdEndpointsFromConfigs(configs: readonly ControllerConfig[]): NbdEndpoint[] {
  const out: NbdEndpoint[] = [];
  for (const cfg of configs) {
    const nbd = cfg.listen.nbd;
    if (nbd === undefined || out.some((e) => e.id === cfg.idLetter)) continue;
    const host = nbd.host === '0.0.0.0' || nbd.host === '' ? '127.0.0.1' : nbd.host === '::' ? '::1' : nbd.host;
    // Port 0 (any free port) cannot be known from the file: the unix socket then.
    if (nbd.port === 0 && nbd.socket !== undefined) out.push({ id: cfg.idLetter, socketPath: nbd.socket });
    else out.push({ id: cfg.idLetter, host, port: nbd.port });
  }
  return out.sort((a, b) => a.id.localeCompare(b.id));
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

/** n split into `parts` nearly equal whole shares. */
function shares(n: number, parts: number): number[] {
  return Array.from({ length: parts }, (_, i) => Math.floor((n * (i + 1)) / parts) - Math.floor((n * i) / parts));
}

/** A recorded history needs every value a block can hold named by this run's writes, in this process. */
function checkRecordable(job: JobSpec): void {
  if (job.workers !== 1) throw new PagepairError('BAD_FIELD', `a recorded history is kept in this process: workers must be 1 (got ${job.workers})`, 'workers');
  if (!job.verify) throw new PagepairError('BAD_FIELD', 'a recorded history needs verified reads (drop --no-verify)', 'verify');
  if (job.allocationName !== null) throw new PagepairError('BAD_FIELD', 'a recorded history starts from fresh allocations: leave out name', 'name');
}

/** Runs `job` against the pair and returns its report (nothing is written to disk here). */
export async function runWorkloadJob(controllersIn: readonly ControllerAddress[], job: JobSpec, opts: RunOptions = {}): Promise<WorkloadReport> {
  checkTarget(controllersIn, job.target);
  if (job.transport === 'nbd') checkNbd(controllersIn, job.target, opts.nbd ?? []);
  const record = opts.record ?? null;
  if (record !== null) checkRecordable(job);
  const timing = opts.client ?? {};
  const controllers = [...controllersIn];
  const progress = opts.onProgress ?? (() => undefined);
  const preferred = job.target === 'both' ? controllers[0]!.id : job.target;
  const adminOrder = [...controllers].sort((a, b) => (a.id === preferred ? -1 : b.id === preferred ? 1 : 0));

  const events: PairEvent[] = [];
  let t0 = 0;
  const addEvent = (e: PairEvent): void => {
    e.tMs = Math.round(e.atEpochMs - (t0 > 0 ? t0 : runnerStart));
    events.push(e);
    progress({ type: 'pair', event: e });
  };
  const runnerStart = epochNowMs();

  const hosts: EngineHost[] = [];
  let monitor: PairMonitor | null = null;
  let admin: PairClient | null = null;
  const allocations: (AllocationRef & { reused: boolean })[] = [];
  let stopped = false;
  const stopAll = (): void => {
    stopped = true;
    for (const h of hosts) h.stop();
  };
  const onAbort = (): void => stopAll();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  let released = false;

  try {
    progress({ type: 'phase', phase: 'connect', detail: `${controllers.map((c) => `${c.id} ${c.host}:${c.port}`).join(', ')}; ${describeJob(job)}` });
    admin = await PairClient.connect({
      controllers: adminOrder,
      name: `pagepair-workload/${job.name}/admin`,
      ...(timing.requestTimeoutMs !== undefined ? { timeoutMs: timing.requestTimeoutMs } : {}),
      ...(timing.retryForMs !== undefined ? { retryForMs: timing.retryForMs } : {}),
    });
    if (opts.monitor !== false) {
      monitor = new PairMonitor(controllers, { pollIntervalMs: opts.monitorPollMs ?? 250, onEvent: addEvent });
      await monitor.start();
    }
    const before = monitor?.roles() ?? {};

    // ------------------------------------------------------------ allocate
    const allocBytes = job.sizeBytes / job.allocations;
    const base = job.allocationName ?? `wl-${job.name}-${job.seed}-${Date.now().toString(36)}`;
    const names = Array.from({ length: job.allocations }, (_, i) => (job.allocations === 1 ? base : `${base}-${i}`));
    const existing = job.allocationName === null ? [] : await listAllocations(adminOrder);
    for (const name of names) {
      const have = existing.find((a) => a.name === name);
      if (have !== undefined) {
        if (have.pageSizeBytes * have.pageCount < allocBytes || have.policy !== job.policy) {
          throw new PagepairError(
            'BAD_FIELD',
            `allocation ${name} exists with ${have.pageSizeBytes * have.pageCount} bytes under policy ${have.policy}; the job needs ${allocBytes} bytes under ${job.policy} (pick another name or release it)`,
            'name',
          );
        }
        allocations.push({ guid: have.guid, name, usedBytes: allocBytes, pageSizeBytes: have.pageSizeBytes, reused: true });
        continue;
      }
      const a = await admin.allocate(name, allocBytes, job.policy);
      allocations.push({ guid: a.guid, name, usedBytes: allocBytes, pageSizeBytes: a.pageSizeBytes, reused: false });
    }
    progress({
      type: 'phase',
      phase: 'allocate',
      detail: `${allocations.length} allocation(s) of ${allocBytes} bytes (${allocations.map((a) => `${a.name}${a.reused ? ' reused' : ''}`).join(', ')}), pages of ${allocations[0]!.pageSizeBytes} bytes`,
    });

    // ------------------------------------------------------------ engines
    const stripe = stripeBytes(job.blockSizes);
    const pageMin = Math.min(...allocations.map((a) => a.pageSizeBytes));
    // A chunk carries its own header: no chunk spans two pages, so a write torn at a page boundary is still told apart.
    const chunkBytes = gcd(grainBytes(job.blockSizes), pageMin);
    const stripesPerEngine = shares(job.sizeBytes / stripe, job.workers);
    const clientsPerEngine = shares(job.clients, job.workers);
    const runTag = (Math.imul(job.seed, 0x9e3779b1) ^ Math.floor(Date.now() / 1000) ^ process.pid) >>> 0 || 1;
    const initial = allocations.some((a) => a.reused) ? 'unknown' : 'zero';
    let errorsSoFar = 0;
    let verifyErrorsSoFar = 0;
    const series = new TimeSeries(job.workers, job.intervalMs, job.warmupS * 1000, (r) =>
      progress({ type: 'interval', interval: r, errorsSoFar: (errorsSoFar += r.errors), verifyErrorsSoFar: (verifyErrorsSoFar += r.verifyErrors) }),
    );
    const setups: EngineSetup[] = [];
    let stripeAt = 0;
    let clientAt = 0;
    for (let e = 0; e < job.workers; e++) {
      const clientCount = clientsPerEngine[e]!;
      const ofClients = (n: number): number => (n * clientCount) / job.clients;
      setups.push({
        job,
        engineIndex: e,
        controllers,
        allocations: allocations.map(({ reused: _reused, ...a }) => a),
        partStartBytes: stripeAt * stripe,
        partBytes: stripesPerEngine[e]! * stripe,
        clientFirst: clientAt,
        clientCount,
        rateOpsPerSec: job.rateOpsPerSec > 0 ? ofClients(job.rateOpsPerSec) : 0,
        ops: job.ops > 0 ? Math.max(1, Math.round(ofClients(job.ops))) : 0,
        runTag,
        chunkBytes,
        initial,
        ...(opts.client !== undefined ? { client: opts.client } : {}),
        ...(job.transport === 'nbd' ? { nbd: opts.nbd ?? [] } : {}),
      });
      stripeAt += stripesPerEngine[e]!;
      clientAt += clientCount;
    }
    const onSample = (s: Parameters<TimeSeries['add']>[0]): void => series.add(s);
    const made = await Promise.allSettled(
      setups.map((s) => (job.workers === 1 ? inProcessHost(s, onSample, record ?? undefined) : workerHost(s, onSample))),
    );
    for (const m of made) if (m.status === 'fulfilled') hosts.push(m.value);
    const failed = made.find((m) => m.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;

    // ------------------------------------------------------------ prefill
    let prefill: WorkloadReport['prefill'] = null;
    if (job.prefill && !stopped) {
      progress({ type: 'phase', phase: 'prefill', detail: `writing all ${job.sizeBytes} bytes once (not counted)` });
      const stats: PrefillStats[] = await Promise.all(hosts.map((h) => h.prefill()));
      prefill = {
        bytes: stats.reduce((s, x) => s + x.bytes, 0),
        ops: stats.reduce((s, x) => s + x.ops, 0),
        errors: stats.reduce((s, x) => s + x.errors, 0),
        seconds: Math.max(...stats.map((x) => x.elapsedMs)) / 1000,
      };
    }

    // ------------------------------------------------------------ run
    // A moment ahead, so every worker starts its clock on the same instant.
    t0 = epochNowMs() + (job.workers > 1 ? 100 : 5);
    for (const e of events) e.tMs = Math.round(e.atEpochMs - t0);
    progress({ type: 'phase', phase: 'run', detail: job.warmupS > 0 ? `warm-up ${job.warmupS} s, then measuring` : 'measuring' });
    opts.onStart?.({
      mark: (kind, detail, controller = null) => addEvent({ atEpochMs: epochNowMs(), tMs: 0, controller, kind, role: null, detail }),
      markRole: (controller, role, kind, detail) => {
        if (monitor === null || monitor.noteRole(controller, role)) addEvent({ atEpochMs: epochNowMs(), tMs: 0, controller, kind, role, detail });
      },
      stop: stopAll,
      elapsedMs: () => epochNowMs() - t0,
    });
    if (stopped) stopAll();
    const totals: EngineTotals[] = await Promise.all(hosts.map((h) => h.run(t0)));
    const intervals = series.finish();

    // ------------------------------------------------------------ wrap up
    const readHist = newHistogram();
    const writeHist = newHistogram();
    const sum = (f: (t: EngineTotals) => number): number => totals.reduce((s, t) => s + f(t), 0);
    const errorCodes: Record<string, number> = {};
    for (const t of totals) for (const [k, v] of Object.entries(t.errorCodes)) errorCodes[k] = (errorCodes[k] ?? 0) + v;
    for (const t of totals) {
      mergeInto(readHist, t.readHist);
      mergeInto(writeHist, t.writeHist);
    }
    const endMs = Math.max(...totals.map((t) => t.endMs));
    const elapsedS = Math.max(0, endMs - job.warmupS * 1000) / 1000;
    let readBack: ReadBackStats | null = null;
    if (record !== null) {
      progress({ type: 'phase', phase: 'readback', detail: `reading all ${job.sizeBytes} bytes back and checking them (the history's final reads)` });
      readBack = await hosts[0]!.readBack!();
    }
    const after = monitor?.roles() ?? {};
    await monitor?.stop();
    monitor = null;

    if (job.flush) {
      progress({ type: 'phase', phase: 'flush', detail: 'flushing the allocations to the store (not counted)' });
      for (const a of allocations) await admin.flush(a.guid);
    }
    if (!job.keep) {
      progress({ type: 'phase', phase: 'release', detail: `releasing ${allocations.length} allocation(s)` });
      for (const a of allocations) await admin.release(a.guid);
    }
    released = true;

    const report = buildReport({
      version: VERSION,
      job,
      startedAtEpochMs: t0,
      controllers: controllers.map((c) => ({ id: c.id, host: c.host, port: c.port })),
      allocations: allocations.map((a) => ({ name: a.name, guid: a.guid, usedBytes: a.usedBytes, pageSizeBytes: a.pageSizeBytes, reused: a.reused })),
      prefill,
      measured: {
        readOps: sum((t) => t.readOps),
        writeOps: sum((t) => t.writeOps),
        readBytes: sum((t) => t.readBytes),
        writeBytes: sum((t) => t.writeBytes),
        elapsedS,
        errors: sum((t) => t.errors),
        errorCodes,
        verifyErrors: sum((t) => t.verifyErrors),
        verifyFailures: totals.flatMap((t) => t.verifyFailures).slice(0, 20),
        readsVerified: sum((t) => t.readsVerified),
        failovers: sum((t) => t.failovers),
      },
      readHist,
      writeHist,
      intervals,
      events,
      pair: { before, after },
      readBack,
    });
    progress({ type: 'phase', phase: 'done', detail: `${report.totals.ops} ops, ${report.totals.errors} errors, ${report.totals.verifyErrors} verification errors` });
    return report;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    await monitor?.stop();
    await Promise.all(hosts.map((h) => h.close().catch(() => undefined)));
    // A run that failed part-way does not leave its working set behind.
    if (!released && !job.keep && admin !== null) {
      for (const a of allocations) if (!a.reused) await admin.release(a.guid).catch(() => undefined);
    }
    await admin?.close();
  }
}

async function listAllocations(order: readonly ControllerAddress[]): Promise<Awaited<ReturnType<PagepairClient['list']>>> {
  let lastErr: unknown = null;
  for (const addr of order) {
    try {
      const c = await PagepairClient.connect({ ...addr, name: 'pagepair-workload/list', timeoutMs: 5000 });
      try {
        return await c.list();
      } finally {
        await c.close();
      }
    } catch (err) {
      if (!isPagepairError(err)) throw err;
      lastErr = err;
    }
  }
  throw lastErr instanceof Error ? lastErr : new PagepairError('NOT_ACTIVE', 'no controller answered the allocation list');
}
