// A new allocation's extent is zeroed by the coordinator (controller 1 while
// mirrored): between SPACE_REQUEST and ALLOCATE when it allocates itself, or
// while it handles ALLOCATE when the partner does. For a volume of some GiB
// on a slow disk that takes longer than the partner's reservation used to
// live (10 s: "partner: no reservation") and than a peer request's timeout
// (10 s in the runtime). Both now grow with the extent, at 32 MiB/s.
//
// Here a volume of 64 MiB, whose extent (two slots a page) is some 130 MiB
// (4 s at that rate), is zeroed in 11 s: past the fixed 10 s, inside the
// allowance.

import { describe, expect, it } from 'vitest';
import { Role } from '../../src/protocol/messages.js';
import { extentBytes } from '../../src/store/layout.js';
import { Harness } from './harness.js';

const MiB = 1024 * 1024;
const EXTENT_BYTES = 64 * MiB;
const ZEROING_MS = 11_000;

async function pair(seed: number): Promise<Harness> {
  return Harness.createPair({ seed, deviceBytes: extentBytes(1024, EXTENT_BYTES / 1024) + 8 * MiB, peerRequestTimeoutMs: 10_000 });
}

describe('allocating while the coordinator zeroes a large extent slowly', () => {
  it.each([
    { via: 'A' as const, seed: 101, what: 'the partner keeps its reservation while the coordinator (A) zeroes before ALLOCATE' },
    { via: 'B' as const, seed: 102, what: 'the partner (B) waits for its ALLOCATE while the coordinator zeroes, and the link stays up' },
  ])('$what', async ({ via, seed }) => {
    const h = await pair(seed);
    h.a.store.stall('clears');
    const made = h.track(h.client(via).allocate('big', EXTENT_BYTES, 'small'));
    await h.advance(ZEROING_MS);
    expect(made.settled, `the allocation gave up while A zeroed: ${String(made.result?.ok === false ? made.result.error : '')}`).toBe(false);
    h.a.store.unstall();
    await h.runUntil(() => made.settled, 'the allocation answered');
    expect(made.result?.ok ? 'ok' : String(made.result?.error)).toBe('ok');
    await h.runUntilQuiet();
    expect(h.status('B').digests.table).toBe(h.status('A').digests.table);
    expect([h.a.core.currentRole, h.b.core.currentRole]).toEqual([Role.MIRRORED, Role.MIRRORED]);
  });

  it('an allocation made while the coordinator zeroes the partner\'s new extent is placed elsewhere', async () => {
    const h = await pair(103);
    h.a.store.stall('clears');
    const big = h.track(h.client('B').allocate('big', EXTENT_BYTES, 'small'));
    await h.advance(1_000);
    // A places a second extent while the first is being zeroed.
    const small = h.track(h.client('A').allocate('small', 64 * 1024, 'small'));
    await h.advance(1_000);
    h.a.store.unstall();
    await h.runUntil(() => big.settled && small.settled, 'both allocations answered');
    expect(big.result?.ok && small.result?.ok, 'both allocations succeed').toBe(true);
    await h.runUntilQuiet();
    const records = (await (await h.openStoreView()).readTable()).records;
    const [x, y] = ['big', 'small'].map((name) => records.find((r) => r.name === name)!);
    const end = (r: typeof x): number => r!.dataOffset + extentBytes(r!.pageSizeBytes, r!.pageCount);
    const overlap = x!.dataOffset < end(y) && y!.dataOffset < end(x);
    expect(overlap, `extents ${x!.dataOffset}..${end(x)} and ${y!.dataOffset}..${end(y)} overlap`).toBe(false);
  });
});
