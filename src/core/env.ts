// What the core needs from the world, injected so the core does no I/O of its
// own. The runtime implements it with ws, fs and the clock; the simulator with
// a seeded network, a memory device and virtual time.

import type { Message } from '../protocol/messages.js';
import type { Limits } from '../protocol/limits.js';
import type { IoOp } from './io.js';

export type { IoOp, IoOutcome } from './io.js';
import type { Policy } from './policy.js';

/** pino-shaped, so the runtime can pass a pino child logger straight in. */
export interface CoreLog {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface CoreEnv {
  /** Send a frame to the partner. Only called while the link is up. */
  sendPeer(msg: Message): void;
  /** Answer a client request on connection connId. */
  replyClient(connId: number, msg: Message): void;
  /** The core has queued frames: call core.flushOutbox() soon (end of this turn). */
  requestFlush(): void;
  /** Monotonic milliseconds. */
  nowMs(): number;
  /** A fresh allocation GUID (uuid v4 in the runtime, seeded in the simulator). */
  newGuid(): string;
  /**
   * n bytes that cannot be guessed (node:crypto randomBytes in the runtime,
   * the seeded generator in the simulator): keyed allocations' access keys.
   */
  randomBytes(n: number): Uint8Array;
  /** Drop the peer link (the partner went silent, or a request to it timed
   *  out): peerDown follows, and the transport dials again. */
  closePeer(reason: string): void;
  /**
   * Carry out a store operation (or a fence action, see IoOp) and answer with
   * core.onIoDone(id, outcome) later, never from inside this call.
   */
  startIo(id: number, op: IoOp): void;
  /**
   * A callback the core ran after a Future settled threw (a bug): it was
   * logged, and the core serves on. The runtime counts it with the errors
   * that escaped every handler (optional).
   */
  taskFault?(err: unknown): void;
  /** This process's id, recorded in the mailbox for the partner's fence action. */
  pid: number;
  log: CoreLog;
}

/** What the core must know of the store's layout to place allocations. */
export interface StoreLayout {
  /** Bytes of the data area, where allocations' extents lie. */
  dataBytes: number;
  /** Bytes an allocation of pageCount pages of pageSizeBytes takes in the data area. */
  extentBytes(pageSizeBytes: number, pageCount: number): number;
  /** The data-area offset of a free extent of `bytes` among those used, or -1. */
  findExtent(used: readonly { dataOffset: number; bytes: number }[], bytes: number): number;
  /**
   * Pages of this size that must have one owner at a time, in aligned groups
   * from an allocation's first page, because their bytes share a parity row
   * of the store (1 on a file or a mirror: any page may move alone).
   */
  lockGroupPages(pageSizeBytes: number): number;
  /**
   * The store keeps redundancy (a pool) that a writer dying mid-write can
   * leave disagreeing with its data: a survivor asks for repairAfterWriter
   * over what the partner may have been writing.
   */
  repairsAfterWriter: boolean;
}

export interface CoreConfig {
  selfId: 1 | 2;
  partnerId: 1 | 2;
  /** false: a single controller, nothing mirrored (for benchmarks and tests). */
  mirroring: boolean;
  cacheBytesMax: number;
  dirtyHighWatermarkPct: number;
  dirtyLowWatermarkPct: number;
  dirtyAgeMaxMs: number;
  destageConcurrency: number;
  heartbeatIntervalMs: number;
  /** Partner silence after which it counts as lost, and arbitration starts. */
  partnerTimeoutMs: number;
  /** The controller that carries on when both are alive and the link is cut. */
  preferredId: 1 | 2;
  /** Pages a survivor sends a rejoining partner per second, at most. */
  resyncPagesPerSecMax: number;
  /** A partner request unanswered this long fails with TIMEOUT. */
  peerRequestTimeoutMs: number;
  /** An unused pointer is given back after this long. */
  pointerLeaseMs: number;
  /** A write that finds the cache full of dirty pages waits this long, then CACHE_FULL. */
  cacheFullWaitMs: number;
  limits: Limits;
  store: StoreLayout;
  policies: ReadonlyMap<string, Policy>;
  /** Keyed allocations one client connection may hold unlocked at once (default UNLOCKS_PER_CONNECTION_MAX, access-keys.ts). */
  unlocksPerConnectionMax?: number;
  /** Test hooks served (C_TEST_CORRUPT); absent or false: refused with NOT_ALLOWED. */
  testHooks?: boolean;
}
