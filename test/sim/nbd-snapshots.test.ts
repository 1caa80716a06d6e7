// Snapshots taken while NBD clients on both controllers write (the NBD
// backend, src/runtime/nbd-volumes.ts, over the simulated pair), judged as
// snapshot-cut.ts says. Every write covers one row with a stamp of its own;
// rows are 3 pages and 100 bytes, so most start and end inside a page and
// many cross a multiple of the backend's piece size (4 pages), where a write
// cut in pieces would be split. Each snapshot, read back over NBD through A
// and through B, must be the same bytes both ways, hold no split row, and
// equal the volume at one instant between its request and its answer.
//
// SEED=<n> replays one seed; NBD_SNAPSHOT_SEEDS=<count> runs more.

import { describe, expect, it } from 'vitest';
import type { NbdVolume } from '../../src/transport/nbd-backend.js';
import { Harness, type NodeName } from './harness.js';
import { NbdEndpoint, nbdConnIds } from './nbd-endpoint.js';
import { codeOf } from './pair-steps.js';
import { Prng } from './prng.js';
import { cutProblem, rowBytes, rowStamp, type RowGeometry, type StampedWrite } from './snapshot-cut.js';

const PAGE = 512; // the simulator's 'tiny' policy
const PIECE_BYTES = 4 * PAGE;
const ROW_BYTES = 3 * PAGE + 100;
const ROWS = 5;
const GEOMETRY: RowGeometry = { rows: ROWS, rowBytes: ROW_BYTES, pageBytes: PAGE };
const IMAGE_BYTES = ROWS * ROW_BYTES;

const SEEDS =
  process.env.SEED !== undefined
    ? [Number(process.env.SEED)]
    : Array.from({ length: Number(process.env.NBD_SNAPSHOT_SEEDS ?? 12) }, (_, i) => 3101 + i);

interface Snap {
  name: string;
  guid: string;
  via: NodeName;
  startMs: number;
  endMs: number;
}

describe('snapshots under NBD writers on both controllers', () => {
  it('rows cross the old piece boundary (the premise of this test)', () => {
    const crossing = Array.from({ length: ROWS }, (_, r) => r).filter((r) => Math.floor((r * ROW_BYTES) / PIECE_BYTES) !== Math.floor(((r + 1) * ROW_BYTES - 1) / PIECE_BYTES));
    expect(crossing.length).toBeGreaterThanOrEqual(3);
  });

  for (const seed of SEEDS) {
    it(`seed ${seed}: each snapshot, read over NBD through A and B, is the volume at one instant of its request, no NBD write split`, async () => {
      const rng = new Prng(seed);
      const h = await Harness.createPair({ seed, frameDelayMaxMs: 3 });
      const fail = (what: string): string => `${what} (seed ${seed}; ${h.describe()}; ${h.incarnations()}; replay: SEED=${seed} npx vitest run test/sim/nbd-snapshots.test.ts)`;
      const clock = (): number => h.nowMs + h.sched.steps / 1e7;
      const vol = await h.run(h.client('A').allocate('vol', IMAGE_BYTES, 'tiny'));
      const nextConnId = nbdConnIds();
      const epRng = rng.fork();
      const endpoint = (name: NodeName): NbdEndpoint =>
        new NbdEndpoint(h, h.node(name), nextConnId(), epRng, { socketDelayMaxMs: 2, pieceBytes: PIECE_BYTES, readPieceBytes: PAGE, piecesInFlight: 4 });
      const eps = { A: endpoint('A'), B: endpoint('B') };
      const volOn = (ep: NbdEndpoint): NbdVolume => ep.findVolume('vol')!;
      const writes: StampedWrite[] = [];
      const snaps: Snap[] = [];
      const errors: string[] = [];
      let nextStamp = 1;

      const writer = async (idx: number, ep: NbdEndpoint): Promise<void> => {
        const my = new Prng(seed * 31 + idx);
        for (let op = 0; op < 24; op++) {
          if (my.chance(0.6)) await h.sleep(my.int(5));
          const row = my.int(ROWS);
          const stamp = nextStamp++;
          const fua = my.chance(0.1);
          const startMs = clock();
          try {
            await ep.call('write', (v) => v.write(volOn(ep), row * ROW_BYTES, rowBytes(GEOMETRY, stamp), fua));
          } catch (err) {
            errors.push(`writer ${idx} (${ep.name}) stamp ${stamp}: ${String(err)}`);
            // Unacknowledged: it may or may not have landed.
            writes.push({ stamp, row, startMs, endMs: Number.POSITIVE_INFINITY });
            continue;
          }
          writes.push({ stamp, row, startMs, endMs: clock() });
        }
      };
      const snapshotter = async (): Promise<void> => {
        const my = new Prng(seed * 7 + 1);
        for (let i = 0; i < 6; i++) {
          await h.sleep(4 + my.int(14));
          const via: NodeName = my.chance(0.5) ? 'A' : 'B';
          const name = `s${i}`;
          const startMs = clock();
          const r = await h.settle(h.client(via).snapshot(vol.guid, name));
          const endMs = clock();
          if (!r.ok) {
            errors.push(`snapshot ${name} through ${via}: ${codeOf(r)}`);
            continue;
          }
          snaps.push({ name, guid: r.value.guid, via, startMs, endMs });
        }
      };
      await h.run(Promise.all([writer(0, eps.A), writer(1, eps.B), writer(2, eps.A), writer(3, eps.B), snapshotter()]), 'NBD writers and snapshots');
      expect(errors, fail('errors')).toEqual([]);
      expect(snaps.length).toBe(6);
      const between = snaps.filter((s) => writes.some((w) => w.startMs < s.startMs) && writes.some((w) => w.endMs > s.endMs));
      expect(between.length, fail('snapshots taken among the writes')).toBeGreaterThan(2);
      await h.runUntilQuiet();
      expect(h.violations, fail('invariants')).toEqual([]);

      for (const s of snaps) {
        const images: Buffer[] = [];
        for (const via of ['A', 'B'] as const) {
          const ep = eps[via];
          const exported = ep.findVolume(`vol@${s.name}`);
          expect(exported, fail(`${via} exports vol@${s.name}`)).toMatchObject({ guid: s.guid, readOnly: true });
          images.push(await h.run(ep.call('read', (v) => v.read(exported!, 0, IMAGE_BYTES))));
        }
        expect(images[0]!.equals(images[1]!), fail(`snapshot ${s.name} (made through ${s.via}) reads the same over NBD through A and B`)).toBe(true);
        expect(cutProblem(GEOMETRY, images[0]!, s, writes), fail(`snapshot ${s.name} (made through ${s.via})`)).toBeNull();
      }
      // The volume: the same through both, every row one write whole.
      const [ia, ib] = [await h.run(eps.A.call('read', (v) => v.read(volOn(eps.A), 0, IMAGE_BYTES))), await h.run(eps.B.call('read', (v) => v.read(volOn(eps.B), 0, IMAGE_BYTES)))];
      expect(ia.equals(ib), fail('the volume reads the same through A and B')).toBe(true);
      for (let row = 0; row < ROWS; row++) expect(typeof rowStamp(GEOMETRY, ia, row), fail(`volume row ${row}`)).toBe('number');
    });
  }
});
