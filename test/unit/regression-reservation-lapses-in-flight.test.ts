// Regression (found by the allocator's unit tests, issue 13): controller 1,
// placing an allocation while mirrored, held its extent by a reservation
// that lapsed RESERVATION_TTL_MS (plus the zeroing allowance) after it was
// made, while SPACE_REQUEST and ALLOCATE may each take up to
// peerRequestTimeoutMs. When the partner answered slowly (each within its
// timeout), the reservation lapsed while ALLOCATE was unanswered, and
// controller 1 proposed the same extent for a second allocation, which
// controller 2 refused with NO_SPACE though the store had room. Now our own
// reservations last until their allocation is installed or fails; only
// those made for the partner lapse.

import { describe, expect, it } from 'vitest';
import { CONN, joinedCore, PAGE } from './core-fixture.js';

describe('allocator', () => {
  it('an extent stays reserved until its allocation is installed, however slowly the partner answers in time', async () => {
    const { f, partner } = await joinedCore({ config: { partnerTimeoutMs: 1_000_000 } });
    partner.auto.delete('SPACE_REQUEST');
    partner.auto.delete('ALLOCATE');
    f.core.onClientRequest(CONN, f.request({ kind: 'C_ALLOCATE', name: 'a', policy: '', sizeBytes: 4 * PAGE }));
    await partner.pump();
    const spaceA = partner.take('SPACE_REQUEST');
    // Answered after 9 s (its timeout is 10 s); the extent is zeroed, ALLOCATE goes out.
    f.setNow(9000);
    f.core.tick();
    partner.answer(spaceA);
    await partner.pump();
    partner.take('ALLOCATE');
    // 3 s later, ALLOCATE still within its timeout, a second allocation is asked for.
    f.setNow(12_000);
    f.core.tick();
    await partner.pump();
    expect(f.closed).toEqual([]);
    f.core.onClientRequest(CONN, f.request({ kind: 'C_ALLOCATE', name: 'b', policy: '', sizeBytes: 4 * PAGE }));
    await partner.pump();
    const spaceB = partner.take('SPACE_REQUEST');
    expect(spaceB.kind === 'SPACE_REQUEST' && spaceB.dataOffset).not.toBe(spaceA.kind === 'SPACE_REQUEST' && spaceA.dataOffset);
  });
});
