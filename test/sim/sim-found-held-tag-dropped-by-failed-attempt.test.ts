// Found by the simulator (seeds 555 and 685 of core-pair-random, chaos mode,
// standing since the tags of retried writes were brought in): a client's
// tagged write reaches B and waits there (in the seeds B was paused; here B
// waits for A to give it the page). The client gives up on B and retries on
// A, which applies the write and mirrors it to B: B now knows the write was
// applied ("held"). Then B's own attempt fails (the link is lost before it
// gets the page), and its clean-up forgot the tag, the partner's news with
// it, because the attempt itself had applied nothing. A goes, B serves alone,
// and the client's next retry of the write, with the same tag, is applied a
// second time, over a newer acknowledged write of the same page.

import { describe, expect, it } from 'vitest';
import { Role } from '../../src/protocol/messages.js';
import { PAGE, RETRIED, pairWithAllocation, tagged, writeWaitingAtB } from './found.js';

describe('found by the simulator: a failed attempt of a write forgets that its retry was applied at the partner', () => {
  it('a write retried after its first attempt failed at the survivor is not applied again over a newer acknowledged write', async () => {
    const { h, guid } = await pairWithAllocation({ seed: 41 }, tagged(PAGE, 'zero'));
    // A owns page 0 and defers giving it away; the write reaches B, which asks A for page 0 and waits.
    const first = tagged(PAGE, 'first');
    const { attemptOnB } = await writeWaitingAtB(h, guid, first);
    expect(attemptOnB.settled).toBe(false);

    // The client retries on A: applied, mirrored to B, acknowledged. Another client overwrites the page.
    await h.run(h.client('A').write(guid, 0, first, 0, RETRIED));
    const second = tagged(PAGE, 'second');
    await h.run(h.client('A').write(guid, 0, second, 0, { clientId: 8, clientSeq: 1 }));

    // A dies: B's first attempt fails, never applied; B takes over.
    h.kill('A');
    await h.runUntil(() => attemptOnB.settled && h.b.core.currentRole === Role.ALONE, 'B took over');
    expect(attemptOnB.result?.ok).toBe(false);

    // The client retries its write on B with its tag.
    await h.run(h.client('B').write(guid, 0, first, 0, RETRIED));
    const now = await h.run(h.client('B').read(guid, 0, PAGE));
    expect(now.equals(second), 'the retried write was applied a second time, over a newer acknowledged write').toBe(true);
  });
});
