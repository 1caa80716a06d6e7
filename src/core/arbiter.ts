// Arbitration through the store's mailbox: who carries on when the peer link
// is gone. The link alone cannot tell a dead partner from a cut link, so each
// controller keeps a heartbeat slot in the mailbox and watches the partner's.
//
// - Partner's slot still advancing: it is alive and only the link is cut.
//   The preferred controller takes over; the other fences itself. A partner
//   that has just started (its slot says "starting") holds nothing and is
//   no contender: it waits to join whoever serves.
// - Partner's slot silent for partnerTimeoutMs (or it said goodbye): it is
//   gone. The survivor fences it (a fence action, when configured) and takes
//   over. The non-preferred side waits longer, so that if both believe the
//   other dead, the preferred one writes the epoch record first and the other
//   reads it before it writes its own.
// - Taking over writes the epoch record {epoch + 1, activeId: self} and reads
//   it back; whoever finds a newer epoch naming the other is fenced.
//
// A controller may write to the store only while its lease holds: the lease
// is renewed by a heartbeat (slot written, epoch record read back and still
// ours) and lasts well under the partner's takeover wait. A controller that
// was paused finds its lease expired, and reads the epoch record before it
// writes anything again.

import type { EpochRecord, Mailbox } from '../protocol/store-records.js';
import type { CoreLog } from './env.js';
import type { IoKind, IoOp, IoResults } from './io.js';
import { wait, type Future, type Task } from './tasks.js';
import { Role } from '../protocol/messages.js';

export interface ArbiterConfig {
  selfId: 1 | 2;
  partnerId: 1 | 2;
  preferredId: 1 | 2;
  heartbeatIntervalMs: number;
  partnerTimeoutMs: number;
}

export type ArbitrationOutcome =
  | { won: true; epoch: number; partnerPid: number }
  | { won: false; epoch: number; activeId: number; reason: string };

export interface ArbiterIo {
  /** A store operation, or a fence action on the partner (fencePartner, partnerGone), as an effect. */
  run<K extends IoKind>(op: Extract<IoOp, { kind: K }>): Future<IoResults[K]>;
  nowMs(): number;
  sleep(ms: number): Future<void>;
  log: CoreLog;
  /** The partner is on the peer link right now: its process runs and answers us (it may only be starting, slow to beat). */
  partnerLinked?(): boolean;
}

export class Arbiter {
  private counter = 0;
  private leaseUntilMs = 0;
  /** The partner's slot as our heartbeats last saw it change, so silence is
   *  counted from its last beat, not from when we began to look. */
  private partnerCounter = -1;
  private partnerPid = 0;
  private partnerChangedMs: number;
  /** The epoch record as last read from the store. */
  private lastEpoch: EpochRecord | null = null;

  constructor(
    private readonly cfg: ArbiterConfig,
    private readonly io: ArbiterIo,
  ) {
    this.partnerChangedMs = io.nowMs();
  }

  /** How long a renewed lease lasts: half the partner's takeover wait. */
  get leaseMs(): number {
    return Math.floor(this.cfg.partnerTimeoutMs / 2);
  }

  leaseValid(): boolean {
    return this.io.nowMs() < this.leaseUntilMs;
  }

  dropLease(): void {
    this.leaseUntilMs = 0;
  }

  get epochRecord(): EpochRecord | null {
    return this.lastEpoch;
  }

  /**
   * Write our heartbeat slot and read the mailbox back. The lease is renewed
   * from the moment the write was issued, and only if the epoch record does
   * not name the partner in a newer epoch than ours.
   */
  *heartbeat(epoch: number, role: number, pid: number): Task<Mailbox> {
    const issuedMs = this.io.nowMs();
    yield* wait(this.io.run({ kind: 'writeMailboxSlot', slot: { controllerId: this.cfg.selfId, epoch, counter: ++this.counter, timeMs: Math.floor(issuedMs), pid, role } }));
    const mailbox = yield* wait(this.io.run({ kind: 'readMailbox' }));
    this.lastEpoch = mailbox.epoch;
    const slot = mailbox.slots[this.cfg.partnerId - 1] ?? null;
    // Only the beats of a partner that holds state count; a just-started one contends for nothing.
    if (slot !== null && slot.role !== Role.STARTING && (slot.counter !== this.partnerCounter || slot.pid !== this.partnerPid)) {
      this.partnerCounter = slot.counter;
      this.partnerPid = slot.pid;
      this.partnerChangedMs = issuedMs;
    }
    if (!this.supersededIn(mailbox, epoch)) this.leaseUntilMs = issuedMs + this.leaseMs;
    else this.leaseUntilMs = 0;
    return mailbox;
  }

  /** True when the epoch record names the partner in an epoch newer than ours. */
  supersededIn(mailbox: Mailbox, epoch: number): boolean {
    const rec = mailbox.epoch;
    return rec !== null && rec.epoch > epoch && rec.activeId !== this.cfg.selfId;
  }

  /**
   * The link to the partner is gone; decide who carries on.
   * `partnerLeft`: it told us it is shutting down or crashing.
   */
  *arbitrate(epoch: number, partnerLeftAtStart: boolean, role: number, pid: number, fresh = false): Task<ArbitrationOutcome> {
    let partnerLeft = partnerLeftAtStart;
    const started = this.io.nowMs();
    let mailbox = yield* this.heartbeat(epoch, role, pid);
    if (this.supersededIn(mailbox, epoch)) return this.lost(mailbox, 'partner already took over');
    const partnerStart = mailbox.slots[this.cfg.partnerId - 1] ?? null;
    const preferred = this.cfg.selfId === this.cfg.preferredId;
    // A partner whose process is gone will not come back by itself: no need
    // to watch its slot for a whole timeout (a kill -9 on one machine).
    if (!partnerLeft && partnerStart !== null && partnerStart.pid > 0 && (yield* wait(this.io.run({ kind: 'partnerGone', pid: partnerStart.pid })))) {
      this.io.log.info({ partnerPid: partnerStart.pid }, 'arbitration: the partner process is gone');
      partnerLeft = true;
    }
    /** The partner's slot moved: its process runs. */
    let advanced = false;
    /** ...and it holds state it would serve: it contends. */
    let alive = false;
    // Watch until the partner's slot has been still for partnerTimeoutMs
    // (counted from its last beat our heartbeats saw) or it moves again.
    const silentLongEnough = (): boolean => {
      const now = this.io.nowMs();
      if (partnerLeft) return now - started >= this.cfg.heartbeatIntervalMs;
      return now - this.partnerChangedMs >= this.cfg.partnerTimeoutMs || now - started >= this.cfg.partnerTimeoutMs;
    };
    while (!silentLongEnough()) {
      yield* wait(this.io.sleep(this.cfg.heartbeatIntervalMs));
      mailbox = yield* this.heartbeat(epoch, role, pid);
      if (this.supersededIn(mailbox, epoch)) return this.lost(mailbox, 'partner took over');
      const slot = mailbox.slots[this.cfg.partnerId - 1] ?? null;
      if (!partnerLeft && slot !== null && (partnerStart === null || slot.counter !== partnerStart.counter)) {
        advanced = true;
        if (slot.role !== Role.STARTING) {
          alive = true;
          break;
        }
      }
    }
    if (alive && fresh) {
      // We hold nothing; a live partner with state serves, and we join it.
      return { won: false, epoch, activeId: this.cfg.partnerId, reason: 'partner alive; we have just started' };
    }
    if (alive && (mailbox.slots[this.cfg.partnerId - 1]?.role ?? -1) === Role.ALONE) {
      // It serves alone and does not arbitrate: taking over from it would make two.
      this.io.log.warn({ epoch }, 'arbitration: partner is alive and serving alone; fencing ourselves');
      return { won: false, epoch, activeId: this.cfg.partnerId, reason: 'partner alive and serving alone' };
    }
    if (alive && !preferred) {
      this.io.log.warn({ epoch }, 'arbitration: partner is alive and preferred; fencing ourselves');
      return { won: false, epoch, activeId: this.cfg.partnerId, reason: 'partner alive and preferred' };
    }
    if (!alive && !preferred && !partnerLeft) {
      // Let a preferred partner that also thinks us dead write first.
      const extraUntil = this.io.nowMs() + Math.floor(this.cfg.partnerTimeoutMs / 2);
      while (this.io.nowMs() < extraUntil) {
        yield* wait(this.io.sleep(this.cfg.heartbeatIntervalMs));
        mailbox = yield* this.heartbeat(epoch, role, pid);
        if (this.supersededIn(mailbox, epoch)) return this.lost(mailbox, 'partner took over');
      }
    }
    // Fence the process we lost, never a successor that took its slot since
    // (a restarted partner says "starting" and holds nothing).
    const partnerSlot = mailbox.slots[this.cfg.partnerId - 1] ?? null;
    const lostPid = partnerStart?.pid ?? 0;
    const partnerPid = partnerSlot !== null && partnerSlot.pid !== lostPid ? 0 : lostPid;
    // A partner seen alive fences itself on reading the epoch record; one that
    // went silent may only be paused, so it is stopped from outside.
    // One on the peer link right now is seen alive too, whatever its slot
    // says (a partner started late on a loaded machine has not beaten yet).
    if (!advanced && partnerPid > 0 && this.io.partnerLinked?.() === true) {
      this.io.log.info({ partnerPid }, 'arbitration: the partner is on the link; no fence action');
    } else if (!advanced && partnerPid > 0) {
      const fenced = yield* wait(this.io.run({ kind: 'fencePartner', pid: partnerPid }));
      this.io.log.info({ partnerPid, fenced }, 'arbitration: fence action on the partner');
    }
    const current = mailbox.epoch?.epoch ?? epoch;
    const next = Math.max(epoch, current) + 1;
    yield* wait(this.io.run({ kind: 'writeEpochRecord', rec: { epoch: next, activeId: this.cfg.selfId, timeMs: Math.floor(this.io.nowMs()) } }));
    mailbox = yield* this.heartbeat(next, role, pid);
    let lostWhy = this.stillOurs(mailbox, next);
    if (lostWhy !== null) return this.lost(mailbox, lostWhy);
    if (alive) {
      // A live partner may still hold a lease from before our epoch record:
      // it serves nothing once that runs out, so we serve only after.
      yield* wait(this.io.sleep(this.leaseMs + this.cfg.heartbeatIntervalMs));
      mailbox = yield* this.heartbeat(next, role, pid);
      lostWhy = this.stillOurs(mailbox, next);
      if (lostWhy !== null) return this.lost(mailbox, lostWhy);
    }
    this.io.log.warn({ from: epoch, to: next, partnerAlive: alive, tookMs: Math.round(this.io.nowMs() - started) }, 'arbitration: won; taking over');
    return { won: true, epoch: next, partnerPid };
  }

  /**
   * Null when the epoch we wrote is still ours; else why not. The epoch
   * record is a plain write, not a compare-and-swap: a partner that took
   * over in the same epoch while our arbitration was stalled (paused between
   * reading the record and writing ours) had its record overwritten by ours.
   * Its heartbeat slot still says it serves alone in that epoch, and it holds
   * the writes it acknowledged since; we must not serve beside it.
   */
  private stillOurs(mailbox: Mailbox, epoch: number): string | null {
    if (mailbox.epoch === null || mailbox.epoch.epoch !== epoch || mailbox.epoch.activeId !== this.cfg.selfId) return 'epoch record changed under us';
    const partner = mailbox.slots[this.cfg.partnerId - 1] ?? null;
    if (partner !== null && partner.role === Role.ALONE && partner.epoch >= epoch) return `partner serves alone in epoch ${partner.epoch}`;
    return null;
  }

  /** Record that the pair is mirrored again in `epoch` (activeId 0: both serve). */
  *recordMirrored(epoch: number): Task<void> {
    yield* wait(this.io.run({ kind: 'writeEpochRecord', rec: { epoch, activeId: 0, timeMs: Math.floor(this.io.nowMs()) } }));
  }

  private lost(mailbox: Mailbox, reason: string): ArbitrationOutcome {
    const rec = mailbox.epoch;
    this.leaseUntilMs = 0;
    return { won: false, epoch: rec?.epoch ?? 0, activeId: rec?.activeId ?? this.cfg.partnerId, reason };
  }
}
