// Two controller cores paired in one process (test/sim/harness.ts): mirroring,
// reads through either side, partial writes, lock ping-pong under contention,
// mirrored acks, flush and destage, restart and rejoin, release. Every frame
// crosses the real codec; every run is seeded.

import { describe, expect, it } from 'vitest';
import type { PageStore } from '../../src/store/page-store.js';
import { Harness, tagged } from './harness.js';
import { codeOf, pairWithClients, restartBoth } from './pair-steps.js';
import { Prng } from './prng.js';
import type { SimClient } from './sim-client.js';

const PAGE = 512; // the simulator's 'tiny' policy

async function expectEqualDigestsWhenQuiet(h: Harness): Promise<void> {
  await h.runUntilQuiet();
  const a = h.status('A');
  const b = h.status('B');
  expect(a.digests, `digests (${h.describe()})`).toEqual(b.digests);
  expect(a.dirtyPages).toBe(b.dirtyPages);
}

async function storedPage(view: PageStore, name: string, page: number): Promise<{ version: number; data: Buffer }> {
  const table = await view.readTable();
  const rec = table.records.find((r) => r.name === name);
  if (rec === undefined) throw new Error(`no allocation ${name} in the stored table`);
  const sp = await view.readPage({ guid: rec.guid, dataOffset: rec.dataOffset, pageSizeBytes: rec.pageSizeBytes }, page);
  return { version: sp.header.version, data: sp.data };
}

describe('core pair: mirrored basics', () => {
  it('both controllers come up mirrored with equal digests', async () => {
    const h = await Harness.createPair({ seed: 1 });
    expect(h.status('A').role).toBe('mirrored');
    expect(h.status('B').role).toBe('mirrored');
    await expectEqualDigestsWhenQuiet(h);
  });

  it('allocate and write through A, read through B, and the reverse; both list both', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 2 });
    const x = await h.run(ca.allocate('x', 8 * PAGE, 'tiny'));
    expect(x).toMatchObject({ pageSizeBytes: PAGE, pageCount: 8 });
    const data = tagged(8 * PAGE, 'from-A');
    await h.run(ca.write(x.guid, 0, data));
    expect(await h.run(cb.read(x.guid, 0, 8 * PAGE))).toEqual(data);

    const y = await h.run(cb.allocate('y', 5 * PAGE, 'tiny'));
    const data2 = tagged(5 * PAGE, 'from-B');
    await h.run(cb.write(y.guid, 0, data2));
    expect(await h.run(ca.read(y.guid, 0, 5 * PAGE))).toEqual(data2);
    expect(await h.run(cb.read(y.guid, 0, 5 * PAGE))).toEqual(data2);

    const la = await h.run(ca.list());
    const lb = await h.run(cb.list());
    expect(la.map((e) => e.name).sort()).toEqual(['x', 'y']);
    expect([...lb].sort((p, q) => p.name.localeCompare(q.name))).toEqual([...la].sort((p, q) => p.name.localeCompare(q.name)));
    await expectEqualDigestsWhenQuiet(h);
    expect(h.status('A').digests.table).toMatch(/^2:/);
    expect(h.errorLogs()).toEqual([]);
  });

  it('partial, unaligned writes spanning pages read back right through both', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 3 });
    const x = await h.run(ca.allocate('partial', 10 * PAGE, 'tiny'));
    const model = Buffer.alloc(10 * PAGE);
    const writes: [SimClient, number, number][] = [
      [ca, 300, 900],
      [cb, 511, 2],
      [ca, 1000, 10],
      [cb, 0, 1],
      [cb, 2 * PAGE + 7, 3 * PAGE],
      [ca, 10 * PAGE - 5, 5],
      [cb, 4 * PAGE, PAGE],
    ];
    let n = 0;
    for (const [c, offset, length] of writes) {
      const data = tagged(length, `w${n++}`);
      await h.run(c.write(x.guid, offset, data));
      data.copy(model, offset);
      for (const r of [ca, cb]) {
        expect(await h.run(r.read(x.guid, 0, 10 * PAGE))).toEqual(model);
        expect(await h.run(r.read(x.guid, offset, length))).toEqual(data);
        expect(await h.run(r.read(x.guid, 333, 1234))).toEqual(model.subarray(333, 333 + 1234));
      }
    }
    await expectEqualDigestsWhenQuiet(h);
  });
});

describe('core pair: the same pages written through both controllers', () => {
  for (const seed of [11, 12, 13, 14]) {
    it(`converges to one of the written values, identical on both sides (seed ${seed})`, async () => {
      const h = await Harness.createPair({ seed, frameDelayMaxMs: 3, storeDelayMaxMs: 3 });
      const rng = new Prng(seed * 7919);
      const clients = [h.client('A'), h.client('B'), h.client('A'), h.client('B')];
      const pages = 6;
      const x = await h.run(clients[0]!.allocate('hot', pages * PAGE, 'tiny'));
      let current: Buffer[] = Array.from({ length: pages }, () => Buffer.alloc(PAGE));
      for (let round = 0; round < 15; round++) {
        const candidates: Buffer[][] = current.map((b) => [b]);
        const writes = clients.map((c, i) => {
          const first = rng.int(pages);
          const count = 1 + rng.int(Math.min(3, pages - first));
          const data = tagged(count * PAGE, `r${round}c${i}${c.controller}`);
          for (let p = 0; p < count; p++) candidates[first + p]!.push(data.subarray(p * PAGE, (p + 1) * PAGE));
          return h.settle(c.write(x.guid, first * PAGE, data), `round ${round} write ${i}`);
        });
        // All four go out together; the scheduler interleaves them by seed.
        const results = await Promise.all(writes);
        for (const r of results) expect(codeOf(r), h.describe()).toBe('ok');
        const viaA = await h.run(clients[0]!.read(x.guid, 0, pages * PAGE));
        const viaB = await h.run(clients[1]!.read(x.guid, 0, pages * PAGE));
        expect(viaB.equals(viaA), `round ${round}: A and B differ (${h.describe()})`).toBe(true);
        for (let p = 0; p < pages; p++) {
          const got = viaA.subarray(p * PAGE, (p + 1) * PAGE);
          expect(candidates[p]!.some((c) => c.equals(got)), `round ${round} page ${p} holds no written value (${h.describe()})`).toBe(true);
        }
        current = Array.from({ length: pages }, (_, p) => Buffer.from(viaA.subarray(p * PAGE, (p + 1) * PAGE)));
      }
      await expectEqualDigestsWhenQuiet(h);
      expect(h.status('A').counters.lockGrants + h.status('B').counters.lockGrants).toBeGreaterThan(0);
      expect(h.errorLogs()).toEqual([]);
    });
  }
});

describe('core pair: mirrored acknowledgement', () => {
  it('a write through A is answered only once B holds the page; reads through A wait for it too', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 21 });
    const x = await h.run(ca.allocate('ack', 4 * PAGE, 'tiny'));
    const before = tagged(4 * PAGE, 'before');
    await h.run(ca.write(x.guid, 0, before));
    await h.runUntilQuiet();

    h.hold('A->B', (m) => m.kind === 'WRITE_PAGE');
    const after = tagged(PAGE, 'after');
    const w = h.track(ca.write(x.guid, PAGE, after));
    await h.advance(200);
    expect(h.heldKinds('A->B')[0]).toBe('WRITE_PAGE');
    expect(w.settled).toBe(false);

    const readA = h.track(ca.read(x.guid, PAGE, PAGE));
    await h.advance(200);
    expect(readA.settled).toBe(false);
    // B does not hold the new contents yet; the write is not acknowledged, so the old value is right.
    expect(await h.run(cb.read(x.guid, PAGE, PAGE))).toEqual(before.subarray(PAGE, 2 * PAGE));
    expect(w.settled).toBe(false);

    h.release('A->B');
    await h.run(w.promise);
    expect(await h.run(readA.promise)).toEqual(after);
    expect(await h.run(cb.read(x.guid, PAGE, PAGE))).toEqual(after);
    await expectEqualDigestsWhenQuiet(h);
  });

  it('an allocation through B is answered only after A recorded it', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 22 });
    h.hold('B->A', (m) => m.kind === 'ALLOCATE');
    const alloc = h.track(cb.allocate('held', 4 * PAGE, 'tiny'));
    await h.advance(100);
    expect(alloc.settled).toBe(false);
    expect(await h.run(ca.list())).toEqual([]);
    h.release('B->A');
    const info = await h.run(alloc.promise);
    expect((await h.run(ca.list())).map((e) => e.guid)).toEqual([info.guid]);
  });
});

describe('core pair: flush and destage', () => {
  it('C_FLUSH through A cleans every page on both sides and the store holds the newest versions', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 31 });
    const x = await h.run(ca.allocate('fx', 6 * PAGE, 'tiny'));
    const y = await h.run(cb.allocate('fy', 6 * 1024, 'small'));
    const expected = new Map<string, { version: number; data: Buffer }>();
    const put = async (c: SimClient, name: string, guid: string, pageBytes: number, page: number, tag: string): Promise<void> => {
      const data = tagged(pageBytes, tag);
      await h.run(c.write(guid, page * pageBytes, data));
      const key = `${name}/${page}`;
      expected.set(key, { version: (expected.get(key)?.version ?? 0) + 1, data });
    };
    for (let i = 0; i < 3; i++) {
      for (let p = 0; p < 6; p++) {
        await put(i % 2 === 0 ? ca : cb, 'fx', x.guid, PAGE, p, `fx${p}.${i}`);
        if (p % 2 === 0) await put(i % 2 === 0 ? cb : ca, 'fy', y.guid, 1024, p, `fy${p}.${i}`);
      }
    }
    await h.runUntilQuiet();
    expect(h.status('A').dirtyPages).toBeGreaterThan(0);
    expect(h.status('B').dirtyPages).toBe(h.status('A').dirtyPages);

    const flushed = await h.run(ca.flush());
    expect(flushed).toBe(expected.size);
    await h.runUntilQuiet();
    expect(h.status('A').dirtyPages).toBe(0);
    expect(h.status('B').dirtyPages).toBe(0);
    await expectEqualDigestsWhenQuiet(h);

    const view = await h.openStoreView();
    for (const [key, want] of expected) {
      const [name, page] = key.split('/') as [string, string];
      const got = await storedPage(view, name, Number(page));
      expect(got.version, key).toBe(want.version);
      expect(got.data.equals(want.data), key).toBe(true);
    }
  });

  it('pages older than dirtyAgeMaxMs are destaged on ticks; both sides end clean', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 32, dirtyAgeMaxMs: 300 });
    const x = await h.run(ca.allocate('aged', 8 * PAGE, 'tiny'));
    for (let p = 0; p < 8; p++) await h.run((p % 2 === 0 ? ca : cb).write(x.guid, p * PAGE, tagged(PAGE, `aged${p}`)));
    await h.runUntilQuiet();
    expect(h.status('A').dirtyPages).toBe(8);
    await h.advance(100);
    expect(h.status('A').dirtyPages).toBeGreaterThan(0);
    await h.advance(1000);
    await h.runUntilQuiet();
    expect(h.status('A').dirtyPages).toBe(0);
    expect(h.status('B').dirtyPages).toBe(0);
    // Each side destaged what it owned: B's writes took their pages over.
    expect(h.status('A').counters.pagesDestaged).toBeGreaterThan(0);
    expect(h.status('B').counters.pagesDestaged).toBeGreaterThan(0);
    const view = await h.openStoreView();
    for (let p = 0; p < 8; p++) expect((await storedPage(view, 'aged', p)).data).toEqual(tagged(PAGE, `aged${p}`));
  });
});

describe('core pair: restart and rejoin', () => {
  it('after write and flush, two new cores over the same store read everything back', async () => {
    const h = await Harness.createPair({ seed: 41 });
    let ca = h.client('A');
    const cb = h.client('B');
    const x = await h.run(ca.allocate('keep', 6 * PAGE, 'tiny'));
    const y = await h.run(cb.allocate('keep2', 3 * 1024, 'small'));
    const dx = tagged(6 * PAGE, 'keep-x');
    const dy = tagged(3 * 1024, 'keep-y');
    await h.run(ca.write(x.guid, 0, dx));
    await h.run(cb.write(y.guid, 0, dy));
    await h.run(cb.flush());
    await h.runUntilQuiet();

    await restartBoth(h);
    ca = h.client('A');
    const cb2 = h.client('B');
    for (const c of [ca, cb2]) {
      expect(await h.run(c.read(x.guid, 0, 6 * PAGE))).toEqual(dx);
      expect(await h.run(c.read(y.guid, 0, 3 * 1024))).toEqual(dy);
      expect((await h.run(c.list())).map((e) => e.name).sort()).toEqual(['keep', 'keep2']);
    }
    await expectEqualDigestsWhenQuiet(h);
  });

  it('B restarted without a flush gets the dirty pages from A in the join', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 42 });
    const x = await h.run(ca.allocate('rejoin', 6 * PAGE, 'tiny'));
    const model = Buffer.alloc(6 * PAGE);
    for (let p = 0; p < 6; p++) {
      const data = tagged(PAGE, `rj${p}`);
      await h.run((p % 2 === 0 ? ca : cb).write(x.guid, p * PAGE, data));
      data.copy(model, p * PAGE);
    }
    await h.runUntilQuiet();
    expect(h.status('B').dirtyPages).toBe(6);

    // A takes over when B dies and starts destaging what it holds; stalling
    // its page writes keeps the pages dirty, so the join has them to send.
    h.a.store.stall('pageWrites');
    await h.restart('B');
    expect(h.status('B').dirtyPages).toBe(0);
    const readEarly = await h.settle(h.client('B').read(x.guid, 0, PAGE));
    expect(codeOf(readEarly)).toBe('NOT_ACTIVE');
    const joinStart = h.delivered.length;
    h.heal();
    await h.waitMirrored();
    const joinFrames = h.delivered.slice(joinStart);
    expect(joinFrames.some((f) => f.kind === 'READ_HEADER' && f.dir === 'A->B')).toBe(true);
    const pushed = joinFrames.filter((f) => f.kind === 'WRITE_PAGE' && f.dir === 'A->B');
    expect(pushed.length).toBeGreaterThan(0);
    expect(h.status('B').dirtyPages).toBe(6);
    expect(h.status('B').epoch).toBe(h.status('A').epoch);
    h.a.store.unstall();

    const cb2 = h.client('B');
    expect(await h.run(cb2.read(x.guid, 0, 6 * PAGE))).toEqual(model);
    expect(await h.run(ca.read(x.guid, 0, 6 * PAGE))).toEqual(model);
    await expectEqualDigestsWhenQuiet(h);
    // And the pair keeps working: a write through the new B, read through A.
    await h.run(cb2.write(x.guid, 2 * PAGE, tagged(PAGE, 'after-join')));
    expect(await h.run(ca.read(x.guid, 2 * PAGE, PAGE))).toEqual(tagged(PAGE, 'after-join'));
    await expectEqualDigestsWhenQuiet(h);
  });
});

describe('core pair: release', () => {
  it('release through B drops it on A; later reads get UNKNOWN_GUID; a reused extent reads zeros', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 51 });
    const x = await h.run(ca.allocate('gone', 8 * PAGE, 'tiny'));
    await h.run(ca.write(x.guid, 0, tagged(8 * PAGE, 'old-data')));
    await h.run(ca.flush());
    const view = await h.openStoreView();
    const oldOffset = (await view.readTable()).records.find((r) => r.name === 'gone')!.dataOffset;

    await h.run(cb.release(x.guid));
    expect(await h.run(ca.list())).toEqual([]);
    expect(await h.run(cb.list())).toEqual([]);
    expect(codeOf(await h.settle(ca.read(x.guid, 0, 10)))).toBe('UNKNOWN_GUID');
    expect(codeOf(await h.settle(cb.read(x.guid, 0, 10)))).toBe('UNKNOWN_GUID');
    expect(codeOf(await h.settle(cb.write(x.guid, 0, Buffer.from('x'))))).toBe('UNKNOWN_GUID');

    const y = await h.run(cb.allocate('gone', 8 * PAGE, 'tiny'));
    const newRec = (await view.readTable()).records.find((r) => r.guid === y.guid)!;
    expect(newRec.dataOffset).toBe(oldOffset);
    expect(await h.run(ca.read(y.guid, 0, 8 * PAGE))).toEqual(Buffer.alloc(8 * PAGE));
    expect(await h.run(cb.read(y.guid, 0, 8 * PAGE))).toEqual(Buffer.alloc(8 * PAGE));
    await expectEqualDigestsWhenQuiet(h);
  });

  it('an extent reused with another page size reads zeros, not a checksum error', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 52 });
    const x = await h.run(ca.allocate('big-pages', 4 * 1024, 'small'));
    await h.run(ca.write(x.guid, 0, tagged(4 * 1024, 'old-small-pages')));
    await h.run(ca.flush());
    await h.run(ca.release(x.guid));
    const y = await h.run(cb.allocate('tiny-pages', 8 * PAGE, 'tiny'));
    expect(await h.run(ca.read(y.guid, 0, 8 * PAGE))).toEqual(Buffer.alloc(8 * PAGE));
    expect(await h.run(cb.read(y.guid, 0, 8 * PAGE))).toEqual(Buffer.alloc(8 * PAGE));
  });
});

describe('single controller (mirroring off)', () => {
  it('serves allocate, write, read and flush alone', async () => {
    const h = await Harness.createSingle({ seed: 61 });
    expect(h.status('A').role).toBe('single');
    const c = h.client('A');
    const x = await h.run(c.allocate('solo', 5 * PAGE, 'tiny'));
    const data = tagged(5 * PAGE - 100, 'solo');
    await h.run(c.write(x.guid, 50, data));
    expect(await h.run(c.read(x.guid, 50, data.length))).toEqual(data);
    expect(await h.run(c.flush())).toBe(5);
    await h.runUntilQuiet();
    expect(h.status('A').dirtyPages).toBe(0);
    const view = await h.openStoreView();
    expect((await storedPage(view, 'solo', 0)).data.subarray(50)).toEqual(data.subarray(0, PAGE - 50));
  });
});
