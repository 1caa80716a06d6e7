// Pointers: a client holds a range of pages open to read (pinned in the
// cache) or to write (shadow pages, mirrored to the partner as they are
// written and installed at both on commit). ALLOCATE_READ, ALLOCATE_WRITE and
// RELEASE_POINTER tell the partner; a pointer not used within its lease, or
// whose client went away, is given back.

import { crc32c } from '../protocol/crc32c.js';
import { PageFlag, PointerMode, Role, type AllocateRead, type AllocateWrite, type CClosePointer, type COpenPointer, type CWrite, type ReleasePointer } from '../protocol/messages.js';
import { PagepairError, invariant } from '../protocol/errors.js';
import { overlappingPointer, type AllocState, type PointerState } from './allocation.js';
import type { CachePage } from './page-cache.js';
import { OWNERSHIP_ROUNDS_MAX, overlay } from './shared.js';
import type { StoreWrite } from './destager.js';
import type { Core } from './context.js';
import { settle, wait, type Task } from './tasks.js';

export class Pointers {
  readonly open = new Map<number, PointerState>();
  private nextPointerSeq = 1;

  constructor(private readonly c: Core) {}

  /**
   * The link is gone. The partner forgets every pointer with it, our write
   * pointers' shadow pages included: committing one later would change our
   * side only.
   */
  linkDown(): void {
    for (const p of [...this.open.values()]) {
      if (p.holderId !== this.c.selfId || p.mode === PointerMode.WRITE) this.dropPointer(p);
    }
  }

  /** Pointers of ours unused past pointerLeaseMs are given back. */
  expireLeases(now: number): void {
    for (const p of [...this.open.values()]) {
      if (p.holderId === this.c.selfId && now - p.lastUsedMs > this.c.cfg.pointerLeaseMs) {
        this.c.env.log.warn({ pointerId: p.id, guid: p.alloc.record.guid }, 'pointer lease ran out; giving it back');
        this.c.tasks.spawn(this.closePointer(p, false));
      }
    }
  }

  /** A client connection closed: its pointers are given back. */
  clientGone(connId: number): void {
    for (const p of [...this.open.values()]) {
      if (p.holderId === this.c.selfId && p.connId === connId) this.c.tasks.spawn(this.closePointer(p, false));
    }
  }

  *clientOpenPointer(connId: number, msg: COpenPointer): Task<number> {
    const alloc = this.c.allocator.lookup(msg.guid);
    this.c.allocator.checkPageRange(alloc, msg.firstPage, msg.pageCount);
    const bytes = msg.pageCount * alloc.record.pageSizeBytes;
    if (bytes > this.c.cfg.limits.requestBytesMax) {
      throw new PagepairError('TOO_LARGE', `a pointer of ${bytes} bytes is over requestBytesMax ${this.c.cfg.limits.requestBytesMax}`, 'pageCount');
    }
    const write = msg.mode === PointerMode.WRITE;
    if (write || alloc.record.snapshot === true) this.c.snapshots.refuseWritePointer(alloc);
    if (write) this.c.membership.requireWritable();
    else this.c.membership.requireReadable();
    const id = this.newPointerId();
    const pointer: PointerState = {
      id,
      mode: msg.mode,
      alloc,
      firstPage: msg.firstPage,
      pageCount: msg.pageCount,
      holderId: this.c.selfId,
      connId,
      lastUsedMs: this.c.env.nowMs(),
      shadows: new Map(),
      pinned: [],
      mirrored: this.c.membership.role === Role.MIRRORED,
    };
    const conflictFor = (): PointerState | undefined => {
      const c = overlappingPointer(alloc, msg.firstPage, msg.pageCount, pointer);
      return c !== undefined && (write || c.mode === PointerMode.WRITE) ? c : undefined;
    };
    const checkConflict = (): void => {
      const c = conflictFor();
      if (c !== undefined) throw new PagepairError('LOCK_CONFLICT', `pages overlap pointer ${c.id}`);
    };
    checkConflict();
    if (write) {
      // Owned at the moment the pointer is registered: a TAKE of the
      // partner's may be granted between taking the pages and coming back
      // here, and a pointer on pages we do not own would write them.
      for (let round = 0; ; round++) {
        if (round >= OWNERSHIP_ROUNDS_MAX) throw new PagepairError('BUSY', `write pointer on ${alloc.record.guid} kept losing its pages to the partner`);
        if (this.c.cfg.mirroring) yield* this.c.ownership.acquireOwnership(alloc, msg.firstPage, msg.pageCount);
        if (alloc.released) throw this.c.allocator.goneError(alloc);
        checkConflict();
        if (this.c.ownership.ownsRange(alloc, msg.firstPage, msg.pageCount)) break;
      }
      this.registerPointer(pointer);
      try {
        if (pointer.mirrored) yield* wait(this.c.requests.request({ kind: 'ALLOCATE_WRITE', guid: alloc.record.guid, firstPage: msg.firstPage, pageCount: msg.pageCount, pointerId: id }));
      } catch (err) {
        this.dropPointer(pointer);
        throw err;
      }
    } else {
      this.registerPointer(pointer);
      try {
        yield* this.pinRange(pointer);
        if (pointer.mirrored) {
          yield* wait(this.c.requests.request({ kind: 'ALLOCATE_READ', guid: alloc.record.guid, firstPage: msg.firstPage, pageCount: msg.pageCount, pointerId: id }));
        }
      } catch (err) {
        this.dropPointer(pointer);
        throw err;
      }
    }
    return id;
  }

  private *pinRange(pointer: PointerState): Task<void> {
    for (let p = pointer.firstPage; p < pointer.firstPage + pointer.pageCount; p++) {
      const cp = yield* this.c.reads.readablePage(pointer.alloc, p);
      if (!this.open.has(pointer.id)) return; // dropped meanwhile
      this.c.cache.pin(cp);
      pointer.pinned.push(cp);
    }
  }

  private newPointerId(): number {
    // The controller id in the top byte keeps the two sides' ids apart.
    const id = ((this.c.selfId << 24) | (this.nextPointerSeq & 0xff_ffff)) >>> 0;
    this.nextPointerSeq = (this.nextPointerSeq % 0xff_ffff) + 1;
    return id;
  }

  private registerPointer(p: PointerState): void {
    this.open.set(p.id, p);
    p.alloc.pointers.add(p);
  }

  dropPointer(p: PointerState): void {
    if (this.open.get(p.id) !== p) return;
    this.open.delete(p.id);
    p.alloc.pointers.delete(p);
    for (const cp of p.pinned) this.c.cache.unpin(cp);
    p.pinned.length = 0;
    p.shadows.clear();
    this.c.ownership.recheckDeferredGrants();
  }

  myPointer(connId: number, pointerId: number, alloc?: AllocState): PointerState {
    const p = this.open.get(pointerId);
    if (p === undefined || p.holderId !== this.c.selfId || p.connId !== connId || (alloc !== undefined && p.alloc !== alloc)) {
      throw new PagepairError('POINTER_UNKNOWN', `no pointer ${pointerId} open on this connection${alloc ? ` for ${alloc.record.guid}` : ''}`, 'pointerId');
    }
    return p;
  }

  *pointerWrite(connId: number, msg: CWrite, alloc: AllocState, first: number, count: number): Task<void> {
    const p = this.myPointer(connId, msg.pointerId, alloc);
    if (p.mode !== PointerMode.WRITE) throw new PagepairError('LOCK_CONFLICT', `pointer ${p.id} is a read pointer`, 'pointerId');
    if (first < p.firstPage || first + count > p.firstPage + p.pageCount) {
      throw new PagepairError('OUT_OF_RANGE', `write reaches outside pointer ${p.id}`, 'offset');
    }
    p.lastUsedMs = this.c.env.nowMs();
    yield* this.c.reads.stageRange(alloc, first, count);
    if (this.open.get(p.id) !== p) throw new PagepairError('POINTER_UNKNOWN', `pointer ${p.id} was given back`, 'pointerId');
    const ps = alloc.record.pageSizeBytes;
    // Only a pointer the partner knows of has shadow pages there.
    const op = p.mirrored ? this.c.writes.mirrorOp() : null;
    for (let page = first; page < first + count; page++) {
      const cp = alloc.pages.get(page);
      invariant(cp !== undefined, 'page present after staging');
      const prev = p.shadows.get(page);
      const data = overlay(prev?.data ?? cp.data, ps, page * ps, msg.offset, msg.data);
      const shadow = { version: prev?.version ?? cp.version + 1, crc: crc32c(data), data };
      p.shadows.set(page, shadow);
      if (op !== null) {
        this.c.outbox.pushPage(
          { guid: alloc.record.guid, page, version: shadow.version, crc: shadow.crc, epoch: this.c.membership.epoch, pageFlags: PageFlag.POINTER_PENDING, pointerId: p.id, clientId: 0, clientSeq: 0, ownerGen: alloc.ownerGen[page]!, data },
          op.op,
        );
      }
    }
    if (op !== null) yield* wait(op.done);
  }

  *clientClosePointer(connId: number, msg: CClosePointer): Task<number> {
    const p = this.myPointer(connId, msg.pointerId);
    // Opened after an unlock, which lasts as long as the connection; checked all the same.
    this.c.access.check(connId, p.alloc);
    return yield* this.closePointer(p, msg.commit);
  }

  *closePointer(p: PointerState, commit: boolean): Task<number> {
    if (p.mode === PointerMode.READ) {
      this.dropPointer(p);
      if (p.mirrored && this.c.membership.linkUp) yield* settle(this.c.requests.request({ kind: 'RELEASE_POINTER', pointerId: p.id, commit: false }));
      return 0;
    }
    if (!commit || p.shadows.size === 0) {
      this.dropPointer(p);
      if (p.mirrored && this.c.membership.linkUp) yield* wait(this.c.requests.request({ kind: 'RELEASE_POINTER', pointerId: p.id, commit: false }));
      return 0;
    }
    this.c.membership.requireWritable();
    const alloc = p.alloc;
    if (alloc.released) throw this.c.allocator.goneError(alloc);
    const now = this.c.env.nowMs();
    const shadows = [...p.shadows];
    const touched: CachePage[] = [];
    this.dropPointer(p);
    // The partner holds the shadows of a pointer it knows and installs them
    // on RELEASE_POINTER; alone, the pages go through to the store; a pointer
    // opened alone and committed mirrored sends its pages as plain writes.
    const through = this.c.membership.writesThrough();
    const plain = !p.mirrored && this.c.membership.role === Role.MIRRORED ? this.c.writes.mirrorOp() : null;
    const toStore: StoreWrite[] = [];
    for (const [page, s] of shadows) {
      const cp = this.c.cache.writeDirty(alloc, page, s.version, s.crc, this.c.membership.epoch, s.data, now);
      if (!p.mirrored && plain === null && !through) continue;
      cp.mirrorPending++;
      touched.push(cp);
      if (through) toStore.push({ cp, version: s.version, data: s.data, crc: s.crc });
      if (plain !== null) {
        this.c.outbox.pushPage({ guid: alloc.record.guid, page, version: s.version, crc: s.crc, epoch: this.c.membership.epoch, pageFlags: 0, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: alloc.ownerGen[page]!, data: s.data }, plain.op);
      }
    }
    try {
      if (p.mirrored) yield* wait(this.c.requests.request({ kind: 'RELEASE_POINTER', pointerId: p.id, commit: true }));
      else if (plain !== null) yield* wait(plain.done);
      if (through) yield* this.c.destager.writeThrough(toStore);
    } finally {
      for (const cp of touched) this.c.writes.mirrorSettled(cp);
      this.c.ownership.recheckDeferredGrants();
    }
    return shadows.length;
  }

  *onAllocateRead(req: AllocateRead): Task<void> {
    const alloc = this.c.allocator.lookup(req.guid);
    this.c.allocator.checkPageRange(alloc, req.firstPage, req.pageCount);
    const pointer = this.partnerPointer(req.pointerId, PointerMode.READ, alloc, req.firstPage, req.pageCount);
    this.registerPointer(pointer);
    yield* this.pinRange(pointer);
    this.c.requests.replyPeer(req, { kind: 'ALLOCATE_READ_REPLY', pointerId: req.pointerId });
  }

  onAllocateWrite(req: AllocateWrite): void {
    const alloc = this.c.allocator.lookup(req.guid);
    this.c.allocator.checkPageRange(alloc, req.firstPage, req.pageCount);
    // A snapshot of it made meanwhile (installed here first): its commits would not copy.
    this.c.snapshots.refuseWritePointer(alloc);
    if (req.pageCount * alloc.record.pageSizeBytes > this.c.cfg.cacheBytesMax / 2) {
      throw new PagepairError('CACHE_FULL', `a write pointer of ${req.pageCount} pages would not fit half the cache`, 'pageCount');
    }
    this.registerPointer(this.partnerPointer(req.pointerId, PointerMode.WRITE, alloc, req.firstPage, req.pageCount));
    this.c.requests.replyPeer(req, { kind: 'ALLOCATE_WRITE_REPLY', pointerId: req.pointerId });
  }

  private partnerPointer(id: number, mode: PointerState['mode'], alloc: AllocState, firstPage: number, pageCount: number): PointerState {
    if (id >>> 24 !== this.c.partnerId) throw new PagepairError('BAD_FIELD', `pointer id ${id} was not made by the partner`, 'pointerId');
    if (this.open.has(id)) throw new PagepairError('DUPLICATE', `pointer ${id} is already open`, 'pointerId');
    return { id, mode, alloc, firstPage, pageCount, holderId: this.c.partnerId, connId: 0, lastUsedMs: this.c.env.nowMs(), shadows: new Map(), pinned: [], mirrored: true };
  }

  onReleasePointer(req: ReleasePointer): void {
    const p = this.open.get(req.pointerId);
    if (p === undefined || p.holderId !== this.c.partnerId) {
      // Already gone (a lease ran out, or the link flapped): nothing to keep.
      this.c.requests.replyPeer(req, { kind: 'RELEASE_POINTER_REPLY', pages: 0 });
      return;
    }
    let pages = 0;
    if (p.mode === PointerMode.WRITE && req.commit && !p.alloc.released) {
      const now = this.c.env.nowMs();
      for (const [page, s] of p.shadows) {
        this.c.reads.supersedeStaging(p.alloc, page);
        this.c.cache.writeDirty(p.alloc, page, s.version, s.crc, this.c.membership.epoch, s.data, now);
        pages++;
      }
      this.c.counters.pagesMirroredIn += pages;
    }
    this.dropPointer(p);
    this.c.requests.replyPeer(req, { kind: 'RELEASE_POINTER_REPLY', pages });
  }
}
