// The runtime's side of pool sync (src/runtime/store-io.ts): over a pool, the
// first outcome after the pool's generation grew carries it (so the core
// tells the partner before it acts on it), the refreshPool operation reads
// the labels again, and a mailbox read refreshes first, so arbitration reads
// the members both controllers still trust. Over a plain device nothing of
// it shows.

import { describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { MirrorDevice } from '../../src/store/mirror-device.js';
import { PageStore } from '../../src/store/page-store.js';
import { POOL_LABEL_AREA_BYTES } from '../../src/store/pool-label.js';
import type { Device } from '../../src/store/types.js';
import { runIo } from '../../src/runtime/store-io.js';
import { crc32c } from '../../src/protocol/crc32c.js';

const PAIR_ID = '0b7c2d4e-1f3a-4c5b-8d6e-7f8091a2b3c4';
const BYTES = POOL_LABEL_AREA_BYTES + 4 * 1024 * 1024;
const fence = { fencePartner: () => Promise.resolve(false), partnerGone: () => Promise.resolve(false) };

/** A member as one controller reaches it; broken, every request fails. */
class Path implements Device {
  broken = false;
  constructor(private readonly inner: MemoryDevice) {}
  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }
  read(offset: number, length: number): Promise<Buffer> {
    return this.broken ? Promise.reject(new Error('EIO')) : this.inner.read(offset, length);
  }
  write(offset: number, data: Buffer): Promise<void> {
    return this.broken ? Promise.reject(new Error('EIO')) : this.inner.write(offset, data);
  }
  sync(): Promise<void> {
    return this.broken ? Promise.reject(new Error('EIO')) : this.inner.sync();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Member 0 as a controller reaches it: label writes (the first 8 KiB) wait while holdLabels, until release(). */
class SlowLabels implements Device {
  holdLabels = false;
  private waiting: (() => void)[] = [];
  constructor(private readonly inner: MemoryDevice) {}
  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }
  read(offset: number, length: number): Promise<Buffer> {
    return this.inner.read(offset, length);
  }
  write(offset: number, data: Buffer): Promise<void> {
    if (!this.holdLabels || offset >= POOL_LABEL_AREA_BYTES) return this.inner.write(offset, data);
    return new Promise<void>((resolve) => this.waiting.push(resolve)).then(() => this.inner.write(offset, data));
  }
  release(): void {
    this.holdLabels = false;
    for (const go of this.waiting.splice(0)) go();
  }
  sync(): Promise<void> {
    return this.inner.sync();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

async function twoSides(): Promise<{ a: PageStore; b: PageStore; path: Path; bPool: MirrorDevice }> {
  const members = [new MemoryDevice(BYTES), new MemoryDevice(BYTES)];
  const formatted = await MirrorDevice.create(members.map((device, i) => ({ name: `m${i}`, device })));
  await PageStore.format(formatted, { pairId: PAIR_ID, tableEntriesMax: 16, nowMs: 0 });
  const path = new Path(members[1]!);
  const aPool = await MirrorDevice.open([{ name: 'm0', device: members[0]! }, { name: 'm1', device: path }]);
  const bPool = await MirrorDevice.open(members.map((device, i) => ({ name: `m${i}`, device })));
  return { a: await PageStore.open(aPool), b: await PageStore.open(bPool), path, bPool };
}

describe('store I/O over a pool', () => {
  it('the first outcome after a member failed carries the new generation, and only that one', async () => {
    const { a, path } = await twoSides();
    expect(a.poolGeneration()).toBe(1);
    expect((await runIo(a, fence, { kind: 'readTable' })).poolGeneration).toBe(1);
    expect((await runIo(a, fence, { kind: 'readTable' })).poolGeneration).toBeUndefined();
    path.broken = true;
    const failing = await runIo(a, fence, { kind: 'sync' });
    expect(failing).toMatchObject({ ok: true, poolGeneration: 2 });
    expect((await runIo(a, fence, { kind: 'sync' })).poolGeneration).toBeUndefined();
  });

  it('refreshPool reads the labels again: the partner stops using the member; a mailbox read refreshes first', async () => {
    const { a, b, path, bPool } = await twoSides();
    path.broken = true;
    await runIo(a, fence, { kind: 'sync' });
    expect(bPool.status().members[1]!.state).toBe('healthy');
    expect(await runIo(b, fence, { kind: 'refreshPool' })).toMatchObject({ ok: true, value: 2, poolGeneration: 2 });
    expect(bPool.status().members[1]!.state).toBe('stale');

    const other = await twoSides();
    other.path.broken = true;
    await runIo(other.a, fence, { kind: 'sync' });
    expect(await runIo(other.b, fence, { kind: 'readMailbox' })).toMatchObject({ ok: true, poolGeneration: 2 });
    expect(other.bPool.status().members[1]!.state).toBe('stale');
  });

  it('a controller whose own label read fails moves the generation on (the partner must learn of it too)', async () => {
    const { a, path } = await twoSides();
    path.broken = true;
    expect(await runIo(a, fence, { kind: 'refreshPool' })).toMatchObject({ ok: true, value: 2 });
  });

  it('a write that reached the members left while the next generation was being written is answered after it, carrying it', async () => {
    const members = [new MemoryDevice(BYTES), new MemoryDevice(BYTES)];
    const formatted = await MirrorDevice.create(members.map((device, i) => ({ name: `m${i}`, device })));
    const store = await PageStore.format(formatted, { pairId: PAIR_ID, tableEntriesMax: 16, nowMs: 0 });
    expect(store.poolGeneration()).toBe(1);
    const m0 = new SlowLabels(members[0]!);
    const path = new Path(members[1]!);
    const a = await PageStore.open(await MirrorDevice.open([{ name: 'm0', device: m0 }, { name: 'm1', device: path }]));
    await runIo(a, fence, { kind: 'readTable' });
    path.broken = true;
    m0.holdLabels = true;
    // The sync fails member 1; its generation label waits on member 0.
    const failing = runIo(a, fence, { kind: 'sync' });
    await new Promise((r) => setImmediate(r));
    // A write begun now goes to member 0 only, and must not be answered before the label is.
    let answered = false;
    const data = Buffer.alloc(4096, 7);
    const loc = { guid: '5d9e3c1a-2b4f-4e6d-8a7b-9c0d1e2f3a4b', dataOffset: 0, pageSizeBytes: 4096 };
    const write = runIo(a, fence, { kind: 'writePage', loc, page: 0, version: 1, epoch: 1, data, crc: crc32c(data), slotsOurs: false }).then((o) => {
      answered = true;
      return o;
    });
    await new Promise((r) => setImmediate(r));
    expect(answered).toBe(false);
    m0.release();
    const outcomes = [await failing, await write];
    expect(outcomes.every((o) => o.ok)).toBe(true);
    expect(outcomes.map((o) => o.poolGeneration).filter((g) => g !== undefined)).toEqual([2]);
  });

  it('over a plain device: generation 0, nothing on the outcomes, refreshPool answers 0', async () => {
    const store = await PageStore.format(new MemoryDevice(4 * 1024 * 1024), { pairId: PAIR_ID, tableEntriesMax: 16, nowMs: 0 });
    expect(store.poolGeneration()).toBe(0);
    const r = await runIo(store, fence, { kind: 'readMailbox' });
    expect(r.ok && r.poolGeneration).toBe(undefined);
    expect(await runIo(store, fence, { kind: 'refreshPool' })).toEqual({ ok: true, value: 0 });
  });
});
