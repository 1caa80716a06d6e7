// Found by the simulator (seed 167 of core-pair-random in chaos mode, seed
// 75 in chaos mode without fence kills): the link drops and is made again at
// once while the pair is mirrored, so both controllers arbitrate with the
// link up. The winner writes the epoch record; before its arbitration
// returns (it still has to write its slot and read the mailbox back), the
// loser learns the new epoch, resets and joins, and its frames carry the new
// epoch. The winner, still in the old epoch, reads them as "partner is in a
// newer epoch", fences itself, and resets to an empty, fresh cache when the
// link is back. Then its arbitration returns "won" and it takes over, empty:
// the pair ends mirrored with no allocation at all, and every acknowledged
// write is gone. Here the winner's store is slow for a moment right after
// the epoch record lands, which opens the same window deterministically.

import { describe, expect, it } from 'vitest';
import { PAGE, pairWithAllocation, tagged } from './found.js';


describe('found by the simulator: an arbitration that returns after the controller was reset', () => {
  for (const preferred of ['A', 'B'] as const) {
    it(`a link drop healed at once, with a slow store for the winner (${preferred} preferred), loses no allocation and no acknowledged write`, async () => {
      const data = tagged(PAGE, 'acknowledged');
      const { h, guid } = await pairWithAllocation({ seed: 3, preferred }, data);

      const records = h.epochRecords.length;
      h.cut('link drop');
      h.heal();
      await h.runUntil(() => h.epochRecords.length > records, 'the takeover epoch record landed');
      const winner = h.node(h.epochRecords[h.epochRecords.length - 1]!.node);
      expect(winner.name).toBe(preferred);
      // The winner's store answers nothing for 400 ms, right after the record.
      winner.store.stall('all');
      await h.advance(400);
      winner.store.unstall();
      await h.advance(3_000);
      await h.waitMirrored();

      expect(h.nodes.map((n) => n.core.status().allocations)).toEqual([1, 1]);
      const got = await h.settle(h.client('B').read(guid, 0, PAGE));
      expect(got.ok && got.value.equals(data)).toBe(true);
      expect(h.violations).toEqual([]);
    });
  }
});
