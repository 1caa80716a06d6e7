// One core driven by hand, for the unit tests of its rooms. The core's store
// operations are effects: they wait in `pending` until the test carries them
// out (on a real PageStore over memory), fails them, or leaves them hanging;
// frames for the partner wait in `sent` after flush(); client replies are
// kept in `replies`. The clock moves only when the test says so.

import { ControllerCore } from '../../src/core/controller.js';
import type { CoreConfig, CoreEnv, IoOp } from '../../src/core/env.js';
import { resolvePolicies } from '../../src/core/policy.js';
import { DEFAULT_LIMITS } from '../../src/protocol/limits.js';
import { ErrorCode, type ErrorCodeName } from '../../src/protocol/errors.js';
import { JoinFlag, Role, SENDER_CLIENT, SenseReason, type AllocationRecord, type ClientRequest, type Message, type PeerRequest } from '../../src/protocol/messages.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { PageStore } from '../../src/store/page-store.js';
import { runIo, storeLayout } from '../../src/runtime/store-io.js';

export const PAGE = 4096;
const PAIR_ID = '6a1f0c52-8d3e-4b7a-9f21-0c4d5e6f7a8b';

export interface PendingIo {
  id: number;
  op: IoOp;
}

export interface LogLine {
  level: 'debug' | 'info' | 'warn' | 'error';
  msg: string;
  obj: object;
}

export interface CoreFixture {
  core: ControllerCore;
  store: PageStore;
  /** Store operations asked for and not yet answered, in the order asked. */
  pending: PendingIo[];
  /** Frames to the partner, once flushed. */
  sent: Message[];
  replies: { connId: number; msg: Message }[];
  log: LogLine[];
  /** Peer links closed by the core, with the reason. */
  closed: string[];
  setNow(ms: number): void;
  nowMs(): number;
  /** Carry out the pending operations (and those they lead to) until none is left or `rounds` ran. */
  settleIo(rounds?: number): Promise<void>;
  /** Carry out the first pending operation of `kind` only. */
  runOne(kind: IoOp['kind']): Promise<void>;
  /** Answer the first pending operation of `kind` with an error. */
  failOne(kind: IoOp['kind'], err?: Error): void;
  /** Send the queued frames (what the runtime does after requestFlush). */
  flush(): Message[];
  /** A client request with the header filled in. */
  request(body: Record<string, unknown>): ClientRequest;
}

export interface FixtureOptions {
  selfId?: 1 | 2;
  mirroring?: boolean;
  cacheBytesMax?: number;
  config?: Partial<CoreConfig>;
  /** Allocations in the store's table before the core starts (as left by an earlier run). */
  table?: AllocationRecord[];
}

let nextRequestId = 1;

/** A core's configuration for tests: small and quick, over `store`'s layout. */
export function testCoreConfig(store: PageStore, over: { selfId: 1 | 2; mirroring: boolean; cacheBytesMax: number }): CoreConfig {
  return {
    selfId: over.selfId,
    partnerId: over.selfId === 1 ? 2 : 1,
    mirroring: over.mirroring,
    cacheBytesMax: over.cacheBytesMax,
    dirtyHighWatermarkPct: 60,
    dirtyLowWatermarkPct: 30,
    dirtyAgeMaxMs: 1000,
    destageConcurrency: 4,
    heartbeatIntervalMs: 100,
    partnerTimeoutMs: 500,
    preferredId: 1,
    resyncPagesPerSecMax: 1000,
    peerRequestTimeoutMs: 10_000,
    pointerLeaseMs: 60_000,
    cacheFullWaitMs: 1000,
    limits: DEFAULT_LIMITS,
    policies: resolvePolicies([]),
    store: storeLayout(store),
  };
}

/** A started core (its table and mailbox read) over a fresh store. */
export async function coreFixture(opts: FixtureOptions = {}): Promise<CoreFixture> {
  const device = new MemoryDevice(16 * 1024 * 1024);
  const store = await PageStore.format(device, { pairId: PAIR_ID, tableEntriesMax: 16, nowMs: 0 });
  if (opts.table !== undefined) await store.writeTable(opts.table);
  const selfId = opts.selfId ?? 1;
  let now = 0;
  const pending: PendingIo[] = [];
  const sent: Message[] = [];
  const replies: { connId: number; msg: Message }[] = [];
  const log: LogLine[] = [];
  const closed: string[] = [];
  const line = (level: LogLine['level']) => (obj: object, msg = ''): void => void log.push({ level, msg, obj });
  const cfg: CoreConfig = {
    ...testCoreConfig(store, { selfId, mirroring: opts.mirroring ?? false, cacheBytesMax: opts.cacheBytesMax ?? 1024 * 1024 }),
    resyncPagesPerSecMax: 100_000,
    testHooks: true,
    ...opts.config,
  };
  let guids = 0;
  let keys = 0;
  const env: CoreEnv = {
    sendPeer: (msg) => void sent.push(msg),
    replyClient: (connId, msg) => void replies.push({ connId, msg }),
    requestFlush: () => undefined,
    nowMs: () => now,
    newGuid: () => `00000000-0000-4000-8000-${String(++guids).padStart(12, '0')}`,
    randomBytes: (n) => {
      // Distinct per call and per fixture, not secret: the tests need keys they cannot predict by accident.
      keys++;
      return Buffer.from(Array.from({ length: n }, (_, i) => (keys * 37 + i * 101 + selfId * 7) & 0xff));
    },
    closePeer: (reason) => void closed.push(reason),
    startIo: (id, op) => void pending.push({ id, op }),
    pid: 1000 + selfId,
    log: { debug: line('debug'), info: line('info'), warn: line('warn'), error: line('error') },
  };
  const fence = { fencePartner: () => Promise.resolve(false), partnerGone: () => Promise.resolve(false) };
  const core = new ControllerCore(cfg, env);
  const take = (kind: IoOp['kind']): PendingIo => {
    const i = pending.findIndex((p) => p.op.kind === kind);
    if (i < 0) throw new Error(`no pending ${kind} (pending: ${pending.map((p) => p.op.kind).join(', ') || 'none'})`);
    return pending.splice(i, 1)[0]!;
  };
  const carryOut = async (p: PendingIo): Promise<void> => core.onIoDone(p.id, await runIo(store, fence, p.op));
  const fixture: CoreFixture = {
    core,
    store,
    pending,
    sent,
    replies,
    log,
    closed,
    setNow: (ms) => (now = ms),
    nowMs: () => now,
    settleIo: async (rounds = 1000) => {
      for (let i = 0; i < rounds && pending.length > 0; i++) await carryOut(pending.shift()!);
    },
    runOne: (kind) => carryOut(take(kind)),
    failOne: (kind, err = new Error('simulated EIO')) => core.onIoDone(take(kind).id, { ok: false, error: err }),
    flush: () => {
      const before = sent.length;
      core.flushOutbox();
      return sent.slice(before);
    },
    request: (body) => ({ requestId: nextRequestId++, epoch: 0, sender: SENDER_CLIENT, flags: 0, ...body }) as unknown as ClientRequest,
  };
  const started = core.start();
  await fixture.settleIo();
  await started;
  return fixture;
}

// ---------------------------------------------------------------------------
// Helpers for the room tests: a client's allocation, reads and writes, and a
// partner played by hand.

export const CONN = 7;

/** Let the runtime's async hop run (a promise the core handed out settles). */
export function hop(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

/** The last reply to the client request `req`, or undefined. */
export function replyTo(f: CoreFixture, req: { requestId: number }): Message | undefined {
  for (let i = f.replies.length - 1; i >= 0; i--) if (f.replies[i]!.msg.requestId === req.requestId) return f.replies[i]!.msg;
  return undefined;
}

/** The error code name an ERROR frame carries. */
export function errorName(msg: Message | undefined): ErrorCodeName | undefined {
  if (msg?.kind !== 'ERROR') return undefined;
  return (Object.entries(ErrorCode) as [ErrorCodeName, number][]).find(([, n]) => n === msg.code)?.[0];
}

export function clientWrite(f: CoreFixture, guid: string, offset: number, data: Buffer, extra: Record<string, unknown> = {}): ClientRequest {
  const req = f.request({ kind: 'C_WRITE', guid, offset, pointerId: 0, clientId: 0, clientSeq: 0, data, ...extra });
  f.core.onClientRequest(CONN, req);
  return req;
}

export function clientRead(f: CoreFixture, guid: string, offset: number, length: number, extra: Record<string, unknown> = {}): ClientRequest {
  const req = f.request({ kind: 'C_READ', guid, offset, length, pointerId: 0, ...extra });
  f.core.onClientRequest(CONN, req);
  return req;
}

/** The data of a C_READ_REPLY (throws on anything else). */
export function readData(msg: Message | undefined): Buffer {
  if (msg?.kind !== 'C_READ_REPLY') throw new Error(`expected C_READ_REPLY, got ${JSON.stringify(msg)}`);
  return msg.data;
}

/** A partner played by hand: it sends requests and replies to the core under test. */
export class HandPartner {
  readonly id: 1 | 2;
  private nextRequestId = 1_000_000;
  /** Kinds of the core's requests the partner answers by itself in pump(). */
  auto = new Set<PeerRequest['kind']>(['SENSE_REQUEST', 'WRITE_PAGE', 'SPACE_REQUEST', 'ALLOCATE', 'RELEASE', 'RELEASE_POINTER', 'ALLOCATE_READ', 'ALLOCATE_WRITE']);
  /** The core's requests not answered by pump(), oldest first. */
  readonly held: Message[] = [];
  /** Every frame the core sent, in order. */
  readonly seen: Message[] = [];

  constructor(readonly f: CoreFixture) {
    this.id = f.core.partnerId;
  }

  header(requestId = this.nextRequestId++): { requestId: number; epoch: number; sender: number; flags: number } {
    return { requestId, epoch: this.f.core.currentEpoch, sender: this.id, flags: 0 };
  }

  /** A request from the partner, handled by the core now. */
  send(body: Record<string, unknown>, header: Partial<{ epoch: number; requestId: number }> = {}): Message {
    const msg = { ...this.header(), ...header, ...body } as unknown as Message;
    this.f.core.onPeerMessage(msg);
    return msg;
  }

  /** The partner's reply to the core's request `to`. */
  reply(to: Message, body: Record<string, unknown>): void {
    this.f.core.onPeerMessage({ ...this.header(to.requestId), ...body } as unknown as Message);
  }

  /** The partner refuses the core's request `to`. */
  refuse(to: Message, code: ErrorCodeName, message = 'refused by hand'): void {
    this.reply(to, { kind: 'ERROR', code: ErrorCode[code], requestType: 0, message });
  }

  /** What a partner that agrees answers to each request. */
  answer(to: Message): void {
    switch (to.kind) {
      case 'SENSE_REQUEST':
        // Caught up with whatever pool generation the core is at (its pool refreshed, when it has one).
        return this.reply(to, { kind: 'SENSE_REQUEST_REPLY', role: Role.MIRRORED, senseCode: 0, allocations: 0, cachedPages: 0, dirtyPages: 0, destageQueue: 0, tableDigest: '0', dirtyDigest: '0', poolGeneration: to.poolGeneration });
      case 'WRITE_PAGE':
        return this.reply(to, { kind: 'WRITE_PAGE_REPLY', count: to.pages.length });
      case 'SPACE_REQUEST':
        return this.reply(to, { kind: 'SPACE_REQUEST_REPLY', reservationId: 77, dataOffset: to.dataOffset, cacheBytesFree: 1 << 20, storeBytesFree: 1 << 24 });
      case 'ALLOCATE':
        return this.reply(to, { kind: 'ALLOCATE_REPLY' });
      case 'RELEASE':
        return this.reply(to, { kind: 'RELEASE_REPLY' });
      case 'RELEASE_POINTER':
        return this.reply(to, { kind: 'RELEASE_POINTER_REPLY', pages: 0 });
      case 'ALLOCATE_READ':
        return this.reply(to, { kind: 'ALLOCATE_READ_REPLY', pointerId: to.pointerId });
      case 'ALLOCATE_WRITE':
        return this.reply(to, { kind: 'ALLOCATE_WRITE_REPLY', pointerId: to.pointerId });
      case 'LOCK_REQUEST':
        return this.reply(to, { kind: 'LOCK_REQUEST_REPLY', granted: true, ownerGen: to.op === 2 ? to.ownerGen : 1 });
      default:
        throw new Error(`the hand partner does not answer ${to.kind}`);
    }
  }

  /**
   * Flush the core's frames, answer those of the `auto` kinds (others wait in
   * `held`), carry out the store operations (unless `io` is false), until
   * nothing moves.
   */
  async pump(rounds = 50, io = true): Promise<void> {
    for (let i = 0; i < rounds; i++) {
      const frames = this.f.flush();
      this.seen.push(...frames);
      for (const m of frames) {
        if (m.kind === 'ERROR' || m.kind.endsWith('_REPLY')) continue;
        if (this.auto.has(m.kind as PeerRequest['kind'])) this.answer(m);
        else this.held.push(m);
      }
      const ran = io && this.f.pending.length > 0;
      if (io) await this.f.settleIo();
      if (frames.length === 0 && !ran) return;
    }
  }

  /** The held request of `kind`, taken out of `held`. */
  take(kind: Message['kind']): Message {
    const i = this.held.findIndex((m) => m.kind === kind);
    if (i < 0) throw new Error(`no held ${kind} (held: ${this.held.map((m) => m.kind).join(', ') || 'none'})`);
    return this.held.splice(i, 1)[0]!;
  }

  /** Frames of `kind` the core sent (replies included). */
  sentOf<K extends Message['kind']>(kind: K): Extract<Message, { kind: K }>[] {
    return this.seen.filter((m) => m.kind === kind) as Extract<Message, { kind: K }>[];
  }

  /** The link comes up and both sides join, each fresh: controller 1's state wins. */
  async join(): Promise<void> {
    this.f.core.peerUp({ partnerPid: 4242 });
    await this.pump();
    this.send({ kind: 'SENSE_REQUEST', role: Role.STARTING, reason: SenseReason.HEARTBEAT, joinFlags: JoinFlag.JOINING | JoinFlag.FRESH, poolGeneration: 0 });
    await this.pump();
    this.send({ kind: 'SENSE_REQUEST', role: Role.STARTING, reason: SenseReason.HEARTBEAT, joinFlags: JoinFlag.JOINING | JoinFlag.FRESH | JoinFlag.PUSH_DONE, poolGeneration: 0 });
    await this.pump();
  }
}

/** A client allocation of `pages` pages; its guid. The partner, when given, answers what the core asks. */
export async function allocate(f: CoreFixture, name: string, pages: number, partner?: HandPartner): Promise<string> {
  const req = f.request({ kind: 'C_ALLOCATE', name, policy: '', sizeBytes: pages * PAGE });
  f.core.onClientRequest(CONN, req);
  if (partner !== undefined) await partner.pump();
  else await f.settleIo();
  await hop();
  const r = replyTo(f, req);
  if (r?.kind !== 'C_ALLOCATE_REPLY') throw new Error(`allocate answered ${JSON.stringify(r)}`);
  return r.guid;
}

/** A core of controller `selfId`, mirroring, joined with a hand partner (both fresh). */
export async function joinedCore(opts: FixtureOptions = {}): Promise<{ f: CoreFixture; partner: HandPartner }> {
  const f = await coreFixture({ ...opts, mirroring: true });
  const partner = new HandPartner(f);
  await partner.join();
  if (f.core.currentRole !== Role.MIRRORED) throw new Error(`join did not end mirrored: role ${f.core.currentRole}`);
  return { f, partner };
}

/**
 * The partner, as the coordinator, creates an allocation at the core
 * (SPACE_REQUEST, then ALLOCATE), the way controller 1 does at controller 2.
 */
export function partnerAllocates(partner: HandPartner, name: string, pages: number, guid = '00000000-0000-4000-8000-0000000000aa'): string {
  const f = partner.f;
  partner.send({ kind: 'SPACE_REQUEST', policy: 'default', pageSizeBytes: PAGE, pageCount: pages, reserve: true, dataOffset: 0 });
  const space = f.flush().find((m) => m.kind === 'SPACE_REQUEST_REPLY' || m.kind === 'ERROR');
  if (space?.kind !== 'SPACE_REQUEST_REPLY') throw new Error(`SPACE_REQUEST answered ${JSON.stringify(space)}`);
  partner.send({ kind: 'ALLOCATE', guid, name, policy: 'default', pageSizeBytes: PAGE, pageCount: pages, dataOffset: space.dataOffset, createdEpoch: f.core.currentEpoch, reservationId: space.reservationId });
  const done = f.flush().find((m) => m.kind === 'ALLOCATE_REPLY' || m.kind === 'ERROR');
  if (done?.kind !== 'ALLOCATE_REPLY') throw new Error(`ALLOCATE answered ${JSON.stringify(done)}`);
  return guid;
}

/** The frames of `kind` among `frames`. */
export function framesOf<K extends Message['kind']>(frames: Message[], kind: K): Extract<Message, { kind: K }>[] {
  return frames.filter((m) => m.kind === kind) as Extract<Message, { kind: K }>[];
}
