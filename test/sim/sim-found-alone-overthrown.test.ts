// Found by the simulator (seed 2553 of core-pair-random, chaos without fence
// kills, at commit b4809be): A serves alone (B was taken over while paused);
// B rejoins, and B's side of the join finishes (B is mirrored) a moment
// before A's does (B's last frame, saying its push is done, is still on the
// way; here B's join is held up by destages it started when it resumed).
// The link is cut then. B, mirrored, arbitrates; A, alone, does not (it stays
// alone). B sees A's mailbox slot advance, is preferred, and takes over in a
// new epoch at once. A's store lease still holds, and A goes on writing
// through and acknowledging writes in its old epoch until its next mailbox
// beat: two controllers alone, both acknowledging writes, and A's writes
// landing in the store after B's epoch record. Whoever takes over from a
// partner it saw alive has to wait out that partner's lease (or must not
// take over from a partner that serves alone). Fixed: a controller that sees
// its partner alive and alone fences itself; and a winner that saw its
// partner alive serves only after that partner's lease has run out.

import { describe, expect, it } from 'vitest';
import { Role } from '../../src/protocol/messages.js';
import { PAGE, pairWithAllocation, tagged } from './found.js';


describe('found by the simulator: a controller serving alone, overthrown while its lease holds', () => {
  it('B, preferred and just rejoined, does not take over from A that serves alone; A goes on serving', async () => {
    const { h, guid } = await pairWithAllocation({ seed: 2, preferred: 'B', fenceKills: false, frameDelayMaxMs: 2, storeDelayMaxMs: 1 });
    await h.run(h.client('B').write(guid, 0, tagged(PAGE, 'b')));
    await h.advance(150);

    // B is paused past the timeout: A serves alone. A flush waits in B's socket.
    h.pause('B');
    const flush = h.track(h.client('B').flush(guid));
    await h.runUntil(() => h.a.core.currentRole === Role.ALONE, 'A alone');
    h.resume('B', { timersFirst: false, clientsFirst: true });
    h.heal();
    const resumedAt = h.logs.length;
    const bRejoined = (): boolean => h.logs.slice(resumedAt).some((l) => l.node === 'B' && l.msg === 'mirrored with partner');
    await h.runUntil(() => (bRejoined() && h.b.core.currentRole === Role.MIRRORED) || h.a.core.currentRole === Role.MIRRORED, 'the join ends on one side');
    expect(h.a.core.currentRole, 'A is still alone when B is mirrored').toBe(Role.ALONE);

    // The link is cut right then; B arbitrates. It sees A alive and serving
    // alone, so it must not take over (that made two controllers alone): it
    // fences itself, and A goes on serving.
    h.cut('partition');
    await h.runUntil(() => h.b.core.currentRole === Role.FENCED || h.b.core.currentRole === Role.ALONE, 'B decided');
    expect(h.b.core.currentRole, 'B does not take over from A serving alone').toBe(Role.FENCED);
    const w = await h.settle(h.client('A').write(guid, PAGE, tagged(PAGE, 'to A, still alone')));
    expect(w.ok, 'A still serves').toBe(true);
    await h.advance(1_000);
    expect(flush.settled).toBe(true);
    expect(h.violations).toEqual([]);
  });
});
