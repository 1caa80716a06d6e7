import { stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PagepairError } from '../../src/protocol/errors.js';
import { extentBytes, extentsOf, findExtent, largestFreeExtentBytes, storeBytesFree } from '../../src/store/extents.js';
import { FileDevice } from '../../src/store/file-device.js';
import {
  BLOCK_BYTES,
  computeGeometry,
  copyForSeq,
  encodeSuperblock,
  encodeTable,
  epochCopyOffset,
  mailboxSlotOffset,
  pageSlotOffset,
  pagesPerStripe,
  tableCopyOffset } from '../../src/store/layout.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { openOrFormatFileStore } from '../../src/store/open.js';
import { PageStore } from '../../src/store/page-store.js';
import { PAGE_HEADER_BYTES, type AllocationRecord, type PageLocation } from '../../src/store/types.js';
import { useTempDir } from './helpers/temp-dir.js';

const PAIR = '0b8e4a52-3c1f-4d2e-9a61-5f0c7d8e9a10';
const OTHER_PAIR = '7c2d1e0f-aaaa-4bbb-8ccc-0123456789ab';
const MiB = 1024 * 1024;

/** A deterministic uuid from a number. */
function guidOf(n: number): string {
  const h = n.toString(16).padStart(12, '0');
  return `00000000-0000-4000-8000-${h}`;
}

function record(n: number, over: Partial<AllocationRecord> = {}): AllocationRecord {
  return {
    guid: guidOf(n),
    name: `alloc-${n}`,
    policy: n % 2 === 0 ? 'default' : 'db-page',
    pageSizeBytes: 4096,
    pageCount: n + 1,
    dataOffset: n * BLOCK_BYTES * 8,
    createdEpoch: n % 7,
    ...over,
  };
}

async function newStore(sizeBytes = 4 * MiB, tableEntriesMax = 64): Promise<{ dev: MemoryDevice; store: PageStore }> {
  const dev = new MemoryDevice(sizeBytes);
  const store = await PageStore.format(dev, { pairId: PAIR, tableEntriesMax, nowMs: 1_700_000_000_000 });
  return { dev, store };
}

async function corruptByte(dev: MemoryDevice, offset: number): Promise<void> {
  const b = await dev.read(offset, 1);
  b[0] = b[0]! ^ 0x5a;
  await dev.write(offset, b);
}

function pattern(bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < bytes; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

async function expectCode(p: Promise<unknown>, code: string): Promise<PagepairError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PagepairError);
  expect((err as PagepairError).code).toBe(code);
  return err as PagepairError;
}

describe('geometry', () => {
  it('lays out superblocks, mailbox, table copies and data area in order', () => {
    const g = computeGeometry({ deviceBytes: 64 * MiB });
    expect(g.blockBytes).toBe(4096);
    expect(g.superblockCopyBytes).toBe(4096);
    expect(g.mailboxOffset).toBe(8192);
    expect(g.mailboxBytes).toBe(64 * 1024);
    expect(g.tableOffset).toBe(8192 + 64 * 1024);
    expect(g.tableEntriesMax).toBe(4096);
    expect(g.tableCopyBytes % 4096).toBe(0);
    expect(g.tableCopyBytes).toBeGreaterThanOrEqual(64 + 4096 * 160);
    expect(g.dataOffset).toBe(g.tableOffset + 2 * g.tableCopyBytes);
    expect(g.dataOffset % 4096).toBe(0);
    expect(g.dataOffset + g.dataBytes).toBe(64 * MiB);
  });

  it('refuses a device too small for any data', () => {
    expect(() => computeGeometry({ deviceBytes: 100_000 })).toThrow(/no data area/);
    expect(() => computeGeometry({ deviceBytes: 64 * MiB, mailboxBytes: 5000 })).toThrow(/mailboxBytes/);
  });

  it('gives every page two slots, in whole stripes, and rounds extents up to a block', () => {
    // A stripe: slot 0 of 15 pages of 4096 bytes (4160 a slot), then their slot 1.
    expect(pagesPerStripe(4096)).toBe(15);
    expect(extentBytes(4096, 1)).toBe(31 * 4096); // 2 x 15 x 4160 = 124800
    expect(extentBytes(4096, 15)).toBe(31 * 4096);
    expect(extentBytes(4096, 16)).toBe(61 * 4096); // two stripes: 249600
    expect(pageSlotOffset(0, 4096, 1, 0)).toBe(4160);
    expect(pageSlotOffset(0, 4096, 1, 1)).toBe(16 * 4160);
    expect(pageSlotOffset(0, 4096, 15, 0)).toBe(30 * 4160);
    expect(extentBytes(512, 113)).toBe(32 * 4096); // 2 x 113 x 576 = 130176
    // Pages too large for two in a stripe half: a stripe per page, its slots end to end.
    expect(pagesPerStripe(1024 * 1024)).toBe(1);
    expect(extentBytes(1024 * 1024, 2)).toBe(4 * 1024 * 1024 + 4096);
    expect(pageSlotOffset(0, 1024 * 1024, 1, 1)).toBe(3 * (1024 * 1024 + 64));
  });
});

describe('superblock', () => {
  it('format then open round-trips the superblock', async () => {
    const { dev, store } = await newStore();
    const again = await PageStore.open(dev, { pairId: PAIR.toUpperCase() });
    expect(again.superblock).toEqual(store.superblock);
    expect(again.superblock.pairId).toBe(PAIR);
    expect(again.superblock.createdAtMs).toBe(1_700_000_000_000);
    expect(again.superblockCopiesValid).toEqual([true, true]);
  });

  it('refuses another pair with STORE_MISMATCH', async () => {
    const { dev } = await newStore();
    const err = await expectCode(PageStore.open(dev, { pairId: OTHER_PAIR }), 'STORE_MISMATCH');
    expect(err.message).toContain(PAIR);
  });

  it('uses copy 1 when copy 0 is damaged, and refuses when both are', async () => {
    const { dev, store } = await newStore();
    await corruptByte(dev, 20);
    const s1 = await PageStore.open(dev, { pairId: PAIR });
    expect(s1.superblockCopiesValid).toEqual([false, true]);
    expect(s1.superblock).toEqual(store.superblock);
    await corruptByte(dev, 4096 + 30);
    const err = await expectCode(PageStore.open(dev, { pairId: PAIR }), 'STORE_CORRUPT');
    expect(err.message).toMatch(/copy 0: bad checksum; copy 1: bad checksum/);
  });

  it('refuses a blank device and a device shorter than its superblock says', async () => {
    await expectCode(PageStore.open(new MemoryDevice(MiB)), 'STORE_CORRUPT');
    const { dev } = await newStore(4 * MiB);
    const shorter = new MemoryDevice(dev.snapshot().subarray(0, 2 * MiB));
    await expectCode(PageStore.open(shorter), 'STORE_CORRUPT');
  });

  it('refuses a superblock with a valid checksum but impossible geometry', async () => {
    const { dev, store } = await newStore();
    const bad = encodeSuperblock({ ...store.superblock, geometry: { ...store.geometry, tableOffset: store.geometry.tableOffset + 4096 } });
    await dev.write(0, bad);
    await dev.write(4096, bad);
    const err = await expectCode(PageStore.open(dev), 'STORE_CORRUPT');
    expect(err.message).toMatch(/tableOffset/);
  });

  it('format rejects a bad pairId', async () => {
    await expectCode(PageStore.format(new MemoryDevice(4 * MiB), { pairId: 'nope', nowMs: 0 }), 'BAD_CONFIG');
  });
});

describe('allocation table', () => {
  it('is empty (seq 0) after format', async () => {
    const { store } = await newStore();
    expect(await store.readTable()).toMatchObject({ seq: 0, records: [] });
  });

  it('round-trips many entries, alternating copies', async () => {
    const { dev, store } = await newStore(16 * MiB, 1000);
    const records = Array.from({ length: 1000 }, (_, i) => record(i, { name: i % 3 === 0 ? `名前-${i}-ü` : `n${i}` }));
    expect(await store.writeTable(records)).toBe(1);
    expect(await store.readTable()).toMatchObject({ seq: 1, records });
    const fewer = records.slice(10, 20);
    expect(await store.writeTable(fewer)).toBe(2);
    expect(await store.readTable()).toMatchObject({ seq: 2, records: fewer });
    // A store opened afresh reads the same.
    expect(await (await PageStore.open(dev, { pairId: PAIR })).readTable()).toMatchObject({ seq: 2, records: fewer });
    expect(dev.syncCount).toBeGreaterThanOrEqual(4);
  });

  it('refuses more entries than the table holds, and names that do not fit', async () => {
    const { store } = await newStore(4 * MiB, 4);
    await expectCode(store.writeTable([0, 1, 2, 3, 4].map((n) => record(n))), 'NO_SPACE');
    const long = await expectCode(store.writeTable([record(1, { name: 'x'.repeat(65) })]), 'TOO_LARGE');
    expect(long.field).toBe('name');
    await expectCode(store.writeTable([record(1, { policy: 'p'.repeat(33) })]), 'TOO_LARGE');
    await expectCode(store.writeTable([record(1, { guid: 'not-a-guid' })]), 'BAD_FIELD');
    expect(await store.readTable()).toMatchObject({ seq: 0, records: [] });
  });

  it('falls back to the previous table when the newest copy has a flipped bit', async () => {
    const { dev, store } = await newStore();
    const v1 = [record(1), record(2)];
    const v2 = [record(3)];
    await store.writeTable(v1);
    await store.writeTable(v2);
    const g = store.geometry;
    // seq 2 lives in copy 0; flip a bit inside its one entry.
    await corruptByte(dev, tableCopyOffset(g, 0) + 64 + 50);
    expect(await store.readTable()).toMatchObject({ seq: 1, records: v1 });
    // The next write goes to copy 0 again (seq 2 is gone), keeping seq 1 safe.
    expect(await store.writeTable([record(9)])).toBe(2);
    expect(await store.readTable()).toMatchObject({ seq: 2, records: [record(9)] });
    // Flip a header bit of copy 0 as well as of copy 1: nothing valid is left.
    await corruptByte(dev, tableCopyOffset(g, 0) + 9);
    expect(await store.readTable()).toMatchObject({ seq: 1, records: v1 });
    await corruptByte(dev, tableCopyOffset(g, 1) + 3);
    await expectCode(store.readTable(), 'STORE_CORRUPT');
    await expectCode(store.writeTable([]), 'STORE_CORRUPT');
  });

  it('reads two blank copies as an empty table', async () => {
    const { dev, store } = await newStore();
    await dev.write(tableCopyOffset(store.geometry, 0), Buffer.alloc(4096));
    expect(await store.readTable()).toMatchObject({ seq: 0, records: [] });
    expect(await store.writeTable([record(5)])).toBe(1);
    expect(await store.readTable()).toMatchObject({ seq: 1, records: [record(5)] });
  });

  it('survives losing unsynced writes: writeTable syncs before it resolves', async () => {
    const { dev, store } = await newStore();
    await store.writeTable([record(1)]);
    dev.dropUnsyncedWrites();
    expect((await store.readTable()).records).toEqual([record(1)]);
  });
});

describe('pages', () => {
  const loc: PageLocation = { guid: guidOf(77), dataOffset: 8192, pageSizeBytes: 4096 };

  it('writes and reads a page with header and data in one write', async () => {
    const { dev, store } = await newStore();
    const data = pattern(4096, 1);
    const before = dev.writeCount;
    await store.writePage(loc, 3, 12, 2, data);
    expect(dev.writeCount - before).toBe(1);
    const p = await store.readPage({ ...loc, guid: loc.guid.toUpperCase() }, 3);
    expect(p.header).toMatchObject({ guid: loc.guid, page: 3, version: 12, epoch: 2 });
    expect(p.data.equals(data)).toBe(true);
    // Its neighbours are untouched and read as never written.
    for (const page of [2, 4]) {
      const n = await store.readPage(loc, page);
      expect(n.header.version).toBe(0);
      expect(n.data.equals(Buffer.alloc(4096))).toBe(true);
    }
    // The slot sits where the layout says.
    const raw = await dev.read(store.geometry.dataOffset + pageSlotOffset(8192, 4096, 3), 4);
    expect(raw.toString('latin1')).toBe('PGPG');
  });

  it('chooses the slot without reading only when told nobody else wrote the page, and only from a write a sync made durable', async () => {
    const { dev, store } = await newStore();
    const reads = (): number => store.pageCounters.slotReadsBeforeWrite;
    await store.writePage(loc, 6, 1, 1, pattern(4096, 1), undefined, true);
    expect(reads()).toBe(1); // nothing remembered yet
    await store.sync();
    await store.writePage(loc, 6, 2, 1, pattern(4096, 2), undefined, true);
    expect(reads()).toBe(1); // the other slot than the synced copy's, unread
    await store.sync();
    await store.writePage(loc, 6, 3, 1, pattern(4096, 3), undefined, false);
    expect(reads()).toBe(2); // not told: it reads
    await store.sync();
    expect((await store.readPage(loc, 6)).header.version).toBe(3);
    // Told again: it writes the slot that does not hold version 3, so both copies stand.
    await store.writePage(loc, 6, 4, 1, pattern(4096, 4), undefined, true);
    expect(reads()).toBe(2);
    const slots = [0, 1].map((slot) => store.geometry.dataOffset + pageSlotOffset(8192, 4096, 6, slot as 0 | 1));
    const versions = await Promise.all(slots.map(async (at) => (await dev.read(at + 24, 8)).readUInt32LE(0)));
    expect(versions.sort()).toEqual([3, 4]);
    // A failed write is not remembered: after the next sync the write reads again.
    await store.sync();
    dev.failNextWrite();
    await expect(store.writePage(loc, 6, 5, 1, pattern(4096, 5), undefined, true)).rejects.toThrow();
    await store.sync();
    await store.writePage(loc, 6, 5, 1, pattern(4096, 5), undefined, true);
    expect(reads()).toBe(3);
    await store.sync();
    // Zeroing an extent forgets what was remembered: the next write reads.
    await store.clearExtent(0, BLOCK_BYTES);
    await store.writePage(loc, 6, 6, 1, pattern(4096, 6), undefined, true);
    expect(reads()).toBe(4);
  });

  it('reports a data bit flip in both slots as CHECKSUM_MISMATCH naming guid and page', async () => {
    const { dev, store } = await newStore();
    await store.writePage(loc, 5, 1, 1, pattern(4096, 2));
    await store.sync();
    await store.writePage(loc, 5, 2, 1, pattern(4096, 12));
    await corruptByte(dev, store.geometry.dataOffset + pageSlotOffset(8192, 4096, 5, 1) + PAGE_HEADER_BYTES + 100);
    // The newer copy (slot 1) is damaged: the older one is read, and the damage reported.
    const older = await store.readPage(loc, 5);
    expect(older.header.version).toBe(1);
    expect(older.data.equals(pattern(4096, 2))).toBe(true);
    expect(older.tornSlot).toMatch(/data checksum/);
    expect(store.pageCounters.tornSlotsFound).toBe(1);
    await corruptByte(dev, store.geometry.dataOffset + pageSlotOffset(8192, 4096, 5, 0) + PAGE_HEADER_BYTES + 100);
    const err = await expectCode(store.readPage(loc, 5), 'CHECKSUM_MISMATCH');
    expect(err.message).toContain(loc.guid);
    expect(err.message).toContain('page 5');
  });

  it('reports a header bit flip in both slots as CHECKSUM_MISMATCH, padding included', async () => {
    for (const at of [1, 21, 30, 50, 63]) {
      const { dev, store } = await newStore();
      await store.writePage(loc, 0, 1, 1, pattern(4096, 3));
      await store.sync();
      await store.writePage(loc, 0, 2, 1, pattern(4096, 13));
      await corruptByte(dev, store.geometry.dataOffset + pageSlotOffset(8192, 4096, 0, 0) + at);
      expect((await store.readPage(loc, 0)).header.version).toBe(2);
      await corruptByte(dev, store.geometry.dataOffset + pageSlotOffset(8192, 4096, 0, 1) + at);
      await expectCode(store.readPage(loc, 0), 'CHECKSUM_MISMATCH');
    }
  });

  it('reads a page whose only written slot is damaged as never written, and says so', async () => {
    // A first write torn by a power cut looks exactly like this, and the page
    // never held anything durable before it: version 0, not an error that
    // would make the page unreadable until it is written whole.
    const { dev, store } = await newStore();
    await store.writePage(loc, 5, 1, 1, pattern(4096, 2));
    await corruptByte(dev, store.geometry.dataOffset + pageSlotOffset(8192, 4096, 5) + PAGE_HEADER_BYTES + 100);
    const p = await store.readPage(loc, 5);
    expect(p.header.version).toBe(0);
    expect(p.data.equals(Buffer.alloc(4096))).toBe(true);
    expect(p.tornSlot).toMatch(/data checksum/);
  });

  it('reads a page left by a released allocation as never written', async () => {
    const { store } = await newStore();
    await store.writePage(loc, 0, 9, 1, pattern(4096, 4));
    const reuse: PageLocation = { ...loc, guid: guidOf(78) };
    const p = await store.readPage(reuse, 0);
    expect(p.header.version).toBe(0);
    expect(p.header.guid).toBe(reuse.guid);
    expect(p.data.equals(Buffer.alloc(4096))).toBe(true);
    // A header of the same guid for another page index is stale too: a page
    // of an extent at 0 is where page 0 of a later extent was.
    // A page whose slot starts on a block, where an extent could begin.
    let page = 1;
    while (pageSlotOffset(0, 4096, page) % 4096 !== 0) page++;
    const old: PageLocation = { ...loc, dataOffset: pageSlotOffset(0, 4096, page) };
    await store.writePage(old, 0, 4, 1, pattern(4096, 8));
    const moved = await store.readPage({ ...loc, dataOffset: 0 }, page);
    expect(moved.header.version).toBe(0);
    expect(moved.data.equals(Buffer.alloc(4096))).toBe(true);
  });

  it('clearExtent removes old slots so a reuse with another page size reads zeros', async () => {
    const { store } = await newStore();
    const old = record(77, { guid: loc.guid, dataOffset: loc.dataOffset, pageSizeBytes: 4096, pageCount: 2 });
    await store.writeTable([old]);
    await store.writeTable([]); // released: its bytes stay behind
    await store.writePage(loc, 0, 1, 1, pattern(4096, 5));
    await store.writePage(loc, 1, 1, 1, pattern(4096, 6));
    const small: PageLocation = { guid: guidOf(90), dataOffset: 8192, pageSizeBytes: 512 };
    // Slot 0 of page 8 of a 512-byte allocation lands inside old page data:
    // not a header; taken for a damaged slot.
    expect((await store.readPage(small, 8)).tornSlot).toMatch(/magic/);
    await store.clearExtent(8192, extentBytes(4096, 2));
    const cleared = await store.readPage(small, 8);
    expect(cleared.header.version).toBe(0);
    expect(cleared.tornSlot).toBeUndefined();
    expect((await store.readPage(loc, 0)).header.version).toBe(0);
  });

  it('clearExtent writes nothing where no allocation ever reached, and the table remembers how far they did', async () => {
    const { dev, store } = await newStore();
    expect((await store.readTable()).dataUsedBytes).toBe(0);
    const before = dev.writeCount;
    await store.clearExtent(8192, extentBytes(4096, 64));
    expect(dev.writeCount).toBe(before);
    const a = record(1, { dataOffset: 8192, pageSizeBytes: 4096, pageCount: 2 });
    await store.writeTable([a]);
    const end = 8192 + extentBytes(4096, 2);
    expect((await store.readTable()).dataUsedBytes).toBe(end);
    await store.writeTable([]);
    expect((await store.readTable()).dataUsedBytes).toBe(end); // only grows
    // A new extent straddling the mark: the used part is zeroed, the rest left alone.
    await store.writePage({ guid: a.guid, dataOffset: 8192, pageSizeBytes: 4096 }, 1, 1, 1, pattern(4096, 9));
    const g = store.geometry;
    await dev.write(g.dataOffset + end, Buffer.from('never-zeroed'));
    await store.clearExtent(8192, extentBytes(4096, 64));
    expect((await dev.read(g.dataOffset + 8192, end - 8192)).equals(Buffer.alloc(end - 8192))).toBe(true);
    expect((await dev.read(g.dataOffset + end, 12)).toString()).toBe('never-zeroed');
  });

  it('clearExtent zeroes the whole extent on a store whose table does not record how far allocations reached', async () => {
    const { dev, store } = await newStore();
    const g = store.geometry;
    // A table as older stores wrote it: seq 1, no dataUsedBytes.
    await dev.write(tableCopyOffset(g, copyForSeq(1)), encodeTable(1, [], g.tableEntriesMax));
    expect((await store.readTable()).dataUsedBytes).toBeNull();
    await dev.write(g.dataOffset + 8192, Buffer.from('old bytes'));
    await store.clearExtent(8192, 8192);
    expect((await dev.read(g.dataOffset + 8192, 9)).equals(Buffer.alloc(9))).toBe(true);
    // The next table written records the whole data area as used: nothing is assumed zero.
    await store.writeTable([]);
    expect((await store.readTable()).dataUsedBytes).toBe(g.dataBytes);
  });

  it('refuses pages outside the data area, wrong sizes and version 0', async () => {
    const { store } = await newStore();
    const g = store.geometry;
    await expectCode(store.readPage({ ...loc, dataOffset: g.dataBytes - 4096 }, 0), 'OUT_OF_RANGE');
    await expectCode(store.readPage(loc, -1), 'OUT_OF_RANGE');
    await expectCode(store.readPage({ ...loc, dataOffset: 100 }, 0), 'OUT_OF_RANGE');
    await expectCode(store.writePage(loc, 0, 1, 1, Buffer.alloc(100)), 'BAD_FIELD');
    await expectCode(store.writePage(loc, 0, 0, 1, Buffer.alloc(4096)), 'BAD_FIELD');
  });

  it('trusts a caller-supplied crc, so a wrong one is caught on read', async () => {
    const { store } = await newStore();
    await store.writePage(loc, 0, 1, 1, pattern(4096, 6));
    await store.sync();
    await store.writePage(loc, 0, 2, 1, pattern(4096, 7), 12345);
    // The copy with the wrong crc is refused; the one before it is read.
    const p = await store.readPage(loc, 0);
    expect(p.header.version).toBe(1);
    expect(p.tornSlot).toMatch(/data checksum/);
  });
});

describe('mailbox', () => {
  it('is empty after format and round-trips slots and epoch records', async () => {
    const { store } = await newStore();
    expect(await store.readMailbox()).toEqual({ slots: [null, null], epoch: null });
    const a = { controllerId: 1, epoch: 3, counter: 41, timeMs: 1_700_000_000_123, pid: 4242, role: 2 };
    const b = { controllerId: 2, epoch: 3, counter: 7, timeMs: 1_700_000_000_456, pid: 4343, role: 1 };
    await store.writeMailboxSlot(a);
    await store.writeMailboxSlot(b);
    const e1 = await store.writeEpochRecord({ epoch: 4, activeId: 1, timeMs: 10 });
    expect(e1.seq).toBe(1);
    const e2 = await store.writeEpochRecord({ epoch: 5, activeId: 0, timeMs: 20 });
    expect(e2).toEqual({ epoch: 5, activeId: 0, timeMs: 20, seq: 2 });
    expect(await store.readMailbox()).toEqual({ slots: [a, b], epoch: e2 });
    await expectCode(store.writeMailboxSlot({ ...a, controllerId: 3 }), 'BAD_FIELD');
  });

  it('a torn slot write loses only that slot', async () => {
    const { dev, store } = await newStore();
    const a = { controllerId: 1, epoch: 1, counter: 1, timeMs: 5, pid: 1, role: 0 };
    const b = { controllerId: 2, epoch: 1, counter: 1, timeMs: 5, pid: 2, role: 0 };
    await store.writeMailboxSlot(a);
    await store.writeMailboxSlot(b);
    for (let keep = 1; keep < 64; keep++) {
      dev.tearNextWrite(keep);
      await expectCode(store.writeMailboxSlot({ ...a, counter: 1000 + keep, timeMs: 999_999 + keep }), 'IO_ERROR');
      const m = await store.readMailbox();
      expect(m.slots[1]).toEqual(b);
      // The half-written slot is either the old one (bytes unchanged so far) or unreadable.
      if (m.slots[0] !== null) expect(m.slots[0]).toEqual(a);
      await store.writeMailboxSlot(a);
    }
  });

  it('rejects a slot written into the other controller\'s block', async () => {
    const { dev, store } = await newStore();
    await store.writeMailboxSlot({ controllerId: 1, epoch: 1, counter: 1, timeMs: 5, pid: 1, role: 0 });
    const block = await dev.read(mailboxSlotOffset(store.geometry, 1), 4096);
    await dev.write(mailboxSlotOffset(store.geometry, 2), block);
    expect((await store.readMailbox()).slots[1]).toBeNull();
  });

  it('a torn epoch write at any byte leaves the previous record', async () => {
    const { dev, store } = await newStore();
    await store.writeEpochRecord({ epoch: 1, activeId: 0, timeMs: 1 });
    const prev = await store.writeEpochRecord({ epoch: 2, activeId: 1, timeMs: 2 });
    const base = dev.snapshot();
    for (let keep = 0; keep < 64; keep++) {
      const d = new MemoryDevice(base);
      const s = await PageStore.open(d, { pairId: PAIR });
      d.tearNextWrite(keep);
      await expectCode(s.writeEpochRecord({ epoch: 3, activeId: 2, timeMs: 3 }), 'IO_ERROR');
      expect((await s.readMailbox()).epoch).toEqual(prev);
      // And the next write still goes to the copy that does not hold prev.
      const next = await s.writeEpochRecord({ epoch: 3, activeId: 2, timeMs: 4 });
      expect(next.seq).toBe(3);
      expect((await s.readMailbox()).epoch).toEqual(next);
    }
  });

  it('a flipped bit in the newest epoch copy falls back to the older', async () => {
    const { dev, store } = await newStore();
    const first = await store.writeEpochRecord({ epoch: 1, activeId: 0, timeMs: 1 });
    await store.writeEpochRecord({ epoch: 2, activeId: 0, timeMs: 2 });
    await corruptByte(dev, epochCopyOffset(store.geometry, 0) + 17);
    expect((await store.readMailbox()).epoch).toEqual(first);
  });
});

describe('extents', () => {
  const B = BLOCK_BYTES;

  it('places first fit, block-aligned, in gaps and after the last extent', () => {
    expect(findExtent([], 100, 10 * B)).toBe(0);
    const used = [
      { dataOffset: 0, bytes: 2 * B },
      { dataOffset: 4 * B, bytes: B },
      { dataOffset: 8 * B, bytes: 2 * B },
    ];
    expect(findExtent(used, B, 12 * B)).toBe(2 * B);
    expect(findExtent(used, 2 * B, 12 * B)).toBe(2 * B);
    expect(findExtent(used, 3 * B, 12 * B)).toBe(5 * B);
    expect(findExtent(used, 3 * B + 1, 12 * B)).toBe(-1);
    expect(findExtent(used, 2 * B, 12 * B)).toBe(2 * B);
    expect(findExtent(used, 2 * B, 10 * B)).toBe(2 * B);
    expect(findExtent(used.slice(0, 1), 8 * B, 10 * B)).toBe(2 * B);
    expect(findExtent(used.slice(0, 1), 8 * B + 1, 10 * B)).toBe(-1);
  });

  it('ignores order and merges overlaps', () => {
    const used = [
      { dataOffset: 6 * B, bytes: 2 * B },
      { dataOffset: 0, bytes: 3 * B },
      { dataOffset: 2 * B, bytes: 2 * B },
    ];
    expect(findExtent(used, 2 * B, 8 * B)).toBe(4 * B);
    expect(findExtent(used, 3 * B, 8 * B)).toBe(-1);
    expect(storeBytesFree(used, 8 * B)).toBe(2 * B);
    expect(largestFreeExtentBytes(used, 10 * B)).toBe(2 * B);
    expect(largestFreeExtentBytes(used, 11 * B)).toBe(3 * B);
  });

  it('reports a full area', () => {
    const used = [{ dataOffset: 0, bytes: 10 * B }];
    expect(findExtent(used, 1, 10 * B)).toBe(-1);
    expect(storeBytesFree(used, 10 * B)).toBe(0);
    expect(largestFreeExtentBytes(used, 10 * B)).toBe(0);
  });

  it('reads extents off allocation records', () => {
    const recs = [record(0, { dataOffset: 0, pageCount: 3 }), record(1, { dataOffset: 31 * B, pageSizeBytes: 512, pageCount: 200 })];
    expect(extentsOf(recs)).toEqual([
      { dataOffset: 0, bytes: 31 * B }, // a stripe: 30 slots of 4160 bytes, rounded up
      { dataOffset: 31 * B, bytes: 64 * B }, // two stripes of 226 slots of 576 bytes, rounded up
    ]);
    expect(findExtent(extentsOf(recs), B, 100 * B)).toBe(95 * B);
  });
});

describe('file device and openOrFormatFileStore', () => {
  const tmp = useTempDir('pagepair-store-');

  it('creates a sparse file of the size asked and reads zeros past its end', async () => {
    const path = join(tmp.path, 'dev.bin');
    const d = await FileDevice.create(path, 3 * MiB);
    expect((await stat(path)).size).toBe(3 * MiB);
    await d.write(4096, Buffer.from('hello'));
    await d.sync();
    await d.close();
    await expectCode(d.read(0, 1), 'IO_ERROR');
    const longer = await FileDevice.open(path, { sizeBytes: 4 * MiB });
    expect((await longer.read(4096, 5)).toString()).toBe('hello');
    expect((await longer.read(3 * MiB - 2, 4)).equals(Buffer.alloc(4))).toBe(true);
    const err = await expectCode(longer.read(4 * MiB, 1), 'IO_ERROR');
    expect(err.message).toContain(path);
    await longer.close();
    await expect(FileDevice.create(path, MiB)).rejects.toMatchObject({ code: 'EEXIST' });
    await expectCode(FileDevice.open(join(tmp.path, 'missing.bin')), 'IO_ERROR');
  });

  it('gathers reads asked for together, overlapping or touching, and each gets its own bytes', async () => {
    const path = join(tmp.path, 'gather.bin');
    const d = await FileDevice.create(path, 2 * MiB);
    const content = pattern(2 * MiB, 42);
    await d.write(0, content);
    const ranges: [number, number][] = [[0, 100], [100, 50], [120, 4000], [5000, 10], [MiB - 10, 20], [2 * MiB - 7, 7], [300, 0], [64, 64]];
    for (let i = 0; i < 40; i++) ranges.push([(i * 7919) % (2 * MiB - 5000), 1 + ((i * 104729) % 4999)]);
    const got = await Promise.all(ranges.map(([at, n]) => d.read(at, n)));
    got.forEach((b, i) => expect(b.equals(content.subarray(ranges[i]![0], ranges[i]![0] + ranges[i]![1])), `read ${i}`).toBe(true));
    // Past the end of a shorter file: zeros.
    await d.close();
    const longer = await FileDevice.open(path, { sizeBytes: 3 * MiB });
    const [inside, across] = await Promise.all([longer.read(2 * MiB - 4, 4), longer.read(2 * MiB - 2, 6)]);
    expect(inside.equals(content.subarray(2 * MiB - 4))).toBe(true);
    expect(across.equals(Buffer.concat([content.subarray(2 * MiB - 2), Buffer.alloc(4)]))).toBe(true);
    await longer.close();
  });

  it('two controllers racing on a new path both open the same store', async () => {
    const path = join(tmp.path, 'race', 'deeper', 'pair.store');
    const opts = { pairId: PAIR, sizeBytes: 8 * MiB, nowMs: 1234, tableEntriesMax: 128 };
    const [a, b] = await Promise.all([openOrFormatFileStore(path, opts), openOrFormatFileStore(path, { ...opts, nowMs: 5678 })]);
    expect(a.superblock).toEqual(b.superblock);
    expect(a.superblock.pairId).toBe(PAIR);
    // What one writes, the other reads.
    await a.writeTable([record(1)]);
    expect((await b.readTable()).records).toEqual([record(1)]);
    await b.writeMailboxSlot({ controllerId: 2, epoch: 1, counter: 1, timeMs: 1, pid: 2, role: 0 });
    expect((await a.readMailbox()).slots[1]?.pid).toBe(2);
    await a.close();
    await b.close();
    const c = await openOrFormatFileStore(path, { ...opts, sizeBytes: 16 * MiB });
    expect(c.superblock).toEqual(a.superblock);
    await c.close();
    await expectCode(openOrFormatFileStore(path, { ...opts, pairId: OTHER_PAIR }), 'STORE_MISMATCH');
  });

  it('gives up on a file that never gets a superblock, naming the path', async () => {
    const path = join(tmp.path, 'empty.store');
    await writeFile(path, Buffer.alloc(MiB));
    const err = await expectCode(openOrFormatFileStore(path, { pairId: PAIR, sizeBytes: 8 * MiB, nowMs: 0, waitMs: 300 }), 'STORE_CORRUPT');
    // It gave up because waitMs ran out, not at its first read.
    expect(err.message).toContain('after waiting 300 ms for it to be formatted');
    expect(err.message).toContain(path);
  });
});
