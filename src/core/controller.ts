// The memory manager of one controller, as a pure state machine.
//
// Events come in as method calls (a client request, a partner frame, the link
// going up or down, a store operation's outcome, a tick); effects go out
// through CoreEnv (frames to send, replies, store operations). Nothing here
// touches sockets, files, timers or the wall clock, and nothing awaits: the
// core's long operations are tasks resumed by its events (tasks.ts), so two
// cores can run paired in one process over a simulated network and store,
// with every frame and store operation ordered, delayed or failed by seed.
//
// This file routes each event to the room whose job it is (context.ts lists
// them); each event is handled in one turn of the task scheduler.
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
import { CoreRooms } from './context.js';
import { wait, settle, type Future, type Task } from './tasks.js';
import type { IoOutcome } from './io.js';
import type { VerifyResult } from './verifier.js';
import { coreStatus, roleName, type CoreCounters, type CoreStatus } from './status.js';
import { runs } from './shared.js';

export { roleName, type CoreCounters, type CoreStatus };
export type { IoOp, IoOutcome, IoResults } from './io.js';

export class ControllerCore extends CoreRooms {
  // -------------------------------------------------------------------------
  // Lifecycle

  /** Load the allocation table and epoch from the store. Call once, first. */
  start(): Promise<void> {
    return this.outcome(this.startTask());
  }

  private *startTask(): Task<void> {
    const mailbox = yield* wait(this.io.run({ kind: 'readMailbox' }));
    if (mailbox.epoch !== null) this.membership.epoch = mailbox.epoch.epoch;
    const table = yield* wait(this.io.run({ kind: 'readTable' }));
    for (const record of table.records) this.allocator.installAllocation(record);
    this.env.log.info(
      { role: roleName(this.membership.role), epoch: this.membership.epoch, allocations: this.allocator.allocs.size, tableSeq: table.seq },
      'memory manager started',
    );
  }

  /** Destage what we own, hand our pages to a live partner, say goodbye. */
  shutdown(timeoutMs = 10_000): Promise<void> {
    if (this.membership.stopping) return Promise.resolve();
    return this.outcome(this.shutdownTask(timeoutMs));
  }

  private *shutdownTask(timeoutMs: number): Task<void> {
    const m = this.membership;
    m.stopping = true;
    // Only a controller that serves may write what it holds to the store.
    const serving = m.role === Role.MIRRORED || m.role === Role.ALONE || m.role === Role.SINGLE;
    m.enter({ role: Role.STOPPING, mayDestage: serving }, 'shutting down');
    const deadline = this.env.nowMs() + timeoutMs;
    const wasMirrored = m.linkUp && this.joining.current === null && serving;
    const left = yield* this.destager.drainOwn(() => m.mayDestageWhileStopping() && this.env.nowMs() < deadline);
    if (left > 0) this.env.log.warn({ dirtyPages: left }, 'shutdown: pages still dirty');
    if (this.cfg.mirroring && m.linkUp && wasMirrored) {
      const gives: Future<unknown>[] = [];
      for (const alloc of this.allocator.allocs.values()) {
        for (const [first, count] of runs(0, alloc.record.pageCount, (p) => alloc.owner[p] === this.selfId)) {
          const ownerGen = this.ownership.moveOwnership(alloc, first, count, this.partnerId);
          gives.push(this.requests.request({ kind: 'LOCK_REQUEST', guid: alloc.record.guid, firstPage: first, pageCount: count, op: LockOp.GIVE, ownerGen }));
        }
      }
      for (const g of gives) yield* settle(g);
      this.joining.sendSense(SenseReason.SHUTTING_DOWN);
    }
    yield* settle(this.allocator.tableWritten());
    yield* wait(this.io.run({ kind: 'sync' }));
    this.env.log.info({ dirtyPagesLeft: left }, 'memory manager stopped');
  }

  /** A task's outcome as a promise, for the runtime; the task itself runs in a turn. */
  private outcome<T>(task: Task<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => this.tasks.turn(() => this.tasks.spawn(task).onDone(resolve, reject)));
  }

  // -------------------------------------------------------------------------
  // Events from the runtime

  tick(): void {
    this.tasks.turn(() => {
      const now = this.env.nowMs();
      this.waits.fireTimers(now);
      this.membership.tick(now);
      if (this.requests.expire(now) && this.membership.linkUp) {
        // The partner may still apply what it did not answer; only a fresh join
        // puts the two sides back in step.
        this.env.closePeer('a partner request timed out');
        this.membership.peerDown('a partner request timed out');
      }
      this.allocator.expireReservations(now);
      this.pointers.expireLeases(now);
      this.writes.serveRoomWaiters();
      this.destager.kickDestage();
      // Flushes and shutdown re-check on every tick too, so none waits on an event that never comes.
      if (this.destager.flushDemand > 0) this.waits.wakeProgress();
    });
  }

  /** A store operation asked for by startIo ended. */
  onIoDone(id: number, outcome: IoOutcome): void {
    this.tasks.turn(() => this.io.done(id, outcome));
  }

  peerUp(info: { partnerPid?: number } = {}): void {
    this.tasks.turn(() => this.membership.peerUp(info));
  }

  peerDown(reason: string): void {
    this.tasks.turn(() => this.membership.peerDown(reason));
  }

  /** The last word to the partner before this process dies of an error. */
  announceCrash(): void {
    this.tasks.turn(() => this.membership.announceCrash());
  }

  /** Send every queued frame to the partner. The runtime calls it after requestFlush. */
  flushOutbox(): void {
    this.tasks.turn(() => this.requests.flushOutbox());
  }

  onClientGone(connId: number): void {
    this.tasks.turn(() => {
      this.access.clientGone(connId);
      this.pointers.clientGone(connId);
    });
  }

  onClientRequest(connId: number, msg: ClientRequest): void {
    this.tasks.turn(() => this.clientRequest(connId, msg));
  }

  onPeerMessage(msg: Message): void {
    this.tasks.turn(() => this.peerMessage(msg));
  }

  private clientRequest(connId: number, msg: ClientRequest): void {
    const fail = (err: unknown): void => this.env.replyClient(connId, this.requests.errorFrame(msg.requestId, MsgType[msg.kind], this.requests.asTyped(err, msg.kind)));
    // A keyed allocation not unlocked by this connection is refused before any path, the hot ones included.
    try {
      this.access.checkRequest(connId, msg);
    } catch (err) {
      return fail(err);
    }
    // The hot paths: a write whose pages are all in hand and a read of cached
    // pages are served at once; anything else goes the long way, as a task.
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
    const reply = this.requests.reply.bind(this.requests, msg);
    const run = <T>(task: Task<T>, answer: (value: T) => Message): void => this.tasks.spawn(task).onDone((v) => done(answer(v)), fail);
    try {
      switch (msg.kind) {
        case 'C_WRITE':
          return run(this.writes.clientWrite(connId, msg), () => this.writes.writeReply(msg));
        case 'C_READ':
          return run(this.reads.clientRead(connId, msg), (data) => this.reads.readReply(msg, data));
        case 'C_ALLOCATE':
          return run(this.allocator.clientAllocate(msg), (r) => reply({ kind: 'C_ALLOCATE_REPLY', guid: r.record.guid, pageSizeBytes: r.record.pageSizeBytes, pageCount: r.record.pageCount, key: r.key }));
        case 'C_SNAPSHOT':
          return run(this.snapshots.clientSnapshot(msg), (r) => reply({ kind: 'C_SNAPSHOT_REPLY', guid: r.record.guid, pageSizeBytes: r.record.pageSizeBytes, pageCount: r.record.pageCount, pages: r.pages }));
        case 'C_UNLOCK':
          this.access.unlock(connId, msg);
          return done(reply({ kind: 'C_UNLOCK_REPLY' }));
        case 'C_RELEASE':
          return run(this.allocator.clientRelease(msg), () => reply({ kind: 'C_RELEASE_REPLY' }));
        case 'C_FLUSH':
          return run(this.destager.clientFlush(msg), (pages) => reply({ kind: 'C_FLUSH_REPLY', pages }));
        case 'C_STATUS':
          return done(reply({ kind: 'C_STATUS_REPLY', json: JSON.stringify(this.status()) }));
        case 'C_LIST':
          return done(reply({ kind: 'C_LIST_REPLY', allocations: this.allocator.list(this.cfg.limits.listEntriesMax) }));
        case 'C_OPEN_POINTER':
          return run(this.pointers.clientOpenPointer(connId, msg), (pointerId) => reply({ kind: 'C_OPEN_POINTER_REPLY', pointerId }));
        case 'C_CLOSE_POINTER':
          return run(this.pointers.clientClosePointer(connId, msg), (pages) => reply({ kind: 'C_CLOSE_POINTER_REPLY', pages }));
        case 'C_VERIFY':
          return run(this.verifier.verifyPages(msg.guid, msg.firstPage, msg.pageCount), (r) => reply({ kind: 'C_VERIFY_REPLY', ...r }));
        case 'C_VERIFY_REPORT':
          this.verifier.recordVerify(msg);
          return done(reply({ kind: 'C_VERIFY_REPORT_REPLY' }));
        case 'C_TEST_CORRUPT':
          return run(this.verifier.clientTestCorrupt(msg), (r) => reply({ kind: 'C_TEST_CORRUPT_REPLY', ...r }));
        case 'C_REWRITE':
          return run(this.writes.clientRewrite(msg), (r) => reply({ kind: 'C_REWRITE_REPLY', ...r }));
      }
    } catch (err) {
      fail(err);
    }
  }

  private peerMessage(msg: Message): void {
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
    if (!this.membership.checkEpoch(req)) return;
    const fail = (err: unknown): void => this.requests.sendPeerError(req, this.requests.asTyped(err, req.kind));
    const run = (task: Task<void>): void => this.tasks.spawn(task).onDone(() => undefined, fail);
    try {
      switch (req.kind) {
        case 'WRITE_PAGE':
          return this.mirrorIn.onWritePage(req);
        case 'SENSE_REQUEST':
          return this.poolSync.onSense(req, () => this.joining.onSense(req));
        case 'LOCK_REQUEST':
          return this.ownership.onLockRequest(req);
        case 'SPACE_REQUEST':
          return this.allocator.onSpaceRequest(req);
        case 'ALLOCATE':
          return run(this.allocator.onAllocate(req));
        case 'RELEASE':
          return run(this.allocator.onRelease(req));
        case 'READ_HEADER':
          return this.joining.onReadHeader(req);
        case 'ALLOCATE_READ':
          return run(this.pointers.onAllocateRead(req));
        case 'ALLOCATE_WRITE':
          return this.pointers.onAllocateWrite(req);
        case 'RELEASE_POINTER':
          return this.pointers.onReleasePointer(req);
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
  verifyPages(guid: string, firstPage: number, pageCount: number): Promise<VerifyResult> {
    return this.outcome(this.verifier.verifyPages(guid, firstPage, pageCount));
  }

  /**
   * Resolves, with the pool's generation, once the partner's pool object is
   * known to have read labels at least as new as ours (pool-sync.ts): the
   * barrier a pool job (a rebuild or a scrub's repair while the pair serves)
   * waits on after it announced itself in the labels. At once when the store
   * is not a pool, mirroring is off or the link is down (a partner that
   * rejoins reads the labels before it serves).
   */
  poolBarrier(): Promise<number> {
    const io = this.io;
    return this.outcome((function* () {
      return yield* wait(io.run({ kind: 'poolBarrier' }));
    })());
  }

  /** Test hook: our copy of one page differs from the partner's on purpose (see Verifier). */
  testCorruptPage(guid: string, page: number, data: Buffer): Promise<{ version: number; crc: number }> {
    return this.outcome(this.verifier.testCorruptPage(guid, page, data));
  }
}
