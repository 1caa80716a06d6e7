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

  it('over a plain device: generation 0, nothing on the outcomes, refreshPool answers 0', async () => {
    const store = await PageStore.format(new MemoryDevice(4 * 1024 * 1024), { pairId: PAIR_ID, tableEntriesMax: 16, nowMs: 0 });
    expect(store.poolGeneration()).toBe(0);
    const r = await runIo(store, fence, { kind: 'readMailbox' });
    expect(r.ok && r.poolGeneration).toBe(undefined);
    expect(await runIo(store, fence, { kind: 'refreshPool' })).toEqual({ ok: true, value: 0 });
  });
});
