// Pointers: a client holds pages open to read or to write. Ids carry the
// controller id in the top byte; a write pointer's pages stay in shadows
// until committed; pointers conflict with writes and write pointers; a
// pointer unused past its lease, or whose client went away, is given back;
// mirrored, the partner hears of each and holds the shadows.

import { describe, expect, it } from 'vitest';
import { PageFlag, PointerMode } from '../../src/protocol/messages.js';
import { CONN, allocate, clientRead, clientWrite, coreFixture, errorName, framesOf, hop, joinedCore, PAGE, readData, replyTo, type CoreFixture } from './core-fixture.js';

async function open(f: CoreFixture, guid: string, firstPage: number, pageCount: number, mode: number, connId = CONN): Promise<number> {
  const req = f.request({ kind: 'C_OPEN_POINTER', guid, firstPage, pageCount, mode });
  f.core.onClientRequest(connId, req);
  await f.settleIo();
  await hop();
  const r = replyTo(f, req);
  if (r?.kind !== 'C_OPEN_POINTER_REPLY') throw Object.assign(new Error(`open answered ${JSON.stringify(r)}`), { reply: r });
  return r.pointerId;
}

async function close(f: CoreFixture, pointerId: number, commit: boolean) {
  const req = f.request({ kind: 'C_CLOSE_POINTER', pointerId, commit });
  f.core.onClientRequest(CONN, req);
  await f.settleIo();
  await hop();
  return replyTo(f, req);
}

describe('pointers', () => {
  it('pointer ids carry the controller id in the top byte', async () => {
    for (const selfId of [1, 2] as const) {
      const f = await coreFixture({ selfId });
      const guid = await allocate(f, 'v', 4);
      const a = await open(f, guid, 0, 1, PointerMode.READ);
      const b = await open(f, guid, 1, 1, PointerMode.READ);
      expect(a >>> 24).toBe(selfId);
      expect(b >>> 24).toBe(selfId);
      expect(a).not.toBe(b);
    }
  });

  it("a write pointer's pages stay apart until committed, then are written as one", async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    const id = await open(f, guid, 1, 2, PointerMode.WRITE);
    clientWrite(f, guid, PAGE, Buffer.alloc(2 * PAGE, 0x4d), { pointerId: id });
    await f.settleIo();
    await hop();
    expect(f.replies.at(-1)?.msg.kind).toBe('C_WRITE_REPLY');
    // Read through the pointer: the shadows. Plain reads: not yet.
    const through = clientRead(f, guid, PAGE, 4, { pointerId: id });
    await f.settleIo();
    await hop();
    expect(readData(replyTo(f, through))).toEqual(Buffer.alloc(4, 0x4d));
    const plain = clientRead(f, guid, PAGE, 4);
    await f.settleIo();
    await hop();
    expect(readData(replyTo(f, plain))).toEqual(Buffer.alloc(4, 0));
    expect(await close(f, id, true)).toMatchObject({ kind: 'C_CLOSE_POINTER_REPLY', pages: 2 });
    expect(readData(replyTo(f, clientRead(f, guid, 2 * PAGE, 4)))).toEqual(Buffer.alloc(4, 0x4d));
    expect(f.core.pointers.open.size).toBe(0);
  });

  it('a write pointer closed without commit leaves the pages as they were', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    const id = await open(f, guid, 0, 1, PointerMode.WRITE);
    clientWrite(f, guid, 0, Buffer.alloc(PAGE, 0x4d), { pointerId: id });
    await f.settleIo();
    expect(await close(f, id, false)).toMatchObject({ kind: 'C_CLOSE_POINTER_REPLY', pages: 0 });
    const r = clientRead(f, guid, 0, 4);
    await f.settleIo();
    await hop();
    expect(readData(replyTo(f, r))).toEqual(Buffer.alloc(4, 0));
  });

  it('refuses a plain write, or a write pointer, over pages a pointer holds; read pointers share', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    await open(f, guid, 1, 2, PointerMode.READ);
    await open(f, guid, 2, 1, PointerMode.READ);
    const w = clientWrite(f, guid, 2 * PAGE, Buffer.alloc(PAGE, 1));
    await f.settleIo();
    expect(errorName(replyTo(f, w))).toBe('LOCK_CONFLICT');
    const err = await open(f, guid, 0, 2, PointerMode.WRITE).catch((e: { reply: unknown }) => e.reply);
    expect(errorName(err as never)).toBe('LOCK_CONFLICT');
    // Page 3 is free.
    expect(replyTo(f, clientWrite(f, guid, 3 * PAGE, Buffer.alloc(PAGE, 1)))?.kind).toBe('C_WRITE_REPLY');
  });

  it('a pointer unused past pointerLeaseMs is given back on tick; using it renews the lease', async () => {
    const f = await coreFixture({ config: { pointerLeaseMs: 1000 } });
    const guid = await allocate(f, 'v', 4);
    const id = await open(f, guid, 0, 1, PointerMode.READ);
    f.setNow(800);
    clientRead(f, guid, 0, 4, { pointerId: id });
    await f.settleIo();
    f.setNow(1800);
    f.core.tick();
    expect(f.core.pointers.open.has(id)).toBe(true);
    f.setNow(1801);
    f.core.tick();
    await f.settleIo();
    expect(f.core.pointers.open.has(id)).toBe(false);
    expect(f.log.some((l) => l.msg === 'pointer lease ran out; giving it back')).toBe(true);
    // The pages it held are free for writing again.
    expect(replyTo(f, clientWrite(f, guid, 0, Buffer.alloc(PAGE, 1)))?.kind).toBe('C_WRITE_REPLY');
  });

  it("a client's pointers are given back when its connection goes", async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 4);
    const mine = await open(f, guid, 0, 1, PointerMode.READ, 1);
    const other = await open(f, guid, 1, 1, PointerMode.READ, 2);
    f.core.onClientGone(1);
    await f.settleIo();
    expect(f.core.pointers.open.has(mine)).toBe(false);
    expect(f.core.pointers.open.has(other)).toBe(true);
  });

  it('mirrored: the partner hears of a write pointer, holds its pages as pending, and installs them on commit', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 4, partner);
    const req = f.request({ kind: 'C_OPEN_POINTER', guid, firstPage: 0, pageCount: 1, mode: PointerMode.WRITE });
    f.core.onClientRequest(CONN, req);
    await partner.pump();
    await hop();
    const id = (replyTo(f, req) as { pointerId: number }).pointerId;
    expect(partner.sentOf('ALLOCATE_WRITE')).toEqual([expect.objectContaining({ guid, pointerId: id, firstPage: 0, pageCount: 1 })]);
    clientWrite(f, guid, 0, Buffer.alloc(PAGE, 0x66), { pointerId: id });
    await partner.pump();
    expect(partner.sentOf('WRITE_PAGE').at(-1)?.pages).toEqual([expect.objectContaining({ page: 0, pageFlags: PageFlag.POINTER_PENDING, pointerId: id })]);
    f.core.onClientRequest(CONN, f.request({ kind: 'C_CLOSE_POINTER', pointerId: id, commit: true }));
    await partner.pump();
    expect(partner.sentOf('RELEASE_POINTER')).toEqual([expect.objectContaining({ pointerId: id, commit: true })]);
  });

  it("mirrored: refuses a partner's pointer whose id it did not make, or one already open", async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 4, partner);
    partner.send({ kind: 'ALLOCATE_WRITE', guid, firstPage: 0, pageCount: 1, pointerId: (1 << 24) | 5 });
    expect(errorName(f.flush()[0])).toBe('BAD_FIELD');
    partner.send({ kind: 'ALLOCATE_WRITE', guid, firstPage: 0, pageCount: 1, pointerId: (2 << 24) | 5 });
    expect(framesOf(f.flush(), 'ALLOCATE_WRITE_REPLY')).toHaveLength(1);
    partner.send({ kind: 'ALLOCATE_WRITE', guid, firstPage: 2, pageCount: 1, pointerId: (2 << 24) | 5 });
    expect(errorName(f.flush()[0])).toBe('DUPLICATE');
  });
});
