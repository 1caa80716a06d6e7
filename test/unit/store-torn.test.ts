// A crash can cut a table write at any byte. Whatever survives, the table that
// was newest before the write must still be read (or, if every byte that
// matters happened to land, the new one), and the store must stay writable.

import { describe, expect, it } from 'vitest';
import { PagepairError } from '../../src/protocol/errors.js';
import { MAILBOX_BYTES_MIN, TABLE_ENTRY_BYTES, TABLE_HEADER_BYTES, copyForSeq, encodeTable, extentBytes, tableCopyOffset } from '../../src/store/layout.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { PageStore } from '../../src/store/page-store.js';
import type { AllocationRecord } from '../../src/store/types.js';

const PAIR = '3f9a0c1e-5b7d-4e2f-8a1b-6c3d9e0f1a2b';
const TABLE_ENTRIES_MAX = 32;

function records(count: number, salt: number): AllocationRecord[] {
  return Array.from({ length: count }, (_, i) => ({
    guid: `${(salt * 1000 + i).toString(16).padStart(8, '0')}-0000-4000-8000-000000000000`,
    name: `vol-${salt}-${i}`,
    policy: 'default',
    pageSizeBytes: 4096,
    pageCount: 10 + i + salt,
    dataOffset: i * 65536,
    createdEpoch: salt,
  }));
}

async function tornAtEveryByte(history: AllocationRecord[][], next: AllocationRecord[]): Promise<void> {
  const dev = new MemoryDevice(128 * 1024);
  const store = await PageStore.format(dev, { pairId: PAIR, tableEntriesMax: TABLE_ENTRIES_MAX, mailboxBytes: MAILBOX_BYTES_MIN, nowMs: 1 });
  for (const h of history) await store.writeTable(h);
  const prevSeq = history.length;
  const prev = { seq: prevSeq, records: history[prevSeq - 1] ?? [] };
  expect(await store.readTable()).toMatchObject(prev);
  // What writeTable records: how far allocations ever reached, only growing.
  let used = (await store.readTable()).dataUsedBytes ?? store.geometry.dataBytes;
  for (const r of next) used = Math.max(used, r.dataOffset + extentBytes(r.pageSizeBytes, r.pageCount));

  const base = dev.snapshot();
  const seq = prevSeq + 1;
  const image = encodeTable(seq, next, TABLE_ENTRIES_MAX, used);
  const at = tableCopyOffset(store.geometry, copyForSeq(seq));
  const meaningful = TABLE_HEADER_BYTES + next.length * TABLE_ENTRY_BYTES;
  let sawPrevious = 0;
  for (let keep = 0; keep < image.length; keep++) {
    const d = new MemoryDevice(base);
    const s = await PageStore.open(d, { pairId: PAIR });
    d.tearNextWrite(keep);
    const err = await s.writeTable(next).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PagepairError);
    // The bytes not written may by chance already hold what the new image
    // has there (the same name suffix, zero reserved bytes): then the copy's
    // header and entries are complete and the new table rightly counts.
    const complete = (await d.read(at, meaningful)).equals(image.subarray(0, meaningful));
    const got = await s.readTable();
    if (complete) {
      expect(got).toEqual({ seq, records: next, dataUsedBytes: used });
    } else {
      expect(got, `torn at byte ${keep}`).toMatchObject(prev);
      sawPrevious++;
    }
    // The store stays writable, and the retried write lands.
    expect(await s.writeTable(next)).toBe(got.seq + 1);
    expect((await s.readTable()).records).toEqual(next);
  }
  // Guards the test itself: most cuts inside header and entries must be caught.
  expect(sawPrevious).toBeGreaterThan(meaningful / 2);
}

describe('torn allocation-table writes', () => {
  it('the first write, over the empty table of format', async () => {
    await tornAtEveryByte([], records(30, 1));
  });

  it('a later write, over the copy two generations old', async () => {
    await tornAtEveryByte([records(25, 2), records(28, 3), records(5, 4)], records(31, 5));
  });

  it('a write that shrinks the table', async () => {
    await tornAtEveryByte([records(30, 6), records(29, 7)], records(2, 8));
  });
});
