// The join: both sides decide on the same SENSE whose state wins (the side
// that served, else controller 1); that side owns every page, replays its
// table and sends the dirty pages the other lacks (READ_HEADER, then
// WRITE_PAGE marked RESYNC); the other drops what the winner does not know.
// Mirrored only once both have pushed.

import { describe, expect, it } from 'vitest';
import { crc32c } from '../../src/protocol/crc32c.js';
import { JoinFlag, PageFlag, PageState, Role, SenseReason, type AllocationRecord } from '../../src/protocol/messages.js';
import { SYNC_RESERVATION } from '../../src/core/allocator.js';
import { allocate, clientWrite, coreFixture, errorName, framesOf, HandPartner, PAGE, replyTo, type CoreFixture } from './core-fixture.js';

const sense = (joinFlags: number) => ({ kind: 'SENSE_REQUEST', role: Role.STARTING, reason: SenseReason.HEARTBEAT, joinFlags });
const FRESH = JoinFlag.JOINING | JoinFlag.FRESH;

async function alone(): Promise<CoreFixture> {
  const f = await coreFixture({ mirroring: true });
  for (let t = 0; t <= 1000 && f.core.currentRole !== Role.ALONE; t += 50) {
    f.setNow(t);
    f.core.tick();
    await f.settleIo();
  }
  expect(f.core.currentRole).toBe(Role.ALONE);
  return f;
}

describe('join', () => {
  it('two fresh controllers: controller 1 wins, and both are mirrored once both pushed', async () => {
    const f = await coreFixture({ mirroring: true });
    const partner = new HandPartner(f);
    f.core.peerUp();
    await partner.pump();
    expect(f.core.currentRole).toBe(Role.JOINING);
    expect(partner.sentOf('SENSE_REQUEST')[0]).toMatchObject({ joinFlags: FRESH });
    partner.send(sense(FRESH));
    await partner.pump();
    expect(f.core.joining.current?.authoritative).toBe(true);
    expect(partner.sentOf('SENSE_REQUEST').at(-1)).toMatchObject({ joinFlags: FRESH | JoinFlag.PUSH_DONE });
    // Our push is done; the partner's is not: not mirrored yet, and writes wait.
    expect(f.core.currentRole).toBe(Role.JOINING);
    expect(errorName(replyTo(f, clientWrite(f, '00000000-0000-4000-8000-000000000001', 0, Buffer.alloc(1))))).toBe('NOT_ACTIVE');
    partner.send(sense(FRESH | JoinFlag.PUSH_DONE));
    await partner.pump();
    expect(f.core.currentRole).toBe(Role.MIRRORED);
    expect(f.core.membership.fresh).toBe(false);
    expect(f.core.counters.joins).toBe(1);
    // The winner records in the store that both serve again.
    expect((await f.store.readMailbox()).epoch).toMatchObject({ activeId: 0 });
  });

  it('controller 2 joining controller 1: controller 1 wins and owns every page', async () => {
    const stale: AllocationRecord = { guid: '00000000-0000-4000-8000-0000000000cc', name: 'stale', policy: 'default', pageSizeBytes: PAGE, pageCount: 2, dataOffset: 0, createdEpoch: 1 };
    const f = await coreFixture({ selfId: 2, mirroring: true, table: [stale] });
    expect(f.core.allocator.allocs.has(stale.guid)).toBe(true);
    const partner = new HandPartner(f);
    f.core.peerUp();
    await partner.pump();
    partner.send(sense(FRESH));
    await partner.pump();
    expect(f.core.joining.current?.authoritative).toBe(false);
    expect([...f.core.allocator.allocs.get(stale.guid)!.owner]).toEqual([1, 1]);
    // The winner replays its table: 'kept' only.
    const kept = { guid: '00000000-0000-4000-8000-0000000000dd', name: 'kept', policy: 'default', pageSizeBytes: PAGE, pageCount: 2, dataOffset: 1 << 20, createdEpoch: 1 };
    partner.send({ kind: 'ALLOCATE', ...kept, reservationId: SYNC_RESERVATION });
    expect(framesOf(f.flush(), 'ALLOCATE_REPLY')).toHaveLength(1);
    partner.send(sense(FRESH | JoinFlag.PUSH_DONE));
    await partner.pump();
    expect(f.core.currentRole).toBe(Role.MIRRORED);
    expect([...f.core.allocator.allocs.keys()]).toEqual([kept.guid]);
    expect(f.log.some((l) => l.msg === 'join: allocation unknown to the partner; dropped')).toBe(true);
  });

  it('a survivor rejoined by a fresh partner wins, replays its table, sends the dirty pages it lacks, and keeps serving alone meanwhile', async () => {
    const f = await alone();
    const guid = await allocate(f, 'v', 4);
    // A write not yet in the store: dirty here, and the partner has never seen it.
    clientWrite(f, guid, 2 * PAGE, Buffer.alloc(PAGE, 0x3c));
    const partner = new HandPartner(f);
    partner.auto.delete('WRITE_PAGE');
    f.core.peerUp();
    partner.send(sense(FRESH));
    await partner.pump(50, false);
    expect(f.core.joining.current?.authoritative).toBe(true);
    expect(f.core.currentRole).toBe(Role.ALONE);
    expect(partner.sentOf('ALLOCATE')).toEqual([expect.objectContaining({ guid, name: 'v', reservationId: SYNC_RESERVATION })]);
    const ask = partner.take('READ_HEADER');
    expect(ask).toMatchObject({ guid, firstPage: 2, pageCount: 1 });
    partner.reply(ask, { kind: 'READ_HEADER_REPLY', guid, headers: [{ page: 2, version: 0, crc: 0, state: PageState.ABSENT, epoch: 0 }] });
    await partner.pump(50, false);
    const resync = partner.take('WRITE_PAGE');
    expect(resync.kind === 'WRITE_PAGE' && resync.pages).toEqual([
      expect.objectContaining({ guid, page: 2, version: 1, pageFlags: PageFlag.RESYNC, crc: crc32c(Buffer.alloc(PAGE, 0x3c)) }),
    ]);
    partner.answer(resync);
    partner.auto.add('WRITE_PAGE');
    // The write reaches the store meanwhile; the partner hears it clean.
    await partner.pump();
    expect(partner.sentOf('WRITE_PAGE').flatMap((m) => m.pages).at(-1)).toMatchObject({ page: 2, pageFlags: PageFlag.CLEAN_AT });
    // Resync is paced: the next chunk waits out a sleep of core time.
    f.setNow(f.nowMs() + 1);
    f.core.tick();
    await partner.pump();
    expect(partner.sentOf('SENSE_REQUEST').at(-1)?.joinFlags).toBe(JoinFlag.JOINING | JoinFlag.PUSH_DONE);
    expect(f.core.currentRole).toBe(Role.ALONE);
    partner.send(sense(FRESH | JoinFlag.PUSH_DONE));
    await partner.pump();
    expect(f.core.currentRole).toBe(Role.MIRRORED);
    expect(f.core.status().resync).toBeNull();
  });

  it('answers READ_HEADER with the header of each page, and refuses a range outside the allocation', async () => {
    const f = await alone();
    const guid = await allocate(f, 'v', 4);
    await f.settleIo();
    clientWrite(f, guid, PAGE, Buffer.alloc(PAGE, 1));
    await f.settleIo();
    const partner = new HandPartner(f);
    f.core.peerUp();
    f.flush();
    partner.send({ kind: 'READ_HEADER', guid, firstPage: 0, pageCount: 2 });
    const [reply] = framesOf(f.flush(), 'READ_HEADER_REPLY');
    expect(reply?.headers).toEqual([
      expect.objectContaining({ page: 0, state: PageState.ABSENT }),
      expect.objectContaining({ page: 1, version: 1, state: PageState.CLEAN, crc: crc32c(Buffer.alloc(PAGE, 1)) }),
    ]);
    partner.send({ kind: 'READ_HEADER', guid, firstPage: 0, pageCount: 5 });
    expect(errorName(f.flush()[0])).toBe('OUT_OF_RANGE');
  });
});
