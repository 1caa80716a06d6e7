// One process's share of a workload: its clients, its part of the working
// set, its lanes (one per operation in flight). It drives operations,
// checks every read against the ledger, and hands the runner one sample per
// interval. The runner may run one engine in its own process or one per
// worker process (worker.ts); either way an engine only sees plain data.
// An engine in the runner's process may also record every operation into a
// history for the checker (recording.ts) and read its part back at the end.

import { performance } from 'node:perf_hooks';
import { setTimeout as sleep, setImmediate as yieldTurn } from 'node:timers/promises';
import type { Histogram } from 'hdr-histogram-js';
import { PagepairClient, type ControllerAddress } from '../client/client.js';
import { NbdPairClient, type NbdEndpoint } from '../client/nbd-pair-client.js';
import { PairClient } from '../client/pair-client.js';
import { Prng } from '../core/prng.js';
import { PagepairError, invariant, isPagepairError } from '../protocol/errors.js';
import { makePicker, makeSizePicker, type Picker } from './distribution.js';
import { grainBytes, stripeBytes, type JobSpec } from './job.js';
import { Ledger } from './ledger.js';
import { PatternMaker, WRITE_ZERO } from './pattern.js';
import type { Recording } from './recording.js';
import { errorCounts, newHistogram, type EngineTotals, type IntervalSample, type PrefillStats, type ReadBackStats } from './stats.js';

export interface AllocationRef {
  guid: string;
  name: string;
  /** The bytes the workload uses (whole stripes; the allocation may be larger). */
  usedBytes: number;
  pageSizeBytes: number;
}

/** Plain data: what an engine needs, passed to a worker process as it is. */
export interface EngineSetup {
  job: JobSpec;
  engineIndex: number;
  /** The pair's controllers, A first; one when there is no partner. */
  controllers: ControllerAddress[];
  allocations: AllocationRef[];
  /** This engine's part of the working set, as offsets into the allocations laid end to end. */
  partStartBytes: number;
  partBytes: number;
  /** This engine's clients, by their index over the whole job. */
  clientFirst: number;
  clientCount: number;
  /** This engine's share of job.rateOpsPerSec and job.ops (0 = none). */
  rateOpsPerSec: number;
  ops: number;
  runTag: number;
  chunkBytes: number;
  /** What the part holds before this run: zeros (new allocations) or unknown (reused ones). */
  initial: 'zero' | 'unknown';
  /** PairClient timing (failover); absent fields keep the client's defaults. */
  client?: EngineClientOptions;
  /** With job.transport nbd: where each controller serves NBD (by controller id). */
  nbd?: NbdEndpoint[];
}

export interface EngineClientOptions {
  /** One request on one controller; a request stuck on a paused controller is retried on the other after this. */
  requestTimeoutMs?: number;
  /** How long one operation keeps trying across the controllers before it counts as an error. */
  retryForMs?: number;
  retryIntervalMs?: number;
}

export interface EngineHooks {
  onSample(sample: IntervalSample): void;
  /** Record every operation into this history (in-process engines only: it is not plain data). */
  recording?: Recording;
}

/** One connection as the lanes see it: a plain client, or a PairClient that fails over. */
interface Conn {
  read(guid: string, offset: number, length: number): Promise<Buffer>;
  write(guid: string, offset: number, data: Buffer): Promise<void>;
  /** The controller it talks to now. */
  where(): string;
  close(): Promise<void>;
}

const VERIFY_FAILURES_KEPT = 20;
const PICK_TRIES = 16;
/** A rate limiter that fell behind (the pair stalled) does not burst more than this to catch up. */
const RATE_DEBT_MS_MAX = 250;
/** A lane whose operation failed waits this long before the next. */
const ERROR_PAUSE_MS = 10;
/** A plain client whose connection closed tries to connect again at most this often. */
const RECONNECT_EVERY_MS = 250;
/** Prefill writes up to this much per request. */
const PREFILL_BYTES_MAX = 1024 * 1024;

export class Engine {
  private readonly job: JobSpec;
  private readonly grainBytes: number;
  private readonly ledger: Ledger | null;
  private readonly maker: PatternMaker;
  private readonly rng: Prng;
  private readonly picker: Picker;
  private readonly pickSize: () => number;
  private readonly allocBytes: number;
  private readonly maxBlockBytes: number;
  private readonly recording: Recording | null;
  private clients: Conn[][] = [];
  private nextWriteNo = 1;
  private stopping = false;

  // The run's clock, in this process's performance.now() time.
  private t0 = 0;
  private warmupEnd = 0;
  private runEnd = Infinity;
  private issuedMeasured = 0;

  // The interval being filled.
  private cur = 0;
  private iv = freshInterval();
  private ivTimer: NodeJS.Timeout | undefined;

  private readonly totals = {
    readOps: 0,
    writeOps: 0,
    readBytes: 0,
    writeBytes: 0,
    errors: 0,
    errorCodes: {} as Record<string, number>,
    verifyErrors: 0,
    verifyFailures: [] as string[],
    readsVerified: 0,
    failovers: 0,
    lastDone: 0,
    readHist: newHistogram(),
    writeHist: newHistogram(),
  };

  private constructor(
    private readonly setup: EngineSetup,
    private readonly hooks: EngineHooks,
  ) {
    this.job = setup.job;
    this.grainBytes = grainBytes(this.job.blockSizes);
    this.maxBlockBytes = Math.max(...this.job.blockSizes.map((b) => b.bytes));
    this.allocBytes = setup.allocations[0]!.usedBytes;
    this.ledger = this.job.verify ? new Ledger(setup.partBytes / this.grainBytes, setup.initial) : null;
    this.maker = new PatternMaker(setup.runTag, setup.chunkBytes);
    this.rng = new Prng((this.job.seed ^ Math.imul(setup.engineIndex + 1, 0x9e3779b1)) >>> 0);
    this.picker = makePicker(this.job.distribution, this.rng);
    this.pickSize = makeSizePicker(this.job.blockSizes, this.rng);
    this.recording = hooks.recording ?? null;
    if (this.recording !== null) {
      // The history needs every value a chunk can hold to name its write.
      invariant(this.ledger !== null && setup.initial === 'zero', 'a recorded run needs verification and fresh allocations');
      const chunkBytes = setup.chunkBytes;
      this.recording.attach({
        chunkBytes,
        firstChunk: setup.partStartBytes / chunkBytes,
        chunks: setup.partBytes / chunkBytes,
        locate: (chunk) => {
          const flat = chunk * chunkBytes;
          const alloc = setup.allocations[Math.floor(flat / this.allocBytes)]!;
          return { guid: alloc.guid, offset: flat % this.allocBytes, allocation: alloc.name };
        },
        check: (data, at, chunk) => this.maker.check(data, at, chunk),
      });
    }
  }

  /** Connects this engine's clients. */
  static async create(setup: EngineSetup, hooks: EngineHooks): Promise<Engine> {
    const e = new Engine(setup, hooks);
    try {
      for (let i = 0; i < setup.clientCount; i++) e.clients.push(await e.connectClient(setup.clientFirst + i));
    } catch (err) {
      await e.close();
      throw err;
    }
    return e;
  }

  private async connectClient(index: number): Promise<Conn[]> {
    const { job, controllers } = this.setup;
    const byId = (id: string): ControllerAddress => {
      const a = controllers.find((c) => c.id === id);
      if (a === undefined) throw new Error(`no controller ${id} among ${controllers.map((c) => c.id).join(', ')}`);
      return a;
    };
    const ids = controllers.map((c) => c.id);
    const name = `pagepair-workload/${job.name}/${index}`;
    const open = async (first: string): Promise<Conn> => {
      if (job.transport === 'nbd') return this.openNbd(first, name);
      if (!job.failover) {
        const addr = byId(first);
        const connect = (): Promise<PagepairClient> => PagepairClient.connect({ host: addr.host, port: addr.port, token: addr.token, tls: addr.tls === true, name });
        let c = await connect();
        let lastTryMs = 0;
        let closed = false;
        let connecting: Promise<PagepairClient> | null = null;
        // Without failover a lost controller is an error per operation, but the
        // client still reconnects (as any client would) once it is back.
        const live = (): Promise<PagepairClient> => {
          if (c.isOpen || closed) return Promise.resolve(c);
          if (connecting !== null) return connecting;
          const now = performance.now();
          if (now - lastTryMs < RECONNECT_EVERY_MS) return Promise.resolve(c);
          lastTryMs = now;
          connecting = connect().then(
            (fresh) => {
              connecting = null;
              if (closed) void fresh.close();
              else c = fresh;
              return c;
            },
            (err: unknown) => {
              connecting = null;
              throw err;
            },
          );
          return connecting;
        };
        return {
          read: async (g, o, l) => (await live()).read(g, o, l),
          write: async (g, o, d) => (await live()).write(g, o, d),
          where: () => first,
          close: () => {
            closed = true;
            return c.close();
          },
        };
      }
      const order = [byId(first), ...controllers.filter((c) => c.id !== first)];
      const timing = this.setup.client ?? {};
      const p = await PairClient.connect({
        controllers: order,
        name,
        ...(timing.requestTimeoutMs !== undefined ? { timeoutMs: timing.requestTimeoutMs } : {}),
        ...(timing.retryForMs !== undefined ? { retryForMs: timing.retryForMs } : {}),
        ...(timing.retryIntervalMs !== undefined ? { retryIntervalMs: timing.retryIntervalMs } : {}),
        onSwitch: () => {
          this.totals.failovers++;
          this.iv.failovers++;
        },
      });
      return { read: (g, o, l) => p.read(g, o, l), write: (g, o, d) => p.write(g, o, d), where: () => p.currentController, close: () => p.close() };
    };
    if (job.target !== 'both') return [await open(job.target)];
    if (ids.length < 2) return [await open(ids[0]!)];
    if (job.spread === 'round-robin') return [await open(ids[0]!), await open(ids[1]!)];
    return [await open(ids[index % 2]!)];
  }

  /**
   * An NBD connection per allocation (the export is the allocation's name) on
   * controller `first`; with failover, requests that fail there (connection
   * lost, no answer in time, ESHUTDOWN) are sent again to the other one.
   */
  private async openNbd(first: string, _name: string): Promise<Conn> {
    const endpoints = this.setup.nbd ?? [];
    const mine = endpoints.find((e) => e.id === first);
    if (mine === undefined) throw new PagepairError('BAD_CONFIG', `no NBD address for controller ${first} (listen.nbd in its configuration)`, 'transport');
    const order = this.job.failover ? [mine, ...endpoints.filter((e) => e.id !== first)] : [mine];
    const timing = this.setup.client ?? {};
    const names = new Map(this.setup.allocations.map((a) => [a.guid, a.name]));
    const exportOf = (guid: string): string => names.get(guid) ?? guid;
    const p = new NbdPairClient({
      endpoints: order,
      inflightMax: Math.max(1, this.job.inflight),
      // Contended, a write resent after it may have landed could land twice around another client's write.
      resendWrites: !this.job.contend,
      ...(timing.requestTimeoutMs !== undefined ? { timeoutMs: timing.requestTimeoutMs } : {}),
      // Without failover an operation fails at once; the next one connects again.
      retryForMs: this.job.failover ? (timing.retryForMs ?? 15_000) : 0,
      ...(timing.retryIntervalMs !== undefined ? { retryIntervalMs: timing.retryIntervalMs } : {}),
      onSwitch: () => {
        this.totals.failovers++;
        this.iv.failovers++;
      },
    });
    try {
      for (const a of this.setup.allocations) await p.open(a.name);
    } catch (err) {
      await p.close();
      throw err;
    }
    return {
      read: (g, o, l) => p.read(exportOf(g), o, l),
      write: (g, o, d) => p.write(exportOf(g), o, d),
      where: () => p.currentController,
      close: () => p.close(),
    };
  }

  async close(): Promise<void> {
    this.stop();
    await Promise.all(this.clients.flat().map((c) => c.close().catch(() => undefined)));
    this.clients = [];
  }

  /** Ends the run early: lanes finish the operation they have in flight and stop. */
  stop(): void {
    this.stopping = true;
  }

  // ---------------------------------------------------------------- prefill and read-back

  /** The part cut into pieces of up to PREFILL_BYTES_MAX (whole stripes) that never cross an allocation's end. */
  private pieces(): { local: number; bytes: number }[] {
    const stripe = stripeBytes(this.job.blockSizes);
    const pieceBytes = Math.max(stripe, Math.floor(PREFILL_BYTES_MAX / stripe) * stripe);
    const pieces: { local: number; bytes: number }[] = [];
    for (let local = 0; local < this.setup.partBytes; ) {
      const flat = this.setup.partStartBytes + local;
      const toAllocEnd = this.allocBytes - (flat % this.allocBytes);
      const bytes = Math.min(pieceBytes, toAllocEnd, this.setup.partBytes - local);
      pieces.push({ local, bytes });
      local += bytes;
    }
    return pieces;
  }

  /** Runs `work` over the pieces with as many requests in flight as the run will have. */
  private async overPieces(work: (conn: Conn, piece: { local: number; bytes: number }, buf: Buffer, processBase: number) => Promise<void>): Promise<void> {
    const pieces = this.pieces();
    const pieceBytesMax = Math.max(...pieces.map((p) => p.bytes));
    let next = 0;
    const lane = async (conn: Conn): Promise<void> => {
      const buf = Buffer.allocUnsafe(pieceBytesMax);
      const processBase = this.recording?.newProcesses(pieceBytesMax / this.setup.chunkBytes) ?? 0;
      while (next < pieces.length && !this.stopping) await work(conn, pieces[next++]!, buf, processBase);
    };
    const lanes: Promise<void>[] = [];
    for (const client of this.clients) for (let i = 0; i < this.job.inflight; i++) lanes.push(lane(client[i % client.length]!));
    await Promise.all(lanes);
  }

  /** Writes every block of the part once. */
  async prefill(): Promise<PrefillStats> {
    const started = performance.now();
    let ops = 0;
    let errors = 0;
    const rec = this.recording;
    await this.overPieces(async (conn, p, buf, processBase) => {
      const data = buf.subarray(0, p.bytes);
      const writeNo = this.takeWriteNo();
      const flat = this.setup.partStartBytes + p.local;
      const firstChunk = flat / this.setup.chunkBytes;
      this.maker.fill(data, 0, p.bytes, firstChunk, writeNo);
      const alloc = this.setup.allocations[Math.floor(flat / this.allocBytes)]!;
      const g0 = p.local / this.grainBytes;
      const n = p.bytes / this.grainBytes;
      const ids = rec?.invoke(processBase, 'write', firstChunk, p.bytes / this.setup.chunkBytes, writeNo) ?? null;
      try {
        await conn.write(alloc.guid, flat % this.allocBytes, data);
        this.ledger?.writeAcked(g0, n, writeNo);
        if (ids !== null) rec!.writeAcked(ids, firstChunk);
        ops++;
      } catch (err) {
        this.ledger?.writeFailed(g0, n, writeNo);
        if (ids !== null) rec!.opFailed(ids, 'write', err);
        this.countError(err);
        errors++;
      }
    });
    return { bytes: this.setup.partBytes, ops, errors, elapsedMs: performance.now() - started };
  }

  /**
   * After the run, with nothing else in flight: reads the whole part once
   * more and checks every block against its last acknowledged write, so a
   * write lost in a takeover shows even if no read of the run landed on it.
   * Recorded too, when the run is: these are the history's final reads.
   */
  async readBack(): Promise<ReadBackStats> {
    const started = performance.now();
    const stats: ReadBackStats = { bytes: 0, reads: 0, errors: 0, errorCodes: {}, verifyErrors: 0, verifyFailures: [], elapsedMs: 0 };
    const rec = this.recording;
    const chunkBytes = this.setup.chunkBytes;
    const before = { verifyErrors: this.totals.verifyErrors, failures: this.totals.verifyFailures.length };
    this.stopping = false;
    await this.overPieces(async (conn, p, _buf, processBase) => {
      const flat = this.setup.partStartBytes + p.local;
      const firstChunk = flat / chunkBytes;
      const alloc = this.setup.allocations[Math.floor(flat / this.allocBytes)]!;
      const chunks = p.bytes / chunkBytes;
      const ids = rec?.invoke(processBase, 'read', firstChunk, chunks) ?? null;
      let got: Buffer;
      try {
        got = await conn.read(alloc.guid, flat % this.allocBytes, p.bytes);
      } catch (err) {
        if (ids !== null) rec!.opFailed(ids, 'read', err);
        const code = isPagepairError(err) ? err.code : 'INTERNAL';
        stats.errors++;
        stats.errorCodes[code] = (stats.errorCodes[code] ?? 0) + 1;
        return;
      }
      stats.reads++;
      stats.bytes += p.bytes;
      const values = ids !== null ? new Int32Array(chunks) : null;
      if (this.ledger !== null) this.verify(got, p.local / this.grainBytes, p.bytes / this.grainBytes, firstChunk, alloc, flat % this.allocBytes, conn, values, 'read-back: ');
      if (ids !== null) rec!.readAnswered(ids, values!);
    });
    // What the read-back found is counted on its own, not in the run's totals.
    stats.verifyErrors = this.totals.verifyErrors - before.verifyErrors;
    stats.verifyFailures = this.totals.verifyFailures.splice(before.failures);
    this.totals.verifyErrors = before.verifyErrors;
    this.totals.readsVerified -= stats.reads;
    stats.elapsedMs = performance.now() - started;
    return stats;
  }

  // ---------------------------------------------------------------- run

  /**
   * Runs from t0 (ms since the epoch, the same instant in every worker) for
   * the warm-up and the measured time, or until the operation count or
   * stop(); resolves when the last operation is answered.
   */
  async run(t0EpochMs: number): Promise<EngineTotals> {
    const { job } = this;
    this.t0 = t0EpochMs - performance.timeOrigin;
    this.warmupEnd = this.t0 + job.warmupS * 1000;
    this.runEnd = job.durationS > 0 ? this.warmupEnd + job.durationS * 1000 : Infinity;
    const wait = this.t0 - performance.now();
    if (wait > 0) await sleep(wait);
    this.armIntervalTimer();
    const limiter = this.setup.rateOpsPerSec > 0 ? new RateLimiter(this.setup.rateOpsPerSec, this.t0) : null;
    const lanes: Promise<void>[] = [];
    for (const client of this.clients) {
      for (let i = 0; i < job.inflight; i++) lanes.push(this.lane(client, i, limiter));
    }
    await Promise.all(lanes);
    const end = performance.now();
    if (this.ivTimer !== undefined) clearTimeout(this.ivTimer);
    this.ivTimer = undefined;
    this.advanceTo(this.intervalOf(end));
    this.emit(this.cur, end - (this.t0 + this.cur * job.intervalMs));
    const t = this.totals;
    return {
      readOps: t.readOps,
      writeOps: t.writeOps,
      readBytes: t.readBytes,
      writeBytes: t.writeBytes,
      ...errorCounts(t),
      readsVerified: t.readsVerified,
      failovers: t.failovers,
      endMs: Math.max(t.lastDone, end) - this.t0,
      readHist: t.readHist,
      writeHist: t.writeHist,
    };
  }

  private async lane(client: Conn[], laneIndex: number, limiter: RateLimiter | null): Promise<void> {
    const { job, setup, ledger } = this;
    const rec = this.recording;
    const chunkBytes = setup.chunkBytes;
    const buf = Buffer.allocUnsafe(this.maxBlockBytes);
    if (ledger === null) buf.fill(0x5a);
    const processBase = rec?.newProcesses(this.maxBlockBytes / chunkBytes) ?? 0;
    const values = rec !== null ? new Int32Array(this.maxBlockBytes / chunkBytes) : null;
    let turn = laneIndex;
    let failed = false;
    for (;;) {
      if (this.stopping) return;
      const now = performance.now();
      if (now >= this.runEnd) return;
      if (setup.ops > 0 && now >= this.warmupEnd && this.issuedMeasured >= setup.ops) return;
      if (limiter !== null) {
        await limiter.take();
        if (this.stopping || performance.now() >= this.runEnd) return;
      }

      const isRead = job.readPct >= 100 || (job.readPct > 0 && this.rng.next() * 100 < job.readPct);
      const size = this.pickSize();
      const positions = setup.partBytes / size;
      const grains = size / this.grainBytes;
      let local = -1;
      for (let tries = 0; tries < PICK_TRIES; tries++) {
        const at = this.picker.pick(size, positions) * size;
        if (ledger === null || job.contend || ledger.tryReserve(at / this.grainBytes, grains)) {
          local = at;
          break;
        }
      }
      if (local < 0) {
        // Every pick was busy (a tiny set or a very hot block): let the others finish first.
        await yieldTurn();
        continue;
      }
      if (performance.now() >= this.warmupEnd) this.issuedMeasured++;

      const g0 = local / this.grainBytes;
      const flat = setup.partStartBytes + local;
      const alloc = setup.allocations[Math.floor(flat / this.allocBytes)]!;
      const offset = flat % this.allocBytes;
      const conn = client[turn++ % client.length]!;
      const firstChunk = flat / chunkBytes;
      const data = buf.subarray(0, size);
      let writeNo = 0;
      if (!isRead && ledger !== null) {
        writeNo = this.takeWriteNo();
        this.maker.fill(data, 0, size, firstChunk, writeNo);
      }
      const ids = rec?.invoke(processBase, isRead ? 'read' : 'write', firstChunk, size / chunkBytes, writeNo) ?? null;
      const started = performance.now();
      try {
        if (isRead) {
          const got = await conn.read(alloc.guid, offset, size);
          const done = performance.now();
          this.completed(true, size, started, done);
          if (ledger !== null) this.verify(got, g0, grains, firstChunk, alloc, offset, conn, values);
          if (ids !== null) rec!.readAnswered(ids, values!);
        } else {
          await conn.write(alloc.guid, offset, data);
          ledger?.writeAcked(g0, grains, writeNo);
          if (ids !== null) rec!.writeAcked(ids, firstChunk);
          this.completed(false, size, started, performance.now());
        }
      } catch (err) {
        if (!isRead) ledger?.writeFailed(g0, grains, writeNo);
        if (ids !== null) {
          rec!.opFailed(ids, isRead ? 'read' : 'write', err);
          rec!.opError(performance.now());
        }
        this.countError(err);
        this.iv.errors++;
        failed = true;
      } finally {
        ledger?.release(g0, grains);
      }
      if (failed) {
        failed = false;
        // A refused request can fail without touching the event loop (a closed
        // connection rejects at once): pause, so timers run and errors stay countable.
        await sleep(ERROR_PAUSE_MS);
      }
    }
  }

  private completed(isRead: boolean, bytes: number, started: number, done: number): void {
    const us = Math.max(1, Math.round((done - started) * 1000));
    const idx = this.intervalOf(done);
    if (idx > this.cur) this.advanceTo(idx);
    const t = this.totals;
    countOp(this.iv, isRead, bytes, us);
    if (done >= this.warmupEnd) countOp(t, isRead, bytes, us);
    t.lastDone = done;
    this.recording?.opDone(done);
  }

  /**
   * Checks a read against the ledger: every chunk must hold a write its
   * grain may hold. With `values`, fills in the write each chunk holds (-1:
   * its bytes name none) for the history. One failure is counted per read.
   */
  private verify(
    got: Buffer,
    g0: number,
    grains: number,
    firstChunk: number,
    alloc: AllocationRef,
    offset: number,
    conn: Conn,
    values: Int32Array | null,
    what = '',
  ): void {
    const ledger = this.ledger!;
    const chunkBytes = this.setup.chunkBytes;
    const chunksPerGrain = this.grainBytes / chunkBytes;
    let reported = false;
    this.totals.readsVerified++;
    for (let gi = 0; gi < grains; gi++) {
      const g = g0 + gi;
      // Contended: operations on one block overlap, so only the history checker can say which writes a read may see.
      const allowed = this.job.contend ? null : ledger.allowed(g);
      if (allowed === null && values === null && !this.job.contend) continue;
      let seen = -1;
      let mixed = false;
      let bad = false;
      for (let ci = 0; ci < chunksPerGrain; ci++) {
        const i = gi * chunksPerGrain + ci;
        const at = i * chunkBytes;
        const r = this.maker.check(got, at, firstChunk + i);
        let problem: string | null = null;
        if ('corrupt' in r) {
          problem = r.corrupt;
          if (values !== null) values[i] = -1;
        } else {
          if (values !== null) values[i] = r.writeNo;
          if (allowed !== null && !ledger.isAllowed(g, r.writeNo)) {
            problem = `read write #${r.writeNo}, expected ${allowed.length === 1 ? `#${allowed[0]}` : `one of #${allowed.join(', #')}`}`;
          }
        }
        if (problem !== null) {
          bad = true;
          if (!reported) {
            reported = true;
            const never = allowed !== null && allowed[0] === WRITE_ZERO && allowed.length === 1 ? ' (never written)' : '';
            this.verifyFailed(`${what}${alloc.name} offset ${offset + at} via ${conn.where()}: ${problem}${never}`);
          }
          // Without a history to fill in, the first problem is all a read has to say.
          if (values === null) return;
          continue;
        }
        const w = (r as { writeNo: number }).writeNo;
        if (seen < 0) seen = w;
        else if (seen !== w) mixed = true;
      }
      // A grain left mixed by a failed multi-page write keeps all its candidates.
      if (!bad && allowed !== null && allowed.length > 1 && !mixed && seen >= 0) ledger.settle(g, seen);
    }
  }

  private verifyFailed(what: string): void {
    this.totals.verifyErrors++;
    this.iv.verifyErrors++;
    if (this.totals.verifyFailures.length < VERIFY_FAILURES_KEPT) this.totals.verifyFailures.push(what);
  }

  private countError(err: unknown): void {
    const code = isPagepairError(err) ? err.code : 'INTERNAL';
    this.totals.errors++;
    this.totals.errorCodes[code] = (this.totals.errorCodes[code] ?? 0) + 1;
  }

  private takeWriteNo(): number {
    const w = this.nextWriteNo;
    // 0 means zeros and 0xffffffff "unknown"; neither names a write.
    this.nextWriteNo = w >= 0xffff_fffe ? 1 : w + 1;
    return w;
  }

  // ---------------------------------------------------------------- intervals

  private intervalOf(t: number): number {
    return Math.max(0, Math.floor((t - this.t0) / this.job.intervalMs));
  }

  /** Closes every interval before idx (empty ones too: a stall must show as zero, not vanish). */
  private advanceTo(idx: number): void {
    while (this.cur < idx) {
      this.emit(this.cur, this.job.intervalMs);
      this.cur++;
    }
  }

  private emit(index: number, durationMs: number): void {
    const iv = this.iv;
    this.iv = freshInterval();
    this.hooks.onSample({ index, durationMs: Math.max(1, durationMs), ...iv });
  }

  private armIntervalTimer(): void {
    const next = this.t0 + (this.cur + 1) * this.job.intervalMs;
    this.ivTimer = setTimeout(
      () => {
        this.advanceTo(this.intervalOf(performance.now()));
        this.armIntervalTimer();
      },
      Math.max(1, next - performance.now() + 1),
    );
  }
}

/** Operations counted the same way in an interval and in the measured totals. */
type OpCounts = Pick<IntervalSample, 'readOps' | 'writeOps' | 'readBytes' | 'writeBytes' | 'readHist' | 'writeHist'>;

function countOp(c: OpCounts, isRead: boolean, bytes: number, us: number): void {
  if (isRead) {
    c.readOps++;
    c.readBytes += bytes;
    c.readHist.recordValue(us);
  } else {
    c.writeOps++;
    c.writeBytes += bytes;
    c.writeHist.recordValue(us);
  }
}

function freshInterval(): Omit<IntervalSample, 'index' | 'durationMs'> & { readHist: Histogram; writeHist: Histogram } {
  return { readOps: 0, writeOps: 0, readBytes: 0, writeBytes: 0, errors: 0, verifyErrors: 0, failovers: 0, readHist: newHistogram(), writeHist: newHistogram() };
}

/** Spaces operations evenly at a rate, shared by the lanes of an engine. */
class RateLimiter {
  private nextDue: number;
  private readonly gapMs: number;

  constructor(opsPerSec: number, startMs: number) {
    this.gapMs = 1000 / opsPerSec;
    this.nextDue = startMs;
  }

  async take(): Promise<void> {
    const now = performance.now();
    if (this.nextDue < now - RATE_DEBT_MS_MAX) this.nextDue = now - RATE_DEBT_MS_MAX;
    const due = this.nextDue;
    this.nextDue += this.gapMs;
    if (due - now >= 1) await sleep(due - now);
  }
}
