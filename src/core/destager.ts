// ROOM destager

import { PageFlag, Role, type CFlush } from '../protocol/messages.js';
import { ErrorCode, PagepairError, isPagepairError } from '../protocol/errors.js';
import type { AllocState } from './allocation.js';
import type { CachePage } from './page-cache.js';
import { EMPTY, pageRuns } from './shared.js';
import type { Core } from './context.js';

/** Above this many pages left, a flush re-checks per tick instead of per destage. */
export const FLUSH_RECHECK_PAGES = 256;

/** Most pages destaged in one run of neighbours. */
export const DESTAGE_RUN_PAGES_MAX = 32;

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
  constructor(private readonly c: Core) {}

  destagesInFlight = 0;

  private drainingDirty = false;

  flushDemand = 0;

  /** Store writes of a page are chained so they land in version order. */
  private readonly pageWrites = new Map<CachePage, Promise<void>>();

  private syncWaiters: { resolve(): void; reject(err: Error): void }[] = [];

  private syncRunning = false;

  /** Store, sync, and mark clean the pages of a write made alone; resolves when all are durable. */
  async writeThrough(writes: StoreWrite[]): Promise<void> {
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
    const generation = this.c.membership.generation;
    const run = prev.then(async () => {
      await this.c.membership.ensureLease();
      // Fenced or reset while the write waited: what we held is no longer
      // ours to write, even if the lease was renewed in the new epoch.
      if (this.c.membership.generation !== generation || alloc.released) throw new PagepairError('FENCED', 'controller was fenced or reset; the page is not written');
      await this.c.env.store.writePage(this.c.allocator.location(alloc), cp.page, version, this.c.membership.epoch, data, crc);
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
      if (alloc.destagesInFlight === 0 && alloc.released) this.c.allocator.wakeReleases();
      if (this.c.ownership.deferredGrants.length > 0) this.c.ownership.recheckDeferredGrants();
      this.c.waits.wakeProgress();
      this.c.writes.serveRoomWaiters();
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
    this.c.cache.markClean(cp, version, crc);
    if (this.c.cfg.mirroring && this.c.membership.linkUp) {
      this.c.outbox.pushPage(
        { guid: alloc.record.guid, page: cp.page, version, crc, epoch: this.c.membership.epoch, pageFlags: PageFlag.CLEAN_AT, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: alloc.ownerGen[cp.page]!, data: EMPTY },
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
    this.c.env.store.sync().then(
      () => {
        for (const w of batch) w.resolve();
      },
      (err: unknown) => {
        this.c.membership.senseCode = ErrorCode.IO_ERROR;
        const e = new PagepairError('IO_ERROR', `store sync failed: ${String(err)}`);
        for (const w of batch) w.reject(e);
      },
    ).finally(() => {
      this.syncRunning = false;
      if (this.syncWaiters.length > 0) this.runSync();
    });
  }

  highWatermarkBytes(): number {
    return (this.c.cfg.cacheBytesMax * this.c.cfg.dirtyHighWatermarkPct) / 100;
  }

  /** Whether this controller may write pages to the store now. */
  private mayDestage(): boolean {
    switch (this.c.membership.role) {
      case Role.SINGLE:
      case Role.ALONE:
        return true;
      // Not while joining: ownership was just settled, and the partner may
      // still have a destage of the same page in flight (see pushJoinState).
      case Role.MIRRORED:
        return this.c.membership.linkUp && this.c.joining.current === null;
      case Role.STOPPING:
        return this.c.membership.stoppingMayDestage;
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
    const urgent = this.drainingDirty || this.flushDemand > 0 || this.c.writes.roomWaiters.length > 0 || this.c.membership.role === Role.ALONE;
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
    this.storeWritePage(cp, version, cp.data, crc, true).then(
      () => {
        this.c.counters.pagesDestaged++;
        this.pageStored(cp, version, crc);
      },
      (err: unknown) => {
        if (isPagepairError(err, 'FENCED')) return;
        this.c.counters.destageErrors++;
        this.c.membership.senseCode = ErrorCode.IO_ERROR;
        this.c.env.log.error({ guid: alloc.record.guid, page: cp.page, version, err: String(err) }, 'destage failed; page stays dirty');
      },
    );
  }

  async clientFlush(msg: CFlush): Promise<number> {
    this.c.membership.requireWritable();
    const allocs = new Set(msg.guid === '' ? this.c.allocator.allocs.values() : [this.c.allocator.lookup(msg.guid)]);
    const targets = this.dirtyTargets((cp) => allocs.has(cp.alloc));
    await this.flushTargets(targets);
    return targets.length;
  }

  dirtyTargets(pred: (cp: CachePage) => boolean): FlushTarget[] {
    const targets: FlushTarget[] = [];
    for (const cp of this.c.cache.dirty) if (pred(cp)) targets.push({ cp, version: cp.version });
    return targets;
  }

  /** Resolves once the store holds every target page at its version or newer, synced (see the end). */
  async flushTargets(targets: FlushTarget[]): Promise<void> {
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
          await Promise.all(
            [...byAlloc].flatMap(([alloc, pages]) =>
              pageRuns(pages).map(([f, c]) =>
                this.c.ownership.acquireOwnership(alloc, f, c).catch((err: unknown) => {
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
        if (left.length > FLUSH_RECHECK_PAGES) await this.c.waits.sleep(1);
        else await this.c.waits.waitForProgress();
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

  /** Dirty pages we own and would destage now or when they age. */
  destageQueueLength(): number {
    let n = 0;
    for (const cp of this.c.cache.dirty) if (this.c.ownership.owns(cp.alloc, cp.page) && cp.destagingVersion === 0) n++;
    return n;
  }

  // -------------------------------------------------------------------------
  // Plumbing
}
