// A workload that records a history for the checker while it drives both
// controllers through failing-over clients.
//
// One allocation of N blocks; every block is a register (key = its number).
// Each write writes a value no other write ever wrote, and the block's bytes
// say which value they hold, so a read names the write it saw and can be
// checked byte for byte against it. One operation is in flight per block
// and each worker runs one operation at a time, so a worker is a process of
// the history. Completion times are kept so that a caller (the kill test)
// can ask how long service stalled in any window.

import { performance } from 'node:perf_hooks';
import { setImmediate as yieldTurn } from 'node:timers/promises';
import { HistoryRecorder, type HistoryHeader, type HistoryOp, type OpOutcome } from '../checker/history.js';
import { checkHistory } from '../checker/linearizability.js';
import { controllerAddresses, type ControllerAddress } from '../client/client.js';
import { PairClient } from '../client/pair-client.js';
import { Prng } from '../core/prng.js';
import { PagepairError, isPagepairError } from '../errors.js';
import type { ControllerConfig } from '../runtime/config.js';
import { formatCheck } from './check.js';

export interface HistoryWorkloadOptions {
  /** One or both controllers; PairClients fail over between them. */
  controllers: readonly ControllerAddress[];
  blocks?: number;
  blockBytes?: number;
  /** Operations in flight (one per worker). */
  workers?: number;
  /** PairClients shared by the workers; half of them start on the second controller. */
  clients?: number;
  readPct?: number;
  seed?: number;
  policy?: string;
  /** Name of the allocation (default: derived from the seed and the time). */
  name?: string;
  /** One request on one controller. */
  requestTimeoutMs?: number;
  /** How long a PairClient keeps retrying one call before the op counts as maybe-happened. */
  retryForMs?: number;
  retryIntervalMs?: number;
  /** Monotonic ms; default performance.now. */
  clock?: () => number;
  /** Extra header fields for the history file. */
  meta?: Record<string, unknown>;
  /** After the final reads: flush the allocation to the store / release it. */
  flushAtEnd?: boolean;
  releaseAtEnd?: boolean;
  /** Told about every failover of a client. */
  onSwitch?: (info: { from: string | null; to: string; reason: string }) => void;
}

export interface HistoryWorkloadStats {
  elapsedS: number;
  /** Operations answered with success (final reads not included). */
  ops: number;
  readsOk: number;
  writesOk: number;
  /** Operations that ended in an error, after the client's retries. */
  errors: number;
  errorCodes: Record<string, number>;
  /** Writes whose fate is unknown (timed out or gave up): maybe-happened. */
  writesMaybe: number;
  /** Reads whose bytes did not match the value they claimed (or any value): corruption. */
  verifyErrors: number;
  verifyFailures: string[];
  /** Failovers of the clients from one controller to the other. */
  switches: number;
  /** Final reads that got no answer. */
  finalReadsFailed: number;
}

export interface HistoryWorkloadResult {
  allocation: { guid: string; name: string };
  header: HistoryHeader;
  ops: HistoryOp[];
  recorder: HistoryRecorder;
  /** Per key: the value the final read returned (absent when it failed). */
  finalValues: Map<string, number>;
  stats: HistoryWorkloadStats;
}

const MAGIC = 0x48504750; // "PGPH"
export const VALUE_HEADER_BYTES = 16;
const VERIFY_FAILURES_KEPT = 20;

/**
 * The bytes block `block` holds after the write of `value` (0 = never
 * written: zeros). The header names the block, the value and the seed; the
 * rest is derived from them, so a torn or misplaced block never passes.
 */
export function valuePattern(seed: number, block: number, value: number, bytes: number): Buffer {
  const buf = Buffer.allocUnsafe(bytes);
  if (value === 0) return buf.fill(0);
  const g = new Prng((Math.imul(seed, 0x9e3779b1) ^ Math.imul(block, 0x85ebca6b) ^ Math.imul(value, 0xc2b2ae35)) >>> 0);
  for (let i = 0; i + 4 <= bytes; i += 4) buf.writeUInt32LE(g.nextU32(), i);
  for (let i = bytes - (bytes % 4); i < bytes; i++) buf[i] = g.nextU32() & 0xff;
  buf.writeUInt32LE(MAGIC, 0);
  buf.writeUInt32LE(block >>> 0, 4);
  buf.writeUInt32LE(value >>> 0, 8);
  buf.writeUInt32LE(seed >>> 0, 12);
  return buf;
}

/** Which value a block's bytes hold, or why they hold none. */
export function decodeValue(seed: number, block: number, data: Buffer, bytes: number): { value: number } | { corrupt: string } {
  if (data.length !== bytes) return { corrupt: `${data.length} bytes instead of ${bytes}` };
  if (data.readUInt32LE(0) !== MAGIC) {
    for (let i = 0; i < data.length; i++) if (data[i] !== 0) return { corrupt: `no header and not zeros (byte ${i} is ${data[i]})` };
    return { value: 0 };
  }
  const holdsBlock = data.readUInt32LE(4);
  const value = data.readUInt32LE(8);
  const holdsSeed = data.readUInt32LE(12);
  if (holdsBlock !== block) return { corrupt: `holds block ${holdsBlock}'s data (value ${value})` };
  if (holdsSeed !== seed >>> 0) return { corrupt: `holds data of seed ${holdsSeed} (value ${value})` };
  if (value === 0) return { corrupt: 'header names value 0' };
  const want = valuePattern(seed, block, value, bytes);
  if (!want.equals(data)) {
    let at = 0;
    while (at < bytes && want[at] === data[at]) at++;
    return { corrupt: `header says value ${value} but byte ${at} differs (torn or mixed page)` };
  }
  return { value };
}

/** Errors after which the op may still have happened: no definite answer. */
const NO_ANSWER: ReadonlySet<string> = new Set(['TIMEOUT', 'NOT_ACTIVE', 'NOT_MIRRORED', 'PARTNER_LOST', 'SHUTTING_DOWN', 'FENCED', 'BUSY', 'STALE_EPOCH']);

function outcomeOf(err: unknown): OpOutcome {
  return isPagepairError(err) && !NO_ANSWER.has(err.code) ? 'fail' : 'unknown';
}

/** A growing array of sorted times, searchable by window. */
export class TimeLog {
  private buf = new Float64Array(1 << 14);
  private n = 0;

  push(t: number): void {
    if (this.n === this.buf.length) {
      const bigger = new Float64Array(this.buf.length * 2);
      bigger.set(this.buf);
      this.buf = bigger;
    }
    // Appended as they happen on one thread, so already in order; a caller's
    // clock that steps back a hair is clamped rather than breaking the search.
    const last = this.n > 0 ? this.buf[this.n - 1]! : -Infinity;
    this.buf[this.n++] = t < last ? last : t;
  }

  get length(): number {
    return this.n;
  }

  /** Index of the first time > t. */
  private upper(t: number): number {
    let lo = 0;
    let hi = this.n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.buf[mid]! <= t) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  countBetween(fromMs: number, toMs: number): number {
    return Math.max(0, this.upper(toMs) - this.upper(fromMs));
  }

  /**
   * The longest stretch in [fromMs, toMs] with no entry, counting from the
   * last entry before the window (service was already stalled when the
   * window opened) to the window's end.
   */
  longestGap(fromMs: number, toMs: number): number {
    const first = this.upper(fromMs);
    const end = this.upper(toMs);
    let prev = first > 0 ? this.buf[first - 1]! : fromMs;
    let gap = 0;
    for (let i = first; i < end; i++) {
      const t = this.buf[i]!;
      if (t - prev > gap) gap = t - prev;
      prev = t;
    }
    return Math.max(gap, toMs - prev);
  }
}

/**
 * Started with HistoryWorkload.start(); runs until stop(), which waits for
 * the operations in flight, reads every block once more and returns the
 * history.
 */
export class HistoryWorkload {
  readonly blocks: number;
  readonly blockBytes: number;
  readonly seed: number;
  readonly clock: () => number;
  private readonly workers: number;
  private readonly readPct: number;
  private readonly rng: Prng;
  private readonly busy: Uint8Array;
  private readonly lastWriteAckMs: Float64Array;
  private readonly completed = new TimeLog();
  private readonly failed = new TimeLog();
  private nextValue = 1;
  private stopping = false;
  private running: Promise<void>[] = [];
  private readonly startedMs: number;
  private readonly stats: HistoryWorkloadStats = {
    elapsedS: 0,
    ops: 0,
    readsOk: 0,
    writesOk: 0,
    errors: 0,
    errorCodes: {},
    writesMaybe: 0,
    verifyErrors: 0,
    verifyFailures: [],
    switches: 0,
    finalReadsFailed: 0,
  };

  private constructor(
    private readonly clients: PairClient[],
    readonly recorder: HistoryRecorder,
    readonly allocation: { guid: string; name: string },
    opts: Required<Pick<HistoryWorkloadOptions, 'blocks' | 'blockBytes' | 'workers' | 'readPct' | 'seed'>> & { clock: () => number },
    private readonly atEnd: { flush: boolean; release: boolean },
  ) {
    this.blocks = opts.blocks;
    this.blockBytes = opts.blockBytes;
    this.seed = opts.seed;
    this.clock = opts.clock;
    this.workers = opts.workers;
    this.readPct = opts.readPct;
    this.rng = new Prng(opts.seed);
    this.busy = new Uint8Array(opts.blocks);
    this.lastWriteAckMs = new Float64Array(opts.blocks).fill(-Infinity);
    this.startedMs = opts.clock();
  }

  static async start(opts: HistoryWorkloadOptions): Promise<HistoryWorkload> {
    const blocks = opts.blocks ?? 1024;
    const blockBytes = opts.blockBytes ?? 4096;
    const workers = opts.workers ?? 16;
    const clientCount = Math.min(opts.clients ?? 4, workers);
    const readPct = opts.readPct ?? 50;
    const seed = (opts.seed ?? 1) >>> 0;
    const clock = opts.clock ?? (() => performance.now());
    if (!Number.isSafeInteger(blocks) || blocks < 1) throw new PagepairError('BAD_FIELD', 'blocks must be at least 1', 'blocks');
    if (!Number.isSafeInteger(blockBytes) || blockBytes < VALUE_HEADER_BYTES) {
      throw new PagepairError('BAD_FIELD', `block size must be at least ${VALUE_HEADER_BYTES} bytes`, 'blockBytes');
    }
    if (!Number.isSafeInteger(workers) || workers < 1) throw new PagepairError('BAD_FIELD', 'workers must be at least 1', 'workers');
    if (!(readPct >= 0 && readPct <= 100)) throw new PagepairError('BAD_FIELD', 'readPct must be 0..100', 'readPct');
    if (opts.controllers.length < 1) throw new PagepairError('BAD_FIELD', 'no controller to drive', 'controllers');

    const clients: PairClient[] = [];
    let self: HistoryWorkload | null = null;
    const onSwitch = (info: { from: string | null; to: string; reason: string }): void => {
      if (self !== null) self.stats.switches++;
      opts.onSwitch?.(info);
    };
    try {
      for (let i = 0; i < clientCount; i++) {
        // Half the clients prefer the other controller, so both serve from the start.
        const order = i % 2 === 1 && opts.controllers.length === 2 ? [opts.controllers[1]!, opts.controllers[0]!] : [...opts.controllers];
        clients.push(
          await PairClient.connect({
            controllers: order,
            name: `pagepair-history-${i}`,
            timeoutMs: opts.requestTimeoutMs ?? 2000,
            retryForMs: opts.retryForMs ?? 10_000,
            retryIntervalMs: opts.retryIntervalMs ?? 10,
            onSwitch,
          }),
        );
      }
      const name = opts.name ?? `history-${seed}-${Date.now().toString(36)}`;
      const alloc = await clients[0]!.allocate(name, blocks * blockBytes, opts.policy ?? 'default');
      const recorder = new HistoryRecorder({
        clock,
        meta: { seed, startedAt: new Date().toISOString(), guid: alloc.guid, blocks, blockBytes, workers, readPct, ...opts.meta },
      });
      self = new HistoryWorkload(clients, recorder, { guid: alloc.guid, name }, { blocks, blockBytes, workers, readPct, seed, clock }, {
        flush: opts.flushAtEnd === true,
        release: opts.releaseAtEnd === true,
      });
      self.running = Array.from({ length: workers }, (_, w) => self!.worker(w));
      return self;
    } catch (err) {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      throw err;
    }
  }

  now(): number {
    return this.clock();
  }

  /** Operations answered with success so far. */
  get opsCompleted(): number {
    return this.stats.ops;
  }

  get errorCount(): number {
    return this.stats.errors;
  }

  get verifyErrors(): number {
    return this.stats.verifyErrors;
  }

  completedBetween(fromMs: number, toMs: number): number {
    return this.completed.countBetween(fromMs, toMs);
  }

  errorsBetween(fromMs: number, toMs: number): number {
    return this.failed.countBetween(fromMs, toMs);
  }

  /** The longest time in [fromMs, toMs] in which no operation completed. */
  stallMs(fromMs: number, toMs: number): number {
    return this.completed.longestGap(fromMs, toMs);
  }

  /**
   * Stops issuing operations, waits for those in flight, reads every block
   * once more (recorded like any read), closes the clients and returns the
   * history. A second call returns the same promise.
   */
  stop(): Promise<HistoryWorkloadResult> {
    this.stopPromise ??= this.finish();
    return this.stopPromise;
  }

  private stopPromise: Promise<HistoryWorkloadResult> | undefined;

  /** Stops without the final reads (used on an error path). */
  async abort(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.clients.map((c) => c.close().catch(() => undefined)));
    await Promise.allSettled(this.running);
  }

  private async finish(): Promise<HistoryWorkloadResult> {
    this.stopping = true;
    await Promise.all(this.running);
    this.stats.elapsedS = (this.clock() - this.startedMs) / 1000;
    const finalValues = new Map<string, number>();
    let nextBlock = 0;
    const readers = Math.min(8, this.blocks);
    const reader = async (r: number): Promise<void> => {
      const client = this.clients[r % this.clients.length]!;
      const process = this.workers + r;
      while (nextBlock < this.blocks) {
        const block = nextBlock++;
        const value = await this.readOnce(process, client, block, true);
        if (value !== null) finalValues.set(String(block), value);
        else this.stats.finalReadsFailed++;
      }
    };
    try {
      await Promise.all(Array.from({ length: readers }, (_, r) => reader(r)));
      if (this.atEnd.flush) await this.clients[0]!.flush(this.allocation.guid);
      if (this.atEnd.release) await this.clients[0]!.release(this.allocation.guid);
    } finally {
      await Promise.all(this.clients.map((c) => c.close().catch(() => undefined)));
    }
    return {
      allocation: this.allocation,
      header: this.recorder.header(),
      ops: this.recorder.ops(),
      recorder: this.recorder,
      finalValues,
      stats: { ...this.stats, errorCodes: { ...this.stats.errorCodes }, verifyFailures: [...this.stats.verifyFailures] },
    };
  }

  private pickBlock(): number {
    for (let tries = 0; tries < 8; tries++) {
      const b = this.rng.below(this.blocks);
      if (this.busy[b] === 0) return b;
    }
    for (let b = this.rng.below(this.blocks), n = 0; n < this.blocks; n++, b = (b + 1) % this.blocks) if (this.busy[b] === 0) return b;
    return -1;
  }

  private async worker(w: number): Promise<void> {
    const client = this.clients[w % this.clients.length]!;
    while (!this.stopping) {
      const block = this.pickBlock();
      if (block < 0) {
        await yieldTurn();
        continue;
      }
      this.busy[block] = 1;
      try {
        if (this.rng.next() * 100 < this.readPct) await this.readOnce(w, client, block, false);
        else await this.writeOnce(w, client, block);
      } finally {
        this.busy[block] = 0;
      }
    }
  }

  private noteError(err: unknown): void {
    this.stats.errors++;
    this.failed.push(this.clock());
    const code = isPagepairError(err) ? err.code : 'INTERNAL';
    this.stats.errorCodes[code] = (this.stats.errorCodes[code] ?? 0) + 1;
  }

  private async writeOnce(w: number, client: PairClient, block: number): Promise<void> {
    const value = this.nextValue++;
    const data = valuePattern(this.seed, block, value, this.blockBytes);
    const id = this.recorder.invoke(w, 'write', String(block), value);
    try {
      await client.write(this.allocation.guid, block * this.blockBytes, data);
    } catch (err) {
      this.recorder.complete(id, outcomeOf(err));
      this.stats.writesMaybe++;
      this.noteError(err);
      return;
    }
    this.recorder.complete(id, 'ok');
    this.lastWriteAckMs[block] = this.clock();
    this.completed.push(this.clock());
    this.stats.ops++;
    this.stats.writesOk++;
  }

  /** Resolves to the value read, or null when the read got no good answer. */
  private readOnce(w: number, client: PairClient, block: number, final: boolean): Promise<number | null> {
    return this.recordRead(w, block, (guid, offset, length) => client.read(guid, offset, length), () => client.currentController, final ? 'final' : 'workload');
  }

  /**
   * One read of `block` made by the caller's own means (straight to one
   * controller, say), recorded and verified like the workload's own reads.
   * `process` must be a number no worker uses (workers are 0..workers-1,
   * final readers the next 8).
   */
  readThrough(process: number, block: number, read: (guid: string, offset: number, length: number) => Promise<Buffer>, via: string): Promise<number | null> {
    return this.recordRead(process, block, read, () => via, 'probe');
  }

  /** Blocks whose latest acknowledged write was acknowledged after ms. */
  blocksWrittenSince(ms: number): number[] {
    const out: number[] = [];
    for (let b = 0; b < this.blocks; b++) if (this.lastWriteAckMs[b]! > ms) out.push(b);
    return out;
  }

  private async recordRead(
    w: number,
    block: number,
    read: (guid: string, offset: number, length: number) => Promise<Buffer>,
    via: () => string,
    what: 'workload' | 'final' | 'probe',
  ): Promise<number | null> {
    const final = what !== 'workload';
    const id = this.recorder.invoke(w, 'read', String(block));
    let data: Buffer;
    try {
      data = await read(this.allocation.guid, block * this.blockBytes, this.blockBytes);
    } catch (err) {
      this.recorder.complete(id, outcomeOf(err));
      if (!final) this.noteError(err);
      return null;
    }
    const got = decodeValue(this.seed, block, data, this.blockBytes);
    if ('corrupt' in got) {
      // The read cannot name a write; it is left out of the history and counted on its own.
      this.recorder.complete(id, 'fail');
      this.stats.verifyErrors++;
      if (this.stats.verifyFailures.length < VERIFY_FAILURES_KEPT) {
        this.stats.verifyFailures.push(`${what === 'workload' ? '' : `${what} `}read of block ${block} (op #${id}, via ${via()}): ${got.corrupt}`);
      }
      return null;
    }
    this.recorder.complete(id, 'ok', got.value);
    if (!final) {
      this.completed.push(this.clock());
      this.stats.ops++;
      this.stats.readsOk++;
    }
    return got.value;
  }
}

/**
 * Runs the workload until `signal` aborts, with a progress line every
 * second, then stops it (final reads included) and returns the history.
 */
export async function runHistoryWorkload(
  opts: HistoryWorkloadOptions,
  run: { signal: AbortSignal; progress?: (line: string) => void },
): Promise<HistoryWorkloadResult> {
  const w = await HistoryWorkload.start(opts);
  const progress = run.progress;
  const t0 = w.now();
  let lastOps = 0;
  let lastMs = t0;
  const timer =
    progress === undefined
      ? undefined
      : setInterval(() => {
          const now = w.now();
          const rate = ((w.opsCompleted - lastOps) * 1000) / Math.max(1, now - lastMs);
          progress(`${((now - t0) / 1000).toFixed(0).padStart(4)}s  ${Math.round(rate).toString().padStart(7)} ops/s  errors ${w.errorCount}  verify errors ${w.verifyErrors}`);
          lastOps = w.opsCompleted;
          lastMs = now;
        }, 1000);
  try {
    if (!run.signal.aborted) await new Promise<void>((done) => run.signal.addEventListener('abort', () => done(), { once: true }));
    return await w.stop();
  } finally {
    if (timer !== undefined) clearInterval(timer);
  }
}

/** The controllers a workload reaches from one configuration file: A, B or both. */
export function targetAddresses(cfg: ControllerConfig, target: 'A' | 'B' | 'both'): ControllerAddress[] {
  const self: ControllerAddress = { id: cfg.idLetter, host: cfg.listen.client.host, port: cfg.listen.client.port, token: cfg.clientToken };
  if (cfg.partner === null) {
    if (target !== 'both' && target !== cfg.idLetter) throw new PagepairError('BAD_FIELD', `${cfg.sourceName} has no partner; --target must be ${cfg.idLetter}`, 'target');
    return [{ ...self, host: self.host === '0.0.0.0' ? '127.0.0.1' : self.host }];
  }
  const all = controllerAddresses({
    id: cfg.idLetter,
    clientToken: cfg.clientToken,
    listen: cfg.listen,
    partner: { id: cfg.partner.idLetter, client: cfg.partner.client },
  }).all;
  return target === 'both' ? all : all.filter((a) => a.id === target);
}

/**
 * `pagepair workload --history <file>`: the recorded workload for a while,
 * the history written to the file and judged. Exit code 0 only when the
 * history is linearizable and every read's bytes matched.
 */
export async function recordWorkload(
  cfg: ControllerConfig,
  opts: Omit<HistoryWorkloadOptions, 'controllers'> & { target: 'A' | 'B' | 'both'; durationS: number; historyPath: string; json: boolean; progress: (line: string) => void },
): Promise<{ exitCode: number; text: string }> {
  const { target, durationS, historyPath, json, progress, ...rest } = opts;
  const controllers = targetAddresses(cfg, target);
  progress(`recording a history: ${rest.blocks ?? 1024} blocks of ${rest.blockBytes ?? 4096} bytes, ${rest.workers ?? 16} in flight, through ${controllers.map((a) => a.id).join('+')}`);
  const r = await runHistoryWorkload({ ...rest, controllers }, { signal: AbortSignal.timeout(Math.round(durationS * 1000)), progress });
  await r.recorder.writeTo(historyPath);
  const check = checkHistory(r.ops);
  const s = r.stats;
  const ok = check.verdict === 'linearizable' && s.verifyErrors === 0 && s.finalReadsFailed === 0;
  if (json) {
    return { exitCode: ok ? 0 : 1, text: JSON.stringify({ ok, history: historyPath, allocation: r.allocation, stats: s, check: { verdict: check.verdict, byKind: check.byKind, counts: check.counts, violations: check.violations.slice(0, 20) } }, null, 2) };
  }
  const codes = Object.entries(s.errorCodes).map(([k, v]) => `${k} ${v}`).join(', ');
  const lines = [
    `workload on ${r.allocation.name}: ${s.ops} ops in ${s.elapsedS.toFixed(1)} s = ${Math.round(s.ops / Math.max(s.elapsedS, 1e-9))} ops/s ` +
      `(${s.readsOk} reads, ${s.writesOk} writes), errors ${s.errors}${codes !== '' ? ` (${codes})` : ''}, maybe-happened writes ${s.writesMaybe}, failovers ${s.switches}`,
    `verification errors ${s.verifyErrors}${s.finalReadsFailed > 0 ? `, final reads without an answer ${s.finalReadsFailed}` : ''}`,
    ...s.verifyFailures.map((f) => `  ! ${f}`),
    '',
    formatCheck(historyPath, r.header, check, 5),
  ];
  return { exitCode: ok ? 0 : 1, text: lines.join('\n') };
}
