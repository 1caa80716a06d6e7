// The simulator's faults and the invariants it watches (test/sim/harness.ts):
// a pause holds everything back until the resume; a paused controller that
// was taken over writes and acknowledges nothing; a crash in a store write
// tears it and leaves a store that opens; a store write from a superseded
// controller, and a page version going back in the store, are flagged; the
// workload's history check flags a planted stale read. Each of these checks must be able to fail, so each is shown failing
// on purpose where it can be.

import { describe, expect, it } from 'vitest';
import { Role } from '../../src/protocol/messages.js';
import { PageStore } from '../../src/store/page-store.js';
import { Harness, tagged } from './harness.js';
import { runSeed } from './random-workload.js';

const PAGE = 512;

describe('simulator: pause', () => {
  it('a paused controller answers nothing until it resumes, then answers what queued up', async () => {
    const h = await Harness.createPair({ seed: 11 });
    const al = await h.run(h.client('A').allocate('x', 2 * PAGE, 'tiny'));
    h.pause('A');
    const c = h.client('A');
    const read = h.track(c.read(al.guid, 0, PAGE));
    await h.advance(200);
    expect(read.settled).toBe(false);
    h.resume('A');
    await h.runUntil(() => read.settled, 'read answered');
    expect(read.result?.ok).toBe(true);
  });

  it('a client request to a paused controller times out, and its late answer is dropped', async () => {
    const h = await Harness.createPair({ seed: 12 });
    const al = await h.run(h.client('A').allocate('x', 2 * PAGE, 'tiny'));
    const c = h.client('B');
    c.timeoutMs = 100;
    h.pause('B');
    const r = await h.settle(c.read(al.guid, 0, PAGE));
    expect(r.ok ? 'ok' : r.error.message).toMatch(/no answer to C_READ from B within 100 ms/);
    h.resume('B');
    await h.advance(50);
    expect(c.outstanding).toBe(0);
  });

  for (const preferred of ['A', 'B'] as const) {
    it(`paused past the timeout without a fence action (${preferred} preferred), the paused one is taken over, then writes and acknowledges nothing`, async () => {
      const h = await Harness.createPair({ seed: 13, fenceKills: false, preferred, dirtyAgeMaxMs: 50 });
      const al = await h.run(h.client('A').allocate('x', 4 * PAGE, 'tiny'));
      await h.run(h.client('B').write(al.guid, 0, tagged(2 * PAGE, 'before')));
      h.pause('B');
      // Requests that reach B while it is stopped wait in its sockets.
      const queued = [h.track(h.client('B').write(al.guid, PAGE, tagged(PAGE, 'queued'))), h.track(h.client('B').read(al.guid, 0, PAGE))];
      await h.runUntil(() => h.a.core.currentRole === Role.ALONE, 'A took over');
      const takeoverAt = h.epochRecords[h.epochRecords.length - 1]!.atMs;
      await h.advance(300);
      const acksBefore = h.acks.filter((a) => a.node === 'B').length;
      h.resume('B');
      await h.runUntil(() => queued.every((t) => t.settled), 'queued requests answered');
      for (const t of queued) expect(t.result?.ok).toBe(false);
      await h.waitMirrored();
      expect(h.acks.filter((a) => a.node === 'B').length).toBe(acksBefore);
      // B joined again under A's epoch; before that, none of its writes landed.
      const joinedAt = h.logs.find((l) => l.node === 'B' && l.atMs > takeoverAt && l.msg === 'mirrored with partner')!.atMs;
      expect(h.dataWrites.filter((w) => w.node === 'B' && w.atMs > takeoverAt && w.atMs < joinedAt)).toEqual([]);
      expect(h.violations).toEqual([]);
      expect((await h.run(h.client('B').read(al.guid, 0, 2 * PAGE))).equals(tagged(2 * PAGE, 'before'))).toBe(true);
    });
  }

  it('with the fence action, the survivor kills the paused controller before it takes over', async () => {
    const h = await Harness.createPair({ seed: 14 });
    // Long enough for B to have written its mailbox slot: the pid the fence action needs.
    await h.advance(300);
    h.pause('B');
    await h.runUntil(() => h.a.core.currentRole === Role.ALONE, 'A took over');
    expect(h.b.alive).toBe(false);
    expect(h.logs.some((l) => l.msg === 'fence: killed B (paused)')).toBe(true);
  });
});

describe('simulator: crash in a store write', () => {
  it('a crash tears the write it interrupts; the store still opens, with table and mailbox', async () => {
    const h = await Harness.createPair({ seed: 15 });
    await h.run(h.client('A').allocate('x', 2 * PAGE, 'tiny'));
    h.crashAtNextWrite('A', ['table', 'slot', 'epoch'], { tearFraction: 0.5 });
    await h.runUntil(() => !h.a.alive, 'A crashed');
    expect(h.tornWrites.map((w) => w.node)).toEqual(['A']);
    const view = await PageStore.open(h.device);
    expect((await view.readTable()).records.length).toBe(1);
    await view.readMailbox();
    await h.restart('A');
    h.heal();
    await h.waitMirrored();
    expect(h.status('A').allocations).toBe(1);
  });
});

describe('simulator: invariants can fail', () => {
  it('flags a data write that lands from a controller its partner took over from', async () => {
    const h = await Harness.createPair({ seed: 16, fenceKills: false });
    const al = await h.run(h.client('A').allocate('x', 2 * PAGE, 'tiny'));
    h.pause('B');
    await h.runUntil(() => h.a.core.currentRole === Role.ALONE, 'A took over');
    const rec = (await h.openStoreView().then((v) => v.readTable())).records.find((r) => r.guid === al.guid)!;
    // What a stale writer would do: a page write of epoch 1 after the epoch record gave epoch 2 to A.
    void h.b.store.writePage({ guid: al.guid, dataOffset: rec.dataOffset, pageSizeBytes: PAGE }, 0, 9, 1, Buffer.alloc(PAGE, 7));
    await h.advance(20);
    expect(h.violations.join('\n')).toMatch(/store write from a superseded controller: B0 \(epoch 1\) writePage 0 v9/);
  });

  it('flags a page version that goes back in the store', async () => {
    const h = await Harness.createPair({ seed: 17 });
    const al = await h.run(h.client('A').allocate('x', 2 * PAGE, 'tiny'));
    for (const text of ['one', 'two']) {
      await h.run(h.client('A').write(al.guid, 0, tagged(PAGE, text)));
      await h.run(h.client('A').flush(al.guid));
    }
    expect(h.violations).toEqual([]);
    const rec = (await h.openStoreView().then((v) => v.readTable())).records.find((r) => r.guid === al.guid)!;
    // What a stale writer would do: version 1 of the page again, in the current epoch.
    void h.b.store.writePage({ guid: al.guid, dataOffset: rec.dataOffset, pageSizeBytes: PAGE }, 0, 1, h.b.core.currentEpoch, tagged(PAGE, 'one'));
    await h.advance(20);
    expect(h.violations.join('\n')).toMatch(/page version went back in the store: B0 \(epoch 1\) wrote page 0 of .* at version 1 over version 2/);
  });

  it('the history check of the workload flags a planted stale read', async () => {
    await expect(runSeed(3, { plant: 'stale-read', opsPerActor: 40 })).rejects.toThrow(/history check: [1-9]\d* violations .*"stale-read":[1-9]/);
  });
});
