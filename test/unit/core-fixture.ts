// One core driven by hand, for the unit tests of its rooms. The core's store
// operations are effects: they wait in `pending` until the test carries them
// out (on a real PageStore over memory), fails them, or leaves them hanging;
// frames for the partner wait in `sent` after flush(); client replies are
// kept in `replies`. The clock moves only when the test says so.

import { ControllerCore } from '../../src/core/controller.js';
import type { CoreConfig, CoreEnv, IoOp } from '../../src/core/env.js';
import { resolvePolicies } from '../../src/core/policy.js';
import { DEFAULT_LIMITS } from '../../src/protocol/limits.js';
import { SENDER_CLIENT, type ClientRequest, type Message } from '../../src/protocol/messages.js';
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
}

let nextRequestId = 1;

/** A started core (its table and mailbox read) over a fresh store. */
export async function coreFixture(opts: FixtureOptions = {}): Promise<CoreFixture> {
  const device = new MemoryDevice(16 * 1024 * 1024);
  const store = await PageStore.format(device, { pairId: PAIR_ID, tableEntriesMax: 16, nowMs: 0 });
  const selfId = opts.selfId ?? 1;
  let now = 0;
  const pending: PendingIo[] = [];
  const sent: Message[] = [];
  const replies: { connId: number; msg: Message }[] = [];
  const log: LogLine[] = [];
  const closed: string[] = [];
  const line = (level: LogLine['level']) => (obj: object, msg = ''): void => void log.push({ level, msg, obj });
  const cfg: CoreConfig = {
    selfId,
    partnerId: selfId === 1 ? 2 : 1,
    mirroring: opts.mirroring ?? false,
    cacheBytesMax: opts.cacheBytesMax ?? 1024 * 1024,
    dirtyHighWatermarkPct: 60,
    dirtyLowWatermarkPct: 30,
    dirtyAgeMaxMs: 1000,
    destageConcurrency: 4,
    heartbeatIntervalMs: 100,
    partnerTimeoutMs: 500,
    preferredId: 1,
    resyncPagesPerSecMax: 100_000,
    peerRequestTimeoutMs: 10_000,
    pointerLeaseMs: 60_000,
    cacheFullWaitMs: 1000,
    limits: DEFAULT_LIMITS,
    policies: resolvePolicies([]),
    store: storeLayout(store),
    testHooks: true,
    ...opts.config,
  };
  let guids = 0;
  const env: CoreEnv = {
    sendPeer: (msg) => void sent.push(msg),
    replyClient: (connId, msg) => void replies.push({ connId, msg }),
    requestFlush: () => undefined,
    nowMs: () => now,
    newGuid: () => `00000000-0000-4000-8000-${String(++guids).padStart(12, '0')}`,
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
