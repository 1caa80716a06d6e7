// Page ownership: only the owner hands pages on, each move gives them a
// newer generation, a grant or GIVE that is not newer is an ownership
// conflict (the link is made anew), a TAKE waits for the owner's own write
// of the pages on controller 1 and never on controller 2.

import { describe, expect, it } from 'vitest';
import { LockOp, type Message } from '../../src/protocol/messages.js';
import { ErrorCode } from '../../src/protocol/errors.js';
import { allocate, clientWrite, framesOf, joinedCore, PAGE, partnerAllocates, replyTo, type HandPartner } from './core-fixture.js';

function lock(partner: HandPartner, guid: string, firstPage: number, pageCount: number, op: number, ownerGen = 0): Message {
  return partner.send({ kind: 'LOCK_REQUEST', guid, firstPage, pageCount, op, ownerGen });
}

function lockReplies(frames: Message[]) {
  return framesOf(frames, 'LOCK_REQUEST_REPLY');
}

/** The partner took page 0; a client write of it through controller 1 now waits for the partner to answer its TAKE (by hand). */
async function writeWaitingForPage0(): Promise<{ f: Awaited<ReturnType<typeof joinedCore>>['f']; partner: HandPartner; w: Message }> {
  const { f, partner } = await joinedCore();
  const guid = await allocate(f, 'v', 4, partner);
  lock(partner, guid, 0, 1, LockOp.TAKE);
  f.flush();
  partner.auto.delete('LOCK_REQUEST');
  const w = clientWrite(f, guid, 0, Buffer.alloc(PAGE, 3));
  await partner.pump();
  return { f, partner, w };
}

/** Controller 1 joined with a hand partner, a 4-page allocation, and the partner holding pages 0 and 1 (TAKE granted, generation 1). */
async function partnerTookPages01(): Promise<{ f: Awaited<ReturnType<typeof joinedCore>>['f']; partner: Awaited<ReturnType<typeof joinedCore>>['partner']; guid: string }> {
  const { f, partner } = await joinedCore();
  const guid = await allocate(f, 'v', 4, partner);
  lock(partner, guid, 0, 2, LockOp.TAKE);
  f.flush();
  return { f, partner, guid };
}

describe('ownership', () => {
  it('the owner grants an idle TAKE: the pages move with a newer generation', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 4, partner);
    const alloc = f.core.allocator.allocs.get(guid)!;
    expect([...alloc.owner]).toEqual([1, 1, 1, 1]);
    const take = lock(partner, guid, 0, 2, LockOp.TAKE);
    expect(lockReplies(f.flush())).toEqual([expect.objectContaining({ requestId: take.requestId, granted: true, ownerGen: 1 })]);
    expect([...alloc.owner]).toEqual([2, 2, 1, 1]);
    expect([...alloc.ownerGen]).toEqual([1, 1, 0, 0]);
    expect(f.core.counters.lockGrants).toBe(1);
  });

  it('a TAKE of pages we do not own is answered "not granted"', async () => {
    const { f, partner, guid } = await partnerTookPages01();
    lock(partner, guid, 1, 2, LockOp.TAKE);
    expect(lockReplies(f.flush())).toEqual([expect.objectContaining({ granted: false, ownerGen: 0 })]);
    expect(f.core.counters.lockRefusals).toBe(1);
    // Page 2 was ours, but the range was not all ours: nothing moved.
    expect([...f.core.allocator.allocs.get(guid)!.owner]).toEqual([2, 2, 1, 1]);
  });

  it('a GIVE with a newer generation hands the pages back', async () => {
    const { f, partner, guid } = await partnerTookPages01();
    lock(partner, guid, 0, 2, LockOp.GIVE, 2);
    expect(lockReplies(f.flush())).toEqual([expect.objectContaining({ granted: true, ownerGen: 2 })]);
    const alloc = f.core.allocator.allocs.get(guid)!;
    expect([...alloc.owner]).toEqual([1, 1, 1, 1]);
    expect([...alloc.ownerGen]).toEqual([2, 2, 0, 0]);
    expect(f.core.counters.ownershipConflicts).toBe(0);
  });

  it('a GIVE whose generation is not newer is refused as an ownership conflict, and the link is made anew', async () => {
    const { f, partner, guid } = await partnerTookPages01();
    lock(partner, guid, 0, 2, LockOp.GIVE, 1);
    expect(lockReplies(f.flush())).toEqual([]);
    expect(f.core.counters.ownershipConflicts).toBe(1);
    expect(f.closed).toEqual([expect.stringContaining('ownership conflict')]);
    expect(f.core.membership.linkUp).toBe(false);
    expect([...f.core.allocator.allocs.get(guid)!.owner]).toEqual([2, 2, 1, 1]);
  });

  it('a GIVE of pages we own already is an ownership conflict', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 4, partner);
    lock(partner, guid, 2, 1, LockOp.GIVE, 5);
    expect(f.core.counters.ownershipConflicts).toBe(1);
    expect(f.closed[0]).toContain('we own it already');
  });

  it('a grant of our TAKE that is not newer than the generation we know is an ownership conflict', async () => {
    const { f, partner, w } = await writeWaitingForPage0();
    const take = partner.take('LOCK_REQUEST');
    expect(take).toMatchObject({ op: LockOp.TAKE, firstPage: 0, pageCount: 1 });
    partner.reply(take, { kind: 'LOCK_REQUEST_REPLY', granted: true, ownerGen: 1 });
    await partner.pump();
    expect(f.core.counters.ownershipConflicts).toBe(1);
    expect(f.closed[0]).toContain("partner's grant of page 0");
    expect(replyTo(f, w)?.kind).toBe('ERROR');
  });

  it('a newer grant lets our write go on, and its WRITE_PAGE carries the new generation', async () => {
    const { f, partner, w } = await writeWaitingForPage0();
    partner.reply(partner.take('LOCK_REQUEST'), { kind: 'LOCK_REQUEST_REPLY', granted: true, ownerGen: 2 });
    await partner.pump();
    expect(replyTo(f, w)?.kind).toBe('C_WRITE_REPLY');
    expect(partner.sentOf('WRITE_PAGE').at(-1)?.pages[0]).toMatchObject({ page: 0, ownerGen: 2, version: 1 });
  });

  it('controller 1 holds a TAKE back until its own write of the pages has ended', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 4, partner);
    partner.auto.delete('WRITE_PAGE');
    // Part of an uncached page: the write reads the page first.
    const w = clientWrite(f, guid, 100, Buffer.alloc(10, 7));
    expect(f.pending.map((p) => p.op.kind)).toEqual(['readPage']);
    lock(partner, guid, 0, 1, LockOp.TAKE);
    expect(lockReplies(f.flush())).toEqual([]);
    await partner.pump();
    // Applied and sent; the partner has not answered the page yet: still held.
    const page = partner.take('WRITE_PAGE');
    expect(lockReplies(partner.seen)).toEqual([]);
    partner.answer(page);
    expect(replyTo(f, w)?.kind).toBe('C_WRITE_REPLY');
    const grants = lockReplies(f.flush());
    expect(grants).toEqual([expect.objectContaining({ granted: true, ownerGen: 1 })]);
    expect(f.core.allocator.allocs.get(guid)!.owner[0]).toBe(2);
  });

  it('a TAKE waits while the owner destages the pages, until the store has synced them', async () => {
    const { f, partner } = await joinedCore({ config: { partnerTimeoutMs: 1_000_000 } });
    const guid = await allocate(f, 'v', 4, partner);
    clientWrite(f, guid, 0, Buffer.alloc(PAGE, 4));
    await partner.pump();
    f.setNow(5000);
    f.core.tick();
    await partner.pump(50, false);
    await f.runOne('writeMailboxSlot');
    await f.runOne('readMailbox');
    // The lease renewed, the page write goes out; the partner asks for the page meanwhile.
    expect(f.pending.map((p) => p.op.kind)).toContain('writePage');
    lock(partner, guid, 0, 1, LockOp.TAKE);
    expect(lockReplies(f.flush())).toEqual([]);
    await f.runOne('writePage');
    expect(lockReplies(f.flush())).toEqual([]);
    await f.runOne('sync');
    expect(lockReplies(f.flush())).toEqual([expect.objectContaining({ granted: true, ownerGen: 1 })]);
    expect(f.core.counters.pagesDestaged).toBe(1);
  });

  it('controller 2 grants a TAKE even while its own write of the pages is under way', async () => {
    const { f, partner } = await joinedCore({ selfId: 2 });
    const guid = partnerAllocates(partner, 'v', 4);
    lock(partner, guid, 0, 4, LockOp.GIVE, 1);
    expect(lockReplies(f.flush())).toEqual([expect.objectContaining({ granted: true })]);
    partner.auto.delete('LOCK_REQUEST');
    const w = clientWrite(f, guid, 100, Buffer.alloc(10, 7));
    expect(f.pending.map((p) => p.op.kind)).toEqual(['readPage']);
    lock(partner, guid, 0, 1, LockOp.TAKE);
    expect(lockReplies(f.flush())).toEqual([expect.objectContaining({ granted: true, ownerGen: 2 })]);
    // Our write, its page gone, asks for it back.
    await partner.pump();
    expect(partner.take('LOCK_REQUEST')).toMatchObject({ op: LockOp.TAKE, firstPage: 0, pageCount: 1 });
    expect(replyTo(f, w)).toBeUndefined();
  });
});

describe('ownership in lock groups (a store whose parity rows hold several pages)', () => {
  /** Controller 1, joined, whose store says pages move in groups of 4; an 8-page allocation, all ours. */
  async function grouped(): Promise<{ f: Awaited<ReturnType<typeof joinedCore>>['f']; partner: HandPartner; guid: string }> {
    const { f, partner } = await joinedCore();
    (f.core.cfg.store as { lockGroupPages(pageSizeBytes: number): number }).lockGroupPages = () => 4;
    const guid = await allocate(f, 'v', 8, partner);
    return { f, partner, guid };
  }

  it('a TAKE of part of a group is refused with BAD_FIELD, and nothing moves', async () => {
    const { f, partner, guid } = await grouped();
    const take = lock(partner, guid, 1, 2, LockOp.TAKE);
    const out = f.flush();
    expect(lockReplies(out)).toEqual([]);
    expect(out).toContainEqual(expect.objectContaining({ kind: 'ERROR', requestId: take.requestId, code: ErrorCode.BAD_FIELD }));
    expect([...f.core.allocator.allocs.get(guid)!.owner]).toEqual([1, 1, 1, 1, 1, 1, 1, 1]);
  });

  it('a TAKE of whole groups is granted', async () => {
    const { f, partner, guid } = await grouped();
    lock(partner, guid, 4, 4, LockOp.TAKE);
    expect(lockReplies(f.flush())).toEqual([expect.objectContaining({ granted: true, ownerGen: 1 })]);
    expect([...f.core.allocator.allocs.get(guid)!.owner]).toEqual([1, 1, 1, 1, 2, 2, 2, 2]);
  });

  it('a write of one page of the partner takes its whole group', async () => {
    const { f, partner, guid } = await grouped();
    lock(partner, guid, 0, 8, LockOp.TAKE);
    f.flush();
    partner.auto.delete('LOCK_REQUEST');
    const w = clientWrite(f, guid, 5 * PAGE, Buffer.alloc(PAGE, 9));
    await partner.pump();
    const take = partner.take('LOCK_REQUEST');
    expect(take).toMatchObject({ op: LockOp.TAKE, firstPage: 4, pageCount: 4 });
    partner.reply(take, { kind: 'LOCK_REQUEST_REPLY', granted: true, ownerGen: 2 });
    await partner.pump();
    expect(replyTo(f, w)?.kind).toBe('C_WRITE_REPLY');
    expect([...f.core.allocator.allocs.get(guid)!.owner]).toEqual([2, 2, 2, 2, 1, 1, 1, 1]);
  });
});
