// Store operations failed by seed. The core asks for its store I/O as
// effects (src/core/io.ts), so the simulator can refuse any of them: here a
// seeded share of page writes, syncs and page reads fails with EIO on one
// controller or both, while a writer on each controller writes the same
// pages (each writer its own half of every page) and reads back what it
// wrote. A failed destage or sync leaves its page dirty on both sides, to
// be written again; a failed page read fails only the request that needed
// it, with IO_ERROR. Afterwards, with the store well again: both copies are
// equal, every acknowledged write reads back through both controllers, and
// still does after both are killed and started again from the store.
//
// And a flush answered while syncs fail is a promise kept: the writers flush
// now and then, and a power cut under both controllers (unsynced writes kept,
// dropped or torn by seed) while the store still fails loses nothing a
// flush covered.

import { describe, expect, it } from 'vitest';
import { isPagepairError } from '../../src/protocol/errors.js';
import type { IoKind } from '../../src/core/io.js';
import { Harness, type NodeName } from './harness.js';
import { checkCopies, describeMismatches } from './copies-checker.js';
import { Prng } from './prng.js';
import type { SimClient } from './sim-client.js';

const PAGE = 512;
const PAGES = 24;
const HALF = PAGE / 2;
const SEEDS = Number(process.env.STORE_ERROR_SEEDS ?? 40);
const FIRST_SEED = Number(process.env.SEED ?? 1);

/** What one writer knows of its half of one page: the last value acknowledged, and values tried since whose outcome it never heard. */
interface Cell {
  acked: number;
  maybe: Set<number>;
}

function stamp(writer: NodeName, page: number, value: number): Buffer {
  const b = Buffer.alloc(HALF);
  if (value === 0) return b;
  for (let i = 0; i < HALF; i += 8) {
    b.writeUInt32LE(value, i);
    b.writeUInt32LE((page << 8) | (writer === 'A' ? 0xa : 0xb), i + 4);
  }
  return b;
}

function valueOf(writer: NodeName, page: number, bytes: Buffer): number | null {
  if (bytes.every((x) => x === 0)) return 0;
  const v = bytes.readUInt32LE(0);
  return bytes.equals(stamp(writer, page, v)) ? v : null;
}

/** Where each writer's half of a page starts: A writes the first half, B the second. */
function offset(writer: NodeName, page: number): number {
  return page * PAGE + (writer === 'A' ? 0 : HALF);
}

/** Store operations of one controller or both (drawn by seed) fail from now on: kinds drawn from `choices`, at a drawn rate. */
function failSomeStoreOps(h: Harness, rng: Prng, choices: IoKind[][]): void {
  const on: NodeName[] = rng.pick([['A'], ['B'], ['A', 'B']]);
  for (const name of on) h.failStoreOps(name, { kinds: rng.pick(choices), rate: 0.2 + 0.6 * rng.next() });
}

/** The failures a write or read may meet here: the store's (and nothing else). */
function storeError(err: unknown): boolean {
  return isPagepairError(err, 'IO_ERROR');
}

async function runSeed(seed: number): Promise<{ injected: number; ioErrors: number; acked: number }> {
  const rng = new Prng(seed * 31 + 7);
  const h = await Harness.createPair({ seed, dirtyAgeMaxMs: 5 + rng.int(40), cacheBytesMax: 8 * PAGE + rng.int(16) * PAGE, storeDelayMaxMs: 3 });
  const setup = h.client('A');
  const al = await h.run(setup.allocate('errors', PAGES * PAGE, 'tiny'));
  failSomeStoreOps(h, rng, [['writePage'], ['sync'], ['readPage'], ['writePage', 'sync', 'readPage']]);

  const cells: Record<NodeName, Cell[]> = {
    A: Array.from({ length: PAGES }, () => ({ acked: 0, maybe: new Set<number>() })),
    B: Array.from({ length: PAGES }, () => ({ acked: 0, maybe: new Set<number>() })),
  };
  const problems: string[] = [];
  let ioErrors = 0;
  let acked = 0;

  const writer = async (name: NodeName, c: SimClient): Promise<void> => {
    const my = new Prng(seed * 97 + (name === 'A' ? 1 : 2));
    let next = 1;
    for (let op = 0; op < 60; op++) {
      const page = my.int(PAGES);
      const cell = cells[name][page]!;
      if (my.chance(0.7)) {
        const value = next++;
        cell.maybe.add(value);
        try {
          await c.write(al.guid, offset(name, page), stamp(name, page, value));
          cell.acked = value;
          cell.maybe = new Set([...cell.maybe].filter((v) => v > value));
          acked++;
        } catch (err) {
          if (!storeError(err)) problems.push(`${name} write page ${page}: ${String(err)}`);
          else ioErrors++;
        }
      } else {
        try {
          const got = valueOf(name, page, await c.read(al.guid, offset(name, page), HALF));
          if (got === null || (got !== cell.acked && !cell.maybe.has(got))) problems.push(`${name} read page ${page}: got ${got}, acknowledged ${cell.acked}`);
        } catch (err) {
          if (!storeError(err)) problems.push(`${name} read page ${page}: ${String(err)}`);
          else ioErrors++;
        }
      }
      await h.sleep(my.int(8));
    }
  };
  await h.run(Promise.all([writer('A', h.client('A')), writer('B', h.client('B'))]), 'two writers with store errors');
  expect(problems, `seed ${seed}`).toEqual([]);

  // The store is well again: everything dirty reaches it, and both copies agree.
  h.failStoreOps('A', null);
  h.failStoreOps('B', null);
  await h.run(setup.flush(al.guid), 'flush once the store is well');
  await h.runUntilQuiet();
  const report = await checkCopies(h);
  expect(report.mismatches, `seed ${seed}: ${describeMismatches(report)}`).toEqual([]);

  // What each writer's half holds, through both controllers, and after both restart from the store.
  const expectCells = async (when: string): Promise<void> => {
    for (const via of ['A', 'B'] as const) {
      const c = h.client(via);
      const bytes = await h.run(c.read(al.guid, 0, PAGES * PAGE), `read all through ${via}`);
      for (const w of ['A', 'B'] as const) {
        for (let page = 0; page < PAGES; page++) {
          const cell = cells[w][page]!;
          const got = valueOf(w, page, bytes.subarray(offset(w, page), offset(w, page) + HALF));
          if (got === null || (got !== cell.acked && !cell.maybe.has(got))) problems.push(`${when}, through ${via}: ${w}'s half of page ${page} holds ${got}, acknowledged ${cell.acked}`);
        }
      }
    }
  };
  await expectCells('after the run');
  // What a read settled stays: the pages as they are now are what a restart must find.
  for (const w of ['A', 'B'] as const) {
    for (const cell of cells[w]) cell.maybe.clear();
  }
  const now = await h.run(h.client('A').read(al.guid, 0, PAGES * PAGE));
  for (const w of ['A', 'B'] as const) {
    for (let page = 0; page < PAGES; page++) cells[w][page]!.acked = valueOf(w, page, now.subarray(offset(w, page), offset(w, page) + HALF)) ?? -1;
  }
  h.kill('A');
  h.kill('B');
  await h.restartBoth();
  await expectCells('after both restarted from the store');
  expect(problems, `seed ${seed}`).toEqual([]);
  expect(h.violations, `seed ${seed}`).toEqual([]);
  return { injected: h.storeFaultsInjected, ioErrors, acked };
}

/** Two writers that flush now and then under store errors, then a power cut: what each flush covered survives. */
async function runFlushSeed(seed: number): Promise<{ flushes: number; failedFlushes: number; injected: number }> {
  const rng = new Prng(seed * 131 + 5);
  // Pages are destaged only when a flush asks (or the cache fills): what a failed sync leaves unsynced stays so.
  const h = await Harness.createPair({ seed, dirtyAgeMaxMs: 3_600_000, cacheBytesMax: 64 * PAGE, storeDelayMaxMs: 3 });
  const al = await h.run(h.client('A').allocate('flushes', PAGES * PAGE, 'tiny'));
  failSomeStoreOps(h, rng, [['sync'], ['writePage'], ['writePage', 'sync']]);
  // Per writer and page: the value a successful flush made durable, and every value tried since.
  const durable: Record<NodeName, number[]> = { A: new Array<number>(PAGES).fill(0), B: new Array<number>(PAGES).fill(0) };
  const since: Record<NodeName, Set<number>[]> = { A: Array.from({ length: PAGES }, () => new Set<number>()), B: Array.from({ length: PAGES }, () => new Set<number>()) };
  const problems: string[] = [];
  let flushes = 0;
  let failedFlushes = 0;
  const writer = async (name: NodeName, c: SimClient): Promise<void> => {
    const my = new Prng(seed * 53 + (name === 'A' ? 1 : 2));
    const acked = new Array<number>(PAGES).fill(0);
    let next = 1;
    for (let op = 0; op < 40; op++) {
      const page = my.int(PAGES);
      const value = next++;
      since[name][page]!.add(value);
      try {
        await c.write(al.guid, offset(name, page), stamp(name, page, value));
        acked[page] = value;
      } catch (err) {
        if (!storeError(err)) problems.push(`${name} write page ${page}: ${String(err)}`);
      }
      if (my.chance(0.25)) {
        const before = acked.slice();
        try {
          await c.flush(al.guid);
          flushes++;
          for (let p = 0; p < PAGES; p++) {
            if (before[p]! > durable[name][p]!) {
              durable[name][p] = before[p]!;
              for (const v of [...since[name][p]!]) if (v <= before[p]!) since[name][p]!.delete(v);
            }
          }
        } catch (err) {
          if (!storeError(err)) problems.push(`${name} flush: ${String(err)}`);
          failedFlushes++;
        }
      }
      await h.sleep(my.int(6));
    }
  };
  await h.run(Promise.all([writer('A', h.client('A')), writer('B', h.client('B'))]), 'two writers flushing with store errors');
  expect(problems, `seed ${seed}`).toEqual([]);
  // The power goes while the store still fails: both controllers die, unsynced writes are kept, dropped or torn.
  h.powerCut(new Prng(seed * 7 + 1), { keep: 0.3, drop: 0.4 });
  h.failStoreOps('A', null);
  h.failStoreOps('B', null);
  await h.restartBoth();
  const bytes = await h.run(h.client('B').read(al.guid, 0, PAGES * PAGE), 'read all after the power cut');
  for (const w of ['A', 'B'] as const) {
    for (let page = 0; page < PAGES; page++) {
      const got = valueOf(w, page, bytes.subarray(offset(w, page), offset(w, page) + HALF));
      const flushed = durable[w][page]!;
      if (got === null || (got !== flushed && !since[w][page]!.has(got))) {
        problems.push(`${w}'s half of page ${page} holds ${got} after the power cut; a flush made ${flushed} durable`);
      }
    }
  }
  expect(problems, `seed ${seed}`).toEqual([]);
  return { flushes, failedFlushes, injected: h.storeFaultsInjected };
}

/** Every seed run in turn, their figures summed. */
async function overSeeds<K extends string>(run: (seed: number) => Promise<Record<K, number>>): Promise<Record<K, number>> {
  const sum = {} as Record<K, number>;
  for (let seed = FIRST_SEED; seed < FIRST_SEED + SEEDS; seed++) {
    for (const [k, v] of Object.entries(await run(seed)) as [K, number][]) sum[k] = (sum[k] ?? 0) + v;
  }
  return sum;
}

describe('store operations failed by seed: nothing acknowledged is lost, both copies stay equal', () => {
  it(`seeds ${FIRST_SEED}..${FIRST_SEED + SEEDS - 1}: page writes, syncs and page reads refused with EIO under two writers`, async () => {
    const { injected, ioErrors, acked } = await overSeeds(runSeed);
    console.log(`store errors: ${injected} operations failed on purpose, ${ioErrors} requests answered IO_ERROR, ${acked} writes acknowledged`);
    // The faults did happen, and reached clients now and then.
    expect(injected).toBeGreaterThan(SEEDS);
    expect(ioErrors).toBeGreaterThan(0);
    expect(acked).toBeGreaterThan(SEEDS * 40);
  }, 600_000);

  it(`seeds ${FIRST_SEED}..${FIRST_SEED + SEEDS - 1}: a flush answered while syncs and page writes fail survives a power cut`, async () => {
    const { injected, flushes, failedFlushes } = await overSeeds(runFlushSeed);
    // A flush waits out failed destages and syncs (they are tried again), so few or none are refused.
    console.log(`store errors and power cuts: ${injected} operations failed on purpose, ${flushes} flushes answered, ${failedFlushes} refused with IO_ERROR`);
    expect(injected).toBeGreaterThan(SEEDS);
    expect(flushes).toBeGreaterThan(SEEDS);
  }, 600_000);
});
