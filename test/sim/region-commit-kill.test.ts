// Issue 15's commit-atomicity test for checkpoint regions, in the seeded
// simulator: a region made through A, generations committed through A; then,
// for every request of the next checkpoint (every request of beginCheckpoint,
// write and commit, and after commit answered), A or B is killed at that
// request: before it is sent, or 1, 2 or 4 virtual ms after (the request on
// its way, applied, or being mirrored). A reader through the survivor, a
// fresh connection that unlocks with the key, must then see the previous
// generation or the new one, whole (byte for byte what was written), never
// anything else; the new one if its commit was answered; and every
// generation listed before that the checkpoint did not take the ring slot
// of. The survivor then takes a further checkpoint. Both modes, and two
// writers: one that stops with the kill (the primary dying; nothing sent
// after the request the kill falls on), and one that fails over to the
// other controller as PairClient does, whose commit must then succeed.
//
// Readers through A and B race a writer rewriting a ring of 2: every read
// returns one generation's bytes exactly, or GenerationGoneError (without
// the metadata read after the bytes, partial reads return two generations'
// bytes mixed, and this fails).
//
// Also: a connection with a wrong key or none is refused (ACCESS_DENIED)
// through A and B, mirrored and after a kill, for read, write, unlock,
// release, Region.open and Region.delete. And a durable region (flushes
// around its metadata writes) through a power cut under both controllers at
// every request of a commit, with pages destaged a few ms after they are
// written in the destager's order: after both restart, the same holds
// through A and through B.
//
// One seed per case by default (about 220 runs); REGION_KILL_SEEDS=n runs n
// per case and prints what the sweep met.

import { describe, expect, it } from 'vitest';
import { GenerationGoneError, REGION_STEPS, Region, type GenerationInfo, type RegionCreateOptions, type RegionMode } from '../../src/client/region.js';
import { Harness, type NodeName } from './harness.js';
import { codeOf } from './pair-steps.js';
import { Prng } from './prng.js';
import { SimPairIo, SimRegionIo } from './region-io.js';

const SEEDS = Math.max(1, Number(process.env.REGION_KILL_SEEDS ?? 1) | 0);
const SEED_BASE = 15_100;
const PAGE = 512; // the simulator's 'tiny' policy
const PIECE = 500;
const NEW_BYTES = 1500;
/** Generations committed before the one the kill falls in. */
const BEFORE = 3;

const MODES: Record<RegionMode, RegionCreateOptions> = {
  overwrite: { mode: 'overwrite', sizeBytes: 1500, generations: 2, policy: 'tiny' },
  append: { mode: 'append', sizeBytes: 12 * 1024, policy: 'tiny' },
};

/** When the kill comes, relative to the request of its step. */
type Timing = 'before' | 1 | 2 | 4;
const TIMINGS: readonly Timing[] = ['before', 1, 2, 4];

/** Bytes that say which seed and generation they are, and where in it. */
function content(seed: number, generation: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (seed * 7 + generation * 131 + i * 13 + (i >> 8)) & 0xff;
  return b;
}

function lengthOf(generation: number): number {
  return 700 + generation * 150;
}

async function checkpoint(region: Region, data: Buffer): Promise<GenerationInfo> {
  const cp = await region.beginCheckpoint();
  for (let at = 0; at < data.length; at += PIECE) await cp.write(at, data.subarray(at, Math.min(data.length, at + PIECE)));
  return cp.commit();
}

const other = (n: NodeName): NodeName => (n === 'A' ? 'B' : 'A');

interface Setup {
  h: Harness;
  region: Region;
  key: string;
  /** Generation -> its bytes, of those listed before the checkpoint under test. */
  before: Map<number, Buffer>;
  /** Called before each request of the checkpoint under test. */
  hook: { onStep: ((step: string, index: number) => Promise<void> | void) | null };
  /** The writer: through A, failing over to B as PairClient does when it may retry. */
  writer: SimPairIo;
}

/** What the cases of one test saw, so that a sweep that never hit both outcomes fails. */
interface Tally {
  previous: number;
  fresh: number;
  /** Kills that came with a request of the writer sent and not answered. */
  inFlight: number;
}

async function setUp(seed: number, mode: RegionMode, retryForMs: number): Promise<Setup> {
  const h = await Harness.createPair({ seed, frameDelayMaxMs: 3 });
  const hook: Setup['hook'] = { onStep: null };
  const writer = new SimPairIo(h, 'A', 0x5eed_0000 + (seed % 0xffff), retryForMs);
  const { region, key } = await h.run(Region.create(writer, 'ckpt', MODES[mode], { onStep: (s, i) => hook.onStep?.(s, i), now: () => h.nowMs }), 'region create');
  const before = new Map<number, Buffer>();
  for (let g = 0; g < BEFORE; g++) {
    const data = content(seed, g, lengthOf(g));
    await h.run(checkpoint(region, data), `generation ${g}`);
    before.set(g, data);
  }
  for (const g of before.keys()) if (!(await h.run(region.list())).some((x) => x.generation === g)) before.delete(g);
  return { h, region, key, before, hook, writer };
}

/** The steps of one checkpoint of `mode`, from a run without kills. */
async function stepsOf(mode: RegionMode): Promise<string[]> {
  const s = await setUp(SEED_BASE, mode, 0);
  const steps: string[] = [];
  s.hook.onStep = (step) => void steps.push(step);
  await s.h.run(checkpoint(s.region, content(SEED_BASE, BEFORE, NEW_BYTES)));
  return steps;
}

/**
 * How the writer takes the kill: 'stops' dies with it (no request sent again,
 * none after the one the kill falls on: the primary process failing with its
 * controller), 'fails-over' carries on through the other controller as
 * PairClient does and must finish the commit.
 */
type WriterKind = 'stops' | 'fails-over';

/** One case: kill `victim` at request `step` of the checkpoint (steps.length: after commit answered). */
async function killCase(seed: number, mode: RegionMode, kind: WriterKind, victim: NodeName, step: number, timing: Timing, steps: readonly string[], tally: Tally): Promise<void> {
  const { h, region, key, before, hook, writer } = await setUp(seed, mode, kind === 'stops' ? 0 : 10_000);
  const where = `${mode}, writer ${kind}, kill ${victim} at step ${step} (${steps[step] ?? 'after commit'}) ${timing === 'before' ? 'before the request' : `${timing} ms after it was sent`}, seed ${seed}`;
  const fail = (what: string): string => `${where}: ${what} (${h.describe()}; ${h.incarnations()})`;
  let killed = false;
  const kill = (): void => {
    if (killed) return;
    killed = true;
    if (writer.outstanding > 0) tally.inFlight++;
    h.kill(victim);
  };
  const newData = content(seed, BEFORE, NEW_BYTES);
  let frozen = false;
  hook.onStep = (_name, index) => {
    // A writer that stopped sends nothing more.
    if (kind === 'stops' && index > step) {
      frozen = true;
      return new Promise<void>(() => undefined);
    }
    if (index !== step) return;
    if (timing === 'before') kill();
    else h.sched.after(timing, `kill ${victim}`, kill);
  };
  const t = h.track(checkpoint(region, newData));
  await h.runUntil(() => t.settled || frozen, 'checkpoint under test');
  hook.onStep = null;
  const r = t.result;
  const committed = r !== undefined && r.ok;
  if (step >= steps.length) {
    expect(committed, fail(`the checkpoint without a kill: ${r === undefined ? 'not settled' : codeOf(r)}`)).toBe(true);
    kill();
  }
  if (kind === 'fails-over') expect(committed, fail(`the writer failing over commits: ${r === undefined ? 'not settled' : codeOf(r)}`)).toBe(true);
  await h.runUntil(() => killed, 'the kill');
  // What the writer had sent is answered (or lost with its connection) before the reader looks.
  await h.runUntil(() => writer.outstanding === 0, 'the writer\'s requests settled');
  const survivor = other(victim);
  await h.runUntil(() => h.status(survivor).role === 'alone', `${survivor} alone`);

  // A fresh connection to the survivor, with the key.
  const reader = await h.run(Region.open(new SimRegionIo(h.client(survivor)), 'ckpt', key), 'reader opens');
  const listed = await h.run(reader.list());
  const latest = listed[listed.length - 1];
  const prev = Math.max(...before.keys());
  expect(latest?.generation, fail(`latest (listed: ${listed.map((g) => g.generation).join(', ')})`)).toBeOneOf([prev, BEFORE]);
  if (committed) expect(latest?.generation, fail('the commit was answered: the new generation')).toBe(BEFORE);
  if (latest?.generation === BEFORE) tally.fresh++;
  else tally.previous++;
  for (const g of listed) {
    const want = g.generation === BEFORE ? newData : before.get(g.generation);
    expect(want, fail(`generation ${g.generation} is listed but was never committed`)).toBeDefined();
    const got = await h.run(reader.readWhole(g.generation), `read generation ${g.generation}`);
    expect(got.equals(want!), fail(`generation ${g.generation} read whole through ${survivor}`)).toBe(true);
    expect((await h.run(reader.read(g.generation, 100, 200))).equals(want!.subarray(100, 300)), fail(`part of generation ${g.generation}`)).toBe(true);
  }
  // Every generation listed before stays, but one whose ring slot this checkpoint took.
  const slotTaken = (g: number): boolean => mode === 'overwrite' && g % MODES.overwrite.generations! === BEFORE % MODES.overwrite.generations!;
  for (const g of before.keys()) {
    if (!slotTaken(g)) expect(listed.map((x) => x.generation), fail(`generation ${g}, committed before`)).toContain(g);
  }
  // The survivor takes the next checkpoint.
  const after = await h.run(Region.open(new SimRegionIo(h.client(survivor)), 'ckpt', key));
  const next = content(seed, 99, 900);
  const info = await h.run(checkpoint(after, next), 'checkpoint through the survivor');
  // BEFORE when nothing of the checkpoint under test landed, BEFORE + 1 when it was committed, and
  // BEFORE + K when only its drop landed: the next one takes the slot it emptied, under the next number
  // that maps there, rather than drop another committed generation.
  const ring = mode === 'overwrite' ? MODES.overwrite.generations! : 1;
  expect(info.generation, fail('the next generation number')).toBeOneOf(mode === 'overwrite' ? [BEFORE, BEFORE + 1, BEFORE + ring] : [BEFORE, BEFORE + 1]);
  expect(info.generation, fail('the next generation number')).toBeGreaterThan(latest?.generation ?? -1);
  expect((await h.run(reader.readWhole(info.generation))).equals(next), fail('the survivor\'s checkpoint')).toBe(true);
  await h.runUntilQuiet();
  expect(h.violations, fail('invariants')).toEqual([]);
}

describe('a region commit killed at every step, A and B', () => {
  for (const mode of ['overwrite', 'append'] as const) {
    for (const kind of ['stops', 'fails-over'] as const) {
      for (const victim of ['A', 'B'] as const) {
        it(`${mode}, writer ${kind}: kill ${victim} at each request of a checkpoint; the survivor shows the previous generation or the new one, whole`, async () => {
          const steps = await stepsOf(mode);
          // The commit's requests are all there: a read, (overwrite) the drop, the writes, the re-read, the metadata.
          expect(steps.filter((s) => s === REGION_STEPS.write).length).toBe(Math.ceil(NEW_BYTES / PIECE));
          expect(steps[steps.length - 1]).toBe(REGION_STEPS.commitWrite);
          expect(steps.includes(REGION_STEPS.beginDrop)).toBe(mode === 'overwrite');
          let cases = 0;
          const tally: Tally = { previous: 0, fresh: 0, inFlight: 0 };
          for (let step = 0; step <= steps.length; step++) {
            for (const timing of step < steps.length ? TIMINGS : (['before'] as const)) {
              for (let k = 0; k < SEEDS; k++) {
                const seed = SEED_BASE + 1 + cases * 7 + k * 1000 + (victim === 'B' ? 300 : 0) + (kind === 'stops' ? 0 : 600);
                await killCase(seed, mode, kind, victim, step, timing, steps, tally);
              }
              cases++;
            }
          }
          expect(cases).toBe(steps.length * TIMINGS.length + 1);
          // The sweep met what it should: both outcomes for a writer that stops, kills with requests on their way.
          if (kind === 'stops') {
            expect(tally.previous, JSON.stringify(tally)).toBeGreaterThan(0);
            expect(tally.fresh, JSON.stringify(tally)).toBeGreaterThan(0);
          } else expect(tally.fresh, JSON.stringify(tally)).toBe(cases * SEEDS);
          expect(tally.inFlight, JSON.stringify(tally)).toBeGreaterThanOrEqual(steps.length);
          if (process.env.REGION_KILL_SEEDS !== undefined) console.log(`${mode}, writer ${kind}, kill ${victim}: ${JSON.stringify(tally)} over ${cases * SEEDS} runs`);
        });
      }
    }
  }
});

describe('a region refuses connections without its key', () => {
  it('through A and B, mirrored and after A is killed: read, write, unlock, release, Region.open and Region.delete', async () => {
    const seed = 15_050;
    const h = await Harness.createPair({ seed, frameDelayMaxMs: 3 });
    const fail = (what: string): string => `${what} (${h.describe()}; ${h.incarnations()})`;
    const writer = new SimPairIo(h, 'A', 0x5eed_ffff, 10_000);
    const { region, key } = await h.run(Region.create(writer, 'secret', MODES.overwrite));
    const data = content(seed, 0, 1200);
    await h.run(checkpoint(region, data));
    const wrong = Buffer.from(key, 'base64url');
    wrong[5] = wrong[5]! ^ 0x40;
    const code = async <T>(p: Promise<T>): Promise<string> => codeOf(await h.settle(p));

    const refusedThrough = async (vias: readonly NodeName[], when: string): Promise<void> => {
      for (const via of vias) {
        const c = h.client(via);
        const what = (op: string): string => fail(`${when}: ${op} through ${via} without the key`);
        expect(await code(c.read(region.guid, 0, PAGE)), what('read of the metadata')).toBe('ACCESS_DENIED');
        expect(await code(c.read(region.guid, 2 * PAGE, PAGE)), what('read of the data')).toBe('ACCESS_DENIED');
        expect(await code(c.write(region.guid, 0, Buffer.alloc(PAGE, 0xee))), what('write over the metadata')).toBe('ACCESS_DENIED');
        expect(await code(c.write(region.guid, 2 * PAGE, Buffer.alloc(PAGE, 0xee))), what('write of data')).toBe('ACCESS_DENIED');
        expect(await code(c.unlock(region.guid, wrong)), what('unlock with a wrong key')).toBe('ACCESS_DENIED');
        expect(await code(c.unlock(region.guid, Buffer.alloc(16))), what('unlock with a zero key')).toBe('ACCESS_DENIED');
        expect(await code(c.read(region.guid, 0, PAGE)), what('read after wrong keys')).toBe('ACCESS_DENIED');
        expect(await code(c.release(region.guid)), what('release')).toBe('ACCESS_DENIED');
        const io = new SimRegionIo(h.client(via));
        expect(await code(Region.open(io, 'secret', wrong)), what('Region.open with a wrong key')).toBe('ACCESS_DENIED');
        expect(await code(Region.delete(io, 'secret', wrong)), what('Region.delete with a wrong key')).toBe('ACCESS_DENIED');
        // Listing needs no key: the region is there, by its name.
        expect((await h.run(Region.list(io))).map((r) => r.name), what('Region.list')).toEqual(['secret']);
        // And with the key, through the same controller, the bytes are as written.
        const reader = await h.run(Region.open(new SimRegionIo(h.client(via)), 'secret', key));
        expect((await h.run(reader.readWhole(0))).equals(data), fail(`${when}: read through ${via} with the key`)).toBe(true);
      }
    };
    await refusedThrough(['A', 'B'], 'mirrored');

    h.kill('A');
    await h.runUntil(() => h.status('B').role === 'alone', 'B alone');
    await refusedThrough(['B'], 'A killed');
    // The writer failed over to B with its key and carries on.
    await h.run(checkpoint(region, content(seed, 1, 900)));
    expect(writer.controller).toBe('B');
    const reader = await h.run(Region.open(new SimRegionIo(h.client('B')), 'secret', key));
    expect((await h.run(reader.readWhole(1))).equals(content(seed, 1, 900))).toBe(true);
    await h.run(Region.delete(new SimRegionIo(h.client('B')), 'secret', key));
    expect(await h.run(Region.list(new SimRegionIo(h.client('B'))))).toEqual([]);
    await h.runUntilQuiet();
    expect(h.violations, fail('invariants')).toEqual([]);
  });
});

describe('a durable region through a power cut at every request of a commit', () => {
  for (const mode of ['overwrite', 'append'] as const) {
    it(`${mode}: after both controllers restart, a reader sees the previous generation or the new one, whole, through A and B`, async () => {
      const setUpDurable = async (seed: number): Promise<{ h: Harness; region: Region; key: string; before: Map<number, Buffer>; hook: Setup['hook']; writer: SimPairIo }> => {
        // Pages destaged a few ms after they are written, in whatever order the destager takes them.
        const h = await Harness.createPair({ seed, frameDelayMaxMs: 3, dirtyAgeMaxMs: 5, storeDelayMaxMs: 3 });
        const hook: Setup['hook'] = { onStep: null };
        const writer = new SimPairIo(h, 'A', 0x5eed_0000 + (seed % 0xffff), 0);
        const { region, key } = await h.run(Region.create(writer, 'ckpt', MODES[mode], { durable: true, onStep: (s, i) => hook.onStep?.(s, i), now: () => h.nowMs }));
        const before = new Map<number, Buffer>();
        for (let g = 0; g < BEFORE; g++) {
          before.set(g, content(seed, g, lengthOf(g)));
          await h.run(checkpoint(region, before.get(g)!));
        }
        for (const g of before.keys()) if (!(await h.run(region.list())).some((x) => x.generation === g)) before.delete(g);
        return { h, region, key, before, hook, writer };
      };
      const dry = await setUpDurable(SEED_BASE + 50);
      const steps: string[] = [];
      dry.hook.onStep = (s) => void steps.push(s);
      await dry.h.run(checkpoint(dry.region, content(SEED_BASE + 50, BEFORE, NEW_BYTES)));
      expect(steps.filter((s) => s.endsWith('flush') || s.includes('flush-')).length).toBe(mode === 'overwrite' ? 3 : 2);
      const tally = { previous: 0, fresh: 0 };
      let cases = 0;
      for (let step = 0; step <= steps.length; step++) {
        for (const timing of step < steps.length ? TIMINGS : (['before'] as const)) {
          for (let k = 0; k < SEEDS; k++) {
            const seed = SEED_BASE + 2000 + cases * 7 + k * 1000 + (mode === 'append' ? 500 : 0);
            const { h, region, key, before, hook } = await setUpDurable(seed);
            const where = `${mode}, power cut at step ${step} (${steps[step] ?? 'after commit'}) ${timing === 'before' ? 'before the request' : `${timing} ms after it was sent`}, seed ${seed}`;
            let cut = false;
            const powerCut = (): void => {
              if (cut) return;
              cut = true;
              h.powerCut(new Prng(seed * 31 + 7));
            };
            let frozen = false;
            hook.onStep = (_name, index) => {
              if (index > step) {
                frozen = true;
                return new Promise<void>(() => undefined);
              }
              if (index !== step) return;
              if (timing === 'before') powerCut();
              else h.sched.after(timing, 'power cut', powerCut);
            };
            const t = h.track(checkpoint(region, content(seed, BEFORE, NEW_BYTES)));
            await h.runUntil(() => t.settled || frozen || cut, 'checkpoint under test');
            hook.onStep = null;
            const committed = t.result !== undefined && t.result.ok;
            if (step >= steps.length) {
              expect(committed, where).toBe(true);
              powerCut();
            }
            await h.runUntil(() => cut, 'the power cut');
            await h.restartBoth();
            for (const via of ['A', 'B'] as const) {
              const reader = await h.run(Region.open(new SimRegionIo(h.client(via)), 'ckpt', key), `${where}: open through ${via}`);
              const listed = await h.run(reader.list());
              const latest = listed[listed.length - 1]?.generation;
              expect(latest, `${where}: latest through ${via} (listed ${listed.map((g) => g.generation).join(', ')})`).toBeOneOf([Math.max(...before.keys()), BEFORE]);
              if (committed) expect(latest, `${where}: the commit was answered`).toBe(BEFORE);
              if (via === 'A') tally[latest === BEFORE ? 'fresh' : 'previous']++;
              for (const g of listed) {
                const want = g.generation === BEFORE ? content(seed, BEFORE, NEW_BYTES) : before.get(g.generation);
                expect(want, `${where}: generation ${g.generation} listed, never committed`).toBeDefined();
                expect((await h.run(reader.readWhole(g.generation), `${where}: read ${g.generation} through ${via}`)).equals(want!), `${where}: generation ${g.generation} through ${via}`).toBe(true);
              }
              const slotTaken = (g: number): boolean => mode === 'overwrite' && g % MODES.overwrite.generations! === BEFORE % MODES.overwrite.generations!;
              for (const g of before.keys()) if (!slotTaken(g)) expect(listed.map((x) => x.generation), `${where}: generation ${g}`).toContain(g);
            }
          }
          cases++;
        }
      }
      expect(tally.previous, JSON.stringify(tally)).toBeGreaterThan(0);
      expect(tally.fresh, JSON.stringify(tally)).toBeGreaterThan(0);
      if (process.env.REGION_KILL_SEEDS !== undefined) console.log(`${mode}, durable, power cut: ${JSON.stringify(tally)} over ${cases * SEEDS} runs`);
    });
  }
});

describe('readers racing the writer', () => {
  for (const seed of [15_070, 15_071, 15_072, 15_073, 15_074, 15_075]) {
    it(`a ring of 2 rewritten under readers through A and B: every read is one generation's bytes, or GenerationGoneError (seed ${seed})`, async () => {
      const h = await Harness.createPair({ seed, frameDelayMaxMs: 3 });
      const writerIo = new SimPairIo(h, 'A', 0x5eed_0000 + seed, 10_000);
      // Readers take 64 bytes a request, one at a time: a read of a generation spans many round trips.
      const { region, key } = await h.run(Region.create(writerIo, 'race', { mode: 'overwrite', sizeBytes: 4 * PAGE, generations: 2, policy: 'tiny' }));
      const bytesOf = (g: number): Buffer => content(seed, g, 4 * PAGE - (g % 3) * 100);
      const GENERATIONS = 14;
      let writing = true;
      const errors: string[] = [];
      const tally = { whole: 0, parts: 0, gone: 0, overwritten: 0 };
      const writer = async (): Promise<void> => {
        for (let g = 0; g < GENERATIONS; g++) {
          const info = await checkpoint(region, bytesOf(g));
          if (info.generation !== g) errors.push(`writer: generation ${info.generation}, expected ${g}`);
        }
        writing = false;
      };
      const reader = async (via: NodeName, idx: number): Promise<void> => {
        const r = await Region.open(new SimRegionIo(h.client(via)), 'race', key, { chunkBytes: 64, writesInFlight: 1 });
        const rng = new Prng(seed * 13 + idx);
        while (writing) {
          const latest = await r.latest();
          if (latest === null) {
            await h.sleep(1);
            continue;
          }
          // Now and then an older one, more likely to go while read.
          const g = Math.max(0, latest.generation - rng.int(2));
          const want = bytesOf(g);
          try {
            if (rng.chance(0.5)) {
              const got = await r.readWhole(g);
              if (!got.equals(want)) errors.push(`${via}: generation ${g} read whole is not its bytes`);
              tally.whole++;
            } else {
              // Most of it: a part that spans pages, read in several requests.
              const at = rng.int(200);
              const len = want.length - at - rng.int(200);
              const got = await r.read(g, at, len);
              if (!got.equals(want.subarray(at, at + len))) errors.push(`${via}: generation ${g} [${at}, +${len}) is not its bytes`);
              tally.parts++;
            }
          } catch (err) {
            if (!(err instanceof GenerationGoneError)) errors.push(`${via}: generation ${g}: ${String(err)}`);
            else if (err.overwrittenWhileRead) tally.overwritten++;
            else tally.gone++;
          }
        }
      };
      await h.run(Promise.all([writer(), reader('A', 1), reader('B', 2), reader('B', 3)]), 'writer and readers');
      expect(errors, `seed ${seed}: ${JSON.stringify(tally)}`).toEqual([]);
      expect(tally.whole + tally.parts, JSON.stringify(tally)).toBeGreaterThan(10);
      expect(tally.overwritten, JSON.stringify(tally)).toBeGreaterThan(0);
      await h.runUntilQuiet();
      expect(h.violations).toEqual([]);
    });
  }
});
