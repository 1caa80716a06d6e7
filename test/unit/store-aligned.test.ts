// A store aligned to a parity pool's rows (issue 14): the data area, every
// extent and every stripe of pages start on a row, so the pages sharing a
// row are one stripe of one allocation, whose owner is the row's only
// writer; and the metadata both controllers write lies before the data area,
// in the pool's mirrored prefix.

import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  BLOCK_BYTES,
  computeGeometry,
  decodeSuperblock,
  encodeSuperblock,
  extentBytes,
  lockGroupPages,
  pageSlotBytes,
  pageSlotOffset,
  stripeShape,
} from '../../src/store/layout.js';
import { findExtent } from '../../src/store/extents.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { PageStore } from '../../src/store/page-store.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import type { Device } from '../../src/store/types.js';

const PAIR = '11111111-2222-4333-8444-555555555555';
const KiB = 1024;
const MiB = 1024 * KiB;

/** Enough of a parity pool for the store to see its rows and prefix. */
function fakePool(bytes: number, rowBytes: number, mirroredPrefixBytes: number): Device & { rowBytes: number; mirroredPrefixBytes: number } {
  const d = new MemoryDevice(bytes);
  return Object.assign(d, { rowBytes, mirroredPrefixBytes });
}

describe('stripes aligned to rows', () => {
  it('at BLOCK_BYTES the shape is the one stores have always had', () => {
    // 15 pages of 4 KiB (4160-byte slots) a half-stripe, stripes back to back.
    expect(stripeShape(4096)).toEqual({ perStripe: 15, pitchBytes: 2 * 15 * 4160 });
    expect(pageSlotOffset(0, 4096, 16, 1)).toBe(2 * 15 * 4160 + (15 + 1) * 4160);
    expect(lockGroupPages(4096)).toBe(1);
  });

  it('aligned to a row, a stripe is padded to whole rows and filled with as many pages as fit', () => {
    const row = 3 * 64 * KiB;
    const { perStripe, pitchBytes } = stripeShape(4096, row);
    expect(pitchBytes % row).toBe(0);
    expect(perStripe).toBe(Math.floor(pitchBytes / (2 * pageSlotBytes(4096))));
    expect(lockGroupPages(4096, row)).toBe(perStripe);
  });

  it('no two stripes share a row, and every slot lies inside its own stripe', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(512, 4096, 8192, 65536),
        fc.integer({ min: 2, max: 6 }),
        fc.constantFrom(4 * KiB, 16 * KiB, 64 * KiB),
        fc.integer({ min: 1, max: 200 }),
        (pageSize, dataMembers, chunk, pages) => {
          const row = dataMembers * chunk;
          const { perStripe, pitchBytes } = stripeShape(pageSize, row);
          const ext = extentBytes(pageSize, pages, row);
          expect(ext % row).toBe(0);
          for (let p = 0; p < pages; p++) {
            const stripe = Math.floor(p / perStripe);
            for (const slot of [0, 1] as const) {
              const at = pageSlotOffset(0, pageSize, p, slot, row);
              expect(at).toBeGreaterThanOrEqual(stripe * pitchBytes);
              expect(at + pageSlotBytes(pageSize)).toBeLessThanOrEqual((stripe + 1) * pitchBytes);
              expect(at + pageSlotBytes(pageSize)).toBeLessThanOrEqual(ext);
            }
          }
        },
      ),
      { seed: 14, numRuns: 200 },
    );
  });

  it('extents are placed on rows', () => {
    const row = 2 * 64 * KiB;
    const used = [{ dataOffset: 0, bytes: 5000 }];
    expect(findExtent(used, 10, 10 * row, row)).toBe(row);
    expect(findExtent(used, 10, 10 * row)).toBe(BLOCK_BYTES * 2);
  });
});

describe('the superblock records the alignment', () => {
  it('round-trips it, and a block-aligned store keeps the bytes it always had', () => {
    const g = computeGeometry({ deviceBytes: 64 * MiB, alignBytes: 192 * KiB });
    expect(g.dataOffset % (192 * KiB)).toBe(0);
    expect(g.dataBytes % (192 * KiB)).toBe(0);
    const sb = { formatVersion: 2, pairId: PAIR, geometry: g, createdAtMs: 5 };
    expect(decodeSuperblock(encodeSuperblock(sb))).toEqual(sb);
    const plain = encodeSuperblock({ ...sb, geometry: computeGeometry({ deviceBytes: 64 * MiB }) });
    expect(plain.readUInt32LE(96)).toBe(0);
  });

  it('refuses an alignment that is not whole blocks', () => {
    expect(() => computeGeometry({ deviceBytes: 64 * MiB, alignBytes: 5000 })).toThrow(/alignBytes/);
  });
});

describe('a store over a parity pool', () => {
  it('is formatted aligned to the pool row, its metadata inside the mirrored prefix', async () => {
    const row = 3 * 64 * KiB;
    const prefix = computeGeometry({ deviceBytes: 64 * MiB, tableEntriesMax: 16, alignBytes: row }).dataOffset;
    const store = await PageStore.format(fakePool(64 * MiB, row, prefix), { pairId: PAIR, nowMs: 0, tableEntriesMax: 16 });
    expect(store.superblock.geometry.alignBytes).toBe(row);
    expect(store.superblock.geometry.dataOffset).toBe(prefix);
  });

  it('is refused when its metadata would spill out of the mirrored prefix into parity rows', async () => {
    const row = 3 * 64 * KiB;
    const err = await PageStore.format(fakePool(64 * MiB, row, row), { pairId: PAIR, nowMs: 0 }).catch((e: unknown) => e);
    expect(isPagepairError(err, 'STORE_MISMATCH')).toBe(true);
    expect(String(err)).toMatch(/mirrored prefix/);
  });

  it('is refused at open when the pool has other rows than the store was laid out for', async () => {
    const row = 3 * 64 * KiB;
    const pool = fakePool(64 * MiB, row, 4 * row * 8);
    await PageStore.format(pool, { pairId: PAIR, nowMs: 0, tableEntriesMax: 16 });
    pool.rowBytes = 4 * 64 * KiB;
    const err = await PageStore.open(pool).catch((e: unknown) => e);
    expect(isPagepairError(err, 'STORE_MISMATCH')).toBe(true);
  });
});

describe('repairAfterWriter', () => {
  it('on a pool, repairs the metadata and each stripe of the pages once; on a file, nothing', async () => {
    const row = 2 * 64 * KiB;
    const prefix = computeGeometry({ deviceBytes: 64 * MiB, tableEntriesMax: 16, alignBytes: row }).dataOffset;
    const calls: [number, number][] = [];
    const pool = Object.assign(fakePool(64 * MiB, row, prefix), {
      repairRange: (offset: number, length: number) => {
        calls.push([offset, length]);
        return Promise.resolve();
      },
    });
    const store = await PageStore.format(pool, { pairId: PAIR, nowMs: 0, tableEntriesMax: 16 });
    expect(store.pooled).toBe(true);
    const { perStripe, pitchBytes } = stripeShape(4096, row);
    const loc = { guid: '00000000-0000-4000-8000-000000000001', dataOffset: 3 * row, pageSizeBytes: 4096 };
    // Pages 0..1 and perStripe share stripes 0 and 1; page 1 again is no new stripe.
    const bytes = await store.repairAfterWriter([
      { loc, first: 0, count: 2 },
      { loc, first: 1, count: 1 },
      { loc, first: perStripe, count: 1 },
    ]);
    const d = store.superblock.geometry.dataOffset;
    expect(calls).toEqual([
      [0, d],
      [d + 3 * row, pitchBytes],
      [d + 3 * row + pitchBytes, pitchBytes],
    ]);
    expect(bytes).toBe(d + 2 * pitchBytes);

    const plain = await PageStore.format(new MemoryDevice(8 * MiB), { pairId: PAIR, nowMs: 0 });
    expect(plain.pooled).toBe(false);
    expect(await plain.repairAfterWriter([{ loc, first: 0, count: 1 }])).toBe(0);
  });
});
