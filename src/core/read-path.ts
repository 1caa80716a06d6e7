// The read path: a read of cached, settled pages answered at once (readNow),
// else as a task that stages pages from the store and waits out a write of
// ours still in flight to the partner, so no read sees what the partner does
// not hold.

import { setDataCrc } from '../protocol/codec.js';
import { Role, type ClientReply, type CRead } from '../protocol/messages.js';
import { PagepairError } from '../protocol/errors.js';
import type { AllocState, PointerState } from './allocation.js';
import type { CachePage } from './page-cache.js';
import { knownVersion } from './shared.js';
import type { StoredPage } from '../protocol/store-records.js';
import type { Core } from './context.js';
import { wait, type Future, type Task } from './tasks.js';

/** Pages whose torn store slot is logged one by one; past this, only counted (tornSlotsRecovered). */
export const TORN_SLOTS_LOGGED_MAX = 1024;

export class ReadPath {
  /** Pages ("guid:page") whose torn store slot was logged already: once per page (bounded). */
  private readonly tornSlotsLogged = new Set<string>();

  constructor(private readonly c: Core) {}

  /**
   * The reply to a read served from the cache at once, or null: not every
   * page is cached and settled, or something needs checking (the long way).
   * A read within one page hands out the cached buffer itself (lent: it is
   * not changed in place from then on).
   */
  readNow(msg: CRead): ClientReply | null {
    if (msg.pointerId !== 0) return null;
    const role = this.c.membership.role;
    if (role !== Role.MIRRORED && role !== Role.SINGLE && role !== Role.ALONE) return null;
    if (this.c.membership.arbiter !== null && !this.c.membership.arbiter.leaseValid()) return null;
    const alloc = this.c.allocator.allocs.get(msg.guid);
    // A snapshot's page may be its origin's: the long way.
    if (alloc === undefined || alloc.record.snapshot === true) return null;
    const offset = msg.offset;
    const length = msg.length;
    const end = offset + length;
    if (!(length > 0) || length > this.c.cfg.limits.requestBytesMax || !Number.isSafeInteger(offset) || offset < 0 || end > alloc.sizeBytes) return null;
    const ps = alloc.record.pageSizeBytes;
    const first = Math.floor(offset / ps);
    const last = Math.floor((end - 1) / ps);
    for (let p = first; p <= last; p++) {
      const cp = alloc.pages.get(p);
      if (cp === undefined || cp.mirrorPending !== 0) return null;
    }
    this.c.counters.clientReads++;
    this.c.counters.bytesRead += length;
    if (first === last) {
      const cp = this.c.cache.get(alloc, first)!;
      const from = offset - first * ps;
      const page = this.c.cache.lend(cp);
      // A whole page: its CRC is known, so the encoder need not read it.
      if (from === 0 && length === ps) return setDataCrc(this.readReply(msg, page), cp.crc);
      return this.readReply(msg, page.subarray(from, from + length));
    }
    const out = Buffer.allocUnsafe(length);
    for (let p = first; p <= last; p++) {
      const cp = this.c.cache.get(alloc, p)!;
      const pageStart = p * ps;
      const from = Math.max(offset, pageStart);
      const to = Math.min(end, pageStart + ps);
      cp.data.copy(out, from - offset, from - pageStart, to - pageStart);
    }
    return this.readReply(msg, out);
  }

  readReply(req: CRead, data: Buffer): ClientReply {
    return { kind: 'C_READ_REPLY', requestId: req.requestId, epoch: this.c.membership.epoch, sender: this.c.selfId, flags: 0, data };
  }

  *clientRead(connId: number, msg: CRead): Task<Buffer> {
    this.c.membership.requireReadable();
    const alloc = this.c.allocator.lookup(msg.guid);
    this.c.allocator.checkRange(alloc, msg.offset, msg.length, 'length');
    // A controller that was paused may have been taken over meanwhile: it
    // serves no read from its cache until the store says it still may.
    if (this.c.membership.arbiter !== null && !this.c.membership.arbiter.leaseValid()) {
      yield* wait(this.c.membership.ensureLease());
      this.c.membership.requireReadable();
      if (alloc.released) throw this.c.allocator.goneError(alloc);
    }
    this.c.counters.clientReads++;
    this.c.counters.bytesRead += msg.length;
    const ps = alloc.record.pageSizeBytes;
    const first = Math.floor(msg.offset / ps);
    const last = Math.floor((msg.offset + msg.length - 1) / ps);
    let pointer: PointerState | undefined;
    if (msg.pointerId !== 0) {
      pointer = this.c.pointers.myPointer(connId, msg.pointerId, alloc);
      if (first < pointer.firstPage || last >= pointer.firstPage + pointer.pageCount) {
        throw new PagepairError('OUT_OF_RANGE', `read reaches outside pointer ${pointer.id}`, 'offset');
      }
      pointer.lastUsedMs = this.c.env.nowMs();
    }
    const out = Buffer.allocUnsafe(msg.length);
    const snapshot = alloc.record.snapshot === true;
    for (let p = first; p <= last; p++) {
      const shadow = pointer?.shadows.get(p);
      const data = shadow !== undefined ? shadow.data : snapshot ? yield* this.snapshotPage(alloc, p) : (yield* this.readablePage(alloc, p)).data;
      const pageStart = p * ps;
      const from = Math.max(msg.offset, pageStart);
      const to = Math.min(msg.offset + msg.length, pageStart + ps);
      data.copy(out, from - msg.offset, from - pageStart, to - pageStart);
    }
    return out;
  }

  /** A page whose contents the partner holds too: cached, and no write of it in flight. */
  *readablePage(alloc: AllocState, page: number): Task<CachePage> {
    for (;;) {
      const cp = this.c.cache.get(alloc, page) ?? (yield* wait(this.stagePage(alloc, page)));
      if (cp.mirrorPending === 0) return cp;
      const settled = this.c.tasks.future<void>();
      (cp.waiters ??= []).push(() => settled.resolve());
      yield* wait(settled);
      if (alloc.released) throw this.c.allocator.goneError(alloc);
      // The write we waited for may have failed (the link dropped): then we
      // are arbitrating, and what we hold may not survive it.
      this.c.membership.requireReadable();
    }
  }

  /**
   * A snapshot's bytes for one page: its own copy once it has one (version
   * above 0), else its origin's page, taken in the same event as the check
   * that the snapshot still has no copy (a write that copies first may land
   * while the origin's page is read; then look again).
   */
  *snapshotPage(snap: AllocState, page: number): Task<Buffer> {
    for (;;) {
      const own = yield* this.readablePage(snap, page);
      if (own.version > 0) return own.data;
      const origin = snap.origin;
      if (origin === null || origin.released) throw new PagepairError('NOT_ACTIVE', `the volume ${snap.record.name} is a snapshot of is not here; retry`);
      const theirs = yield* this.readablePage(origin, page);
      if (snap.released) throw this.c.allocator.goneError(snap);
      const now = snap.pages.get(page);
      const version = now !== undefined ? now.version : knownVersion(snap, page);
      if (version === 0 && snap.origin === origin) return theirs.data;
    }
  }

  *stageRange(alloc: AllocState, first: number, count: number): Task<void> {
    const waits: Future<CachePage>[] = [];
    for (let p = first; p < first + count; p++) if (!alloc.pages.has(p)) waits.push(this.stagePage(alloc, p));
    if (waits.length > 0) yield* wait(this.c.tasks.all(waits));
  }

  /**
   * Stage the range and pin each page as it arrives, so staging the last
   * cannot evict the first. Pages the write covers whole and whose version is
   * known are not read at all.
   */
  *stageAndPin(alloc: AllocState, first: number, count: number, pinned: CachePage[], wholePages: (page: number) => boolean): Task<void> {
    const pin = (cp: CachePage): void => {
      if (pinned.includes(cp)) return;
      this.c.cache.pin(cp);
      pinned.push(cp);
    };
    const waits: Future<void>[] = [];
    for (let p = first; p < first + count; p++) {
      const cp = alloc.pages.get(p);
      if (cp !== undefined) pin(cp);
      else if (!(wholePages(p) && !Number.isNaN(knownVersion(alloc, p)))) waits.push(this.c.tasks.spawn(this.stageThen(alloc, p, pin)));
    }
    if (waits.length > 0) yield* wait(this.c.tasks.all(waits));
  }

  private *stageThen(alloc: AllocState, page: number, then: (cp: CachePage) => void): Task<void> {
    then(yield* wait(this.stagePage(alloc, page)));
  }

  /** Every page is cached, or is overwritten whole with a known version. */
  readyRange(alloc: AllocState, first: number, count: number, wholePages: (page: number) => boolean): boolean {
    for (let p = first; p < first + count; p++) {
      if (!alloc.pages.has(p) && !(wholePages(p) && !Number.isNaN(knownVersion(alloc, p)))) return false;
    }
    return true;
  }

  /** The page read from the store into the cache; one read at a time per page. */
  private stagePage(alloc: AllocState, page: number): Future<CachePage> {
    const cached = alloc.pages.get(page);
    if (cached !== undefined) return this.c.tasks.resolved(cached);
    const inFlight = alloc.staging.get(page);
    if (inFlight !== undefined) return inFlight.future;
    const entry = { future: null as unknown as Future<CachePage>, superseded: false };
    entry.future = this.c.tasks.spawn(this.stage(alloc, page, entry));
    alloc.staging.set(page, entry);
    return entry.future;
  }

  private *stage(alloc: AllocState, page: number, entry: { superseded: boolean }): Task<CachePage> {
    let sp: StoredPage;
    try {
      sp = yield* wait(this.c.io.run({ kind: 'readPage', loc: this.c.allocator.location(alloc), page }));
    } finally {
      alloc.staging.delete(page);
    }
    if (alloc.released) throw this.c.allocator.goneError(alloc);
    const now = alloc.pages.get(page);
    if (now !== undefined) return now;
    // A newer version arrived and left again while we read: read anew.
    if (entry.superseded) return yield* wait(this.stagePage(alloc, page));
    this.c.counters.pagesStaged++;
    if (sp.tornSlot !== undefined) this.noteTornSlot(alloc, page, sp.header.version, sp.tornSlot);
    const cp = this.c.cache.insertClean(alloc, page, sp.header.version, sp.header.crc, sp.header.epoch, sp.data);
    cp.storeVersion = sp.header.version;
    return cp;
  }

  /** A staged page's newer store slot was damaged (a torn write) and the older copy came back instead. */
  private noteTornSlot(alloc: AllocState, page: number, version: number, reason: string): void {
    this.c.counters.tornSlotsRecovered++;
    const key = `${alloc.record.guid}:${page}`;
    if (this.tornSlotsLogged.has(key) || this.tornSlotsLogged.size >= TORN_SLOTS_LOGGED_MAX) return;
    this.tornSlotsLogged.add(key);
    this.c.env.log.warn({ guid: alloc.record.guid, page, version, reason }, 'store: a slot of this page is damaged (torn write); its other copy was used');
  }

  supersedeStaging(alloc: AllocState, page: number): void {
    const s = alloc.staging.get(page);
    if (s !== undefined) s.superseded = true;
  }
}
