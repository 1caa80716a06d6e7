// A power cut can cut a page write at any byte, and a device may persist some
// sectors of a write and not others. Whatever survives, a page must read as
// its newest synced version, or as the write that was cut when all of it that
// matters landed: never an error, never older, never garbage. Pages have two
// slots (docs/formats.md, "Pages"); these tests cut the write into either
// slot at every byte offset: a new version, a version that skips one, a
// rewrite at the same version, a first write, and a write after unsynced ones.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isPagepairError } from '../../src/protocol/errors.js';
import { FileDevice } from '../../src/store/file-device.js';
import { MAILBOX_BYTES_MIN, encodeSuperblock, pageSlotBytes, pageSlotOffset, superblockCopyOffset } from '../../src/store/layout.js';
import { MemoryDevice, type PowerCutFate } from '../../src/store/memory-device.js';
import { openOrFormatFileStore } from '../../src/store/open.js';
import { PageStore } from '../../src/store/page-store.js';
import type { PageLocation } from '../../src/store/types.js';
import { Prng } from './prng.js';

const PAIR = '5e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a6b';
const GUID = 'aa0e8400-e29b-41d4-a716-446655440000';

function content(bytes: number, seed: number): Buffer {
  return new Prng(seed).bytes(bytes);
}

interface Step {
  version: number;
  seed: number;
  epoch?: number;
  /** Sync after this write (default true). */
  sync?: boolean;
}

interface Case {
  pageSizeBytes: number;
  /** Written before the cut write, each synced unless it says otherwise. */
  history: Step[];
  /** The write the power cut interrupts. */
  cut: Step;
  /** Versions a read may return after the cut, besides the cut write when it landed whole (0: never written). */
  allowed: number[];
  /** What the power cut does to the unsynced writes made before the cut one. */
  earlierFate?: (rng: Prng) => PowerCutFate;
  /** Byte offsets to cut at (default: every byte of the slot). */
  offsets?: number[];
  /** Sector patterns to try as well (default 64). */
  sectorRuns?: number;
}

/** Replays the history and the cut write once, then tries every cut on a clone of that device. */
async function cutEverywhere(c: Case): Promise<{ older: number; newer: number }> {
  const dev = new MemoryDevice(256 * 1024 + 8 * pageSlotBytes(c.pageSizeBytes));
  const store = await PageStore.format(dev, { pairId: PAIR, tableEntriesMax: 8, mailboxBytes: MAILBOX_BYTES_MIN, nowMs: 1 });
  const loc: PageLocation = { guid: GUID, dataOffset: 4096, pageSizeBytes: c.pageSizeBytes };
  const contents = new Map<number, Buffer>([[0, Buffer.alloc(c.pageSizeBytes)]]);
  for (const s of c.history) {
    contents.set(s.version, content(c.pageSizeBytes, s.seed));
    await store.writePage(loc, 0, s.version, s.epoch ?? 1, contents.get(s.version)!);
    if (s.sync ?? true) await store.sync();
  }
  const cutData = content(c.pageSizeBytes, c.cut.seed);
  await store.writePage(loc, 0, c.cut.version, c.cut.epoch ?? 1, cutData);
  const writes = dev.unsyncedWrites();
  const cutWrite = writes[writes.length - 1]!;
  const slotBytes = pageSlotBytes(c.pageSizeBytes);
  // One page write fills one slot, whole, and never touches the other.
  expect(cutWrite.data.length).toBe(slotBytes);
  expect([pageSlotOffset(4096, c.pageSizeBytes, 0, 0), pageSlotOffset(4096, c.pageSizeBytes, 0, 1)].map((o) => o + store.geometry.dataOffset)).toContain(cutWrite.offset);

  const rng = new Prng(c.pageSizeBytes * 31 + c.cut.version);
  const tries: { what: string; fate: PowerCutFate }[] = (c.offsets ?? Array.from({ length: slotBytes }, (_, i) => i)).map((keep) => ({
    what: `cut at byte ${keep}`,
    fate: { prefixBytes: keep },
  }));
  for (let i = 0; i < (c.sectorRuns ?? 64); i++) {
    const seed = rng.int(1 << 30);
    const pick = new Prng(seed);
    tries.push({ what: `sectors landed by seed ${seed}`, fate: { sectorBytes: 512, landed: () => pick.chance(0.5) } });
  }
  let older = 0;
  let newer = 0;
  for (const t of tries) {
    const d = dev.clone();
    const earlier = c.earlierFate?.(rng) ?? 'keep';
    d.powerCut((_w, i) => (i < writes.length - 1 ? earlier : t.fate));
    const s = await PageStore.open(d, { pairId: PAIR });
    const got = await s.readPage(loc, 0).catch((err: unknown) => err as Error);
    if (got instanceof Error) throw new Error(`${t.what}: read failed: ${got.message}`);
    const landedWhole = (await d.read(cutWrite.offset, slotBytes)).equals(cutWrite.data);
    if (got.header.version === c.cut.version && got.data.equals(cutData)) {
      // Only a cut write that landed whole counts, or a rewrite of bytes the
      // store held already at that version.
      expect(landedWhole || c.allowed.includes(c.cut.version), `${t.what}: an incomplete write read back`).toBe(true);
      newer++;
    } else {
      expect(c.allowed, `${t.what}: read version ${got.header.version}`).toContain(got.header.version);
      expect(got.data.equals(contents.get(got.header.version)!), `${t.what}: wrong bytes at version ${got.header.version}`).toBe(true);
      older++;
    }
    // The store stays writable: the write made again lands and reads back.
    await s.writePage(loc, 0, c.cut.version, (c.cut.epoch ?? 1) + 1, cutData);
    await s.sync();
    const again = await s.readPage(loc, 0);
    expect(again.header.version).toBe(c.cut.version);
    expect(again.data.equals(cutData)).toBe(true);
  }
  return { older, newer };
}

describe('a page write torn by a power cut keeps the newest synced version', () => {
  for (const pageSizeBytes of [512, 4096]) {
    describe(`${pageSizeBytes}-byte pages, cut at every byte of the slot`, () => {
      it('a new version over the first synced one', async () => {
        const r = await cutEverywhere({ pageSizeBytes, history: [{ version: 1, seed: 11 }], cut: { version: 2, seed: 12 }, allowed: [1] });
        expect(r.older).toBeGreaterThan(pageSizeBytes / 2);
      });

      it('a new version over two synced ones (the older one is overwritten)', async () => {
        const r = await cutEverywhere({ pageSizeBytes, history: [{ version: 1, seed: 21 }, { version: 2, seed: 22 }], cut: { version: 3, seed: 23 }, allowed: [2] });
        expect(r.older).toBeGreaterThan(pageSizeBytes / 2);
      });

      it('a version that skips one (slot by version parity would overwrite the newest)', async () => {
        // v2 is the page's first write (slot 0); v4 by parity would go to slot 0 too.
        await cutEverywhere({ pageSizeBytes, history: [{ version: 2, seed: 31 }], cut: { version: 4, seed: 34 }, allowed: [2] });
        await cutEverywhere({ pageSizeBytes, history: [{ version: 1, seed: 35 }, { version: 2, seed: 36 }, { version: 4, seed: 37 }], cut: { version: 6, seed: 38 }, allowed: [4] });
      });

      it('a rewrite at the same version (join resync, a destage written again) never loses that version', async () => {
        for (const history of [[{ version: 1, seed: 41 }], [{ version: 1, seed: 42 }, { version: 2, seed: 41 }]]) {
          const v = history[history.length - 1]!.version;
          const r = await cutEverywhere({ pageSizeBytes, history, cut: { version: v, seed: 41, epoch: 2 }, allowed: [v] });
          expect(r.older + r.newer).toBeGreaterThan(pageSizeBytes);
        }
      });

      it('the first write of a page reads as never written when torn', async () => {
        await cutEverywhere({ pageSizeBytes, history: [], cut: { version: 1, seed: 51 }, allowed: [0] });
      });

      it('a write after unsynced ones, which the power cut keeps, drops or tears', async () => {
        const history = [{ version: 1, seed: 61 }, { version: 2, seed: 62, sync: false }, { version: 3, seed: 63, sync: false }];
        // v2 and v3 were never synced: the cut may take them, never v1.
        await cutEverywhere({ pageSizeBytes, history, cut: { version: 4, seed: 64 }, allowed: [1, 2, 3], earlierFate: () => 'keep' });
        await cutEverywhere({ pageSizeBytes, history, cut: { version: 4, seed: 64 }, allowed: [1], earlierFate: () => 'drop' });
        await cutEverywhere({
          pageSizeBytes,
          history,
          cut: { version: 4, seed: 64 },
          allowed: [1, 2, 3],
          earlierFate: (rng) => (rng.chance(0.5) ? { prefixBytes: rng.int(pageSlotBytes(pageSizeBytes)) } : rng.pick(['keep', 'drop'] as const)),
        });
      });
    });
  }

  it('64 KiB pages, cut at random bytes and around the header', async () => {
    const pageSizeBytes = 64 * 1024;
    const rng = new Prng(7);
    const offsets = [0, 1, 31, 63, 64, 65, 4095, 4096, 65535, 65536 + 63];
    for (let i = 0; i < 300; i++) offsets.push(rng.int(pageSlotBytes(pageSizeBytes)));
    await cutEverywhere({ pageSizeBytes, history: [{ version: 1, seed: 71 }, { version: 2, seed: 72 }], cut: { version: 3, seed: 73 }, allowed: [2], offsets });
    await cutEverywhere({ pageSizeBytes, history: [{ version: 1, seed: 74 }, { version: 2, seed: 75 }], cut: { version: 2, seed: 75, epoch: 3 }, allowed: [2], offsets });
    await cutEverywhere({ pageSizeBytes, history: [{ version: 5, seed: 76 }], cut: { version: 7, seed: 77 }, allowed: [5], offsets });
  });

  it('reports the damaged slot and counts it', async () => {
    const dev = new MemoryDevice(512 * 1024);
    const store = await PageStore.format(dev, { pairId: PAIR, tableEntriesMax: 8, mailboxBytes: MAILBOX_BYTES_MIN, nowMs: 1 });
    const loc: PageLocation = { guid: GUID, dataOffset: 4096, pageSizeBytes: 4096 };
    await store.writePage(loc, 0, 1, 1, content(4096, 1));
    await store.sync();
    await store.writePage(loc, 0, 2, 1, content(4096, 2));
    dev.powerCut(() => ({ prefixBytes: 1000 }));
    const s = await PageStore.open(dev, { pairId: PAIR });
    const p = await s.readPage(loc, 0);
    expect(p.header.version).toBe(1);
    expect(p.tornSlot).toMatch(/data checksum/);
    expect(s.pageCounters.tornSlotsFound).toBe(1);
    // The next write goes into the damaged slot, and the page reads clean again.
    await s.writePage(loc, 0, 2, 2, content(4096, 2));
    const q = await s.readPage(loc, 0);
    expect(q.header.version).toBe(2);
    expect(q.tornSlot).toBeUndefined();
  });
});

describe('a store of the previous format', () => {
  async function oldFormat(dev: MemoryDevice | FileDevice): Promise<void> {
    const store = await PageStore.format(dev, { pairId: PAIR, tableEntriesMax: 8, mailboxBytes: MAILBOX_BYTES_MIN, nowMs: 1 });
    const block = Buffer.alloc(store.geometry.superblockCopyBytes);
    encodeSuperblock({ ...store.superblock, formatVersion: 1 }).copy(block);
    await dev.write(superblockCopyOffset(store.geometry, 0), block);
    await dev.write(superblockCopyOffset(store.geometry, 1), block);
  }

  it('is refused at open, naming its version, rather than misread', async () => {
    const dev = new MemoryDevice(512 * 1024);
    await oldFormat(dev);
    const err = await PageStore.open(dev, { pairId: PAIR }).catch((e: unknown) => e);
    expect(isPagepairError(err, 'STORE_MISMATCH')).toBe(true);
    expect((err as Error).message).toMatch(/format version 1; this pagepair reads and writes format version 2 only/);
  });

  it('is refused at once by openOrFormatFileStore (no waiting for a format that will not come)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pagepair-oldformat-'));
    try {
      const path = join(dir, 'store');
      const dev = await FileDevice.create(path, 512 * 1024);
      await oldFormat(dev);
      await dev.close();
      const err = await openOrFormatFileStore(path, { pairId: PAIR, sizeBytes: 512 * 1024, nowMs: 1, waitMs: 5000 }).catch((e: unknown) => e);
      expect(isPagepairError(err, 'STORE_MISMATCH')).toBe(true);
      expect((err as Error).message).toContain('format version 1');
      // Refused at its first read, not after waiting out waitMs for a format.
      expect((err as Error).message).not.toContain('after waiting');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
