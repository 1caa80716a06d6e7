// The join after the link comes up, and health (SENSE_REQUEST). Both sides
// decide on the same frame whose state wins; that side replays its table
// (ALLOCATE) and both send the dirty pages the other lacks (READ_HEADER, then
// WRITE_PAGE marked RESYNC), paced, and which client writes they applied.
// When both have pushed, the pair is mirrored again.

import { keyFieldsOf } from './access-keys.js';
import { JoinFlag, PageFlag, PageState, Role, SenseReason, type PageHeaderInfo, type ReadHeader, type SenseRequest } from '../protocol/messages.js';
import { PagepairError } from '../protocol/errors.js';
import type { AllocState } from './allocation.js';
import { pageHeader } from './verify.js';
import { EMPTY, ZERO_GUID, pageRuns } from './shared.js';
import { SYNC_RESERVATION } from './allocator.js';
import type { Core } from './context.js';
import { wait, type Future, type Task } from './tasks.js';

/** Pages a resync sends between pauses of its pacing. */
export const RESYNC_CHUNK_PAGES = 64;

export interface JoinState {
  /** Undecided until the partner's first SENSE tells whether it is fresh. */
  authoritative: boolean | undefined;
  pushDone: boolean;
  partnerDone: boolean;
  seenGuids: Set<string>;
  /** Resync progress: dirty pages the partner lacked, and how many went. */
  pagesToSend: number;
  pagesSent: number;
}

export class Join {
  /** The join in progress, or null. */
  current: JoinState | null = null;

  constructor(private readonly c: Core) {}

  beginJoin(): void {
    this.current = {
      authoritative: undefined,
      pushDone: false,
      partnerDone: false,
      seenGuids: new Set(),
      pagesToSend: 0,
      pagesSent: 0,
    };
    // A survivor keeps serving alone while the partner catches up.
    if (this.c.membership.role !== Role.ALONE) this.c.membership.setRole(Role.JOINING, 'joining partner', { fresh: this.c.membership.fresh });
    this.sendSense(SenseReason.HEARTBEAT);
  }

  private joinFlags(): number {
    const join = this.current;
    if (join === null) return 0;
    return JoinFlag.JOINING | (this.c.membership.fresh ? JoinFlag.FRESH : 0) | (join.pushDone ? JoinFlag.PUSH_DONE : 0);
  }

  sendSense(reason: SenseRequest['reason']): void {
    const poolGeneration = this.c.poolSync.generation;
    this.c.requests.request({ kind: 'SENSE_REQUEST', role: this.c.membership.announcedRole(), reason, joinFlags: this.joinFlags(), poolGeneration }).onDone(
      (r) => {
        if (r.kind !== 'SENSE_REQUEST_REPLY') return;
        this.c.membership.partnerSense = r;
        this.c.poolSync.partnerReplied(poolGeneration, r.poolGeneration ?? 0);
      },
      (err) => this.c.poolSync.senseFailed(poolGeneration, err),
    );
  }

  onSense(req: SenseRequest): void {
    const join = this.current;
    // Only a partner that is joining us too speaks for the join; the two
    // sides may begin it at different moments (one of them arbitrating).
    if (join !== null && req.reason === SenseReason.HEARTBEAT && (req.joinFlags & JoinFlag.JOINING) !== 0) {
      if (join.authoritative === undefined) {
        const partnerFresh = (req.joinFlags & JoinFlag.FRESH) !== 0;
        join.authoritative = this.c.membership.fresh === partnerFresh ? this.c.selfId === 1 : !this.c.membership.fresh;
        // The side whose state wins owns every page until ownership moves again.
        // Both sides make this decision on the same frame of a new link, so
        // they agree on the owner and start counting ownership moves anew.
        for (const alloc of this.c.allocator.allocs.values()) {
          alloc.owner.fill(join.authoritative ? this.c.selfId : this.c.partnerId);
          alloc.ownerGen.fill(0);
        }
        // The partner may have written any page to the store while we were apart.
        this.c.destager.distrustSlots();
        this.c.env.log.info({ authoritative: join.authoritative, partnerFresh }, 'join: pushing state to partner');
        this.pushJoinState(join);
      }
      if ((req.joinFlags & JoinFlag.PUSH_DONE) !== 0 && join.authoritative !== undefined && !join.partnerDone) {
        join.partnerDone = true;
        if (!join.authoritative) {
          const drops: Future<void>[] = [];
          for (const a of [...this.c.allocator.allocs.values()]) {
            if (!join.seenGuids.has(a.record.guid)) {
              this.c.env.log.warn({ guid: a.record.guid, name: a.record.name }, 'join: allocation unknown to the partner; dropped');
              drops.push(this.c.tasks.spawn(this.dropUnknown(a)));
            }
          }
          if (drops.length > 0 && this.c.allocator.isCoordinator()) {
            this.c.tasks.spawn(this.persistAfter(drops)).onDone(
              () => undefined,
              (err) => this.c.env.log.error({ err: String(err) }, 'join: could not write the allocation table'),
            );
          }
        }
        this.maybeFinishJoin();
      }
    }
    if (req.reason !== SenseReason.HEARTBEAT && !this.c.membership.partnerLeaving) {
      this.c.membership.partnerLeaving = true;
      this.c.env.log.warn({ partner: this.c.partnerId, reason: req.reason === SenseReason.CRASHING ? 'crashing' : 'shutting down' }, 'partner says it is leaving');
    }
    const c = this.c.cache.counters();
    this.c.requests.replyPeer(req, {
      kind: 'SENSE_REQUEST_REPLY',
      role: this.c.membership.announcedRole(),
      senseCode: this.c.membership.senseCode,
      allocations: this.c.allocator.allocs.size,
      cachedPages: c.cachedPages,
      dirtyPages: c.dirtyPages,
      destageQueue: this.c.destager.destagesInFlight,
      tableDigest: this.c.allocator.tableDigest(),
      dirtyDigest: this.c.cache.dirtyDigest.toString(),
      poolGeneration: this.c.poolSync.confirmedGeneration,
    });
  }

  /** An allocation the partner's state does not have: dropped here too. */
  private *dropUnknown(alloc: AllocState): Task<void> {
    yield* this.c.allocator.dropAllocation(alloc);
    this.c.allocator.draining.delete(alloc);
  }

  private *persistAfter(drops: Future<void>[]): Task<void> {
    yield* wait(this.c.tasks.all(drops));
    yield* wait(this.c.allocator.persistTable());
  }

  private pushJoinState(join: JoinState): void {
    this.c.tasks.spawn(this.runJoinPush(join)).onDone(
      () => {
        if (this.current !== join) return;
        join.pushDone = true;
        this.c.counters.joins++;
        this.c.env.log.info({ pagesSent: join.pagesSent }, 'join: our state is with the partner');
        this.sendSense(SenseReason.HEARTBEAT);
        this.maybeFinishJoin();
      },
      (err) => this.c.env.log.warn({ err: String(err) }, 'join push failed; waiting for the link to come back'),
    );
  }

  private *runJoinPush(join: JoinState): Task<void> {
    const sends: Future<unknown>[] = [];
    if (join.authoritative) {
      for (const a of this.c.allocator.allocs.values()) sends.push(this.c.requests.request({ kind: 'ALLOCATE', ...a.record, ...keyFieldsOf(a.record), snapshot: a.record.snapshot === true, reservationId: SYNC_RESERVATION }));
    }
    yield* wait(this.c.tasks.all(sends));
    const byAlloc = new Map<AllocState, number[]>();
    for (const cp of this.c.cache.dirty) byAlloc.set(cp.alloc, [...(byAlloc.get(cp.alloc) ?? []), cp.page]);
    // One range at a time, paced, so clients keep their speed during a resync.
    for (const [alloc, pages] of byAlloc) {
      for (const [first, count] of pageRuns(pages.sort((x, y) => x - y), this.c.cfg.limits.headersPerMessageMax)) {
        if (this.current !== join) return;
        yield* this.pushDiffering(join, alloc, first, count);
      }
    }
    // Which client writes we applied: the partner may be asked to retry one.
    yield* this.pushTags(join);
    // A store write we started before the link dropped must land before the
    // partner, owning every page now, can write and destage a newer version;
    // the partner finishes its join only after our push is done. (When our
    // state wins we keep every page, and the partner writes none.)
    if (!join.authoritative) yield* this.destagesDrained();
  }

  private *destagesDrained(): Task<void> {
    while (this.c.destager.destagesInFlight > 0) yield* wait(this.c.waits.progress());
  }

  /** Compare headers with the partner and send the dirty pages it lacks. */
  private *pushDiffering(join: JoinState, alloc: AllocState, first: number, count: number): Task<void> {
    const r = yield* wait(this.c.requests.request({ kind: 'READ_HEADER', guid: alloc.record.guid, firstPage: first, pageCount: count }));
    if (r.kind !== 'READ_HEADER_REPLY' || alloc.released) return;
    const behind: PageHeaderInfo[] = [];
    for (const h of r.headers) {
      const cp = alloc.pages.get(h.page);
      if (cp === undefined || !cp.dirty) continue;
      if (h.version > cp.version) continue; // the partner pushes it to us
      if (h.version === cp.version) {
        if (h.crc === cp.crc) {
          if (h.state === PageState.CLEAN) this.c.cache.markClean(cp, cp.version, cp.crc);
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
      const op = this.c.writes.mirrorOp();
      let sent = 0;
      for (const h of behind.slice(i, i + RESYNC_CHUNK_PAGES)) {
        const cp = alloc.pages.get(h.page);
        if (cp === undefined || !cp.dirty) continue;
        this.c.outbox.pushPage(
          { guid: alloc.record.guid, page: h.page, version: cp.version, crc: cp.crc, epoch: cp.epoch, pageFlags: PageFlag.RESYNC, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: 0, data: this.c.cache.lend(cp) },
          op.op,
        );
        sent++;
      }
      if (sent > 0) yield* wait(op.done);
      join.pagesSent += Math.min(RESYNC_CHUNK_PAGES, behind.length - i);
      if (join.pagesSent % (RESYNC_CHUNK_PAGES * 64) === 0) this.c.env.log.info({ pagesSent: join.pagesSent, pagesToSend: join.pagesToSend }, 'resync progress');
      yield* wait(this.c.waits.sleep((RESYNC_CHUNK_PAGES * 1000) / this.c.cfg.resyncPagesPerSecMax));
    }
  }

  private *pushTags(join: JoinState): Task<void> {
    const op = this.c.writes.mirrorOp();
    let sent = 0;
    for (const [key, t] of this.c.tags.taggedWrites.entries()) {
      if (t.state === 'running' || this.current !== join) continue;
      const [clientId, clientSeq] = key.split(':').map(Number) as [number, number];
      const guid = t.state === 'held' ? t.guid : ZERO_GUID;
      const page = t.state === 'held' ? t.first : 0;
      this.c.outbox.pushPage({ guid, page, version: 0, crc: 0, epoch: this.c.membership.epoch, pageFlags: PageFlag.TAG_ONLY, pointerId: 0, clientId, clientSeq, ownerGen: 0, data: EMPTY }, op.op);
      sent++;
    }
    if (sent > 0) yield* wait(op.done);
  }

  onReadHeader(req: ReadHeader): void {
    const alloc = this.c.allocator.lookup(req.guid);
    this.c.allocator.checkPageRange(alloc, req.firstPage, req.pageCount);
    if (req.pageCount > this.c.cfg.limits.headersPerMessageMax) {
      throw new PagepairError('LIMIT_EXCEEDED', `READ_HEADER of ${req.pageCount} pages is over headersPerMessageMax`, 'pageCount');
    }
    const headers: PageHeaderInfo[] = [];
    for (let p = req.firstPage; p < req.firstPage + req.pageCount; p++) headers.push(pageHeader(alloc.pages.get(p), p));
    this.c.requests.replyPeer(req, { kind: 'READ_HEADER_REPLY', guid: req.guid, headers });
  }

  private maybeFinishJoin(): void {
    const join = this.current;
    if (join === null || !join.pushDone || !join.partnerDone) return;
    this.current = null;
    this.c.membership.fresh = false;
    // The store's epoch record says again that both serve (activeId 0).
    const rec = this.c.membership.arbiter?.epochRecord;
    if (join.authoritative && this.c.membership.arbiter !== null && (rec === null || rec === undefined || rec.activeId !== 0 || rec.epoch !== this.c.membership.epoch)) {
      this.c.tasks.spawn(this.c.membership.arbiter.recordMirrored(this.c.membership.epoch)).onDone(
        () => undefined,
        (err) => this.c.env.log.error({ err: String(err) }, 'could not write the epoch record'),
      );
    }
    this.c.membership.setRole(Role.MIRRORED, 'mirrored with partner', {
      allocations: this.c.allocator.allocs.size,
      dirtyPages: this.c.cache.dirty.size,
      tableDigest: this.c.allocator.tableDigest(),
      dirtyDigest: this.c.cache.dirtyDigest.toString(),
    });
    this.c.waits.wakeProgress();
  }
}
