// The write path: a client write applied at once when everything is in hand
// (writeNow, no task at all), else the long way as a task: own the pages,
// have room and the old contents of partly written pages, apply, and answer
// once the partner holds the pages (or, alone, the store does). Retried
// writes are applied once (retry-tags.ts).

import { crc32c } from '../protocol/crc32c.js';
import { DATA_CRC, type WithDataCrc } from '../protocol/codec.js';
import { MsgType, Role, type ClientReply, type CRewrite, type CWrite } from '../protocol/messages.js';
import { PagepairError, invariant, isPagepairError } from '../protocol/errors.js';
import { overlappingPointer, type AllocState } from './allocation.js';
import type { CachePage } from './page-cache.js';
import { newMirrorOp, type MirrorOp } from './peer-outbox.js';
import { OWNERSHIP_ROUNDS_MAX, EMPTY, knownVersion, overlay, overlayInPlace } from './shared.js';
import type { LocalWrite } from './ownership.js';
import type { StoreWrite } from './destager.js';
import { TAG_DONE, type TaggedWrite, settleTag, tagKey } from './retry-tags.js';
import type { Core } from './context.js';
import { wait, type Future, type Task } from './tasks.js';

/** How far a write got: applied here, or skipped because a retry of it was applied at the partner. */
export interface WriteProgress {
  applied: boolean;
  suppressed: boolean;
}

export interface RoomWaiter {
  bytes: number;
  deadlineMs: number;
  done: Future<void>;
}

/** A client write applied at once, waiting for the partner's answer to its pages. */
export class MirroredWrite implements MirrorOp {
  remaining = 0;
  settled = false;
  readonly touched: CachePage[] = [];
  tag: TaggedWrite | null = null;

  constructor(
    private readonly core: WritePath,
    readonly connId: number,
    readonly msg: CWrite,
    readonly alloc: AllocState,
    readonly first: number,
    readonly count: number,
    readonly key: string | null,
  ) {}

  resolve(): void {
    this.core.mirroredWriteSettled(this, null);
  }

  reject(err: Error): void {
    // Failures are handled after the current event, as the long way does: the
    // link may be going down right now, and that must finish first.
    this.core.later(() => this.core.mirroredWriteSettled(this, err));
  }
}

const wholeNever = (): boolean => false;
/** A snapshot's page only needs its version known: it is written whole, if at all. */
const wholeAlways = (): boolean => true;

/** Snapshots are read only. */
function refuseSnapshotWrite(alloc: AllocState): void {
  if (alloc.record.snapshot === true) throw new PagepairError('READ_ONLY', `${alloc.record.name} is a snapshot: it is read only`, 'guid');
}

export class WritePath {
  private roomWaiters: RoomWaiter[] = [];

  constructor(private readonly c: Core) {}

  /** Writes waiting for room in the cache. */
  get waitingForRoom(): number {
    return this.roomWaiters.length;
  }

  /** Run fn after the event being handled. */
  later(fn: () => void): void {
    this.c.tasks.defer(fn);
  }

  /** Fail every write waiting for room (we were fenced). */
  failRoomWaiters(err: Error): void {
    for (const w of this.roomWaiters.splice(0)) w.done.reject(err);
  }

  /**
   * Applies a plain write at once when nothing has to be waited for: the
   * pages are ours, cached (or overwritten whole with a known version), the
   * cache has room, no pointer or retry is involved and writes need not go
   * through to the store. The reply goes out when the partner answers (or at
   * once, unmirrored). False: nothing was done, take the long way.
   */
  writeNow(connId: number, msg: CWrite): boolean {
    if (msg.pointerId !== 0 || this.roomWaiters.length > 0) return false;
    const mirroring = this.c.cfg.mirroring;
    if (mirroring ? this.c.membership.role !== Role.MIRRORED || !this.c.membership.linkUp : this.c.membership.role !== Role.SINGLE) return false;
    const alloc = this.c.allocator.allocs.get(msg.guid);
    // A snapshot (read only), an origin with snapshots (a write copies first) or one being snapshotted: the long way.
    if (alloc === undefined || alloc.snapshots.length > 0 || alloc.gate !== null || alloc.record.snapshot === true) return false;
    const data = msg.data;
    const offset = msg.offset;
    const end = offset + data.length;
    // Bad fields go the long way too, which names them.
    if (data.length === 0 || data.length > this.c.cfg.limits.requestBytesMax || !Number.isSafeInteger(offset) || offset < 0 || end > alloc.sizeBytes) return false;
    const ps = alloc.record.pageSizeBytes;
    const first = Math.floor(offset / ps);
    const count = Math.floor((end - 1) / ps) - first + 1;
    if (count * ps > this.c.cfg.cacheBytesMax / 2) return false;
    if (alloc.pointers.size > 0 && overlappingPointer(alloc, first, count) !== undefined) return false;
    let key: string | null = null;
    if (msg.clientId !== 0) {
      key = tagKey(msg.clientId, msg.clientSeq);
      if (this.c.tags.taggedWrites.has(key)) return false;
    }
    let missing = 0;
    for (let p = first; p < first + count; p++) {
      if (mirroring && alloc.owner[p] !== this.c.selfId) return false;
      if (alloc.pages.has(p)) continue;
      if (p * ps < offset || (p + 1) * ps > end || Number.isNaN(knownVersion(alloc, p))) return false;
      missing++;
    }
    if (missing > 0 && !this.makeRoomKeeping(alloc, first, count, missing * ps)) return false;

    this.c.counters.clientWrites++;
    this.c.counters.bytesWritten += data.length;
    const now = this.c.env.nowMs();
    const ack = mirroring ? new MirroredWrite(this, connId, msg, alloc, first, count, key) : null;
    // A whole page written: the decoder already read it and knows its CRC.
    const knownCrc = data.length === ps ? (msg as WithDataCrc)[DATA_CRC] : undefined;
    for (let p = first; p < first + count; p++) {
      const cached = alloc.pages.get(p);
      const reusable = cached !== undefined ? this.c.cache.reusableData(cached) : null;
      const pageData = reusable !== null ? overlayInPlace(reusable, p * ps, offset, data) : overlay(cached?.data ?? EMPTY, ps, p * ps, offset, data);
      const version = (cached?.version ?? knownVersion(alloc, p)) + 1;
      const crc = knownCrc ?? crc32c(pageData);
      const cp = this.c.cache.writeDirty(alloc, p, version, crc, this.c.membership.epoch, pageData, now);
      if (ack === null) continue;
      cp.mirrorPending++;
      ack.touched.push(cp);
      const last = p === first + count - 1;
      this.c.outbox.pushPage(
        { guid: alloc.record.guid, page: p, version, crc, epoch: this.c.membership.epoch, pageFlags: 0, pointerId: 0, clientId: last ? msg.clientId : 0, clientSeq: last ? msg.clientSeq : 0, ownerGen: alloc.ownerGen[p]!, data: pageData },
        ack,
      );
    }
    if (ack === null) {
      if (key !== null) this.c.tags.rememberTag(key, TAG_DONE);
      this.afterWrite();
      this.c.env.replyClient(connId, this.writeReply(msg));
      return true;
    }
    this.c.counters.pagesMirroredOut += count;
    if (key !== null) {
      ack.tag = { state: 'running', waiters: [] };
      this.c.tags.rememberTag(key, ack.tag);
    }
    return true;
  }

  /**
   * Room for `bytes` more in the cache without evicting the range's own
   * cached pages: a write of part of one of them is built on its bytes.
   */
  private makeRoomKeeping(alloc: AllocState, first: number, count: number, bytes: number): boolean {
    const kept: CachePage[] = [];
    for (let p = first; p < first + count; p++) {
      const cp = alloc.pages.get(p);
      if (cp !== undefined) {
        this.c.cache.pin(cp);
        kept.push(cp);
      }
    }
    const room = this.c.cache.makeRoom(bytes);
    for (const cp of kept) this.c.cache.unpin(cp);
    return room;
  }

  /**
   * Mirroring pages we applied failed. If the partner refused them (not just
   * lost), the two sides differ now, and only a join puts them back in step.
   */
  private onMirrorRefused(err: unknown): void {
    if (this.c.membership.linkUp && isPagepairError(err) && err.code !== 'PARTNER_LOST') {
      this.c.env.closePeer(`partner refused mirrored pages: ${err.message}`);
      this.c.membership.peerDown('partner refused mirrored pages');
    }
  }

  /** A write applied by writeNow: the partner answered (err null) or the mirror failed. */
  mirroredWriteSettled(w: MirroredWrite, err: Error | null): void {
    if (err !== null) this.onMirrorRefused(err);
    for (const cp of w.touched) this.mirrorSettled(cp);
    this.afterWrite();
    const msg = w.msg;
    if (w.key !== null && w.tag !== null) {
      // Applied here either way: a retry must not apply it again.
      this.c.tags.rememberTag(w.key, err === null ? TAG_DONE : { state: 'held', guid: w.alloc.record.guid, first: w.first, count: w.count });
      settleTag(w.tag, err);
    }
    this.c.env.replyClient(w.connId, err === null ? this.writeReply(msg) : this.c.requests.errorFrame(msg.requestId, MsgType.C_WRITE, this.c.requests.asTyped(err, msg.kind)));
  }

  /** What the end of every write does: deferred grants may go now, and destaging may have to start. */
  private afterWrite(): void {
    this.c.ownership.recheckDeferredGrants();
    if (this.c.cache.bytesDirty > this.c.destager.highWatermarkBytes()) this.c.destager.kickDestage();
  }

  writeReply(req: CWrite): ClientReply {
    return { kind: 'C_WRITE_REPLY', requestId: req.requestId, epoch: this.c.membership.epoch, sender: this.c.selfId, flags: 0 };
  }

  *clientWrite(connId: number, msg: CWrite): Task<void> {
    this.c.membership.requireWritable();
    const alloc = this.c.allocator.lookup(msg.guid);
    this.c.allocator.checkRange(alloc, msg.offset, msg.data.length, 'data');
    refuseSnapshotWrite(alloc);
    const ps = alloc.record.pageSizeBytes;
    const first = Math.floor(msg.offset / ps);
    const count = Math.floor((msg.offset + msg.data.length - 1) / ps) - first + 1;
    this.c.counters.clientWrites++;
    this.c.counters.bytesWritten += msg.data.length;
    if (msg.pointerId !== 0) {
      yield* this.c.pointers.pointerWrite(connId, msg, alloc, first, count);
      return;
    }
    const conflict = overlappingPointer(alloc, first, count);
    if (conflict !== undefined) {
      throw new PagepairError('LOCK_CONFLICT', `pages ${first}..${first + count - 1} of ${alloc.record.guid} are held by pointer ${conflict.id}`);
    }
    const compose = (page: number, old: Buffer): Buffer => overlay(old, ps, page * ps, msg.offset, msg.data);
    const end = msg.offset + msg.data.length;
    const whole = (page: number): boolean => page * ps >= msg.offset && (page + 1) * ps <= end;
    if (msg.clientId === 0) {
      yield* this.writePages(alloc, first, count, compose, null, { applied: false, suppressed: false }, whole);
      return;
    }
    const key = tagKey(msg.clientId, msg.clientSeq);
    const known = this.c.tags.taggedWrites.get(key);
    if (known !== undefined) {
      // A retry of a write we have seen: never apply it a second time.
      if (known.state === 'running') {
        const outcome = this.c.tasks.future<void>();
        known.waiters.push((err) => (err === null ? outcome.resolve() : outcome.reject(err)));
        yield* wait(outcome);
      } else if (known.state === 'held') {
        yield* this.makeDurable(alloc, first, count);
        this.c.tags.rememberTag(key, TAG_DONE);
      }
      return;
    }
    const progress: WriteProgress = { applied: false, suppressed: false };
    const done = this.c.tasks.spawn(this.writePages(alloc, first, count, compose, { clientId: msg.clientId, clientSeq: msg.clientSeq }, progress, whole));
    const running: TaggedWrite = { state: 'running', waiters: [] };
    this.c.tags.rememberTag(key, running);
    try {
      yield* wait(done);
      // Not applied here because the partner's mirrored pages say a retry of
      // it was: alone, those pages must reach the store before the answer.
      if (progress.suppressed) yield* this.makeDurable(alloc, first, count);
      this.c.tags.rememberTag(key, TAG_DONE);
      settleTag(running, null);
    } catch (err) {
      if (progress.applied) this.c.tags.rememberTag(key, { state: 'held', guid: alloc.record.guid, first, count });
      // Forget the tag only if it is still our attempt's: the partner's
      // mirrored pages may have said meanwhile that a retry of this write was
      // applied there ("held"), and that must outlive this attempt's failure.
      else if (this.c.tags.taggedWrites.get(key) === running) this.c.tags.taggedWrites.delete(key);
      settleTag(running, err instanceof Error ? err : new PagepairError('INTERNAL', String(err)));
      throw err;
    }
  }

  /**
   * Whole pages [first, first+count) written with the bytes `pageData`
   * gives, by the ordinary write path (ownership, copies into snapshots,
   * mirrored or through to the store): a snapshot's rollback.
   */
  *writeWholePages(alloc: AllocState, first: number, count: number, pageData: (page: number) => Buffer): Task<void> {
    this.c.membership.requireWritable();
    refuseSnapshotWrite(alloc);
    const conflict = overlappingPointer(alloc, first, count);
    if (conflict !== undefined) throw new PagepairError('LOCK_CONFLICT', `pages ${first}..${first + count - 1} of ${alloc.record.guid} are held by pointer ${conflict.id}`);
    yield* this.writePages(alloc, first, count, (page) => Buffer.from(pageData(page)), null, { applied: false, suppressed: false }, wholeAlways);
  }

  /** A write we hold is as safe as an acknowledged one: mirrored, or in the store when alone. */
  private *makeDurable(alloc: AllocState, first: number, count: number): Task<void> {
    if (!this.c.membership.writesThrough()) return;
    yield* this.c.destager.flushTargets(this.c.destager.dirtyTargets((cp) => cp.alloc === alloc && cp.page >= first && cp.page < first + count));
  }

  /**
   * Write pages [first, first+count): own them, have their current contents
   * where the write is partial, apply, then resolve once the partner holds
   * them (mirrored) or the store does (alone).
   */
  private *writePages(
    alloc: AllocState,
    first: number,
    count: number,
    compose: (page: number, old: Buffer) => Buffer,
    tag: { clientId: number; clientSeq: number } | null,
    progress: WriteProgress,
    wholePages: (page: number) => boolean = () => false,
  ): Task<void> {
    const bytes = count * alloc.record.pageSizeBytes * (1 + alloc.snapshots.length);
    if (bytes > this.c.cfg.cacheBytesMax / 2) {
      const copies = alloc.snapshots.length > 0 ? ` with the copies for its ${alloc.snapshots.length} snapshots` : '';
      throw new PagepairError('TOO_LARGE', `a write of ${count} pages (${bytes} bytes${copies}) does not fit half the cache (${this.c.cfg.cacheBytesMax} bytes)`, 'data');
    }
    const op: LocalWrite = { alloc, first, count };
    this.c.ownership.activeWrites.add(op);
    const touched: CachePage[] = [];
    const pinned: CachePage[] = [];
    try {
      for (let round = 0; ; round++) {
        if (round >= OWNERSHIP_ROUNDS_MAX) throw new PagepairError('BUSY', `write to ${alloc.record.guid} kept losing its pages to the partner`);
        if (alloc.gate !== null) {
          // A snapshot of it is being made here: nothing of it applies until it is.
          yield* wait(alloc.gate);
          continue;
        }
        // Snapshots whose pages may need the old bytes first: ours to write, their versions known.
        const snaps = alloc.snapshots;
        const whole = snaps.length > 0 ? wholeNever : wholePages;
        if (this.c.cfg.mirroring) {
          yield* this.c.ownership.acquireOwnership(alloc, first, count);
          for (const s of snaps) yield* this.c.ownership.acquireOwnership(s, first, count);
        }
        let missing = this.missingBytes(alloc, first, count);
        for (const s of snaps) missing += this.missingBytes(s, first, count);
        yield* wait(this.waitForRoom(missing));
        yield* this.c.reads.stageAndPin(alloc, first, count, pinned, whole);
        for (const s of snaps) yield* this.c.reads.stageAndPin(s, first, count, pinned, wholeAlways);
        if (alloc.released) throw this.c.allocator.goneError(alloc);
        this.c.membership.requireWritable();
        if (alloc.gate !== null || alloc.snapshots !== snaps) continue;
        if (!this.c.ownership.ownsRange(alloc, first, count) || !this.c.reads.readyRange(alloc, first, count, whole)) continue;
        if (!snaps.every((s) => !s.released && this.c.ownership.ownsRange(s, first, count) && this.c.reads.readyRange(s, first, count, wholeAlways))) continue;
        const conflict = overlappingPointer(alloc, first, count);
        if (conflict !== undefined) throw new PagepairError('LOCK_CONFLICT', `pages are held by pointer ${conflict.id}`);
        // A retry of this write may have been applied at the partner while we
        // waited (its mirrored pages told us): this attempt must not apply too.
        if (tag !== null && this.c.tags.taggedWrites.get(tagKey(tag.clientId, tag.clientSeq))?.state === 'held') {
          this.c.counters.retriesSuppressed++;
          progress.suppressed = true;
          return;
        }
        // Everything is in hand: apply without yielding.
        const now = this.c.env.nowMs();
        const through = this.c.membership.writesThrough();
        const mirror = this.c.cfg.mirroring && this.c.membership.linkUp ? this.mirrorOp() : null;
        const toStore: StoreWrite[] = [];
        for (let p = first; p < first + count; p++) {
          const cached = alloc.pages.get(p);
          // The snapshots that still share this page get its bytes before it changes, sent ahead of it.
          for (const s of snaps) {
            const sv = s.pages.get(p)?.version ?? knownVersion(s, p);
            if (sv !== 0) continue;
            invariant(cached !== undefined, 'an origin page is staged before its snapshots copy it');
            const copy = Buffer.from(cached.data);
            const scp = this.c.cache.writeDirty(s, p, 1, cached.crc, this.c.membership.epoch, copy, now);
            this.c.counters.snapshotCopies++;
            if (mirror === null && !through) continue;
            scp.mirrorPending++;
            touched.push(scp);
            if (through) toStore.push({ cp: scp, version: 1, data: copy, crc: cached.crc });
            if (mirror !== null) {
              this.c.outbox.pushPage({ guid: s.record.guid, page: p, version: 1, crc: cached.crc, epoch: this.c.membership.epoch, pageFlags: 0, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: s.ownerGen[p]!, data: copy }, mirror.op);
            }
          }
          // A page overwritten whole need not be read first when its version is known.
          const data = compose(p, cached?.data ?? EMPTY);
          const version = (cached?.version ?? knownVersion(alloc, p)) + 1;
          const crc = crc32c(data);
          const cp = this.c.cache.writeDirty(alloc, p, version, crc, this.c.membership.epoch, data, now);
          if (mirror === null && !through) continue;
          cp.mirrorPending++;
          touched.push(cp);
          if (through) toStore.push({ cp, version, data, crc });
          if (mirror !== null) {
            const last = p === first + count - 1 && tag !== null;
            this.c.outbox.pushPage(
              { guid: alloc.record.guid, page: p, version, crc, epoch: this.c.membership.epoch, pageFlags: 0, pointerId: 0, clientId: last ? tag.clientId : 0, clientSeq: last ? tag.clientSeq : 0, ownerGen: alloc.ownerGen[p]!, data },
              mirror.op,
            );
          }
        }
        progress.applied = true;
        if (mirror !== null) this.c.counters.pagesMirroredOut += count;
        if (through) {
          // Alone, the store is the second copy; a partner still catching up gets the pages too, but is not waited for.
          yield* this.c.destager.writeThrough(toStore);
        } else if (mirror !== null) {
          try {
            yield* wait(mirror.done);
          } catch (err) {
            this.onMirrorRefused(err);
            throw err;
          }
        }
        return;
      }
    } finally {
      this.c.ownership.activeWrites.delete(op);
      for (const cp of touched) this.mirrorSettled(cp);
      for (const cp of pinned) this.c.cache.unpin(cp);
      this.afterWrite();
    }
  }

  /** Bytes the pages of a range not yet cached will take. */
  private missingBytes(alloc: AllocState, first: number, count: number): number {
    let missing = 0;
    for (let p = first; p < first + count; p++) if (!alloc.pages.has(p)) missing++;
    return missing * alloc.record.pageSizeBytes;
  }

  /** Settles once `bytes` more fit in the cache; CACHE_FULL after cacheFullWaitMs. */
  private waitForRoom(bytes: number): Future<void> {
    if (bytes === 0 || this.c.cache.makeRoom(bytes)) return this.c.tasks.resolved(undefined);
    const done = this.c.tasks.future<void>();
    this.roomWaiters.push({ bytes, deadlineMs: this.c.env.nowMs() + this.c.cfg.cacheFullWaitMs, done });
    this.c.destager.kickDestage();
    return done;
  }

  /** Pages sent to the partner together: `done` settles when it has answered for all of them. */
  mirrorOp(): { op: MirrorOp; done: Future<void> } {
    const done = this.c.tasks.future<void>();
    return { op: newMirrorOp(() => done.resolve(), (err) => done.reject(err)), done };
  }

  mirrorSettled(cp: CachePage): void {
    cp.mirrorPending--;
    if (cp.mirrorPending === 0 && cp.waiters !== null) {
      const waiters = cp.waiters;
      cp.waiters = null;
      for (const w of waiters) w();
    }
  }

  /**
   * Verify's repair (C_REWRITE): our copy of the page, as a read through us
   * returns it, written again as a new version by the ordinary write path,
   * so the partner (or, alone, the store) gets it. The bytes are taken as the
   * write is applied, not before: a client write that lands meanwhile is
   * what both sides keep.
   */
  *clientRewrite(msg: CRewrite): Task<{ version: number; crc: number }> {
    this.c.membership.requireWritable();
    const alloc = this.c.allocator.lookup(msg.guid);
    this.c.allocator.checkPageRange(alloc, msg.page, 1);
    refuseSnapshotWrite(alloc);
    const conflict = overlappingPointer(alloc, msg.page, 1);
    if (conflict !== undefined) throw new PagepairError('LOCK_CONFLICT', `page ${msg.page} of ${alloc.record.guid} is held by pointer ${conflict.id}`);
    yield* this.writePages(alloc, msg.page, 1, (_page, current) => Buffer.from(current), null, { applied: false, suppressed: false });
    const cp = alloc.pages.get(msg.page);
    return cp === undefined ? { version: knownVersion(alloc, msg.page), crc: 0 } : { version: cp.version, crc: cp.crc };
  }

  serveRoomWaiters(): void {
    if (this.roomWaiters.length === 0) return;
    const now = this.c.env.nowMs();
    const keep: RoomWaiter[] = [];
    for (const w of this.roomWaiters) {
      if (this.c.cache.makeRoom(w.bytes)) w.done.resolve();
      else if (now > w.deadlineMs) w.done.reject(new PagepairError('CACHE_FULL', `no room for ${w.bytes} bytes after ${this.c.cfg.cacheFullWaitMs} ms`));
      else keep.push(w);
    }
    this.roomWaiters = keep;
  }
}
