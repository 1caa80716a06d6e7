// The read path: cached pages answered at once; an uncached page read from
// the store once however many readers want it; a torn store slot counted; a
// failed store read reported and asked again next time; a page with our
// write in flight to the partner not shown until the partner holds it; a
// newer mirrored page not hidden by an older store read.

import { describe, expect, it } from 'vitest';
import { crc32c } from '../../src/protocol/crc32c.js';
import { LockOp } from '../../src/protocol/messages.js';
import { DEFAULT_LIMITS } from '../../src/protocol/limits.js';
import { encode } from '../../src/protocol/codec.js';
import type { StoredPage } from '../../src/protocol/store-records.js';
import { allocate, clientRead, clientWrite, coreFixture, errorName, hop, joinedCore, PAGE, readData, replyTo, type CoreFixture } from './core-fixture.js';

/** A page put in the store behind the core's back (as a destage before a restart would). */
async function storePage(f: CoreFixture, guid: string, page: number, version: number, fill: number): Promise<Buffer> {
  const data = Buffer.alloc(PAGE, fill);
  await f.store.writePage(f.core.allocator.location(f.core.allocator.allocs.get(guid)!), page, version, 1, data, crc32c(data));
  return data;
}

const reads = (f: CoreFixture): number => f.pending.filter((p) => p.op.kind === 'readPage').length;

describe('read path', () => {
  it('answers a read of cached pages at once, with no store I/O', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    clientWrite(f, guid, 0, Buffer.alloc(PAGE, 0x61));
    const r = clientRead(f, guid, 10, 20);
    expect(readData(replyTo(f, r))).toEqual(Buffer.alloc(20, 0x61));
    expect(f.pending).toEqual([]);
  });

  it('two reads of one uncached page cause one store read, and both get its bytes', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    await storePage(f, guid, 2, 5, 0x33);
    const a = clientRead(f, guid, 2 * PAGE, 8);
    const b = clientRead(f, guid, 2 * PAGE + 100, 8);
    expect(reads(f)).toBe(1);
    await f.settleIo();
    expect(readData(replyTo(f, a))).toEqual(Buffer.alloc(8, 0x33));
    expect(readData(replyTo(f, b))).toEqual(Buffer.alloc(8, 0x33));
    expect(f.core.counters.pagesStaged).toBe(1);
    expect(f.core.allocator.allocs.get(guid)!.pages.get(2)!.version).toBe(5);
  });

  it('counts a page whose store slot was torn, and logs it', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    const r = clientRead(f, guid, PAGE, 4);
    const io = f.pending.shift()!;
    expect(io.op).toMatchObject({ kind: 'readPage', page: 1 });
    const data = Buffer.alloc(PAGE, 0x0f);
    const value: StoredPage = { header: { guid, page: 1, version: 2, epoch: 1, crc: crc32c(data) }, data, tornSlot: 'slot B: checksum mismatch' };
    f.core.onIoDone(io.id, { ok: true, value });
    expect(readData(replyTo(f, r))).toEqual(Buffer.alloc(4, 0x0f));
    expect(f.core.status().counters.tornSlotsRecovered).toBe(1);
    expect(f.log.filter((l) => l.level === 'warn' && l.msg.includes('torn write'))).toHaveLength(1);
  });

  it('a failed store read fails every reader waiting on it, and the next read asks the store again', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    const a = clientRead(f, guid, 0, 4);
    const b = clientRead(f, guid, 8, 4);
    f.failOne('readPage');
    await hop();
    expect(errorName(replyTo(f, a))).toBe('IO_ERROR');
    expect(errorName(replyTo(f, b))).toBe('IO_ERROR');
    const c = clientRead(f, guid, 0, 4);
    expect(reads(f)).toBe(1);
    await f.settleIo();
    expect(readData(replyTo(f, c))).toEqual(Buffer.alloc(4));
  });

  it('a store failure with a long message reaches the client as IO_ERROR, its message clipped to what any receiver takes', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    const r = clientRead(f, guid, 0, 4);
    // A pool names every member and why it failed: longer than a frame's string limit.
    f.failOne('readPage', new Error(`pool: read failed on every device (${Array.from({ length: 8 }, (_, i) => `/data/pool/member-${i}.img: EIO`).join('; ')})`));
    await hop();
    const reply = replyTo(f, r);
    expect(errorName(reply)).toBe('IO_ERROR');
    const message = (reply as { message: string }).message;
    expect(Buffer.byteLength(message)).toBeLessThanOrEqual(DEFAULT_LIMITS.stringBytesMax);
    expect(() => encode(reply!)).not.toThrow();
  });

  it('mirrored: a read of a page with our write in flight waits until the partner holds it', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 4, partner);
    partner.auto.delete('WRITE_PAGE');
    clientWrite(f, guid, 0, Buffer.alloc(PAGE, 0x21));
    await partner.pump();
    const r = clientRead(f, guid, 0, 4);
    expect(replyTo(f, r)).toBeUndefined();
    partner.answer(partner.take('WRITE_PAGE'));
    expect(readData(replyTo(f, r))).toEqual(Buffer.alloc(4, 0x21));
  });

  it('a mirrored page that arrives while the store read is under way wins over the older stored copy', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 4, partner);
    partner.send({ kind: 'LOCK_REQUEST', guid, firstPage: 0, pageCount: 1, op: LockOp.TAKE, ownerGen: 0 });
    f.flush();
    const r = clientRead(f, guid, 0, 4);
    expect(reads(f)).toBe(1);
    const data = Buffer.alloc(PAGE, 0x7e);
    partner.send({ kind: 'WRITE_PAGE', pages: [{ guid, page: 0, version: 1, crc: crc32c(data), epoch: 1, pageFlags: 0, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: 1, data }] });
    await f.settleIo();
    expect(readData(replyTo(f, r))).toEqual(Buffer.alloc(4, 0x7e));
    expect(f.core.allocator.allocs.get(guid)!.pages.get(0)!.version).toBe(1);
  });
});
