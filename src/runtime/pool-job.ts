// A controller's pool job: a device replace or a scrub of the pool under
// the store, run while the pair serves (C_POOL_JOB; `pagepair device
// replace` and `pagepair scrub` send it when a controller answers). At most
// one runs at a time; the last one, running or ended, is what status shows
// (poolJob), so a command that stopped following it, or another operator,
// can still see how it went.
//
// The pool does the work (pool.replace, pool.scrub): it announces the work
// in the labels, waits on the barrier (the partner's pool object has read
// those labels: core.poolBarrier) and copies. What is here: the request
// checked (each mistake a typed error naming its field, before anything is
// written), the new device opened by the name both controllers can open
// (a missing file made at the members' size), progress kept, the job
// aborted when the controller stops (a rebuild cut short leaves its device
// stale, never trusted), and a scrub's second half, every page's CRC.

import { PagepairError, isPagepairError } from '../protocol/errors.js';
import { HARD_LIMITS } from '../protocol/limits.js';
import { PoolJobKind, type CPoolJob } from '../protocol/messages.js';
import type { PageStore } from '../store/page-store.js';
import { POOL_LABEL_AREA_BYTES, decodePoolLabel } from '../store/pool-label.js';
import type { Pool, ScrubReport } from '../store/pool.js';
import type { Device } from '../store/types.js';
import { checkPages, pageCheckBytes, type PageCheckReport } from './page-check.js';

export type PoolJobKindName = 'replace' | 'scrub';

/** A C_POOL_JOB as the runner takes it. */
export interface PoolJobRequest {
  kind: PoolJobKindName;
  /** replace: the slot to rebuild; scrub: 0. */
  slot: number;
  /** replace: the new device (an absolute path or an nbd URI); scrub: ''. */
  device: string;
  /** 0: no limit. */
  rateBytesPerSec: number;
  /** scrub: rewrite what disagrees; replace: false. */
  repair: boolean;
}

export type PoolJobReport =
  | { kind: 'replace'; slot: number; old: string; device: string; bytesCopied: number }
  | { kind: 'scrub'; repair: boolean; pool: ScrubReport; pages: PageCheckReport };

/** The last pool job, as status shows it. */
export interface PoolJobStatus {
  id: number;
  kind: PoolJobKindName;
  /** replace: the slot and the new device; null for a scrub. */
  slot: number | null;
  device: string | null;
  repair: boolean;
  state: 'running' | 'done' | 'failed';
  /** What the bytes count: the pool (a rebuild's copy, a scrub's redundancy check), then, for a scrub, the pages' CRCs. */
  phase: 'pool' | 'pages';
  doneBytes: number;
  totalBytes: number;
  /** Wall-clock times (ms since the epoch); endedAtMs null while it runs. */
  startedAtMs: number;
  endedAtMs: number | null;
  report?: PoolJobReport;
  error?: { code: string; message: string };
}

export interface PoolJobDeps {
  /** The pool under the store; null over one file (every job is refused, BAD_CONFIG). */
  pool: Pool | null;
  store: PageStore;
  /** Resolves once the partner's pool object has read labels at least as new as ours (core.poolBarrier). */
  barrier(): Promise<void>;
  /** The device named `name` (a missing file made at createBytes, sparse). */
  openMember(name: string, createBytes: number): Promise<Device>;
  /** Why this controller takes no job now (fenced, stopping, ...), or null when it serves. */
  notServing(): string | null;
  /** Told when a job starts and ends, for the log. */
  onEvent?(what: string, detail: Record<string, unknown>): void;
  nowMs?: () => number;
}

/** The longest device name taken: a path or a URI, in bytes of UTF-8. */
export const DEVICE_NAME_BYTES_MAX = HARD_LIMITS.deviceNameBytesMax;

/** How long a stopping controller waits for its aborted job to let go of the pool. */
const STOP_WAIT_MS = 5_000;

const NBD_URI = /^nbds?(\+unix)?:\/\//;

export function poolJobRequestOf(msg: CPoolJob): PoolJobRequest {
  return { kind: msg.job === PoolJobKind.REPLACE ? 'replace' : 'scrub', slot: msg.slot, device: msg.device, rateBytesPerSec: msg.rateBytesPerSec, repair: msg.repair };
}

/** How many members the layout may lose. */
function paritiesOf(pool: Pool): number {
  const n = pool.status().members.length;
  return pool.layout === 'mirror' ? n - 1 : pool.layout === 'parity' ? 1 : 2;
}

/** Bytes every member of `pool` holds: its labels and its share of the pool's bytes. */
export function memberBytesOf(pool: Pool): number {
  if (pool.rowBytes === 0) return POOL_LABEL_AREA_BYTES + pool.sizeBytes;
  const chunkBytes = pool.status().chunkBytes;
  const rows = (pool.sizeBytes - pool.mirroredPrefixBytes) / pool.rowBytes;
  return POOL_LABEL_AREA_BYTES + pool.mirroredPrefixBytes + rows * chunkBytes;
}

/**
 * The request checked against the pool, before anything is opened or
 * written: each mistake is a typed error naming its field.
 */
export function checkPoolJobRequest(req: PoolJobRequest, pool: Pool | null): void {
  if (pool === null) throw new PagepairError('BAD_CONFIG', 'this controller\'s store is one file, not a pool (store.pool): it has no device to replace or redundancy to scrub', 'store.pool');
  if (!Number.isSafeInteger(req.rateBytesPerSec) || req.rateBytesPerSec < 0) {
    throw new PagepairError('BAD_FIELD', `rateBytesPerSec must be a non-negative integer (0: no limit), got ${String(req.rateBytesPerSec)}`, 'rateBytesPerSec');
  }
  if (req.kind === 'scrub') {
    if (req.slot !== 0) throw new PagepairError('BAD_FIELD', `slot must be 0 for a scrub (it checks every slot), got ${req.slot}`, 'slot');
    if (req.device !== '') throw new PagepairError('BAD_FIELD', 'device must be empty for a scrub (it opens no device)', 'device');
    return;
  }
  if (req.kind !== 'replace') throw new PagepairError('BAD_FIELD', `kind must be replace or scrub, got ${JSON.stringify(req.kind)}`, 'kind');
  if (req.repair) throw new PagepairError('BAD_FIELD', 'repair is for a scrub; a replace rebuilds the whole slot anyway', 'repair');
  const st = pool.status();
  const n = st.members.length;
  if (!Number.isSafeInteger(req.slot) || req.slot < 0 || req.slot >= n) {
    throw new PagepairError('BAD_FIELD', `slot must be one of 0..${n - 1} (the ${pool.layout} pool has ${n} devices), got ${String(req.slot)}`, 'slot');
  }
  checkDeviceName(req.device);
  const clash = st.members.find((m) => m.slot !== req.slot && m.name === req.device);
  if (clash !== undefined) throw new PagepairError('BAD_FIELD', `device ${req.device} is the pool's device in slot ${clash.slot}: a device fills one slot`, 'device');
  const parities = paritiesOf(pool);
  const othersDown = st.members.filter((m) => m.slot !== req.slot && m.state !== 'healthy');
  if (othersDown.length >= parities) {
    throw new PagepairError(
      'IO_ERROR',
      `slot ${req.slot} cannot be rebuilt: the ${pool.layout} pool needs ${parities === 1 ? 'every other device' : `at least ${n - parities} other devices`} healthy, and ${othersDown.map((m) => `slot ${m.slot} (${m.name}) is ${m.reason ?? m.state}`).join(', ')}`,
      'slot',
    );
  }
}

/** A name both controllers can open: an nbd URI, or an absolute path. */
export function checkDeviceName(name: string): void {
  if (typeof name !== 'string' || name === '') throw new PagepairError('BAD_FIELD', 'device: which device goes into the slot? an absolute path or an nbd:// URI', 'device');
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > DEVICE_NAME_BYTES_MAX) throw new PagepairError('BAD_FIELD', `device is ${bytes} bytes long, at most ${DEVICE_NAME_BYTES_MAX} are taken`, 'device');
  if (name.includes('\0')) throw new PagepairError('BAD_FIELD', 'device holds a NUL character', 'device');
  if (NBD_URI.test(name)) return;
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(name)) throw new PagepairError('BAD_FIELD', `device ${name}: not a URI a pool member can have (nbd://, nbds://, nbd+unix://, nbds+unix://)`, 'device');
  if (!name.startsWith('/')) {
    throw new PagepairError('BAD_FIELD', `device ${name} is a relative path: both controllers must open it by the same name, so give it absolute`, 'device');
  }
}

function errorOf(err: unknown): { code: string; message: string } {
  if (isPagepairError(err)) return { code: err.code, message: err.message };
  return { code: 'IO_ERROR', message: err instanceof Error ? err.message : String(err) };
}

function percentOf(s: PoolJobStatus): string {
  return s.totalBytes === 0 ? '0%' : `${Math.floor((100 * s.doneBytes) / s.totalBytes)}%`;
}

export class PoolJobRunner {
  private last: PoolJobStatus | null = null;
  private running: { abort: AbortController; done: Promise<void> } | null = null;
  /** A job being set up (its device being opened): a second request is BUSY meanwhile. */
  private starting = false;
  private nextId = 1;
  private readonly now: () => number;

  constructor(private readonly deps: PoolJobDeps) {
    this.now = deps.nowMs ?? Date.now;
  }

  /** The last job (a copy), or null when none ran since the controller started. */
  status(): PoolJobStatus | null {
    if (this.last === null) return null;
    return { ...this.last, ...(this.last.error !== undefined ? { error: { ...this.last.error } } : {}) };
  }

  /**
   * Check `req`, open its device and start it; resolves with the job's id
   * once it runs. Rejects (a PagepairError) when it cannot start: nothing
   * was written then.
   */
  async start(req: PoolJobRequest): Promise<number> {
    const pool = this.deps.pool;
    checkPoolJobRequest(req, pool);
    if (this.running !== null || this.starting) {
      const j = this.last;
      throw new PagepairError('BUSY', `a pool job runs already${j !== null && j.state === 'running' ? ` (job ${j.id}, ${j.kind}${j.slot !== null ? ` of slot ${j.slot}` : ''}, ${percentOf(j)})` : ''}: one at a time; pagepair status shows it`);
    }
    const why = this.deps.notServing();
    if (why !== null) throw new PagepairError('NOT_ACTIVE', `no pool job now: ${why}`);
    this.starting = true;
    try {
      let device: Device | null = null;
      if (req.kind === 'replace') device = await this.openDevice(req.device, memberBytesOf(pool!));
      const id = this.nextId++;
      const job: PoolJobStatus = {
        id,
        kind: req.kind,
        slot: req.kind === 'replace' ? req.slot : null,
        device: req.kind === 'replace' ? req.device : null,
        repair: req.repair,
        state: 'running',
        phase: 'pool',
        doneBytes: 0,
        totalBytes: pool!.sizeBytes,
        startedAtMs: this.now(),
        endedAtMs: null,
      };
      this.last = job;
      const abort = new AbortController();
      this.deps.onEvent?.('pool job started', { id, kind: req.kind, slot: job.slot, device: job.device, repair: req.repair, rateBytesPerSec: req.rateBytesPerSec });
      const done = this.run(pool!, job, req, device, abort.signal).finally(() => {
        this.running = null;
      });
      this.running = { abort, done };
      return id;
    } finally {
      this.starting = false;
    }
  }

  /** Abort the job that runs (the controller stops) and wait, a while at most, for it to let go of the pool. */
  async stop(): Promise<void> {
    const r = this.running;
    if (r === null) return;
    r.abort.abort(new PagepairError('SHUTTING_DOWN', 'the controller is stopping'));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([r.done, new Promise<void>((resolve) => (timer = setTimeout(resolve, STOP_WAIT_MS)))]);
    clearTimeout(timer);
  }

  private async openDevice(name: string, memberBytes: number): Promise<Device> {
    let device: Device;
    try {
      device = await this.deps.openMember(name, memberBytes);
    } catch (err) {
      // Its own name check aside, whatever failed is the device's: IO_ERROR (a connect's NOT_ACTIVE would read as "this controller does not serve").
      if (isPagepairError(err, 'BAD_FIELD')) throw err;
      throw new PagepairError('IO_ERROR', `device ${name} cannot be opened: ${err instanceof Error ? err.message : String(err)}`, 'device');
    }
    if (device.sizeBytes < memberBytes) {
      await device.close().catch(() => undefined);
      throw new PagepairError('BAD_FIELD', `device ${name} holds ${device.sizeBytes} bytes; every device of this pool needs at least ${memberBytes}`, 'device');
    }
    // A client names the device: never write over one that holds something else (a file system, another
    // program's file). Taken: zeros where the labels go (a new file or export), or a pool label.
    let head: Buffer;
    try {
      head = await device.read(0, POOL_LABEL_AREA_BYTES);
    } catch (err) {
      await device.close().catch(() => undefined);
      throw new PagepairError('IO_ERROR', `device ${name} cannot be read: ${err instanceof Error ? err.message : String(err)}`, 'device');
    }
    const labelled = [0, 4096].some((at) => typeof decodePoolLabel(head.subarray(at, at + 4096)) !== 'string');
    if (!labelled && head.some((b) => b !== 0)) {
      await device.close().catch(() => undefined);
      throw new PagepairError('BAD_FIELD', `device ${name} holds data that is not a pool label in its first ${POOL_LABEL_AREA_BYTES} bytes: not written over (zero them to use it)`, 'device');
    }
    return device;
  }

  private async run(pool: Pool, job: PoolJobStatus, req: PoolJobRequest, device: Device | null, signal: AbortSignal): Promise<void> {
    const progress = (done: number, total: number): void => {
      job.doneBytes = done;
      job.totalBytes = total;
    };
    const common = { rateBytesPerSec: req.rateBytesPerSec, onProgress: progress, signal, barrier: async () => void (await this.deps.barrier()) };
    try {
      if (req.kind === 'replace') {
        const old = pool.status().members[req.slot]?.name ?? '';
        await pool.replace(req.slot, { name: req.device, device: device! }, common);
        await pool.sync();
        job.report = { kind: 'replace', slot: req.slot, old, device: req.device, bytesCopied: job.doneBytes };
      } else {
        const report = await pool.scrub({ ...common, repair: req.repair });
        if (req.repair) await pool.sync();
        signal.throwIfAborted();
        job.phase = 'pages';
        job.doneBytes = 0;
        job.totalBytes = await pageCheckBytes(this.deps.store);
        const pages = await checkPages(this.deps.store, { rateBytesPerSec: req.rateBytesPerSec, onProgress: progress, signal });
        job.report = { kind: 'scrub', repair: req.repair, pool: report, pages };
      }
      job.state = 'done';
    } catch (err) {
      job.state = 'failed';
      job.error = signal.aborted
        ? {
            code: 'SHUTTING_DOWN',
            message:
              req.kind === 'replace'
                ? `stopped with the controller after ${job.doneBytes} of ${job.totalBytes} bytes: ${req.device} stays labelled unfinished, so no pool trusts it; run device replace again`
                : `stopped with the controller after ${job.doneBytes} of ${job.totalBytes} bytes (${job.phase === 'pool' ? "the pool's redundancy" : "the pages' CRCs"}); run scrub again`,
          }
        : errorOf(err);
    } finally {
      job.endedAtMs = this.now();
      this.deps.onEvent?.('pool job ended', { id: job.id, kind: job.kind, state: job.state, doneBytes: job.doneBytes, totalBytes: job.totalBytes, ...(job.error !== undefined ? { error: job.error } : {}), ...(job.report !== undefined ? { report: job.report } : {}) });
    }
  }
}
