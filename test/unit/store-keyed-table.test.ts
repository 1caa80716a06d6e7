// The allocation table keeps a keyed allocation's key digest (entry byte 38
// bit 0 and bytes 136..152, docs/formats.md), so a restart of both
// controllers still refuses it to connections without the key. A table
// written before keys existed (reserved bytes zero, version 1) still opens,
// every allocation in it unkeyed; a keyed table is written as version 2, so a
// controller from before keys refuses it rather than serving it to everyone.

import { describe, expect, it } from 'vitest';
import { decodeTable, encodeTable, RECORD_VERSION, TABLE_ENTRY_BYTES, TABLE_HEADER_BYTES, TABLE_VERSION_KEYED } from '../../src/store/layout.js';
import { crc32c } from '../../src/protocol/crc32c.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { PageStore } from '../../src/store/page-store.js';
import type { AllocationRecord } from '../../src/store/types.js';
import { keyDigest } from '../../src/core/access-keys.js';

const PAIR = '6a1f0c52-8d3e-4b7a-9f21-0c4d5e6f7a8b';

function record(n: number, keyed: boolean): AllocationRecord {
  const guid = `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`;
  const r: AllocationRecord = { guid, name: `r${n}`, policy: 'default', pageSizeBytes: 4096, pageCount: 2 + n, dataOffset: n * 65536, createdEpoch: 3 };
  if (keyed) r.keyDigest = keyDigest(guid, Buffer.alloc(16, n));
  return r;
}

/** Re-seals the entries CRC and the header CRC after an edit. */
function reseal(b: Buffer, entries: number): Buffer {
  b.writeUInt32LE(crc32c(b.subarray(TABLE_HEADER_BYTES, TABLE_HEADER_BYTES + entries * TABLE_ENTRY_BYTES)), 24);
  b.writeUInt32LE(crc32c(b.subarray(0, TABLE_HEADER_BYTES - 4)), TABLE_HEADER_BYTES - 4);
  return b;
}

describe('allocation table: keyed entries', () => {
  it('round-trips the key digest of keyed entries and none for the others', () => {
    const records = [record(1, true), record(2, false), record(3, true)];
    const b = encodeTable(7, records, 16);
    expect(b.readUInt32LE(4)).toBe(TABLE_VERSION_KEYED);
    const back = decodeTable(b, 16);
    if (typeof back === 'string') throw new Error(back);
    expect(back.records).toEqual(records);
    expect(back.records[1]!.keyDigest).toBeUndefined();
    // The digest sits at 136 of its entry, the flag at 38.
    const e0 = TABLE_HEADER_BYTES;
    expect(b[e0 + 38]).toBe(1);
    expect(b.subarray(e0 + 136, e0 + 152).equals(records[0]!.keyDigest!)).toBe(true);
    expect(b[e0 + TABLE_ENTRY_BYTES + 38]).toBe(0);
    expect(b.subarray(e0 + TABLE_ENTRY_BYTES + 136, e0 + 2 * TABLE_ENTRY_BYTES).every((x) => x === 0)).toBe(true);
  });

  it('writes a table without keyed entries as before (version 1), byte for byte', () => {
    const b = encodeTable(2, [record(1, false), record(2, false)], 16);
    expect(b.readUInt32LE(4)).toBe(RECORD_VERSION);
    const back = decodeTable(b, 16);
    if (typeof back === 'string') throw new Error(back);
    expect(back.records.map((r) => r.keyDigest)).toEqual([undefined, undefined]);
    for (const i of [0, 1]) expect(b.subarray(TABLE_HEADER_BYTES + i * TABLE_ENTRY_BYTES + 136, TABLE_HEADER_BYTES + (i + 1) * TABLE_ENTRY_BYTES).every((x) => x === 0)).toBe(true);
  });

  it('refuses an entry with flag bits it does not know, and a table version it does not know', () => {
    const b = encodeTable(2, [record(1, true)], 16);
    b[TABLE_HEADER_BYTES + 38] = 0x05;
    expect(decodeTable(reseal(b, 1), 16)).toMatch(/entry 0: unknown entry flags 0x5/);
    const c = encodeTable(2, [record(1, false)], 16);
    c.writeUInt32LE(3, 4);
    expect(decodeTable(reseal(c, 1), 16)).toBe('bad format version');
  });

  it('round-trips a snapshot entry (flag bit 1), keyed or not, and leaves other entries without it', () => {
    const snap: AllocationRecord = { ...record(3, false), name: 'vol@monday', snapshot: true };
    const keyedSnap: AllocationRecord = { ...record(4, true), name: 'vol@tuesday', snapshot: true };
    const b = encodeTable(5, [record(1, false), snap, keyedSnap], 16);
    expect(b[TABLE_HEADER_BYTES + 38]).toBe(0);
    expect(b[TABLE_HEADER_BYTES + TABLE_ENTRY_BYTES + 38]).toBe(0x02);
    expect(b[TABLE_HEADER_BYTES + 2 * TABLE_ENTRY_BYTES + 38]).toBe(0x03);
    const t = decodeTable(b, 16);
    if (typeof t === 'string') throw new Error(t);
    expect(t.records).toEqual([record(1, false), snap, keyedSnap]);
    expect(t.records[0]!.snapshot).toBeUndefined();
  });

  it('a store keeps the digest across a fresh open (what a restart of both reads)', async () => {
    const dev = new MemoryDevice(16 * 1024 * 1024);
    const store = await PageStore.format(dev, { pairId: PAIR, tableEntriesMax: 16, nowMs: 0 });
    const records = [record(1, true), record(2, false)];
    await store.writeTable(records);
    const again = await PageStore.open(dev, { pairId: PAIR });
    expect((await again.readTable()).records).toEqual(records);
  });
});
