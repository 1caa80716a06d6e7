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

import { LockOp, MsgType, Role, SenseReason, type ClientRequest, type Message, type PeerRequest, type RoleCode } from '../protocol/messages.js';
import { PagepairError } from '../protocol/errors.js';
import { PageCache } from './page-cache.js';
import { PeerOutbox } from './peer-outbox.js';
import type { CoreConfig, CoreEnv } from './env.js';
import type { Core } from './context.js';
import { Membership } from './membership.js';
import { Join } from './join.js';
import { PeerRequests } from './peer-requests.js';
import { Ownership } from './ownership.js';
import { WritePath } from './write-path.js';
import { MirrorIn } from './mirror-in.js';
import { ReadPath } from './read-path.js';
import { RetryTags } from './retry-tags.js';
import { Destager } from './destager.js';
import { Allocator } from './allocator.js';
import { Pointers } from './pointers.js';
import { Verifier } from './verifier.js';
import { Waits } from './waits.js';
import { coreStatus, newCounters, roleName, type CoreCounters, type CoreStatus } from './status.js';
import { runs } from './shared.js';

export { roleName, type CoreCounters, type CoreStatus };

export class ControllerCore implements Core {
  readonly selfId: 1 | 2;
  readonly partnerId: 1 | 2;
  readonly cache: PageCache;
  readonly outbox: PeerOutbox;
  readonly counters: CoreCounters = newCounters();

  readonly membership: Membership;
  readonly joining: Join;
  readonly requests: PeerRequests;
  readonly ownership: Ownership;
  readonly writes: WritePath;
  readonly mirrorIn: MirrorIn;
  readonly reads: ReadPath;
  readonly tags: RetryTags;
  readonly destager: Destager;
  readonly allocator: Allocator;
  readonly pointers: Pointers;
  readonly verifier: Verifier;
  readonly waits: Waits;

  constructor(
    readonly cfg: CoreConfig,
    readonly env: CoreEnv,
  ) {
    this.selfId = cfg.selfId;
    this.partnerId = cfg.partnerId;
    this.cache = new PageCache(cfg.cacheBytesMax);
    this.outbox = new PeerOutbox(cfg.limits, () => env.requestFlush());
    this.waits = new Waits(this);
    this.membership = new Membership(this);
    this.joining = new Join(this);
    this.requests = new PeerRequests(this);
    this.ownership = new Ownership(this);
    this.writes = new WritePath(this);
    this.mirrorIn = new MirrorIn(this);
    this.reads = new ReadPath(this);
    this.tags = new RetryTags(this);
    this.destager = new Destager(this);
    this.allocator = new Allocator(this);
    this.pointers = new Pointers(this);
    this.verifier = new Verifier(this);
  }

  // -------------------------------------------------------------------------
  // Lifecycle

  /** Load the allocation table and epoch from the store. Call once, first. */
  async start(): Promise<void> {
    const mailbox = await this.env.store.readMailbox();
    if (mailbox.epoch !== null) this.membership.epoch = mailbox.epoch.epoch;
    const table = await this.env.store.readTable();
    for (const record of table.records) this.allocator.installAllocation(record);
    this.env.log.info(
      { role: roleName(this.membership.role), epoch: this.membership.epoch, allocations: this.allocator.allocs.size, tableSeq: table.seq },
      'memory manager started',
    );
  }

  /** Destage what we own, hand our pages to a live partner, say goodbye. */
  async shutdown(timeoutMs = 10_000): Promise<void> {
    if (this.membership.stopping) return;
    this.membership.stopping = true;
    // Only a controller that serves may write what it holds to the store.
    this.membership.stoppingMayDestage = this.membership.role === Role.MIRRORED || this.membership.role === Role.ALONE || this.membership.role === Role.SINGLE;
    this.membership.setRole(Role.STOPPING, 'shutting down');
    const deadline = this.env.nowMs() + timeoutMs;
    const wasMirrored = this.membership.linkUp && this.joining.current === null && this.membership.stoppingMayDestage;
    this.destager.flushDemand++;
    try {
      while (this.membership.stoppingMayDestage && this.env.nowMs() < deadline) {
        const left = [...this.cache.dirty].filter((cp) => this.ownership.owns(cp.alloc, cp.page) && !cp.alloc.released);
        if (left.length === 0 && this.destager.destagesInFlight === 0) break;
        this.destager.kickDestage();
        await this.waits.waitForProgress();
      }
    } finally {
      this.destager.flushDemand--;
    }
    const left = [...this.cache.dirty].filter((cp) => this.ownership.owns(cp.alloc, cp.page)).length;
    if (left > 0) this.env.log.warn({ dirtyPages: left }, 'shutdown: pages still dirty');
    if (this.cfg.mirroring && this.membership.linkUp && wasMirrored) {
      const gives: Promise<unknown>[] = [];
      for (const alloc of this.allocator.allocs.values()) {
        for (const [first, count] of runs(0, alloc.record.pageCount, (p) => alloc.owner[p] === this.selfId)) {
          const ownerGen = this.ownership.moveOwnership(alloc, first, count, this.partnerId);
          gives.push(this.requests.request({ kind: 'LOCK_REQUEST', guid: alloc.record.guid, firstPage: first, pageCount: count, op: LockOp.GIVE, ownerGen }).catch(() => undefined));
        }
      }
      await Promise.all(gives);
      this.joining.sendSense(SenseReason.SHUTTING_DOWN);
    }
    await this.allocator.tableChain.catch(() => undefined);
    await this.env.store.sync();
    this.env.log.info({ dirtyPagesLeft: left }, 'memory manager stopped');
  }

  // -------------------------------------------------------------------------
  // Events from the runtime

  tick(): void {
    const now = this.env.nowMs();
    if (this.waits.timers.length > 0) {
      const due = this.waits.timers.filter((t) => t.atMs <= now);
      if (due.length > 0) {
        this.waits.timers = this.waits.timers.filter((t) => t.atMs > now);
        for (const t of due) t.resolve();
      }
    }
    if (this.membership.linkUp && now - this.membership.lastHeartbeatMs >= this.cfg.heartbeatIntervalMs) {
      this.membership.lastHeartbeatMs = now;
      this.joining.sendSense(SenseReason.HEARTBEAT);
    }
    if (this.membership.linkUp && now - this.membership.partnerLastHeardMs > this.cfg.partnerTimeoutMs) {
      this.env.log.warn({ silentMs: Math.round(now - this.membership.partnerLastHeardMs) }, 'partner silent; dropping the link');
      this.env.closePeer(`partner silent for ${Math.round(now - this.membership.partnerLastHeardMs)} ms`);
      this.membership.peerDown('partner silent');
    }
    this.membership.mailboxBeat(now);
    if (this.membership.fresh && !this.membership.linkUp && !this.membership.arbitrating && !this.membership.stopping && this.membership.role === Role.STARTING && now - this.membership.loneSinceMs > this.cfg.partnerTimeoutMs) {
      // No partner in sight since we started: find out through the store whether it is gone.
      this.membership.loneSinceMs = now;
      this.membership.startArbitration('no partner since start');
    }
    let timedOut = false;
    for (const [id, p] of this.requests.pendingPeer) {
      const timeoutMs = this.cfg.peerRequestTimeoutMs + p.extraTimeoutMs;
      if (now - p.sentMs > timeoutMs) {
        this.requests.pendingPeer.delete(id);
        p.reject(new PagepairError('TIMEOUT', `partner did not answer ${p.kind} within ${timeoutMs} ms`));
        timedOut = true;
      }
    }
    if (timedOut && this.membership.linkUp) {
      // The partner may still apply what it did not answer; only a fresh join
      // puts the two sides back in step.
      this.env.closePeer('a partner request timed out');
      this.membership.peerDown('a partner request timed out');
    }
    for (const [id, r] of this.allocator.reservations) if (r.expiresMs < now) this.allocator.reservations.delete(id);
    for (const p of [...this.pointers.open.values()]) {
      if (p.holderId === this.selfId && now - p.lastUsedMs > this.cfg.pointerLeaseMs) {
        this.env.log.warn({ pointerId: p.id, guid: p.alloc.record.guid }, 'pointer lease ran out; giving it back');
        void this.pointers.closePointer(p, false).catch(() => undefined);
      }
    }
    if (this.writes.roomWaiters.length > 0) this.writes.serveRoomWaiters();
    this.destager.kickDestage();
    // Flushes and shutdown re-check on every tick too, so none waits on an event that never comes.
    if (this.destager.flushDemand > 0) this.waits.wakeProgress();
  }

  peerUp(info: { partnerPid?: number } = {}): void {
    this.membership.peerUp(info);
  }

  peerDown(reason: string): void {
    this.membership.peerDown(reason);
  }

  /** The last word to the partner before this process dies of an error. */
  announceCrash(): void {
    this.membership.announceCrash();
  }

  /** Send every queued frame to the partner. The runtime calls it after requestFlush. */
  flushOutbox(): void {
    this.requests.flushOutbox();
  }

  onClientGone(connId: number): void {
    for (const p of [...this.pointers.open.values()]) {
      if (p.holderId === this.selfId && p.connId === connId) void this.pointers.closePointer(p, false).catch(() => undefined);
    }
  }

  onClientRequest(connId: number, msg: ClientRequest): void {
    // The hot paths: a write whose pages are all in hand and a read of cached
    // pages are served without a promise; anything else goes the long way.
    if (msg.kind === 'C_WRITE') {
      if (this.writes.writeNow(connId, msg)) return;
    } else if (msg.kind === 'C_READ') {
      const reply = this.reads.readNow(msg);
      if (reply !== null) {
        this.env.replyClient(connId, reply);
        return;
      }
    }
    const done = (reply: Message): void => this.env.replyClient(connId, reply);
    const fail = (err: unknown): void => {
      const e = this.requests.asTyped(err, msg.kind);
      done(this.requests.errorFrame(msg.requestId, MsgType[msg.kind], e));
    };
    try {
      switch (msg.kind) {
        case 'C_WRITE':
          this.writes.clientWrite(connId, msg).then(() => done(this.writes.writeReply(msg)), fail);
          return;
        case 'C_READ':
          this.reads.clientRead(connId, msg).then((data) => done(this.reads.readReply(msg, data)), fail);
          return;
        case 'C_ALLOCATE':
          this.allocator.clientAllocate(msg).then(
            (r) => done(this.requests.reply(msg, { kind: 'C_ALLOCATE_REPLY', guid: r.guid, pageSizeBytes: r.pageSizeBytes, pageCount: r.pageCount })),
            fail,
          );
          return;
        case 'C_RELEASE':
          this.allocator.clientRelease(msg).then(() => done(this.requests.reply(msg, { kind: 'C_RELEASE_REPLY' })), fail);
          return;
        case 'C_FLUSH':
          this.destager.clientFlush(msg).then((pages) => done(this.requests.reply(msg, { kind: 'C_FLUSH_REPLY', pages })), fail);
          return;
        case 'C_STATUS':
          done(this.requests.reply(msg, { kind: 'C_STATUS_REPLY', json: JSON.stringify(this.status()) }));
          return;
        case 'C_LIST':
          done(
            this.requests.reply(msg, {
              kind: 'C_LIST_REPLY',
              allocations: [...this.allocator.allocs.values()].slice(0, this.cfg.limits.listEntriesMax).map((a) => ({
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
          this.pointers.clientOpenPointer(connId, msg).then((pointerId) => done(this.requests.reply(msg, { kind: 'C_OPEN_POINTER_REPLY', pointerId })), fail);
          return;
        case 'C_CLOSE_POINTER':
          this.pointers.clientClosePointer(connId, msg).then((pages) => done(this.requests.reply(msg, { kind: 'C_CLOSE_POINTER_REPLY', pages })), fail);
          return;
        case 'C_VERIFY':
          this.verifier.verifyPages(msg.guid, msg.firstPage, msg.pageCount).then((r) => done(this.requests.reply(msg, { kind: 'C_VERIFY_REPLY', ...r })), fail);
          return;
        case 'C_VERIFY_REPORT':
          this.verifier.recordVerify(msg);
          done(this.requests.reply(msg, { kind: 'C_VERIFY_REPORT_REPLY' }));
          return;
        case 'C_TEST_CORRUPT':
          this.verifier.clientTestCorrupt(msg).then((r) => done(this.requests.reply(msg, { kind: 'C_TEST_CORRUPT_REPLY', ...r })), fail);
          return;
        case 'C_REWRITE':
          this.writes.clientRewrite(msg).then((r) => done(this.requests.reply(msg, { kind: 'C_REWRITE_REPLY', ...r })), fail);
          return;
      }
    } catch (err) {
      fail(err);
    }
  }

  onPeerMessage(msg: Message): void {
    this.membership.partnerLastHeardMs = this.env.nowMs();
    if (msg.kind === 'ERROR' || msg.kind.endsWith('_REPLY')) {
      this.requests.onPeerReply(msg);
      return;
    }
    const req = msg as PeerRequest;
    if (MsgType[req.kind] === undefined || MsgType[req.kind] > MsgType.RELEASE_POINTER) {
      this.env.log.warn({ kind: msg.kind }, 'partner sent a frame that is not a paging message');
      return;
    }
    if (req.epoch > this.membership.epoch) {
      if (this.membership.fresh) {
        // Rejoining a partner that served alone: its epoch is ours from now on.
        this.env.log.info({ from: this.membership.epoch, to: req.epoch }, 'adopting the partner\'s epoch');
        this.membership.epoch = req.epoch;
      } else if (this.membership.arbitrating) {
        // Our arbitration is deciding right now (the newer epoch may be the
        // one it just wrote); its outcome settles who serves, not this frame.
      } else {
        this.membership.enterFenced(`partner speaks in epoch ${req.epoch}, ours is ${this.membership.epoch}`);
        this.env.closePeer('partner is in a newer epoch');
        this.membership.peerDown('partner is in a newer epoch');
        return;
      }
    }
    // A SENSE from an older epoch is still news (a restarted partner says hello with it).
    if (req.epoch < this.membership.epoch && req.kind !== 'SENSE_REQUEST') {
      this.requests.sendPeerError(req, new PagepairError('STALE_EPOCH', `${req.kind} from epoch ${req.epoch}, current epoch is ${this.membership.epoch}`));
      return;
    }
    const fail = (err: unknown): void => this.requests.sendPeerError(req, this.requests.asTyped(err, req.kind));
    try {
      switch (req.kind) {
        case 'WRITE_PAGE':
          this.mirrorIn.onWritePage(req);
          return;
        case 'SENSE_REQUEST':
          this.joining.onSense(req);
          return;
        case 'LOCK_REQUEST':
          this.ownership.onLockRequest(req);
          return;
        case 'SPACE_REQUEST':
          this.allocator.onSpaceRequest(req);
          return;
        case 'ALLOCATE':
          this.allocator.onAllocate(req).catch(fail);
          return;
        case 'RELEASE':
          this.allocator.onRelease(req).catch(fail);
          return;
        case 'READ_HEADER':
          this.joining.onReadHeader(req);
          return;
        case 'ALLOCATE_READ':
          this.pointers.onAllocateRead(req).catch(fail);
          return;
        case 'ALLOCATE_WRITE':
          this.pointers.onAllocateWrite(req);
          return;
        case 'RELEASE_POINTER':
          this.pointers.onReleasePointer(req);
          return;
      }
    } catch (err) {
      fail(err);
    }
  }

  // -------------------------------------------------------------------------
  // What the runtime and tests read

  get currentRole(): RoleCode {
    return this.membership.role;
  }

  get currentEpoch(): number {
    return this.membership.epoch;
  }


  status(): CoreStatus {
    return coreStatus(this);
  }

  /** Both copies of each page in the range compared (see Verifier). */
  verifyPages(guid: string, firstPage: number, pageCount: number): ReturnType<Verifier['verifyPages']> {
    return this.verifier.verifyPages(guid, firstPage, pageCount);
  }

  /** Test hook: our copy of one page differs from the partner's on purpose (see Verifier). */
  testCorruptPage(guid: string, page: number, data: Buffer): ReturnType<Verifier['testCorruptPage']> {
    return this.verifier.testCorruptPage(guid, page, data);
  }
}
