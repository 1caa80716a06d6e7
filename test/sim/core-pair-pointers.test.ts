// Read and write pointers on a simulated pair: shadowed writes become visible
// on commit through both controllers, abort drops them, plain writes under an
// open write pointer are refused on both sides, read pointers pin pages, and
// an unused pointer is given back when its lease runs out.

import { describe, expect, it } from 'vitest';
import { PointerMode } from '../../src/protocol/messages.js';
import { Harness, tagged } from './harness.js';
import { codeOf, pairWithClients } from './pair-steps.js';

const PAGE = 512;

async function setup(seed: number, extra: Parameters<typeof Harness.createPair>[0] extends infer O ? Partial<O> : never = {}) {
  const { h, ca, cb } = await pairWithClients({ seed, ...extra });
  const x = await h.run(ca.allocate('ptr', 8 * PAGE, 'tiny'));
  const base = tagged(8 * PAGE, 'base');
  await h.run(ca.write(x.guid, 0, base));
  return { h, ca, cb, guid: x.guid, base };
}

describe('write pointers', () => {
  it('writes through a write pointer are invisible until commit, then visible through both', async () => {
    const { h, ca, cb, guid, base } = await setup(71);
    const ptr = await h.run(ca.openPointer(guid, 2, 3, PointerMode.WRITE));
    const fresh = tagged(2 * PAGE, 'pointer-data');
    await h.run(ca.write(guid, 2 * PAGE + 100, fresh, ptr));
    // Plain reads on both sides still see the committed contents.
    expect(await h.run(ca.read(guid, 0, 8 * PAGE))).toEqual(base);
    expect(await h.run(cb.read(guid, 0, 8 * PAGE))).toEqual(base);
    // A read through the pointer sees its own writes.
    const expected = Buffer.from(base);
    fresh.copy(expected, 2 * PAGE + 100);
    expect(await h.run(ca.read(guid, 2 * PAGE, 3 * PAGE, ptr))).toEqual(expected.subarray(2 * PAGE, 5 * PAGE));

    const pages = await h.run(ca.closePointer(ptr, true));
    expect(pages).toBe(3);
    expect(await h.run(ca.read(guid, 0, 8 * PAGE))).toEqual(expected);
    expect(await h.run(cb.read(guid, 0, 8 * PAGE))).toEqual(expected);
    await h.runUntilQuiet();
    expect(h.status('A').digests).toEqual(h.status('B').digests);
    expect(h.status('A').openPointers + h.status('B').openPointers).toBe(0);
  });

  it('a write pointer opened through B commits to both', async () => {
    const { h, ca, cb, guid, base } = await setup(72);
    const ptr = await h.run(cb.openPointer(guid, 0, 2, PointerMode.WRITE));
    await h.run(cb.write(guid, 10, Buffer.from('hello'), ptr));
    await h.run(cb.closePointer(ptr, true));
    const expected = Buffer.from(base);
    Buffer.from('hello').copy(expected, 10);
    expect(await h.run(ca.read(guid, 0, 8 * PAGE))).toEqual(expected);
    expect(await h.run(cb.read(guid, 0, 8 * PAGE))).toEqual(expected);
    await h.runUntilQuiet();
    expect(h.status('A').digests).toEqual(h.status('B').digests);
  });

  it('closing without commit drops the pointer writes on both sides', async () => {
    const { h, ca, cb, guid, base } = await setup(73);
    const ptr = await h.run(ca.openPointer(guid, 0, 4, PointerMode.WRITE));
    await h.run(ca.write(guid, 0, tagged(4 * PAGE, 'aborted'), ptr));
    expect(await h.run(ca.closePointer(ptr, false))).toBe(0);
    expect(await h.run(ca.read(guid, 0, 8 * PAGE))).toEqual(base);
    expect(await h.run(cb.read(guid, 0, 8 * PAGE))).toEqual(base);
    expect(h.status('A').openPointers + h.status('B').openPointers).toBe(0);
    // The range is free again for plain writes.
    await h.run(cb.write(guid, 0, Buffer.from('free')));
  });

  it('a plain write under an open write pointer gets LOCK_CONFLICT through either controller', async () => {
    const { h, ca, cb, guid } = await setup(74);
    const ptr = await h.run(ca.openPointer(guid, 3, 2, PointerMode.WRITE));
    expect(codeOf(await h.settle(ca.write(guid, 3 * PAGE, Buffer.from('x'))))).toBe('LOCK_CONFLICT');
    expect(codeOf(await h.settle(cb.write(guid, 4 * PAGE + 7, Buffer.from('y'))))).toBe('LOCK_CONFLICT');
    expect(codeOf(await h.settle(cb.openPointer(guid, 4, 2, PointerMode.WRITE)))).toBe('LOCK_CONFLICT');
    // Outside the pointer's pages writes go on.
    await h.run(cb.write(guid, 0, Buffer.from('outside')));
    await h.run(ca.closePointer(ptr, false));
    await h.run(cb.write(guid, 3 * PAGE, Buffer.from('now-free')));
  });

  it('an unused write pointer is given back when its lease runs out', async () => {
    const { h, ca, cb, guid, base } = await setup(75, { pointerLeaseMs: 1000 });
    const ptr = await h.run(ca.openPointer(guid, 0, 2, PointerMode.WRITE));
    await h.run(ca.write(guid, 0, tagged(PAGE, 'leased'), ptr));
    expect(codeOf(await h.settle(cb.write(guid, 0, Buffer.from('z'))))).toBe('LOCK_CONFLICT');
    await h.advance(2500);
    await h.runUntilQuiet();
    expect(h.status('A').openPointers).toBe(0);
    expect(h.status('B').openPointers).toBe(0);
    expect(codeOf(await h.settle(ca.write(guid, 0, Buffer.from('late'), ptr)))).toBe('POINTER_UNKNOWN');
    expect(await h.run(cb.read(guid, 0, PAGE))).toEqual(base.subarray(0, PAGE));
    await h.run(cb.write(guid, 0, Buffer.from('after-lease')));
    expect((await h.run(ca.read(guid, 0, 11))).toString()).toBe('after-lease');
  });
});

describe('read pointers', () => {
  it('pin their pages in both caches while other reads sweep the cache', async () => {
    const { h, ca, cb } = await pairWithClients({ seed: 76, cacheBytesMax: 16 * PAGE });
    const x = await h.run(ca.allocate('pinned', 64 * PAGE, 'tiny'));
    await h.run(ca.write(x.guid, 0, tagged(4 * PAGE, 'pinned')));
    await h.run(ca.flush());
    const ptr = await h.run(ca.openPointer(x.guid, 0, 4, PointerMode.READ));
    expect(h.status('A').openPointers).toBe(1);
    expect(h.status('B').openPointers).toBe(1);
    // Sweep far more than the cache through both sides.
    for (let p = 4; p < 64; p += 4) {
      await h.run(ca.read(x.guid, p * PAGE, 4 * PAGE));
      await h.run(cb.read(x.guid, p * PAGE, 4 * PAGE));
    }
    const readsA = h.a.store.counters.pageReads;
    const readsB = h.b.store.counters.pageReads;
    expect(await h.run(ca.read(x.guid, 0, 4 * PAGE, ptr))).toEqual(tagged(4 * PAGE, 'pinned'));
    expect(await h.run(cb.read(x.guid, 0, 4 * PAGE))).toEqual(tagged(4 * PAGE, 'pinned'));
    expect(h.a.store.counters.pageReads).toBe(readsA);
    expect(h.b.store.counters.pageReads).toBe(readsB);
    await h.run(ca.closePointer(ptr, false));
    await h.runUntilQuiet();
    expect(h.status('A').openPointers + h.status('B').openPointers).toBe(0);
  });

  it('a read pointer through B reads what A wrote, and may not be written through', async () => {
    const { h, ca, cb, guid, base } = await setup(77);
    const ptr = await h.run(cb.openPointer(guid, 1, 3, PointerMode.READ));
    expect(await h.run(cb.read(guid, PAGE, 3 * PAGE, ptr))).toEqual(base.subarray(PAGE, 4 * PAGE));
    expect(codeOf(await h.settle(cb.write(guid, PAGE, Buffer.from('no'), ptr)))).toBe('LOCK_CONFLICT');
    expect(codeOf(await h.settle(cb.read(guid, 0, PAGE, ptr)))).toBe('OUT_OF_RANGE');
    // Another connection cannot use it.
    expect(codeOf(await h.settle(h.client('B').read(guid, PAGE, 10, ptr)))).toBe('POINTER_UNKNOWN');
    expect(codeOf(await h.settle(ca.read(guid, PAGE, 10, ptr)))).toBe('POINTER_UNKNOWN');
    await h.run(cb.closePointer(ptr, false));
  });
});

describe('flush and pointers', () => {
  // Regression: a flush takes every dirty page it does not own with
  // LOCK_REQUEST TAKE, and the owner refuses pages under a pointer it holds,
  // so C_FLUSH through B failed LOCK_CONFLICT while A held any pointer over a
  // dirty page. Now the owner destages the pages it refuses, and the flush
  // waits for "clean at v".
  for (const mode of [PointerMode.READ, PointerMode.WRITE]) {
    it(`a flush through B succeeds while A holds a ${mode === PointerMode.READ ? 'read' : 'write'} pointer over dirty pages`, async () => {
      const { h, ca, cb, guid } = await setup(mode === PointerMode.READ ? 78 : 79);
      const ptr = await h.run(ca.openPointer(guid, 0, 2, mode));
      expect(codeOf(await h.settle(cb.flush()))).toBe('ok');
      await h.run(ca.closePointer(ptr, false));
    });
  }
});
