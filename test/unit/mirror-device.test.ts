// The mirror pool device (issue 14, first step): labels that refuse a wrong,
// reordered or stale device; writes to every member; a failing member marked
// failed, with the pool's generation made durable on the others before the
// write is answered; reads served by the members left; a block store
// formatted over the pool.

import { describe, expect, it } from 'vitest';
import { isPagepairError } from '../../src/protocol/errors.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { MirrorDevice, type PoolDevice } from '../../src/store/mirror-device.js';
import { PageStore } from '../../src/store/page-store.js';
import { POOL_LABEL_AREA_BYTES, encodePoolLabel, newestPoolLabel, type PoolLabel } from '../../src/store/pool-label.js';
import type { Device } from '../../src/store/types.js';

const MiB = 1024 * 1024;
const POOL = '4b2a9c1e-7d3f-4e8a-9b6c-2f1e0d3c4b5a';

/** A memory device whose next read fails when asked to. */
class FlakyDevice extends MemoryDevice {
  failReads = 0;
  override read(offset: number, length: number): Promise<Buffer> {
    if (this.failReads > 0) {
      this.failReads--;
      return Promise.reject(new Error('simulated EIO on read'));
    }
    return super.read(offset, length);
  }
}

function devices(n: number, bytes = 4 * MiB): { devs: FlakyDevice[]; pool: PoolDevice[] } {
  const devs = Array.from({ length: n }, () => new FlakyDevice(bytes));
  return { devs, pool: devs.map((device, i) => ({ name: `dev${i}`, device })) };
}

async function labelOf(d: Device): Promise<PoolLabel> {
  const l = newestPoolLabel(await d.read(0, 64), await d.read(4096, 64));
  if (typeof l === 'string') throw new Error(l);
  return l;
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (err) {
    return isPagepairError(err) ? `${err.code}: ${err.message}` : String(err);
  }
}

describe('mirror pool device', () => {
  it('writes every member past its labels, and reads back', async () => {
    const { devs, pool } = devices(3);
    const m = await MirrorDevice.create(pool, POOL);
    expect(m.sizeBytes).toBe(4 * MiB - POOL_LABEL_AREA_BYTES);
    const data = Buffer.alloc(4096, 0x5c);
    await m.write(8192, data);
    await m.sync();
    for (const d of devs) expect((await d.read(POOL_LABEL_AREA_BYTES + 8192, 4096)).equals(data)).toBe(true);
    for (let i = 0; i < 3; i++) expect((await m.read(8192, 4096)).equals(data)).toBe(true);
    expect(m.status().map((s) => s.state)).toEqual(['healthy', 'healthy', 'healthy']);
    expect(await code(m.read(m.sizeBytes - 10, 20))).toMatch(/^OUT_OF_RANGE/);
  });

  it('a member whose write fails is marked failed, and the next generation is on the others before the write is answered', async () => {
    const { devs, pool } = devices(2);
    const m = await MirrorDevice.create(pool, POOL);
    devs[1]!.failNextWrite();
    await m.write(0, Buffer.alloc(512, 1));
    expect(m.degraded).toBe(true);
    expect(m.status()[1]).toMatchObject({ state: 'failed', reason: expect.stringContaining('write failed') });
    expect((await labelOf(devs[0]!)).generation).toBe(2);
    expect((await labelOf(devs[1]!)).generation).toBe(1);
    // Reads and writes go on with the member left.
    await m.write(512, Buffer.alloc(512, 2));
    expect((await m.read(0, 1024)).equals(Buffer.concat([Buffer.alloc(512, 1), Buffer.alloc(512, 2)]))).toBe(true);
    // Opened again, the failed member is stale: it missed writes, and serves none.
    const again = await MirrorDevice.open(pool);
    expect(again.status().map((s) => s.state)).toEqual(['healthy', 'stale']);
    expect(again.status()[1]!.reason).toMatch(/stale: pool generation 1, the others are at 2/);
    for (let i = 0; i < 4; i++) expect((await again.read(512, 512)).equals(Buffer.alloc(512, 2))).toBe(true);
  });

  it('a read that fails on one member is served by another, which marks the first failed', async () => {
    const { devs, pool } = devices(2);
    const m = await MirrorDevice.create(pool, POOL);
    await m.write(0, Buffer.alloc(100, 7));
    devs[0]!.failReads = 1;
    devs[1]!.failReads = 0;
    // Reads take turns: whichever member's read fails, the other answers.
    for (let i = 0; i < 2; i++) expect((await m.read(0, 100)).equals(Buffer.alloc(100, 7))).toBe(true);
    expect(m.status()[0]).toMatchObject({ state: 'failed', reason: expect.stringContaining('read failed') });
  });

  it('fails with IO_ERROR, naming every device, when no member takes a write', async () => {
    const { devs, pool } = devices(2);
    const m = await MirrorDevice.create(pool, POOL);
    devs[0]!.failNextWrite();
    devs[1]!.failNextWrite();
    expect(await code(m.write(0, Buffer.alloc(10)))).toMatch(/^IO_ERROR: pool .*write failed on every device \(dev0: write failed.*dev1: write failed/);
  });

  it('refuses a device of another pool, a reordered one, a pool given with a device missing, and a device with no label', async () => {
    const { devs, pool } = devices(2);
    await MirrorDevice.create(pool, POOL);
    const other = devices(2);
    await MirrorDevice.create(other.pool, '9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b');
    expect(await code(MirrorDevice.open([pool[0]!, other.pool[1]!]))).toMatch(/^STORE_MISMATCH: device dev1 belongs to pool 9e8d7c6b/);
    expect(await code(MirrorDevice.open([pool[1]!, pool[0]!]))).toMatch(/^STORE_MISMATCH: device dev1 fills slot 1 of the pool, it was given as slot 0/);
    expect(await code(MirrorDevice.open([pool[0]!]))).toMatch(/^STORE_MISMATCH: device dev0 is one of a pool of 2 devices, 1 were given/);
    expect(await code(MirrorDevice.open([pool[0]!, { name: 'blank', device: new MemoryDevice(4 * MiB) }]))).toMatch(/^STORE_MISMATCH: device blank: no pool label/);
    expect(devs.length).toBe(2);
  });

  it('a label torn on one copy leaves the other: the pool opens at the older generation', async () => {
    const { devs, pool } = devices(2);
    const m = await MirrorDevice.create(pool, POOL);
    devs[1]!.failNextWrite();
    await m.write(0, Buffer.alloc(8));
    // Generation 2 went to copy 0 of dev0; damage it: copy 1 (generation 1) is what is left.
    const torn = encodePoolLabel({ poolId: POOL, layout: 'mirror', slot: 0, devices: 2, generation: 2, dataBytes: m.sizeBytes });
    torn[30] = torn[30]! ^ 0xff;
    await devs[0]!.write(0, torn);
    expect((await labelOf(devs[0]!)).generation).toBe(1);
  });

  it('carries a block store: format, write a page, lose a member, read it back', async () => {
    const { devs, pool } = devices(2, 16 * MiB);
    const m = await MirrorDevice.create(pool, POOL);
    const store = await PageStore.format(m, { pairId: '6a1f0c52-8d3e-4b7a-9f21-0c4d5e6f7a8b', tableEntriesMax: 16, nowMs: 0 });
    const loc = { guid: '00000000-0000-4000-8000-000000000001', dataOffset: 0, pageSizeBytes: 4096 };
    await store.writePage(loc, 3, 1, 1, Buffer.alloc(4096, 0x42));
    await store.sync();
    devs[0]!.failReads = 1000;
    const page = await store.readPage(loc, 3);
    expect(page.data.equals(Buffer.alloc(4096, 0x42))).toBe(true);
    expect(m.status().map((s) => s.state)).toEqual(['failed', 'healthy']);
  });
});
