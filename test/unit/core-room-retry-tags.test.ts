// Retry tags: a client write carries (clientId, clientSeq); a retry of it is
// applied once, whichever controller applied it first: answered at once when
// done, after the first attempt when that is still running, and not applied
// when the partner's mirrored pages say a retry was applied there. An
// attempt that failed before applying anything is forgotten.

import { describe, expect, it } from 'vitest';
import { crc32c } from '../../src/protocol/crc32c.js';
import { LockOp, Role } from '../../src/protocol/messages.js';
import { allocate, clientRead, clientWrite, coreFixture, errorName, hop, joinedCore, PAGE, readData, replyTo } from './core-fixture.js';

const tagged = (clientId: number, clientSeq: number) => ({ clientId, clientSeq });

describe('retry tags', () => {
  it('a retry of an acknowledged write is answered at once and not applied again', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 2);
    expect(replyTo(f, clientWrite(f, guid, 0, Buffer.alloc(PAGE, 1), tagged(3, 1)))?.kind).toBe('C_WRITE_REPLY');
    clientWrite(f, guid, 0, Buffer.alloc(PAGE, 2));
    const retry = clientWrite(f, guid, 0, Buffer.alloc(PAGE, 1), tagged(3, 1));
    await hop();
    expect(replyTo(f, retry)?.kind).toBe('C_WRITE_REPLY');
    expect(readData(replyTo(f, clientRead(f, guid, 0, 2)))).toEqual(Buffer.from([2, 2]));
    expect(f.core.allocator.allocs.get(guid)!.pages.get(0)!.version).toBe(2);
  });

  it('a retry while the first attempt runs waits for it, and the write goes to the partner once', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 2, partner);
    partner.auto.delete('WRITE_PAGE');
    const first = clientWrite(f, guid, 0, Buffer.alloc(PAGE, 5), tagged(4, 1));
    const retry = clientWrite(f, guid, 0, Buffer.alloc(PAGE, 5), tagged(4, 1));
    await partner.pump();
    expect(replyTo(f, retry)).toBeUndefined();
    const frame = partner.take('WRITE_PAGE');
    expect(partner.held).toEqual([]);
    partner.answer(frame);
    await hop();
    expect(replyTo(f, first)?.kind).toBe('C_WRITE_REPLY');
    expect(replyTo(f, retry)?.kind).toBe('C_WRITE_REPLY');
    expect(f.core.allocator.allocs.get(guid)!.pages.get(0)!.version).toBe(1);
  });

  it('a retry of a write the partner applied is not applied here', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 2, partner);
    // The partner owns page 0 and applied the client's write there first.
    partner.send({ kind: 'LOCK_REQUEST', guid, firstPage: 0, pageCount: 1, op: LockOp.TAKE, ownerGen: 0 });
    const theirs = Buffer.alloc(PAGE, 0x0a);
    partner.send({ kind: 'WRITE_PAGE', pages: [{ guid, page: 0, version: 1, crc: crc32c(theirs), epoch: 1, pageFlags: 0, pointerId: 0, clientId: 8, clientSeq: 2, ownerGen: 1, data: theirs }] });
    await partner.pump();
    const retry = clientWrite(f, guid, 0, Buffer.alloc(PAGE, 0x0a), tagged(8, 2));
    await partner.pump();
    await hop();
    expect(replyTo(f, retry)?.kind).toBe('C_WRITE_REPLY');
    // No TAKE, no second version: the write was not applied again.
    expect(partner.sentOf('LOCK_REQUEST')).toEqual([]);
    expect(f.core.allocator.allocs.get(guid)!.pages.get(0)!.version).toBe(1);
    expect(f.core.tags.taggedWrites.get('8:2')).toEqual({ state: 'done' });
  });

  it('an attempt that failed before applying is forgotten: its retry applies the write', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 2);
    // Part of an uncached page: the store read fails, nothing is applied.
    const first = clientWrite(f, guid, 10, Buffer.alloc(4, 7), tagged(6, 1));
    f.failOne('readPage');
    await hop();
    expect(errorName(replyTo(f, first))).toBe('IO_ERROR');
    expect(f.core.tags.taggedWrites.has('6:1')).toBe(false);
    const retry = clientWrite(f, guid, 10, Buffer.alloc(4, 7), tagged(6, 1));
    await f.settleIo();
    await hop();
    expect(replyTo(f, retry)?.kind).toBe('C_WRITE_REPLY');
    expect(readData(replyTo(f, clientRead(f, guid, 8, 8)))).toEqual(Buffer.from([0, 0, 7, 7, 7, 7, 0, 0]));
  });

  it('a mirrored write that failed after it was applied here is remembered as held: its retry makes it durable instead of applying it again', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 2, partner);
    partner.auto.delete('WRITE_PAGE');
    const first = clientWrite(f, guid, 0, Buffer.alloc(PAGE, 9), tagged(7, 1));
    await partner.pump();
    f.core.peerDown('link cut');
    await hop();
    expect(errorName(replyTo(f, first))).toBe('PARTNER_LOST');
    expect(f.core.tags.taggedWrites.get('7:1')).toMatchObject({ state: 'held', guid, first: 0, count: 1 });
    // The partner does not come back: we serve alone.
    for (let t = 0; t <= 2000 && f.core.currentRole !== Role.ALONE; t += 50) {
      f.setNow(t);
      f.core.tick();
      await f.settleIo();
    }
    expect(f.core.currentRole).toBe(Role.ALONE);
    const retry = clientWrite(f, guid, 0, Buffer.alloc(PAGE, 9), tagged(7, 1));
    await f.settleIo();
    await hop();
    expect(replyTo(f, retry)?.kind).toBe('C_WRITE_REPLY');
    // Made durable as it was, not written as a new version.
    const cp = f.core.allocator.allocs.get(guid)!.pages.get(0)!;
    expect(cp.version).toBe(1);
    expect(cp.storeVersion).toBe(1);
  });
});
