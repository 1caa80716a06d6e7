// Allocations: created with checked fields in a free extent of the store
// (zeroed before anyone can write it), kept in the store's table, released
// so the extent can be used again; mirrored, the coordinator places extents
// and the partner reserves what it is told.

import { describe, expect, it } from 'vitest';
import { CONN, allocate, clientRead, clientWrite, coreFixture, errorName, joinedCore, PAGE, partnerAllocates, replyTo, hop, type CoreFixture } from './core-fixture.js';

async function ask(f: CoreFixture, body: Record<string, unknown>) {
  const req = f.request(body);
  f.core.onClientRequest(CONN, req);
  await f.settleIo();
  await hop();
  return replyTo(f, req);
}

const alloc = (f: CoreFixture, name: string, sizeBytes: number, policy = '') => ask(f, { kind: 'C_ALLOCATE', name, policy, sizeBytes });

/** The most pages of PAGE bytes whose extent fits the data area. */
function pagesThatFit(f: CoreFixture): number {
  const { dataBytes, extentBytes } = f.core.cfg.store;
  let lo = 1;
  let hi = dataBytes / PAGE;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (extentBytes(PAGE, mid) <= dataBytes) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

describe('allocator', () => {
  it('creates an allocation, zeroes its extent, and writes it to the store table', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'vol', 3);
    const table = await f.store.readTable();
    expect(table.records).toEqual([expect.objectContaining({ guid, name: 'vol', pageCount: 3, pageSizeBytes: PAGE })]);
    // A fresh extent reads back as zeros.
    clientRead(f, guid, 0, 8);
    await f.settleIo();
    await hop();
    expect(f.replies.at(-1)?.msg).toMatchObject({ kind: 'C_READ_REPLY', data: Buffer.alloc(8) });
  });

  it('lists its allocations (C_LIST)', async () => {
    const f = await coreFixture();
    const a = await allocate(f, 'a', 1);
    const b = await allocate(f, 'b', 3);
    expect(await ask(f, { kind: 'C_LIST' })).toMatchObject({
      kind: 'C_LIST_REPLY',
      allocations: [
        { guid: a, name: 'a', policy: 'default', pageSizeBytes: PAGE, pageCount: 1 },
        { guid: b, name: 'b', policy: 'default', pageSizeBytes: PAGE, pageCount: 3 },
      ],
    });
  });

  it('refuses bad names, sizes and policies', async () => {
    const f = await coreFixture();
    expect(errorName(await alloc(f, '', PAGE))).toBe('BAD_FIELD');
    expect(errorName(await alloc(f, 'x'.repeat(65), PAGE))).toBe('BAD_FIELD');
    expect(errorName(await alloc(f, 'v', 0))).toBe('BAD_FIELD');
    expect(errorName(await alloc(f, 'v', -PAGE))).toBe('BAD_FIELD');
    expect(errorName(await alloc(f, 'v', 1.5))).toBe('BAD_FIELD');
    expect(errorName(await alloc(f, 'v', PAGE, 'no-such-policy'))).toBe('POLICY_UNKNOWN');
    expect(f.core.allocator.allocs.size).toBe(0);
  });

  it('refuses a second allocation of one name, also while the first is still being made', async () => {
    const f = await coreFixture();
    const first = f.request({ kind: 'C_ALLOCATE', name: 'same', policy: '', sizeBytes: PAGE });
    f.core.onClientRequest(CONN, first);
    expect(replyTo(f, first)).toBeUndefined();
    expect(errorName(await alloc(f, 'same', PAGE))).toBe('DUPLICATE');
    expect(replyTo(f, first)?.kind).toBe('C_ALLOCATE_REPLY');
    expect(errorName(await alloc(f, 'same', PAGE))).toBe('DUPLICATE');
  });

  it('answers NO_SPACE when the store is full, and finds the space again after a release', async () => {
    const f = await coreFixture();
    expect(errorName(await alloc(f, 'huge', f.core.cfg.store.dataBytes + PAGE))).toBe('NO_SPACE');
    const big = await allocate(f, 'big', pagesThatFit(f));
    expect(errorName(await alloc(f, 'small', PAGE))).toBe('NO_SPACE');
    expect((await ask(f, { kind: 'C_RELEASE', guid: big }))?.kind).toBe('C_RELEASE_REPLY');
    expect((await alloc(f, 'small', PAGE))?.kind).toBe('C_ALLOCATE_REPLY');
    expect((await f.store.readTable()).records.map((r) => r.name)).toEqual(['small']);
  });

  it('answers UNKNOWN_GUID for a guid it does not know, released ones included', async () => {
    const f = await coreFixture();
    const guid = await allocate(f, 'v', 2);
    await ask(f, { kind: 'C_RELEASE', guid });
    expect(errorName(await ask(f, { kind: 'C_RELEASE', guid }))).toBe('UNKNOWN_GUID');
    clientWrite(f, guid, 0, Buffer.alloc(4));
    expect(errorName(f.replies.at(-1)?.msg)).toBe('UNKNOWN_GUID');
    clientRead(f, '00000000-0000-4000-8000-00000000ffff', 0, 4);
    expect(errorName(f.replies.at(-1)?.msg)).toBe('UNKNOWN_GUID');
  });

  it('mirrored, controller 1 zeroes the extent before the partner hears of the allocation', async () => {
    const { f, partner } = await joinedCore();
    partner.auto.delete('SPACE_REQUEST');
    const req = f.request({ kind: 'C_ALLOCATE', name: 'm', policy: '', sizeBytes: 2 * PAGE });
    f.core.onClientRequest(CONN, req);
    await partner.pump();
    const space = partner.take('SPACE_REQUEST');
    expect(space).toMatchObject({ reserve: true, pageCount: 2 });
    partner.answer(space);
    expect(f.flush().map((m) => m.kind)).toEqual([]);
    expect(f.pending.map((p) => p.op.kind)).toEqual(['clearExtent']);
    await f.runOne('clearExtent');
    expect(f.flush().map((m) => m.kind)).toEqual(['ALLOCATE']);
  });

  it('controller 2 reserves only the extent the coordinator names, and installs only a reserved one', async () => {
    const { f, partner } = await joinedCore({ selfId: 2 });
    partner.send({ kind: 'SPACE_REQUEST', policy: 'default', pageSizeBytes: PAGE, pageCount: 2, reserve: true, dataOffset: -1 });
    expect(errorName(f.flush()[0])).toBe('BAD_FIELD');
    partner.send({ kind: 'ALLOCATE', guid: '00000000-0000-4000-8000-0000000000bb', name: 'x', policy: 'default', pageSizeBytes: PAGE, pageCount: 2, dataOffset: 0, createdEpoch: 1, reservationId: 12345 });
    expect(errorName(f.flush()[0])).toBe('BAD_FIELD');
    const guid = partnerAllocates(partner, 'v', 2);
    expect(f.core.allocator.allocs.get(guid)?.record.name).toBe('v');
    // Its extent is in use here now: another over it is refused.
    partner.send({ kind: 'SPACE_REQUEST', policy: 'default', pageSizeBytes: PAGE, pageCount: 2, reserve: true, dataOffset: 0 });
    expect(errorName(f.flush()[0])).toBe('NO_SPACE');
  });

  it('controller 1, the coordinator, refuses a SPACE_REQUEST that names an offset', async () => {
    const { f, partner } = await joinedCore();
    partner.send({ kind: 'SPACE_REQUEST', policy: 'default', pageSizeBytes: PAGE, pageCount: 2, reserve: true, dataOffset: 0 });
    expect(errorName(f.flush()[0])).toBe('BAD_FIELD');
    partner.send({ kind: 'SPACE_REQUEST', policy: 'default', pageSizeBytes: PAGE, pageCount: 2, reserve: true, dataOffset: -1 });
    expect(f.flush()[0]).toMatchObject({ kind: 'SPACE_REQUEST_REPLY', dataOffset: 0 });
  });

  it("a release is carried to the partner, and the partner's RELEASE drops ours", async () => {
    const { f, partner } = await joinedCore();
    const a = await allocate(f, 'a', 2, partner);
    const b = await allocate(f, 'b', 2, partner);
    const rel = f.request({ kind: 'C_RELEASE', guid: a });
    f.core.onClientRequest(CONN, rel);
    await partner.pump();
    await hop();
    expect(partner.sentOf('RELEASE')).toEqual([expect.objectContaining({ guid: a })]);
    expect(replyTo(f, rel)?.kind).toBe('C_RELEASE_REPLY');
    partner.send({ kind: 'RELEASE', guid: b });
    await partner.pump();
    expect(partner.sentOf('RELEASE_REPLY')).toHaveLength(1);
    expect(f.core.allocator.allocs.size).toBe(0);
    expect((await f.store.readTable()).records).toEqual([]);
  });
});
