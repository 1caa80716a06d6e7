// Takeover in the simulated pair: DESIGN.md section 4, promises 2 (single
// failure) and 3 (no split brain), each checked by killing, pausing or cutting.

import { describe, expect, it } from 'vitest';
import { Harness, tagged } from './harness.js';
import { isPagepairError } from '../../src/protocol/errors.js';

const PAGE = 512;

function codeOf(r: { ok: true } | { ok: false; error: Error }): string {
  if (r.ok) return 'ok';
  return isPagepairError(r.error) ? r.error.code : String(r.error);
}

/** Counts every store write a controller issues from now on (pages, table, mailbox, epoch record). */
function countWrites(store: object): { n: number } {
  const count = { n: 0 };
  const target = store as Record<string, unknown>;
  for (const m of ['writePage', 'writeTable', 'writeMailboxSlot', 'writeEpochRecord', 'clearExtent']) {
    const orig = target[m] as (...args: unknown[]) => Promise<unknown>;
    target[m] = (...args: unknown[]) => {
      count.n++;
      return orig.apply(store, args);
    };
  }
  return count;
}

async function storedPage(h: Harness, name: string, page: number): Promise<Buffer> {
  const view = await h.openStoreView();
  const rec = (await view.readTable()).records.find((r) => r.name === name)!;
  return (await view.readPage({ guid: rec.guid, dataOffset: rec.dataOffset, pageSizeBytes: PAGE }, page)).data;
}

describe('a controller is killed', () => {
  for (const victim of ['A', 'B'] as const) {
    it(`kill ${victim}: the survivor takes over in a new epoch and serves every acknowledged write`, async () => {
      const h = await Harness.createPair({ seed: 300 + victim.charCodeAt(0) });
      const survivor = victim === 'A' ? 'B' : 'A';
      const cs = h.client(survivor);
      const cv = h.client(victim);
      const x = await h.run(cs.allocate('k', 8 * PAGE, 'tiny'));
      // Acknowledged through the victim, only in the two caches (no flush).
      for (let p = 0; p < 8; p++) await h.run(cv.write(x.guid, p * PAGE, tagged(PAGE, `v${p}`)));
      h.kill(victim);
      await h.runUntil(() => h.status(survivor).role === 'alone', `${survivor} alone`);
      expect(h.status(survivor).epoch).toBe(2);
      for (let p = 0; p < 8; p++) expect(await h.run(cs.read(x.guid, p * PAGE, PAGE))).toEqual(tagged(PAGE, `v${p}`));
      // Alone, a write is acknowledged once it is in the store.
      await h.run(cs.write(x.guid, 0, tagged(PAGE, 'alone')));
      expect(await storedPage(h, 'k', 0)).toEqual(tagged(PAGE, 'alone'));
      // Everything the victim acknowledged reaches the store too.
      await h.runUntilQuiet();
      for (let p = 1; p < 8; p++) expect(await storedPage(h, 'k', p)).toEqual(tagged(PAGE, `v${p}`));
      // The victim comes back, joins under the new epoch, and the pair is mirrored again.
      await h.restart(victim);
      h.heal();
      await h.waitMirrored();
      expect(h.status(victim).epoch).toBe(2);
      const back = h.client(victim);
      expect(await h.run(back.read(x.guid, 0, PAGE))).toEqual(tagged(PAGE, 'alone'));
      await h.run(back.write(x.guid, PAGE, tagged(PAGE, 'rejoined')));
      expect(await h.run(cs.read(x.guid, PAGE, PAGE))).toEqual(tagged(PAGE, 'rejoined'));
      await h.runUntilQuiet();
      expect(h.status('A').digests).toEqual(h.status('B').digests);
    });
  }

  it('a controller that shuts down hands over at once, without waiting for the timeout', async () => {
    const h = await Harness.createPair({ seed: 310, partnerTimeoutMs: 5000 });
    const ca = h.client('A');
    const x = await h.run(ca.allocate('bye', 4 * PAGE, 'tiny'));
    await h.run(ca.write(x.guid, 0, tagged(PAGE, 'before')));
    const t0 = h.nowMs;
    await h.run(h.a.core.shutdown());
    h.kill('A');
    await h.runUntil(() => h.status('B').role === 'alone', 'B alone');
    expect(h.nowMs - t0).toBeLessThan(1000);
    expect(await h.run(h.client('B').read(x.guid, 0, PAGE))).toEqual(tagged(PAGE, 'before'));
  });
});

describe('the link is cut while both run', () => {
  for (const preferred of ['A', 'B'] as const) {
    it(`exactly one carries on (the preferred ${preferred}); the other refuses I/O and writes nothing more to the store`, async () => {
      const h = await Harness.createPair({ seed: 320 + preferred.charCodeAt(0), preferred });
      const loser = preferred === 'A' ? 'B' : 'A';
      const cw = h.client(preferred);
      const cl = h.client(loser);
      const x = await h.run(cw.allocate('cut', 4 * PAGE, 'tiny'));
      await h.run(cl.write(x.guid, 0, tagged(PAGE, 'by-loser')));
      h.cut('partition');
      await h.runUntil(() => h.status(preferred).role === 'alone' && h.status(loser).role === 'fenced', 'one alone, one fenced');
      const writes = countWrites(h.node(loser).store);
      expect(codeOf(await h.settle(cl.write(x.guid, 0, Buffer.from('no'))))).toBe('FENCED');
      expect(codeOf(await h.settle(cl.read(x.guid, 0, PAGE)))).toBe('FENCED');
      await h.run(cw.write(x.guid, PAGE, tagged(PAGE, 'by-winner')));
      await h.advance(3000);
      // The fenced controller neither heartbeats nor destages: not one store write.
      expect(writes.n).toBe(0);
      expect(await h.run(cw.read(x.guid, 0, PAGE))).toEqual(tagged(PAGE, 'by-loser'));
      h.heal();
      await h.waitMirrored();
      expect(await h.run(cl.read(x.guid, PAGE, PAGE))).toEqual(tagged(PAGE, 'by-winner'));
    });
  }
});

describe('a fresh controller', () => {
  it('does not take over from a live partner serving alone; it joins when the link is back', async () => {
    const h = await Harness.createPair({ seed: 340 });
    const ca = h.client('A');
    const x = await h.run(ca.allocate('fresh', 4 * PAGE, 'tiny'));
    await h.run(ca.write(x.guid, 0, tagged(PAGE, 'kept')));
    h.kill('B');
    await h.runUntil(() => h.status('A').role === 'alone', 'A alone');
    await h.restart('B');
    // B sees no partner for several timeouts: it must not take over from A.
    await h.advance(3000);
    expect(h.status('B').role).toBe('starting');
    expect(h.status('A').role).toBe('alone');
    h.heal();
    await h.waitMirrored();
    expect(await h.run(h.client('B').read(x.guid, 0, PAGE))).toEqual(tagged(PAGE, 'kept'));
  });

  it('takes over alone, serving from the store, when its partner is gone', async () => {
    const h = await Harness.createPair({ seed: 350 });
    const ca = h.client('A');
    const x = await h.run(ca.allocate('lone', 4 * PAGE, 'tiny'));
    await h.run(ca.write(x.guid, 0, tagged(PAGE, 'flushed')));
    await h.run(ca.flush());
    h.kill('A');
    h.kill('B');
    await h.restart('B');
    await h.runUntil(() => h.status('B').role === 'alone', 'B alone after finding no partner');
    expect(await h.run(h.client('B').read(x.guid, 0, PAGE))).toEqual(tagged(PAGE, 'flushed'));
  });
});

describe('pointers while alone', () => {
  it('a write pointer opened alone commits through to the store, and one opened alone but committed mirrored reaches the partner', async () => {
    const h = await Harness.createPair({ seed: 360 });
    const ca = h.client('A');
    const x = await h.run(ca.allocate('ptr', 4 * PAGE, 'tiny'));
    h.kill('B');
    await h.runUntil(() => h.status('A').role === 'alone', 'A alone');
    const p1 = await h.run(ca.openPointer(x.guid, 0, 2, 2));
    await h.run(ca.write(x.guid, 0, tagged(2 * PAGE, 'alone-ptr'), p1));
    expect(await h.run(ca.closePointer(p1, true))).toBe(2);
    expect(await storedPage(h, 'ptr', 1)).toEqual(tagged(2 * PAGE, 'alone-ptr').subarray(PAGE));
    // Opened alone, committed after the partner is back.
    const p2 = await h.run(ca.openPointer(x.guid, 2, 2, 2));
    await h.run(ca.write(x.guid, 2 * PAGE, tagged(2 * PAGE, 'late-commit'), p2));
    await h.restart('B');
    h.heal();
    await h.waitMirrored();
    expect(await h.run(ca.closePointer(p2, true))).toBe(2);
    expect(await h.run(h.client('B').read(x.guid, 2 * PAGE, 2 * PAGE))).toEqual(tagged(2 * PAGE, 'late-commit'));
    await h.runUntilQuiet();
    expect(h.status('A').digests).toEqual(h.status('B').digests);
  });
});
