// The destager: dirty pages go to the store when due, with their dirty
// neighbours in one go, a bounded number at a time; one sync serves the
// writes that land while it waits; a page is clean only after a sync that
// followed its write succeeded (a failed write or sync leaves it dirty and
// it is written again); the partner hears "clean at v"; a flush is answered
// once its pages are durable.

import { describe, expect, it } from 'vitest';
import { crc32c } from '../../src/protocol/crc32c.js';
import { LockOp, PageFlag } from '../../src/protocol/messages.js';
import { DESTAGE_REST_MS_MIN } from '../../src/core/destager.js';
import { CONN, allocate, clientWrite, coreFixture, hop, joinedCore, PAGE, replyTo, type CoreFixture } from './core-fixture.js';

function writePages(f: CoreFixture, guid: string, pages: number[], fill = 1): void {
  for (const p of pages) clientWrite(f, guid, p * PAGE, Buffer.alloc(PAGE, fill));
}

/** Pages of the store writes waiting. */
function pagesBeingWritten(f: CoreFixture): number[] {
  return f.pending.flatMap((p) => (p.op.kind === 'writePage' ? [p.op.page] : []));
}

const syncs = (f: CoreFixture): number => f.pending.filter((p) => p.op.kind === 'sync').length;

describe('destager', () => {
  it('writes nothing before a page is due, then the due page with its dirty neighbours', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 16);
    writePages(f, guid, [0]);
    f.setNow(900);
    writePages(f, guid, [1, 5]);
    f.setNow(999);
    f.core.tick();
    expect(pagesBeingWritten(f)).toEqual([]);
    f.setNow(1000);
    f.core.tick();
    // Page 1 is not due yet, but lies next to page 0; page 5 waits for its time.
    expect(pagesBeingWritten(f)).toEqual([0, 1]);
  });

  it('has at most destageConcurrency page writes in flight', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 16);
    writePages(f, guid, [0, 2, 4, 6, 8, 10]);
    f.setNow(5000);
    f.core.tick();
    expect(pagesBeingWritten(f)).toHaveLength(f.core.cfg.destageConcurrency);
  });

  it('shares one sync among the destages that land while it waits, and marks pages clean only after it', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 16);
    writePages(f, guid, [0, 2, 4]);
    f.setNow(5000);
    f.core.tick();
    expect(pagesBeingWritten(f)).toEqual([0, 2, 4]);
    await f.runOne('writePage');
    expect(syncs(f)).toBe(1);
    await f.runOne('writePage');
    await f.runOne('writePage');
    // Both later writes wait for the next sync: still one in flight.
    expect(syncs(f)).toBe(1);
    expect(f.core.status().dirtyPages).toBe(3);
    await f.runOne('sync');
    expect(f.core.status().dirtyPages).toBe(2);
    expect(syncs(f)).toBe(1);
    await f.runOne('sync');
    expect(f.core.status().dirtyPages).toBe(0);
    expect(f.core.counters.pagesDestaged).toBe(3);
    expect(f.pending).toEqual([]);
  });

  it('a failed page write leaves the page dirty, is counted, and the page is written again', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    writePages(f, guid, [1], 0x42);
    f.setNow(5000);
    f.core.tick();
    f.failOne('writePage');
    expect(f.core.counters.destageErrors).toBe(1);
    expect(f.core.status().dirtyPages).toBe(1);
    expect(f.core.status().senseCode).not.toBe(0);
    // The store gets a rest before the page is written again.
    expect(pagesBeingWritten(f)).toEqual([]);
    f.setNow(5000 + DESTAGE_REST_MS_MIN);
    f.core.tick();
    expect(pagesBeingWritten(f)).toEqual([1]);
    await f.settleIo();
    expect(f.core.status().dirtyPages).toBe(0);
    expect((await f.store.readPage(f.core.allocator.location(f.core.allocator.allocs.get(guid)!), 1)).data).toEqual(Buffer.alloc(PAGE, 0x42));
  });

  it('a store that keeps failing is asked less and less often, and the log says so once a second', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    writePages(f, guid, [1], 0x42);
    let now = 5000;
    f.setNow(now);
    f.core.tick();
    const gaps: number[] = [];
    for (let failures = 0; failures < 8; failures++) {
      f.failOne('writePage');
      const failedAt = now;
      // Ticks every ms until the page is tried again.
      while (pagesBeingWritten(f).length === 0) {
        f.setNow(++now);
        f.core.tick();
      }
      gaps.push(now - failedAt);
    }
    expect(gaps).toEqual([10, 20, 40, 80, 160, 320, 640, 1000]);
    expect(f.core.counters.destageErrors).toBe(8);
    // Failed at 5000, 5010, ... 5630, then 6270: two lines, the second counting the six not logged.
    const lines = f.log.filter((l) => l.msg === 'destage failed; page stays dirty');
    expect(lines.map((l) => (l.obj as { failuresNotLogged: number }).failuresNotLogged)).toEqual([0, 6]);
    // A success ends the rest: the next failure rests the shortest time again.
    await f.settleIo();
    expect(f.core.status().dirtyPages).toBe(0);
  });

  it('a failed sync is never taken for success: the page stays dirty and a flush is not answered', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    writePages(f, guid, [0]);
    const flush = f.request({ kind: 'C_FLUSH', guid });
    f.core.onClientRequest(CONN, flush);
    // A flush destages at once, whatever the pages' age.
    expect(pagesBeingWritten(f)).toEqual([0]);
    await f.runOne('writePage');
    f.failOne('sync');
    expect(f.core.status().dirtyPages).toBe(1);
    expect(f.core.allocator.allocs.get(guid)!.pages.get(0)!.storeVersion).toBe(0);
    expect(f.core.counters.destageErrors).toBe(1);
    await hop();
    expect(replyTo(f, flush)).toBeUndefined();
    // Written and synced again (after the store's rest): now the flush is answered.
    f.setNow(DESTAGE_REST_MS_MIN);
    f.core.tick();
    await f.settleIo();
    await hop();
    expect(replyTo(f, flush)).toMatchObject({ kind: 'C_FLUSH_REPLY', pages: 1 });
    expect(f.core.status().dirtyPages).toBe(0);
  });

  it('mirrored: a page the partner has not answered for is not destaged; once stored, the partner hears "clean at v"', async () => {
    // The partner never counts as silent here.
    const { f, partner } = await joinedCore({ config: { partnerTimeoutMs: 1_000_000 } });
    const guid = await allocate(f, 'v', 4, partner);
    partner.auto.delete('WRITE_PAGE');
    clientWrite(f, guid, 0, Buffer.alloc(PAGE, 3));
    await partner.pump();
    const mirrored = partner.take('WRITE_PAGE');
    f.setNow(5000);
    f.core.tick();
    await partner.pump();
    expect(partner.sentOf('WRITE_PAGE').flatMap((m) => m.pages).filter((p) => p.pageFlags === PageFlag.CLEAN_AT)).toEqual([]);
    expect(f.core.counters.pagesDestaged).toBe(0);
    partner.answer(mirrored);
    partner.auto.add('WRITE_PAGE');
    f.setNow(5100);
    f.core.tick();
    await partner.pump();
    expect(f.core.counters.pagesDestaged).toBe(1);
    const clean = partner.sentOf('WRITE_PAGE').flatMap((m) => m.pages).filter((p) => p.pageFlags === PageFlag.CLEAN_AT);
    expect(clean).toEqual([expect.objectContaining({ guid, page: 0, version: 1 })]);
    expect(f.closed).toEqual([]);
  });

  it("mirrored: a flush takes the partner's dirty pages to destage them itself", async () => {
    const { f, partner } = await joinedCore({ config: { partnerTimeoutMs: 1_000_000 } });
    const guid = await allocate(f, 'v', 4, partner);
    // The partner takes page 1 and writes it: dirty here as its mirrored copy.
    partner.send({ kind: 'LOCK_REQUEST', guid, firstPage: 1, pageCount: 1, op: LockOp.TAKE, ownerGen: 0 });
    const data = Buffer.alloc(PAGE, 0x2f);
    partner.send({ kind: 'WRITE_PAGE', pages: [{ guid, page: 1, version: 1, crc: crc32c(data), epoch: 1, pageFlags: 0, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: 1, data }] });
    await partner.pump();
    partner.auto.delete('LOCK_REQUEST');
    const flush = f.request({ kind: 'C_FLUSH', guid });
    f.core.onClientRequest(CONN, flush);
    await partner.pump();
    const take = partner.take('LOCK_REQUEST');
    expect(take).toMatchObject({ op: LockOp.TAKE, firstPage: 1, pageCount: 1 });
    expect(pagesBeingWritten(f)).toEqual([]);
    partner.reply(take, { kind: 'LOCK_REQUEST_REPLY', granted: true, ownerGen: 2 });
    await partner.pump();
    await hop();
    expect(replyTo(f, flush)).toMatchObject({ kind: 'C_FLUSH_REPLY', pages: 1 });
    expect((await f.store.readPage(f.core.allocator.location(f.core.allocator.allocs.get(guid)!), 1)).data).toEqual(data);
  });

  it('tells the store a page stayed ours since our last write of it (slotsOurs), and stops once it changed hands', async () => {
    const { f, partner } = await joinedCore({ config: { partnerTimeoutMs: 1_000_000 } });
    const guid = await allocate(f, 'v', 4, partner);
    /** Write page 0 through us, flush it, and say what the store write was told. */
    const writeAndFlush = async (fill: number): Promise<boolean> => {
      clientWrite(f, guid, 0, Buffer.alloc(PAGE, fill));
      await partner.pump();
      f.core.onClientRequest(CONN, f.request({ kind: 'C_FLUSH', guid }));
      await partner.pump(50, false); // store operations stay pending, to be looked at
      const op = f.pending.find((p) => p.op.kind === 'writePage')?.op;
      await f.settleIo();
      await partner.pump();
      if (op?.kind !== 'writePage') throw new Error('no page write');
      return op.slotsOurs;
    };
    expect(await writeAndFlush(1)).toBe(false); // never written by us
    expect(await writeAndFlush(2)).toBe(true); // ours since our last write
    // The partner takes page 0 and gives it back: it may have written it meanwhile.
    partner.send({ kind: 'LOCK_REQUEST', guid, firstPage: 0, pageCount: 1, op: LockOp.TAKE, ownerGen: 0 });
    partner.send({ kind: 'LOCK_REQUEST', guid, firstPage: 0, pageCount: 1, op: LockOp.GIVE, ownerGen: 2 });
    await partner.pump();
    expect(f.core.allocator.allocs.get(guid)!.owner[0]).toBe(1);
    expect(await writeAndFlush(3)).toBe(false);
    expect(await writeAndFlush(4)).toBe(true);
    expect((await f.store.readPage(f.core.allocator.location(f.core.allocator.allocs.get(guid)!), 0)).data).toEqual(Buffer.alloc(PAGE, 4));
  });
});
