// The write hole, closed by the pair (issue 14). Both controllers keep their
// store on one parity pool (each its own pool object over member devices the
// two share). Writers on both controllers write and read the same cells
// while one controller is killed in the middle of a row: after k of the
// member writes one of its page writes makes (k drawn by seed, 0 up to
// every step of the row), nothing more of it reaches any member. The
// survivor holds every page the dead one was writing (mirrored, dirty until
// the dead one had said "clean"), takes over, has the pool recompute the
// parity of the rows those pages lie in, and writes them again.
//
// Checked for every seed: the history of every cell is linearizable (no
// acknowledged write lost, no stale read), a scrub of the pool afterwards finds no row whose parity
// disagrees with its data, and with any one member gone (two for parity2)
// every page reads back from the store as the survivor serves it.
//
// The seeds run in sim-pool-kill-mid-stripe-parity.test.ts and
// -parity2.test.ts (apart, so that the two run side by side).

import { expect } from 'vitest';
import { Role } from '../../src/protocol/messages.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { ParityDevice } from '../../src/store/parity-device.js';
import { POOL_LABEL_AREA_BYTES } from '../../src/store/pool-label.js';
import { computeGeometry } from '../../src/store/layout.js';
import type { Device } from '../../src/store/types.js';
import { Harness, type NodeName } from './harness.js';
import { Prng } from './prng.js';
import { ALLOCS, Broken, PAGE, checkHistoryThrough, expectStoreHolds, named, parities, startPairWork } from './pool-workload.js';

export type PoolLayout = 'parity' | 'parity2';

const KiB = 1024;
const MEMBER_BYTES = 384 * KiB;
const CHUNK = 4 * KiB;
const TABLE_ENTRIES = 64;

/** A member device as one controller reaches it: once its controller is killed, nothing more of its gets through. */
class Gate implements Device {
  constructor(
    private readonly inner: MemoryDevice,
    private readonly trip: TripWire,
  ) {}

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }

  read(offset: number, length: number): Promise<Buffer> {
    if (this.trip.tripped) return never();
    return this.inner.read(offset, length);
  }

  write(offset: number, data: Buffer): Promise<void> {
    if (this.trip.tripped || this.trip.countsAndTrips(offset)) return never();
    return this.inner.write(offset, data);
  }

  sync(): Promise<void> {
    if (this.trip.tripped) return never();
    return this.inner.sync();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** A dead controller's operations never end: it hears nothing, and nothing of it lands. */
function never<T>(): Promise<T> {
  return new Promise<T>(() => undefined);
}

/** One controller incarnation's wire: armed, it lets `allow` more row writes through, then the controller dies. */
class TripWire {
  tripped = false;
  private allow = -1;
  /** Row writes (in the parity area) made since arming. */
  counted = 0;

  constructor(
    private readonly rowsFrom: number,
    private readonly onTrip: () => void,
  ) {}

  arm(allow: number): void {
    this.allow = allow;
    this.counted = 0;
  }

  get armed(): boolean {
    return this.allow >= 0;
  }

  /** A write at offset is about to go out: true when it is the one that must not (the controller dies now). */
  countsAndTrips(offset: number): boolean {
    if (this.allow < 0 || offset < this.rowsFrom) return false;
    if (this.counted === this.allow) {
      this.tripped = true;
      this.onTrip();
      return true;
    }
    this.counted++;
    return false;
  }
}

interface Rig {
  h: Harness;
  members: MemoryDevice[];
  wires: Map<string, TripWire>;
  layout: PoolLayout;
  /** The survivor whose repair has not been seen yet (its page writes are held meanwhile). */
  awaitingRepair: NodeName | null;
  /** The members as they were the moment the survivor's repair was done, before it wrote anything again. */
  afterRepair: MemoryDevice[] | null;
}

async function makeRig(seed: number, layout: PoolLayout, n: number, rng: Prng): Promise<Rig> {
  const members = Array.from({ length: n }, () => new MemoryDevice(MEMBER_BYTES));
  const rowBytes = CHUNK * (n - parities(layout));
  const prefix = computeGeometry({ deviceBytes: MEMBER_BYTES, tableEntriesMax: TABLE_ENTRIES, alignBytes: rowBytes }).dataOffset;
  const wires = new Map<string, TripWire>();
  let h: Harness | null = null;
  const rig: Rig = { h: null as unknown as Harness, members, wires, layout, awaitingRepair: null, afterRepair: null };
  h = await Harness.createPair({
    seed,
    cacheBytesMax: (24 + rng.int(24)) * PAGE,
    dirtyAgeMaxMs: 10 + rng.int(60),
    storeDelayMaxMs: 3,
    heartbeatIntervalMs: 50,
    partnerTimeoutMs: 300,
    nodeDevices: {
      format: () => ParityDevice.create(named(members), { layout, chunkBytes: CHUNK, mirroredPrefixBytes: prefix }),
      open: (name, incarnation) => {
        if (name === 'view') return ParityDevice.open(named(members));
        const wire = new TripWire(POOL_LABEL_AREA_BYTES + prefix, () => {
          // Killed as the write goes out: the rest of this row's writes never leave.
          const hh = h!;
          // The survivor's page writes wait until the pool has been checked
          // right after its repair: they would mend the rows they touch
          // anyway, and hide a repair that was never made.
          const survivor: NodeName = name === 'A' ? 'B' : 'A';
          hh.node(survivor).store.stall('pageWrites');
          rig.awaitingRepair = survivor;
          hh.sched.after(0, `kill ${name} mid-row`, () => {
            if (hh.node(name).alive && hh.node(name).incarnation === incarnation) hh.kill(name);
          });
        });
        wires.set(`${name}:${incarnation}`, wire);
        return ParityDevice.open(named(members.map((m) => new Gate(m, wire))));
      },
    },
  });
  rig.h = h;
  // After every step: once the survivor has logged its repair, take the
  // members as they are, and let its page writes go on.
  let seen = 0;
  h.sched.afterEachStep.push(() => {
    const logs = h!.logs;
    if (rig.awaitingRepair === null) {
      seen = logs.length;
      return;
    }
    for (; seen < logs.length; seen++) {
      const l = logs[seen]!;
      if (l.node === rig.awaitingRepair && l.msg.includes('the pool agrees again')) {
        rig.afterRepair = members.map((m) => new MemoryDevice(m.snapshot()));
        h!.node(rig.awaitingRepair).store.unstall();
        rig.awaitingRepair = null;
        return;
      }
    }
  });
  return rig;
}

export async function runKillMidStripeSeed(seed: number, layout: PoolLayout): Promise<{ step: number; victim: NodeName; repairs: number }> {
  const rng = new Prng(seed * 131 + 17 + (layout === 'parity2' ? 7919 : 0));
  const n = layout === 'parity2' ? 4 + rng.int(2) : 3 + rng.int(2);
  const rig = await makeRig(seed, layout, n, rng);
  const { h } = rig;
  // Every step of a row write: none of it, some, all but the last one.
  const rowWrites = 1 + parities(layout) + rng.int(2);
  const step = seed % (rowWrites + 1);
  const victim: NodeName = rng.chance(0.5) ? 'A' : 'B';
  const fail = (what: string): string => `${what} (seed ${seed}, ${layout} over ${n}, kill ${victim} after ${step} row writes; replay: SEED=${seed} KILL_STRIPE_SEEDS=1 npx vitest run test/sim/sim-pool-kill-mid-stripe-${layout}.test.ts; ${h.describe()})`;

  const work = await startPairWork(h, seed, rng);

  // The killer: once the pair has worked a while, arm the victim's wire.
  const killer = async (): Promise<void> => {
    await h.sleep(20 + rng.int(80));
    const wire = rig.wires.get(`${victim}:${h.node(victim).incarnation}`)!;
    wire.arm(step);
  };

  await h.run(Promise.all([work.done, killer()]), 'workload', 3_000_000);
  const wire = rig.wires.get(`${victim}:0`)!;
  // Every actor has finished; the victim may not have written enough rows
  // since it was armed: make it write (and flush) until it dies.
  for (let round = 0; round < 20 && !wire.tripped; round++) {
    const run = work.cells.filter((x) => x.alloc === round % ALLOCS).slice(2 * round, 2 * round + 2);
    const guid = work.allocs[round % ALLOCS]!.guid;
    await h.run(work.writeThrough(victim, run).then(() => h.client(victim).flush(guid)).catch(() => undefined), 'last writes', 3_000_000);
  }
  expect(wire.tripped, fail('the victim died mid-row')).toBe(true);

  const survivor: NodeName = victim === 'A' ? 'B' : 'A';
  await h.runUntil(() => h.node(survivor).core.currentRole === Role.ALONE && rig.afterRepair !== null, 'the survivor took over and repaired', 3_000_000);
  // Right after the repair, before the survivor wrote anything again: every row agrees.
  const afterRepair = await (await ParityDevice.open(named(rig.afterRepair!))).scrub({ repair: false });
  expect(afterRepair.mismatches, fail(`scrub right after the repair: ${JSON.stringify(afterRepair)}`)).toBe(0);
  await h.runUntilQuiet();
  expect(h.node(survivor).core.currentRole, fail('the survivor serves alone')).toBe(Role.ALONE);
  const served = await checkHistoryThrough(h, survivor, work, fail);
  const c = h.client(survivor);
  await h.run(c.flush());
  await h.runUntilQuiet();
  const repairs = h.node(survivor).core.counters.partnerRepairs;
  expect(repairs, fail('the survivor repaired the pool')).toBe(1);

  // Every row's parity agrees with its data.
  const view = await ParityDevice.open(named(rig.members));
  const scrub = await view.scrub({ repair: false });
  expect(scrub.mismatches, fail(`scrub: ${JSON.stringify(scrub)}`)).toBe(0);

  // Any member gone (any two for parity2): the store still holds what the survivor serves.
  const gones: number[][] = rig.members.map((_, m) => [m]);
  if (layout === 'parity2') gones.push([0, rig.members.length - 1]);
  for (const gone of gones) {
    const devs = rig.members.map((m, i) => (gone.includes(i) ? new Broken(m.sizeBytes) : m));
    await expectStoreHolds(await ParityDevice.open(named(devs)), work, served, fail, `read without member(s) ${gone.join(',')}`);
  }
  expect(h.errorLogs().map((r) => r.msg), fail('error logs')).toEqual([]);
  if (process.env.KILL_STRIPE_VERBOSE !== undefined) console.log(`seed ${seed} ${layout}/${n} step ${step} victim ${victim} ops ${work.history.length} (writes unknown ${work.history.filter((o) => o.outcome === 'unknown').length}) at ${h.nowMs} ms, scrub ${JSON.stringify(scrub)}`);
  return { step, victim, repairs };
}

/** Runs `seeds` seeds of one layout from `first`, and checks every step was taken on both sides. */
export async function runKillMidStripeSeeds(layout: PoolLayout, first: number, seeds: number): Promise<void> {
  const steps = new Set<string>();
  for (let s = first; s < first + seeds; s++) {
    const r = await runKillMidStripeSeed(s, layout);
    steps.add(`${r.victim}${r.step}`);
  }
  // With enough seeds, every step was taken with each controller as the victim.
  if (seeds >= 100) expect([...steps].sort()).toEqual(expect.arrayContaining(['A0', 'A1', 'A2', 'B0', 'B1', 'B2', ...(layout === 'parity2' ? ['A3', 'B3'] : [])]));
}
