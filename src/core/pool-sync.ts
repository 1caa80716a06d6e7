// Pool sync: the generation of the store's pool, agreed with the partner
// before we act on a store outcome (issue 14).
//
// Each controller opens its own pool object over the same member devices.
// When ours finds a member failing on our path only (a remote member we
// cannot reach, a transient error), it stops using it and writes the pool's
// next generation into the other members' labels; the partner's pool object
// still reads that member, where what we wrote since is missing. So:
//
// - The store tells us the generation grew on the first outcome after it did
//   (IoOutcome.poolGeneration, set by the runtime's runIo).
// - While the link is up and our generation is above the partner's, every
//   store outcome is held (the task waiting for it does not resume): the one
//   that failed the member, and those answered after it, which may have
//   written to the members left only. A SENSE_REQUEST carries our
//   generation; the partner refreshes its pool object (reads every label
//   again) before it answers, and its answer, carrying the generation it
//   refreshed to, releases what we hold. Heartbeat SENSEs carry it too, so
//   the partner learns it even when nothing waits. What the partner's own
//   SENSEs carry releases nothing: it may know a generation from its own
//   label writes without having acted on all the labels say (a rebuild they
//   record, whose device it must write: src/store/pool-rebuild.ts). The same
//   outcome hold is the barrier a rebuild waits on (ControllerCore.poolBarrier).
// - A link that drops releases everything: the partner is then lost (it is
//   fenced or taken over before anyone serves alone) or rejoins, and the
//   join's SENSEs carry the generation. So do mailbox reads: over a pool the
//   runtime refreshes the pool before each (store-io.ts), so arbitration
//   reads the members we both still trust.
// - On the partner's side: a SENSE whose generation is above what our last
//   refresh reached waits for a refresh, and the SENSEs behind it wait in order (a join's decisions
//   ride on them). A refresh that fails, or does not reach that generation,
//   is an I/O error (logged, counted, sense code IO_ERROR): our pool object
//   may still read a member the partner gave up on, so we must not serve
//   from it. We answer the SENSE with IO_ERROR, fence ourselves and drop the
//   link; the partner arbitrates and serves alone, and we rejoin fresh when
//   the link is back, the join's SENSEs asking for the refresh again. A
//   partner that answers below what we asked is dropped the same way.
//
// Without a pool both generations stay 0: nothing is held, nothing refreshed.

import { ErrorCode, PagepairError } from '../protocol/errors.js';
import { SenseReason, type SenseRequest } from '../protocol/messages.js';
import type { Core } from './context.js';
import type { IoKind, IoOutcome } from './io.js';

/** A SENSE from the partner waiting for our refresh. */
interface DeferredSense {
  req: SenseRequest;
  want: number;
  handle: () => void;
}

export class PoolSync {
  /** The newest generation our pool object has reached (0: the store is not a pool). */
  generation = 0;
  /** The highest generation the partner's pool object is known to have reached. */
  partnerGeneration = 0;
  /**
   * The generation our last refresh read in the labels. A partner's SENSE is
   * answered only once this reaches what it carries: our pool object may
   * know a generation from its own label writes (which read the labels)
   * without having acted on everything in them, such as a rebuild the
   * partner announced there, whose device we must write before the partner
   * copies (src/store/pool-rebuild.ts).
   */
  private refreshed = 0;

  /** What our answers to the partner's SENSEs carry: the generation our pool object has acted on. */
  get confirmedGeneration(): number {
    return this.refreshed;
  }
  /** Outcomes held until the partner catches up, in arrival order. */
  private held: (() => void)[] = [];
  /** The generation a SENSE still unanswered asked the partner for (0: none). */
  private asking = 0;
  private refreshing = false;
  /** Partner SENSEs waiting for our refresh, in arrival order. */
  private deferred: DeferredSense[] = [];

  constructor(private readonly c: Core) {}

  /** Outcomes held right now (status and tests). */
  get heldOutcomes(): number {
    return this.held.length;
  }

  /** Whether a store outcome must wait for the partner; learns the generation it carries. */
  mustHold(kind: IoKind, outcome: IoOutcome): boolean {
    const g = outcome.poolGeneration;
    if (g !== undefined && g > this.generation) this.generation = g;
    if (this.generation <= this.partnerGeneration) return false;
    // A refresh answers the partner (holding it could wait on the partner's own refresh); fence actions are not the store's.
    if (kind === 'refreshPool' || kind === 'fencePartner' || kind === 'partnerGone') return false;
    return this.c.cfg.mirroring && this.c.membership.linkUp;
  }

  /** Keep an outcome until the partner has our generation (or the link drops). */
  hold(deliver: () => void): void {
    this.held.push(deliver);
    this.c.counters.poolOutcomesHeld++;
    this.ask();
  }

  /** Ask the partner to catch up, unless a SENSE asking as much is out already. */
  private ask(): void {
    if (this.asking >= this.generation || !this.c.membership.linkUp) return;
    this.asking = this.generation;
    this.c.joining.sendSense(SenseReason.HEARTBEAT);
  }

  /** The partner answered a SENSE of ours that carried `sent`, with the generation it reached. */
  partnerReplied(sent: number, reached: number): void {
    if (sent >= this.asking) this.asking = 0;
    if (reached > this.partnerGeneration) this.partnerGeneration = reached;
    if (reached < sent) {
      this.dropPartner(`partner answered at pool generation ${reached}, below the ${sent} it was asked for`);
      return;
    }
    this.releaseIfCaughtUp();
    if (this.held.length > 0) this.ask();
  }

  /** A SENSE of ours that carried `sent` failed. */
  senseFailed(sent: number, err: Error): void {
    if (sent >= this.asking) this.asking = 0;
    if (!this.c.membership.linkUp) {
      this.release();
      return;
    }
    if (sent > this.partnerGeneration) this.dropPartner(`partner did not confirm pool generation ${sent}: ${err.message}`);
  }

  /** The link is gone: what we held goes on, SENSEs of that link are not answered. */
  linkDown(): void {
    this.asking = 0;
    this.deferred = [];
    this.release();
  }

  /** A SENSE from the partner: handled now, or after our pool has caught up with the generation it carries. */
  onSense(req: SenseRequest, handle: () => void): void {
    // What the partner's SENSE carries is what it knows of, not what its pool object has acted
    // on (a label move of its own teaches it a generation without taking up a rebuild recorded
    // there): only its answers to our SENSEs, which carry what it refreshed to, say that.
    const want = req.poolGeneration ?? 0;
    if (this.deferred.length === 0 && want <= this.refreshed) {
      handle();
      return;
    }
    this.deferred.push({ req, want, handle });
    this.pump();
  }

  /** Handle the waiting SENSEs in order, refreshing first when one asks for more than we have. */
  private pump(): void {
    while (!this.refreshing && this.deferred.length > 0) {
      const d = this.deferred[0]!;
      if (d.want > this.refreshed) {
        this.refresh(d.want);
        return;
      }
      this.deferred.shift();
      try {
        d.handle();
      } catch (err) {
        this.c.requests.sendPeerError(d.req, this.c.requests.asTyped(err, d.req.kind));
      }
    }
  }

  private refresh(want: number): void {
    this.refreshing = true;
    this.c.counters.poolRefreshes++;
    this.c.env.log.info({ from: this.generation, to: want }, 'partner is at a newer pool generation; refreshing the pool');
    this.c.io.run({ kind: 'refreshPool' }).onDone(
      (reached) => {
        this.refreshing = false;
        if (reached > this.generation) this.generation = reached;
        if (reached > this.refreshed) this.refreshed = reached;
        if (this.refreshed < want && this.deferred.some((d) => d.want > this.refreshed)) {
          this.refreshFailed(new Error(`the pool's labels are at generation ${reached}`), want);
          return;
        }
        this.pump();
      },
      (err) => {
        this.refreshing = false;
        this.refreshFailed(err, want);
      },
    );
  }

  /** Our pool object may read a member the partner gave up on: we must not serve from it. */
  private refreshFailed(err: Error, want: number): void {
    this.c.counters.poolRefreshFailures++;
    this.c.membership.senseCode = ErrorCode.IO_ERROR;
    const why = `pool refresh to generation ${want} failed: ${err.message}`;
    this.c.env.log.error({ err: err.message, generation: this.generation, want }, 'could not refresh the pool to the partner\'s generation; fencing ourselves');
    const refusal = new PagepairError('IO_ERROR', why);
    for (const d of this.deferred.splice(0)) this.c.requests.sendPeerError(d.req, refusal);
    if (!this.c.membership.stopping) this.c.membership.enterFenced(why);
    if (this.c.membership.linkUp) {
      this.c.requests.flushOutbox();
      this.c.env.closePeer(why);
      this.c.membership.peerDown(why);
    }
  }

  /** The partner cannot be told: the link goes, and with it what we held. */
  private dropPartner(why: string): void {
    this.c.env.log.error({ generation: this.generation, partnerGeneration: this.partnerGeneration }, why);
    this.c.env.closePeer(why);
    this.c.membership.peerDown(why);
  }

  private releaseIfCaughtUp(): void {
    if (this.held.length > 0 && this.generation <= this.partnerGeneration) this.release();
  }

  private release(): void {
    if (this.held.length === 0) return;
    const held = this.held;
    this.held = [];
    for (const deliver of held) deliver();
  }
}
