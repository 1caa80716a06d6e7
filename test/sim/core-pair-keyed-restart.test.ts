// A keyed allocation survives a restart of both controllers: what they read
// back from the store's table still names it keyed, so neither serves it to
// a connection without the key.

import { describe, expect, it } from 'vitest';
import { keyDigest } from '../../src/core/access-keys.js';
import { Harness, tagged } from './harness.js';
import { codeOf, restartBoth } from './pair-steps.js';

const PAGE = 512;

describe('keyed allocation across a restart of both', () => {
  for (const seed of [1511, 1512]) {
    it(`the table read back keeps the key digest (seed ${seed})`, async () => {
      const h = await Harness.createPair({ seed });
      const made = await h.run(h.client('A').allocateKeyed('ckpt', 4 * PAGE, 'tiny'));
      const w = h.client('B');
      await h.run(w.unlock(made.guid, made.key));
      await h.run(w.write(made.guid, 0, tagged(PAGE, 'kept')));
      await h.run(w.flush(''));
      await h.runUntilQuiet();
      const view = await h.openStoreView();
      const stored = (await view.readTable()).records.find((r) => r.guid === made.guid);
      expect(stored?.keyDigest).toEqual(keyDigest(made.guid, made.key));

      await restartBoth(h);
      for (const via of ['A', 'B'] as const) {
        const c = h.client(via);
        expect(codeOf(await h.settle(c.read(made.guid, 0, PAGE))), `read through ${via} without the key`).toBe('ACCESS_DENIED');
        expect(codeOf(await h.settle(c.unlock(made.guid, Buffer.alloc(16, 9))))).toBe('ACCESS_DENIED');
        await h.run(c.unlock(made.guid, made.key));
        expect(await h.run(c.read(made.guid, 0, PAGE))).toEqual(tagged(PAGE, 'kept'));
      }
      expect(h.errorLogs()).toEqual([]);
    });
  }
});
