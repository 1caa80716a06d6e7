// The destager: dirty pages we own go to the store (with their dirty
// neighbours, in one go), are synced in groups, and become clean here and at
// the partner ("clean at version v"). Writes made alone go through to the
// store before they are answered; a flush waits until its pages are durable.

import { PageFlag, Role, type CFlush } from '../protocol/messages.js';
import { ErrorCode, PagepairError, isPagepairError } from '../protocol/errors.js';
import type { AllocState } from './allocation.js';
import type { CachePage } from './page-cache.js';
import { EMPTY, pageRuns } from './shared.js';
import type { Core } from './context.js';
import { settle, wait, type Future, type Task } from './tasks.js';

/** Above this many pages left, a flush re-checks per tick instead of per destage. */
export const FLUSH_RECHECK_PAGES = 256;

/** Most pages destaged in one run of neighbours. */
export const DESTAGE_RUN_PAGES_MAX = 32;

/** After a destage fails, none starts for this long, doubling while they keep failing, up to DESTAGE_REST_MS_MAX. */
export const DESTAGE_REST_MS_MIN = 10;
export const DESTAGE_REST_MS_MAX = 1000;
/** Destage failures are logged at most once in this long (with how many were not). */
export const DESTAGE_FAILURE_LOG_MS = 1000;

export interface FlushTarget {
  cp: CachePage;
  version: number;
}

export interface StoreWrite {
  cp: CachePage;
  version: number;
  data: Buffer;
  crc: number;
}

export class Destager {
  /** Store writes of pages not yet settled, their syncs included (what destageConcurrency bounds). */
  destagesInFlight = 0;
  /**
   * Grows whenever pages may have been written to the store by the partner
   * while we held them as ours without knowing (a join settles ownership
   * anew, a takeover, a reset): a page's slotsOursAt counts only under the
   * trust it was recorded in. Pages we give away forget theirs (ownership.ts).
   */
  private slotTrust = 0;
  /** Flushes (and a shutdown) waiting: destage now, whatever the pages' age. */
  flushDemand = 0;
  private drainingDirty = false;
  /** Store writes of a page are chained so they land in version order. */
  private readonly pageWrites = new Map<CachePage, Future<void>>();
  private syncWaiters: Future<void>[] = [];
  private syncRunning = false;
  /**
   * A store that fails destages is given a rest: without one, each failure
   * frees a destage slot that starts the next write at once, and a store
   * that fails fast is asked thousands of times a second (and the log says
   * so as often).
   */
  private restUntilMs = 0;
  private restMs = 0;
  private failuresNotLogged = 0;
  private lastFailureLogMs = Number.NEGATIVE_INFINITY;

  constructor(private readonly c: Core) {}

  /**
   * The partner was taken over while it may have been writing pages it
   * owned (they are dirty here until it says they are clean) and the
   * metadata: on a pool its write may have reached some members and not the
   * others. The store makes their redundancy agree with the data again;
   * our own writes there need not wait (a parity row's parity is always
   * computed afresh from its data, a mirror's copies chunk by chunk), but
   * until this is done a member failing would rebuild those rows wrong.
   * Collect before ownership moves.
   */
  repairAfterPartner(): void {
    if (!this.c.cfg.store.repairsAfterWriter) return;
    const byAlloc = new Map<AllocState, number[]>();
    for (const cp of this.c.cache.dirty) {
      if (cp.alloc.released || cp.alloc.owner[cp.page] !== this.c.partnerId) continue;
      let pages = byAlloc.get(cp.alloc);
      if (pages === undefined) byAlloc.set(cp.alloc, (pages = []));
      pages.push(cp.page);
    }
    const pages = [...byAlloc].flatMap(([alloc, ps]) =>
      pageRuns(ps.sort((a, b) => a - b)).map(([first, count]) => ({ loc: this.c.allocator.location(alloc), first, count })),
    );
    this.c.counters.partnerRepairs++;
    this.c.io.run({ kind: 'repairAfterWriter', pages }).onDone(
      (bytes) => this.c.env.log.info({ ranges: pages.length, bytes }, 'takeover: the pool agrees again where the partner was writing'),
      (err) => this.c.env.log.error({ err: String(err) }, 'takeover: could not repair the pool where the partner was writing'),
    );
  }

  /** Pages may have been written by the partner behind our back (a join, a takeover, a reset): no page's slot memory is trusted any more. */
  distrustSlots(): void {
    this.slotTrust++;
  }

  /** Store, sync, and mark clean the pages of a write made alone; done when all are durable. */
  *writeThrough(writes: StoreWrite[]): Task<void> {
    yield* wait(this.c.tasks.all(writes.map((w) => this.storeWritePage(w.cp, w.version, w.data, w.crc))));
    yield* wait(this.syncSoon());
    for (const w of writes) this.pageStored(w.cp, w.version, w.crc);
  }

  /** Destage what we own until nothing is left or keepGoing says stop; the pages we own still dirty. */
  *drainOwn(keepGoing: () => boolean): Task<number> {
    this.flushDemand++;
    try {
      while (keepGoing()) {
        const left = [...this.c.cache.dirty].filter((cp) => this.c.ownership.owns(cp.alloc, cp.page) && !cp.alloc.released);
        if (left.length === 0 && this.destagesInFlight === 0) break;
        this.kickDestage();
        this.destagePages(left);
        yield* wait(this.c.waits.progress());
      }
    } finally {
      this.flushDemand--;
    }
    return [...this.c.cache.dirty].filter((cp) => this.c.ownership.owns(cp.alloc, cp.page)).length;
  }

  /**
   * Write one page version to the store. Writes of one page are chained so
   * they land in version order, and none starts without a valid lease.
   */
  private storeWritePage(cp: CachePage, version: number, data: Buffer, crc: number, syncAfter = false): Future<void> {
    const alloc = cp.alloc;
    alloc.destagesInFlight++;
    this.destagesInFlight++;
    cp.destagingVersion = version;
    const prev = this.pageWrites.get(cp) ?? null;
    const run = this.c.tasks.spawn(this.writePage(prev, cp, version, data, crc, syncAfter, this.c.membership.generation));
    this.pageWrites.set(cp, run);
    // After those who wait for this write (a destage marks the page clean
    // first): only then is the page no longer being destaged.
    run.whenSettled(() =>
      this.c.tasks.defer(() => {
        alloc.destagesInFlight--;
        this.destagesInFlight--;
        if (this.pageWrites.get(cp) === run) {
          this.pageWrites.delete(cp);
          cp.destagingVersion = 0;
        }
        if (alloc.destagesInFlight === 0 && alloc.released) this.c.allocator.wakeReleases();
        this.c.ownership.recheckDeferredGrants();
        this.c.waits.wakeProgress();
        this.c.writes.serveRoomWaiters();
        this.kickDestage();
      }),
    );
    return run;
  }

  private *writePage(prev: Future<void> | null, cp: CachePage, version: number, data: Buffer, crc: number, syncAfter: boolean, generation: number): Task<void> {
    const alloc = cp.alloc;
    if (prev !== null) yield* settle(prev);
    yield* wait(this.c.membership.ensureLease());
    // Fenced or reset while the write waited: what we held is no longer
    // ours to write, even if the lease was renewed in the new epoch.
    if (this.c.membership.generation !== generation || alloc.released) throw new PagepairError('FENCED', 'controller was fenced or reset; the page is not written');
    const trust = this.slotTrust;
    const slotsOurs = cp.slotsOursAt === trust;
    yield* wait(this.c.io.run({ kind: 'writePage', loc: this.c.allocator.location(alloc), page: cp.page, version, epoch: this.c.membership.epoch, data, crc, slotsOurs }));
    // The store knows which slot it wrote; nobody else writes the page while it stays ours.
    if (this.slotTrust === trust && this.c.ownership.owns(alloc, cp.page)) cp.slotsOursAt = trust;
    // Part of the write as far as the page is concerned: until the store
    // has synced it, the page is still being destaged (it is not clean,
    // not granted away, not written again).
    if (syncAfter) yield* wait(this.syncSoon());
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
    this.c.cache.markClean(cp, version, crc);
    if (this.c.cfg.mirroring && this.c.membership.linkUp) {
      this.c.outbox.pushPage(
        { guid: alloc.record.guid, page: cp.page, version, crc, epoch: this.c.membership.epoch, pageFlags: PageFlag.CLEAN_AT, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: alloc.ownerGen[cp.page]!, data: EMPTY },
        null,
      );
    }
  }

  /** Group commit: every caller waiting here shares the next sync of the store. */
  private syncSoon(): Future<void> {
    const f = this.c.tasks.future<void>();
    this.syncWaiters.push(f);
    if (!this.syncRunning) this.runSync();
    return f;
  }

  private runSync(): void {
    this.syncRunning = true;
    const batch = this.syncWaiters;
    this.syncWaiters = [];
    const sync = this.c.io.run({ kind: 'sync' });
    sync.onDone(
      () => {
        for (const w of batch) w.resolve();
      },
      (err) => {
        // A failed sync is IO_ERROR (io.ts), and never taken for a good one.
        this.c.membership.senseCode = ErrorCode.IO_ERROR;
        for (const w of batch) w.reject(err);
      },
    );
    sync.whenSettled(() => {
      this.syncRunning = false;
      if (this.syncWaiters.length > 0) this.runSync();
    });
  }

  highWatermarkBytes(): number {
    return (this.c.cfg.cacheBytesMax * this.c.cfg.dirtyHighWatermarkPct) / 100;
  }

  /** Whether this controller may write pages to the store now. */
  private mayDestage(): boolean {
    if (this.restMs > 0 && this.c.env.nowMs() < this.restUntilMs) return false;
    switch (this.c.membership.role) {
      case Role.SINGLE:
      case Role.ALONE:
        return true;
      // Not while joining: ownership was just settled, and the partner may
      // still have a destage of the same page in flight (see pushJoinState).
      case Role.MIRRORED:
        return this.c.membership.linkUp && this.c.joining.current === null;
      case Role.STOPPING:
        return this.c.membership.mayDestageWhileStopping();
      default:
        return false;
    }
  }

  kickDestage(): void {
    if (this.destagesInFlight >= this.c.cfg.destageConcurrency || this.c.cache.dirty.size === 0 || !this.mayDestage()) return;
    const dirtyBytes = this.c.cache.bytesDirty;
    if (dirtyBytes > this.highWatermarkBytes()) this.drainingDirty = true;
    else if (dirtyBytes <= (this.c.cfg.cacheBytesMax * this.c.cfg.dirtyLowWatermarkPct) / 100) this.drainingDirty = false;
    // Alone, nothing waits in the cache: the partner's mirrored pages go to the store at once.
    const urgent = this.drainingDirty || this.flushDemand > 0 || this.c.writes.waitingForRoom > 0 || this.c.membership.role === Role.ALONE;
    const now = this.c.env.nowMs();
    let scanned = 0;
    for (const cp of this.c.cache.dirty) {
      if (this.destagesInFlight >= this.c.cfg.destageConcurrency || ++scanned > 4096) break;
      if (!urgent && now - cp.dirtySinceMs < this.c.cfg.dirtyAgeMaxMs) break;
      if (cp.destagingVersion !== 0 || cp.mirrorPending > 0 || cp.alloc.released) continue;
      if (!this.c.ownership.owns(cp.alloc, cp.page)) continue;
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
    return cp !== undefined && cp.dirty && cp.destagingVersion === 0 && cp.mirrorPending === 0 && this.c.ownership.owns(alloc, page);
  }

  /** Destage the dirty pages of a range we own, whatever their age. */
  destageRange(alloc: AllocState, first: number, count: number): void {
    if (!this.mayDestage()) return;
    for (let p = first; p < first + count; p++) {
      const cp = alloc.pages.get(p);
      if (cp !== undefined && cp.dirty && cp.destagingVersion === 0 && cp.mirrorPending === 0 && this.c.ownership.owns(alloc, p)) this.destage(cp);
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
    this.storeWritePage(cp, version, cp.data, crc, true).onDone(
      () => {
        this.c.counters.pagesDestaged++;
        this.restMs = 0;
        this.pageStored(cp, version, crc);
      },
      (err) => {
        if (isPagepairError(err, 'FENCED')) return;
        this.c.counters.destageErrors++;
        this.c.membership.senseCode = ErrorCode.IO_ERROR;
        const now = this.c.env.nowMs();
        this.restMs = Math.min(Math.max(2 * this.restMs, DESTAGE_REST_MS_MIN), DESTAGE_REST_MS_MAX);
        this.restUntilMs = now + this.restMs;
        if (now - this.lastFailureLogMs < DESTAGE_FAILURE_LOG_MS) {
          this.failuresNotLogged++;
          return;
        }
        const notLogged = this.failuresNotLogged;
        this.failuresNotLogged = 0;
        this.lastFailureLogMs = now;
        this.c.env.log.error({ guid: alloc.record.guid, page: cp.page, version, err: String(err), failuresNotLogged: notLogged, restMs: this.restMs }, 'destage failed; page stays dirty');
      },
    );
  }

  *clientFlush(msg: CFlush): Task<number> {
    this.c.membership.requireWritable();
    const allocs = new Set(msg.guid === '' ? this.c.allocator.allocs.values() : [this.c.allocator.lookup(msg.guid)]);
    const targets = this.dirtyTargets((cp) => allocs.has(cp.alloc));
    yield* this.flushTargets(targets);
    return targets.length;
  }

  dirtyTargets(pred: (cp: CachePage) => boolean): FlushTarget[] {
    const targets: FlushTarget[] = [];
    for (const cp of this.c.cache.dirty) if (pred(cp)) targets.push({ cp, version: cp.version });
    return targets;
  }

  /** Done once the store holds every target page at its version or newer, synced (see the end). */
  *flushTargets(targets: FlushTarget[]): Task<void> {
    this.flushDemand++;
    try {
      // Give up only when nothing moved for a whole request timeout.
      let best = Number.MAX_SAFE_INTEGER;
      let lastProgressMs = this.c.env.nowMs();
      let left = targets;
      for (;;) {
        left = left.filter((t) => !t.cp.alloc.released && t.cp.storeVersion < t.version);
        if (left.length === 0) break;
        if (left.length < best) {
          best = left.length;
          lastProgressMs = this.c.env.nowMs();
        } else if (this.c.env.nowMs() - lastProgressMs > this.c.cfg.peerRequestTimeoutMs) {
          throw new PagepairError('BUSY', `flush made no progress in ${this.c.cfg.peerRequestTimeoutMs} ms: ${left.length} pages left`);
        }
        this.c.membership.requireWritable();
        if (this.c.cfg.mirroring) {
          const byAlloc = new Map<AllocState, number[]>();
          for (const t of left) if (!this.c.ownership.owns(t.cp.alloc, t.cp.page)) byAlloc.set(t.cp.alloc, [...(byAlloc.get(t.cp.alloc) ?? []), t.cp.page]);
          const takes = [...byAlloc].flatMap(([alloc, pages]) => pageRuns(pages).map(([f, c]) => this.c.tasks.spawn(this.takeToFlush(alloc, f, c))));
          yield* wait(this.c.tasks.all(takes));
        }
        this.kickDestage();
        this.destagePages(left.map((t) => t.cp));
        // Many pages left: look again once per tick, not after every single
        // destage (that made a large flush quadratic).
        if (left.length > FLUSH_RECHECK_PAGES) yield* wait(this.c.waits.sleep(1));
        else yield* wait(this.c.waits.progress());
      }
    } finally {
      this.flushDemand--;
    }
    // No sync of our own here: a page's storeVersion moves only after a sync
    // that followed its write (destage, write-through; at the partner before
    // it sends "clean at v"), so every target is durable already.
  }

  /**
   * Destage these pages (those we own, dirty and not being written) now,
   * whatever their age and place in the dirty order: a flush's or a
   * shutdown's own pages may sit behind more of the partner's dirty pages
   * than kickDestage looks at in one go.
   */
  private destagePages(pages: readonly CachePage[]): void {
    if (!this.mayDestage()) return;
    for (const cp of pages) {
      if (this.destagesInFlight >= this.c.cfg.destageConcurrency) return;
      if (cp.dirty && !cp.alloc.released && this.destageable(cp.alloc, cp.page) && cp.alloc.pages.get(cp.page) === cp) this.destageWithNeighbours(cp);
    }
  }

  /** Pages the partner owns, taken so that we destage them. */
  private *takeToFlush(alloc: AllocState, first: number, count: number): Task<void> {
    try {
      yield* this.c.ownership.acquireOwnership(alloc, first, count);
    } catch (err) {
      // Pages under the partner's pointer stay the partner's: it destages
      // them itself (by age), and we hear "clean at v".
      if (!isPagepairError(err, 'LOCK_CONFLICT')) throw err;
    }
  }

  /** Dirty pages we own and would destage now or when they age. */
  destageQueueLength(): number {
    let n = 0;
    for (const cp of this.c.cache.dirty) if (this.c.ownership.owns(cp.alloc, cp.page) && cp.destagingVersion === 0) n++;
    return n;
  }
}
