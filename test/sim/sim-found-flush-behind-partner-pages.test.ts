// Found while benchmarking (issue 13, a bench run with a 30 s dirty age): a
// flush through A of A's own pages went unanswered while more than 4096 of
// the partner's dirty pages stood ahead of them in A's dirty order. A holds
// the partner's pages as mirrored copies it does not own (the partner
// destages them); destaging is started by a scan of the dirty pages, oldest
// first, that looks at 4096 at most per kick, so it never reached A's own.
// The flush gave up after peerRequestTimeoutMs with BUSY ("no progress"),
// and a shutdown would have left the pages dirty. A flush (and a shutdown)
// now destages its own pages directly.

import { describe, expect, it } from 'vitest';
import { Harness, tagged } from './harness.js';

const PAGE = 512;
const PARTNER_PAGES = 5000;

describe('found while benchmarking: a flush behind many of the partner\'s dirty pages', () => {
  it('a flush through A of its own page is answered at once, though 5000 dirty pages of B\'s come first', async () => {
    // Dirty pages are destaged only when asked: none ages out during the test.
    const h = await Harness.createPair({ seed: 3, dirtyAgeMaxMs: 3_600_000, cacheBytesMax: 64 * 1024 * 1024 });
    const theirs = await h.run(h.client('B').allocate('theirs', PARTNER_PAGES * PAGE, 'tiny'));
    const ours = await h.run(h.client('A').allocate('ours', 16 * PAGE, 'tiny'));
    const b = h.client('B');
    await h.run(Promise.all(Array.from({ length: PARTNER_PAGES }, (_, p) => b.write(theirs.guid, p * PAGE, tagged(PAGE, `b${p}`)))), 'B writes its pages');
    expect(h.status('A').dirtyPages).toBe(PARTNER_PAGES);

    await h.run(h.client('A').write(ours.guid, 0, tagged(PAGE, 'ours')));
    const startedMs = h.nowMs;
    const flushed = await h.settle(h.client('A').flush(ours.guid), 'flush of A\'s page');
    expect(flushed.ok ? 'answered' : String(flushed.error)).toBe('answered');
    // Answered in the time a destage takes, not after a timeout.
    expect(h.nowMs - startedMs).toBeLessThan(1000);
    const stored = await h.openStoreView();
    const rec = (await stored.readTable()).records.find((r) => r.guid === ours.guid)!;
    const page = await stored.readPage({ guid: ours.guid, dataOffset: rec.dataOffset, pageSizeBytes: rec.pageSizeBytes }, 0);
    expect(page.data.equals(tagged(PAGE, 'ours'))).toBe(true);
    // B's pages are B's to destage: still dirty on both.
    expect(h.status('A').dirtyPages).toBe(PARTNER_PAGES);
    expect(h.violations).toEqual([]);
  });
});
