// Copy-on-write snapshots taken while writers on both controllers write the
// same pages (src/core/snapshots.ts), judged as snapshot-cut.ts says: whole
// rows, one stamp per write. Each snapshot must:
// - read the same bytes through A and through B, and the same at the end as
//   just after it was made (nothing lands in it later);
// - hold no split write;
// - equal the volume at one instant between its request and its answer:
//   for each row, the write it shows started before that instant, and no
//   write that started after that one ended had ended by then; one instant
//   must serve every row.
// Then the controller that made most of them is killed: the survivor serves
// them unchanged, and so does the killed one once restarted and rejoined.

import { describe, expect, it } from 'vitest';
import { Harness, type NodeName } from './harness.js';
import { codeOf } from './pair-steps.js';
import { Prng } from './prng.js';
import type { SimClient } from './sim-client.js';
import { cutProblem as cutProblemOf, rowBytes as rowBytesOf, rowStamp as rowStampOf, type RowGeometry, type StampedWrite } from './snapshot-cut.js';

const PAGE = 512; // the simulator's 'tiny' policy
const ROW_PAGES = 3;
const ROWS = 4;
const ROW_BYTES = ROW_PAGES * PAGE;
const VOLUME_BYTES = ROWS * ROW_BYTES;

const GEOMETRY: RowGeometry = { rows: ROWS, rowBytes: ROW_BYTES, pageBytes: PAGE };
const rowBytes = (stamp: number): Buffer => rowBytesOf(GEOMETRY, stamp);
const rowStamp = (image: Buffer, row: number): number | string => rowStampOf(GEOMETRY, image, row);
const cutProblem = (image: Buffer, snap: Snap, writes: readonly StampedWrite[]): string | null => cutProblemOf(GEOMETRY, image, snap, writes);

interface Snap {
  name: string;
  guid: string;
  via: NodeName;
  startMs: number;
  endMs: number;
  early: Buffer;
}

async function readAll(h: Harness, c: SimClient, guid: string): Promise<Buffer> {
  return h.run(c.read(guid, 0, VOLUME_BYTES));
}

const SEEDS = (process.env.SNAPSHOT_SEEDS ?? '2101,2102,2103,2104,2105,2106').split(',').map(Number);

for (const seed of SEEDS) {
  describe(`snapshots under writers on both controllers (seed ${seed})`, () => {
    it('each snapshot is the volume at one instant of its request, whole writes only, the same through A and B, through a kill and a rejoin', async () => {
      const rng = new Prng(seed);
      const h = await Harness.createPair({ seed, frameDelayMaxMs: 3 });
      const fail = (what: string): string => `${what} (seed ${seed}; ${h.describe()}; ${h.incarnations()})`;
      const clock = (): number => h.nowMs + h.sched.steps / 1e7;
      const vol = await h.run(h.client('A').allocate('vol', VOLUME_BYTES, 'tiny'));
      const writes: StampedWrite[] = [];
      const snaps: Snap[] = [];
      const errors: string[] = [];
      let nextStamp = 1;

      const writer = async (idx: number, c: SimClient): Promise<void> => {
        const my = new Prng(seed * 31 + idx);
        for (let op = 0; op < 24; op++) {
          if (my.chance(0.6)) await h.sleep(my.int(5));
          const row = my.int(ROWS);
          const stamp = nextStamp++;
          const startMs = clock();
          const r = await h.settle(c.write(vol.guid, row * ROW_BYTES, rowBytes(stamp), 0, { clientId: 300 + idx, clientSeq: op + 1 }));
          if (!r.ok) {
            errors.push(`writer ${idx} (${c.controller}) stamp ${stamp}: ${codeOf(r)}`);
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
          const c = h.client(via);
          const name = `s${i}`;
          const startMs = clock();
          const r = await h.settle(c.snapshot(vol.guid, name));
          const endMs = clock();
          if (!r.ok) {
            errors.push(`snapshot ${name} through ${via}: ${codeOf(r)}`);
            continue;
          }
          const early = await h.run(c.read(r.value.guid, 0, VOLUME_BYTES));
          snaps.push({ name, guid: r.value.guid, via, startMs, endMs, early });
        }
      };
      const writers = (['A', 'B', 'A', 'B'] as const).map((via) => h.client(via));
      await h.run(Promise.all([...writers.map((c, i) => writer(i, c)), snapshotter()]), 'writers and snapshots');
      if (errors.length > 0) console.log(errors.slice(0, 5), h.errorLogs().slice(0, 5), h.logs.filter((r) => r.level === 'warn').slice(0, 8));
      expect(errors, fail('errors')).toEqual([]);
      expect(snaps.length).toBe(6);
      // The snapshots fell among writes through both controllers.
      const between = snaps.filter((s) => writes.some((w) => w.startMs < s.startMs) && writes.some((w) => w.endMs > s.endMs));
      expect(between.length, fail('snapshots taken among the writes')).toBeGreaterThan(2);
      await h.runUntilQuiet();
      expect(h.violations, fail('invariants')).toEqual([]);

      const checkAll = async (vias: readonly NodeName[], when: string): Promise<void> => {
        for (const s of snaps) {
          for (const via of vias) {
            const image = await readAll(h, h.client(via), s.guid);
            expect(image.equals(s.early), fail(`${when}: snapshot ${s.name} read through ${via} is what it was just after it was made`)).toBe(true);
          }
          expect(cutProblem(s.early, s, writes), fail(`${when}: snapshot ${s.name} (made through ${s.via})`)).toBeNull();
        }
        // The volume itself: the same through each side, and a row holds one stamp.
        const images = await Promise.all(vias.map((via) => readAll(h, h.client(via), vol.guid)));
        for (const img of images.slice(1)) expect(img.equals(images[0]!), fail(`${when}: the volume reads the same through ${vias.join(' and ')}`)).toBe(true);
        for (let row = 0; row < ROWS; row++) expect(typeof rowStamp(images[0]!, row), fail(`${when}: volume row ${row}`)).toBe('number');
      };
      await checkAll(['A', 'B'], 'mirrored');

      // The snapshots are listed with their origin, and read only.
      const listed = await h.run(h.client('B').list());
      for (const s of snaps) expect(listed.find((e) => e.guid === s.guid)?.origin, fail(`C_LIST shows ${s.name} as a snapshot of vol`)).toBe(vol.guid);
      expect(listed.find((e) => e.guid === snaps[0]!.guid)?.name).toBe(`vol@${snaps[0]!.name}`);
      for (const via of ['A', 'B'] as const) {
        expect(codeOf(await h.settle(h.client(via).write(snaps[0]!.guid, 0, Buffer.alloc(PAGE, 1)))), fail(`a write to a snapshot through ${via}`)).toBe('READ_ONLY');
        expect(codeOf(await h.settle(h.client(via).release(vol.guid))), fail(`releasing a volume with snapshots through ${via}`)).toBe('BUSY');
        expect(codeOf(await h.settle(h.client(via).snapshot(vol.guid, snaps[0]!.name))), fail(`a second snapshot of one name through ${via}`)).toBe('DUPLICATE');
        expect(codeOf(await h.settle(h.client(via).snapshot(vol.guid, 'a@b'))), fail(`a snapshot name with '@' through ${via}`)).toBe('BAD_FIELD');
      }

      // More writes after the last snapshot, then a kill of one controller: the snapshots stay as they were.
      await h.run(Promise.all(writers.map((c, i) => c.write(vol.guid, (i % ROWS) * ROW_BYTES, rowBytes(nextStamp++)))));
      const victim: NodeName = rng.chance(0.5) ? 'A' : 'B';
      const survivor: NodeName = victim === 'A' ? 'B' : 'A';
      h.kill(victim);
      await h.advance(2_000);
      await checkAll([survivor], `${victim} killed`);
      // A snapshot taken alone, then a write: the copy goes through to the store.
      const alone = await h.run(h.client(survivor).snapshot(vol.guid, 'alone'));
      const before = await readAll(h, h.client(survivor), vol.guid);
      await h.run(h.client(survivor).write(vol.guid, 0, rowBytes(nextStamp++)));
      expect((await readAll(h, h.client(survivor), alone.guid)).equals(before), fail('the snapshot taken alone keeps the bytes of before the write')).toBe(true);
      snaps.push({ name: 'alone', guid: alone.guid, via: survivor, startMs: clock(), endMs: clock(), early: before });

      await h.restart(victim);
      h.heal();
      await h.waitMirrored();
      await h.runUntilQuiet();
      for (const s of snaps) {
        for (const via of ['A', 'B'] as const) {
          expect((await readAll(h, h.client(via), s.guid)).equals(s.early), fail(`after the rejoin: snapshot ${s.name} through ${via}`)).toBe(true);
        }
      }
      // Deleting a snapshot frees it; the others and the volume are untouched.
      await h.run(h.client('B').release(snaps[0]!.guid));
      const after = await h.run(h.client('A').list());
      expect(after.some((e) => e.guid === snaps[0]!.guid)).toBe(false);
      for (const s of snaps.slice(1)) expect((await readAll(h, h.client('A'), s.guid)).equals(s.early), fail(`${s.name} after ${snaps[0]!.name} was deleted`)).toBe(true);
      expect(h.violations, fail('invariants')).toEqual([]);
    });
  });
}
