// Found by the simulator (seed 3510 of core-pair-random, chaos without fence
// kills): a client write reaches B and B applies it; before A holds it, a
// client read of the same page reaches B and waits for the mirroring to
// finish. The link is cut: the write fails (PARTNER_LOST, not acknowledged),
// which also ends the read's wait, and the read returns the write's bytes.
// Then B loses the arbitration and resets; A, which never held the write,
// serves alone: the value the reader saw is gone, and later reads see the
// older one. A value went back in time (not linearizable). A read that
// waited for a mirroring that failed has to look at the role again (B is
// arbitrating then, and serves no reads) instead of returning what it found.

import { describe, expect, it } from 'vitest';
import { isPagepairError } from '../../src/protocol/errors.js';
import { Role } from '../../src/protocol/messages.js';
import { PAGE, pairWithAllocation, tagged } from './found.js';


describe('found by the simulator: a read that waited for a mirroring that failed', () => {
  it('a read served while a write was being mirrored never returns bytes that are lost when the mirroring fails', async () => {
    const before = tagged(PAGE, 'before');
    const { h, guid } = await pairWithAllocation({ seed: 41, preferred: 'A' }, before);
    // Give page 0 to B, so B applies the next write itself.
    await h.run(h.client('B').write(guid, 0, before));

    h.hold('B->A', (m) => m.kind === 'WRITE_PAGE');
    const w = h.track(h.client('B').write(guid, 0, tagged(PAGE, 'never acknowledged')));
    await h.runUntil(() => h.heldKinds('B->A').includes('WRITE_PAGE'), 'B applied the write');
    const read = h.track(h.client('B').read(guid, 0, PAGE));
    await h.advance(5);
    h.cut('partition');
    await h.runUntil(() => w.settled && read.settled, 'write and read answered');
    expect(w.result?.ok).toBe(false);

    // A (preferred) carries on; B rejoins.
    await h.runUntil(() => h.a.core.currentRole === Role.ALONE, 'A took over');
    h.heal();
    await h.waitMirrored();
    const now = await h.run(h.client('A').read(guid, 0, PAGE));
    expect(now.equals(before)).toBe(true);
    const r = read.result!;
    if (r.ok) expect(r.value.equals(now), 'the read returned bytes of a write that was then lost').toBe(true);
    else expect(isPagepairError(r.error) ? r.error.code : r.error.message).toMatch(/NOT_MIRRORED|PARTNER_LOST|FENCED|NOT_ACTIVE/);
  });
});
