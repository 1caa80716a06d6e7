// Durable clean (DESIGN.md section 4, promise 7; issue 11): a destaged page
// is clean, and may be evicted from both caches, only once the store has
// synced it. A sync that fails is never taken for success: the page stays
// dirty on both controllers, the controller reports the store failed, and
// the page is written again.

import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../../src/protocol/errors.js';
import { Harness, tagged } from './harness.js';

const PAGE = 512;

async function pairWithOnePage(seed: number): Promise<{ h: Harness; guid: string }> {
  const h = await Harness.createPair({ seed, dirtyAgeMaxMs: 50 });
  const al = await h.run(h.client('A').allocate('durable', 8 * PAGE, 'tiny'));
  // Written through A, which owns every page of a new allocation: A destages it.
  await h.run(h.client('A').write(al.guid, 0, tagged(PAGE, 'acknowledged')));
  return { h, guid: al.guid };
}

describe('a destaged page is clean only once the store has synced it', () => {
  it('stays dirty on both controllers while the sync is held, and turns clean on both when it is done', async () => {
    const { h } = await pairWithOnePage(1);
    h.a.store.stall('syncs');
    const writesBefore = h.a.store.counters.pageWrites;
    await h.advance(300);
    // The page went to the store, but the sync has not come back.
    expect(h.a.store.counters.pageWrites).toBeGreaterThan(writesBefore);
    expect(h.status('A').dirtyPages).toBe(1);
    expect(h.status('B').dirtyPages).toBe(1);
    expect(h.status('A').counters.pagesDestaged).toBe(0);
    h.a.store.unstall();
    await h.runUntil(() => h.status('A').dirtyPages === 0 && h.status('B').dirtyPages === 0, 'clean on both after the sync');
    expect(h.status('A').counters.pagesDestaged).toBe(1);
    expect(h.violations).toEqual([]);
  });

  it('a failed sync leaves the page dirty on both, reports IO_ERROR, and the page is written again until a sync succeeds', async () => {
    const { h, guid } = await pairWithOnePage(2);
    h.a.store.failNextSyncs(1);
    await h.runUntil(() => h.status('A').counters.destageErrors > 0, 'the failed sync seen');
    expect(h.status('A').senseCode).toBe(ErrorCode.IO_ERROR);
    expect(h.status('A').counters.pagesDestaged).toBe(0);
    expect(h.status('B').dirtyPages).toBe(1);
    // The next attempt syncs: clean on both, and the store holds the write.
    await h.runUntil(() => h.status('A').dirtyPages === 0 && h.status('B').dirtyPages === 0, 'clean on both after a good sync');
    const store = await h.openStoreView();
    const table = await store.readTable();
    const rec = table.records.find((r) => r.guid === guid)!;
    const stored = await store.readPage({ guid, dataOffset: rec.dataOffset, pageSizeBytes: rec.pageSizeBytes }, 0);
    expect(stored.data.equals(tagged(PAGE, 'acknowledged'))).toBe(true);
    expect(h.violations).toEqual([]);
  });
});
