// The memory manager of one controller, as a pure state machine.
//
// Events come in as method calls (a client request, a partner frame, the link
// going up or down, a tick); effects go out through CoreEnv (frames to send,
// replies, store reads and writes). Nothing here touches sockets, files,
// timers or the wall clock, so two cores can run paired in one process over a
// simulated network and store.
//
// The rules that keep the pair equivalent:
// - A page is written only by the controller that owns it; ownership moves by
//   LOCK_REQUEST, and a grant waits until the granter's own writes and
//   destages of those pages are done. So versions on both sides only grow and
//   both end at the same final version.
// - A write is applied locally, sent as WRITE_PAGE, and acknowledged only once
//   the partner answered. Local readers of a page with a write in flight wait
//   for that answer, so no read ever sees a value the partner does not hold.
// - Every frame to the partner leaves through one ordered outbox.
// - The owner destages; the partner then hears "clean at version v".

import { crc32c } from '../protocol/crc32c.js';
import { DATA_CRC, setDataCrc, type WithDataCrc } from '../protocol/codec.js';
import {
  JoinFlag,
  LockOp,
  MsgType,
  PageFlag,
  PageState,
  PointerMode,
  Role,
  SenseReason,
  VerifyVerdict,
  type Allocate,
  type AllocateRead,
  type AllocateWrite,
  type CAllocate,
  type CClosePointer,
  type CFlush,
  type ClientReply,
  type ClientRequest,
  type COpenPointer,
  type CRead,
  type CRelease,
  type CTestCorrupt,
  type CRewrite,
  type CVerifyReport,
  type CWrite,
  type LockRequest,
  type Message,
  type PageHeaderInfo,
  type PageWrite,
  type PeerReply,
  type PeerRequest,
  type ReadHeader,
  type Release,
  type ReleasePointer,
  type RoleCode,
  type SenseReply,
  type SenseRequest,
  type SpaceRequest,
  type VerifiedPage,
  type WritePage,
} from '../protocol/messages.js';
import { ErrorCode, PagepairError, invariant, isPagepairError } from '../protocol/errors.js';
import type { AllocationRecord, EpochRecord, PageLocation } from '../store/types.js';
import { extentBytes } from '../store/layout.js';
import { findExtent } from '../store/extents.js';
import { newAllocState, overlappingPointer, recordFields, type AllocState, type PointerState } from './allocation.js';
import { PageCache, type CachePage } from './page-cache.js';
import { PeerOutbox, newMirrorOp, settleOp, type MirrorOp } from './peer-outbox.js';
import { SetDigest, tableMember } from './digest.js';
import { TagMemory } from './tag-memory.js';
import { Arbiter } from './arbiter.js';
import type { CoreConfig, CoreEnv } from './env.js';
import { listDifferences, pageHeader, sameCopy, storeDecides, type StoreHeader } from './verify.js';

/** ALLOCATE with this reservation id replays a table entry during a join. */
const SYNC_RESERVATION = 0xffff_ffff;
/** Rounds a write or flush retries when ownership keeps moving. */
const OWNERSHIP_ROUNDS_MAX = 64;
/** How long a reservation waits for its ALLOCATE, on top of the time the coordinator may take to zero the extent. */
const RESERVATION_TTL_MS = 10_000;
/**
 * A slow disk's zeroing rate (32 MiB/s), as bytes per ms: the coordinator
 * zeroes a new extent (store.clearExtent) between SPACE_REQUEST and ALLOCATE,
 * or while it handles ALLOCATE, which for a volume of some GiB takes longer
 * than RESERVATION_TTL_MS or a peer request's timeout.
 */
const ZEROING_BYTES_PER_MS = (32 * 1024 * 1024) / 1000;

/** The time zeroing an extent of `bytes` may take, at the slow disk's rate. */
function zeroingAllowanceMs(bytes: number): number {
  return Math.ceil(bytes / ZEROING_BYTES_PER_MS);
}
/** Above this many pages left, a flush re-checks per tick instead of per destage. */
const FLUSH_RECHECK_PAGES = 256;
/** Most pages destaged in one run of neighbours. */
const DESTAGE_RUN_PAGES_MAX = 32;
/** Store reads one verify request has in flight at most. */
const VERIFY_STORE_READS_MAX = 64;
/** Pages whose torn store slot is logged one by one; past this, only counted (tornSlotsRecovered). */
const TORN_SLOTS_LOGGED_MAX = 1024;
/** Pages a resync sends between pauses of its pacing. */
const RESYNC_CHUNK_PAGES = 64;

interface PendingPeer {
  kind: PeerRequest['kind'];
  /** Run as the reply's frame is handled, before any promise continuation: for what must take effect in link order. */
  onReply: ((reply: PeerReply) => void) | undefined;
  sentMs: number;
  /** Beyond peerRequestTimeoutMs: work the partner does before it answers (zeroing an extent). */
  extraTimeoutMs: number;
  resolve(reply: PeerReply): void;
  reject(err: Error): void;
}

interface DeferredGrant {
  req: LockRequest;
  alloc: AllocState;
}

interface LocalWrite {
  alloc: AllocState;
  first: number;
  count: number;
}

interface Reservation {
  id: number;
  dataOffset: number;
  bytes: number;
  expiresMs: number;
}

interface JoinState {
  /** Undecided until the partner's first SENSE tells whether it is fresh. */
  authoritative: boolean | undefined;
  pushDone: boolean;
  partnerDone: boolean;
  seenGuids: Set<string>;
  /** Resync progress: dirty pages the partner lacked, and how many went. */
  pagesToSend: number;
  pagesSent: number;
}

/** What we know of a client write by its (clientId, clientSeq). */
type TaggedWrite =
  /** Being applied: a retry waits for the outcome (null: acknowledged). */
  | { state: 'running'; waiters: ((err: Error | null) => void)[] }
  /** Acknowledged by us: a retry is answered at once. */
  | { state: 'done' }
  /** Applied here (or held as the partner's mirrored copy) but not known
   *  acknowledged: a retry makes the pages durable, then answers. */
  | { state: 'held'; guid: string; first: number; count: number };

/** How far a write got: applied here, or skipped because a retry of it was applied at the partner. */
interface WriteProgress {
  applied: boolean;
  suppressed: boolean;
}

const TAGGED_WRITES_MAX = 65_536;
const TAG_DONE: TaggedWrite = { state: 'done' };

function tagKey(clientId: number, clientSeq: number): string {
  return `${clientId}:${clientSeq}`;
}

function settleTag(entry: TaggedWrite, err: Error | null): void {
  if (entry.state !== 'running') return;
  for (const w of entry.waiters.splice(0)) w(err);
}

interface FlushTarget {
  cp: CachePage;
  version: number;
}

interface StoreWrite {
  cp: CachePage;
  version: number;
  data: Buffer;
  crc: number;
}

interface RoomWaiter {
  bytes: number;
  deadlineMs: number;
  resolve(): void;
  reject(err: Error): void;
}

export interface CoreCounters {
  clientWrites: number;
  clientReads: number;
  bytesWritten: number;
  bytesRead: number;
  pagesMirroredOut: number;
  pagesMirroredIn: number;
  pagesStaged: number;
  /** Pages read from the store with one of their two slots damaged (a torn write): the other copy was used. */
  tornSlotsRecovered: number;
  pagesDestaged: number;
  destageErrors: number;
  lockRequestsSent: number;
  lockGrants: number;
  joins: number;
  /** Attempts of a client write not applied because a retry of it was applied first. */
  retriesSuppressed: number;
  /** TAKEs answered "not granted": the pages were not ours to hand on. */
  lockRefusals: number;
  /** Times the partner broke the ownership rules, or the two copies of a page were seen to differ (never, when all is well). */
  ownershipConflicts: number;
  /** Pages a join's resync found at one version with two contents, settled by the side whose state won. */
  resyncContentConflicts: number;
}

export class ControllerCore {
  readonly selfId: 1 | 2;
  readonly partnerId: 1 | 2;
  private role: RoleCode;
  private epoch = 1;
  /** True until the first join since start: our cache may lack the partner's dirty pages. */
  private fresh: boolean;
  private linkUp = false;
  private stopping = false;
  private join: JoinState | null = null;

  private readonly allocs = new Map<string, AllocState>();
  private readonly names = new Set<string>();
  private readonly cache: PageCache;
  private tableDigestText: string | null = null;
  private tableChain: Promise<unknown> = Promise.resolve();

  private readonly reservations = new Map<number, Reservation>();
  private nextReservationId = 1;

  private nextRequestId = 1;
  private readonly pendingPeer = new Map<number, PendingPeer>();
  private readonly outbox: PeerOutbox;

  private readonly pointers = new Map<number, PointerState>();
  private nextPointerSeq = 1;

  private readonly activeWrites = new Set<LocalWrite>();
  /** Ranges we are taking from the partner with LOCK_REQUEST TAKEs. */
  private readonly pendingTakes = new Set<LocalWrite>();
  private deferredGrants: DeferredGrant[] = [];
  private roomWaiters: RoomWaiter[] = [];
  private progressWaiters: (() => void)[] = [];
  private releaseWaiters: (() => void)[] = [];

  private destagesInFlight = 0;
  /** A fenced controller stopping writes nothing, not even its own pages. */
  private stoppingMayDestage = true;
  private drainingDirty = false;
  private flushDemand = 0;
  private lastHeartbeatMs = 0;
  private partnerLastHeardMs = 0;
  private partnerSense: SenseReply | null = null;
  private senseCode = 0;

  /** Mailbox heartbeats, the store lease, and arbitration when the partner is lost. */
  private readonly arbiter: Arbiter | null;
  private arbitrating = false;
  private mailboxBeatInFlight = false;
  private lastMailboxBeatMs = 0;
  /** The partner said it is shutting down or crashing: it is not coming back by itself. */
  private partnerLeaving = false;
  /** Since when a fresh controller has been without its partner (it arbitrates after partnerTimeoutMs). */
  private loneSinceMs: number;
  /** Timers of the core itself, fired by tick(): virtual in the simulator. */
  private timers: { atMs: number; resolve: () => void }[] = [];
  /** Store writes of a page are chained so they land in version order. */
  private readonly pageWrites = new Map<CachePage, Promise<void>>();
  /** Pages ("guid:page") whose torn store slot was logged already: once per page (bounded). */
  private readonly tornSlotsLogged = new Set<string>();
  private syncWaiters: { resolve(): void; reject(err: Error): void }[] = [];
  private syncRunning = false;
  /** Client writes by (clientId, clientSeq): a retried write is applied once. */
  private readonly taggedWrites = new TagMemory<TaggedWrite>(TAGGED_WRITES_MAX);
  /** The allocation table being read again after a reset; a join waits for it. */
  private tableReload: Promise<void> | null = null;
  /** The last verify run reported (C_VERIFY_REPORT). */
  private lastVerify: { atMs: number; pagesChecked: number; mismatches: number; repaired: number; unsettled: number } | null = null;
  /** Grows when we are fenced or reset: store writes asked for before must not happen. */
  private generation = 0;
  /** Allocations released whose extents may still receive a store write. */
  private readonly draining = new Set<AllocState>();

  readonly counters: CoreCounters = {
    clientWrites: 0,
    clientReads: 0,
    bytesWritten: 0,
    bytesRead: 0,
    pagesMirroredOut: 0,
    pagesMirroredIn: 0,
    pagesStaged: 0,
    tornSlotsRecovered: 0,
    pagesDestaged: 0,
    destageErrors: 0,
    lockRequestsSent: 0,
    lockGrants: 0,
    joins: 0,
    retriesSuppressed: 0,
    lockRefusals: 0,
    ownershipConflicts: 0,
    resyncContentConflicts: 0,
  };

  constructor(
    private readonly cfg: CoreConfig,
    private readonly env: CoreEnv,
  ) {
    this.selfId = cfg.selfId;
    this.partnerId = cfg.partnerId;
    this.cache = new PageCache(cfg.cacheBytesMax);
    this.outbox = new PeerOutbox(cfg.limits, () => env.requestFlush());
    this.fresh = cfg.mirroring;
    this.role = cfg.mirroring ? Role.STARTING : Role.SINGLE;
    this.loneSinceMs = env.nowMs();
    this.arbiter = cfg.mirroring
      ? new Arbiter(
          {
            selfId: cfg.selfId,
            partnerId: cfg.partnerId,
            preferredId: cfg.preferredId,
            heartbeatIntervalMs: cfg.heartbeatIntervalMs,
            partnerTimeoutMs: cfg.partnerTimeoutMs,
          },
          {
            store: env.store,
            nowMs: () => env.nowMs(),
            sleep: (ms) => this.sleep(ms),
            fencePartner: (pid) => env.fencePartner(pid),
            partnerGone: (pid) => env.partnerGone(pid),
            log: env.log,
          },
        )
      : null;
  }

  // -------------------------------------------------------------------------
  // Lifecycle

  /** Load the allocation table and epoch from the store. Call once, first. */
  async start(): Promise<void> {
    const mailbox = await this.env.store.readMailbox();
    if (mailbox.epoch !== null) this.epoch = mailbox.epoch.epoch;
    const table = await this.env.store.readTable();
    for (const record of table.records) this.installAllocation(record);
    this.env.log.info(
      { role: roleName(this.role), epoch: this.epoch, allocations: this.allocs.size, tableSeq: table.seq },
      'memory manager started',
    );
  }

  /** Destage what we own, hand our pages to a live partner, say goodbye. */
  async shutdown(timeoutMs = 10_000): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    // Only a controller that serves may write what it holds to the store.
    this.stoppingMayDestage = this.role === Role.MIRRORED || this.role === Role.ALONE || this.role === Role.SINGLE;
    this.setRole(Role.STOPPING, 'shutting down');
    const deadline = this.env.nowMs() + timeoutMs;
    const wasMirrored = this.linkUp && this.join === null && this.stoppingMayDestage;
    this.flushDemand++;
    try {
      while (this.stoppingMayDestage && this.env.nowMs() < deadline) {
        const left = [...this.cache.dirty].filter((cp) => this.owns(cp.alloc, cp.page) && !cp.alloc.released);
        if (left.length === 0 && this.destagesInFlight === 0) break;
        this.kickDestage();
        await this.waitForProgress();
      }
    } finally {
      this.flushDemand--;
    }
    const left = [...this.cache.dirty].filter((cp) => this.owns(cp.alloc, cp.page)).length;
    if (left > 0) this.env.log.warn({ dirtyPages: left }, 'shutdown: pages still dirty');
    if (this.cfg.mirroring && this.linkUp && wasMirrored) {
      const gives: Promise<unknown>[] = [];
      for (const alloc of this.allocs.values()) {
        for (const [first, count] of runs(0, alloc.record.pageCount, (p) => alloc.owner[p] === this.selfId)) {
          const ownerGen = this.moveOwnership(alloc, first, count, this.partnerId);
          gives.push(this.request({ kind: 'LOCK_REQUEST', guid: alloc.record.guid, firstPage: first, pageCount: count, op: LockOp.GIVE, ownerGen }).catch(() => undefined));
        }
      }
      await Promise.all(gives);
      this.sendSense(SenseReason.SHUTTING_DOWN);
    }
    await this.tableChain.catch(() => undefined);
    await this.env.store.sync();
    this.env.log.info({ dirtyPagesLeft: left }, 'memory manager stopped');
  }

  // -------------------------------------------------------------------------
  // Events from the runtime

  tick(): void {
    const now = this.env.nowMs();
    if (this.timers.length > 0) {
      const due = this.timers.filter((t) => t.atMs <= now);
      if (due.length > 0) {
        this.timers = this.timers.filter((t) => t.atMs > now);
        for (const t of due) t.resolve();
      }
    }
    if (this.linkUp && now - this.lastHeartbeatMs >= this.cfg.heartbeatIntervalMs) {
      this.lastHeartbeatMs = now;
      this.sendSense(SenseReason.HEARTBEAT);
    }
    if (this.linkUp && now - this.partnerLastHeardMs > this.cfg.partnerTimeoutMs) {
      this.env.log.warn({ silentMs: Math.round(now - this.partnerLastHeardMs) }, 'partner silent; dropping the link');
      this.env.closePeer(`partner silent for ${Math.round(now - this.partnerLastHeardMs)} ms`);
      this.peerDown('partner silent');
    }
    this.mailboxBeat(now);
    if (this.fresh && !this.linkUp && !this.arbitrating && !this.stopping && this.role === Role.STARTING && now - this.loneSinceMs > this.cfg.partnerTimeoutMs) {
      // No partner in sight since we started: find out through the store whether it is gone.
      this.loneSinceMs = now;
      this.startArbitration('no partner since start');
    }
    let timedOut = false;
    for (const [id, p] of this.pendingPeer) {
      const timeoutMs = this.cfg.peerRequestTimeoutMs + p.extraTimeoutMs;
      if (now - p.sentMs > timeoutMs) {
        this.pendingPeer.delete(id);
        p.reject(new PagepairError('TIMEOUT', `partner did not answer ${p.kind} within ${timeoutMs} ms`));
        timedOut = true;
      }
    }
    if (timedOut && this.linkUp) {
      // The partner may still apply what it did not answer; only a fresh join
      // puts the two sides back in step.
      this.env.closePeer('a partner request timed out');
      this.peerDown('a partner request timed out');
    }
    for (const [id, r] of this.reservations) if (r.expiresMs < now) this.reservations.delete(id);
    for (const p of [...this.pointers.values()]) {
      if (p.holderId === this.selfId && now - p.lastUsedMs > this.cfg.pointerLeaseMs) {
        this.env.log.warn({ pointerId: p.id, guid: p.alloc.record.guid }, 'pointer lease ran out; giving it back');
        void this.closePointer(p, false).catch(() => undefined);
      }
    }
    if (this.roomWaiters.length > 0) this.serveRoomWaiters();
    this.kickDestage();
    // Flushes and shutdown re-check on every tick too, so none waits on an event that never comes.
    if (this.flushDemand > 0) this.wakeProgress();
  }

  peerUp(info: { partnerPid?: number } = {}): void {
    invariant(this.cfg.mirroring, 'peer link on a single controller');
    this.linkUp = true;
    this.partnerLeaving = false;
    this.partnerLastHeardMs = this.env.nowMs();
    this.lastHeartbeatMs = this.env.nowMs();
    this.env.log.info({ partnerPid: info.partnerPid ?? 0, role: roleName(this.role), fresh: this.fresh }, 'partner link up');
    if (this.stopping) return;
    if (this.role === Role.FENCED && !this.arbitrating) this.resetToFresh('partner is back after we were fenced');
    // A join waits for a running arbitration to settle who serves, and for
    // the table a reset reloads.
    if (!this.arbitrating && this.tableReload === null) this.beginJoin();
  }

  private beginJoin(): void {
    this.join = {
      authoritative: undefined,
      pushDone: false,
      partnerDone: false,
      seenGuids: new Set(),
      pagesToSend: 0,
      pagesSent: 0,
    };
    // A survivor keeps serving alone while the partner catches up.
    if (this.role !== Role.ALONE) this.setRole(Role.JOINING, 'joining partner', { fresh: this.fresh });
    this.sendSense(SenseReason.HEARTBEAT);
  }

  /** Forget every cached page and allocation: what we held may be older than what the partner served alone. */
  private resetToFresh(why: string): void {
    for (const alloc of [...this.allocs.values()]) {
      alloc.released = true;
      alloc.lostInReset = true;
      this.cache.dropAlloc(alloc);
      for (const cp of alloc.pages.values()) cp.waiters?.forEach((w) => w());
    }
    this.allocs.clear();
    this.names.clear();
    this.draining.clear();
    this.tableDigestText = null;
    this.taggedWrites.clear();
    const rec = this.arbiter?.epochRecord;
    if (rec !== undefined && rec !== null && rec.epoch > this.epoch) this.epoch = rec.epoch;
    this.fresh = true;
    this.generation++;
    this.loneSinceMs = this.env.nowMs();
    this.setRole(Role.STARTING, why, { epoch: this.epoch });
    // Fresh from a reset, we hold what a fresh start holds: the stored table.
    const generation = this.generation;
    this.tableReload = this.env.store.readTable().then(
      (table) => {
        if (this.generation !== generation || !this.fresh) return;
        for (const record of table.records) if (!this.allocs.has(record.guid) && !this.names.has(record.name)) this.installAllocation(record, 1);
      },
      (err: unknown) => this.env.log.error({ err: String(err) }, 'could not read the allocation table after a reset'),
    ).finally(() => {
      if (this.generation !== generation) return;
      this.tableReload = null;
      if (this.linkUp && this.join === null && !this.arbitrating && this.fresh && !this.stopping && this.role === Role.STARTING) this.beginJoin();
    });
  }

  /** Our mailbox heartbeat: keeps the lease and tells the partner we live. */
  private mailboxBeat(now: number): void {
    const arb = this.arbiter;
    if (arb === null || this.mailboxBeatInFlight || this.arbitrating || this.role === Role.FENCED) return;
    if (now - this.lastMailboxBeatMs < this.cfg.heartbeatIntervalMs) return;
    this.lastMailboxBeatMs = now;
    this.mailboxBeatInFlight = true;
    const epoch = this.epoch;
    const generation = this.generation;
    arb.heartbeat(epoch, this.slotRole(), this.env.pid).then(
      (mailbox) => {
        this.mailboxBeatInFlight = false;
        if (this.generation !== generation || !arb.supersededIn(mailbox, this.epoch)) return;
        const rec = mailbox.epoch!;
        if (this.fresh) {
          // We are the one rejoining: carry on under the partner's epoch.
          this.epoch = rec.epoch;
        } else if (!this.arbitrating) {
          this.enterFenced(`the partner took over in epoch ${rec.epoch}`);
        }
      },
      (err: unknown) => {
        this.mailboxBeatInFlight = false;
        this.env.log.error({ err: String(err) }, 'mailbox heartbeat failed');
      },
    );
  }

  /** What our mailbox slot says we are: a fresh controller holds nothing and contends for nothing. */
  private slotRole(): RoleCode {
    return this.fresh ? Role.STARTING : this.role;
  }

  /** Resolves after ms of core time (fired by tick). */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.timers.push({ atMs: this.env.nowMs() + ms, resolve }));
  }

  private startArbitration(why: string): void {
    const arb = this.arbiter;
    if (arb === null || this.arbitrating || this.stopping) return;
    this.arbitrating = true;
    const wasFresh = this.fresh;
    const previous = this.role;
    this.setRole(Role.ARBITRATING, `partner lost (${why}); arbitrating through the store`, { partnerLeft: this.partnerLeaving });
    arb.arbitrate(this.epoch, this.partnerLeaving, this.slotRole(), this.env.pid, wasFresh).then(
      (outcome) => {
        this.arbitrating = false;
        if (this.stopping) return;
        invariant(this.fresh === wasFresh, 'state reset during arbitration');
        if (outcome.won) this.takeOver(outcome.epoch);
        else if (wasFresh && outcome.epoch <= this.epoch) {
          // A fresh controller never takes over from a live partner: it waits for the link.
          this.setRole(previous, `partner is alive (${outcome.reason}); waiting for the link`);
        } else {
          if (wasFresh) {
            this.epoch = Math.max(this.epoch, outcome.epoch);
            this.setRole(Role.STARTING, `partner serves in epoch ${outcome.epoch}; waiting for the link`);
          } else this.enterFenced(outcome.reason);
        }
        if (this.linkUp && this.join === null) {
          if (this.role === Role.FENCED) this.resetToFresh('partner link is up; rejoining');
          if (this.tableReload === null) this.beginJoin();
        }
        this.wakeProgress();
      },
      (err: unknown) => {
        this.arbitrating = false;
        this.env.log.error({ err: String(err) }, 'arbitration failed; fencing ourselves');
        if (wasFresh) this.setRole(Role.STARTING, 'arbitration failed');
        else this.enterFenced('arbitration failed');
      },
    );
  }

  /** We serve alone from now on, in a new epoch. */
  private takeOver(epoch: number): void {
    const from = this.epoch;
    this.epoch = epoch;
    this.fresh = false;
    for (const alloc of this.allocs.values()) alloc.owner.fill(this.selfId);
    for (const p of [...this.pointers.values()]) if (p.holderId !== this.selfId) this.dropPointer(p);
    this.setRole(Role.ALONE, 'took over: serving alone, writing through to the store', {
      fromEpoch: from,
      epoch,
      dirtyPages: this.cache.dirty.size,
    });
    // Everything dirty, the partner's mirrored pages too, goes to the store
    // now, and our table: it may hold allocations the partner never wrote.
    this.kickDestage();
    this.persistTable().catch((err: unknown) => this.env.log.error({ err: String(err) }, 'takeover: could not write the allocation table'));
  }

  /** We lost: no client I/O, no store writes, until the partner is back and we rejoin. */
  private enterFenced(reason: string): void {
    if (this.role === Role.FENCED) return;
    this.generation++;
    this.arbiter?.dropLease();
    this.setRole(Role.FENCED, `fenced: ${reason}`, { epoch: this.epoch });
    for (const w of this.roomWaiters.splice(0)) w.reject(new PagepairError('FENCED', 'controller is fenced'));
    this.wakeProgress();
  }

  /** The last word to the partner before this process dies of an error. */
  announceCrash(): void {
    if (!this.linkUp) return;
    this.sendSense(SenseReason.CRASHING);
    this.flushOutbox();
  }

  peerDown(reason: string): void {
    if (!this.linkUp) return;
    this.linkUp = false;
    this.join = null;
    this.partnerSense = null;
    const err = new PagepairError('PARTNER_LOST', `partner link lost: ${reason}`);
    this.outbox.failAll(err);
    const pending = [...this.pendingPeer.values()];
    this.pendingPeer.clear();
    for (const p of pending) p.reject(err);
    this.deferredGrants = [];
    this.reservations.clear();
    // The partner forgets every pointer with the link, our write pointers'
    // shadow pages included: committing one later would change our side only.
    for (const p of [...this.pointers.values()]) {
      if (p.holderId !== this.selfId || p.mode === PointerMode.WRITE) this.dropPointer(p);
    }
    this.env.log.warn({ reason, role: roleName(this.role) }, 'partner link down');
    if (!this.stopping && !this.arbitrating) {
      if (this.role === Role.MIRRORED || (this.role === Role.JOINING && !this.fresh)) this.startArbitration(reason);
      else if (this.role === Role.JOINING) {
        // What a cut-short join gave us may be older than what the partner
        // serves by the time the link is back: start over empty.
        this.resetToFresh('partner left before the join finished');
      }
      // ALONE stays alone (a rejoining partner went away again); FENCED and STARTING wait.
    }
    this.wakeProgress();
  }

  /** Send every queued frame to the partner. The runtime calls it after requestFlush. */
  flushOutbox(): void {
    if (this.outbox.length === 0) return;
    if (!this.linkUp) {
      this.outbox.failAll(new PagepairError('PARTNER_LOST', 'partner link is down'));
      return;
    }
    const frames = this.outbox.drain((pages): WritePage => ({ kind: 'WRITE_PAGE', requestId: this.newRequestId(), epoch: this.epoch, sender: this.selfId, flags: 0, pages }));
    for (const { msg, ops } of frames) {
      if (ops !== null) {
        const requestId = msg.requestId;
        this.pendingPeer.set(requestId, {
          kind: 'WRITE_PAGE',
          sentMs: this.env.nowMs(),
          extraTimeoutMs: 0,
          onReply: undefined,
          resolve: () => {
            for (const op of ops) settleOp(op, null);
          },
          reject: (err) => {
            for (const op of ops) settleOp(op, err);
          },
        });
      }
      this.env.sendPeer(msg);
    }
  }

  onClientGone(connId: number): void {
    for (const p of [...this.pointers.values()]) {
      if (p.holderId === this.selfId && p.connId === connId) void this.closePointer(p, false).catch(() => undefined);
    }
  }

  onClientRequest(connId: number, msg: ClientRequest): void {
    // The hot paths: a write whose pages are all in hand and a read of cached
    // pages are served without a promise; anything else goes the long way.
    if (msg.kind === 'C_WRITE') {
      if (this.writeNow(connId, msg)) return;
    } else if (msg.kind === 'C_READ') {
      const reply = this.readNow(msg);
      if (reply !== null) {
        this.env.replyClient(connId, reply);
        return;
      }
    }
    const done = (reply: Message): void => this.env.replyClient(connId, reply);
    const fail = (err: unknown): void => {
      const e = this.asTyped(err, msg.kind);
      done(this.errorFrame(msg.requestId, MsgType[msg.kind], e));
    };
    try {
      switch (msg.kind) {
        case 'C_WRITE':
          this.clientWrite(connId, msg).then(() => done(this.writeReply(msg)), fail);
          return;
        case 'C_READ':
          this.clientRead(connId, msg).then((data) => done(this.readReply(msg, data)), fail);
          return;
        case 'C_ALLOCATE':
          this.clientAllocate(msg).then(
            (r) => done(this.reply(msg, { kind: 'C_ALLOCATE_REPLY', guid: r.guid, pageSizeBytes: r.pageSizeBytes, pageCount: r.pageCount })),
            fail,
          );
          return;
        case 'C_RELEASE':
          this.clientRelease(msg).then(() => done(this.reply(msg, { kind: 'C_RELEASE_REPLY' })), fail);
          return;
        case 'C_FLUSH':
          this.clientFlush(msg).then((pages) => done(this.reply(msg, { kind: 'C_FLUSH_REPLY', pages })), fail);
          return;
        case 'C_STATUS':
          done(this.reply(msg, { kind: 'C_STATUS_REPLY', json: JSON.stringify(this.status()) }));
          return;
        case 'C_LIST':
          done(
            this.reply(msg, {
              kind: 'C_LIST_REPLY',
              allocations: [...this.allocs.values()].slice(0, this.cfg.limits.listEntriesMax).map((a) => ({
                guid: a.record.guid,
                name: a.record.name,
                policy: a.record.policy,
                pageSizeBytes: a.record.pageSizeBytes,
                pageCount: a.record.pageCount,
              })),
            }),
          );
          return;
        case 'C_OPEN_POINTER':
          this.clientOpenPointer(connId, msg).then((pointerId) => done(this.reply(msg, { kind: 'C_OPEN_POINTER_REPLY', pointerId })), fail);
          return;
        case 'C_CLOSE_POINTER':
          this.clientClosePointer(connId, msg).then((pages) => done(this.reply(msg, { kind: 'C_CLOSE_POINTER_REPLY', pages })), fail);
          return;
        case 'C_VERIFY':
          this.verifyPages(msg.guid, msg.firstPage, msg.pageCount).then((r) => done(this.reply(msg, { kind: 'C_VERIFY_REPLY', ...r })), fail);
          return;
        case 'C_VERIFY_REPORT':
          this.recordVerify(msg);
          done(this.reply(msg, { kind: 'C_VERIFY_REPORT_REPLY' }));
          return;
        case 'C_TEST_CORRUPT':
          this.clientTestCorrupt(msg).then((r) => done(this.reply(msg, { kind: 'C_TEST_CORRUPT_REPLY', ...r })), fail);
          return;
        case 'C_REWRITE':
          this.clientRewrite(msg).then((r) => done(this.reply(msg, { kind: 'C_REWRITE_REPLY', ...r })), fail);
          return;
      }
    } catch (err) {
      fail(err);
    }
  }

  onPeerMessage(msg: Message): void {
    this.partnerLastHeardMs = this.env.nowMs();
    if (msg.kind === 'ERROR' || msg.kind.endsWith('_REPLY')) {
      this.onPeerReply(msg);
      return;
    }
    const req = msg as PeerRequest;
    if (MsgType[req.kind] === undefined || MsgType[req.kind] > MsgType.RELEASE_POINTER) {
      this.env.log.warn({ kind: msg.kind }, 'partner sent a frame that is not a paging message');
      return;
    }
    if (req.epoch > this.epoch) {
      if (this.fresh) {
        // Rejoining a partner that served alone: its epoch is ours from now on.
        this.env.log.info({ from: this.epoch, to: req.epoch }, 'adopting the partner\'s epoch');
        this.epoch = req.epoch;
      } else if (this.arbitrating) {
        // Our arbitration is deciding right now (the newer epoch may be the
        // one it just wrote); its outcome settles who serves, not this frame.
      } else {
        this.enterFenced(`partner speaks in epoch ${req.epoch}, ours is ${this.epoch}`);
        this.env.closePeer('partner is in a newer epoch');
        this.peerDown('partner is in a newer epoch');
        return;
      }
    }
    // A SENSE from an older epoch is still news (a restarted partner says hello with it).
    if (req.epoch < this.epoch && req.kind !== 'SENSE_REQUEST') {
      this.sendPeerError(req, new PagepairError('STALE_EPOCH', `${req.kind} from epoch ${req.epoch}, current epoch is ${this.epoch}`));
      return;
    }
    const fail = (err: unknown): void => this.sendPeerError(req, this.asTyped(err, req.kind));
    try {
      switch (req.kind) {
        case 'WRITE_PAGE':
          this.onWritePage(req);
          return;
        case 'SENSE_REQUEST':
          this.onSense(req);
          return;
        case 'LOCK_REQUEST':
          this.onLockRequest(req);
          return;
        case 'SPACE_REQUEST':
          this.onSpaceRequest(req);
          return;
        case 'ALLOCATE':
          this.onAllocate(req).catch(fail);
          return;
        case 'RELEASE':
          this.onRelease(req).catch(fail);
          return;
        case 'READ_HEADER':
          this.onReadHeader(req);
          return;
        case 'ALLOCATE_READ':
          this.onAllocateRead(req).catch(fail);
          return;
        case 'ALLOCATE_WRITE':
          this.onAllocateWrite(req);
          return;
        case 'RELEASE_POINTER':
          this.onReleasePointer(req);
          return;
      }
    } catch (err) {
      fail(err);
    }
  }

  // -------------------------------------------------------------------------
  // The hot paths

  /**
   * Applies a plain write at once when nothing has to be waited for: the
   * pages are ours, cached (or overwritten whole with a known version), the
   * cache has room, no pointer or retry is involved and writes need not go
   * through to the store. The reply goes out when the partner answers (or at
   * once, unmirrored). False: nothing was done, take the long way.
   */
  private writeNow(connId: number, msg: CWrite): boolean {
    if (msg.pointerId !== 0 || this.roomWaiters.length > 0) return false;
    const mirroring = this.cfg.mirroring;
    if (mirroring ? this.role !== Role.MIRRORED || !this.linkUp : this.role !== Role.SINGLE) return false;
    const alloc = this.allocs.get(msg.guid);
    if (alloc === undefined) return false;
    const data = msg.data;
    const offset = msg.offset;
    const end = offset + data.length;
    // Bad fields go the long way too, which names them.
    if (data.length === 0 || data.length > this.cfg.limits.requestBytesMax || !Number.isSafeInteger(offset) || offset < 0 || end > alloc.sizeBytes) return false;
    const ps = alloc.record.pageSizeBytes;
    const first = Math.floor(offset / ps);
    const count = Math.floor((end - 1) / ps) - first + 1;
    if (count * ps > this.cfg.cacheBytesMax / 2) return false;
    if (alloc.pointers.size > 0 && overlappingPointer(alloc, first, count) !== undefined) return false;
    let key: string | null = null;
    if (msg.clientId !== 0) {
      key = tagKey(msg.clientId, msg.clientSeq);
      if (this.taggedWrites.has(key)) return false;
    }
    let missing = 0;
    for (let p = first; p < first + count; p++) {
      if (mirroring && alloc.owner[p] !== this.selfId) return false;
      if (alloc.pages.has(p)) continue;
      if (p * ps < offset || (p + 1) * ps > end || Number.isNaN(knownVersion(alloc, p))) return false;
      missing++;
    }
    if (missing > 0 && !this.makeRoomKeeping(alloc, first, count, missing * ps)) return false;

    this.counters.clientWrites++;
    this.counters.bytesWritten += data.length;
    const now = this.env.nowMs();
    const ack = mirroring ? new MirroredWrite(this, connId, msg, alloc, first, count, key) : null;
    // A whole page written: the decoder already read it and knows its CRC.
    const knownCrc = data.length === ps ? (msg as WithDataCrc)[DATA_CRC] : undefined;
    for (let p = first; p < first + count; p++) {
      const cached = alloc.pages.get(p);
      const reusable = cached !== undefined ? this.cache.reusableData(cached) : null;
      const pageData = reusable !== null ? overlayInPlace(reusable, p * ps, offset, data) : overlay(cached?.data ?? EMPTY, ps, p * ps, offset, data);
      const version = (cached?.version ?? knownVersion(alloc, p)) + 1;
      const crc = knownCrc ?? crc32c(pageData);
      const cp = this.cache.writeDirty(alloc, p, version, crc, this.epoch, pageData, now);
      if (ack === null) continue;
      cp.mirrorPending++;
      ack.touched.push(cp);
      const last = p === first + count - 1;
      this.outbox.pushPage(
        { guid: alloc.record.guid, page: p, version, crc, epoch: this.epoch, pageFlags: 0, pointerId: 0, clientId: last ? msg.clientId : 0, clientSeq: last ? msg.clientSeq : 0, ownerGen: alloc.ownerGen[p]!, data: pageData },
        ack,
      );
    }
    if (ack === null) {
      if (key !== null) this.rememberTag(key, TAG_DONE);
      this.afterWrite();
      this.env.replyClient(connId, this.writeReply(msg));
      return true;
    }
    this.counters.pagesMirroredOut += count;
    if (key !== null) {
      ack.tag = { state: 'running', waiters: [] };
      this.rememberTag(key, ack.tag);
    }
    return true;
  }

  /**
   * Room for `bytes` more in the cache without evicting the range's own
   * cached pages: a write of part of one of them is built on its bytes.
   */
  private makeRoomKeeping(alloc: AllocState, first: number, count: number, bytes: number): boolean {
    const kept: CachePage[] = [];
    for (let p = first; p < first + count; p++) {
      const cp = alloc.pages.get(p);
      if (cp !== undefined) {
        this.cache.pin(cp);
        kept.push(cp);
      }
    }
    const room = this.cache.makeRoom(bytes);
    for (const cp of kept) this.cache.unpin(cp);
    return room;
  }

  /**
   * Mirroring pages we applied failed. If the partner refused them (not just
   * lost), the two sides differ now, and only a join puts them back in step.
   */
  private onMirrorRefused(err: unknown): void {
    if (this.linkUp && isPagepairError(err) && err.code !== 'PARTNER_LOST') {
      this.env.closePeer(`partner refused mirrored pages: ${err.message}`);
      this.peerDown('partner refused mirrored pages');
    }
  }

  /** A write applied by writeNow: the partner answered (err null) or the mirror failed. */
  mirroredWriteSettled(w: MirroredWrite, err: Error | null): void {
    if (err !== null) this.onMirrorRefused(err);
    for (const cp of w.touched) this.mirrorSettled(cp);
    this.afterWrite();
    const msg = w.msg;
    if (w.key !== null && w.tag !== null) {
      // Applied here either way: a retry must not apply it again.
      this.rememberTag(w.key, err === null ? TAG_DONE : { state: 'held', guid: w.alloc.record.guid, first: w.first, count: w.count });
      settleTag(w.tag, err);
    }
    this.env.replyClient(w.connId, err === null ? this.writeReply(msg) : this.errorFrame(msg.requestId, MsgType.C_WRITE, this.asTyped(err, msg.kind)));
  }

  /** What the end of every write does: deferred grants may go now, and destaging may have to start. */
  private afterWrite(): void {
    if (this.deferredGrants.length > 0) this.recheckDeferredGrants();
    if (this.cache.bytesDirty > this.highWatermarkBytes()) this.kickDestage();
  }

  /**
   * The reply to a read served from the cache at once, or null: not every
   * page is cached and settled, or something needs checking (the long way).
   * A read within one page hands out the cached buffer itself (lent: it is
   * not changed in place from then on).
   */
  private readNow(msg: CRead): ClientReply | null {
    if (msg.pointerId !== 0) return null;
    const role = this.role;
    if (role !== Role.MIRRORED && role !== Role.SINGLE && role !== Role.ALONE) return null;
    if (this.arbiter !== null && !this.arbiter.leaseValid()) return null;
    const alloc = this.allocs.get(msg.guid);
    if (alloc === undefined) return null;
    const offset = msg.offset;
    const length = msg.length;
    const end = offset + length;
    if (!(length > 0) || length > this.cfg.limits.requestBytesMax || !Number.isSafeInteger(offset) || offset < 0 || end > alloc.sizeBytes) return null;
    const ps = alloc.record.pageSizeBytes;
    const first = Math.floor(offset / ps);
    const last = Math.floor((end - 1) / ps);
    for (let p = first; p <= last; p++) {
      const cp = alloc.pages.get(p);
      if (cp === undefined || cp.mirrorPending !== 0) return null;
    }
    this.counters.clientReads++;
    this.counters.bytesRead += length;
    if (first === last) {
      const cp = this.cache.get(alloc, first)!;
      const from = offset - first * ps;
      const page = this.cache.lend(cp);
      // A whole page: its CRC is known, so the encoder need not read it.
      if (from === 0 && length === ps) return setDataCrc(this.readReply(msg, page), cp.crc);
      return this.readReply(msg, page.subarray(from, from + length));
    }
    const out = Buffer.allocUnsafe(length);
    for (let p = first; p <= last; p++) {
      const cp = this.cache.get(alloc, p)!;
      const pageStart = p * ps;
      const from = Math.max(offset, pageStart);
      const to = Math.min(end, pageStart + ps);
      cp.data.copy(out, from - offset, from - pageStart, to - pageStart);
    }
    return this.readReply(msg, out);
  }

  private writeReply(req: CWrite): ClientReply {
    return { kind: 'C_WRITE_REPLY', requestId: req.requestId, epoch: this.epoch, sender: this.selfId, flags: 0 };
  }

  private readReply(req: CRead, data: Buffer): ClientReply {
    return { kind: 'C_READ_REPLY', requestId: req.requestId, epoch: this.epoch, sender: this.selfId, flags: 0, data };
  }

  // -------------------------------------------------------------------------
  // Client writes

  private async clientWrite(connId: number, msg: CWrite): Promise<void> {
    this.requireWritable();
    const alloc = this.lookup(msg.guid);
    this.checkRange(alloc, msg.offset, msg.data.length, 'data');
    const ps = alloc.record.pageSizeBytes;
    const first = Math.floor(msg.offset / ps);
    const count = Math.floor((msg.offset + msg.data.length - 1) / ps) - first + 1;
    this.counters.clientWrites++;
    this.counters.bytesWritten += msg.data.length;
    if (msg.pointerId !== 0) {
      await this.pointerWrite(connId, msg, alloc, first, count);
      return;
    }
    const conflict = overlappingPointer(alloc, first, count);
    if (conflict !== undefined) {
      throw new PagepairError('LOCK_CONFLICT', `pages ${first}..${first + count - 1} of ${alloc.record.guid} are held by pointer ${conflict.id}`);
    }
    const compose = (page: number, old: Buffer): Buffer => overlay(old, ps, page * ps, msg.offset, msg.data);
    const end = msg.offset + msg.data.length;
    const whole = (page: number): boolean => page * ps >= msg.offset && (page + 1) * ps <= end;
    if (msg.clientId === 0) {
      await this.writePages(alloc, first, count, compose, null, { applied: false, suppressed: false }, whole);
      return;
    }
    const key = tagKey(msg.clientId, msg.clientSeq);
    const known = this.taggedWrites.get(key);
    if (known !== undefined) {
      // A retry of a write we have seen: never apply it a second time.
      if (known.state === 'running') {
        await new Promise<void>((resolve, reject) => known.waiters.push((err) => (err === null ? resolve() : reject(err))));
      } else if (known.state === 'held') {
        await this.makeDurable(alloc, first, count);
        this.rememberTag(key, TAG_DONE);
      }
      return;
    }
    const progress: WriteProgress = { applied: false, suppressed: false };
    const done = this.writePages(alloc, first, count, compose, { clientId: msg.clientId, clientSeq: msg.clientSeq }, progress, whole);
    const running: TaggedWrite = { state: 'running', waiters: [] };
    this.rememberTag(key, running);
    try {
      await done;
      // Not applied here because the partner's mirrored pages say a retry of
      // it was: alone, those pages must reach the store before the answer.
      if (progress.suppressed) await this.makeDurable(alloc, first, count);
      this.rememberTag(key, TAG_DONE);
      settleTag(running, null);
    } catch (err) {
      if (progress.applied) this.rememberTag(key, { state: 'held', guid: alloc.record.guid, first, count });
      // Forget the tag only if it is still our attempt's: the partner's
      // mirrored pages may have said meanwhile that a retry of this write was
      // applied there ("held"), and that must outlive this attempt's failure.
      else if (this.taggedWrites.get(key) === running) this.taggedWrites.delete(key);
      settleTag(running, err instanceof Error ? err : new PagepairError('INTERNAL', String(err)));
      throw err;
    }
  }

  private rememberTag(key: string, entry: TaggedWrite): void {
    this.taggedWrites.remember(key, entry);
  }

  /** A write we hold is as safe as an acknowledged one: mirrored, or in the store when alone. */
  private async makeDurable(alloc: AllocState, first: number, count: number): Promise<void> {
    if (!this.writesThrough()) return;
    await this.flushTargets(this.dirtyTargets((cp) => cp.alloc === alloc && cp.page >= first && cp.page < first + count));
  }

  /**
   * Write pages [first, first+count): own them, have their current contents
   * where the write is partial, apply, then resolve once the partner holds
   * them (mirrored) or the store does (alone).
   */
  private async writePages(
    alloc: AllocState,
    first: number,
    count: number,
    compose: (page: number, old: Buffer) => Buffer,
    tag: { clientId: number; clientSeq: number } | null,
    progress: WriteProgress,
    wholePages: (page: number) => boolean = () => false,
  ): Promise<void> {
    const bytes = count * alloc.record.pageSizeBytes;
    if (bytes > this.cfg.cacheBytesMax / 2) {
      throw new PagepairError('TOO_LARGE', `a write of ${count} pages (${bytes} bytes) does not fit half the cache (${this.cfg.cacheBytesMax} bytes)`, 'data');
    }
    const op: LocalWrite = { alloc, first, count };
    this.activeWrites.add(op);
    const touched: CachePage[] = [];
    const pinned: CachePage[] = [];
    try {
      for (let round = 0; ; round++) {
        if (round >= OWNERSHIP_ROUNDS_MAX) throw new PagepairError('BUSY', `write to ${alloc.record.guid} kept losing its pages to the partner`);
        if (this.cfg.mirroring) await this.acquireOwnership(alloc, first, count);
        await this.waitForRoom(this.missingBytes(alloc, first, count));
        await this.stageAndPin(alloc, first, count, pinned, wholePages);
        if (alloc.released) throw this.goneError(alloc);
        this.requireWritable();
        if (!this.ownsRange(alloc, first, count) || !this.readyRange(alloc, first, count, wholePages)) continue;
        const conflict = overlappingPointer(alloc, first, count);
        if (conflict !== undefined) throw new PagepairError('LOCK_CONFLICT', `pages are held by pointer ${conflict.id}`);
        // A retry of this write may have been applied at the partner while we
        // waited (its mirrored pages told us): this attempt must not apply too.
        if (tag !== null && this.taggedWrites.get(tagKey(tag.clientId, tag.clientSeq))?.state === 'held') {
          this.counters.retriesSuppressed++;
          progress.suppressed = true;
          return;
        }
        // Everything is in hand: apply without yielding.
        const now = this.env.nowMs();
        const through = this.writesThrough();
        const mirror = this.cfg.mirroring && this.linkUp ? this.mirrorOp() : null;
        const toStore: StoreWrite[] = [];
        for (let p = first; p < first + count; p++) {
          const cached = alloc.pages.get(p);
          // A page overwritten whole need not be read first when its version is known.
          const data = compose(p, cached?.data ?? EMPTY);
          const version = (cached?.version ?? knownVersion(alloc, p)) + 1;
          const crc = crc32c(data);
          const cp = this.cache.writeDirty(alloc, p, version, crc, this.epoch, data, now);
          if (mirror === null && !through) continue;
          cp.mirrorPending++;
          touched.push(cp);
          if (through) toStore.push({ cp, version, data, crc });
          if (mirror !== null) {
            const last = p === first + count - 1 && tag !== null;
            this.outbox.pushPage(
              { guid: alloc.record.guid, page: p, version, crc, epoch: this.epoch, pageFlags: 0, pointerId: 0, clientId: last ? tag.clientId : 0, clientSeq: last ? tag.clientSeq : 0, ownerGen: alloc.ownerGen[p]!, data },
              mirror.op,
            );
          }
        }
        progress.applied = true;
        if (mirror !== null) this.counters.pagesMirroredOut += count;
        if (through) {
          // Alone, the store is the second copy; a partner still catching up gets the pages too, but is not waited for.
          if (mirror !== null) mirror.done.catch(() => undefined);
          await this.writeThrough(toStore);
        } else if (mirror !== null) {
          await mirror.done.catch((err: unknown) => {
            this.onMirrorRefused(err);
            throw err;
          });
        }
        return;
      }
    } finally {
      this.activeWrites.delete(op);
      for (const cp of touched) this.mirrorSettled(cp);
      for (const cp of pinned) this.cache.unpin(cp);
      if (this.deferredGrants.length > 0) this.recheckDeferredGrants();
      if (this.cache.bytesDirty > this.highWatermarkBytes()) this.kickDestage();
    }
  }

  /** Bytes the pages of a range not yet cached will take. */
  private missingBytes(alloc: AllocState, first: number, count: number): number {
    let missing = 0;
    for (let p = first; p < first + count; p++) if (!alloc.pages.has(p)) missing++;
    return missing * alloc.record.pageSizeBytes;
  }

  /** Resolves once `bytes` more fit in the cache; CACHE_FULL after cacheFullWaitMs. */
  private waitForRoom(bytes: number): Promise<void> {
    if (bytes === 0 || this.cache.makeRoom(bytes)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.roomWaiters.push({ bytes, deadlineMs: this.env.nowMs() + this.cfg.cacheFullWaitMs, resolve, reject });
      this.kickDestage();
    });
  }

  /** Store, sync, and mark clean the pages of a write made alone; resolves when all are durable. */
  private async writeThrough(writes: StoreWrite[]): Promise<void> {
    await Promise.all(writes.map((w) => this.storeWritePage(w.cp, w.version, w.data, w.crc)));
    await this.syncSoon();
    for (const w of writes) this.pageStored(w.cp, w.version, w.crc);
  }

  /**
   * Write one page version to the store. Writes of one page are chained so
   * they land in version order, and none starts without a valid lease.
   */
  private storeWritePage(cp: CachePage, version: number, data: Buffer, crc: number, syncAfter = false): Promise<void> {
    const alloc = cp.alloc;
    alloc.destagesInFlight++;
    this.destagesInFlight++;
    cp.destagingVersion = version;
    const prev = this.pageWrites.get(cp) ?? Promise.resolve();
    const generation = this.generation;
    const run = prev.then(async () => {
      await this.ensureLease();
      // Fenced or reset while the write waited: what we held is no longer
      // ours to write, even if the lease was renewed in the new epoch.
      if (this.generation !== generation || alloc.released) throw new PagepairError('FENCED', 'controller was fenced or reset; the page is not written');
      await this.env.store.writePage(this.location(alloc), cp.page, version, this.epoch, data, crc);
      // Part of the write as far as the page is concerned: until the store
      // has synced it, the page is still being destaged (it is not clean,
      // not granted away, not written again).
      if (syncAfter) await this.syncSoon();
    });
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.pageWrites.set(cp, settled);
    void settled.then(() => {
      alloc.destagesInFlight--;
      this.destagesInFlight--;
      if (this.pageWrites.get(cp) === settled) {
        this.pageWrites.delete(cp);
        cp.destagingVersion = 0;
      }
      if (alloc.destagesInFlight === 0 && alloc.released) this.wakeReleases();
      if (this.deferredGrants.length > 0) this.recheckDeferredGrants();
      this.wakeProgress();
      this.serveRoomWaiters();
      this.kickDestage();
    });
    return run;
  }

  /**
   * `version` of the page, with CRC `crc`, is in the store: clean, if nothing
   * newer came, and the partner hears it (and marks its copy clean only if it
   * holds the same version with the same CRC).
   */
  private pageStored(cp: CachePage, version: number, crc: number): void {
    const alloc = cp.alloc;
    if (alloc.released) return;
    if (version > cp.storeVersion) cp.storeVersion = version;
    this.cache.markClean(cp, version, crc);
    if (this.cfg.mirroring && this.linkUp) {
      this.outbox.pushPage(
        { guid: alloc.record.guid, page: cp.page, version, crc, epoch: this.epoch, pageFlags: PageFlag.CLEAN_AT, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: alloc.ownerGen[cp.page]!, data: EMPTY },
        null,
      );
    }
  }

  /** Group commit: every caller waiting here shares the next sync of the store. */
  private syncSoon(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.syncWaiters.push({ resolve, reject });
      if (!this.syncRunning) this.runSync();
    });
  }

  private runSync(): void {
    this.syncRunning = true;
    const batch = this.syncWaiters;
    this.syncWaiters = [];
    this.env.store.sync().then(
      () => {
        for (const w of batch) w.resolve();
      },
      (err: unknown) => {
        this.senseCode = ErrorCode.IO_ERROR;
        const e = new PagepairError('IO_ERROR', `store sync failed: ${String(err)}`);
        for (const w of batch) w.reject(e);
      },
    ).finally(() => {
      this.syncRunning = false;
      if (this.syncWaiters.length > 0) this.runSync();
    });
  }

  private leaseRenewal: Promise<void> | null = null;

  /** No store write without a lease: a controller that was paused finds out here that it was taken over. */
  private ensureLease(): Promise<void> {
    const arb = this.arbiter;
    if (arb === null) return Promise.resolve();
    if (this.role === Role.FENCED) return Promise.reject(new PagepairError('FENCED', 'controller is fenced; it writes nothing to the store'));
    if (arb.leaseValid()) return Promise.resolve();
    const epoch = this.epoch;
    const generation = this.generation;
    this.leaseRenewal ??= arb
      .heartbeat(epoch, this.slotRole(), this.env.pid)
      .then((mailbox) => {
        // Judged against our epoch now (we may have adopted a newer one meanwhile).
        if (arb.supersededIn(mailbox, this.epoch)) {
          // Only the controller we were when we asked is fenced by this answer.
          if (!this.fresh && this.generation === generation) this.enterFenced(`the partner took over in epoch ${mailbox.epoch?.epoch ?? '?'}`);
          throw new PagepairError('FENCED', 'the partner took over; this controller writes nothing more');
        }
        if (this.generation !== generation) throw new PagepairError('FENCED', 'controller was reset while its lease was renewed');
      })
      .finally(() => {
        this.leaseRenewal = null;
      });
    return this.leaseRenewal;
  }

  private mirrorOp(): { op: MirrorOp; done: Promise<void> } {
    let op!: MirrorOp;
    const done = new Promise<void>((resolve, reject) => {
      op = newMirrorOp(resolve, reject);
    });
    return { op, done };
  }

  private mirrorSettled(cp: CachePage): void {
    cp.mirrorPending--;
    if (cp.mirrorPending === 0 && cp.waiters !== null) {
      const waiters = cp.waiters;
      cp.waiters = null;
      for (const w of waiters) w();
    }
  }

  // -------------------------------------------------------------------------
  // Ownership (LOCK_REQUEST)

  private owns(alloc: AllocState, page: number): boolean {
    return !this.cfg.mirroring || alloc.owner[page] === this.selfId;
  }

  private ownsRange(alloc: AllocState, first: number, count: number): boolean {
    if (!this.cfg.mirroring) return true;
    for (let p = first; p < first + count; p++) if (alloc.owner[p] !== this.selfId) return false;
    return true;
  }

  private async acquireOwnership(alloc: AllocState, first: number, count: number): Promise<void> {
    if (this.ownsRange(alloc, first, count)) return;
    const taking: LocalWrite = { alloc, first, count };
    this.pendingTakes.add(taking);
    try {
      for (let round = 0; !this.ownsRange(alloc, first, count); round++) {
        if (round >= OWNERSHIP_ROUNDS_MAX) throw new PagepairError('BUSY', `could not take pages of ${alloc.record.guid} from the partner`);
        const wanted = runs(first, count, (p) => alloc.owner[p] !== this.selfId);
        const replies = wanted.map(([f, c]) => {
          this.counters.lockRequestsSent++;
          // The grant takes effect when its frame is handled, in link order,
          // not in a promise continuation: a TAKE of the partner's that came
          // in the same chunk right behind it must find the pages ours.
          return this.request({ kind: 'LOCK_REQUEST', guid: alloc.record.guid, firstPage: f, pageCount: c, op: LockOp.TAKE, ownerGen: 0 }, 0, (r) => {
            if (r.kind === 'LOCK_REQUEST_REPLY' && r.granted && !alloc.released) this.receiveOwnership(alloc, f, c, r.ownerGen, 'grant');
          });
        });
        await Promise.all(replies);
        if (alloc.released) throw this.goneError(alloc);
      }
    } finally {
      this.pendingTakes.delete(taking);
      if (this.deferredGrants.length > 0) this.recheckDeferredGrants();
    }
  }

  /**
   * Hand pages we own to `to`: they get one generation larger than any of
   * them had, and that generation goes with the grant or GIVE.
   */
  private moveOwnership(alloc: AllocState, first: number, count: number, to: number): number {
    let gen = 0;
    for (let p = first; p < first + count; p++) if (alloc.ownerGen[p]! > gen) gen = alloc.ownerGen[p]!;
    invariant(gen < 0xffff_ffff, 'ownership generation overflow');
    gen++;
    alloc.owner.fill(to, first, first + count);
    alloc.ownerGen.fill(gen, first, first + count);
    return gen;
  }

  /**
   * Pages the partner handed us (a grant or a GIVE). Only the owner hands a
   * page on, so a page we own already, or a generation not newer than the one
   * we know, means the two sides disagree on who owns it: refused, and the
   * link is made anew (the join settles ownership and contents again).
   */
  private receiveOwnership(alloc: AllocState, first: number, count: number, gen: number, what: 'grant' | 'GIVE'): boolean {
    for (let p = first; p < first + count; p++) {
      if (alloc.owner[p] === this.selfId || gen <= alloc.ownerGen[p]!) {
        const why = alloc.owner[p] === this.selfId ? 'we own it already' : `its generation here is ${alloc.ownerGen[p]}, the ${what} carries ${gen}`;
        this.ownershipConflict(`partner's ${what} of page ${p} of ${alloc.record.guid}: ${why}`);
        return false;
      }
    }
    alloc.owner.fill(this.selfId, first, first + count);
    alloc.ownerGen.fill(gen, first, first + count);
    return true;
  }

  /**
   * The two sides disagree on ownership or contents: what we would
   * acknowledge may differ from the partner's copy. Counted, logged, and the
   * link is made anew, so that a join settles both again.
   */
  private ownershipConflict(why: string): void {
    this.counters.ownershipConflicts++;
    this.env.log.error({ why }, 'ownership conflict with the partner; making the link anew');
    if (this.linkUp) {
      this.env.closePeer(`ownership conflict: ${why}`);
      this.peerDown('ownership conflict');
    }
  }

  private onLockRequest(req: LockRequest): void {
    const alloc = this.allocs.get(req.guid);
    if (alloc === undefined) throw unknownGuid(req.guid);
    this.checkPageRange(alloc, req.firstPage, req.pageCount);
    if (req.op === LockOp.GIVE) {
      if (!this.receiveOwnership(alloc, req.firstPage, req.pageCount, req.ownerGen, 'GIVE')) return;
      this.replyPeer(req, { kind: 'LOCK_REQUEST_REPLY', granted: true, ownerGen: req.ownerGen });
      return;
    }
    this.answerTake(req, alloc);
  }

  /** Grant a TAKE, refuse it, or keep it for later; on arrival and each time a deferred one is looked at again. */
  private answerTake(req: LockRequest, alloc: AllocState): void {
    const conflict = overlappingPointer(alloc, req.firstPage, req.pageCount);
    if (conflict !== undefined && conflict.holderId === this.selfId) {
      // The pages stay ours while our pointer is open (it may have been
      // opened while the TAKE waited); a partner that wants them durable (a
      // flush) gets them destaged by us now instead.
      this.destageRange(alloc, req.firstPage, req.pageCount);
      this.sendPeerError(req, new PagepairError('LOCK_CONFLICT', `pages ${req.firstPage}..${req.firstPage + req.pageCount - 1} are held by pointer ${conflict.id}`));
      return;
    }
    if (!this.ownsRange(alloc, req.firstPage, req.pageCount)) {
      // Only the owner hands a page on. Pages we do not own are on their way
      // to the partner (we granted them and it asked again before our grant
      // arrived) or with it already: it asks again for what it still lacks.
      this.refuseTake(req);
      return;
    }
    if (this.canGrant(alloc, req.firstPage, req.pageCount)) this.grant(req, alloc);
    else this.deferredGrants.push({ req, alloc });
  }

  private refuseTake(req: LockRequest): void {
    this.counters.lockRefusals++;
    this.replyPeer(req, { kind: 'LOCK_REQUEST_REPLY', granted: false, ownerGen: 0 });
  }

  private canGrant(alloc: AllocState, first: number, count: number): boolean {
    for (let p = first; p < first + count; p++) {
      const cp = alloc.pages.get(p);
      if (cp !== undefined && (cp.mirrorPending > 0 || cp.destagingVersion !== 0)) return false;
    }
    // Controller 1 keeps pages its own writes in progress need; controller 2
    // always yields. One side yielding is what rules out a deadlock when each
    // holds a page the other's write wants.
    // Controller 1 also holds back pages of a range it is taking (a flush or a
    // pointer open takes pages outside activeWrites): giving up one page of
    // the range while taking the next can go on forever.
    if (this.selfId === 1) {
      for (const w of this.activeWrites) {
        if (w.alloc === alloc && w.first < first + count && first < w.first + w.count) return false;
      }
      for (const t of this.pendingTakes) {
        if (t.alloc === alloc && t.first < first + count && first < t.first + t.count) return false;
      }
    }
    return true;
  }

  private grant(req: LockRequest, alloc: AllocState): void {
    const ownerGen = this.moveOwnership(alloc, req.firstPage, req.pageCount, this.partnerId);
    this.counters.lockGrants++;
    this.replyPeer(req, { kind: 'LOCK_REQUEST_REPLY', granted: true, ownerGen });
  }

  private recheckDeferredGrants(): void {
    const waiting = this.deferredGrants;
    this.deferredGrants = [];
    for (const d of waiting) {
      if (d.alloc.released || !this.allocs.has(d.req.guid)) {
        this.sendPeerError(d.req, unknownGuid(d.req.guid));
      } else {
        this.answerTake(d.req, d.alloc);
      }
    }
  }

  // -------------------------------------------------------------------------
  // Mirrored pages arriving (WRITE_PAGE)

  private onWritePage(req: WritePage): void {
    // Check the whole frame first: it is applied entirely or not at all.
    const strict = this.ownershipSettled();
    for (const pw of req.pages) {
      const alloc = this.allocs.get(pw.guid);
      if (alloc === undefined) continue; // released meanwhile: nothing to keep
      this.checkPageRange(alloc, pw.page, 1);
      if ((pw.pageFlags & (PageFlag.CLEAN_AT | PageFlag.TAG_ONLY)) === 0 && pw.data.length !== alloc.record.pageSizeBytes) {
        throw new PagepairError('BAD_FIELD', `WRITE_PAGE page ${pw.page} of ${pw.guid} has ${pw.data.length} bytes, page size is ${alloc.record.pageSizeBytes}`, 'data');
      }
      if ((pw.pageFlags & PageFlag.POINTER_PENDING) !== 0) {
        const p = this.pointers.get(pw.pointerId);
        if (p === undefined || p.mode !== PointerMode.WRITE || p.alloc !== alloc) {
          throw new PagepairError('POINTER_UNKNOWN', `WRITE_PAGE names write pointer ${pw.pointerId}, which is not open here`, 'pointerId');
        }
      }
      if (strict && (pw.pageFlags & (PageFlag.TAG_ONLY | PageFlag.RESYNC)) === 0) {
        const conflict = this.mirrorConflict(alloc, pw);
        if (conflict !== null) {
          // Never acknowledged: the sender's write fails, and it makes the
          // link anew so that a join settles both copies.
          this.counters.ownershipConflicts++;
          this.env.log.error({ guid: pw.guid, page: pw.page, version: pw.version, ownerGen: pw.ownerGen }, `refused a mirrored page: ${conflict}`);
          throw new PagepairError('OWNERSHIP_CONFLICT', `WRITE_PAGE page ${pw.page} of ${pw.guid}: ${conflict}`, 'pages');
        }
      }
    }
    const now = this.env.nowMs();
    for (const pw of req.pages) {
      if ((pw.pageFlags & PageFlag.TAG_ONLY) !== 0) {
        // The partner's memory of client writes it applied, handed over in a join.
        const key = tagKey(pw.clientId, pw.clientSeq);
        if (pw.clientId !== 0 && !this.taggedWrites.has(key)) this.rememberTag(key, { state: 'held', guid: pw.guid, first: pw.page, count: 1 });
        continue;
      }
      const alloc = this.allocs.get(pw.guid);
      if (alloc === undefined) continue;
      if ((pw.pageFlags & PageFlag.CLEAN_AT) !== 0) {
        const cp = alloc.pages.get(pw.page);
        if (cp !== undefined) {
          if (pw.version > cp.storeVersion) cp.storeVersion = pw.version;
          this.cache.markClean(cp, pw.version, pw.crc);
        }
        continue;
      }
      if ((pw.pageFlags & PageFlag.POINTER_PENDING) !== 0) {
        // Keep the page, not the whole frame.
        this.pointers.get(pw.pointerId)?.shadows.set(pw.page, { version: pw.version, crc: pw.crc, data: Buffer.from(pw.data) });
        continue;
      }
      if (pw.clientId !== 0) {
        // The last page of a client write: the whole write is here now.
        const key = tagKey(pw.clientId, pw.clientSeq);
        // Also over our own attempt still in progress: the partner applied it first.
        if (this.taggedWrites.get(key)?.state !== 'done') this.rememberTag(key, { state: 'held', guid: pw.guid, first: pw.page, count: 1 });
      }
      const cp = alloc.pages.get(pw.page);
      if (cp !== undefined && cp.version >= pw.version && !this.resyncOverrides(cp, pw)) continue;
      this.supersedeStaging(alloc, pw.page);
      // Keep the page, not the whole frame: copied into the page's own buffer
      // when it may be reused, else into a new one.
      const reusable = cp !== undefined ? this.cache.reusableData(cp) : null;
      const data = reusable !== null && reusable.length === pw.data.length ? copyInto(reusable, pw.data) : Buffer.from(pw.data);
      this.cache.writeDirty(alloc, pw.page, pw.version, pw.crc, pw.epoch, data, now);
      this.counters.pagesMirroredIn++;
    }
    this.replyPeer(req, { kind: 'WRITE_PAGE_REPLY', count: req.pages.length });
    this.wakeProgress();
  }

  /**
   * Whether both sides hold the same view of who owns what: mirrored, with
   * no join running. Only then does every page arrive from its owner under
   * the generation both know; in a join the resync's rules apply.
   */
  private ownershipSettled(): boolean {
    return this.cfg.mirroring && this.role === Role.MIRRORED && this.join === null;
  }

  /**
   * Why a mirrored page breaks the ownership rules, or null. Only the owner
   * writes a page, so it never arrives for a page we own, always under the
   * generation we know, and never at a version we hold with other bytes (nor
   * below what we hold).
   */
  private mirrorConflict(alloc: AllocState, pw: PageWrite): string | null {
    const p = pw.page;
    if (alloc.owner[p] === this.selfId) return `the page is ours (ownership generation ${alloc.ownerGen[p]}), the partner wrote it under generation ${pw.ownerGen}`;
    if (pw.ownerGen !== alloc.ownerGen[p]) return `written under ownership generation ${pw.ownerGen}, the page is at generation ${alloc.ownerGen[p]}`;
    if ((pw.pageFlags & PageFlag.POINTER_PENDING) !== 0) return null;
    const cp = alloc.pages.get(p);
    if (cp === undefined) return null;
    if (cp.version === pw.version && cp.crc !== pw.crc) {
      const what = (pw.pageFlags & PageFlag.CLEAN_AT) !== 0 ? 'clean at' : 'written at';
      return `${what} version ${pw.version} with CRC ${hex(pw.crc)}, our copy of that version has CRC ${hex(cp.crc)}`;
    }
    if ((pw.pageFlags & PageFlag.CLEAN_AT) === 0 && cp.version > pw.version) return `version ${pw.version} is older than our ${cp.version}`;
    return null;
  }

  /**
   * A resync page at the version we hold, with other bytes: the copy of the
   * side whose state wins the join is kept on both.
   */
  private resyncOverrides(cp: CachePage, pw: PageWrite): boolean {
    if ((pw.pageFlags & PageFlag.RESYNC) === 0 || cp.version !== pw.version || cp.crc === pw.crc) return false;
    if (this.join === null || this.join.authoritative !== false) return false;
    this.counters.resyncContentConflicts++;
    this.env.log.warn({ guid: pw.guid, page: pw.page, version: pw.version }, 'join: the partner holds other bytes at this version; its copy wins');
    return true;
  }

  // -------------------------------------------------------------------------
  // Reads and staging

  private async clientRead(connId: number, msg: CRead): Promise<Buffer> {
    this.requireReadable();
    const alloc = this.lookup(msg.guid);
    this.checkRange(alloc, msg.offset, msg.length, 'length');
    // A controller that was paused may have been taken over meanwhile: it
    // serves no read from its cache until the store says it still may.
    if (this.arbiter !== null && !this.arbiter.leaseValid()) {
      await this.ensureLease();
      this.requireReadable();
      if (alloc.released) throw this.goneError(alloc);
    }
    this.counters.clientReads++;
    this.counters.bytesRead += msg.length;
    const ps = alloc.record.pageSizeBytes;
    const first = Math.floor(msg.offset / ps);
    const last = Math.floor((msg.offset + msg.length - 1) / ps);
    let pointer: PointerState | undefined;
    if (msg.pointerId !== 0) {
      pointer = this.myPointer(connId, msg.pointerId, alloc);
      if (first < pointer.firstPage || last >= pointer.firstPage + pointer.pageCount) {
        throw new PagepairError('OUT_OF_RANGE', `read reaches outside pointer ${pointer.id}`, 'offset');
      }
      pointer.lastUsedMs = this.env.nowMs();
    }
    const out = Buffer.allocUnsafe(msg.length);
    for (let p = first; p <= last; p++) {
      const shadow = pointer?.shadows.get(p);
      const data = shadow !== undefined ? shadow.data : (await this.readablePage(alloc, p)).data;
      const pageStart = p * ps;
      const from = Math.max(msg.offset, pageStart);
      const to = Math.min(msg.offset + msg.length, pageStart + ps);
      data.copy(out, from - msg.offset, from - pageStart, to - pageStart);
    }
    return out;
  }

  /** A page whose contents the partner holds too: cached, and no write of it in flight. */
  private async readablePage(alloc: AllocState, page: number): Promise<CachePage> {
    for (;;) {
      const cp = this.cache.get(alloc, page) ?? (await this.stagePage(alloc, page));
      if (cp.mirrorPending === 0) return cp;
      await new Promise<void>((resolve) => {
        (cp.waiters ??= []).push(resolve);
      });
      if (alloc.released) throw this.goneError(alloc);
      // The write we waited for may have failed (the link dropped): then we
      // are arbitrating, and what we hold may not survive it.
      this.requireReadable();
    }
  }

  private async stageRange(alloc: AllocState, first: number, count: number): Promise<void> {
    const waits: Promise<CachePage>[] = [];
    for (let p = first; p < first + count; p++) if (!alloc.pages.has(p)) waits.push(this.stagePage(alloc, p));
    if (waits.length > 0) await Promise.all(waits);
  }

  /**
   * Stage the range and pin each page as it arrives, so staging the last
   * cannot evict the first. Pages the write covers whole and whose version is
   * known are not read at all.
   */
  private async stageAndPin(alloc: AllocState, first: number, count: number, pinned: CachePage[], wholePages: (page: number) => boolean): Promise<void> {
    const pin = (cp: CachePage): void => {
      if (pinned.includes(cp)) return;
      this.cache.pin(cp);
      pinned.push(cp);
    };
    const waits: Promise<void>[] = [];
    for (let p = first; p < first + count; p++) {
      const cp = alloc.pages.get(p);
      if (cp !== undefined) pin(cp);
      else if (!(wholePages(p) && !Number.isNaN(knownVersion(alloc, p)))) waits.push(this.stagePage(alloc, p).then(pin));
    }
    if (waits.length > 0) await Promise.all(waits);
  }

  /** Every page is cached, or is overwritten whole with a known version. */
  private readyRange(alloc: AllocState, first: number, count: number, wholePages: (page: number) => boolean): boolean {
    for (let p = first; p < first + count; p++) {
      if (!alloc.pages.has(p) && !(wholePages(p) && !Number.isNaN(knownVersion(alloc, p)))) return false;
    }
    return true;
  }

  private stagePage(alloc: AllocState, page: number): Promise<CachePage> {
    const cached = alloc.pages.get(page);
    if (cached !== undefined) return Promise.resolve(cached);
    const inFlight = alloc.staging.get(page);
    if (inFlight !== undefined) return inFlight.promise;
    const entry = { promise: null as unknown as Promise<CachePage>, superseded: false };
    entry.promise = this.env.store.readPage(this.location(alloc), page).then(
      (sp) => {
        alloc.staging.delete(page);
        if (alloc.released) throw this.goneError(alloc);
        const now = alloc.pages.get(page);
        if (now !== undefined) return now;
        // A newer version arrived and left again while we read: read anew.
        if (entry.superseded) return this.stagePage(alloc, page);
        this.counters.pagesStaged++;
        if (sp.tornSlot !== undefined) this.noteTornSlot(alloc, page, sp.header.version, sp.tornSlot);
        const cp = this.cache.insertClean(alloc, page, sp.header.version, sp.header.crc, sp.header.epoch, sp.data);
        cp.storeVersion = sp.header.version;
        return cp;
      },
      (err: unknown) => {
        alloc.staging.delete(page);
        throw err;
      },
    );
    alloc.staging.set(page, entry);
    return entry.promise;
  }

  /** A staged page's newer store slot was damaged (a torn write) and the older copy came back instead. */
  private noteTornSlot(alloc: AllocState, page: number, version: number, reason: string): void {
    this.counters.tornSlotsRecovered++;
    const key = `${alloc.record.guid}:${page}`;
    if (this.tornSlotsLogged.has(key) || this.tornSlotsLogged.size >= TORN_SLOTS_LOGGED_MAX) return;
    this.tornSlotsLogged.add(key);
    this.env.log.warn({ guid: alloc.record.guid, page, version, reason }, 'store: a slot of this page is damaged (torn write); its other copy was used');
  }

  private supersedeStaging(alloc: AllocState, page: number): void {
    const s = alloc.staging.get(page);
    if (s !== undefined) s.superseded = true;
  }

  // -------------------------------------------------------------------------
  // Destaging

  private highWatermarkBytes(): number {
    return (this.cfg.cacheBytesMax * this.cfg.dirtyHighWatermarkPct) / 100;
  }

  /** Whether this controller may write pages to the store now. */
  private mayDestage(): boolean {
    switch (this.role) {
      case Role.SINGLE:
      case Role.ALONE:
        return true;
      // Not while joining: ownership was just settled, and the partner may
      // still have a destage of the same page in flight (see pushJoinState).
      case Role.MIRRORED:
        return this.linkUp && this.join === null;
      case Role.STOPPING:
        return this.stoppingMayDestage;
      default:
        return false;
    }
  }

  private kickDestage(): void {
    if (this.destagesInFlight >= this.cfg.destageConcurrency || this.cache.dirty.size === 0 || !this.mayDestage()) return;
    const dirtyBytes = this.cache.bytesDirty;
    if (dirtyBytes > this.highWatermarkBytes()) this.drainingDirty = true;
    else if (dirtyBytes <= (this.cfg.cacheBytesMax * this.cfg.dirtyLowWatermarkPct) / 100) this.drainingDirty = false;
    // Alone, nothing waits in the cache: the partner's mirrored pages go to the store at once.
    const urgent = this.drainingDirty || this.flushDemand > 0 || this.roomWaiters.length > 0 || this.role === Role.ALONE;
    const now = this.env.nowMs();
    let scanned = 0;
    for (const cp of this.cache.dirty) {
      if (this.destagesInFlight >= this.cfg.destageConcurrency || ++scanned > 4096) break;
      if (!urgent && now - cp.dirtySinceMs < this.cfg.dirtyAgeMaxMs) break;
      if (cp.destagingVersion !== 0 || cp.mirrorPending > 0 || cp.alloc.released) continue;
      if (!this.owns(cp.alloc, cp.page)) continue;
      this.destageWithNeighbours(cp);
    }
  }

  /**
   * Destage a due page together with the dirty pages next to it, whatever
   * their age: their slots lie end to end in the store, so the store can
   * write them in one go. Far fewer, larger writes; a neighbour written a
   * little early is only written again if it changes again.
   */
  private destageWithNeighbours(cp: CachePage): void {
    const alloc = cp.alloc;
    let lo = cp.page;
    let hi = cp.page;
    while (hi - lo + 1 < DESTAGE_RUN_PAGES_MAX && this.destageable(alloc, hi + 1)) hi++;
    while (hi - lo + 1 < DESTAGE_RUN_PAGES_MAX && this.destageable(alloc, lo - 1)) lo--;
    for (let p = lo; p <= hi; p++) this.destage(p === cp.page ? cp : alloc.pages.get(p)!);
  }

  /** Whether a page is dirty, ours, settled with the partner and not being written. */
  private destageable(alloc: AllocState, page: number): boolean {
    if (page < 0 || page >= alloc.record.pageCount) return false;
    const cp = alloc.pages.get(page);
    return cp !== undefined && cp.dirty && cp.destagingVersion === 0 && cp.mirrorPending === 0 && this.owns(alloc, page);
  }

  /** Destage the dirty pages of a range we own, whatever their age. */
  private destageRange(alloc: AllocState, first: number, count: number): void {
    if (!this.mayDestage()) return;
    for (let p = first; p < first + count; p++) {
      const cp = alloc.pages.get(p);
      if (cp !== undefined && cp.dirty && cp.destagingVersion === 0 && cp.mirrorPending === 0 && this.owns(alloc, p)) this.destage(cp);
    }
  }

  /**
   * Write a dirty page to the store; once the store has synced it (group
   * commit: one sync for the destages that land together), it is clean here
   * and at the partner. A failed write or sync leaves it dirty, to be written
   * again: a sync that failed is never taken for one that succeeded, and
   * what it should have made durable is still in the cache.
   */
  private destage(cp: CachePage): void {
    const version = cp.version;
    const crc = cp.crc;
    const alloc = cp.alloc;
    this.storeWritePage(cp, version, cp.data, crc, true).then(
      () => {
        this.counters.pagesDestaged++;
        this.pageStored(cp, version, crc);
      },
      (err: unknown) => {
        if (isPagepairError(err, 'FENCED')) return;
        this.counters.destageErrors++;
        this.senseCode = ErrorCode.IO_ERROR;
        this.env.log.error({ guid: alloc.record.guid, page: cp.page, version, err: String(err) }, 'destage failed; page stays dirty');
      },
    );
  }

  private async clientFlush(msg: CFlush): Promise<number> {
    this.requireWritable();
    const allocs = new Set(msg.guid === '' ? this.allocs.values() : [this.lookup(msg.guid)]);
    const targets = this.dirtyTargets((cp) => allocs.has(cp.alloc));
    await this.flushTargets(targets);
    return targets.length;
  }

  private dirtyTargets(pred: (cp: CachePage) => boolean): FlushTarget[] {
    const targets: FlushTarget[] = [];
    for (const cp of this.cache.dirty) if (pred(cp)) targets.push({ cp, version: cp.version });
    return targets;
  }

  /** Resolves once the store holds every target page at its version or newer, synced (see the end). */
  private async flushTargets(targets: FlushTarget[]): Promise<void> {
    this.flushDemand++;
    try {
      // Give up only when nothing moved for a whole request timeout.
      let best = Number.MAX_SAFE_INTEGER;
      let lastProgressMs = this.env.nowMs();
      let left = targets;
      for (;;) {
        left = left.filter((t) => !t.cp.alloc.released && t.cp.storeVersion < t.version);
        if (left.length === 0) break;
        if (left.length < best) {
          best = left.length;
          lastProgressMs = this.env.nowMs();
        } else if (this.env.nowMs() - lastProgressMs > this.cfg.peerRequestTimeoutMs) {
          throw new PagepairError('BUSY', `flush made no progress in ${this.cfg.peerRequestTimeoutMs} ms: ${left.length} pages left`);
        }
        this.requireWritable();
        if (this.cfg.mirroring) {
          const byAlloc = new Map<AllocState, number[]>();
          for (const t of left) if (!this.owns(t.cp.alloc, t.cp.page)) byAlloc.set(t.cp.alloc, [...(byAlloc.get(t.cp.alloc) ?? []), t.cp.page]);
          await Promise.all(
            [...byAlloc].flatMap(([alloc, pages]) =>
              pageRuns(pages).map(([f, c]) =>
                this.acquireOwnership(alloc, f, c).catch((err: unknown) => {
                  // Pages under the partner's pointer stay the partner's: it
                  // destages them itself (by age), and we hear "clean at v".
                  if (!isPagepairError(err, 'LOCK_CONFLICT')) throw err;
                }),
              ),
            ),
          );
        }
        this.kickDestage();
        // Many pages left: look again once per tick, not after every single
        // destage (that made a large flush quadratic).
        if (left.length > FLUSH_RECHECK_PAGES) await this.sleep(1);
        else await this.waitForProgress();
      }
    } finally {
      this.flushDemand--;
    }
    // No sync of our own here: a page's storeVersion moves only after a sync
    // that followed its write (destage, write-through; at the partner before
    // it sends "clean at v"), so every target is durable already.
  }

  // -------------------------------------------------------------------------
  // Allocations (SPACE_REQUEST, ALLOCATE, RELEASE)

  /** Controller 1 places extents and writes the table while mirrored; so no two allocations overlap. */
  /** Alone we own everything; mirrored, a new allocation starts owned by controller 1. */
  private defaultOwner(): number {
    return !this.cfg.mirroring || this.role === Role.ALONE ? this.selfId : 1;
  }

  /** Who places extents and writes the table: alone, ourselves; joining, the side whose state wins; mirrored, controller 1. */
  private isCoordinator(): boolean {
    if (!this.cfg.mirroring || this.role === Role.ALONE) return true;
    if (this.join !== null) return this.join.authoritative === true;
    return this.selfId === 1 && this.role === Role.MIRRORED;
  }

  private async clientAllocate(msg: CAllocate): Promise<AllocationRecord> {
    this.requireWritable();
    this.refuseDuringResync('allocate');
    const policy = this.cfg.policies.get(msg.policy === '' ? 'default' : msg.policy);
    if (policy === undefined) {
      throw new PagepairError('POLICY_UNKNOWN', `no policy named "${msg.policy}" (known: ${[...this.cfg.policies.keys()].join(', ')})`, 'policy');
    }
    checkName(msg.name);
    if (this.names.has(msg.name)) throw new PagepairError('DUPLICATE', `an allocation named "${msg.name}" exists`, 'name');
    if (!Number.isSafeInteger(msg.sizeBytes) || msg.sizeBytes <= 0) {
      throw new PagepairError('BAD_FIELD', `sizeBytes must be a positive integer, got ${msg.sizeBytes}`, 'sizeBytes');
    }
    const pageCount = Math.ceil(msg.sizeBytes / policy.pageSizeBytes);
    if (pageCount > 0xffff_ffff) throw new PagepairError('TOO_LARGE', `${msg.sizeBytes} bytes is more than 2^32 pages`, 'sizeBytes');
    const bytes = extentBytes(policy.pageSizeBytes, pageCount);
    const base = { guid: this.env.newGuid(), name: msg.name, policy: policy.name, pageSizeBytes: policy.pageSizeBytes, pageCount, createdEpoch: this.epoch };
    this.names.add(msg.name); // held while we ask, so a second request for the name fails fast
    let installed = false;
    try {
      let record: AllocationRecord;
      if (!this.cfg.mirroring || this.role === Role.ALONE) {
        record = { ...base, dataOffset: this.placeExtent(bytes) };
      } else if (this.isCoordinator()) {
        const local = this.reserve(this.placeExtent(bytes), bytes);
        try {
          const space = await this.request({ kind: 'SPACE_REQUEST', policy: policy.name, pageSizeBytes: policy.pageSizeBytes, pageCount, reserve: true, dataOffset: local.dataOffset });
          invariant(space.kind === 'SPACE_REQUEST_REPLY', 'space reply');
          record = { ...base, dataOffset: local.dataOffset };
          // Zeroed before the partner can learn of it (and a client write there).
          await this.env.store.clearExtent(record.dataOffset, bytes);
          await this.request({ kind: 'ALLOCATE', ...record, reservationId: space.reservationId });
        } finally {
          this.reservations.delete(local.id);
        }
      } else {
        const space = await this.request({ kind: 'SPACE_REQUEST', policy: policy.name, pageSizeBytes: policy.pageSizeBytes, pageCount, reserve: true, dataOffset: -1 });
        invariant(space.kind === 'SPACE_REQUEST_REPLY', 'space reply');
        record = { ...base, dataOffset: space.dataOffset };
        // The coordinator zeroes the extent before it answers.
        await this.request({ kind: 'ALLOCATE', ...record, reservationId: space.reservationId }, zeroingAllowanceMs(bytes));
      }
      if (!this.cfg.mirroring || this.role === Role.ALONE) await this.env.store.clearExtent(record.dataOffset, bytes);
      // Its extent is zeroed: every page is at version 0, known without reading.
      this.installAllocation(record, this.defaultOwner(), true);
      installed = true;
      if (this.isCoordinator()) await this.persistTable();
      this.env.log.info({ guid: record.guid, name: record.name, policy: record.policy, pageCount, pageSizeBytes: record.pageSizeBytes }, 'allocation created');
      return record;
    } finally {
      if (!installed) this.names.delete(msg.name);
    }
  }

  /** Extents in use: allocations, reservations, and released ones a store write may still reach. */
  private usedExtents(): { dataOffset: number; bytes: number }[] {
    const used = [...this.allocs.values(), ...this.draining].map((a) => ({ dataOffset: a.record.dataOffset, bytes: extentBytes(a.record.pageSizeBytes, a.record.pageCount) }));
    for (const r of this.reservations.values()) used.push({ dataOffset: r.dataOffset, bytes: r.bytes });
    return used;
  }

  private placeExtent(bytes: number): number {
    const used = this.usedExtents();
    const at = findExtent(used, bytes, this.env.store.superblock.geometry.dataBytes);
    if (at < 0) throw new PagepairError('NO_SPACE', `no free extent of ${bytes} bytes in the store`);
    return at;
  }

  private reserve(dataOffset: number, bytes: number): Reservation {
    const r: Reservation = { id: this.nextReservationId++, dataOffset, bytes, expiresMs: this.env.nowMs() + RESERVATION_TTL_MS + zeroingAllowanceMs(bytes) };
    if (this.nextReservationId >= SYNC_RESERVATION) this.nextReservationId = 1;
    this.reservations.set(r.id, r);
    return r;
  }

  private onSpaceRequest(req: SpaceRequest): void {
    const policy = this.cfg.policies.get(req.policy);
    if (policy === undefined) throw new PagepairError('POLICY_UNKNOWN', `no policy named "${req.policy}" here`, 'policy');
    const bytes = extentBytes(req.pageSizeBytes, req.pageCount);
    const free = {
      cacheBytesFree: Math.max(0, this.cfg.cacheBytesMax - this.cache.bytesDirty),
      storeBytesFree: this.storeBytesFree(),
    };
    if (!req.reserve) {
      this.replyPeer(req, { kind: 'SPACE_REQUEST_REPLY', reservationId: 0, dataOffset: -1, ...free });
      return;
    }
    this.requireWritable();
    let at = req.dataOffset;
    if (this.isCoordinator()) {
      if (at !== -1) throw new PagepairError('BAD_FIELD', 'the coordinator places extents; dataOffset must be -1', 'dataOffset');
      at = this.placeExtent(bytes);
    } else {
      if (at < 0) throw new PagepairError('BAD_FIELD', 'dataOffset must be given by the coordinator', 'dataOffset');
      for (const u of this.usedExtents()) {
        if (u.dataOffset < at + bytes && at < u.dataOffset + u.bytes) {
          throw new PagepairError('NO_SPACE', `extent at ${at} overlaps one in use here`, 'dataOffset');
        }
      }
    }
    const r = this.reserve(at, bytes);
    this.replyPeer(req, { kind: 'SPACE_REQUEST_REPLY', reservationId: r.id, dataOffset: at, ...free });
  }

  private storeBytesFree(): number {
    let used = 0;
    for (const a of this.allocs.values()) used += extentBytes(a.record.pageSizeBytes, a.record.pageCount);
    return Math.max(0, this.env.store.superblock.geometry.dataBytes - used);
  }

  private async onAllocate(req: Allocate): Promise<void> {
    const record: AllocationRecord = {
      guid: req.guid,
      name: req.name,
      policy: req.policy,
      pageSizeBytes: req.pageSizeBytes,
      pageCount: req.pageCount,
      dataOffset: req.dataOffset,
      createdEpoch: req.createdEpoch,
    };
    if (req.reservationId === SYNC_RESERVATION) {
      // A join replays the authoritative table.
      this.join?.seenGuids.add(req.guid);
      const have = this.allocs.get(req.guid);
      if (have === undefined) {
        if (this.names.has(req.name)) this.dropByName(req.name);
        this.installAllocation(record, this.partnerId);
        this.env.log.info({ guid: req.guid, name: req.name }, 'allocation received in join');
        // The coordinator may have died before writing it to the table; the
        // pair serves it from now on, so it must survive a restart of both.
        if (this.isCoordinator()) await this.persistTable();
      }
      this.replyPeer(req, { kind: 'ALLOCATE_REPLY' });
      return;
    }
    this.requireWritable();
    const r = this.reservations.get(req.reservationId);
    if (r === undefined || r.dataOffset !== req.dataOffset) {
      throw new PagepairError('BAD_FIELD', `no reservation ${req.reservationId} at offset ${req.dataOffset}`, 'reservationId');
    }
    if (this.allocs.has(req.guid)) throw new PagepairError('DUPLICATE', `allocation ${req.guid} exists`, 'guid');
    if (this.names.has(req.name)) throw new PagepairError('DUPLICATE', `an allocation named "${req.name}" exists`, 'name');
    if (!this.cfg.policies.has(req.policy)) throw new PagepairError('POLICY_UNKNOWN', `no policy named "${req.policy}" here`, 'policy');
    try {
      if (this.isCoordinator()) await this.env.store.clearExtent(record.dataOffset, extentBytes(record.pageSizeBytes, record.pageCount));
    } finally {
      // Held while the extent is zeroed, so that no other allocation is placed over it meanwhile.
      this.reservations.delete(r.id);
    }
    if (this.allocs.has(req.guid) || this.names.has(req.name)) throw new PagepairError('DUPLICATE', `allocation ${req.guid} or its name exists`, 'name');
    this.installAllocation(record, this.defaultOwner(), true);
    if (this.isCoordinator()) await this.persistTable();
    this.env.log.info({ guid: record.guid, name: record.name, by: this.partnerId }, 'allocation created by partner');
    this.replyPeer(req, { kind: 'ALLOCATE_REPLY' });
  }

  /** `owner`: who owns its pages at first; both sides must pick the same. */
  /** `fresh`: a new, zeroed extent, so every page's version (0) is known. */
  private installAllocation(record: AllocationRecord, owner: number = this.defaultOwner(), fresh = false): AllocState {
    const alloc = newAllocState(record, owner);
    if (fresh) alloc.knownVersions = new Float64Array(record.pageCount);
    this.allocs.set(record.guid, alloc);
    this.names.add(record.name);
    this.tableDigestText = null;
    return alloc;
  }

  private async clientRelease(msg: CRelease): Promise<void> {
    this.requireWritable();
    this.refuseDuringResync('release');
    const alloc = this.lookup(msg.guid);
    // Our own store writes to the extent land first; the partner's before it
    // answers. Only then may the extent go to another allocation.
    await this.dropAllocation(alloc);
    try {
      if (this.role === Role.MIRRORED) await this.request({ kind: 'RELEASE', guid: msg.guid });
    } finally {
      this.draining.delete(alloc);
    }
    if (this.isCoordinator()) await this.persistTable();
    this.env.log.info({ guid: msg.guid, name: alloc.record.name }, 'allocation released');
  }

  private async onRelease(req: Release): Promise<void> {
    const alloc = this.allocs.get(req.guid);
    if (alloc !== undefined) {
      await this.dropAllocation(alloc);
      this.draining.delete(alloc);
      if (this.isCoordinator()) await this.persistTable();
      this.env.log.info({ guid: req.guid, by: this.partnerId }, 'allocation released by partner');
    }
    this.replyPeer(req, { kind: 'RELEASE_REPLY' });
  }

  /** The table is being sent to a rejoining partner: changing it now would lose the change on that side. */
  private refuseDuringResync(what: string): void {
    if (this.join !== null) throw new PagepairError('BUSY', `cannot ${what} while the partner is resyncing; try again shortly`);
  }

  private dropByName(name: string): void {
    for (const a of this.allocs.values()) if (a.record.name === name) void this.dropAllocation(a).then(() => this.draining.delete(a));
  }

  /** Forget an allocation; resolves once no destage of it can still land in the store. */
  private async dropAllocation(alloc: AllocState): Promise<void> {
    if (!alloc.released) {
      alloc.released = true;
      this.draining.add(alloc);
      this.allocs.delete(alloc.record.guid);
      this.names.delete(alloc.record.name);
      this.tableDigestText = null;
      for (const p of [...alloc.pointers]) this.dropPointer(p);
      this.cache.dropAlloc(alloc);
      for (const cp of alloc.pages.values()) cp.waiters?.forEach((w) => w());
      this.wakeProgress();
    }
    while (alloc.destagesInFlight > 0) await new Promise<void>((resolve) => this.releaseWaiters.push(resolve));
  }

  private wakeReleases(): void {
    const w = this.releaseWaiters;
    this.releaseWaiters = [];
    for (const f of w) f();
  }

  private persistTable(): Promise<void> {
    const run = this.tableChain.then(async () => {
      await this.ensureLease();
      await this.env.store.writeTable([...this.allocs.values()].map((a) => a.record));
    });
    this.tableChain = run.catch(() => undefined);
    return run.then(() => undefined);
  }

  // -------------------------------------------------------------------------
  // Pointers (ALLOCATE_READ, ALLOCATE_WRITE, RELEASE_POINTER)

  private async clientOpenPointer(connId: number, msg: COpenPointer): Promise<number> {
    const alloc = this.lookup(msg.guid);
    this.checkPageRange(alloc, msg.firstPage, msg.pageCount);
    const bytes = msg.pageCount * alloc.record.pageSizeBytes;
    if (bytes > this.cfg.limits.requestBytesMax) {
      throw new PagepairError('TOO_LARGE', `a pointer of ${bytes} bytes is over requestBytesMax ${this.cfg.limits.requestBytesMax}`, 'pageCount');
    }
    const write = msg.mode === PointerMode.WRITE;
    if (write) this.requireWritable();
    else this.requireReadable();
    const id = this.newPointerId();
    const pointer: PointerState = {
      id,
      mode: msg.mode,
      alloc,
      firstPage: msg.firstPage,
      pageCount: msg.pageCount,
      holderId: this.selfId,
      connId,
      lastUsedMs: this.env.nowMs(),
      shadows: new Map(),
      pinned: [],
      mirrored: this.role === Role.MIRRORED,
    };
    const conflictFor = (): PointerState | undefined => {
      const c = overlappingPointer(alloc, msg.firstPage, msg.pageCount, pointer);
      return c !== undefined && (write || c.mode === PointerMode.WRITE) ? c : undefined;
    };
    const checkConflict = (): void => {
      const c = conflictFor();
      if (c !== undefined) throw new PagepairError('LOCK_CONFLICT', `pages overlap pointer ${c.id}`);
    };
    checkConflict();
    if (write) {
      // Owned at the moment the pointer is registered: a TAKE of the
      // partner's may be granted between taking the pages and coming back
      // here, and a pointer on pages we do not own would write them.
      for (let round = 0; ; round++) {
        if (round >= OWNERSHIP_ROUNDS_MAX) throw new PagepairError('BUSY', `write pointer on ${alloc.record.guid} kept losing its pages to the partner`);
        if (this.cfg.mirroring) await this.acquireOwnership(alloc, msg.firstPage, msg.pageCount);
        if (alloc.released) throw this.goneError(alloc);
        checkConflict();
        if (this.ownsRange(alloc, msg.firstPage, msg.pageCount)) break;
      }
      this.registerPointer(pointer);
      try {
        if (pointer.mirrored) await this.request({ kind: 'ALLOCATE_WRITE', guid: alloc.record.guid, firstPage: msg.firstPage, pageCount: msg.pageCount, pointerId: id });
      } catch (err) {
        this.dropPointer(pointer);
        throw err;
      }
    } else {
      this.registerPointer(pointer);
      try {
        await this.pinRange(pointer);
        if (pointer.mirrored) {
          await this.request({ kind: 'ALLOCATE_READ', guid: alloc.record.guid, firstPage: msg.firstPage, pageCount: msg.pageCount, pointerId: id });
        }
      } catch (err) {
        this.dropPointer(pointer);
        throw err;
      }
    }
    return id;
  }

  private async pinRange(pointer: PointerState): Promise<void> {
    for (let p = pointer.firstPage; p < pointer.firstPage + pointer.pageCount; p++) {
      const cp = await this.readablePage(pointer.alloc, p);
      if (!this.pointers.has(pointer.id)) return; // dropped meanwhile
      this.cache.pin(cp);
      pointer.pinned.push(cp);
    }
  }

  private newPointerId(): number {
    // The controller id in the top byte keeps the two sides' ids apart.
    const id = ((this.selfId << 24) | (this.nextPointerSeq & 0xff_ffff)) >>> 0;
    this.nextPointerSeq = (this.nextPointerSeq % 0xff_ffff) + 1;
    return id;
  }

  private registerPointer(p: PointerState): void {
    this.pointers.set(p.id, p);
    p.alloc.pointers.add(p);
  }

  private dropPointer(p: PointerState): void {
    if (this.pointers.get(p.id) !== p) return;
    this.pointers.delete(p.id);
    p.alloc.pointers.delete(p);
    for (const cp of p.pinned) this.cache.unpin(cp);
    p.pinned.length = 0;
    p.shadows.clear();
    if (this.deferredGrants.length > 0) this.recheckDeferredGrants();
  }

  private myPointer(connId: number, pointerId: number, alloc?: AllocState): PointerState {
    const p = this.pointers.get(pointerId);
    if (p === undefined || p.holderId !== this.selfId || p.connId !== connId || (alloc !== undefined && p.alloc !== alloc)) {
      throw new PagepairError('POINTER_UNKNOWN', `no pointer ${pointerId} open on this connection${alloc ? ` for ${alloc.record.guid}` : ''}`, 'pointerId');
    }
    return p;
  }

  private async pointerWrite(connId: number, msg: CWrite, alloc: AllocState, first: number, count: number): Promise<void> {
    const p = this.myPointer(connId, msg.pointerId, alloc);
    if (p.mode !== PointerMode.WRITE) throw new PagepairError('LOCK_CONFLICT', `pointer ${p.id} is a read pointer`, 'pointerId');
    if (first < p.firstPage || first + count > p.firstPage + p.pageCount) {
      throw new PagepairError('OUT_OF_RANGE', `write reaches outside pointer ${p.id}`, 'offset');
    }
    p.lastUsedMs = this.env.nowMs();
    await this.stageRange(alloc, first, count);
    if (this.pointers.get(p.id) !== p) throw new PagepairError('POINTER_UNKNOWN', `pointer ${p.id} was given back`, 'pointerId');
    const ps = alloc.record.pageSizeBytes;
    // Only a pointer the partner knows of has shadow pages there.
    const op = p.mirrored ? this.mirrorOp() : null;
    for (let page = first; page < first + count; page++) {
      const cp = alloc.pages.get(page);
      invariant(cp !== undefined, 'page present after staging');
      const prev = p.shadows.get(page);
      const data = overlay(prev?.data ?? cp.data, ps, page * ps, msg.offset, msg.data);
      const shadow = { version: prev?.version ?? cp.version + 1, crc: crc32c(data), data };
      p.shadows.set(page, shadow);
      if (op !== null) {
        this.outbox.pushPage(
          { guid: alloc.record.guid, page, version: shadow.version, crc: shadow.crc, epoch: this.epoch, pageFlags: PageFlag.POINTER_PENDING, pointerId: p.id, clientId: 0, clientSeq: 0, ownerGen: alloc.ownerGen[page]!, data },
          op.op,
        );
      }
    }
    if (op !== null) await op.done;
  }

  private async clientClosePointer(connId: number, msg: CClosePointer): Promise<number> {
    return this.closePointer(this.myPointer(connId, msg.pointerId), msg.commit);
  }

  private async closePointer(p: PointerState, commit: boolean): Promise<number> {
    if (p.mode === PointerMode.READ) {
      this.dropPointer(p);
      if (p.mirrored && this.linkUp) await this.request({ kind: 'RELEASE_POINTER', pointerId: p.id, commit: false }).catch(() => undefined);
      return 0;
    }
    if (!commit || p.shadows.size === 0) {
      this.dropPointer(p);
      if (p.mirrored && this.linkUp) await this.request({ kind: 'RELEASE_POINTER', pointerId: p.id, commit: false });
      return 0;
    }
    this.requireWritable();
    const alloc = p.alloc;
    if (alloc.released) throw this.goneError(alloc);
    const now = this.env.nowMs();
    const shadows = [...p.shadows];
    const touched: CachePage[] = [];
    this.dropPointer(p);
    // The partner holds the shadows of a pointer it knows and installs them
    // on RELEASE_POINTER; alone, the pages go through to the store; a pointer
    // opened alone and committed mirrored sends its pages as plain writes.
    const through = this.writesThrough();
    const plain = !p.mirrored && this.role === Role.MIRRORED ? this.mirrorOp() : null;
    const toStore: StoreWrite[] = [];
    for (const [page, s] of shadows) {
      const cp = this.cache.writeDirty(alloc, page, s.version, s.crc, this.epoch, s.data, now);
      if (!p.mirrored && plain === null && !through) continue;
      cp.mirrorPending++;
      touched.push(cp);
      if (through) toStore.push({ cp, version: s.version, data: s.data, crc: s.crc });
      if (plain !== null) {
        this.outbox.pushPage({ guid: alloc.record.guid, page, version: s.version, crc: s.crc, epoch: this.epoch, pageFlags: 0, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: alloc.ownerGen[page]!, data: s.data }, plain.op);
      }
    }
    try {
      if (p.mirrored) await this.request({ kind: 'RELEASE_POINTER', pointerId: p.id, commit: true });
      else if (plain !== null) await plain.done;
      if (through) await this.writeThrough(toStore);
    } finally {
      for (const cp of touched) this.mirrorSettled(cp);
      if (this.deferredGrants.length > 0) this.recheckDeferredGrants();
    }
    return shadows.length;
  }

  private async onAllocateRead(req: AllocateRead): Promise<void> {
    const alloc = this.lookup(req.guid);
    this.checkPageRange(alloc, req.firstPage, req.pageCount);
    const pointer = this.partnerPointer(req.pointerId, PointerMode.READ, alloc, req.firstPage, req.pageCount);
    this.registerPointer(pointer);
    await this.pinRange(pointer);
    this.replyPeer(req, { kind: 'ALLOCATE_READ_REPLY', pointerId: req.pointerId });
  }

  private onAllocateWrite(req: AllocateWrite): void {
    const alloc = this.lookup(req.guid);
    this.checkPageRange(alloc, req.firstPage, req.pageCount);
    if (req.pageCount * alloc.record.pageSizeBytes > this.cfg.cacheBytesMax / 2) {
      throw new PagepairError('CACHE_FULL', `a write pointer of ${req.pageCount} pages would not fit half the cache`, 'pageCount');
    }
    this.registerPointer(this.partnerPointer(req.pointerId, PointerMode.WRITE, alloc, req.firstPage, req.pageCount));
    this.replyPeer(req, { kind: 'ALLOCATE_WRITE_REPLY', pointerId: req.pointerId });
  }

  private partnerPointer(id: number, mode: PointerState['mode'], alloc: AllocState, firstPage: number, pageCount: number): PointerState {
    if (id >>> 24 !== this.partnerId) throw new PagepairError('BAD_FIELD', `pointer id ${id} was not made by the partner`, 'pointerId');
    if (this.pointers.has(id)) throw new PagepairError('DUPLICATE', `pointer ${id} is already open`, 'pointerId');
    return { id, mode, alloc, firstPage, pageCount, holderId: this.partnerId, connId: 0, lastUsedMs: this.env.nowMs(), shadows: new Map(), pinned: [], mirrored: true };
  }

  private onReleasePointer(req: ReleasePointer): void {
    const p = this.pointers.get(req.pointerId);
    if (p === undefined || p.holderId !== this.partnerId) {
      // Already gone (a lease ran out, or the link flapped): nothing to keep.
      this.replyPeer(req, { kind: 'RELEASE_POINTER_REPLY', pages: 0 });
      return;
    }
    let pages = 0;
    if (p.mode === PointerMode.WRITE && req.commit && !p.alloc.released) {
      const now = this.env.nowMs();
      for (const [page, s] of p.shadows) {
        this.supersedeStaging(p.alloc, page);
        this.cache.writeDirty(p.alloc, page, s.version, s.crc, this.epoch, s.data, now);
        pages++;
      }
      this.counters.pagesMirroredIn += pages;
    }
    this.dropPointer(p);
    this.replyPeer(req, { kind: 'RELEASE_POINTER_REPLY', pages });
  }

  // -------------------------------------------------------------------------
  // Health (SENSE_REQUEST) and the join after the link comes up

  private announcedRole(): RoleCode {
    return this.fresh ? Role.STARTING : this.role;
  }

  private joinFlags(): number {
    const join = this.join;
    if (join === null) return 0;
    return JoinFlag.JOINING | (this.fresh ? JoinFlag.FRESH : 0) | (join.pushDone ? JoinFlag.PUSH_DONE : 0);
  }

  private sendSense(reason: SenseRequest['reason']): void {
    this.request({ kind: 'SENSE_REQUEST', role: this.announcedRole(), reason, joinFlags: this.joinFlags() }).then(
      (r) => {
        if (r.kind === 'SENSE_REQUEST_REPLY') this.partnerSense = r;
      },
      () => undefined,
    );
  }

  private onSense(req: SenseRequest): void {
    const join = this.join;
    // Only a partner that is joining us too speaks for the join; the two
    // sides may begin it at different moments (one of them arbitrating).
    if (join !== null && req.reason === SenseReason.HEARTBEAT && (req.joinFlags & JoinFlag.JOINING) !== 0) {
      if (join.authoritative === undefined) {
        const partnerFresh = (req.joinFlags & JoinFlag.FRESH) !== 0;
        join.authoritative = this.fresh === partnerFresh ? this.selfId === 1 : !this.fresh;
        // The side whose state wins owns every page until ownership moves again.
        // Both sides make this decision on the same frame of a new link, so
        // they agree on the owner and start counting ownership moves anew.
        for (const alloc of this.allocs.values()) {
          alloc.owner.fill(join.authoritative ? this.selfId : this.partnerId);
          alloc.ownerGen.fill(0);
        }
        this.env.log.info({ authoritative: join.authoritative, partnerFresh }, 'join: pushing state to partner');
        this.pushJoinState(join);
      }
      if ((req.joinFlags & JoinFlag.PUSH_DONE) !== 0 && join.authoritative !== undefined && !join.partnerDone) {
        join.partnerDone = true;
        if (!join.authoritative) {
          const drops: Promise<void>[] = [];
          for (const a of [...this.allocs.values()]) {
            if (!join.seenGuids.has(a.record.guid)) {
              this.env.log.warn({ guid: a.record.guid, name: a.record.name }, 'join: allocation unknown to the partner; dropped');
              drops.push(this.dropAllocation(a).then(() => void this.draining.delete(a)));
            }
          }
          if (drops.length > 0 && this.isCoordinator()) {
            Promise.all(drops)
              .then(() => this.persistTable())
              .catch((err: unknown) => this.env.log.error({ err: String(err) }, 'join: could not write the allocation table'));
          }
        }
        this.maybeFinishJoin();
      }
    }
    if (req.reason !== SenseReason.HEARTBEAT && !this.partnerLeaving) {
      this.partnerLeaving = true;
      this.env.log.warn({ partner: this.partnerId, reason: req.reason === SenseReason.CRASHING ? 'crashing' : 'shutting down' }, 'partner says it is leaving');
    }
    const c = this.cache.counters();
    this.replyPeer(req, {
      kind: 'SENSE_REQUEST_REPLY',
      role: this.announcedRole(),
      senseCode: this.senseCode,
      allocations: this.allocs.size,
      cachedPages: c.cachedPages,
      dirtyPages: c.dirtyPages,
      destageQueue: this.destagesInFlight,
      tableDigest: this.tableDigest(),
      dirtyDigest: this.cache.dirtyDigest.toString(),
    });
  }

  private pushJoinState(join: JoinState): void {
    this.runJoinPush(join).then(
      () => {
        if (this.join !== join) return;
        join.pushDone = true;
        this.counters.joins++;
        this.env.log.info({ pagesSent: join.pagesSent }, 'join: our state is with the partner');
        this.sendSense(SenseReason.HEARTBEAT);
        this.maybeFinishJoin();
      },
      (err: unknown) => this.env.log.warn({ err: String(err) }, 'join push failed; waiting for the link to come back'),
    );
  }

  private async runJoinPush(join: JoinState): Promise<void> {
    const sends: Promise<unknown>[] = [];
    if (join.authoritative) {
      for (const a of this.allocs.values()) sends.push(this.request({ kind: 'ALLOCATE', ...a.record, reservationId: SYNC_RESERVATION }));
    }
    await Promise.all(sends);
    const byAlloc = new Map<AllocState, number[]>();
    for (const cp of this.cache.dirty) byAlloc.set(cp.alloc, [...(byAlloc.get(cp.alloc) ?? []), cp.page]);
    // One range at a time, paced, so clients keep their speed during a resync.
    for (const [alloc, pages] of byAlloc) {
      for (const [first, count] of pageRuns(pages.sort((x, y) => x - y), this.cfg.limits.headersPerMessageMax)) {
        if (this.join !== join) return;
        await this.pushDiffering(join, alloc, first, count);
      }
    }
    // Which client writes we applied: the partner may be asked to retry one.
    await this.pushTags(join);
    // A store write we started before the link dropped must land before the
    // partner, owning every page now, can write and destage a newer version;
    // the partner finishes its join only after our push is done. (When our
    // state wins we keep every page, and the partner writes none.)
    if (!join.authoritative) await this.destagesDrained();
  }

  private async destagesDrained(): Promise<void> {
    while (this.destagesInFlight > 0) await this.waitForProgress();
  }

  /** Compare headers with the partner and send the dirty pages it lacks. */
  private async pushDiffering(join: JoinState, alloc: AllocState, first: number, count: number): Promise<void> {
    const r = await this.request({ kind: 'READ_HEADER', guid: alloc.record.guid, firstPage: first, pageCount: count });
    if (r.kind !== 'READ_HEADER_REPLY' || alloc.released) return;
    const behind: PageHeaderInfo[] = [];
    for (const h of r.headers) {
      const cp = alloc.pages.get(h.page);
      if (cp === undefined || !cp.dirty) continue;
      if (h.version > cp.version) continue; // the partner pushes it to us
      if (h.version === cp.version) {
        if (h.crc === cp.crc) {
          if (h.state === PageState.CLEAN) this.cache.markClean(cp, cp.version, cp.crc);
          continue;
        }
        // One version, two contents: the copy of the side whose state wins
        // goes to the other (see resyncOverrides).
        if (!join.authoritative) continue;
      }
      behind.push(h);
    }
    join.pagesToSend += behind.length;
    for (let i = 0; i < behind.length; i += RESYNC_CHUNK_PAGES) {
      const op = this.mirrorOp();
      let sent = 0;
      for (const h of behind.slice(i, i + RESYNC_CHUNK_PAGES)) {
        const cp = alloc.pages.get(h.page);
        if (cp === undefined || !cp.dirty) continue;
        this.outbox.pushPage(
          { guid: alloc.record.guid, page: h.page, version: cp.version, crc: cp.crc, epoch: cp.epoch, pageFlags: PageFlag.RESYNC, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: 0, data: this.cache.lend(cp) },
          op.op,
        );
        sent++;
      }
      if (sent > 0) await op.done;
      join.pagesSent += Math.min(RESYNC_CHUNK_PAGES, behind.length - i);
      if (join.pagesSent % (RESYNC_CHUNK_PAGES * 64) === 0) this.env.log.info({ pagesSent: join.pagesSent, pagesToSend: join.pagesToSend }, 'resync progress');
      await this.sleep((RESYNC_CHUNK_PAGES * 1000) / this.cfg.resyncPagesPerSecMax);
    }
  }

  private async pushTags(join: JoinState): Promise<void> {
    const op = this.mirrorOp();
    let sent = 0;
    for (const [key, t] of this.taggedWrites.entries()) {
      if (t.state === 'running' || this.join !== join) continue;
      const [clientId, clientSeq] = key.split(':').map(Number) as [number, number];
      const guid = t.state === 'held' ? t.guid : ZERO_GUID;
      const page = t.state === 'held' ? t.first : 0;
      this.outbox.pushPage({ guid, page, version: 0, crc: 0, epoch: this.epoch, pageFlags: PageFlag.TAG_ONLY, pointerId: 0, clientId, clientSeq, ownerGen: 0, data: EMPTY }, op.op);
      sent++;
    }
    if (sent > 0) await op.done;
  }

  private onReadHeader(req: ReadHeader): void {
    const alloc = this.lookup(req.guid);
    this.checkPageRange(alloc, req.firstPage, req.pageCount);
    if (req.pageCount > this.cfg.limits.headersPerMessageMax) {
      throw new PagepairError('LIMIT_EXCEEDED', `READ_HEADER of ${req.pageCount} pages is over headersPerMessageMax`, 'pageCount');
    }
    const headers: PageHeaderInfo[] = [];
    for (let p = req.firstPage; p < req.firstPage + req.pageCount; p++) headers.push(pageHeader(alloc.pages.get(p), p));
    this.replyPeer(req, { kind: 'READ_HEADER_REPLY', guid: req.guid, headers });
  }

  private maybeFinishJoin(): void {
    const join = this.join;
    if (join === null || !join.pushDone || !join.partnerDone) return;
    this.join = null;
    this.fresh = false;
    // The store's epoch record says again that both serve (activeId 0).
    const rec = this.arbiter?.epochRecord;
    if (join.authoritative && this.arbiter !== null && (rec === null || rec === undefined || rec.activeId !== 0 || rec.epoch !== this.epoch)) {
      this.arbiter.recordMirrored(this.epoch).catch((err: unknown) => this.env.log.error({ err: String(err) }, 'could not write the epoch record'));
    }
    this.setRole(Role.MIRRORED, 'mirrored with partner', {
      allocations: this.allocs.size,
      dirtyPages: this.cache.dirty.size,
      tableDigest: this.tableDigest(),
      dirtyDigest: this.cache.dirtyDigest.toString(),
    });
    this.wakeProgress();
  }

  // -------------------------------------------------------------------------
  // Verify (C_VERIFY): do both copies of each page read the same?

  /**
   * Compares our copy of each page in the range with the partner's and, where
   * only one side caches a page, with the store's. Our headers are taken as
   * the partner's READ_HEADER reply is handled: every frame the partner sent
   * before its answer has been handled by then, and every frame we sent after
   * asking reaches it after it answered. So a page that changed here between
   * asking and the answer, or has a mirrored write of ours unanswered, is the
   * only kind whose two headers may straddle a write: it is listed as busy.
   */
  async verifyPages(guid: string, firstPage: number, pageCount: number): Promise<{ pagesChecked: number; pages: VerifiedPage[] }> {
    const alloc = this.lookup(guid);
    this.checkPageRange(alloc, firstPage, pageCount);
    if (pageCount > this.cfg.limits.headersPerMessageMax) {
      throw new PagepairError('LIMIT_EXCEEDED', `verify of ${pageCount} pages is over headersPerMessageMax (${this.cfg.limits.headersPerMessageMax})`, 'pageCount');
    }
    if (this.role !== Role.MIRRORED || !this.linkUp) this.refuse('verifies');
    const headers = (): PageHeaderInfo[] => {
      const out: PageHeaderInfo[] = [];
      for (let p = firstPage; p < firstPage + pageCount; p++) out.push(pageHeader(alloc.pages.get(p), p));
      return out;
    };
    const asked = headers();
    let ours: PageHeaderInfo[] = [];
    const busy = new Uint8Array(pageCount);
    const reply = await this.request({ kind: 'READ_HEADER', guid, firstPage, pageCount }, 0, () => {
      ours = headers();
      for (let i = 0; i < pageCount; i++) {
        if (!sameCopy(asked[i]!, ours[i]!) || (alloc.pages.get(firstPage + i)?.mirrorPending ?? 0) > 0) busy[i] = 1;
      }
    });
    if (reply.kind !== 'READ_HEADER_REPLY' || reply.headers.length !== pageCount) {
      throw new PagepairError('BAD_FIELD', `partner answered READ_HEADER of ${pageCount} pages with ${reply.kind === 'READ_HEADER_REPLY' ? reply.headers.length : reply.kind}`);
    }
    const theirs = reply.headers;
    const needStore: number[] = [];
    for (let i = 0; i < pageCount; i++) if (busy[i] === 0 && storeDecides(ours[i]!, theirs[i]!)) needStore.push(i);
    const stores = await this.storeHeaders(alloc, firstPage, needStore, ours, busy);
    if (alloc.released) throw this.goneError(alloc);
    const pages = listDifferences({ firstPage, selfId: this.selfId, ours, theirs, busy, stores, owner: alloc.owner });
    return { pagesChecked: pageCount, pages };
  }

  /**
   * The store's header of each page `firstPage + i` for i in `which` (null
   * where it cannot be read), a bounded number of reads at a time. A page of
   * ours that changed meanwhile had a write come through: it becomes busy.
   */
  private async storeHeaders(alloc: AllocState, firstPage: number, which: number[], ours: PageHeaderInfo[], busy: Uint8Array): Promise<Map<number, StoreHeader | null>> {
    const stores = new Map<number, StoreHeader | null>();
    for (let at = 0; at < which.length; at += VERIFY_STORE_READS_MAX) {
      await Promise.all(
        which.slice(at, at + VERIFY_STORE_READS_MAX).map(async (i) => {
          const p = firstPage + i;
          try {
            const sp = await this.env.store.readPage(this.location(alloc), p);
            stores.set(i, { version: sp.header.version, crc: sp.header.crc });
          } catch (err) {
            this.env.log.warn({ guid: alloc.record.guid, page: p, err: String(err) }, 'verify could not read the store\'s copy');
            stores.set(i, null);
          }
          if (!sameCopy(ours[i]!, pageHeader(alloc.pages.get(p), p))) busy[i] = 1;
        }),
      );
    }
    return stores;
  }

  /** What the last verify run found (C_VERIFY_REPORT), for status. */
  recordVerify(r: Pick<CVerifyReport, 'pagesChecked' | 'mismatches' | 'repaired' | 'unsettled'>): void {
    this.lastVerify = { atMs: this.env.nowMs(), pagesChecked: r.pagesChecked, mismatches: r.mismatches, repaired: r.repaired, unsettled: r.unsettled };
    this.env.log.info({ ...this.lastVerify }, 'verify run reported');
  }

  /**
   * Test hook: our copy of one page becomes `data`, at the version it has,
   * and the partner is not told, so the two copies differ on purpose. A page
   * not cached is staged first. For tests only.
   */
  async testCorruptPage(guid: string, page: number, data: Buffer): Promise<{ version: number; crc: number }> {
    const alloc = this.lookup(guid);
    this.checkPageRange(alloc, page, 1);
    if (data.length !== alloc.record.pageSizeBytes) {
      throw new PagepairError('BAD_FIELD', `test corruption must be one whole page (${alloc.record.pageSizeBytes} bytes), got ${data.length}`, 'data');
    }
    const cp = await this.readablePage(alloc, page);
    const crc = crc32c(data);
    this.cache.replaceContents(cp, Buffer.from(data), crc);
    this.env.log.warn({ guid, page, version: cp.version, crc: hex(crc) }, 'test hook: this copy of the page was overwritten, unmirrored');
    return { version: cp.version, crc };
  }

  /**
   * Verify's repair (C_REWRITE): our copy of the page, as a read through us
   * returns it, written again as a new version by the ordinary write path,
   * so the partner (or, alone, the store) gets it. The bytes are taken as the
   * write is applied, not before: a client write that lands meanwhile is
   * what both sides keep.
   */
  private async clientRewrite(msg: CRewrite): Promise<{ version: number; crc: number }> {
    this.requireWritable();
    const alloc = this.lookup(msg.guid);
    this.checkPageRange(alloc, msg.page, 1);
    const conflict = overlappingPointer(alloc, msg.page, 1);
    if (conflict !== undefined) throw new PagepairError('LOCK_CONFLICT', `page ${msg.page} of ${alloc.record.guid} is held by pointer ${conflict.id}`);
    await this.writePages(alloc, msg.page, 1, (_page, current) => Buffer.from(current), null, { applied: false, suppressed: false });
    const cp = alloc.pages.get(msg.page);
    return cp === undefined ? { version: knownVersion(alloc, msg.page), crc: 0 } : { version: cp.version, crc: cp.crc };
  }

  private clientTestCorrupt(msg: CTestCorrupt): Promise<{ version: number; crc: number }> {
    if (this.cfg.testHooks !== true) {
      return Promise.reject(new PagepairError('NOT_ALLOWED', 'C_TEST_CORRUPT is a test hook: this controller\'s configuration does not set testHooks: true'));
    }
    return this.testCorruptPage(msg.guid, msg.page, msg.data);
  }

  // -------------------------------------------------------------------------
  // Status

  tableDigest(): string {
    if (this.tableDigestText === null) {
      const d = new SetDigest();
      for (const a of this.allocs.values()) d.add(tableMember(recordFields(a.record)));
      this.tableDigestText = d.toString();
    }
    return this.tableDigestText;
  }

  get currentRole(): RoleCode {
    return this.role;
  }

  get currentEpoch(): number {
    return this.epoch;
  }

  status(): CoreStatus {
    const c = this.cache.counters();
    const now = this.env.nowMs();
    return {
      controller: this.selfId === 1 ? 'A' : 'B',
      role: roleName(this.role),
      epoch: this.epoch,
      mirroring: this.cfg.mirroring,
      partner: this.cfg.mirroring
        ? {
            link: this.linkUp ? 'up' : 'down',
            role: this.partnerSense === null ? null : roleName(this.partnerSense.role),
            lastHeardMsAgo: this.linkUp ? Math.round(now - this.partnerLastHeardMs) : null,
            digests: this.partnerSense === null || !this.linkUp ? null : { table: this.partnerSense.tableDigest, dirty: this.partnerSense.dirtyDigest },
          }
        : null,
      allocations: this.allocs.size,
      cachedPages: c.cachedPages,
      cachedBytes: c.cachedBytes,
      cacheBytesMax: this.cfg.cacheBytesMax,
      dirtyPages: c.dirtyPages,
      dirtyBytes: c.dirtyBytes,
      destageInFlight: this.destagesInFlight,
      destageQueue: this.destageQueueLength(),
      openPointers: this.pointers.size,
      resync:
        this.join === null
          ? null
          : {
              authoritative: this.join.authoritative ?? null,
              pagesToSend: this.join.pagesToSend,
              pagesSent: this.join.pagesSent,
              done: this.join.pushDone,
              partnerDone: this.join.partnerDone,
            },
      lease: this.arbiter === null ? null : { valid: this.arbiter.leaseValid(), epochRecord: this.arbiter.epochRecord },
      digests: { table: this.tableDigest(), dirty: this.cache.dirtyDigest.toString() },
      counters: { ...this.counters, evictions: c.evictions },
      senseCode: this.senseCode,
      lastVerify:
        this.lastVerify === null
          ? null
          : {
              msAgo: Math.round(now - this.lastVerify.atMs),
              pagesChecked: this.lastVerify.pagesChecked,
              mismatches: this.lastVerify.mismatches,
              repaired: this.lastVerify.repaired,
              unsettled: this.lastVerify.unsettled,
            },
    };
  }

  /** Dirty pages we own and would destage now or when they age. */
  private destageQueueLength(): number {
    let n = 0;
    for (const cp of this.cache.dirty) if (this.owns(cp.alloc, cp.page) && cp.destagingVersion === 0) n++;
    return n;
  }

  // -------------------------------------------------------------------------
  // Plumbing

  private setRole(role: RoleCode, why: string, extra: object = {}): void {
    if (role === this.role) return;
    const from = roleName(this.role);
    this.role = role;
    this.env.log.info({ from, to: roleName(role), epoch: this.epoch, ...extra }, why);
  }

  private requireWritable(): void {
    if (this.role === Role.MIRRORED || this.role === Role.SINGLE || this.role === Role.ALONE) return;
    this.refuse('writes');
  }

  /** Reads are served only where every acknowledged write is known: mirrored, alone, or single. */
  private requireReadable(): void {
    if (this.role === Role.MIRRORED || this.role === Role.SINGLE || this.role === Role.ALONE) return;
    this.refuse('reads');
  }

  private refuse(what: string): never {
    if (this.role === Role.STOPPING) throw new PagepairError('SHUTTING_DOWN', 'controller is shutting down');
    if (this.role === Role.FENCED) throw new PagepairError('FENCED', `controller ${this.selfId === 1 ? 'A' : 'B'} is fenced: its partner serves in epoch ${this.epoch} or later`);
    if (this.role === Role.ARBITRATING) throw new PagepairError('NOT_MIRRORED', `controller lost its partner and is arbitrating; ${what} wait`);
    if (this.fresh) throw new PagepairError('NOT_ACTIVE', `controller has not joined its partner yet; ${what} wait`);
    throw new PagepairError('NOT_MIRRORED', `controller is ${roleName(this.role)}; ${what} wait for the partner`);
  }

  /** Writes are acknowledged once in the store, not in the partner's cache. */
  private writesThrough(): boolean {
    return this.role === Role.ALONE;
  }

  /**
   * The error for a request whose allocation went away while it waited: a
   * release is final (UNKNOWN_GUID), but a reset of this controller is not:
   * the allocation lives on at the partner, so the client retries (NOT_ACTIVE).
   */
  private goneError(alloc: AllocState): PagepairError {
    if (alloc.lostInReset) return new PagepairError('NOT_ACTIVE', `controller ${this.selfId === 1 ? 'A' : 'B'} was reset while the request waited; retry`);
    return unknownGuid(alloc.record.guid);
  }

  private lookup(guid: string): AllocState {
    const a = this.allocs.get(guid);
    if (a === undefined) throw unknownGuid(guid);
    return a;
  }

  private checkRange(alloc: AllocState, offset: number, length: number, lengthField: string): void {
    if (!Number.isSafeInteger(offset) || offset < 0) throw new PagepairError('BAD_FIELD', `offset must be a non-negative integer, got ${offset}`, 'offset');
    if (!Number.isSafeInteger(length) || length <= 0) throw new PagepairError('BAD_FIELD', `${lengthField} must be at least 1 byte`, lengthField);
    if (length > this.cfg.limits.requestBytesMax) {
      throw new PagepairError('TOO_LARGE', `${length} bytes is over requestBytesMax ${this.cfg.limits.requestBytesMax}`, lengthField);
    }
    if (offset + length > alloc.sizeBytes) {
      throw new PagepairError('OUT_OF_RANGE', `bytes ${offset}..${offset + length - 1} are past the end of ${alloc.record.guid} (${alloc.sizeBytes} bytes)`, 'offset');
    }
  }

  private checkPageRange(alloc: AllocState, first: number, count: number): void {
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || first < 0 || count < 1 || first + count > alloc.record.pageCount) {
      throw new PagepairError('OUT_OF_RANGE', `pages ${first}+${count} are outside ${alloc.record.guid} (${alloc.record.pageCount} pages)`, 'firstPage');
    }
  }

  private location(alloc: AllocState): PageLocation {
    return { guid: alloc.record.guid, dataOffset: alloc.record.dataOffset, pageSizeBytes: alloc.record.pageSizeBytes };
  }

  private waitForProgress(): Promise<void> {
    return new Promise((resolve) => this.progressWaiters.push(resolve));
  }

  private wakeProgress(): void {
    if (this.progressWaiters.length === 0) return;
    const w = this.progressWaiters;
    this.progressWaiters = [];
    for (const f of w) f();
  }

  private serveRoomWaiters(): void {
    if (this.roomWaiters.length === 0) return;
    const now = this.env.nowMs();
    const keep: RoomWaiter[] = [];
    for (const w of this.roomWaiters) {
      if (this.cache.makeRoom(w.bytes)) w.resolve();
      else if (now > w.deadlineMs) w.reject(new PagepairError('CACHE_FULL', `no room for ${w.bytes} bytes after ${this.cfg.cacheFullWaitMs} ms`));
      else keep.push(w);
    }
    this.roomWaiters = keep;
  }

  private newRequestId(): number {
    const requestId = this.nextRequestId;
    this.nextRequestId = this.nextRequestId >= 0xffff_ffff ? 1 : this.nextRequestId + 1;
    return requestId;
  }

  /** The header fields are set on the body itself: a spread of bodies of many shapes is slow. */
  private frame<M extends Message>(body: Omit<M, 'requestId' | 'epoch' | 'sender' | 'flags'>): M {
    const msg = body as M;
    msg.requestId = this.newRequestId();
    msg.epoch = this.epoch;
    msg.sender = this.selfId;
    msg.flags = 0;
    return msg;
  }

  /** `extraTimeoutMs`: how much longer than peerRequestTimeoutMs the partner may take to answer. */
  /** `onReply`: run synchronously when the (non-error) reply's frame is handled. */
  private request(
    body: DistributiveOmit<PeerRequest, 'requestId' | 'epoch' | 'sender' | 'flags'>,
    extraTimeoutMs = 0,
    onReply?: (reply: PeerReply) => void,
  ): Promise<PeerReply> {
    if (!this.linkUp) return Promise.reject(new PagepairError('NOT_MIRRORED', 'partner link is down'));
    const msg = this.frame<PeerRequest>(body);
    return new Promise<PeerReply>((resolve, reject) => {
      this.pendingPeer.set(msg.requestId, { kind: msg.kind, sentMs: this.env.nowMs(), extraTimeoutMs, onReply, resolve, reject });
      this.outbox.push(msg);
    });
  }

  private onPeerReply(msg: Message): void {
    const pending = this.pendingPeer.get(msg.requestId);
    if (pending === undefined) {
      this.env.log.debug({ kind: msg.kind, requestId: msg.requestId }, 'reply to no pending request');
      return;
    }
    this.pendingPeer.delete(msg.requestId);
    if (msg.kind === 'ERROR') pending.reject(PagepairError.fromWire(msg.code, `partner: ${msg.message}`));
    else {
      pending.onReply?.(msg as PeerReply);
      pending.resolve(msg as PeerReply);
    }
  }

  private replyPeer(req: PeerRequest, body: DistributiveOmit<PeerReply, 'requestId' | 'epoch' | 'sender' | 'flags'>): void {
    if (!this.linkUp) return;
    const msg = body as PeerReply;
    msg.requestId = req.requestId;
    msg.epoch = this.epoch;
    msg.sender = this.selfId;
    msg.flags = 0;
    this.outbox.push(msg);
  }

  private sendPeerError(req: PeerRequest, err: PagepairError): void {
    this.env.log.warn({ kind: req.kind, code: err.code, err: err.message }, 'refused partner request');
    if (!this.linkUp) return;
    this.outbox.push(this.errorFrame(req.requestId, MsgType[req.kind], err));
  }

  private reply(req: ClientRequest, body: DistributiveOmit<ClientReply, 'requestId' | 'epoch' | 'sender' | 'flags'>): ClientReply {
    const msg = body as ClientReply;
    msg.requestId = req.requestId;
    msg.epoch = this.epoch;
    msg.sender = this.selfId;
    msg.flags = 0;
    return msg;
  }

  private errorFrame(requestId: number, requestType: number, err: PagepairError): Message {
    return { kind: 'ERROR', requestId, epoch: this.epoch, sender: this.selfId, flags: 0, code: ErrorCode[err.code], requestType, message: err.message };
  }

  private asTyped(err: unknown, kind: string): PagepairError {
    if (isPagepairError(err)) return err;
    this.env.log.error({ kind, err: err instanceof Error ? err.stack : String(err) }, 'internal error serving a request');
    return new PagepairError('INTERNAL', `internal error serving ${kind}`);
  }
}

export interface CoreStatus {
  controller: 'A' | 'B';
  role: string;
  epoch: number;
  mirroring: boolean;
  /** digests: the partner's, as its answer to our last heartbeat gave them. */
  partner: { link: 'up' | 'down'; role: string | null; lastHeardMsAgo: number | null; digests: { table: string; dirty: string } | null } | null;
  allocations: number;
  cachedPages: number;
  cachedBytes: number;
  cacheBytesMax: number;
  dirtyPages: number;
  dirtyBytes: number;
  destageInFlight: number;
  destageQueue: number;
  openPointers: number;
  /** While the partner joins: how far sending it our state has come. */
  resync: { authoritative: boolean | null; pagesToSend: number; pagesSent: number; done: boolean; partnerDone: boolean } | null;
  /** The store lease and the epoch record as last read. */
  lease: { valid: boolean; epochRecord: EpochRecord | null } | null;
  digests: { table: string; dirty: string };
  counters: CoreCounters & { evictions: number };
  senseCode: number;
  /** The last `pagepair verify` run reported to us: how long ago, pages compared, pages whose copies differed, of those repaired, and pages left busy. null: never. */
  lastVerify: { msAgo: number; pagesChecked: number; mismatches: number; repaired: number; unsettled: number } | null;
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** A client write applied at once, waiting for the partner's answer to its pages. */
class MirroredWrite implements MirrorOp {
  remaining = 0;
  settled = false;
  readonly touched: CachePage[] = [];
  tag: TaggedWrite | null = null;

  constructor(
    private readonly core: ControllerCore,
    readonly connId: number,
    readonly msg: CWrite,
    readonly alloc: AllocState,
    readonly first: number,
    readonly count: number,
    readonly key: string | null,
  ) {}

  resolve(): void {
    this.core.mirroredWriteSettled(this, null);
  }

  reject(err: Error): void {
    // Failures are handled a turn later, as the long way does: the link may be
    // going down right now, and that must finish first.
    void Promise.resolve().then(() => this.core.mirroredWriteSettled(this, err));
  }
}

const EMPTY = Buffer.alloc(0);
const ZERO_GUID = '00000000-0000-0000-0000-000000000000';

const ROLE_NAMES: Record<number, string> = {
  [Role.STARTING]: 'starting',
  [Role.MIRRORED]: 'mirrored',
  [Role.ALONE]: 'alone',
  [Role.FENCED]: 'fenced',
  [Role.JOINING]: 'joining',
  [Role.STOPPING]: 'stopping',
  [Role.SINGLE]: 'single',
  [Role.ARBITRATING]: 'arbitrating',
};

export function roleName(role: number): string {
  return ROLE_NAMES[role] ?? `role-${role}`;
}

function unknownGuid(guid: string): PagepairError {
  return new PagepairError('UNKNOWN_GUID', `no allocation ${guid}`, 'guid');
}

function checkName(name: string): void {
  if (name.length === 0 || Buffer.byteLength(name) > 64) {
    throw new PagepairError('BAD_FIELD', 'name must be 1 to 64 bytes of UTF-8', 'name');
  }
}

/** The version of an uncached page, when known without reading it; NaN when not. */
function knownVersion(alloc: AllocState, page: number): number {
  return alloc.knownVersions?.[page] ?? Number.NaN;
}

/** The new contents of page `pageStart`: the old ones with the written bytes laid over. */
function overlay(old: Buffer, pageSize: number, pageStart: number, offset: number, data: Buffer): Buffer {
  const page = Buffer.allocUnsafe(pageSize);
  const from = Math.max(offset, pageStart);
  const to = Math.min(offset + data.length, pageStart + pageSize);
  if (from > pageStart || to < pageStart + pageSize) old.copy(page, 0, 0, pageSize);
  data.copy(page, from - pageStart, from - offset, to - offset);
  return page;
}

/** The written bytes laid over page `pageStart` in its own buffer, which is returned. */
function overlayInPlace(page: Buffer, pageStart: number, offset: number, data: Buffer): Buffer {
  const from = Math.max(offset, pageStart);
  const to = Math.min(offset + data.length, pageStart + page.length);
  data.copy(page, from - pageStart, from - offset, to - offset);
  return page;
}

function copyInto(target: Buffer, source: Buffer): Buffer {
  source.copy(target);
  return target;
}

/** Maximal runs of pages in [first, first+count) where pred holds, as [first, count]. */
function runs(first: number, count: number, pred: (p: number) => boolean): [number, number][] {
  const out: [number, number][] = [];
  let start = -1;
  for (let p = first; p < first + count; p++) {
    if (pred(p)) {
      if (start < 0) start = p;
    } else if (start >= 0) {
      out.push([start, p - start]);
      start = -1;
    }
  }
  if (start >= 0) out.push([start, first + count - start]);
  return out;
}

/** Runs of consecutive page numbers from a sorted list, each at most `maxRun` long. */
function pageRuns(sorted: number[], maxRun = Number.MAX_SAFE_INTEGER): [number, number][] {
  const out: [number, number][] = [];
  for (const p of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && last[0] + last[1] === p && last[1] < maxRun) last[1]++;
    else out.push([p, 1]);
  }
  return out;
}

function hex(crc: number): string {
  return (crc >>> 0).toString(16).padStart(8, '0');
}
