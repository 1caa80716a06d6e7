// Opening the store over a pool (store.pool): two controllers starting at
// once over devices that do not exist yet; exactly one creates the pool and
// formats the store, the other opens what it made. A pool of remote devices
// only is never created by a controller. A member that cannot be opened
// does not keep an existing pool from opening: it opens degraded, and a
// mirror's generation moves past the missing member, so it is stale when it
// comes back.

import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isPagepairError } from '../../src/protocol/errors.js';
import { openOrCreatePoolStore, poolCreateLockPath, type PoolSpec } from '../../src/store/open-pool.js';
import { planPool } from '../../src/store/pool-plan.js';
import { useTempDir } from './helpers/temp-dir.js';

const MiB = 1024 * 1024;
const PAIR = '6a1f0c52-8d3e-4b7a-9f21-0c4d5e6f7a8b';

describe('openOrCreatePoolStore', () => {
  const tmp = useTempDir('pagepair-open-pool-');

  for (const [layout, n] of [
    ['mirror', 2],
    ['parity', 3],
  ] as const) {
    it(`${layout}: of two racing openers exactly one creates the pool and formats the store; both then share it`, async () => {
      const spec: PoolSpec = { layout, chunkBytes: layout === 'mirror' ? 0 : 64 * 1024, deviceBytes: 32 * MiB, devices: Array.from({ length: n }, (_, i) => ({ kind: 'file' as const, path: join(tmp.path, layout, `d${i}.img`) })) };
      const events: string[] = [];
      const open = () => openOrCreatePoolStore(spec, { pairId: PAIR, nowMs: 1, tableEntriesMax: 64, onEvent: (what) => events.push(what) });
      const [a, b] = await Promise.all([open(), open()]);
      expect(events).toEqual(['creating pool']);
      expect(a.store.superblock).toEqual(b.store.superblock);
      expect(a.pool.poolId).toBe(b.pool.poolId);
      expect(a.pool.status()).toMatchObject({ layout, degraded: false, generation: 1 });
      const plan = planPool({ layout, devices: n, chunkBytes: 64 * 1024, deviceBytes: 32 * MiB, tableEntriesMax: 64 });
      expect(a.pool.mirroredPrefixBytes).toBe(plan.mirroredPrefixBytes);
      expect(a.pool.sizeBytes).toBe(plan.poolBytes);
      if (layout !== 'mirror') expect(a.store.superblock.geometry.dataOffset).toBe(a.pool.mirroredPrefixBytes);
      // What one writes the other reads.
      const loc = { guid: '00000000-0000-4000-8000-000000000001', dataOffset: 0, pageSizeBytes: 4096 };
      await a.store.writePage(loc, 5, 1, 1, Buffer.alloc(4096, 0x5a));
      await a.store.sync();
      expect((await b.store.readPage(loc, 5)).data.equals(Buffer.alloc(4096, 0x5a))).toBe(true);
      expect(existsSync(poolCreateLockPath(spec)!)).toBe(false);
      await a.store.close();
      await b.store.close();
      // The race again, on fresh devices: the one that did not create never opens before a member file is made
      // (it would open the pool with that member missing, degraded for good).
      for (let round = 0; round < 6; round++) {
        const again: PoolSpec = { ...spec, devices: spec.devices.map((d, i) => ({ kind: 'file' as const, path: join(tmp.path, `${layout}-${round}`, `d${i}.img`) })) };
        const both = await Promise.all([0, 1].map(() => openOrCreatePoolStore(again, { pairId: PAIR, nowMs: 1, tableEntriesMax: 64 })));
        for (const x of both) {
          expect(x.pool.status().degraded, JSON.stringify(x.pool.status().members)).toBe(false);
          await x.store.close();
        }
      }
      // Opened again: nothing is created.
      const c = await open();
      expect(events).toEqual(['creating pool']);
      expect(c.store.superblock.pairId).toBe(PAIR);
      await c.store.close();
    });
  }

  it('refuses to create a pool of remote devices only: pagepair pool create does that', async () => {
    const spec: PoolSpec = { layout: 'mirror', chunkBytes: 0, deviceBytes: 32 * MiB, devices: [] };
    const err = await openOrCreatePoolStore(spec, { pairId: PAIR, nowMs: 1 }).catch((e: unknown) => e);
    expect(isPagepairError(err, 'STORE_MISMATCH') && /pagepair pool create/.test(err.message)).toBe(true);
  });

  for (const [layout, n] of [
    ['mirror', 2],
    ['parity', 3],
  ] as const) {
    it(`${layout}: a member file gone opens the pool degraded; every page reads back`, async () => {
      const spec: PoolSpec = { layout, chunkBytes: layout === 'mirror' ? 0 : 64 * 1024, deviceBytes: 32 * MiB, devices: Array.from({ length: n }, (_, i) => ({ kind: 'file' as const, path: join(tmp.path, `gone-${layout}`, `d${i}.img`) })) };
      const open = () => openOrCreatePoolStore(spec, { pairId: PAIR, nowMs: 1, tableEntriesMax: 64 });
      const loc = { guid: '00000000-0000-4000-8000-000000000002', dataOffset: 0, pageSizeBytes: 4096 };
      const first = await open();
      await first.store.writePage(loc, 1, 1, 1, Buffer.alloc(4096, 0x11));
      await first.store.close();
      const gone = (spec.devices[1] as { path: string }).path;
      await rename(gone, `${gone}.away`);
      const degraded = await open();
      expect(degraded.pool.status()).toMatchObject({ degraded: true });
      expect(degraded.pool.status().members[1]).toMatchObject({ state: 'failed', reason: expect.stringContaining('cannot be opened') });
      expect((await degraded.store.readPage(loc, 1)).data.equals(Buffer.alloc(4096, 0x11))).toBe(true);
      await degraded.store.writePage(loc, 2, 1, 1, Buffer.alloc(4096, 0x22));
      await degraded.store.close();
      if (layout !== 'mirror') return;
      // Back with what it held before: it missed a write, and the labels say so.
      expect(degraded.pool.generation).toBe(2);
      await rename(`${gone}.away`, gone);
      const back = await open();
      expect(back.pool.status().members[1]).toMatchObject({ state: 'stale', reason: 'stale: pool generation 1, the others are at 2' });
      for (let i = 0; i < 4; i++) expect((await back.store.readPage(loc, 2)).data.equals(Buffer.alloc(4096, 0x22))).toBe(true);
      await back.store.close();
    });
  }

  it('takes over a create lock left by a process of this machine that is gone, and waits on one whose maker lives', async () => {
    const spec: PoolSpec = { layout: 'mirror', chunkBytes: 0, deviceBytes: 32 * MiB, devices: [0, 1].map((i) => ({ kind: 'file' as const, path: join(tmp.path, 'stale-lock', `d${i}.img`) })) };
    const lock = poolCreateLockPath(spec)!;
    await mkdir(join(tmp.path, 'stale-lock'), { recursive: true });
    // A live maker (ourselves, as another process would be): the opener waits, then says why.
    await writeFile(lock, `${hostname()} ${process.ppid}\n`);
    const waited = await openOrCreatePoolStore(spec, { pairId: PAIR, nowMs: 1, waitMs: 300 }).catch((e: unknown) => e);
    expect(isPagepairError(waited, 'STORE_CORRUPT') && waited.message.includes(`${lock} is still there`)).toBe(true);
    // A dead maker: a process that has exited.
    const gone = spawnSync(process.execPath, ['-e', '0']).pid;
    await writeFile(lock, `${hostname()} ${gone}\n`);
    const events: string[] = [];
    const opened = await openOrCreatePoolStore(spec, { pairId: PAIR, nowMs: 1, waitMs: 300, onEvent: (what) => events.push(what) });
    expect(events).toEqual(['creating pool']);
    expect(existsSync(lock)).toBe(false);
    await opened.store.close();
  });
});
