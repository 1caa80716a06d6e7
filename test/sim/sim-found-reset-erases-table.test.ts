// Found by the simulator (seed 1379 of core-pair-random, chaos, at commit
// b4809be): A loses an arbitration and is fenced; B serves alone. B dies
// before A has rejoined. When the link comes back (B restarted), A resets to
// a fresh state: it drops every allocation it held and does not read the
// allocation table from the store again. B restarted is fresh too, but it
// read the table from the store. Two fresh controllers join with controller
// 1's state winning, so A, holding nothing, is authoritative, and B drops
// every allocation "unknown to the partner": the pair serves no allocation
// at all, though the store's table and pages still hold them. A controller
// fresh from a reset should load the table like one fresh from a start (or
// not win a join against one that did).

import { describe, expect, it } from 'vitest';
import { Role } from '../../src/protocol/messages.js';
import { PAGE, pairWithAllocation, tagged } from './found.js';


describe('found by the simulator: a join between a reset controller and a restarted one', () => {
  it('keeps the allocations that are in the store', async () => {
    const data = tagged(PAGE, 'in the store');
    const { h, guid } = await pairWithAllocation({ seed: 61, preferred: 'B' }, data);
    await h.run(h.client('A').flush());

    // A partition: B (preferred) takes over, A fences itself.
    h.cut('partition');
    await h.runUntil(() => h.b.core.currentRole === Role.ALONE && h.a.core.currentRole === Role.FENCED, 'B alone, A fenced');
    // B dies before A rejoins; it restarts, and the link comes back.
    h.kill('B');
    await h.restart('B');
    h.heal();
    await h.waitMirrored();

    expect(h.nodes.map((n) => n.core.status().allocations), 'allocations served after the join').toEqual([1, 1]);
    const got = await h.settle(h.client('B').read(guid, 0, PAGE));
    expect(got.ok && got.value.equals(data)).toBe(true);
  });
});
