// Found by the simulator (seed 2316 of core-pair-random, chaos without fence
// kills, at commit af6b3a9): a client's tagged write reaches B, which must
// first take the page from A (A owns it), and waits. The client times out and
// retries on A with the same tag, as PairClient does; A applies it and
// answers. The client goes on and writes the page again: acknowledged. Then
// B's ownership request is granted, and B applies its first attempt of the
// old write, which it still had in hand, over the newer acknowledged one.
// The tag was checked when the write arrived at B, not when B finally
// applied it, although B had meanwhile heard (with A's mirrored pages) that
// the write was applied. In the seed, A was paused (under the timeout) while
// B waited; here A defers the grant because its store is slow to finish a
// destage of the page, which comes to the same.

import { describe, expect, it } from 'vitest';
import { PAGE, RETRIED, pairWithAllocation, tagged, writeWaitingAtB } from './found.js';

describe('found by the simulator: the first attempt of a retried write, applied late', () => {
  it('a write still waiting for its pages at one controller is not applied after its retry was applied and a newer write acknowledged', async () => {
    const { h, guid } = await pairWithAllocation({ seed: 31 }, tagged(PAGE, 'zero'));
    // A owns page 0 and defers giving it away; the write reaches B, which asks A for page 0 and waits.
    const first = tagged(PAGE, 'first');
    const { attemptOnB, flush } = await writeWaitingAtB(h, guid, first);
    expect(attemptOnB.settled).toBe(false);

    // The client gives up on B and retries on A: applied, acknowledged. Then it writes the page again.
    await h.run(h.client('A').write(guid, 0, first, 0, RETRIED));
    const second = tagged(PAGE, 'second');
    await h.run(h.client('A').write(guid, 0, second, 0, { clientId: 7, clientSeq: 2 }));

    // A's store catches up; A gives page 0 to B at last.
    h.a.store.unstall();
    await h.runUntil(() => attemptOnB.settled && flush.settled, 'the first attempt and the flush answered');
    await h.runUntilQuiet();

    const viaA = await h.run(h.client('A').read(guid, 0, PAGE));
    const viaB = await h.run(h.client('B').read(guid, 0, PAGE));
    expect(viaB.equals(viaA)).toBe(true);
    expect(viaA.equals(second), 'the first attempt was applied over the newer acknowledged write').toBe(true);
  });
});
