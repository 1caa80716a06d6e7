// `pagepair pool create` and `pool status` (offline): a pool made over
// devices that held other bytes is scrubbed with repair before the store is
// formatted, so its redundancy agrees with its data; a labelled device is
// not relabelled without --force; status reads labels and states and
// writes nothing; scrub finds (and with --repair fixes) a difference made
// behind the pool; replace rebuilds a slot onto a new file.

import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runPoolCreate, runPoolReplace, runPoolScrub, runPoolStatus } from '../../src/cli/pool.js';
import { PageStore } from '../../src/store/page-store.js';
import { POOL_LABEL_AREA_BYTES } from '../../src/store/pool-label.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import { openMembersLoose, openPool } from '../../src/store/open-pool.js';
import { useTempDir } from './helpers/temp-dir.js';

const MiB = 1024 * 1024;
const PAIR = '6a1f0c52-8d3e-4b7a-9f21-0c4d5e6f7a8b';

describe('pool create and pool status', () => {
  const tmp = useTempDir('pagepair-pool-cli-');

  for (const [layout, n] of [
    ['mirror', 2],
    ['parity', 3],
    ['parity2', 4],
  ] as const) {
    it(`${layout}: over devices full of other bytes, the new pool is scrubbed and agrees with itself`, async () => {
      const paths = Array.from({ length: n }, (_, i) => join(tmp.path, `${layout}-d${i}.img`));
      for (const p of paths) await writeFile(p, randomBytes(8 * MiB));
      const lines: string[] = [];
      const made = await runPoolCreate(paths, { layout, chunkBytes: '16384', pairId: PAIR }, (l) => lines.push(l));
      expect(made.scrubRepaired).toBeGreaterThan(0);
      expect(lines.at(-1)).toMatch(/scrubbing the new pool .*: 100% of/);
      expect(made.pool).toMatchObject({ layout, generation: 1, degraded: false });
      expect(made.storeNote).toMatch(new RegExp(`formatted for pair ${PAIR}`));

      const members = await openMembersLoose({ layout, chunkBytes: 0, devices: paths.map((path) => ({ kind: 'file', path })), deviceBytes: 0 });
      const pool = await openPool(layout, members, { readOnly: true });
      expect(await pool.scrub({ repair: false })).toMatchObject({ mismatches: 0, unreadable: 0 });
      await pool.close();

      const before = await Promise.all(paths.map((p) => readFile(p)));
      const st = await runPoolStatus(paths, {});
      expect(st.pool).toMatchObject({ layout, degraded: false });
      expect(st.members.map((m) => [m.label?.slot, m.label?.generation, m.problem])).toEqual(paths.map((_, i) => [i, 1, null]));
      expect(st.store).toMatch(new RegExp(`^formatted for pair ${PAIR}`));
      const after = await Promise.all(paths.map((p) => readFile(p)));
      after.forEach((b, i) => expect(b.equals(before[i]!)).toBe(true));

      const again = await runPoolCreate(paths, { layout, chunkBytes: '16384', pairId: PAIR }).catch((e: unknown) => e);
      expect(isPagepairError(again, 'STORE_MISMATCH') && /already hold a pool label: give --force/.test(again.message)).toBe(true);
      const forced = await runPoolCreate(paths, { layout, chunkBytes: '16384', pairId: PAIR, force: true });
      expect(forced.pool.poolId).not.toBe(made.pool.poolId);
    });
  }

  it('makes missing files sparse at --device-bytes, with no scrub, and needs a pair id', async () => {
    const paths = [join(tmp.path, 'new', 'a.img'), join(tmp.path, 'new', 'b.img')];
    const noPair = await runPoolCreate(paths, { layout: 'mirror' }).catch((e: unknown) => e);
    expect(isPagepairError(noPair, 'BAD_FIELD') && /--pair-id/.test(noPair.message)).toBe(true);
    const made = await runPoolCreate(paths, { layout: 'mirror', deviceBytes: '16MiB', pairId: PAIR });
    expect(made.scrubRepaired).toBeNull();
    expect(made.pool.sizeBytes).toBe(16 * MiB - 8192);
    const st = await runPoolStatus([paths[0]!, join(tmp.path, 'new', 'missing.img')], {});
    expect(st.members[1]!.problem).toMatch(/^cannot open: /);
    expect(st.pool).toMatchObject({ degraded: true });
  });

  for (const [layout, n] of [
    ['mirror', 2],
    ['parity', 3],
  ] as const) {
    it(`${layout}: pool scrub finds a byte changed behind the pool and --repair fixes it; pool replace rebuilds a slot onto a new file`, async () => {
      const paths = Array.from({ length: n }, (_, i) => join(tmp.path, `fix-${layout}-d${i}.img`));
      await runPoolCreate(paths, { layout, chunkBytes: '16384', deviceBytes: '8MiB', pairId: PAIR });
      // A page written through the store over the pool.
      const { pool: p0 } = await (async () => {
        const members = await openMembersLoose({ layout, chunkBytes: 0, devices: paths.map((path) => ({ kind: 'file', path })), deviceBytes: 0 });
        return { pool: await openPool(layout, members) };
      })();
      const store = await PageStore.open(p0, { pairId: PAIR });
      const loc = { guid: '00000000-0000-4000-8000-000000000003', dataOffset: 0, pageSizeBytes: 4096 };
      await store.writePage(loc, 0, 1, 1, Buffer.alloc(4096, 0x77));
      await store.close();
      expect((await runPoolScrub(paths, {})).report.mismatches).toBe(0);
      // One byte changed on the last member, behind the pool's back, past the labels and the metadata.
      const victim = paths[n - 1]!;
      const bytes = await readFile(victim);
      const at = POOL_LABEL_AREA_BYTES + 2 * MiB + 5;
      bytes[at] = bytes[at]! ^ 0xff;
      await writeFile(victim, bytes);
      const lines: string[] = [];
      const found = await runPoolScrub(paths, {}, (l) => lines.push(l));
      expect(found.report).toMatchObject({ mismatches: 1, repaired: 0, unreadable: 0 });
      expect(lines.at(-1)).toMatch(/^scrubbing: 100% of/);
      expect((await runPoolScrub(paths, { repair: true })).report).toMatchObject({ mismatches: 1, repaired: 1 });
      expect((await runPoolScrub(paths, {})).report.mismatches).toBe(0);

      // Slot 1 onto a new file (made at the members' size), then the pool is healthy at the next generation.
      const spare = join(tmp.path, `fix-${layout}-spare.img`);
      const replaced = await runPoolReplace(paths, { slot: '1', with: spare });
      expect(replaced.pool).toMatchObject({ degraded: false, generation: 3 });
      expect(replaced.pool.members[1]).toMatchObject({ name: spare, state: 'healthy' });
      const withSpare = paths.map((p, i) => (i === 1 ? spare : p));
      const st = await runPoolStatus(withSpare, {});
      expect(st.pool).toMatchObject({ degraded: false, generation: 3 });
      expect((await runPoolScrub(withSpare, {})).report.mismatches).toBe(0);
      // The old device is stale now, and the page reads back with the spare in its place.
      const old = await runPoolStatus(paths, {});
      expect(old.pool!.members[1]!.state).toBe('stale');
      const members = await openMembersLoose({ layout, chunkBytes: 0, devices: withSpare.map((path) => ({ kind: 'file', path })), deviceBytes: 0 });
      const again = await PageStore.open(await openPool(layout, members), { pairId: PAIR });
      expect((await again.readPage(loc, 0)).data.equals(Buffer.alloc(4096, 0x77))).toBe(true);
      await again.close();
    });
  }
});
