// Found by the simulator (seed 1129 of core-pair-random, chaos mode): a
// tagged write reaches B and is mirrored to A, and B dies before answering.
// A takes over and remembers the tag (the write is "held"). B restarts and
// rejoins: the resync gives it the pages, but not the tags A remembers. Then
// A goes (here it is killed; in the seed it lost an arbitration after a cut
// and reset itself), and B serves alone, with no memory of the tag. The
// client's retry of its write, with the same tag, as PairClient sends it, is
// applied a second time, over a newer acknowledged write of the same page.
//
// Seed 1761 shows the same without a second failure: the write reaches B, the
// link is cut, A loses the arbitration and rejoins with an empty memory of
// tags, and the retry, sent to A while the pair is mirrored again, is applied
// again (B, which knows the tag, is not asked).

import { describe, expect, it } from 'vitest';
import { Role } from '../../src/protocol/messages.js';
import { PAGE, pairWithAllocation, tagged } from './found.js';


describe('found by the simulator: the tags of retried writes across a rejoin', () => {
  it('a write retried with its tag after the partner that held it rejoined and took over is not applied again', async () => {
    const { h, guid } = await pairWithAllocation({ seed: 21 });

    // B applies the tagged write and mirrors it to A; B dies before it hears A's reply.
    h.hold('A->B', (m) => m.kind === 'WRITE_PAGE_REPLY');
    const first = tagged(PAGE, 'first');
    const w = h.track(h.client('B').write(guid, 0, first, 0, { clientId: 7, clientSeq: 1 }));
    await h.runUntil(() => h.heldKinds('A->B').includes('WRITE_PAGE_REPLY'), 'A holds the write');
    h.kill('B');
    await h.runUntil(() => w.settled && h.a.core.currentRole === Role.ALONE, 'A took over');
    expect(w.result?.ok).toBe(false);

    // B comes back and rejoins; another client overwrites the page, acknowledged.
    await h.restart('B');
    h.heal();
    await h.waitMirrored();
    const second = tagged(PAGE, 'second');
    await h.run(h.client('A').write(guid, 0, second, 0, { clientId: 8, clientSeq: 1 }));

    // A goes; B serves alone.
    h.kill('A');
    await h.runUntil(() => h.b.core.currentRole === Role.ALONE, 'B took over');

    // The first client retries its write with its tag.
    await h.run(h.client('B').write(guid, 0, first, 0, { clientId: 7, clientSeq: 1 }));
    const now = await h.run(h.client('B').read(guid, 0, PAGE));
    expect(now.equals(second), 'the retried write was applied a second time, over a newer acknowledged write').toBe(true);
  });

  it('a write retried on the controller that lost an arbitration and rejoined, while mirrored, is not applied again', async () => {
    const { h, guid } = await pairWithAllocation({ seed: 22, preferred: 'B' });

    // B applies the tagged write; the link is cut before A holds it.
    h.hold('B->A', (m) => m.kind === 'WRITE_PAGE');
    const first = tagged(PAGE, 'first');
    const w = h.track(h.client('B').write(guid, 0, first, 0, { clientId: 7, clientSeq: 1 }));
    await h.runUntil(() => h.heldKinds('B->A').includes('WRITE_PAGE'), 'B applied the write');
    h.cut('partition');
    await h.runUntil(() => w.settled && h.b.core.currentRole === Role.ALONE && h.a.core.currentRole === Role.FENCED, 'B took over, A fenced');
    expect(w.result?.ok).toBe(false);
    h.heal();
    await h.waitMirrored();

    // Another client overwrites the page, acknowledged.
    const second = tagged(PAGE, 'second');
    await h.run(h.client('B').write(guid, 0, second, 0, { clientId: 8, clientSeq: 1 }));

    // The first client retries on A.
    await h.run(h.client('A').write(guid, 0, first, 0, { clientId: 7, clientSeq: 1 }));
    const now = await h.run(h.client('B').read(guid, 0, PAGE));
    expect(now.equals(second), 'the retried write was applied a second time, over a newer acknowledged write').toBe(true);
  });
});
