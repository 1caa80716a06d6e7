// Found by the NBD simulator (seeds 22, 33, 55, 67, 148, 155 and 176 of
// sim-nbd-chaos): an NBD write reaches B, B applies it and mirrors it, and
// the link is cut before A's answer comes back, so B refuses the write with
// PARTNER_LOST, although it holds it (and A may too). The NBD backend
// (CoreVolumes) takes PARTNER_LOST for a refusal that passes and sends the
// same bytes again, untagged, until the pair serves again. Meanwhile B took
// over and served the write: a reader saw it, and another client wrote the
// page and was acknowledged. Then the resent write lands and puts the old
// bytes back over the acknowledged newer ones: one write took effect twice,
// a later acknowledged write is lost, and the history is not linearizable.
// A resent piece must be applied at most once (a retry tag, as the client
// library's writes carry), or a refusal that may have applied must not be
// resent.

import { describe, expect, it } from 'vitest';
import { Role } from '../../src/protocol/messages.js';
import { Harness, tagged } from './harness.js';
import { NbdEndpoint, nbdConnIds } from './nbd-endpoint.js';
import { Prng } from './prng.js';

const PAGE = 512;

describe('found by the simulator: the NBD backend resends a write its controller already applied', () => {
  it('an NBD write refused with PARTNER_LOST after it was applied does not take effect again over a later acknowledged write', async () => {
    const h = await Harness.createPair({ seed: 22, preferred: 'B', storeDelayMaxMs: 0, frameDelayMaxMs: 0, clientDelayMaxMs: 0 });
    const al = await h.run(h.client('B').allocate('vol', 4 * PAGE, 'tiny'));
    const ep = new NbdEndpoint(h, h.b, nbdConnIds()(), new Prng(1), { socketDelayMaxMs: 0, pieceBytes: PAGE, readPieceBytes: PAGE, piecesInFlight: 1 });
    const vol = ep.findVolume('vol')!;
    // Page 0 is B's, so B applies the next write itself.
    await h.run(ep.call('write', (v) => v.write(vol, 0, tagged(PAGE, 'first'), false)));

    // A holds the write, but its answer never reaches B: the link is cut first.
    h.hold('A->B', (m) => m.kind === 'WRITE_PAGE_REPLY');
    const x = tagged(PAGE, 'X');
    const writeX = h.track(ep.call('write X', (v) => v.write(vol, 0, x, false)));
    await h.runUntil(() => h.heldKinds('A->B').includes('WRITE_PAGE_REPLY'), 'A answered the mirrored write');
    h.cut('partition');
    await h.runUntil(() => h.b.core.currentRole === Role.ALONE, 'B took over');

    // X took effect: B serves it. Then another client writes the page and is acknowledged.
    const c = h.client('B');
    expect((await h.run(c.read(al.guid, 0, PAGE))).equals(x), 'B serves X once it took over').toBe(true);
    const y = tagged(PAGE, 'Y');
    await h.run(c.write(al.guid, 0, y));
    expect(writeX.settled, 'setup: the NBD write X is still being retried when Y is acknowledged').toBe(false);

    await h.runUntil(() => writeX.settled, 'the NBD write X answered');
    const now = await h.run(c.read(al.guid, 0, PAGE));
    expect(now.equals(y), `page 0 holds ${now.subarray(0, 8).toString()}..., not Y: X took effect a second time after Y was acknowledged`).toBe(true);
  });
});
