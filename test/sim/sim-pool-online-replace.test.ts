// A failed pool member replaced, and the pool scrubbed with repair, WHILE
// the pair serves (issue 14, src/store/pool-rebuild.ts), for each layout.
// Writers on both controllers write and read the same cells throughout; a
// member breaks (two, one after the other, for parity2) for both
// controllers; then one controller (A or B, by seed) rebuilds it onto a new
// device, its partner taking the device up from the labels when the barrier
// (core.poolBarrier: the partner's answer to a SENSE carrying the pool's
// generation) makes it read them; then the other controller scrubs with
// repair. Every member request waits a seeded virtual while, so the copies
// interleave with the pair's page writes.
//
// Checked: the pair stays mirrored; the history of every cell is
// linearizable (no acknowledged write lost, no stale read) through A and
// through B; both copies agree; both pools are whole again with the new
// devices; the scrub found nothing to mend; and on the stopped pair a scrub
// finds no mismatch and every page reads back as served with any one member
// (any two for parity2) gone.
//
// POOL_ONLINE_SEEDS (default 16 a layout) and SEED=<first> replay.

import { describe, expect, it } from 'vitest';
import { PagepairError } from '../../src/protocol/errors.js';
import { Role } from '../../src/protocol/messages.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { MirrorDevice } from '../../src/store/mirror-device.js';
import { ParityDevice } from '../../src/store/parity-device.js';
import { computeGeometry } from '../../src/store/layout.js';
import type { MemberOpener, Pool, PoolLayout, ScrubReport } from '../../src/store/pool.js';
import type { Device } from '../../src/store/types.js';
import { checkCopies, describeMismatches } from './copies-checker.js';
import { Harness, type NodeName } from './harness.js';
import { Prng } from './prng.js';
import { Breakable, Broken, checkHistoryThrough, expectStoreHolds, named, openPoolOf, parities, startPairWork } from './pool-workload.js';

const KiB = 1024;
const MEMBER_BYTES = 384 * KiB;
const CHUNK = 4 * KiB;
const TABLE_ENTRIES = 64;
const SEEDS = Number(process.env.POOL_ONLINE_SEEDS ?? 16);
const FIRST_SEED = Number(process.env.SEED ?? 1);
/** A rebuild that meets the pool moving (the partner meeting the broken member late) is run again, as an operator would. */
const REPLACE_TRIES = 6;

async function runSeed(seed: number, layout: PoolLayout): Promise<{ tries: number }> {
  const rng = new Prng(seed * 613 + layout.length);
  const n = layout === 'mirror' ? 2 + rng.int(2) : layout === 'parity' ? 3 + rng.int(2) : 4 + rng.int(2);
  const members = Array.from({ length: n }, () => new Breakable(new MemoryDevice(MEMBER_BYTES)));
  const spares = new Map<string, Breakable>();
  const rowBytes = CHUNK * (n - parities(layout));
  const prefix = computeGeometry({ deviceBytes: MEMBER_BYTES, tableEntriesMax: TABLE_ENTRIES, alignBytes: rowBytes }).dataOffset;
  const pools = new Map<NodeName, Pool>();
  // Both controllers open a rebuilt-onto device by the name the labels record.
  const openMember: MemberOpener = (name) => {
    const d = spares.get(name);
    return d === undefined ? Promise.reject(new Error(`no device named ${name}`)) : Promise.resolve(d);
  };
  const h = await Harness.createPair({
    seed,
    cacheBytesMax: (16 + rng.int(24)) * 512,
    dirtyAgeMaxMs: 10 + rng.int(60),
    storeDelayMaxMs: 3,
    heartbeatIntervalMs: 50,
    partnerTimeoutMs: 600,
    nodeDevices: {
      format: () => (layout === 'mirror' ? MirrorDevice.create(named(members)) : ParityDevice.create(named(members), { layout, chunkBytes: CHUNK, mirroredPrefixBytes: prefix })),
      open: async (name) => {
        const pool = await openPoolOf(layout, members, openMember);
        if (name !== 'view') pools.set(name, pool);
        return pool;
      },
    },
  });
  const delayRng = new Prng(seed * 31 + 7);
  const delay = (): Promise<void> => h.sleep(delayRng.int(3));
  for (const m of members) m.delay = delay;
  const order = Array.from({ length: n }, (_, i) => i).sort(() => rng.next() - 0.5);
  const breaking = order.slice(0, Math.max(1, parities(layout)));
  const replacer: NodeName = rng.chance(0.5) ? 'A' : 'B';
  const scrubber: NodeName = replacer === 'A' ? 'B' : 'A';
  const core = (name: NodeName) => h.nodes.find((x) => x.name === name)!.core;
  const fail = (what: string): string =>
    `${what} (seed ${seed}, ${layout} over ${n}, members ${breaking.join(',')} break, ${replacer} rebuilds, ${scrubber} scrubs; replay: SEED=${seed} POOL_ONLINE_SEEDS=1 npx vitest run test/sim/sim-pool-online-replace.test.ts; ${h.describe()})`;

  const work = await startPairWork(h, seed, rng, { ops: 40 });
  let tries = 0;
  let scrub: ScrubReport | null = null;
  const job = async (): Promise<void> => {
    for (const m of breaking) {
      await h.sleep(10 + rng.int(60));
      members[m]!.broken = true;
      // Until both pools have met it (the next write there, or a heartbeat: the mailbox is on every member).
      for (let waited = 0; [...pools.values()].some((p) => p.status().members[m]!.state === 'healthy'); waited++) {
        if (waited > 400) throw new Error(`member ${m} still healthy on a controller after ${waited * 5} ms`);
        await h.sleep(5);
      }
      const spare = new Breakable(new MemoryDevice(MEMBER_BYTES));
      spare.delay = delay;
      spares.set(`spare${m}`, spare);
      for (let attempt = 1; ; attempt++) {
        tries++;
        try {
          await pools.get(replacer)!.replace(m, { name: `spare${m}`, device: spare }, { barrier: async () => void (await core(replacer).poolBarrier()), pause: (ms) => h.sleep(ms) });
          break;
        } catch (err) {
          if (!(err instanceof PagepairError) || err.code !== 'IO_ERROR' || attempt >= REPLACE_TRIES) throw err;
          await h.sleep(20);
        }
      }
      members[m] = spare;
    }
    await h.sleep(rng.int(40));
    scrub = await pools.get(scrubber)!.scrub({ repair: true, barrier: async () => void (await core(scrubber).poolBarrier()), pause: (ms) => h.sleep(ms) });
  };
  await h.run(Promise.all([work.done, job()]), 'workload', 6_000_000);
  await h.runUntilQuiet();
  expect(h.nodes.map((x) => x.core.currentRole), fail('the pair stays mirrored')).toEqual([Role.MIRRORED, Role.MIRRORED]);
  const served = await checkHistoryThrough(h, 'A', work, fail);
  const viaB = await checkHistoryThrough(h, 'B', work, fail);
  expect(viaB.every((b, i) => b.equals(served[i]!)), fail('A and B serve the same bytes')).toBe(true);
  const copies = await checkCopies(h);
  expect(copies.mismatches.length, fail(`copies differ: ${describeMismatches(copies)}`)).toBe(0);
  expect(scrub, fail('the scrub while serving found nothing to mend')).toMatchObject({ mismatches: 0, unrepaired: 0, unreadable: 0 });
  await h.run(h.client('A').flush());
  await h.runUntilQuiet();
  // The partner hears of the join on the next SENSE (a heartbeat carries the generation).
  await h.advance(300);
  await h.runUntilQuiet();
  for (const name of ['A', 'B'] as const) {
    const st = pools.get(name)!.status();
    expect(st.degraded, fail(`${name} sees the pool whole: ${JSON.stringify(st.members)}`)).toBe(false);
    for (const m of breaking) expect(st.members[m]!.name, fail(`${name}: slot ${m}`)).toBe(`spare${m}`);
  }
  expect(h.errorLogs().map((r) => r.msg), fail('error logs')).toEqual([]);

  // The pair stopped: nothing to mend, and every page reads back as served with members gone.
  const devs: Device[] = members.map((m) => m.inner);
  const view = await openPoolOf(layout, devs);
  const offline = await view.scrub({ repair: false });
  expect(offline.mismatches, fail(`scrub on the stopped pair: ${JSON.stringify(offline)}`)).toBe(0);
  const downs: number[][] = Array.from({ length: n }, (_, i) => [i]);
  if (layout === 'parity2') for (let i = 0; i < n; i++) downs.push([i, (i + 1) % n]);
  for (const down of downs) {
    const without = devs.map((d, i) => (down.includes(i) ? new Broken(d.sizeBytes) : d));
    await expectStoreHolds(await openPoolOf(layout, without), work, served, fail, `without member ${down.join(' and ')}`);
  }
  return { tries };
}

describe('a pool member replaced, and the pool scrubbed, while the pair serves', () => {
  for (const layout of ['mirror', 'parity', 'parity2'] as const) {
    it(`${layout}: ${SEEDS} seeds; nothing acknowledged lost, no stale read, whole with the new devices, every member right`, async () => {
      let tries = 0;
      for (let s = FIRST_SEED; s < FIRST_SEED + SEEDS; s++) tries += (await runSeed(s, layout)).tries;
      // Most rebuilds go through at once; one meeting the partner's late view of the failure is run again.
      expect(tries).toBeLessThan(SEEDS * Math.max(1, parities(layout)) * 2);
    }, 900_000);
  }
});
