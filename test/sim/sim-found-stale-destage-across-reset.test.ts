// Found by the simulator (seed 318 of core-pair-random, chaos without fence
// kills, at commit 3384b30): A holds page 0 dirty and is paused past the
// timeout; B takes over and a client writes page 0 through B (written
// through, acknowledged). A flush request waits in A's socket. A resumes and
// reads its sockets before its timers run: it still believes it is mirrored,
// so the flush starts a destage of its old page 0, which first waits for a
// renewal of the store lease. Meanwhile A learns of the takeover, is fenced,
// resets and adopts B's epoch. Then the lease renewal completes and is judged
// against A's epoch now, the new one: "not superseded"; the destage goes on
// and A's old page lands over B's newer one. The acknowledged write is lost
// from the store (a restart of both, or an eviction, serves the old bytes).
// The same family as the read across a reset (3384b30), on the destage path.

import { describe, expect, it } from 'vitest';
import { Role } from '../../src/protocol/messages.js';
import { PAGE, pairWithAllocation, tagged } from './found.js';


describe('found by the simulator: a destage started before a reset lands after it', () => {
  it('a controller that was taken over while paused writes none of its old pages over the newer ones', async () => {
    const { h, guid } = await pairWithAllocation({ seed: 1, fenceKills: false, storeDelayMaxMs: 1 }, tagged(PAGE, 'old'));
    await h.advance(150);

    h.pause('A');
    const flush = h.track(h.client('A').flush(guid));
    await h.runUntil(() => h.b.core.currentRole === Role.ALONE, 'B took over');
    const newer = tagged(PAGE, 'new, acknowledged');
    await h.run(h.client('B').write(guid, 0, newer));

    h.resume('A', { timersFirst: false, clientsFirst: true });
    h.heal();
    await h.runUntil(() => flush.settled, 'the flush answered');
    await h.waitMirrored();
    await h.runUntilQuiet();

    expect(h.violations).toEqual([]);
    const view = await h.openStoreView();
    const rec = (await view.readTable()).records.find((r) => r.guid === guid)!;
    const stored = await view.readPage({ guid, dataOffset: rec.dataOffset, pageSizeBytes: PAGE }, 0);
    expect(stored.data.equals(newer), 'the store holds the old page over the acknowledged one').toBe(true);
  });
});
