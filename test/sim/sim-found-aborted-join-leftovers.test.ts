// Found by the simulator (seed 2969 of core-pair-random, chaos without fence
// kills): A serves alone with pages still dirty from before B died. B
// restarts and joins; A's push gives B those pages. The link is cut before
// the join finishes: B goes back to "starting", but keeps the pages. A, alone,
// writes one of them again, through to the store, acknowledged. When the
// link is back and the join is done again, A pushes only what is dirty at A
// now (nothing: alone, it writes through), so B is "mirrored" while holding
// the old page, dirty, and serves it: a stale read. A controller whose join
// was cut short has to drop what the partial join gave it.

import { describe, expect, it } from 'vitest';
import { Role } from '../../src/protocol/messages.js';
import { PAGE, pairWithAllocation, tagged } from './found.js';


describe('found by the simulator: what a join cut short leaves behind', () => {
  it('a controller whose first join was cut short serves no page older than the acknowledged one', async () => {
    const { h, guid } = await pairWithAllocation({ seed: 71 }, tagged(PAGE, 'old'));

    // B dies; A takes over, but its store is slow: page 0 stays dirty at A.
    h.a.store.stall('pageWrites');
    h.kill('B');
    await h.runUntil(() => h.a.core.currentRole === Role.ALONE, 'A alone');
    await h.restart('B');
    h.heal();
    // A's push gives B page 0; the link is cut before the join is done.
    await h.runUntil(() => h.status('B').dirtyPages > 0, 'A pushed page 0 to B');
    h.cut('partition');
    expect(h.b.core.currentRole).not.toBe(Role.MIRRORED);

    // A, alone, writes page 0 again: through to the store, acknowledged.
    h.a.store.unstall();
    const newer = tagged(PAGE, 'new, acknowledged');
    await h.run(h.client('A').write(guid, 0, newer));

    h.heal();
    await h.waitMirrored();
    await h.runUntilQuiet();
    expect(h.status('B').digests, 'B holds dirty pages A does not').toEqual(h.status('A').digests);
    expect((await h.run(h.client('B').read(guid, 0, PAGE))).equals(newer), 'B served the old page').toBe(true);
  });
});
