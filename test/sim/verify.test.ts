// Online verify (issue 10 part 4) on the simulated pair: a page whose copy on
// one side is overwritten on purpose (the core's test hook) is found, alone,
// whether the other side caches it or reads the store's copy, whether it is
// dirty or clean; a repair makes both read the same; a busy pair that no one
// corrupted shows nothing.

import { describe, expect, it } from 'vitest';
import { chooseGoodCopy, compareCopies } from '../../src/core/verify.js';
import { PageState, VerifyVerdict, type VerifiedPage } from '../../src/protocol/messages.js';
import { runVerify, type VerifyAllocation, type VerifyTarget } from '../../src/cli/verify-run.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import { Harness, tagged } from './harness.js';
import type { SimClient } from './sim-client.js';
import { Prng } from './prng.js';

const PAGE = 512;
const PAGES = 64;
const OPTS = { repair: false, rangePages: 16, rechecks: 3, recheckPauseMs: 5 };

/** A pair with nothing destaged by age during a test, and one allocation. */
async function pair(seed: number): Promise<{ h: Harness; a: SimClient; b: SimClient; alloc: VerifyAllocation }> {
  const h = await Harness.createPair({ seed, dirtyAgeMaxMs: 3_600_000, frameDelayMaxMs: 1, storeDelayMaxMs: 2 });
  const a = h.client('A');
  const b = h.client('B');
  const al = await h.run(a.allocate('vol', PAGES * PAGE, 'tiny'));
  return { h, a, b, alloc: { guid: al.guid, name: 'vol', pageSizeBytes: al.pageSizeBytes, pageCount: al.pageCount } };
}

/** runVerify on the simulator: C_VERIFY through `via`'s core, reads and writes through the clients. */
function target(h: Harness, a: SimClient, b: SimClient, via: 'A' | 'B' = 'A'): VerifyTarget {
  return {
    verify: (guid, first, count) => h.node(via).core.verifyPages(guid, first, count),
    read: (id, guid, offset, length) => (id === 1 ? a : b).read(guid, offset, length),
    rewrite: (id, guid, page) => (id === 1 ? a : b).rewrite(guid, page),
    sleep: (ms) => h.sleep(ms),
    nowMs: () => h.nowMs,
  };
}

function corrupted(page: Buffer, at: number): Buffer {
  const out = Buffer.from(page);
  out[at] = out[at]! ^ 0xff;
  return out;
}

async function readBoth(h: Harness, a: SimClient, b: SimClient, guid: string, page: number): Promise<[Buffer, Buffer]> {
  return [await h.run(a.read(guid, page * PAGE, PAGE)), await h.run(b.read(guid, page * PAGE, PAGE))];
}

describe('verify judgement', () => {
  const clean = (version: number, crc: number) => ({ version, crc, state: PageState.CLEAN });
  const absent = { version: 0, crc: 0, state: PageState.ABSENT };
  it('compares cached copies, a cached copy with the store, and takes two absent copies as equal', () => {
    expect(compareCopies(absent, absent, null)).toBe('match');
    expect(compareCopies(clean(3, 7), clean(3, 7), null)).toBe('match');
    expect(compareCopies(clean(3, 7), clean(3, 8), null)).toBe('mismatch');
    expect(compareCopies(clean(3, 7), clean(4, 7), null)).toBe('mismatch');
    expect(compareCopies(clean(3, 7), absent, null)).toBe('needs-store');
    expect(compareCopies(absent, clean(3, 7), { version: 3, crc: 7 })).toBe('match');
    expect(compareCopies(absent, clean(3, 7), { version: 2, crc: 7 })).toBe('mismatch');
  });

  it('keeps the higher version, on a tie the owner\'s copy, and the store\'s against a clean copy at its version', () => {
    const page = (over: Partial<VerifiedPage>): VerifiedPage => ({
      page: 0, verdict: VerifyVerdict.MISMATCH, owner: 2,
      aVersion: 5, aCrc: 1, aState: PageState.DIRTY, bVersion: 5, bCrc: 2, bState: PageState.DIRTY, storeVersion: -1, storeCrc: 0, ...over,
    });
    expect(chooseGoodCopy(page({})).from).toBe(2);
    expect(chooseGoodCopy(page({ aVersion: 6 })).from).toBe(1);
    expect(chooseGoodCopy(page({ bState: PageState.ABSENT, bVersion: 0, aState: PageState.CLEAN, storeVersion: 5, storeCrc: 9, owner: 1 })).from).toBe(2);
    expect(chooseGoodCopy(page({ bState: PageState.ABSENT, bVersion: 0, storeVersion: 4, storeCrc: 9 })).from).toBe(1);
    expect(chooseGoodCopy(page({ aState: PageState.ABSENT, aVersion: 0, storeVersion: 7, storeCrc: 9, owner: 2 })).from).toBe(1);
    // Two clean copies at one version: the store's wins over the owner.
    expect(chooseGoodCopy(page({ aState: PageState.CLEAN, bState: PageState.CLEAN, storeVersion: 5, storeCrc: 1, owner: 2 })).from).toBe(1);
  });
});

describe('verify on the simulated pair', () => {
  it('finds a dirty page corrupted on one side, and only it; repair makes both read the written bytes', async () => {
    const { h, a, b, alloc } = await pair(1);
    const written = tagged(PAGE, 'page-9');
    await h.run(a.write(alloc.guid, 9 * PAGE, written));
    await h.run(b.write(alloc.guid, 20 * PAGE, tagged(PAGE, 'page-20')));
    expect((await h.run(runVerify(target(h, a, b), [alloc], OPTS))).mismatches).toEqual([]);

    // B's copy goes bad; A (the page's owner, it wrote it) keeps the good one.
    await h.run(h.node('B').core.testCorruptPage(alloc.guid, 9, corrupted(written, 100)));
    const found = await h.run(runVerify(target(h, a, b), [alloc], OPTS));
    expect(found.mismatches.map((m) => m.page)).toEqual([9]);
    const m = found.mismatches[0]!;
    expect(m.firstDifferentByte).toBe(100);
    expect([m.header.aState, m.header.bState]).toEqual([PageState.DIRTY, PageState.DIRTY]);
    expect(m.header.aVersion).toBe(m.header.bVersion);
    expect(m.header.aCrc).not.toBe(m.header.bCrc);
    expect(found.remaining).toBe(1);
    // Asked through B, the same page.
    expect((await h.run(runVerify(target(h, a, b, 'B'), [alloc], OPTS))).mismatches.map((x) => x.page)).toEqual([9]);

    const fixed = await h.run(runVerify(target(h, a, b), [alloc], { ...OPTS, repair: true }));
    expect(fixed.repaired).toBe(1);
    expect(fixed.remaining).toBe(0);
    expect(fixed.mismatches[0]!.good!.from).toBe(h.node('A').core.selfId);
    const [viaA, viaB] = await readBoth(h, a, b, alloc.guid, 9);
    expect(viaA.equals(viaB)).toBe(true);
    expect(viaA.equals(written)).toBe(true);
    expect((await h.run(runVerify(target(h, a, b), [alloc], OPTS))).mismatches).toEqual([]);
  });

  it('finds a clean page cached on one side only whose copy is not the store\'s; repair restores the store\'s', async () => {
    const { h, a, b, alloc } = await pair(2);
    const written = tagged(PAGE, 'clean-5');
    await h.run(a.write(alloc.guid, 5 * PAGE, written));
    await h.run(a.flush(alloc.guid));
    // Only A caches page 40 (read from the store, never written: zeros).
    await h.run(a.read(alloc.guid, 40 * PAGE, PAGE));
    expect(h.node('A').core.status().dirtyPages).toBe(0);
    expect((await h.run(runVerify(target(h, a, b), [alloc], OPTS))).mismatches).toEqual([]);

    await h.run(h.node('A').core.testCorruptPage(alloc.guid, 40, tagged(PAGE, 'not-what-the-store-holds')));
    const found = await h.run(runVerify(target(h, a, b), [alloc], OPTS));
    expect(found.mismatches.map((m) => m.page)).toEqual([40]);
    const m = found.mismatches[0]!;
    expect(m.header.aState).toBe(PageState.CLEAN);
    expect(m.header.bState).toBe(PageState.ABSENT);
    expect(m.header.storeVersion).toBe(m.header.aVersion);
    expect(m.firstDifferentByte).toBe(0);

    const fixed = await h.run(runVerify(target(h, a, b), [alloc], { ...OPTS, repair: true }));
    expect([fixed.repaired, fixed.remaining]).toEqual([1, 0]);
    const [viaA, viaB] = await readBoth(h, a, b, alloc.guid, 40);
    expect(viaA.equals(viaB)).toBe(true);
    expect(viaA.equals(Buffer.alloc(PAGE))).toBe(true);
    // Page 5, clean on both sides, was never in question.
    const [fiveA, fiveB] = await readBoth(h, a, b, alloc.guid, 5);
    expect(fiveA.equals(written) && fiveB.equals(written)).toBe(true);
  });

  it('finds a page of a partial range, and a range without it finds nothing', async () => {
    const { h, a, b, alloc } = await pair(3);
    for (let p = 0; p < 24; p++) await h.run((p % 2 === 0 ? a : b).write(alloc.guid, p * PAGE, tagged(PAGE, `p${p}`)));
    // A few bytes of one page, on A.
    const page = await h.run(a.read(alloc.guid, 17 * PAGE, PAGE));
    const bad = Buffer.from(page);
    bad.write('xyz', 300);
    await h.run(h.node('A').core.testCorruptPage(alloc.guid, 17, bad));
    const core = h.node('B').core;
    expect((await h.run(core.verifyPages(alloc.guid, 0, 17))).pages).toEqual([]);
    expect((await h.run(core.verifyPages(alloc.guid, 18, PAGES - 18))).pages).toEqual([]);
    const r = await h.run(core.verifyPages(alloc.guid, 10, 10));
    expect(r.pagesChecked).toBe(10);
    expect(r.pages.map((p) => [p.page, p.verdict])).toEqual([[17, VerifyVerdict.MISMATCH]]);
    const found = await h.run(runVerify(target(h, a, b), [alloc], OPTS));
    expect(found.mismatches.map((m) => [m.page, m.firstDifferentByte])).toEqual([[17, 300]]);
  });

  it('refuses a range past the allocation and a verify while the pair is not mirrored', async () => {
    const { h, alloc } = await pair(4);
    const outOfRange = await h.settle(h.node('A').core.verifyPages(alloc.guid, PAGES - 1, 2));
    expect(!outOfRange.ok && isPagepairError(outOfRange.error, 'OUT_OF_RANGE')).toBe(true);
    h.cut();
    const alone = await h.settle(h.node('A').core.verifyPages(alloc.guid, 0, 4));
    expect(!alone.ok && isPagepairError(alone.error) && ['NOT_MIRRORED', 'NOT_ACTIVE'].includes(alone.error.code)).toBe(true);
  });

  it("lists a page written here while the partner's headers were on their way as busy, not mismatched", async () => {
    const { h, a, b, alloc } = await pair(5);
    await h.run(a.write(alloc.guid, 3 * PAGE, tagged(PAGE, 'first')));
    // The READ_HEADER leaves first; the write lands at A before the answer comes back.
    const asked = h.track(h.node('A').core.verifyPages(alloc.guid, 0, 8));
    const write = h.track(a.write(alloc.guid, 3 * PAGE, tagged(PAGE, 'second')));
    const r = await h.run(asked.promise);
    expect(r.pages.map((p) => [p.page, p.verdict])).toEqual([[3, VerifyVerdict.BUSY]]);
    await h.run(write.promise);
    expect((await h.run(runVerify(target(h, a, b), [alloc], OPTS))).mismatches).toEqual([]);
    expect((await h.run(h.node('B').core.verifyPages(alloc.guid, 0, 8))).pages).toEqual([]);
  });

  it('skips an allocation released while it is walked', async () => {
    const { h, a, b, alloc } = await pair(6);
    const other = await h.run(a.allocate('other', PAGES * PAGE, 'tiny'));
    await h.run(h.node('A').core.testCorruptPage(other.guid, 2, tagged(PAGE, 'bad')));
    const t = target(h, a, b);
    let calls = 0;
    const releasing: VerifyTarget = {
      ...t,
      verify: async (guid, first, count) => {
        if (guid === other.guid && ++calls === 2) await b.release(other.guid);
        return t.verify(guid, first, count);
      },
    };
    const second: VerifyAllocation = { guid: other.guid, name: 'other', pageSizeBytes: PAGE, pageCount: PAGES };
    const r = await h.run(runVerify(releasing, [alloc, second], OPTS));
    expect(r.released).toEqual(['other']);
    expect(r.mismatches).toEqual([]);
    expect(r.pagesChecked).toBe(PAGES + OPTS.rangePages);
  });

  for (const seed of [11, 12, 13, 14]) {
    it(`finds nothing on a busy pair no one corrupted (seed ${seed})`, async () => {
      const { h, a, b, alloc } = await pair(seed);
      const rng = new Prng(seed);
      let stop = false;
      let writes = 0;
      // Writers on both controllers, the same pages, while verify walks them.
      const writer = async (c: SimClient, side: string): Promise<void> => {
        while (!stop) {
          const page = rng.int(PAGES);
          const skip = rng.int(100);
          const length = Math.min((1 + rng.int(2)) * PAGE, (PAGES - page) * PAGE) - skip - rng.int(200);
          await c.write(alloc.guid, page * PAGE + skip, tagged(length, `${side}${writes++}`)).catch(() => undefined);
          await h.sleep(rng.int(3));
        }
      };
      const load = Promise.all([writer(a, 'A'), writer(b, 'B'), writer(h.client('A'), 'a'), writer(h.client('B'), 'b')]);
      await h.run(h.sleep(20));
      const verified = runVerify(target(h, a, b, seed % 2 === 0 ? 'A' : 'B'), [alloc], { ...OPTS, rangePages: 2 }).finally(() => {
        stop = true;
      });
      const r = await h.run(verified, 'verify', 5_000_000);
      await h.run(load, 'writers', 5_000_000);
      expect(writes).toBeGreaterThan(40);
      expect(r.pagesChecked).toBe(PAGES);
      expect(r.mismatches).toEqual([]);
      await h.runUntilQuiet();
      const quiet = await h.run(h.node('A').core.verifyPages(alloc.guid, 0, PAGES));
      expect(quiet.pages).toEqual([]);
    });
  }
});

describe("repair's rewrite (C_REWRITE) never undoes a client write that lands while it runs", () => {
  for (const seed of [21, 22, 23, 24, 25, 26]) {
    it(`seed ${seed}: a write through either side racing the rewrite is what both copies keep`, async () => {
      const { h, a, b, alloc } = await pair(seed);
      for (let round = 0; round < 30; round++) {
        const page = round % 8;
        await h.run(a.write(alloc.guid, page * PAGE, tagged(PAGE, `old${round}`)));
        // B's copy made wrong on purpose; then A rewrites its copy while a client writes the page anew.
        await h.run(h.node('B').core.testCorruptPage(alloc.guid, page, tagged(PAGE, `bad${round}`)));
        const fresh = tagged(PAGE, `new${round}`);
        const writer = round % 2 === 0 ? b : a;
        const w = h.track(writer.write(alloc.guid, page * PAGE, fresh));
        const r = h.track((round % 3 === 0 ? b : a).rewrite(alloc.guid, page));
        await h.runUntil(() => w.settled && r.settled, `round ${round}: write and rewrite answered`);
        expect(w.result?.ok, `round ${round}: the client write failed`).toBe(true);
        const [viaA, viaB] = await readBoth(h, a, b, alloc.guid, page);
        expect(viaA.equals(viaB), `round ${round}: A and B read different bytes`).toBe(true);
        expect(viaA.equals(fresh), `round ${round}: the acknowledged write was undone ("${viaA.subarray(0, 8).toString()}")`).toBe(true);
      }
    });
  }
});
