// Page ownership: only a page's owner writes and destages it. Ownership
// moves by LOCK_REQUEST (TAKE asks, GIVE hands over); a grant waits until our
// own writes and destages of the pages are done, and controller 2 yields
// when both want the same pages, so two writers never deadlock.

import { LockOp, type LockRequest } from '../protocol/messages.js';
import { PagepairError, invariant } from '../protocol/errors.js';
import { overlappingPointer, type AllocState } from './allocation.js';
import { OWNERSHIP_ROUNDS_MAX, unknownGuid, runs } from './shared.js';
import type { Core } from './context.js';
import { wait, type Task } from './tasks.js';

export interface DeferredGrant {
  req: LockRequest;
  alloc: AllocState;
}

export interface LocalWrite {
  alloc: AllocState;
  first: number;
  count: number;
}

/** The pages change hands: the partner may write them to the store, so what we know of their slots lapses. */
function forgetStoreSlots(alloc: AllocState, first: number, count: number): void {
  for (let p = first; p < first + count; p++) {
    const cp = alloc.pages.get(p);
    if (cp !== undefined) cp.slotsOursAt = -1;
  }
}

export class Ownership {
  /** Client writes in progress here, by range. */
  readonly activeWrites = new Set<LocalWrite>();
  /** Ranges we are taking from the partner with LOCK_REQUEST TAKEs. */
  private readonly pendingTakes = new Set<LocalWrite>();
  /** The partner's TAKEs we hold until our writes and destages of the pages are done. */
  private deferredGrants: DeferredGrant[] = [];

  constructor(private readonly c: Core) {}

  /** The link is gone: the partner's TAKEs we held are forgotten with it. */
  linkDown(): void {
    this.deferredGrants = [];
  }

  owns(alloc: AllocState, page: number): boolean {
    return !this.c.cfg.mirroring || alloc.owner[page] === this.c.selfId;
  }

  ownsRange(alloc: AllocState, first: number, count: number): boolean {
    if (!this.c.cfg.mirroring) return true;
    for (let p = first; p < first + count; p++) if (alloc.owner[p] !== this.c.selfId) return false;
    return true;
  }

  /**
   * Pages of alloc that move together: on a store whose parity rows hold
   * several pages, a page's whole group, so that the two controllers never
   * write one row at once (each would compute its parity from the other's
   * old bytes). 1 elsewhere.
   */
  lockGroupPages(alloc: AllocState): number {
    return this.c.cfg.store.lockGroupPages(alloc.record.pageSizeBytes);
  }

  /** [first, first + count) widened to whole lock groups, within the allocation. */
  groupRange(alloc: AllocState, first: number, count: number): [number, number] {
    const g = this.lockGroupPages(alloc);
    if (g <= 1) return [first, count];
    const from = Math.floor(first / g) * g;
    const to = Math.min(Math.ceil((first + count) / g) * g, alloc.record.pageCount);
    return [from, to - from];
  }

  /** A range the partner asks for or hands over must be whole lock groups. */
  private checkGroupRange(alloc: AllocState, first: number, count: number): void {
    const [from, n] = this.groupRange(alloc, first, count);
    if (from !== first || n !== count) {
      throw new PagepairError('BAD_FIELD', `pages ${first}..${first + count - 1} of ${alloc.record.guid} are not whole lock groups of ${this.lockGroupPages(alloc)} pages (their store rows would have two writers)`, 'firstPage');
    }
  }

  *acquireOwnership(alloc: AllocState, wantFirst: number, wantCount: number): Task<void> {
    const [first, count] = this.groupRange(alloc, wantFirst, wantCount);
    if (this.ownsRange(alloc, first, count)) return;
    const taking: LocalWrite = { alloc, first, count };
    this.pendingTakes.add(taking);
    try {
      for (let round = 0; !this.ownsRange(alloc, first, count); round++) {
        if (round >= OWNERSHIP_ROUNDS_MAX) throw new PagepairError('BUSY', `could not take pages of ${alloc.record.guid} from the partner`);
        const wanted = runs(first, count, (p) => alloc.owner[p] !== this.c.selfId);
        const replies = wanted.map(([f, c]) => {
          this.c.counters.lockRequestsSent++;
          // The grant takes effect when its frame is handled, in link order,
          // not when this task resumes: a TAKE of the partner's that came
          // in the same chunk right behind it must find the pages ours.
          return this.c.requests.request({ kind: 'LOCK_REQUEST', guid: alloc.record.guid, firstPage: f, pageCount: c, op: LockOp.TAKE, ownerGen: 0 }, 0, (r) => {
            if (r.kind === 'LOCK_REQUEST_REPLY' && r.granted && !alloc.released) this.receiveOwnership(alloc, f, c, r.ownerGen, 'grant');
          });
        });
        yield* wait(this.c.tasks.all(replies));
        if (alloc.released) throw this.c.allocator.goneError(alloc);
      }
    } finally {
      this.pendingTakes.delete(taking);
      this.recheckDeferredGrants();
    }
  }

  /**
   * Hand pages we own to `to`: they get one generation larger than any of
   * them had, and that generation goes with the grant or GIVE.
   */
  moveOwnership(alloc: AllocState, first: number, count: number, to: number): number {
    let gen = 0;
    for (let p = first; p < first + count; p++) if (alloc.ownerGen[p]! > gen) gen = alloc.ownerGen[p]!;
    invariant(gen < 0xffff_ffff, 'ownership generation overflow');
    gen++;
    alloc.owner.fill(to, first, first + count);
    alloc.ownerGen.fill(gen, first, first + count);
    forgetStoreSlots(alloc, first, count);
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
      if (alloc.owner[p] === this.c.selfId || gen <= alloc.ownerGen[p]!) {
        const why = alloc.owner[p] === this.c.selfId ? 'we own it already' : `its generation here is ${alloc.ownerGen[p]}, the ${what} carries ${gen}`;
        this.ownershipConflict(`partner's ${what} of page ${p} of ${alloc.record.guid}: ${why}`);
        return false;
      }
    }
    alloc.owner.fill(this.c.selfId, first, first + count);
    alloc.ownerGen.fill(gen, first, first + count);
    forgetStoreSlots(alloc, first, count);
    return true;
  }

  /**
   * The two sides disagree on ownership or contents: what we would
   * acknowledge may differ from the partner's copy. Counted, logged, and the
   * link is made anew, so that a join settles both again.
   */
  private ownershipConflict(why: string): void {
    this.c.counters.ownershipConflicts++;
    this.c.env.log.error({ why }, 'ownership conflict with the partner; making the link anew');
    if (this.c.membership.linkUp) {
      this.c.env.closePeer(`ownership conflict: ${why}`);
      this.c.membership.peerDown('ownership conflict');
    }
  }

  onLockRequest(req: LockRequest): void {
    const alloc = this.c.allocator.allocs.get(req.guid);
    if (alloc === undefined) throw unknownGuid(req.guid);
    this.c.allocator.checkPageRange(alloc, req.firstPage, req.pageCount);
    this.checkGroupRange(alloc, req.firstPage, req.pageCount);
    if (req.op === LockOp.GIVE) {
      if (!this.receiveOwnership(alloc, req.firstPage, req.pageCount, req.ownerGen, 'GIVE')) return;
      this.c.requests.replyPeer(req, { kind: 'LOCK_REQUEST_REPLY', granted: true, ownerGen: req.ownerGen });
      return;
    }
    this.answerTake(req, alloc);
  }

  /** Grant a TAKE, refuse it, or keep it for later; on arrival and each time a deferred one is looked at again. */
  private answerTake(req: LockRequest, alloc: AllocState): void {
    const conflict = overlappingPointer(alloc, req.firstPage, req.pageCount);
    if (conflict !== undefined && conflict.holderId === this.c.selfId) {
      // The pages stay ours while our pointer is open (it may have been
      // opened while the TAKE waited); a partner that wants them durable (a
      // flush) gets them destaged by us now instead.
      this.c.destager.destageRange(alloc, req.firstPage, req.pageCount);
      this.c.requests.sendPeerError(req, new PagepairError('LOCK_CONFLICT', `pages ${req.firstPage}..${req.firstPage + req.pageCount - 1} are held by pointer ${conflict.id}`));
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
    this.c.counters.lockRefusals++;
    this.c.requests.replyPeer(req, { kind: 'LOCK_REQUEST_REPLY', granted: false, ownerGen: 0 });
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
    if (this.c.selfId === 1) {
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
    const ownerGen = this.moveOwnership(alloc, req.firstPage, req.pageCount, this.c.partnerId);
    this.c.counters.lockGrants++;
    this.c.requests.replyPeer(req, { kind: 'LOCK_REQUEST_REPLY', granted: true, ownerGen });
  }

  /** The TAKEs held back, looked at again (a write or destage of ours ended). */
  recheckDeferredGrants(): void {
    if (this.deferredGrants.length === 0) return;
    const waiting = this.deferredGrants;
    this.deferredGrants = [];
    for (const d of waiting) {
      if (d.alloc.released || !this.c.allocator.allocs.has(d.req.guid)) {
        this.c.requests.sendPeerError(d.req, unknownGuid(d.req.guid));
      } else {
        this.answerTake(d.req, d.alloc);
      }
    }
  }
}
