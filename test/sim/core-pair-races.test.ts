// Races between the two controllers, set up frame by frame with held links
// and stalled stores: crossing lock requests, pointers across a link flap,
// destages still in flight when the link comes back.

import { describe, expect, it } from 'vitest';
import { PointerMode } from '../../src/protocol/messages.js';
import { Harness, tagged } from './harness.js';
import { codeOf, pairWithClients, restartBoth } from './pair-steps.js';

const PAGE = 512;

describe('lock requests that cross', () => {
  it('a flush on A taking a page while B asks for it twice leaves one owner', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 81, frameDelayMaxMs: 1 });
    const cb2 = h.client('B');
    const x = await h.run(ca.allocate('cross', 4 * PAGE, 'tiny'));
    await h.run(ca.write(x.guid, 0, tagged(PAGE, 'v1')));
    await h.runUntilQuiet();

    // B's first write takes pages 0-1; A's grant is held on the way back.
    h.hold('A->B', (m) => m.kind === 'LOCK_REQUEST_REPLY');
    h.b.store.stall(); // page 1 is not cached on B: its write will wait on the store
    const w2a = h.track(cb.write(x.guid, 0, tagged(2 * PAGE, 'b-first')));
    await h.runUntil(() => h.heldKinds('A->B').length > 0, 'grant held');
    // B's second write asks for page 0 again (B still thinks A owns it); held too.
    h.hold('B->A', (m) => m.kind === 'LOCK_REQUEST');
    const w2b = h.track(cb2.write(x.guid, 0, tagged(PAGE, 'b-second')));
    await h.runUntil(() => h.heldKinds('B->A').length > 0, 'second request held');
    // A flushes: it wants page 0 back to destage it.
    const flush = h.track(ca.flush());
    await h.runUntil(() => h.heldKinds('A->B').includes('LOCK_REQUEST'), 'A asks for page 0');
    h.release('B->A');
    await h.advance(5);
    h.release('A->B');
    await h.advance(5);
    h.b.store.unstall();
    await h.run(w2a.promise).catch(() => undefined);
    await h.run(w2b.promise).catch(() => undefined);
    await h.run(flush.promise).catch(() => undefined);
    await h.runUntilQuiet();

    // Now both write page 0 at once: if both think they own it, they diverge.
    const wa = h.settle(ca.write(x.guid, 0, tagged(PAGE, 'a-last')));
    const wb = h.settle(cb.write(x.guid, 0, tagged(PAGE, 'b-last')));
    await Promise.all([wa, wb]);
    await h.runUntilQuiet();
    const viaA = await h.run(ca.read(x.guid, 0, PAGE));
    const viaB = await h.run(cb.read(x.guid, 0, PAGE));
    expect(viaB.toString().slice(0, 8), `A has ${viaA.toString().slice(0, 8)} (${h.describe()})`).toBe(viaA.toString().slice(0, 8));
    expect(h.status('A').digests).toEqual(h.status('B').digests);
  });
});

describe('write pointers across a link flap', () => {
  for (const holder of ['A', 'B'] as const) {
    it(`a write pointer held by ${holder} does not commit on one side only after the link came back`, async () => {
      const h = await Harness.createPair({ seed: holder === 'A' ? 82 : 83 });
      const c = h.client(holder);
      const other = h.client(holder === 'A' ? 'B' : 'A');
      const x = await h.run(c.allocate('flap', 4 * PAGE, 'tiny'));
      await h.run(c.write(x.guid, 0, tagged(4 * PAGE, 'base')));
      const ptr = await h.run(c.openPointer(x.guid, 0, 2, PointerMode.WRITE));
      await h.run(c.write(x.guid, 0, tagged(2 * PAGE, 'shadow'), ptr));
      h.cut('flap');
      await h.advance(50);
      h.heal();
      await h.waitMirrored();
      // The partner forgot the pointer with the link: it is gone on this side too.
      expect(codeOf(await h.settle(c.closePointer(ptr, true)))).toBe('POINTER_UNKNOWN');
      await h.runUntilQuiet();
      const mine = await h.run(c.read(x.guid, 0, 2 * PAGE));
      const theirs = await h.run(other.read(x.guid, 0, 2 * PAGE));
      expect(theirs.equals(mine), `${holder} reads ${mine.toString().slice(0, 8)}, partner reads ${theirs.toString().slice(0, 8)}`).toBe(true);
      expect(h.status('A').digests).toEqual(h.status('B').digests);
    });
  }
});

describe('a destage in flight when the link comes back', () => {
  it('cannot land over a newer version the new owner destaged', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 84 });
    const x = await h.run(ca.allocate('late', 2 * PAGE, 'tiny'));
    await h.run(cb.write(x.guid, 0, tagged(PAGE, 'b-v1'))); // B owns page 0 now
    await h.runUntilQuiet();
    h.b.store.stall();
    const flushB = h.track(cb.flush()); // B starts destaging v1; the write hangs in its store
    await h.advance(20);
    h.cut('flap');
    await h.advance(20);
    h.heal();
    await h.advance(50);
    // B's old destage still hangs. A may refuse the write until it lands
    // (NOT_MIRRORED); what it must not do is destage a newer version under it.
    const early = await h.settle(ca.write(x.guid, 0, tagged(PAGE, 'a-v2')));
    if (early.ok) await h.run(ca.flush());
    else expect(codeOf(early)).toBe('NOT_MIRRORED');
    h.b.store.unstall();
    await h.waitMirrored();
    if (!early.ok) {
      await h.run(ca.write(x.guid, 0, tagged(PAGE, 'a-v2')));
      await h.run(ca.flush());
    }
    await h.settle(flushB.promise);
    await h.runUntilQuiet();
    const view = await h.openStoreView();
    const rec = (await view.readTable()).records.find((r) => r.name === 'late')!;
    const stored = await view.readPage({ guid: rec.guid, dataOffset: rec.dataOffset, pageSizeBytes: PAGE }, 0);
    expect(stored.data.toString().slice(0, 4)).toBe('a-v2');
    expect(h.status('A').dirtyPages + h.status('B').dirtyPages).toBe(0);
  });
});

describe('an allocation the coordinator learns in a join', () => {
  it('is written to the stored table, so it survives a restart of both', async () => {
    const h = await Harness.createPair({ seed: 85 });
    const cb = h.client('B');
    // A asks B to record the allocation; A dies before it hears back (and before it writes the table).
    h.hold('B->A', (m) => m.kind === 'ALLOCATE_REPLY');
    const alloc = h.track(h.client('A').allocate('orphan', 4 * PAGE, 'tiny'));
    await h.runUntil(() => h.heldKinds('B->A').length > 0, 'B recorded the allocation');
    h.kill('A');
    await h.runUntil(() => alloc.settled, 'allocation answered');
    await h.restart('A');
    h.heal();
    await h.waitMirrored();
    const listed = await h.run(cb.list());
    expect(listed.map((e) => e.name)).toEqual(['orphan']);
    // The pair serves it: a write is acknowledged and flushed...
    const guid = listed[0]!.guid;
    await h.run(cb.write(guid, 0, tagged(PAGE, 'kept')));
    await h.run(cb.flush());
    await h.runUntilQuiet();
    // ...so after both restart it must still be there.
    await restartBoth(h);
    const ca = h.client('A');
    expect((await h.run(ca.list())).map((e) => e.name)).toEqual(['orphan']);
    expect(await h.run(ca.read(guid, 0, PAGE))).toEqual(tagged(PAGE, 'kept'));
  });
});

describe('an extent freed while a destage to it is in flight', () => {
  // Regression: a released allocation's extent could go to a new allocation
  // (and be zeroed) while an old page write was still on its way; it landed
  // in the new allocation's slots and reads failed CHECKSUM_MISMATCH. Released
  // extents now count as used until both sides' writes to them have landed.
  it('is not handed to a new allocation before the old write landed', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 86 });
    const x = await h.run(ca.allocate('old', 8 * 1024, 'small'));
    await h.run(ca.write(x.guid, 0, tagged(8 * 1024, 'old-bytes')));
    h.a.store.stall('pageWrites');
    const flush = h.track(ca.flush()); // A's destages of the old pages hang
    await h.advance(10);
    const release = h.track(cb.release(x.guid));
    await h.advance(10);
    const y = await h.settle(cb.allocate('new', 16 * PAGE, 'tiny'));
    h.a.store.unstall();
    await h.settle(flush.promise);
    await h.settle(release.promise);
    await h.runUntilQuiet();
    if (!y.ok) return; // refusing the allocation while the old extent drains is fine too
    for (const c of [ca, cb]) {
      const r = await h.settle(c.read(y.value.guid, 0, 16 * PAGE));
      expect(r.ok ? 'ok' : codeOf(r), `read through ${c.controller}`).toBe('ok');
      if (r.ok) expect(r.value).toEqual(Buffer.alloc(16 * PAGE));
    }
  });
});

describe('allocations made at once through both controllers', () => {
  it('get distinct extents, the same table on both sides, and keep their data apart', async () => {
    const h = await Harness.createPair({ seed: 87, frameDelayMaxMs: 3, storeDelayMaxMs: 3 });
    const clients = [h.client('A'), h.client('B'), h.client('A'), h.client('B')];
    const made = await h.run(Promise.all(Array.from({ length: 12 }, (_, i) => clients[i % 4]!.allocate(`c${i}`, (3 + (i % 5)) * PAGE, i % 3 === 0 ? 'small' : 'tiny'))));
    await h.runUntilQuiet();
    expect(h.status('A').digests.table).toBe(h.status('B').digests.table);
    const table = (await (await h.openStoreView()).readTable()).records;
    expect(table.length).toBe(12);
    const extents = table.map((r) => [r.dataOffset, r.dataOffset + r.pageCount * (r.pageSizeBytes + 64)] as const).sort((p, q) => p[0] - q[0]);
    for (let i = 1; i < extents.length; i++) expect(extents[i]![0]).toBeGreaterThanOrEqual(extents[i - 1]![1]);
    await h.run(Promise.all(made.map((m, i) => clients[(i + 1) % 4]!.write(m.guid, 0, tagged(m.pageSizeBytes * m.pageCount, `data-${i}`)))));
    await h.run(clients[1]!.flush());
    await restartBoth(h);
    const ca = h.client('A');
    for (const [i, m] of made.entries()) expect(await h.run(ca.read(m.guid, 0, m.pageSizeBytes * m.pageCount))).toEqual(tagged(m.pageSizeBytes * m.pageCount, `data-${i}`));
  });
});

describe('a partner request that times out on a live link', () => {
  // Regression: a partner request that timed out failed alone while the
  // partner could still apply it (here B drops the allocation once its slow
  // destage lands), leaving the tables different while both said mirrored.
  // A timeout on a live link now takes the link down, and the pair rejoins.
  it('does not leave the two allocation tables different', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 89, peerRequestTimeoutMs: 1000 });
    const x = await h.run(ca.allocate('slow', 4 * PAGE, 'tiny'));
    await h.run(cb.write(x.guid, 0, tagged(PAGE, 'b-owned'))); // B owns page 0
    h.b.store.stall('pageWrites');
    const flush = h.track(cb.flush()); // B's destage of page 0 hangs
    await h.advance(10);
    const release = await h.settle(ca.release(x.guid));
    h.b.store.unstall();
    await h.settle(flush.promise);
    await h.runUntilQuiet();
    expect(release.ok ? 'ok' : codeOf(release)).toBe('TIMEOUT');
    expect(h.status('B').digests.table).toBe(h.status('A').digests.table);
  });
});
