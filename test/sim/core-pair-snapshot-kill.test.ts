// A controller killed at any step of making a snapshot, while writers on
// both controllers write the same rows (src/core/snapshots.ts). The seed
// picks the controller asked (A, the coordinator, or B), the one killed and
// how many simulator steps after the request the kill comes, so over the
// seeds every frame and store operation of the making is a kill point.
// Then:
// - an acknowledged snapshot exists at the survivor; one not acknowledged
//   may or may not (like any allocation whose answer was lost);
// - if it exists, it is the volume at one instant between its request and
//   the survivor serving alone, with no split write (snapshot-cut.ts), and
//   it stays so while the survivor takes more writes;
// - once the killed controller is back and the pair mirrored, it reads the
//   same through both, and so does the volume.

import { describe, expect, it } from 'vitest';
import { Harness, type NodeName } from './harness.js';
import { Prng } from './prng.js';
import type { SimClient } from './sim-client.js';
import { cutProblem, rowBytes, type RowGeometry, type StampedWrite } from './snapshot-cut.js';

const PAGE = 512; // the simulator's 'tiny' policy
const G: RowGeometry = { rows: 4, rowBytes: 2 * PAGE, pageBytes: PAGE };
const VOLUME_BYTES = G.rows * G.rowBytes;

const SEEDS = Number(process.env.SNAPSHOT_KILL_SEEDS ?? 48);
const FIRST_SEED = Number(process.env.SNAPSHOT_KILL_FIRST_SEED ?? 4100);

describe('a controller killed while a snapshot is being made', () => {
  it(`${SEEDS} seeds: an answered snapshot survives; any snapshot at the survivor is one instant, whole writes, unchanged after, the same through both once rejoined`, async () => {
    const outcomes = { answered: 0, existsUnanswered: 0, absent: 0 };
    for (let seed = FIRST_SEED; seed < FIRST_SEED + SEEDS; seed++) {
      const rng = new Prng(seed);
      const h = await Harness.createPair({ seed, frameDelayMaxMs: 3 });
      const fail = (what: string): string => `${what} (seed ${seed}; ${h.describe()}; ${h.incarnations()})`;
      const clock = (): number => h.nowMs + h.sched.steps / 1e7;
      const vol = await h.run(h.client('A').allocate('vol', VOLUME_BYTES, 'tiny'));
      const writes: StampedWrite[] = [];
      let nextStamp = 1;
      let stop = false;
      const writer = async (idx: number, c: SimClient): Promise<void> => {
        const my = new Prng(seed * 31 + idx);
        for (let op = 0; op < 40 && !stop; op++) {
          if (my.chance(0.6)) await h.sleep(my.int(4));
          const row = my.int(G.rows);
          const stamp = nextStamp++;
          const startMs = clock();
          const r = await h.settle(c.write(vol.guid, row * G.rowBytes, rowBytes(G, stamp), 0, { clientId: 500 + idx, clientSeq: op + 1 }));
          writes.push({ stamp, row, startMs, endMs: r.ok ? clock() : Number.POSITIVE_INFINITY });
          if (!r.ok) await h.sleep(20);
        }
      };
      const via: NodeName = rng.chance(0.5) ? 'A' : 'B';
      const victim: NodeName = rng.chance(0.5) ? 'A' : 'B';
      const survivor: NodeName = victim === 'A' ? 'B' : 'A';
      const killAfterSteps = rng.int(13);
      const writing = (['A', 'B', 'A', 'B'] as const).map((n, i) => writer(i, h.client(n)));
      const all = h.track(Promise.all(writing));
      await h.advance(6);
      const startMs = clock();
      const snap = h.track(h.client(via).snapshot(vol.guid, 'cut'));
      let steps = 0;
      await h.runUntil(() => snap.settled || ++steps > killAfterSteps, 'kill point');
      h.kill(victim);
      await h.advance(2_000);
      const aloneMs = clock();
      stop = true;
      await h.runUntil(() => all.settled, 'writers done', 400_000);

      const listed = await h.run(h.client(survivor).list());
      const entry = listed.find((e) => e.name === 'vol@cut');
      const answered = snap.settled && snap.result?.ok === true;
      if (answered) {
        outcomes.answered++;
        expect(entry?.guid, fail(`the answered snapshot (through ${via}, ${victim} killed) is at ${survivor}`)).toBe(snap.result?.ok === true ? snap.result.value.guid : '');
      } else if (entry !== undefined) {
        outcomes.existsUnanswered++;
      } else {
        outcomes.absent++;
      }
      if (entry === undefined) continue;
      expect(entry.origin, fail('listed as a snapshot of vol')).toBe(vol.guid);
      const image = await h.run(h.client(survivor).read(entry.guid, 0, VOLUME_BYTES));
      expect(cutProblem(G, image, { startMs, endMs: aloneMs }, writes), fail(`snapshot through ${via}, ${victim} killed after ${killAfterSteps} steps`)).toBeNull();
      // The survivor takes more writes: the snapshot keeps its bytes.
      for (let row = 0; row < G.rows; row++) await h.run(h.client(survivor).write(vol.guid, row * G.rowBytes, rowBytes(G, nextStamp++)));
      expect((await h.run(h.client(survivor).read(entry.guid, 0, VOLUME_BYTES))).equals(image), fail('unchanged by writes after')).toBe(true);
      await h.restart(victim);
      h.heal();
      await h.waitMirrored();
      await h.runUntilQuiet();
      for (const n of ['A', 'B'] as const) {
        expect((await h.run(h.client(n).read(entry.guid, 0, VOLUME_BYTES))).equals(image), fail(`the snapshot through ${n} after the rejoin`)).toBe(true);
      }
      const va = await h.run(h.client('A').read(vol.guid, 0, VOLUME_BYTES));
      const vb = await h.run(h.client('B').read(vol.guid, 0, VOLUME_BYTES));
      expect(va.equals(vb), fail('the volume through A and B after the rejoin')).toBe(true);
      expect(h.violations, fail('invariants')).toEqual([]);
    }
    // The kill points covered both outcomes.
    expect(outcomes.answered, JSON.stringify(outcomes)).toBeGreaterThan(0);
    expect(outcomes.absent + outcomes.existsUnanswered, JSON.stringify(outcomes)).toBeGreaterThan(0);
    console.log(`snapshot kill points: ${JSON.stringify(outcomes)}`);
  }, 600_000);
});
