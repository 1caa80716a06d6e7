// The mirror pool device (issue 14, first step): labels that refuse a wrong,
// reordered or stale device; writes to every member; a failing member marked
// failed, with the pool's generation made durable on the others before the
// write is answered; reads served by the members left; a block store
// formatted over the pool; refresh, repair, scrub and replace (the Pool
// interface).

import { describe, expect, it } from 'vitest';
import { crc32c } from '../../src/protocol/crc32c.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { MirrorDevice } from '../../src/store/mirror-device.js';
import type { PoolMember, PoolStatus } from '../../src/store/pool.js';
import { PageStore } from '../../src/store/page-store.js';
import { POOL_LABEL_AREA_BYTES, encodePoolLabel, labelCopyFor, newestPoolLabel, type PoolLabel } from '../../src/store/pool-label.js';
import type { Device } from '../../src/store/types.js';

const MiB = 1024 * 1024;
const POOL = '4b2a9c1e-7d3f-4e8a-9b6c-2f1e0d3c4b5a';

/** A memory device whose next read fails when asked to, and whose writes may take a turn of the event loop each. */
class FlakyDevice extends MemoryDevice {
  failReads = 0;
  reads = 0;
  slowWrites = false;
  private writesSeen = 0;
  override async write(offset: number, data: Buffer): Promise<void> {
    // 0, 1 or 2 turns, in turn: a write asked for later may land first.
    if (this.slowWrites) for (let i = this.writesSeen++ % 3; i < 2; i++) await new Promise((r) => setImmediate(r));
    return super.write(offset, data);
  }
  override read(offset: number, length: number): Promise<Buffer> {
    this.reads++;
    if (this.failReads > 0) {
      this.failReads--;
      return Promise.reject(new Error('simulated EIO on read'));
    }
    return super.read(offset, length);
  }
}

function devices(n: number, bytes = 4 * MiB): { devs: FlakyDevice[]; pool: PoolMember[] } {
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
    expect(m.status().members.map((s) => s.state)).toEqual(['healthy', 'healthy', 'healthy']);
    expect(await code(m.read(m.sizeBytes - 10, 20))).toMatch(/^OUT_OF_RANGE/);
  });

  it('a member whose write fails is marked failed, and the next generation is on the others before the write is answered', async () => {
    const { devs, pool } = devices(2);
    const m = await MirrorDevice.create(pool, POOL);
    devs[1]!.failNextWrite();
    await m.write(0, Buffer.alloc(512, 1));
    expect(m.degraded).toBe(true);
    expect(m.status().members[1]).toMatchObject({ state: 'failed', reason: expect.stringContaining('write failed') });
    expect((await labelOf(devs[0]!)).generation).toBe(2);
    expect((await labelOf(devs[1]!)).generation).toBe(1);
    // Reads and writes go on with the member left.
    await m.write(512, Buffer.alloc(512, 2));
    expect((await m.read(0, 1024)).equals(Buffer.concat([Buffer.alloc(512, 1), Buffer.alloc(512, 2)]))).toBe(true);
    // Opened again, the failed member is stale: it missed writes, and serves none.
    const again = await MirrorDevice.open(pool);
    expect(again.status().members.map((s) => s.state)).toEqual(['healthy', 'stale']);
    expect(again.status().members[1]!.reason).toMatch(/stale: pool generation 1, the others are at 2/);
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
    expect(m.status().members[0]).toMatchObject({ state: 'failed', reason: expect.stringContaining('read failed') });
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
    expect(m.status().members.map((s) => s.state)).toEqual(['failed', 'healthy']);
  });

  it('refresh() sees a failure another object over the same devices wrote: the member is stale there too', async () => {
    const { devs, pool } = devices(2);
    const a = await MirrorDevice.create(pool, POOL);
    const b = await MirrorDevice.open(pool);
    devs[1]!.failNextWrite();
    await a.write(0, Buffer.alloc(512, 9));
    expect(a.generation).toBe(2);
    expect(b.status()).toMatchObject({ generation: 1, degraded: false, failuresTolerated: 1 });
    expect(await b.refresh()).toBe(2);
    expect(b.status()).toMatchObject({ generation: 2, degraded: true, failuresTolerated: 0, layout: 'mirror', rebuild: null });
    expect(b.status().members[1]).toMatchObject({ state: 'stale', reason: 'stale: pool generation 1, the others are at 2' });
    // b no longer writes the stale member.
    await b.write(4096, Buffer.alloc(512, 3));
    expect((await devs[1]!.read(POOL_LABEL_AREA_BYTES + 4096, 512)).equals(Buffer.alloc(512))).toBe(true);
    // A label gone from a member fails it at the next refresh.
    await devs[0]!.write(0, Buffer.alloc(8192));
    const c = await MirrorDevice.create(devices(3).pool, POOL);
    await c.refresh();
    expect(c.status().degraded).toBe(false);
  });

  it('repairRange and scrub find a difference written to one member behind the pool, and repair copies the first healthy member over it', async () => {
    const { devs, pool } = devices(3);
    const m = await MirrorDevice.create(pool, POOL, { copyChunkBytes: 64 * 1024 });
    await m.write(0, Buffer.alloc(m.sizeBytes, 0x11));
    await devs[2]!.write(POOL_LABEL_AREA_BYTES + 200_000, Buffer.alloc(10, 0xee));
    await devs[1]!.write(POOL_LABEL_AREA_BYTES + 3 * MiB, Buffer.alloc(1, 0xee));
    const progress: number[] = [];
    const found = await m.scrub({ repair: false, onProgress: (done, total) => progress.push(done / total) });
    expect(found).toEqual({ bytesChecked: m.sizeBytes, mismatches: 2, repaired: 0, unreadable: 0, unrepaired: 2 });
    expect(progress.at(-1)).toBe(1);
    // repairRange over the first difference only.
    await m.repairRange(190_000, 20_000);
    expect((await devs[2]!.read(POOL_LABEL_AREA_BYTES + 200_000, 10)).equals(Buffer.alloc(10, 0x11))).toBe(true);
    expect(await m.scrub({ repair: true })).toEqual({ bytesChecked: m.sizeBytes, mismatches: 1, repaired: 1, unreadable: 0, unrepaired: 0 });
    expect(await m.scrub({ repair: false })).toMatchObject({ mismatches: 0 });
    for (const d of devs) expect((await d.read(POOL_LABEL_AREA_BYTES, m.sizeBytes)).equals(Buffer.alloc(m.sizeBytes, 0x11))).toBe(true);
    // The rate limit holds a scrub back: 4 MiB at 40 MiB/s is at least ~100 ms.
    const t0 = performance.now();
    await m.scrub({ repair: false, rateBytesPerSec: 40 * MiB });
    expect(performance.now() - t0).toBeGreaterThan(80);
  });

  it('replace() rebuilds onto a new device while writes go on: every member ends equal and a scrub finds nothing', async () => {
    const { devs, pool } = devices(2);
    const m = await MirrorDevice.create(pool, POOL, { copyChunkBytes: 64 * 1024 });
    await m.write(0, Buffer.alloc(m.sizeBytes, 0x21));
    devs[1]!.failNextWrite();
    await m.write(0, Buffer.alloc(4096, 0x22));
    expect(m.status().members[1]!.state).toBe('failed');
    const spare = new FlakyDevice(4 * MiB);
    spare.slowWrites = true;
    const seen: PoolStatus[] = [];
    let writes = 0;
    let stop = false;
    // Four writers aiming at the chunk being copied and the next one, each at
    // blocks of its own (writes to one block at once land in no promised order,
    // on a file as on a pool).
    const writers = Array.from({ length: 4 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        const done = m.status().rebuild?.doneBytes ?? 0;
        const at = Math.min(m.sizeBytes - 4096 * (4 - w), done + (((i * 5) % 8) * 4 + w) * 4096);
        await m.write(at, Buffer.alloc(4096, w * 60 + (i % 60) + 1));
        writes++;
        await new Promise((r) => setImmediate(r));
      }
    });
    await m.replace(1, { name: 'spare', device: spare }, { onProgress: () => seen.push(m.status()) });
    stop = true;
    await Promise.all(writers);
    expect(writes).toBeGreaterThan(100);
    // While it was being filled it served no reads: the pool read the chunks from the member it had.
    // Its two label copies, read by the refresh before it is named in; never its data.
    expect(spare.reads).toBeLessThanOrEqual(2);
    expect(seen.length).toBe(Math.ceil(m.sizeBytes / (64 * 1024)));
    expect(seen[0]!.members[1]).toMatchObject({ name: 'spare', state: 'rebuilding' });
    expect(seen[0]!.rebuild).toMatchObject({ slot: 1, totalBytes: m.sizeBytes });
    expect(m.status()).toMatchObject({ degraded: false, rebuild: null, failuresTolerated: 1 });
    expect(m.status().members[1]).toMatchObject({ name: 'spare', state: 'healthy', reason: null });
    expect(await m.scrub({ repair: false })).toMatchObject({ mismatches: 0, unreadable: 0 });
    expect((await devs[0]!.read(POOL_LABEL_AREA_BYTES, m.sizeBytes)).equals(await spare.read(POOL_LABEL_AREA_BYTES, m.sizeBytes))).toBe(true);
    // The generation moved past the failure (2), the rebuild's announcement (3) and the rebuild (4), on both members.
    expect((await labelOf(devs[0]!)).generation).toBe(4);
    expect((await labelOf(spare)).generation).toBe(4);
    const again = await MirrorDevice.open([pool[0]!, { name: 'spare', device: spare }]);
    expect(again.status().members.map((s) => s.state)).toEqual(['healthy', 'healthy']);
  });

  it('a rebuild cut short (the pool closed mid-way) leaves the new device stale at the next open', async () => {
    const { devs, pool } = devices(2);
    const m = await MirrorDevice.create(pool, POOL, { copyChunkBytes: 64 * 1024 });
    devs[1]!.failNextWrite();
    await m.write(0, Buffer.alloc(4096, 0x31));
    const spare = new FlakyDevice(4 * MiB);
    spare.slowWrites = true;
    let chunks = 0;
    const rebuilding = m.replace(1, { name: 'spare', device: spare }, { onProgress: () => chunks++ });
    while (chunks < 5) await new Promise((r) => setImmediate(r));
    await m.close();
    expect(await code(rebuilding)).toMatch(/^SHUTTING_DOWN/);
    expect((await labelOf(spare)).generation).toBe(0);
    const again = await MirrorDevice.open([pool[0]!, { name: 'spare', device: spare }]);
    expect(again.status().members[1]).toMatchObject({ state: 'stale', reason: 'stale: a rebuild onto it did not finish' });
    expect(again.degraded).toBe(true);
  });

  it('a scrub stops when its signal is aborted, and a second rebuild at once is refused', async () => {
    const { pool } = devices(2);
    const m = await MirrorDevice.create(pool, POOL, { copyChunkBytes: 64 * 1024 });
    const ac = new AbortController();
    let chunks = 0;
    const scrub = m.scrub({ repair: false, signal: ac.signal, onProgress: () => ++chunks === 3 && ac.abort() });
    await expect(scrub).rejects.toThrow();
    expect(chunks).toBe(3);
    const spare = new FlakyDevice(4 * MiB);
    spare.slowWrites = true;
    const first = m.replace(1, { name: 'spare', device: spare });
    expect(await code(m.replace(0, { name: 'other', device: new FlakyDevice(4 * MiB) }))).toMatch(/^BUSY: .*slot 1 is being rebuilt/);
    await first;
    expect(m.status().members.map((s) => s.state)).toEqual(['healthy', 'healthy']);
  });
});

describe('mirror pool: labels name the members out (two pool objects moving the generation at once)', () => {
  it("a refresh or open during another object's half-written move judges stale only the member its labels name", async () => {
    const { devs, pool } = devices(3);
    const a = await MirrorDevice.create(pool, POOL);
    await a.write(0, Buffer.alloc(4096, 0x31));
    const b = await MirrorDevice.open(pool);
    // Another object fails dev1 and has written generation 2 (dev1 out) to dev0 only so far.
    const l0 = await labelOf(devs[0]!);
    await devs[0]!.write(labelCopyFor(2) * 4096, encodePoolLabel({ ...l0, generation: 2, failedSlots: [1], currentSince: 1 }));
    expect(await b.refresh()).toBe(2);
    expect(b.status().members.map((s) => s.state)).toEqual(['healthy', 'stale', 'healthy']);
    const c = await MirrorDevice.open(pool, { readOnly: true });
    expect(c.status().members.map((s) => s.state)).toEqual(['healthy', 'stale', 'healthy']);
    expect(c.status().members[1]!.reason).toBe('stale: pool generation 1, the others are at 2');
    expect((await c.read(0, 4096)).equals(Buffer.alloc(4096, 0x31))).toBe(true);
  });

  it('two objects failing different members at once: a later open finds both out; a move keeps the slot another named', async () => {
    const { devs, pool } = devices(4);
    const a = await MirrorDevice.create(pool, POOL);
    // b sees its own wrappers: dev2 fails on b's path only.
    const bDevs = devs.map((d) => ({ inner: d, broken: false }));
    const bPool: PoolMember[] = bDevs.map((w, i) => ({
      name: `dev${i}`,
      device: {
        get sizeBytes() {
          return w.inner.sizeBytes;
        },
        read: (o: number, n: number) => (w.broken ? Promise.reject(new Error('EIO')) : w.inner.read(o, n)),
        write: (o: number, d: Buffer) => (w.broken ? Promise.reject(new Error('EIO')) : w.inner.write(o, d)),
        sync: () => (w.broken ? Promise.reject(new Error('EIO')) : w.inner.sync()),
        close: () => Promise.resolve(),
      } as Device,
    }));
    const b = await MirrorDevice.open(bPool);
    devs[1]!.failNextWrite();
    bDevs[2]!.broken = true;
    await Promise.all([a.write(0, Buffer.alloc(4096, 0x41)), b.write(8192, Buffer.alloc(4096, 0x42))]);
    const fresh = await MirrorDevice.open(pool, { readOnly: true });
    expect(fresh.status().members.map((s) => s.state)).toEqual(['healthy', 'stale', 'stale', 'healthy']);
    expect((await fresh.read(0, 4096)).equals(Buffer.alloc(4096, 0x41))).toBe(true);
    expect((await fresh.read(8192, 4096)).equals(Buffer.alloc(4096, 0x42))).toBe(true);
  });

  it('labels written before the failed-slot set are judged by generation alone', async () => {
    const { devs, pool } = devices(2);
    const a = await MirrorDevice.create(pool, POOL);
    await a.write(0, Buffer.alloc(4096, 0x51));
    const old = Buffer.from(encodePoolLabel({ ...(await labelOf(devs[0]!)), generation: 2 }));
    old.fill(0, 9, 12);
    old.fill(0, 56, 60);
    old.writeUInt32LE(crc32c(old.subarray(0, 60)), 60);
    await devs[0]!.write(labelCopyFor(2) * 4096, old);
    expect(await labelOf(devs[0]!)).toMatchObject({ generation: 2, failedSlots: [], failedSlotsRecorded: false });
    const again = await MirrorDevice.open(pool, { readOnly: true });
    expect(again.status().members.map((s) => s.state)).toEqual(['healthy', 'stale']);
  });

  it('refuses more than 32 members at create, naming the count', async () => {
    const many = Array.from({ length: 33 }, (_, i) => ({ name: `dev${i}`, device: new MemoryDevice(64 * 1024) }));
    expect(await code(MirrorDevice.create(many, POOL))).toMatch(/^BAD_CONFIG: a mirror pool needs 2 to 32 devices, got 33/);
  });
});
