// Online verify: our copy of each page against the partner's (READ_HEADER)
// and, where only one side caches a page, against the store's. Matching
// pages are not listed; differing ones are MISMATCH; a page written while
// the answer was on its way is BUSY. Only mirrored controllers verify. The
// test hook that makes our copy differ is refused unless configured.

import { describe, expect, it } from 'vitest';
import { crc32c } from '../../src/protocol/crc32c.js';
import { DEFAULT_LIMITS } from '../../src/protocol/limits.js';
import { PageState, VerifyVerdict, type Message } from '../../src/protocol/messages.js';
import { CONN, allocate, clientRead, clientWrite, coreFixture, errorName, hop, joinedCore, PAGE, readData, replyTo, type CoreFixture, type HandPartner } from './core-fixture.js';

const crcOf = (fill: number): number => crc32c(Buffer.alloc(PAGE, fill));

function verify(f: CoreFixture, guid: string, firstPage: number, pageCount: number): Message {
  const req = f.request({ kind: 'C_VERIFY', guid, firstPage, pageCount });
  f.core.onClientRequest(CONN, req);
  return req;
}

/** Controller 1 with page 0 written (0x11, version 1, mirrored) and pages 1..3 never written. */
async function setup(): Promise<{ f: CoreFixture; partner: HandPartner; guid: string }> {
  const { f, partner } = await joinedCore();
  const guid = await allocate(f, 'v', 4, partner);
  clientWrite(f, guid, 0, Buffer.alloc(PAGE, 0x11));
  await partner.pump();
  return { f, partner, guid };
}

describe('verifier', () => {
  it('lists nothing when the partner holds the same copies', async () => {
    const { f, partner, guid } = await setup();
    const req = verify(f, guid, 0, 2);
    await partner.pump();
    const ask = partner.take('READ_HEADER');
    expect(ask).toMatchObject({ guid, firstPage: 0, pageCount: 2 });
    partner.reply(ask, {
      kind: 'READ_HEADER_REPLY',
      guid,
      headers: [
        { page: 0, version: 1, crc: crcOf(0x11), state: PageState.DIRTY, epoch: 1 },
        { page: 1, version: 0, crc: 0, state: PageState.ABSENT, epoch: 0 },
      ],
    });
    await f.settleIo();
    await hop();
    expect(replyTo(f, req)).toMatchObject({ kind: 'C_VERIFY_REPLY', pagesChecked: 2, pages: [] });
  });

  it('lists a page whose copies differ as MISMATCH, with both headers', async () => {
    const { f, partner, guid } = await setup();
    const req = verify(f, guid, 0, 1);
    await partner.pump();
    partner.reply(partner.take('READ_HEADER'), { kind: 'READ_HEADER_REPLY', guid, headers: [{ page: 0, version: 1, crc: crcOf(0x22), state: PageState.DIRTY, epoch: 1 }] });
    await hop();
    expect(replyTo(f, req)).toMatchObject({
      kind: 'C_VERIFY_REPLY',
      pages: [{ page: 0, verdict: VerifyVerdict.MISMATCH, aVersion: 1, aCrc: crcOf(0x11), bVersion: 1, bCrc: crcOf(0x22), owner: 1 }],
    });
  });

  it("where only the partner caches a page, the store's copy decides", async () => {
    const { f, partner, guid } = await setup();
    const req = verify(f, guid, 2, 1);
    await partner.pump(50, false);
    // The partner says it holds page 2 at version 3: the store holds version 0.
    partner.reply(partner.take('READ_HEADER'), { kind: 'READ_HEADER_REPLY', guid, headers: [{ page: 2, version: 3, crc: crcOf(0x33), state: PageState.CLEAN, epoch: 1 }] });
    expect(f.pending.map((p) => p.op)).toEqual([expect.objectContaining({ kind: 'readPage', page: 2 })]);
    await f.settleIo();
    await hop();
    expect(replyTo(f, req)).toMatchObject({ pages: [{ page: 2, verdict: VerifyVerdict.MISMATCH, storeVersion: 0, bVersion: 3 }] });
  });

  it('a page written here while the answer was on its way is BUSY, not a mismatch', async () => {
    const { f, partner, guid } = await setup();
    const req = verify(f, guid, 0, 1);
    await partner.pump();
    const ask = partner.take('READ_HEADER');
    partner.auto.delete('WRITE_PAGE');
    clientWrite(f, guid, 0, Buffer.alloc(PAGE, 0x12));
    partner.reply(ask, { kind: 'READ_HEADER_REPLY', guid, headers: [{ page: 0, version: 1, crc: crcOf(0x11), state: PageState.DIRTY, epoch: 1 }] });
    await hop();
    expect(replyTo(f, req)).toMatchObject({ pages: [{ page: 0, verdict: VerifyVerdict.BUSY }] });
  });

  it('only a mirrored controller verifies; a range over headersPerMessageMax is refused', async () => {
    const single = await coreFixture();
    const guid = await allocate(single, 'v', 4);
    expect(errorName(replyTo(single, verify(single, guid, 0, 1)))).toBe('NOT_MIRRORED');
    const { f, partner } = await joinedCore({ config: { limits: { ...DEFAULT_LIMITS, headersPerMessageMax: 2 } } });
    const g = await allocate(f, 'v', 4, partner);
    expect(errorName(replyTo(f, verify(f, g, 0, 3)))).toBe('LIMIT_EXCEEDED');
  });

  it('the corruption test hook changes our copy only, and is refused unless configured', async () => {
    const { f, partner, guid } = await setup();
    const before = partner.seen.length;
    const req = f.request({ kind: 'C_TEST_CORRUPT', guid, page: 0, data: Buffer.alloc(PAGE, 0xee) });
    f.core.onClientRequest(CONN, req);
    await partner.pump();
    await hop();
    expect(replyTo(f, req)).toMatchObject({ kind: 'C_TEST_CORRUPT_REPLY', version: 1, crc: crcOf(0xee) });
    expect(partner.seen.slice(before)).toEqual([]);
    expect(readData(replyTo(f, clientRead(f, guid, 0, 2)))).toEqual(Buffer.from([0xee, 0xee]));

    const locked = await coreFixture({ config: { testHooks: false } });
    const g = await allocate(locked, 'v', 1);
    const r = locked.request({ kind: 'C_TEST_CORRUPT', guid: g, page: 0, data: Buffer.alloc(PAGE) });
    locked.core.onClientRequest(CONN, r);
    expect(errorName(replyTo(locked, r))).toBe('NOT_ALLOWED');
  });

  it('keeps the last verify report for status', async () => {
    const f = await coreFixture();
    f.setNow(100);
    f.core.onClientRequest(CONN, f.request({ kind: 'C_VERIFY_REPORT', pagesChecked: 10, mismatches: 2, repaired: 1, unsettled: 1 }));
    f.setNow(350);
    expect(f.core.status().lastVerify).toEqual({ msAgo: 250, pagesChecked: 10, mismatches: 2, repaired: 1, unsettled: 1 });
  });
});
