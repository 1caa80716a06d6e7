// A member of the pool fails under a running pair (issue 14, degraded
// mode), for each layout: mirror, parity, and parity2 (two members, one
// after the other). Writers on both controllers write and read the same
// cells throughout; the member fails for both controllers (it is the device
// that broke) at a seeded moment. Checked: the pair stays mirrored, both
// controllers see the pool degraded and name the member, the history of
// every cell is linearizable (no acknowledged write lost, no stale read),
// both copies agree, and after the member is replaced (offline, on the
// stopped pair) a scrub finds no mismatch and every page reads back as
// served, with any one other member gone as well.
//
// POOL_FAIL_SEEDS (default 30 a layout) and SEED=<first> replay.

import { describe, expect, it } from 'vitest';
import { Role } from '../../src/protocol/messages.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { MirrorDevice } from '../../src/store/mirror-device.js';
import { ParityDevice } from '../../src/store/parity-device.js';
import { computeGeometry } from '../../src/store/layout.js';
import type { Pool, PoolLayout } from '../../src/store/pool.js';
import type { Device } from '../../src/store/types.js';
import { checkCopies, describeMismatches } from './copies-checker.js';
import { Harness, type NodeName } from './harness.js';
import { Prng } from './prng.js';
import { Breakable, Broken, checkHistoryThrough, expectStoreHolds, named, openPoolOf, parities, startPairWork } from './pool-workload.js';

const KiB = 1024;
const MEMBER_BYTES = 384 * KiB;
const CHUNK = 4 * KiB;
const TABLE_ENTRIES = 64;
const SEEDS = Number(process.env.POOL_FAIL_SEEDS ?? 30);
const FIRST_SEED = Number(process.env.SEED ?? 1);

async function runSeed(seed: number, layout: PoolLayout): Promise<void> {
  const rng = new Prng(seed * 977 + layout.length);
  const n = layout === 'mirror' ? 2 + rng.int(2) : layout === 'parity' ? 3 + rng.int(2) : 4 + rng.int(2);
  const members = Array.from({ length: n }, () => new Breakable(new MemoryDevice(MEMBER_BYTES)));
  const rowBytes = CHUNK * (n - parities(layout));
  const prefix = computeGeometry({ deviceBytes: MEMBER_BYTES, tableEntriesMax: TABLE_ENTRIES, alignBytes: rowBytes }).dataOffset;
  const pools = new Map<NodeName, Pool>();
  const h = await Harness.createPair({
    seed,
    cacheBytesMax: (16 + rng.int(24)) * 512,
    dirtyAgeMaxMs: 10 + rng.int(60),
    storeDelayMaxMs: 3,
    heartbeatIntervalMs: 50,
    partnerTimeoutMs: 300,
    nodeDevices: {
      format: () => (layout === 'mirror' ? MirrorDevice.create(named(members)) : ParityDevice.create(named(members), { layout, chunkBytes: CHUNK, mirroredPrefixBytes: prefix })),
      open: async (name) => {
        const pool = await openPoolOf(layout, members);
        if (name !== 'view') pools.set(name, pool);
        return pool;
      },
    },
  });
  // Which members break: one; for parity2 a second one later.
  const order = Array.from({ length: n }, (_, i) => i).sort(() => rng.next() - 0.5);
  const breaking = order.slice(0, Math.max(1, parities(layout)));
  const fail = (what: string): string => `${what} (seed ${seed}, ${layout} over ${n}, members ${breaking.join(',')} break; replay: SEED=${seed} POOL_FAIL_SEEDS=1 npx vitest run test/sim/sim-pool-member-fails.test.ts; ${h.describe()})`;

  const work = await startPairWork(h, seed, rng);
  const breaker = async (): Promise<void> => {
    for (const m of breaking) {
      await h.sleep(20 + rng.int(100));
      members[m]!.broken = true;
    }
  };
  await h.run(Promise.all([work.done, breaker()]), 'workload', 3_000_000);
  await h.runUntilQuiet();
  expect(h.nodes.map((x) => x.core.currentRole), fail('the pair stays mirrored')).toEqual([Role.MIRRORED, Role.MIRRORED]);
  const served = await checkHistoryThrough(h, 'A', work, fail);
  const viaB = await checkHistoryThrough(h, 'B', work, fail);
  expect(viaB.every((b, i) => b.equals(served[i]!)), fail('A and B serve the same bytes')).toBe(true);
  const copies = await checkCopies(h);
  expect(copies.mismatches.length, fail(`copies differ: ${describeMismatches(copies)}`)).toBe(0);
  await h.run(h.client('A').flush());
  await h.runUntilQuiet();

  // Both controllers' pools know, whichever of them met the failure first
  // (a member broken while nothing was written meets the next heartbeat: the
  // mailbox lies on every member).
  await h.advance(500);
  await h.runUntilQuiet();
  for (const name of ['A', 'B'] as const) {
    const st = pools.get(name)!.status();
    expect(st.degraded, fail(`${name} sees the pool degraded`)).toBe(true);
    for (const m of breaking) expect(st.members[m]!.state, fail(`${name}: member ${m}`)).not.toBe('healthy');
  }
  expect(h.errorLogs().map((r) => r.msg), fail('error logs')).toEqual([]);

  // The pair stopped: each broken member is replaced by a new device, then a scrub finds nothing to mend.
  const devs: Device[] = members.map((m) => (m.broken ? new Broken(m.sizeBytes) : m.inner));
  const view = await openPoolOf(layout, devs);
  for (const m of breaking) {
    const fresh = new MemoryDevice(MEMBER_BYTES);
    await view.replace(m, { name: `new${m}`, device: fresh });
    devs[m] = fresh;
  }
  expect(view.status().degraded, fail('healthy after the replacements')).toBe(false);
  const scrub = await view.scrub({ repair: false });
  expect(scrub.mismatches, fail(`scrub after replace: ${JSON.stringify(scrub)}`)).toBe(0);
  await expectStoreHolds(await openPoolOf(layout, devs), work, served, fail, 'after the replacements');
  for (let gone = 0; gone < n; gone++) {
    const without = devs.map((d, i) => (i === gone ? new Broken(d.sizeBytes) : d));
    await expectStoreHolds(await openPoolOf(layout, without), work, served, fail, `after the replacements, without member ${gone}`);
  }
}

describe('a pool member fails under a running pair', () => {
  for (const layout of ['mirror', 'parity', 'parity2'] as const) {
    it(`${layout}: ${SEEDS} seeds; nothing acknowledged lost, no stale read, degraded on both sides, whole again after replace`, async () => {
      for (let s = FIRST_SEED; s < FIRST_SEED + SEEDS; s++) await runSeed(s, layout);
    }, 900_000);
  }
});
