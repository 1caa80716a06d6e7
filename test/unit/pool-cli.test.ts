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
import { runPoolCreate, runPoolStatus } from '../../src/cli/pool.js';
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


});
