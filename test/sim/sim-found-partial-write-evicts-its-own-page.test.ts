// Found by the NBD simulator (seed 655 of sim-nbd-random, no faults): a
// write-zeroes covered the end of one page and the whole of the next. The
// first page was cached (clean), the next was not; the write's fast path
// (writeNow) saw the first page cached, so a partial write of it was fine,
// then made room for the second page, and the page it evicted was the first
// one, the oldest clean page. It then built the first page's new contents
// from no old contents at all: the bytes the write did not cover came from
// an uninitialised buffer (garbage in one run, zeros in another), and that
// page went to both controllers and the store. An acknowledged write (the
// bytes before the zeroed range) was lost. Making room must not evict a page
// of the range being written.

import { describe, expect, it } from 'vitest';
import { Harness, tagged } from './harness.js';

const PAGE = 512;
const CACHE_PAGES = 4;

describe('found by the simulator: a partial write whose page is evicted to make room for the rest of the write', () => {
  for (const mode of ['single', 'mirrored'] as const) {
    it(`${mode}: the bytes of a page that a write covers only in part stay as they were`, async () => {
      const opts = { seed: 655, cacheBytesMax: CACHE_PAGES * PAGE, storeDelayMaxMs: 0, frameDelayMaxMs: 0, clientDelayMaxMs: 0 };
      const h = mode === 'single' ? await Harness.createSingle(opts) : await Harness.createPair(opts);
      const c = h.client('A');
      const al = await h.run(c.allocate('x', 8 * PAGE, 'tiny'));
      // Pages 0..3 fill the cache; flushed, they are clean.
      const old = [0, 1, 2, 3].map((p) => tagged(PAGE, `page ${p} before`));
      for (const [p, data] of old.entries()) await h.run(c.write(al.guid, p * PAGE, data));
      await h.run(c.flush(al.guid));
      await h.runUntilQuiet();
      // Reads make page 3 the oldest clean page in A's cache.
      for (const p of [3, 0, 1, 2]) await h.run(c.read(al.guid, p * PAGE, PAGE));

      // The second half of page 3 and all of page 4 (not cached; its version is known: the allocation is new).
      const half = PAGE / 2;
      const data = tagged(half + PAGE, 'new');
      await h.run(c.write(al.guid, 3 * PAGE + half, data));

      const page3 = await h.run(c.read(al.guid, 3 * PAGE, PAGE));
      expect(page3.subarray(0, half).equals(old[3]!.subarray(0, half)), 'the first half of page 3, which the write did not cover').toBe(true);
      expect(page3.subarray(half).equals(data.subarray(0, half))).toBe(true);
      const page4 = await h.run(c.read(al.guid, 4 * PAGE, PAGE));
      expect(page4.equals(data.subarray(half))).toBe(true);
    });
  }
});
