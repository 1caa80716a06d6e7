// The page cache on its own: which page buffers may be written in place
// (the hot write path reuses them) and which must never change again, and the
// clean LRU around them.

import { describe, expect, it } from 'vitest';
import { newAllocState } from '../../src/core/allocation.js';
import { PageCache } from '../../src/core/page-cache.js';

const PAGE = 4096;

function alloc(pageCount = 8) {
  return newAllocState(
    { guid: '6a1f0c52-8d3e-4b7a-9f21-0c4d5e6f7a8b', name: 'a', policy: 'default', pageSizeBytes: PAGE, pageCount, dataOffset: 0, createdEpoch: 1 },
    1,
  );
}

describe('page cache: reusing page buffers', () => {
  it('offers a dirty page buffer for reuse only while nothing else holds it', () => {
    const cache = new PageCache(64 * PAGE);
    const a = alloc();
    const cp = cache.writeDirty(a, 0, 1, 0, 1, Buffer.alloc(PAGE, 1), 0);
    expect(cache.reusableData(cp)).toBe(cp.data);

    // A mirror frame not yet answered holds it.
    cp.mirrorPending++;
    expect(cache.reusableData(cp)).toBeNull();
    cp.mirrorPending--;

    // So does a store write under way.
    cp.destagingVersion = 1;
    expect(cache.reusableData(cp)).toBeNull();
    cp.destagingVersion = 0;
    expect(cache.reusableData(cp)).toBe(cp.data);
  });

  it('never offers a buffer once it was lent, until a new buffer replaces it', () => {
    const cache = new PageCache(64 * PAGE);
    const a = alloc();
    const first = Buffer.alloc(PAGE, 1);
    const cp = cache.writeDirty(a, 0, 1, 0, 1, first, 0);
    expect(cache.lend(cp)).toBe(first);
    expect(cache.reusableData(cp)).toBeNull();
    // Written in place (same buffer): still lent.
    cache.writeDirty(a, 0, 2, 0, 1, cp.data, 0);
    expect(cache.reusableData(cp)).toBeNull();
    // A new version in a new buffer: that one is ours again; the lent one is left alone.
    const second = Buffer.alloc(PAGE, 2);
    cache.writeDirty(a, 0, 3, 0, 1, second, 0);
    expect(cache.reusableData(cp)).toBe(second);
    expect(first.every((b) => b === 1)).toBe(true);
  });

  it('a clean page read from the store can be reused too, and byte counts stay right', () => {
    const cache = new PageCache(64 * PAGE);
    const a = alloc();
    const cp = cache.insertClean(a, 3, 5, 0, 1, Buffer.alloc(PAGE, 7));
    const buf = cache.reusableData(cp);
    expect(buf).toBe(cp.data);
    cache.writeDirty(a, 3, 6, 0, 1, buf!, 0);
    expect(cache.counters()).toMatchObject({ cachedPages: 1, cachedBytes: PAGE, dirtyPages: 1, dirtyBytes: PAGE });
    expect(cache.markClean(cp, 6, 1)).toBe(false); // another CRC: not what the store holds
    expect(cache.markClean(cp, 6, 0)).toBe(true);
    expect(cache.counters()).toMatchObject({ cachedPages: 1, cachedBytes: PAGE, dirtyPages: 0, dirtyBytes: 0 });
  });

  it('evicts the least recently used clean page first', () => {
    const cache = new PageCache(3 * PAGE);
    const a = alloc();
    const p0 = cache.insertClean(a, 0, 1, 0, 1, Buffer.alloc(PAGE));
    cache.insertClean(a, 1, 1, 0, 1, Buffer.alloc(PAGE));
    cache.insertClean(a, 2, 1, 0, 1, Buffer.alloc(PAGE));
    expect(cache.get(a, 0)).toBe(p0); // page 0 is now the newest
    cache.insertClean(a, 3, 1, 0, 1, Buffer.alloc(PAGE));
    expect([...a.pages.keys()].sort()).toEqual([0, 2, 3]);
    expect(a.knownVersions?.[1]).toBe(1);
  });
});
