// Mirrored pages arriving (WRITE_PAGE): checked whole against the ownership
// rules first (from the page's owner, under the generation both know, never
// older than our copy, never other bytes at one version), then applied
// entirely or not at all; "clean at v" and tag-only pages.

import { describe, expect, it } from 'vitest';
import { crc32c } from '../../src/protocol/crc32c.js';
import { LockOp, PageFlag, type PageWrite } from '../../src/protocol/messages.js';
import { allocate, clientRead, errorName, joinedCore, PAGE, readData, replyTo, type CoreFixture, type HandPartner } from './core-fixture.js';

function page(guid: string, p: number, version: number, fill: number, extra: Partial<PageWrite> = {}): PageWrite {
  const data = Buffer.alloc(PAGE, fill);
  return { guid, page: p, version, crc: crc32c(data), epoch: 1, pageFlags: 0, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: 1, data, ...extra };
}

/** Controller 1 with an allocation of 4 pages, of which the partner took pages 0 and 1 (generation 1). */
async function setup(): Promise<{ f: CoreFixture; partner: HandPartner; guid: string }> {
  const { f, partner } = await joinedCore();
  const guid = await allocate(f, 'v', 4, partner);
  partner.send({ kind: 'LOCK_REQUEST', guid, firstPage: 0, pageCount: 2, op: LockOp.TAKE, ownerGen: 0 });
  f.flush();
  return { f, partner, guid };
}

function writePage(f: CoreFixture, partner: HandPartner, pages: PageWrite[]) {
  const req = partner.send({ kind: 'WRITE_PAGE', pages });
  return f.flush().find((m) => m.requestId === req.requestId);
}

describe('mirror in', () => {
  it("stores the owner's page as dirty, answers with the count, and serves it to readers", async () => {
    const { f, partner, guid } = await setup();
    const reply = writePage(f, partner, [page(guid, 0, 1, 0x5a), page(guid, 1, 1, 0x5b)]);
    expect(reply).toMatchObject({ kind: 'WRITE_PAGE_REPLY', count: 2 });
    expect(f.core.counters.pagesMirroredIn).toBe(2);
    expect(f.core.status().dirtyPages).toBe(2);
    expect(readData(replyTo(f, clientRead(f, guid, PAGE, 4)))).toEqual(Buffer.alloc(4, 0x5b));
  });

  it('refuses a page we own with OWNERSHIP_CONFLICT and keeps our copy', async () => {
    const { f, partner, guid } = await setup();
    const reply = writePage(f, partner, [page(guid, 2, 1, 0x77)]);
    expect(errorName(reply)).toBe('OWNERSHIP_CONFLICT');
    expect(f.core.counters.ownershipConflicts).toBe(1);
    expect(f.core.allocator.allocs.get(guid)!.pages.has(2)).toBe(false);
  });

  it('applies a frame entirely or not at all: one bad page keeps the good ones out too', async () => {
    const { f, partner, guid } = await setup();
    expect(errorName(writePage(f, partner, [page(guid, 0, 1, 0x11), page(guid, 2, 1, 0x22)]))).toBe('OWNERSHIP_CONFLICT');
    const short = { ...page(guid, 1, 1, 0x33), data: Buffer.alloc(10) };
    expect(errorName(writePage(f, partner, [page(guid, 0, 1, 0x11), short]))).toBe('BAD_FIELD');
    const alloc = f.core.allocator.allocs.get(guid)!;
    expect(alloc.pages.size).toBe(0);
    expect(f.core.counters.pagesMirroredIn).toBe(0);
  });

  it('refuses a page written under another ownership generation', async () => {
    const { f, partner, guid } = await setup();
    expect(errorName(writePage(f, partner, [page(guid, 0, 1, 0x11, { ownerGen: 0 })]))).toBe('OWNERSHIP_CONFLICT');
    expect(errorName(writePage(f, partner, [page(guid, 0, 1, 0x11, { ownerGen: 2 })]))).toBe('OWNERSHIP_CONFLICT');
  });

  it('refuses a version older than ours, and other bytes at the version we hold', async () => {
    const { f, partner, guid } = await setup();
    writePage(f, partner, [page(guid, 0, 2, 0x22)]);
    expect(errorName(writePage(f, partner, [page(guid, 0, 1, 0x11)]))).toBe('OWNERSHIP_CONFLICT');
    expect(errorName(writePage(f, partner, [page(guid, 0, 2, 0x99)]))).toBe('OWNERSHIP_CONFLICT');
    expect(readData(replyTo(f, clientRead(f, guid, 0, 1)))).toEqual(Buffer.from([0x22]));
  });

  it('"clean at v" with the CRC we hold marks our copy clean', async () => {
    const { f, partner, guid } = await setup();
    const p = page(guid, 0, 1, 0x44);
    writePage(f, partner, [p]);
    expect(f.core.status().dirtyPages).toBe(1);
    writePage(f, partner, [{ ...p, pageFlags: PageFlag.CLEAN_AT, data: Buffer.alloc(0) }]);
    expect(f.core.status().dirtyPages).toBe(0);
    expect(f.core.allocator.allocs.get(guid)!.pages.get(0)!.storeVersion).toBe(1);
  });

  it('remembers the client write named on the last page, and the tags a join hands over', async () => {
    const { f, partner, guid } = await setup();
    writePage(f, partner, [page(guid, 0, 1, 0x44, { clientId: 9, clientSeq: 3 })]);
    expect(f.core.tags.taggedWrites.get('9:3')).toEqual({ state: 'held', guid, first: 0, count: 1 });
    const tagOnly = { ...page(guid, 3, 0, 0, { clientId: 9, clientSeq: 4, pageFlags: PageFlag.TAG_ONLY, ownerGen: 0 }), data: Buffer.alloc(0) };
    expect(writePage(f, partner, [tagOnly])?.kind).toBe('WRITE_PAGE_REPLY');
    expect(f.core.tags.taggedWrites.get('9:4')).toMatchObject({ state: 'held' });
    // A tag carries no page: page 3 (ours) was not touched.
    expect(f.core.allocator.allocs.get(guid)!.pages.has(3)).toBe(false);
  });
});
