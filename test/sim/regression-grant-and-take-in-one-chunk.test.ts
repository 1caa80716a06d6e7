// Issue 10: two writers, one per controller, on one page left the two copies
// different with no fault at all. B asked A for a page (TAKE); A granted it,
// and before A's outbox went out a client write of A's own for that page
// made A ask for it back. A's grant and A's TAKE reached B in one chunk, and
// B handled the TAKE before the promise continuation that recorded B's grant
// had run: B, not yet the owner in its own eyes, granted A the page, then
// recorded the grant it had got. Both owned the page from then on, each
// wrote its own version n+1, and each dropped the other's as not newer.
//
// Now a grant takes effect as its frame is handled, only the owner hands a
// page on, and a mirrored page that breaks the ownership rules is refused.

import { describe, expect, it } from 'vitest';
import { Harness, tagged } from './harness.js';
import { Prng } from './prng.js';

const PAGE = 512;

async function readBoth(h: Harness, guid: string, offset: number, length: number): Promise<[Buffer, Buffer]> {
  const viaA = await h.run(h.client('A').read(guid, offset, length));
  const viaB = await h.run(h.client('B').read(guid, offset, length));
  return [viaA, viaB];
}

describe('regression: a grant and a TAKE crossing in one chunk', () => {
  it('the two copies of the page end equal, and neither side saw an ownership conflict', async () => {
    const h = await Harness.createPair({ seed: 10, frameDelayMaxMs: 0, clientDelayMaxMs: 0 });
    const al = await h.run(h.client('A').allocate('x', 4 * PAGE, 'tiny'));
    // A (controller 1) owns every page of a new allocation.
    await h.run(h.client('A').write(al.guid, 0, tagged(PAGE, 'init')));
    await h.runUntilQuiet();

    // A's grant to B waits on the wire, and so does everything A sends after it.
    h.hold('A->B', (m) => m.kind === 'LOCK_REQUEST_REPLY');
    const fromB = tagged(PAGE, 'written through B');
    const writeB = h.track(h.client('B').write(al.guid, 0, fromB));
    await h.runUntil(() => h.heldKinds('A->B').includes('LOCK_REQUEST_REPLY'), 'A granted page 0 to B');
    // A write through A now finds the page given away: A asks for it back.
    const fromA = tagged(PAGE, 'written through A');
    const writeA = h.track(h.client('A').write(al.guid, 0, fromA));
    await h.runUntil(() => h.heldKinds('A->B').includes('LOCK_REQUEST'), "A's TAKE queued behind its grant");
    // Both reach B in one chunk.
    h.release('A->B');
    await h.runUntil(() => writeA.settled && writeB.settled, 'both writes answered');
    await h.runUntilQuiet();

    expect(writeA.result?.ok, String(writeA.result && !writeA.result.ok ? writeA.result.error : '')).toBe(true);
    expect(writeB.result?.ok, String(writeB.result && !writeB.result.ok ? writeB.result.error : '')).toBe(true);
    const [viaA, viaB] = await readBoth(h, al.guid, 0, PAGE);
    expect(viaA.equals(viaB), `A reads "${viaA.subarray(0, 20).toString()}", B reads "${viaB.subarray(0, 20).toString()}"`).toBe(true);
    expect(viaA.equals(fromA) || viaA.equals(fromB)).toBe(true);

    // Had both come to own the page, the next pair of writes would split the copies for good.
    for (let round = 0; round < 20; round++) {
      const a = h.track(h.client('A').write(al.guid, 0, tagged(PAGE, `A${round}`)));
      const b = h.track(h.client('B').write(al.guid, 0, tagged(PAGE, `B${round}`)));
      await h.runUntil(() => a.settled && b.settled, `round ${round} answered`);
      const [ra, rb] = await readBoth(h, al.guid, 0, PAGE);
      expect(ra.equals(rb), `round ${round}: A and B read different bytes`).toBe(true);
    }
    expect(h.status('A').counters.ownershipConflicts).toBe(0);
    expect(h.status('B').counters.ownershipConflicts).toBe(0);
    expect(h.violations).toEqual([]);
  });
});

describe('two writers, one per controller, on the same pages (client path, frames in chunks)', () => {
  for (let seed = 1; seed <= 24; seed++) {
    it(`seed ${seed}: after every round both controllers read the same bytes, one of the values written`, async () => {
      const h = await Harness.createPair({ seed, frameDelayMaxMs: seed % 3, clientDelayMaxMs: seed % 2 });
      const rng = new Prng(seed * 7919);
      const al = await h.run(h.client('A').allocate('x', 8 * PAGE, 'tiny'));
      const ca = h.client('A');
      const cb = h.client('B');
      for (let round = 0; round < 120; round++) {
        // Whole pages, part of a page, or across two pages; the two writes overlap.
        const shape = rng.int(3);
        const page = rng.int(6);
        const offset = shape === 0 ? page * PAGE : shape === 1 ? page * PAGE + rng.int(PAGE / 2) : page * PAGE + PAGE / 2;
        const length = shape === 0 ? PAGE : shape === 1 ? 1 + rng.int(PAGE / 2) : PAGE;
        const va = tagged(length, `A${round}`);
        const vb = tagged(length, `B${round}`);
        const wa = h.track(ca.write(al.guid, offset, va));
        const wb = h.track(cb.write(al.guid, offset, vb));
        await h.runUntil(() => wa.settled && wb.settled, `round ${round} answered`);
        expect(wa.result?.ok && wb.result?.ok, `round ${round}: a write failed`).toBe(true);
        const [ra, rb] = await readBoth(h, al.guid, offset, length);
        expect(ra.equals(rb), `seed ${seed} round ${round}: A and B read different bytes`).toBe(true);
        expect(ra.equals(va) || ra.equals(vb), `seed ${seed} round ${round}: neither write is what is read`).toBe(true);
      }
      await h.runUntilQuiet();
      expect(h.status('A').counters.ownershipConflicts + h.status('B').counters.ownershipConflicts).toBe(0);
      expect(h.violations).toEqual([]);
    });
  }
});
