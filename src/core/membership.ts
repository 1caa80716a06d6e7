// Membership: which role this controller plays in the pair and in which
// epoch, the link to the partner coming and going, heartbeats (on the link
// and in the store's mailbox), the store lease, and arbitration when the
// partner is lost: take over, wait for the link, or fence ourselves.

import { Role, SenseReason, type PeerRequest, type RoleCode, type SenseReply } from '../protocol/messages.js';
import { PagepairError, invariant } from '../protocol/errors.js';
import { Arbiter } from './arbiter.js';
import { roleName } from './status.js';
import type { Core } from './context.js';
import type { Future, Task } from './tasks.js';

/**
 * The role this controller plays, with what only that role needs: a fresh
 * controller waiting for its partner counts how long it has been alone; an
 * arbitration knows what it interrupted; a shutdown knows whether it may
 * still write to the store.
 */
export type RoleState =
  | { readonly role: typeof Role.STARTING; /** Since when no partner has been in sight (it arbitrates after partnerTimeoutMs). */ loneSinceMs: number }
  | { readonly role: typeof Role.ARBITRATING; /** The role the partner's loss interrupted. */ readonly previous: RoleState; readonly wasFresh: boolean }
  | { readonly role: typeof Role.STOPPING; /** Only a controller that served may write what it holds to the store. */ readonly mayDestage: boolean }
  | { readonly role: typeof Role.SINGLE | typeof Role.JOINING | typeof Role.MIRRORED | typeof Role.ALONE | typeof Role.FENCED };

/** The roles that hold nothing of their own. */
type PlainRole = typeof Role.SINGLE | typeof Role.JOINING | typeof Role.MIRRORED | typeof Role.ALONE | typeof Role.FENCED;

export class Membership {
  private state: RoleState;
  epoch = 1;
  /** True until the first join since start: our cache may lack the partner's dirty pages. */
  fresh: boolean;
  linkUp = false;
  /** Shutting down (the role may be FENCED meanwhile, but we never serve again). */
  stopping = false;
  lastHeartbeatMs = 0;
  partnerLastHeardMs = 0;
  /** The partner's answer to our last heartbeat. */
  partnerSense: SenseReply | null = null;
  senseCode = 0;
  /** Mailbox heartbeats, the store lease, and arbitration when the partner is lost. */
  readonly arbiter: Arbiter | null;
  /** An arbitration is running (it may outlive the ARBITRATING role when we are stopped meanwhile). */
  arbitrating = false;
  private mailboxBeatInFlight = false;
  private lastMailboxBeatMs = 0;
  /** The partner said it is shutting down or crashing: it is not coming back by itself. */
  partnerLeaving = false;
  /** The allocation table being read again after a reset; a join waits for it. */
  private tableReload: Future<unknown> | null = null;
  /** Grows when we are fenced or reset: store writes asked for before must not happen. */
  generation = 0;
  private leaseRenewal: Future<void> | null = null;

  constructor(private readonly c: Core) {
    const cfg = c.cfg;
    this.fresh = cfg.mirroring;
    this.state = cfg.mirroring ? { role: Role.STARTING, loneSinceMs: c.env.nowMs() } : { role: Role.SINGLE };
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
            run: (op) => c.io.run(op),
            nowMs: () => c.env.nowMs(),
            sleep: (ms) => c.waits.sleep(ms),
            log: c.env.log,
            partnerLinked: () => this.linkUp,
          },
        )
      : null;
  }

  /** Heartbeats on the link and in the mailbox; a silent partner dropped; a lone fresh start arbitrates. */
  tick(now: number): void {
    if (this.linkUp && now - this.lastHeartbeatMs >= this.c.cfg.heartbeatIntervalMs) {
      this.lastHeartbeatMs = now;
      this.c.joining.sendSense(SenseReason.HEARTBEAT);
    }
    if (this.linkUp && now - this.partnerLastHeardMs > this.c.cfg.partnerTimeoutMs) {
      this.c.env.log.warn({ silentMs: Math.round(now - this.partnerLastHeardMs) }, 'partner silent; dropping the link');
      this.c.env.closePeer(`partner silent for ${Math.round(now - this.partnerLastHeardMs)} ms`);
      this.peerDown('partner silent');
    }
    this.mailboxBeat(now);
    const s = this.state;
    if (s.role === Role.STARTING && this.fresh && !this.linkUp && !this.arbitrating && !this.stopping && now - s.loneSinceMs > this.c.cfg.partnerTimeoutMs) {
      // No partner in sight since we started: find out through the store whether it is gone.
      s.loneSinceMs = now;
      this.startArbitration('no partner since start');
    }
  }

  /**
   * A frame from the partner in another epoch. False: it must not be
   * handled (we were fenced by it, or it is stale and was refused).
   */
  checkEpoch(req: PeerRequest): boolean {
    if (req.epoch > this.epoch) {
      if (this.fresh) {
        // Rejoining a partner that served alone: its epoch is ours from now on.
        this.c.env.log.info({ from: this.epoch, to: req.epoch }, 'adopting the partner\'s epoch');
        this.epoch = req.epoch;
      } else if (this.arbitrating) {
        // Our arbitration is deciding right now (the newer epoch may be the
        // one it just wrote); its outcome settles who serves, not this frame.
      } else {
        this.enterFenced(`partner speaks in epoch ${req.epoch}, ours is ${this.epoch}`);
        this.c.env.closePeer('partner is in a newer epoch');
        this.peerDown('partner is in a newer epoch');
        return false;
      }
    }
    // A SENSE from an older epoch is still news (a restarted partner says hello with it).
    if (req.epoch < this.epoch && req.kind !== 'SENSE_REQUEST') {
      this.c.requests.sendPeerError(req, new PagepairError('STALE_EPOCH', `${req.kind} from epoch ${req.epoch}, current epoch is ${this.epoch}`));
      return false;
    }
    return true;
  }

  peerUp(info: { partnerPid?: number } = {}): void {
    invariant(this.c.cfg.mirroring, 'peer link on a single controller');
    this.linkUp = true;
    this.partnerLeaving = false;
    this.partnerLastHeardMs = this.c.env.nowMs();
    this.lastHeartbeatMs = this.c.env.nowMs();
    this.c.env.log.info({ partnerPid: info.partnerPid ?? 0, role: roleName(this.role), fresh: this.fresh }, 'partner link up');
    if (this.stopping) return;
    if (this.role === Role.FENCED && !this.arbitrating) this.resetToFresh('partner is back after we were fenced');
    // A join waits for a running arbitration to settle who serves, and for
    // the table a reset reloads.
    if (!this.arbitrating && this.tableReload === null) this.c.joining.beginJoin();
  }

  /** Forget every cached page and allocation: what we held may be older than what the partner served alone. */
  private resetToFresh(why: string): void {
    for (const alloc of [...this.c.allocator.allocs.values()]) {
      alloc.released = true;
      alloc.lostInReset = true;
      this.c.cache.dropAlloc(alloc);
      for (const cp of alloc.pages.values()) cp.waiters?.forEach((w) => w());
    }
    this.c.allocator.allocs.clear();
    this.c.allocator.names.clear();
    this.c.allocator.draining.clear();
    this.c.allocator.tableDigestText = null;
    this.c.tags.taggedWrites.clear();
    const rec = this.arbiter?.epochRecord;
    if (rec !== undefined && rec !== null && rec.epoch > this.epoch) this.epoch = rec.epoch;
    this.fresh = true;
    this.generation++;
    this.c.destager.distrustSlots();
    this.enter({ role: Role.STARTING, loneSinceMs: this.c.env.nowMs() }, why, { epoch: this.epoch });
    // Fresh from a reset, we hold what a fresh start holds: the stored table.
    const generation = this.generation;
    const reload = this.c.io.run({ kind: 'readTable' });
    this.tableReload = reload;
    reload.onDone(
      (table) => {
        if (this.generation !== generation || !this.fresh) return;
        for (const record of table.records) if (!this.c.allocator.allocs.has(record.guid) && !this.c.allocator.names.has(record.name)) this.c.allocator.installAllocation(record, 1);
      },
      (err) => this.c.env.log.error({ err: String(err) }, 'could not read the allocation table after a reset'),
    );
    reload.whenSettled(() => {
      if (this.generation !== generation) return;
      this.tableReload = null;
      if (this.linkUp && this.c.joining.current === null && !this.arbitrating && this.fresh && !this.stopping && this.role === Role.STARTING) this.c.joining.beginJoin();
    });
  }

  /** Our mailbox heartbeat: keeps the lease and tells the partner we live. */
  mailboxBeat(now: number): void {
    const arb = this.arbiter;
    if (arb === null || this.mailboxBeatInFlight || this.arbitrating || this.role === Role.FENCED) return;
    if (now - this.lastMailboxBeatMs < this.c.cfg.heartbeatIntervalMs) return;
    this.lastMailboxBeatMs = now;
    this.mailboxBeatInFlight = true;
    const epoch = this.epoch;
    const generation = this.generation;
    this.c.tasks.spawn(arb.heartbeat(epoch, this.slotRole(), this.c.env.pid)).onDone(
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
      (err) => {
        this.mailboxBeatInFlight = false;
        this.c.env.log.error({ err: String(err) }, 'mailbox heartbeat failed');
      },
    );
  }

  /** What our mailbox slot says we are: a fresh controller holds nothing and contends for nothing. */
  private slotRole(): RoleCode {
    return this.fresh ? Role.STARTING : this.role;
  }

  startArbitration(why: string): void {
    const arb = this.arbiter;
    if (arb === null || this.arbitrating || this.stopping) return;
    this.arbitrating = true;
    const wasFresh = this.fresh;
    const previous = this.state;
    this.enter({ role: Role.ARBITRATING, previous, wasFresh }, `partner lost (${why}); arbitrating through the store`, { partnerLeft: this.partnerLeaving });
    // A fresh controller that does not win waits for the link again, still counting since when it is alone.
    const starting = (): RoleState => ({ role: Role.STARTING, loneSinceMs: previous.role === Role.STARTING ? previous.loneSinceMs : this.c.env.nowMs() });
    this.c.tasks.spawn(arb.arbitrate(this.epoch, this.partnerLeaving, this.slotRole(), this.c.env.pid, wasFresh)).onDone(
      (outcome) => {
        this.arbitrating = false;
        if (this.stopping) return;
        invariant(this.fresh === wasFresh, 'state reset during arbitration');
        if (outcome.won) this.takeOver(outcome.epoch);
        else if (wasFresh && outcome.epoch <= this.epoch) {
          // A fresh controller never takes over from a live partner: it waits for the link.
          this.enter(previous, `partner is alive (${outcome.reason}); waiting for the link`);
        } else {
          if (wasFresh) {
            this.epoch = Math.max(this.epoch, outcome.epoch);
            this.enter(starting(), `partner serves in epoch ${outcome.epoch}; waiting for the link`);
          } else this.enterFenced(outcome.reason);
        }
        if (this.linkUp && this.c.joining.current === null) {
          if (this.role === Role.FENCED) this.resetToFresh('partner link is up; rejoining');
          if (this.tableReload === null) this.c.joining.beginJoin();
        }
        this.c.waits.wakeProgress();
      },
      (err) => {
        this.arbitrating = false;
        this.c.env.log.error({ err: String(err) }, 'arbitration failed; fencing ourselves');
        if (wasFresh) this.enter(starting(), 'arbitration failed');
        else this.enterFenced('arbitration failed');
      },
    );
  }

  /** We serve alone from now on, in a new epoch. */
  private takeOver(epoch: number): void {
    const from = this.epoch;
    this.epoch = epoch;
    this.fresh = false;
    this.c.destager.repairAfterPartner();
    for (const alloc of this.c.allocator.allocs.values()) alloc.owner.fill(this.c.selfId);
    // The partner wrote its pages to the store until it was lost.
    this.c.destager.distrustSlots();
    for (const p of [...this.c.pointers.open.values()]) if (p.holderId !== this.c.selfId) this.c.pointers.dropPointer(p);
    this.setRole(Role.ALONE, 'took over: serving alone, writing through to the store', {
      fromEpoch: from,
      epoch,
      dirtyPages: this.c.cache.dirty.size,
    });
    // Everything dirty, the partner's mirrored pages too, goes to the store
    // now, and our table: it may hold allocations the partner never wrote.
    this.c.destager.kickDestage();
    this.c.allocator.persistTable().onDone(
      () => undefined,
      (err) => this.c.env.log.error({ err: String(err) }, 'takeover: could not write the allocation table'),
    );
  }

  /** We lost: no client I/O, no store writes, until the partner is back and we rejoin. */
  enterFenced(reason: string): void {
    if (this.role === Role.FENCED) return;
    this.generation++;
    this.arbiter?.dropLease();
    this.setRole(Role.FENCED, `fenced: ${reason}`, { epoch: this.epoch });
    this.c.writes.failRoomWaiters(new PagepairError('FENCED', 'controller is fenced'));
    this.c.waits.wakeProgress();
  }

  /** The last word to the partner before this process dies of an error. */
  announceCrash(): void {
    if (!this.linkUp) return;
    this.c.joining.sendSense(SenseReason.CRASHING);
    this.c.requests.flushOutbox();
  }

  peerDown(reason: string): void {
    if (!this.linkUp) return;
    this.linkUp = false;
    this.c.joining.current = null;
    this.partnerSense = null;
    const err = new PagepairError('PARTNER_LOST', `partner link lost: ${reason}`);
    this.c.requests.failAll(err);
    this.c.poolSync.linkDown();
    this.c.ownership.linkDown();
    this.c.allocator.linkDown();
    this.c.pointers.linkDown();
    this.c.env.log.warn({ reason, role: roleName(this.role) }, 'partner link down');
    if (!this.stopping && !this.arbitrating) {
      if (this.role === Role.MIRRORED || (this.role === Role.JOINING && !this.fresh)) this.startArbitration(reason);
      else if (this.role === Role.JOINING) {
        // What a cut-short join gave us may be older than what the partner
        // serves by the time the link is back: start over empty.
        this.resetToFresh('partner left before the join finished');
      }
      // ALONE stays alone (a rejoining partner went away again); FENCED and STARTING wait.
    }
    this.c.waits.wakeProgress();
  }

  /** No store write without a lease: a controller that was paused finds out here that it was taken over. */
  ensureLease(): Future<void> {
    const arb = this.arbiter;
    if (arb === null) return this.c.tasks.resolved(undefined);
    if (this.role === Role.FENCED) return this.c.tasks.failed(new PagepairError('FENCED', 'controller is fenced; it writes nothing to the store'));
    if (arb.leaseValid()) return this.c.tasks.resolved(undefined);
    this.leaseRenewal ??= this.c.tasks.spawn(this.renewLease(arb, this.epoch, this.generation));
    return this.leaseRenewal;
  }

  private *renewLease(arb: Arbiter, epoch: number, generation: number): Task<void> {
    try {
      const mailbox = yield* arb.heartbeat(epoch, this.slotRole(), this.c.env.pid);
      // Judged against our epoch now (we may have adopted a newer one meanwhile).
      if (arb.supersededIn(mailbox, this.epoch)) {
        // Only the controller we were when we asked is fenced by this answer.
        if (!this.fresh && this.generation === generation) this.enterFenced(`the partner took over in epoch ${mailbox.epoch?.epoch ?? '?'}`);
        throw new PagepairError('FENCED', 'the partner took over; this controller writes nothing more');
      }
      if (this.generation !== generation) throw new PagepairError('FENCED', 'controller was reset while its lease was renewed');
    } finally {
      this.leaseRenewal = null;
    }
  }

  announcedRole(): RoleCode {
    return this.fresh ? Role.STARTING : this.role;
  }

  get role(): RoleCode {
    return this.state.role;
  }

  /** Take a role that holds nothing of its own; nothing happens when it is ours already. */
  setRole(role: PlainRole, why: string, extra: object = {}): void {
    if (role !== this.state.role) this.enter({ role }, why, extra);
  }

  /** Take a role with what it holds; logged when the role changes. */
  enter(state: RoleState, why: string, extra: object = {}): void {
    const from = this.state.role;
    this.state = state;
    if (from !== state.role) this.c.env.log.info({ from: roleName(from), to: roleName(state.role), epoch: this.epoch, ...extra }, why);
  }

  /** Shutting down: whether this controller may still write what it holds to the store. */
  mayDestageWhileStopping(): boolean {
    return this.state.role === Role.STOPPING && this.state.mayDestage;
  }

  requireWritable(): void {
    if (this.role === Role.MIRRORED || this.role === Role.SINGLE || this.role === Role.ALONE) return;
    this.refuse('writes');
  }

  /** Reads are served only where every acknowledged write is known: mirrored, alone, or single. */
  requireReadable(): void {
    if (this.role === Role.MIRRORED || this.role === Role.SINGLE || this.role === Role.ALONE) return;
    this.refuse('reads');
  }

  refuse(what: string): never {
    if (this.role === Role.STOPPING) throw new PagepairError('SHUTTING_DOWN', 'controller is shutting down');
    if (this.role === Role.FENCED) throw new PagepairError('FENCED', `controller ${this.c.selfId === 1 ? 'A' : 'B'} is fenced: its partner serves in epoch ${this.epoch} or later`);
    if (this.role === Role.ARBITRATING) throw new PagepairError('NOT_MIRRORED', `controller lost its partner and is arbitrating; ${what} wait`);
    if (this.fresh) throw new PagepairError('NOT_ACTIVE', `controller has not joined its partner yet; ${what} wait`);
    throw new PagepairError('NOT_MIRRORED', `controller is ${roleName(this.role)}; ${what} wait for the partner`);
  }

  /** Writes are acknowledged once in the store, not in the partner's cache. */
  writesThrough(): boolean {
    return this.role === Role.ALONE;
  }
}
