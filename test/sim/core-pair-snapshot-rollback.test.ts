// Rollback and commit of a snapshot (src/core/snapshots.ts) on a pair, with
// writers on both controllers:
// - ROLLBACK with the volume quiet gives the volume the snapshot's bytes
//   exactly, the same through A and B; the snapshot itself and a later
//   snapshot keep theirs (the later one got copies of what was written back);
// - ROLLBACK while writers on both controllers go on: no row split, both
//   copies equal, and every row holds the snapshot's stamp or one written by
//   a write that ended after the rollback began;
// - COMMIT takes the snapshot again under its name: it now holds the
//   volume's bytes of then, and writes after it do not reach it.

import { describe, expect, it } from 'vitest';
import { Harness } from './harness.js';
import { Prng } from './prng.js';
import type { SimClient } from './sim-client.js';
import { rowBytes, rowStamp, type RowGeometry, type StampedWrite } from './snapshot-cut.js';

const PAGE = 512;
const G: RowGeometry = { rows: 6, rowBytes: 2 * PAGE, pageBytes: PAGE };
const BYTES = G.rows * G.rowBytes;

const SEEDS = (process.env.SNAPSHOT_ROLLBACK_SEEDS ?? '2601,2602,2603,2604').split(',').map(Number);

for (const seed of SEEDS) {
  describe(`snapshot rollback and commit (seed ${seed})`, () => {
    it('rollback gives the volume the snapshot\'s bytes (and interleaves whole with writers); commit takes the snapshot again', async () => {
      const h = await Harness.createPair({ seed, frameDelayMaxMs: 3 });
      const fail = (what: string): string => `${what} (seed ${seed}; ${h.describe()})`;
      const clock = (): number => h.nowMs + h.sched.steps / 1e7;
      const A = h.client('A');
      const B = h.client('B');
      const vol = await h.run(A.allocate('vol', BYTES, 'tiny'));
      let stamp = 1;
      const writes: StampedWrite[] = [];
      const writeRow = async (c: SimClient, row: number): Promise<void> => {
        const s = stamp++;
        const startMs = clock();
        await c.write(vol.guid, row * G.rowBytes, rowBytes(G, s));
        writes.push({ stamp: s, row, startMs, endMs: clock() });
      };
      for (let row = 0; row < G.rows; row += 2) await h.run(writeRow(row % 4 === 0 ? A : B, row));
      const snap = await h.run(B.snapshot(vol.guid, 'base'));
      const base = await h.run(A.read(snap.guid, 0, BYTES));
      for (let row = 0; row < G.rows; row++) await h.run(writeRow(row % 2 === 0 ? B : A, row));
      const later = await h.run(A.snapshot(vol.guid, 'later'));
      const laterBytes = await h.run(B.read(later.guid, 0, BYTES));
      expect(laterBytes.equals(base)).toBe(false);

      // Quiet rollback through A.
      const r = await h.run(A.snapshotOp(2, snap.guid));
      expect(r.guid).toBe(snap.guid);
      expect(r.pages, fail('pages written back: every page changed since')).toBe(G.rows * 2);
      for (const c of [A, B]) {
        expect((await h.run(c.read(vol.guid, 0, BYTES))).equals(base), fail(`the volume through ${c.controller} after the rollback`)).toBe(true);
        expect((await h.run(c.read(snap.guid, 0, BYTES))).equals(base), fail('the snapshot keeps its bytes')).toBe(true);
        expect((await h.run(c.read(later.guid, 0, BYTES))).equals(laterBytes), fail('the later snapshot keeps its bytes')).toBe(true);
      }
      // A rollback writes back every page the snapshot holds a copy of, equal by now or not.
      expect((await h.run(B.snapshotOp(2, snap.guid))).pages).toBe(G.rows * 2);

      // Rollback while writers on both controllers write the same rows.
      const rng = new Prng(seed);
      const rollbackStart = clock();
      const writers = [A, B, h.client('A'), h.client('B')].map(async (c, i) => {
        const my = new Prng(seed * 13 + i);
        for (let n = 0; n < 10; n++) {
          if (my.chance(0.5)) await h.sleep(my.int(3));
          await writeRow(c, my.int(G.rows));
        }
      });
      await h.run(Promise.all([...writers, (async () => {
        await h.sleep(rng.int(6));
        await (rng.chance(0.5) ? A : B).snapshotOp(2, snap.guid);
      })()]), 'rollback among writers');
      await h.runUntilQuiet();
      const va = await h.run(A.read(vol.guid, 0, BYTES));
      const vb = await h.run(B.read(vol.guid, 0, BYTES));
      expect(va.equals(vb), fail('the volume through A and B')).toBe(true);
      for (let row = 0; row < G.rows; row++) {
        const got = rowStamp(G, va, row);
        expect(typeof got, fail(`row ${row}: ${String(got)}`)).toBe('number');
        const fromSnap = rowStamp(G, base, row);
        const ok = got === fromSnap || writes.some((w) => w.stamp === got && w.row === row && w.endMs > rollbackStart);
        expect(ok, fail(`row ${row} holds ${String(got)}: neither the snapshot's ${String(fromSnap)} nor a write that ended after the rollback began`)).toBe(true);
      }
      expect((await h.run(B.read(snap.guid, 0, BYTES))).equals(base), fail('the snapshot still keeps its bytes')).toBe(true);

      // Commit through B: the snapshot is taken again, now.
      const now = await h.run(B.read(vol.guid, 0, BYTES));
      const c = await h.run(B.snapshotOp(3, snap.guid));
      expect(c.guid).not.toBe(snap.guid);
      const listed = await h.run(A.list());
      expect(listed.some((e) => e.guid === snap.guid)).toBe(false);
      expect(listed.find((e) => e.guid === c.guid)?.name).toBe('vol@base');
      await h.run(writeRow(A, 0));
      for (const cl of [A, B]) expect((await h.run(cl.read(c.guid, 0, BYTES))).equals(now), fail(`the committed snapshot through ${cl.controller}`)).toBe(true);
      expect(h.violations, fail('invariants')).toEqual([]);
    });
  });
}
