// The write path: a write whose pages are in hand is applied and answered
// at once on a single controller; part of an uncached page is built on its
// stored bytes; mirrored, a write is answered only once the partner holds
// it, and a refusal makes the link anew; fields are checked; a write finding
// the cache full of dirty pages waits for room, then fails with CACHE_FULL.

import { describe, expect, it } from 'vitest';
import { crc32c } from '../../src/protocol/crc32c.js';
import { allocate, clientRead, clientWrite, coreFixture, errorName, hop, joinedCore, PAGE, readData, replyTo, type CoreFixture } from './core-fixture.js';
import type { ClientRequest } from '../../src/protocol/messages.js';

/** A cache of four pages filled with dirty ones, and a write of a fifth page that needs room. */
async function writeIntoFullCache(): Promise<{ f: CoreFixture; w: ClientRequest }> {
  const f = await coreFixture({ cacheBytesMax: 4 * PAGE });
  const guid = await allocate(f, 'v', 8);
  clientWrite(f, guid, 0, Buffer.alloc(2 * PAGE, 1));
  clientWrite(f, guid, 2 * PAGE, Buffer.alloc(2 * PAGE, 2));
  return { f, w: clientWrite(f, guid, 4 * PAGE, Buffer.alloc(PAGE, 3)) };
}

describe('write path', () => {
  it('single controller: a write of pages in hand is answered before onClientRequest returns, and reads back', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    // Whole pages of a new allocation: their version (0) is known, nothing is read.
    const w = clientWrite(f, guid, PAGE, Buffer.alloc(2 * PAGE, 0xab));
    expect(replyTo(f, w)?.kind).toBe('C_WRITE_REPLY');
    // Part of a page now cached: built on its bytes, also at once.
    const w2 = clientWrite(f, guid, PAGE + 2, Buffer.alloc(2, 0xcd));
    expect(replyTo(f, w2)?.kind).toBe('C_WRITE_REPLY');
    expect(f.pending).toEqual([]);
    expect(readData(replyTo(f, clientRead(f, guid, PAGE, 6)))).toEqual(Buffer.from([0xab, 0xab, 0xcd, 0xcd, 0xab, 0xab]));
    expect(f.core.counters.clientWrites).toBe(2);
    expect(f.core.status().dirtyPages).toBe(2);
    expect(f.core.allocator.allocs.get(guid)!.pages.get(1)!.version).toBe(2);
  });

  it('part of an uncached page is read from the store first and written over its bytes, one version on', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    const stored = Buffer.alloc(PAGE, 0x33);
    await f.store.writePage(f.core.allocator.location(f.core.allocator.allocs.get(guid)!), 1, 4, 1, stored, crc32c(stored));
    const w = clientWrite(f, guid, PAGE + 100, Buffer.alloc(10, 0x44));
    expect(replyTo(f, w)).toBeUndefined();
    expect(f.pending.map((p) => p.op)).toEqual([expect.objectContaining({ kind: 'readPage', page: 1 })]);
    await f.settleIo();
    await hop();
    expect(replyTo(f, w)?.kind).toBe('C_WRITE_REPLY');
    const cp = f.core.allocator.allocs.get(guid)!.pages.get(1)!;
    expect(cp.version).toBe(5);
    const want = Buffer.alloc(PAGE, 0x33);
    want.fill(0x44, 100, 110);
    expect(cp.data).toEqual(want);
    expect(cp.crc).toBe(crc32c(want));
  });

  it('refuses writes outside the allocation or of no bytes, and writes larger than half the cache', async () => {
    const f = await coreFixture({ cacheBytesMax: 8 * PAGE });
    const guid = await allocate(f, 'v', 16);
    expect(errorName(replyTo(f, clientWrite(f, guid, 16 * PAGE - 2, Buffer.alloc(4))))).toBe('OUT_OF_RANGE');
    expect(errorName(replyTo(f, clientWrite(f, guid, 0, Buffer.alloc(0))))).toBe('BAD_FIELD');
    expect(errorName(replyTo(f, clientWrite(f, guid, -1, Buffer.alloc(1))))).toBe('BAD_FIELD');
    expect(errorName(replyTo(f, clientWrite(f, guid, 0, Buffer.alloc(5 * PAGE))))).toBe('TOO_LARGE');
    expect(f.core.status().dirtyPages).toBe(0);
  });

  it('a write finding the cache full of dirty pages waits for room and goes on when a destage frees some', async () => {
    const { f, w } = await writeIntoFullCache();
    expect(replyTo(f, w)).toBeUndefined();
    expect(f.core.writes.waitingForRoom).toBe(1);
    await f.settleIo();
    await hop();
    expect(replyTo(f, w)?.kind).toBe('C_WRITE_REPLY');
  });

  it('... and fails with CACHE_FULL when no room comes within cacheFullWaitMs', async () => {
    const { f, w } = await writeIntoFullCache();
    // The destages it set going never end.
    f.setNow(f.core.cfg.cacheFullWaitMs);
    f.core.tick();
    await hop();
    expect(replyTo(f, w)).toBeUndefined();
    f.setNow(f.core.cfg.cacheFullWaitMs + 1);
    f.core.tick();
    await hop();
    expect(errorName(replyTo(f, w))).toBe('CACHE_FULL');
  });

  it('mirrored: a write is sent as WRITE_PAGE and answered only once the partner holds it', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 4, partner);
    partner.auto.delete('WRITE_PAGE');
    const w = clientWrite(f, guid, 0, Buffer.alloc(2 * PAGE, 0x19), { clientId: 5, clientSeq: 1 });
    await partner.pump();
    expect(replyTo(f, w)).toBeUndefined();
    const frame = partner.take('WRITE_PAGE');
    const data = Buffer.alloc(PAGE, 0x19);
    expect(frame.kind === 'WRITE_PAGE' && frame.pages).toEqual([
      expect.objectContaining({ guid, page: 0, version: 1, crc: crc32c(data), clientId: 0, data }),
      // The last page names the client write: the partner then knows it whole.
      expect.objectContaining({ guid, page: 1, version: 1, clientId: 5, clientSeq: 1 }),
    ]);
    partner.answer(frame);
    expect(replyTo(f, w)?.kind).toBe('C_WRITE_REPLY');
    expect(f.core.counters.pagesMirroredOut).toBe(2);
  });

  it('mirrored: a write the partner refuses fails, and the link is made anew', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 4, partner);
    partner.auto.delete('WRITE_PAGE');
    const w = clientWrite(f, guid, 0, Buffer.alloc(PAGE, 1));
    await partner.pump();
    partner.refuse(partner.take('WRITE_PAGE'), 'OWNERSHIP_CONFLICT');
    expect(errorName(replyTo(f, w))).toBe('OWNERSHIP_CONFLICT');
    expect(f.closed).toEqual([expect.stringContaining('partner refused mirrored pages')]);
    expect(f.core.membership.linkUp).toBe(false);
  });
});
