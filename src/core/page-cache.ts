// The page cache: every cached page of every allocation, bounded in bytes.
// Clean, unpinned pages sit in an LRU and are the only ones ever evicted;
// dirty pages (our own and the partner's mirrored ones) stay until destaged.
// The dirty set keeps an incremental digest so status can show it cheaply.
//
// The LRU is a list threaded through the pages themselves: O(1) and no
// allocation per operation. (lru-cache was measured here first: it resets
// arrays of its whole capacity each time it becomes empty, ~0.9 ms at the
// default cache size, and the clean set empties whenever a write dirties the
// last clean page.)

import type { AllocState } from './allocation.js';
import { SetDigest, dirtyMember } from './digest.js';

export interface CachePage {
  readonly alloc: AllocState;
  readonly page: number;
  version: number;
  crc: number;
  epoch: number;
  /** Changed in place only while nothing else holds it (see reusableData):
   *  otherwise a write installs a new buffer, so a destage or a frame being
   *  encoded can hold the old one safely. */
  data: Buffer;
  /** `data` was handed to someone who may keep it (a reader): it is never
   *  changed in place; the next version gets a buffer of its own. */
  dataLent: boolean;
  dirty: boolean;
  dirtySinceMs: number;
  /** Newest version known to be in the store (0: not known). */
  storeVersion: number;
  /** Version being written to the store, 0 when no destage is in flight. */
  destagingVersion: number;
  /**
   * The store-slot trust (Destager.slotTrust) under which we last wrote the
   * page to the store, -1 when we have not since the page became ours: while
   * it equals the current one, nobody else has written the page since, and
   * the store may choose its slot without reading.
   */
  slotsOursAt: number;
  /** Our WRITE_PAGEs of this page the partner has not yet answered. */
  mirrorPending: number;
  /** Read pointers and writes in progress that need the page to stay. */
  pins: number;
  /** Readers waiting for mirrorPending to reach 0. */
  waiters: (() => void)[] | null;
  /** Neighbours in the clean LRU list; both null when not in it. */
  lruOlder: CachePage | null;
  lruNewer: CachePage | null;
}

/** Clean, unpinned pages, oldest first. */
class LruList {
  private oldest: CachePage | null = null;
  private newest: CachePage | null = null;
  private members = 0;

  get size(): number {
    return this.members;
  }

  has(cp: CachePage): boolean {
    return cp.lruOlder !== null || cp.lruNewer !== null || this.oldest === cp;
  }

  /** Add as newest, or move to newest. */
  touch(cp: CachePage): void {
    if (this.newest === cp) return;
    if (this.has(cp)) this.delete(cp);
    cp.lruOlder = this.newest;
    cp.lruNewer = null;
    if (this.newest !== null) this.newest.lruNewer = cp;
    else this.oldest = cp;
    this.newest = cp;
    this.members++;
  }

  delete(cp: CachePage): void {
    if (!this.has(cp)) return;
    if (cp.lruOlder !== null) cp.lruOlder.lruNewer = cp.lruNewer;
    else this.oldest = cp.lruNewer;
    if (cp.lruNewer !== null) cp.lruNewer.lruOlder = cp.lruOlder;
    else this.newest = cp.lruOlder;
    cp.lruOlder = null;
    cp.lruNewer = null;
    this.members--;
  }

  popOldest(): CachePage | undefined {
    const cp = this.oldest;
    if (cp === null) return undefined;
    this.delete(cp);
    return cp;
  }
}

export interface CacheCounters {
  cachedPages: number;
  cachedBytes: number;
  dirtyPages: number;
  dirtyBytes: number;
  evictions: number;
}

export class PageCache {
  private readonly lru = new LruList();
  /** Insertion order is the order pages became dirty: oldest first. */
  readonly dirty = new Set<CachePage>();
  readonly dirtyDigest = new SetDigest();
  private usedBytes = 0;
  private dirtyBytes = 0;
  private pageCount = 0;
  private evictions = 0;

  constructor(readonly cacheBytesMax: number) {}

  get bytesUsed(): number {
    return this.usedBytes;
  }

  get bytesDirty(): number {
    return this.dirtyBytes;
  }

  counters(): CacheCounters {
    return {
      cachedPages: this.pageCount,
      cachedBytes: this.usedBytes,
      dirtyPages: this.dirty.size,
      dirtyBytes: this.dirtyBytes,
      evictions: this.evictions,
    };
  }

  /** The cached page, touching its LRU position when it is clean. */
  get(alloc: AllocState, page: number): CachePage | undefined {
    const cp = alloc.pages.get(page);
    if (cp !== undefined && !cp.dirty && cp.pins === 0) this.lru.touch(cp);
    return cp;
  }

  /**
   * The page's buffer when the next version may be written into it in place:
   * no store write and no mirror frame holds it, and it was never lent out.
   * Saves allocating (and later collecting) a page buffer per write. Null:
   * write the next version into a new buffer.
   */
  reusableData(cp: CachePage): Buffer | null {
    return cp.destagingVersion === 0 && cp.mirrorPending === 0 && !cp.dataLent ? cp.data : null;
  }

  /** Hand out the page's buffer: it is never written in place from now on. */
  lend(cp: CachePage): Buffer {
    cp.dataLent = true;
    return cp.data;
  }

  /** Evict clean pages until `bytes` more fit. False when they cannot. */
  makeRoom(bytes: number): boolean {
    while (this.usedBytes + bytes > this.cacheBytesMax) {
      const victim = this.lru.popOldest();
      if (victim === undefined) return false;
      this.evictions++;
      // A later whole-page write needs its version, not its bytes.
      const alloc = victim.alloc;
      alloc.knownVersions ??= new Float64Array(alloc.record.pageCount).fill(Number.NaN);
      alloc.knownVersions[victim.page] = victim.version;
      this.forget(victim);
    }
    return true;
  }

  /** Install a page read from the store. Never replaces a cached page. */
  insertClean(alloc: AllocState, page: number, version: number, crc: number, epoch: number, data: Buffer): CachePage {
    const existing = alloc.pages.get(page);
    if (existing !== undefined) return existing;
    this.makeRoom(data.length);
    const cp = this.create(alloc, page, data);
    cp.version = version;
    cp.crc = crc;
    cp.epoch = epoch;
    this.lru.touch(cp);
    return cp;
  }

  /** Install new contents as dirty (a local write or a mirrored one). */
  writeDirty(alloc: AllocState, page: number, version: number, crc: number, epoch: number, data: Buffer, nowMs: number): CachePage {
    let cp = alloc.pages.get(page);
    if (cp === undefined) {
      this.makeRoom(data.length);
      cp = this.create(alloc, page, data);
    } else {
      this.usedBytes += data.length - cp.data.length;
      if (cp.dirty) {
        this.dirtyBytes += data.length - cp.data.length;
        this.dirtyDigest.remove(dirtyMember(alloc.guidBytes, page, cp.version, cp.crc));
      } else {
        this.lru.delete(cp);
      }
      if (cp.data !== data) {
        cp.data = data;
        cp.dataLent = false;
      }
    }
    cp.version = version;
    cp.crc = crc;
    cp.epoch = epoch;
    if (!cp.dirty) {
      cp.dirty = true;
      cp.dirtySinceMs = nowMs;
      this.dirty.add(cp);
      this.dirtyBytes += data.length;
    }
    this.dirtyDigest.add(dirtyMember(alloc.guidBytes, page, version, crc));
    return cp;
  }

  /**
   * The page reached the store at `version` with CRC `crc`: clean if nothing
   * newer came since. Version and CRC both: a copy that holds other bytes at
   * that version is not what the store holds.
   */
  markClean(cp: CachePage, version: number, crc: number): boolean {
    if (!cp.dirty || cp.version !== version || cp.crc !== crc) return false;
    cp.dirty = false;
    this.dirty.delete(cp);
    this.dirtyBytes -= cp.data.length;
    this.dirtyDigest.remove(dirtyMember(cp.alloc.guidBytes, cp.page, cp.version, cp.crc));
    if (cp.pins === 0) this.lru.touch(cp);
    return true;
  }

  /**
   * Test hook: other bytes at the same version, as if this copy went bad.
   * The page keeps its state; the dirty digest follows the new CRC.
   */
  replaceContents(cp: CachePage, data: Buffer, crc: number): void {
    this.usedBytes += data.length - cp.data.length;
    if (cp.dirty) {
      this.dirtyBytes += data.length - cp.data.length;
      this.dirtyDigest.remove(dirtyMember(cp.alloc.guidBytes, cp.page, cp.version, cp.crc));
      this.dirtyDigest.add(dirtyMember(cp.alloc.guidBytes, cp.page, cp.version, crc));
    }
    cp.data = data;
    cp.dataLent = false;
    cp.crc = crc;
  }

  pin(cp: CachePage): void {
    if (cp.pins++ === 0 && !cp.dirty) this.lru.delete(cp);
  }

  unpin(cp: CachePage): void {
    if (--cp.pins === 0 && !cp.dirty && cp.alloc.pages.get(cp.page) === cp) this.lru.touch(cp);
  }

  /** Drop a page whatever its state (its allocation is gone, or a resync replaces it). */
  drop(cp: CachePage): void {
    if (cp.dirty) {
      this.dirty.delete(cp);
      this.dirtyBytes -= cp.data.length;
      this.dirtyDigest.remove(dirtyMember(cp.alloc.guidBytes, cp.page, cp.version, cp.crc));
      cp.dirty = false;
    } else {
      this.lru.delete(cp);
    }
    this.forget(cp);
  }

  dropAlloc(alloc: AllocState): void {
    for (const cp of [...alloc.pages.values()]) this.drop(cp);
  }

  private create(alloc: AllocState, page: number, data: Buffer): CachePage {
    const cp: CachePage = {
      alloc,
      page,
      version: 0,
      crc: 0,
      epoch: 0,
      data,
      dirty: false,
      dirtySinceMs: 0,
      storeVersion: 0,
      destagingVersion: 0,
      slotsOursAt: -1,
      mirrorPending: 0,
      pins: 0,
      dataLent: false,
      waiters: null,
      lruOlder: null,
      lruNewer: null,
    };
    alloc.pages.set(page, cp);
    this.usedBytes += data.length;
    this.pageCount++;
    return cp;
  }

  private forget(cp: CachePage): void {
    if (cp.alloc.pages.get(cp.page) === cp) {
      cp.alloc.pages.delete(cp.page);
      this.usedBytes -= cp.data.length;
      this.pageCount--;
    }
  }
}
