// Checkpoint regions (src/client/region.ts) against an in-memory pair
// (region-fake-io.ts): the metadata codec, the ring of overwrite mode, append
// mode running full, reads of generations that are gone or go while read,
// bad input, two writers, failed writes, and a crash at every request of a
// commit, after which a reader sees the previous generation or the new one,
// whole, and every generation listed before that the commit did not drop.

import { describe, expect, it } from 'vitest';
import {
  GenerationGoneError,
  METADATA_ENTRY_BYTES,
  METADATA_HEADER_BYTES,
  REGION_STEPS,
  Region,
  decodeMetadata,
  encodeMetadata,
  entriesThatFit,
  isGenerationGone,
  newestMetadata,
  type GenerationInfo,
  type RegionCreateOptions,
  type RegionMetadata,
} from '../../src/client/region.js';
import { crc32c } from '../../src/protocol/crc32c.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import { FakePair, type FakeConn } from './region-fake-io.js';

const TINY = 512;

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return isPagepairError(err) ? `${err.code}${err.field === undefined ? '' : `:${err.field}`}` : `untyped: ${String(err)}`;
  }
}

/** Bytes that say which generation they are and where: a mix-up of two shows. */
function content(generation: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (generation * 131 + i * 7 + (i >> 9)) & 0xff;
  return b;
}

async function commit(region: Region, data: Buffer, pieceBytes = 700): Promise<GenerationInfo> {
  const cp = await region.beginCheckpoint();
  for (let at = 0; at < data.length; at += pieceBytes) await cp.write(at, data.subarray(at, Math.min(data.length, at + pieceBytes)));
  return cp.commit();
}

function sampleMeta(n: number, copyBytes = TINY): RegionMetadata {
  const generations: GenerationInfo[] = [];
  for (let i = 0; i < n; i++) generations.push({ generation: 10 + i, offset: 2 * copyBytes + i * copyBytes * 2, lengthBytes: 1000 + i, crc: 0xdead0000 + i, committedAtMs: 1_700_000_000_000 + i });
  return { mode: 'append', ringSize: 0, pageSizeBytes: copyBytes, copyBytes, sizeBytes: 64 * copyBytes, dataOffset: 2 * copyBytes, slotBytes: 0, sequence: 7, nextGeneration: 10 + n, generations };
}

describe('region metadata codec', () => {
  it('round-trips, and every byte of a copy changed is caught', () => {
    for (const n of [0, 1, 5, entriesThatFit(TINY)]) {
      const meta = sampleMeta(n);
      for (const copy of [0, 1] as const) {
        const bytes = encodeMetadata(meta, copy);
        expect(bytes.length).toBe(TINY);
        expect(decodeMetadata(bytes, copy)).toEqual(meta);
        // The copy read from the other page is not taken for this one.
        expect(typeof decodeMetadata(bytes, copy === 0 ? 1 : 0)).toBe('string');
        for (let i = 0; i < bytes.length; i++) {
          for (const flip of [0x01, 0x80, 0xff]) {
            const bad = Buffer.from(bytes);
            bad[i] = bad[i]! ^ flip;
            const got = decodeMetadata(bad, copy);
            if (typeof got !== 'string') throw new Error(`byte ${i} ^ ${flip} of a copy with ${n} generations went unnoticed`);
          }
        }
      }
    }
  });

  it('a copy too short, of another version, or with entries out of order is refused with its reason', () => {
    const good = encodeMetadata(sampleMeta(3), 0);
    expect(decodeMetadata(good.subarray(0, 40), 0)).toMatch(/too short/);
    expect(decodeMetadata(Buffer.alloc(TINY), 0)).toBe('no region magic');
    const v2 = Buffer.from(good);
    v2.writeUInt16LE(2, 8);
    expect(decodeMetadata(v2, 0)).toMatch(/format version 2/);
    // Out of order, with a CRC that matches: caught by the rules, not the CRC.
    const swapped = sampleMeta(2);
    swapped.generations.reverse();
    expect(decodeMetadata(encodeMetadata(swapped, 0), 0)).toMatch(/not in order|does not follow/);
    const overlapping = sampleMeta(2);
    overlapping.generations[1]!.offset = overlapping.generations[0]!.offset;
    expect(decodeMetadata(encodeMetadata(overlapping, 0), 0)).toMatch(/does not follow/);
  });

  it('refuses to encode more generations than a copy holds', () => {
    const tooMany = sampleMeta(entriesThatFit(TINY) + 1);
    expect(() => encodeMetadata(tooMany, 0)).toThrow(/do not fit/);
    expect(entriesThatFit(TINY)).toBe(Math.floor((TINY - METADATA_HEADER_BYTES - 4) / METADATA_ENTRY_BYTES));
  });

  it('the newest valid copy wins; a bad newest copy falls back to the older one', () => {
    const older = sampleMeta(2);
    const newer = { ...sampleMeta(3), sequence: 8 };
    const c1 = encodeMetadata(older, 1);
    const c0 = encodeMetadata(newer, 0);
    expect(newestMetadata(c0, c1).meta?.sequence).toBe(8);
    const broken = Buffer.from(c0);
    broken[100] = broken[100]! ^ 4;
    const got = newestMetadata(broken, c1);
    expect(got.meta?.sequence).toBe(7);
    expect(got.invalid).toEqual(['copy 0: CRC32C does not match']);
    expect(newestMetadata(broken, Buffer.alloc(TINY)).meta).toBeNull();
  });
});

describe('regions: create, open, list, delete', () => {
  it('creates a keyed allocation named region:<name> sized for its layout, and opens it with the key only', async () => {
    const pair = new FakePair();
    const io = pair.connect();
    const { region, key } = await Region.create(io, 'r1', { mode: 'overwrite', sizeBytes: 3000, generations: 3, policy: 'tiny' });
    // 'tiny' is no built-in policy: the first allocation guessed 4 KiB pages and was made again with 512.
    expect([...pair.allocs.values()].map((a) => [a.name, a.pageSizeBytes, a.pageCount])).toEqual([['region:r1', TINY, 2 + 3 * 6]]);
    expect(region.allocatedBytes).toBe((2 + 3 * 6) * TINY);
    expect([region.mode, region.ringSize, region.generationBytesMax, region.name]).toEqual(['overwrite', 3, 3000, 'r1']);
    expect(await region.latest()).toBeNull();
    expect(key).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(await Region.list(pair.connect())).toEqual([{ name: 'r1', guid: region.guid, allocatedBytes: region.allocatedBytes }]);

    // Another connection: a wrong key is the controller's ACCESS_DENIED; a malformed one never leaves.
    const other = pair.connect();
    const wrong = Buffer.from(key, 'base64url');
    wrong[3] = wrong[3]! ^ 1;
    expect(await codeOf(Region.open(other, 'r1', wrong))).toBe('ACCESS_DENIED:guid');
    expect(await codeOf(Region.open(other, 'r1', 'not-a-key'))).toBe('BAD_FIELD:key');
    expect(await codeOf(Region.open(other, 'nope', key))).toBe('UNKNOWN_GUID:name');
    expect(await codeOf(other.read(region.guid, 0, 16))).toBe('ACCESS_DENIED:guid');
    const opened = await Region.open(other, 'r1', key);
    expect([opened.guid, opened.mode, opened.ringSize, opened.generationBytesMax, opened.allocatedBytes]).toEqual([region.guid, 'overwrite', 3, 3000, region.allocatedBytes]);

    // Delete needs the key too.
    expect(await codeOf(Region.delete(pair.connect(), 'r1', wrong))).toBe('ACCESS_DENIED:guid');
    expect(pair.allocs.size).toBe(1);
    await Region.delete(pair.connect(), 'r1', key);
    expect(pair.allocs.size).toBe(0);
    expect(await Region.list(io)).toEqual([]);
    expect(await codeOf(Region.delete(io, 'r1', key))).toBe('UNKNOWN_GUID:name');
  });

  it('a built-in policy is allocated once, at its page size', async () => {
    const pair = new FakePair();
    const { region } = await Region.create(pair.connect(), 'big', { mode: 'append', sizeBytes: 1_000_000 });
    expect(pair.seen.filter((r) => r.kind === 'allocate').length).toBe(1);
    expect(region.pageSizeBytes).toBe(256 * 1024);
    expect(region.allocatedBytes).toBe(2 * 256 * 1024 + 4 * 256 * 1024);
    // A copy is at most 64 KiB: 1024 generations would not fit, 1024 is the cap anyway.
    expect(region.generationsMax).toBe(1024);
  });

  it('refuses bad input naming the field', async () => {
    const pair = new FakePair();
    const io = pair.connect();
    const make = (name: string, opts: Partial<RegionCreateOptions>): Promise<string> => codeOf(Region.create(io, name, { mode: 'overwrite', sizeBytes: 1000, policy: 'tiny', ...opts } as RegionCreateOptions));
    expect(await make('', {})).toBe('BAD_FIELD:name');
    expect(await make('a/b', {})).toBe('BAD_FIELD:name');
    expect(await make('x'.repeat(58), {})).toBe('BAD_FIELD:name');
    expect(await make('-x', {})).toBe('BAD_FIELD:name');
    expect(await make('ok', { mode: 'ring' as never })).toBe('BAD_FIELD:mode');
    expect(await make('ok', { sizeBytes: 0 })).toBe('BAD_FIELD:sizeBytes');
    expect(await make('ok', { sizeBytes: 1.5 })).toBe('BAD_FIELD:sizeBytes');
    expect(await make('ok', { sizeBytes: 2 ** 41 })).toBe('BAD_FIELD:sizeBytes');
    expect(await make('ok', { generations: 0 })).toBe('BAD_FIELD:generations');
    expect(await make('ok', { generations: 65 })).toBe('BAD_FIELD:generations');
    expect(await make('ok', { mode: 'append', generations: 3 })).toBe('BAD_FIELD:generations');
    // A ring longer than a 512-byte metadata copy can list; the allocation made meanwhile is given back.
    expect(await make('ok', { generations: entriesThatFit(TINY) + 1 })).toBe('BAD_FIELD:generations');
    expect(pair.allocs.size).toBe(0);
    expect(await make('ok', { policy: 'nope' })).toBe('POLICY_UNKNOWN:policy');
    // Options of the library itself, refused before any request.
    const seen = pair.seen.length;
    expect(await codeOf(Region.create(io, 'ok', { mode: 'append', sizeBytes: 10, policy: 'tiny' }, { chunkBytes: 0 }))).toBe('BAD_FIELD:chunkBytes');
    expect(await codeOf(Region.create(pair.connect(100), 'ok', { mode: 'append', sizeBytes: 10, policy: 'tiny' }, { chunkBytes: 101 }))).toBe('BAD_FIELD:chunkBytes');
    expect(await codeOf(Region.create(io, 'ok', { mode: 'append', sizeBytes: 10, policy: 'tiny' }, { writesInFlight: 65 }))).toBe('BAD_FIELD:writesInFlight');
    expect(await codeOf(Region.open(io, 'ok', 'A'.repeat(22), { onStep: 3 as never }))).toBe('BAD_FIELD:onStep');
    expect(pair.seen.length).toBe(seen);
    expect(await make('x'.repeat(57), { generations: entriesThatFit(TINY) })).toBe('ok');
    expect(await make('x'.repeat(57), {})).toBe('DUPLICATE:name');
  });
});

describe('overwrite mode: a ring of K slots', () => {
  it('keeps the last K generations, each in its slot, and drops the one whose slot is taken before writing it', async () => {
    const pair = new FakePair();
    const steps: string[] = [];
    const { region, key } = await Region.create(pair.connect(), 'ring', { mode: 'overwrite', sizeBytes: 2000, generations: 3, policy: 'tiny' }, { onStep: (s, i) => void steps.push(`${i}:${s}`), now: () => 5000 });
    const written: Buffer[] = [];
    for (let g = 0; g < 7; g++) {
      written.push(content(g, 1500 + g * 50));
      const info = await commit(region, written[g]!);
      expect(info).toEqual({ generation: g, lengthBytes: written[g]!.length, crc: crc32c(written[g]!), committedAtMs: 5000, offset: 2 * TINY + (g % 3) * 2048 });
    }
    expect((await region.list()).map((g) => g.generation)).toEqual([4, 5, 6]);
    expect((await region.latest())?.generation).toBe(6);
    const reader = await Region.open(pair.connect(), 'ring', key);
    for (const g of [4, 5, 6]) {
      expect((await reader.readWhole(g)).equals(written[g]!)).toBe(true);
      expect((await reader.read(g, 100, 300)).equals(written[g]!.subarray(100, 400))).toBe(true);
    }
    const gone = await reader.read(3, 0, 10).catch((e: unknown) => e);
    expect(gone).toBeInstanceOf(GenerationGoneError);
    expect((gone as GenerationGoneError).overwrittenWhileRead).toBe(false);
    expect(isGenerationGone(gone)).toBe(true);
    expect(await codeOf(reader.readWhole(99))).toBe('OUT_OF_RANGE:generation');
    expect(await codeOf(reader.read(6, 0, written[6]!.length + 1))).toBe('OUT_OF_RANGE:length');
    expect(await codeOf(reader.read(6, written[6]!.length + 1, 0))).toBe('OUT_OF_RANGE:offset');
    // The steps of the last commit: read, drop generation 3, three writes, re-read, metadata.
    const last = steps.slice(steps.lastIndexOf(`0:${REGION_STEPS.beginRead}`));
    expect(last).toEqual([
      `0:${REGION_STEPS.beginRead}`,
      `1:${REGION_STEPS.beginDrop}`,
      `2:${REGION_STEPS.write}`,
      `3:${REGION_STEPS.write}`,
      `4:${REGION_STEPS.write}`,
      `5:${REGION_STEPS.commitRead}`,
      `6:${REGION_STEPS.commitWrite}`,
    ]);
  });

  it('while a generation is being written, the one it replaces is already unlisted and the others stay', async () => {
    const pair = new FakePair();
    const { region } = await Region.create(pair.connect(), 'r', { mode: 'overwrite', sizeBytes: 1024, generations: 2, policy: 'tiny' });
    await commit(region, content(0, 1024));
    await commit(region, content(1, 1024));
    const cp = await region.beginCheckpoint();
    expect(cp.generation).toBe(2);
    expect((await region.list()).map((g) => g.generation)).toEqual([1]);
    await cp.write(0, content(2, 512));
    expect((await region.readWhole(1)).equals(content(1, 1024))).toBe(true);
    await cp.commit();
    expect((await region.list()).map((g) => g.generation)).toEqual([1, 2]);
  });

  it('checkpoints given up after their drop do not drain the ring: the next one takes the emptied slot', async () => {
    const pair = new FakePair();
    const { region } = await Region.create(pair.connect(), 'giveup', { mode: 'overwrite', sizeBytes: 1024, generations: 3, policy: 'tiny' });
    for (let g = 0; g < 3; g++) await commit(region, content(g, 1024));
    const before = (await region.list()).map((g) => g.generation);
    expect(before).toEqual([0, 1, 2]);
    const numbers: number[] = [];
    for (let i = 0; i < 5; i++) {
      const cp = await region.beginCheckpoint();
      numbers.push(cp.generation);
      await cp.write(0, content(50 + i, 512));
      cp.abort();
      // Only the first drops a committed generation (0); the others reuse its empty slot.
      expect((await region.list()).map((g) => g.generation)).toEqual([1, 2]);
    }
    // The number skips ahead to the emptied slot (generation 0's), and stays there while nothing is committed.
    expect(numbers).toEqual([3, 6, 6, 6, 6]);
    const info = await commit(region, content(99, 1024));
    expect(info.generation).toBe(6);
    expect((await region.list()).map((g) => g.generation)).toEqual([1, 2, 6]);
    expect((await region.readWhole(1)).equals(content(1, 1024))).toBe(true);
  });

  it('a ring of one: the only generation is dropped before its slot is written (so a crash meanwhile leaves none)', async () => {
    const pair = new FakePair();
    const { region } = await Region.create(pair.connect(), 'one', { mode: 'overwrite', sizeBytes: 600, generations: 1, policy: 'tiny' });
    await commit(region, content(0, 600));
    const cp = await region.beginCheckpoint();
    expect(await region.latest()).toBeNull();
    await cp.write(0, content(1, 600));
    await cp.commit();
    expect((await region.readWhole(1)).equals(content(1, 600))).toBe(true);
  });

  it('a write past the generation\'s room is OUT_OF_RANGE and the checkpoint stays usable', async () => {
    const pair = new FakePair();
    const { region } = await Region.create(pair.connect(), 'r', { mode: 'overwrite', sizeBytes: 1000, policy: 'tiny' });
    const cp = await region.beginCheckpoint();
    expect(await codeOf(cp.write(990, Buffer.alloc(11)))).toBe('OUT_OF_RANGE:offset');
    expect(await codeOf(cp.write(-1, Buffer.alloc(1)))).toBe('BAD_FIELD:offset');
    expect(await codeOf(cp.write(0, 'text' as unknown as Buffer))).toBe('BAD_FIELD:data');
    await cp.write(990, Buffer.alloc(10, 1));
    expect((await cp.commit()).lengthBytes).toBe(1000);
    expect(await codeOf(cp.write(0, Buffer.alloc(1)))).toBe('BAD_FIELD:checkpoint');
    expect(await codeOf(cp.commit())).toBe('BAD_FIELD:checkpoint');
  });

  it('a generation that goes while it is read is refused, not returned mixed', async () => {
    const pair = new FakePair();
    const { region, key } = await Region.create(pair.connect(), 'r', { mode: 'overwrite', sizeBytes: 2048, generations: 2, policy: 'tiny' });
    await commit(region, content(0, 2048));
    await commit(region, content(1, 2048));
    const reader = await Region.open(pair.connect(), 'r', key, { chunkBytes: 1024 });
    // Between the reader's two data reads, the writer drops generation 0 and writes generation 2 over its slot.
    let acted = false;
    pair.onRead = async (r) => {
      if (acted || r.offset !== 2 * TINY || r.length !== 1024) return;
      acted = true;
      pair.onRead = null;
      await commit(region, content(2, 2048));
    };
    const err = await reader.readWhole(0).catch((e: unknown) => e);
    expect(acted).toBe(true);
    expect(err).toBeInstanceOf(GenerationGoneError);
    expect((err as GenerationGoneError).overwrittenWhileRead).toBe(true);
    // A part of it, the same.
    acted = false;
    pair.onRead = async (r) => {
      if (acted || r.offset !== 2 * TINY + 2048 + 100) return;
      acted = true;
      pair.onRead = null;
      await commit(region, content(3, 2048));
    };
    const err2 = await reader.read(1, 100, 50).catch((e: unknown) => e);
    expect(acted).toBe(true);
    expect((err2 as GenerationGoneError).overwrittenWhileRead).toBe(true);
    expect((await reader.readWhole(3)).equals(content(3, 2048))).toBe(true);
  });

  it('bytes that do not match the committed CRC are CHECKSUM_MISMATCH', async () => {
    const pair = new FakePair();
    const { region } = await Region.create(pair.connect(), 'r', { mode: 'overwrite', sizeBytes: 1024, policy: 'tiny' });
    const info = await commit(region, content(0, 1024));
    const alloc = pair.allocs.get(region.guid)!;
    alloc.bytes[info.offset + 77] = alloc.bytes[info.offset + 77]! ^ 0x20;
    expect(await codeOf(region.readWhole(0))).toBe('CHECKSUM_MISMATCH:generation');
  });
});

describe('append mode', () => {
  it('lays generations one after another on page boundaries until full; then NO_SPACE and nothing committed is lost', async () => {
    const pair = new FakePair();
    const { region, key } = await Region.create(pair.connect(), 'log', { mode: 'append', sizeBytes: 5000, policy: 'tiny' });
    expect(region.ringSize).toBe(0);
    const a = await commit(region, content(0, 1000));
    const b = await commit(region, content(1, 1100));
    expect([a.offset, b.offset]).toEqual([2 * TINY, 2 * TINY + 1024]);
    const cp = await region.beginCheckpoint();
    // 5000 - 1024 - 1536 = 2440 left.
    expect(cp.roomBytes).toBe(2440);
    expect(await codeOf(cp.write(0, Buffer.alloc(2441)))).toBe('NO_SPACE:sizeBytes');
    await cp.write(0, content(2, 2440));
    await cp.commit();
    expect(await codeOf(region.beginCheckpoint())).toBe('NO_SPACE:sizeBytes');
    const reader = await Region.open(pair.connect(), 'log', key);
    expect((await reader.list()).map((g) => g.generation)).toEqual([0, 1, 2]);
    for (const [g, len] of [[0, 1000], [1, 1100], [2, 2440]] as const) expect((await reader.readWhole(g)).equals(content(g, len))).toBe(true);
  });

  it('runs out of metadata entries with NO_SPACE naming generations', async () => {
    const pair = new FakePair();
    const { region } = await Region.create(pair.connect(), 'many', { mode: 'append', sizeBytes: 100 * TINY, policy: 'tiny' });
    const max = entriesThatFit(TINY);
    expect(region.generationsMax).toBe(max);
    for (let g = 0; g < max; g++) await commit(region, content(g, 10));
    expect(await codeOf(region.beginCheckpoint())).toBe('NO_SPACE:generations');
    expect((await region.list()).length).toBe(max);
    expect((await region.readWhole(max - 1)).equals(content(max - 1, 10))).toBe(true);
  });
});

describe('writes', () => {
  it('pieces stay under the connection\'s requestBytesMax; writes out of order are read back for the CRC', async () => {
    const pair = new FakePair();
    const io = pair.connect(1024);
    const steps: string[] = [];
    const { region } = await Region.create(io, 'r', { mode: 'overwrite', sizeBytes: 8000, policy: 'tiny' }, { onStep: (s) => void steps.push(s) });
    const data = content(0, 8000);
    const cp = await region.beginCheckpoint();
    await cp.write(4000, data.subarray(4000));
    await cp.write(0, data.subarray(0, 4000));
    const info = await cp.commit();
    expect(info.crc).toBe(crc32c(data));
    expect(steps.filter((s) => s === REGION_STEPS.commitReadBack).length).toBe(8);
    expect(pair.seen.filter((r) => r.kind === 'write' || r.kind === 'read').every((r) => r.length! <= 1024)).toBe(true);
    expect((await region.readWhole(0)).equals(data)).toBe(true);
    // In order: no read back.
    steps.length = 0;
    await commit(region, content(1, 8000), 3000);
    expect(steps.filter((s) => s === REGION_STEPS.commitReadBack)).toEqual([]);
    expect((await region.readWhole(1)).equals(content(1, 8000))).toBe(true);
  });

  it('a write that fails makes the checkpoint fail; the last committed generation stays and the next checkpoint works', async () => {
    const pair = new FakePair();
    const { region } = await Region.create(pair.connect(), 'r', { mode: 'overwrite', sizeBytes: 3000, generations: 3, policy: 'tiny' });
    await commit(region, content(0, 3000));
    const cp = await region.beginCheckpoint();
    pair.faults.set(pair.seen.length + 1, { kind: 'fail' });
    await cp.write(0, content(1, 1000));
    expect(await codeOf(cp.write(1000, content(1, 1000)))).toBe('IO_ERROR');
    expect(await codeOf(cp.commit())).toBe('BAD_FIELD:checkpoint');
    expect((await region.latest())?.generation).toBe(0);
    const info = await commit(region, content(1, 2000));
    expect(info.generation).toBe(1);
    expect((await region.readWhole(1)).equals(content(1, 2000))).toBe(true);
    expect((await region.readWhole(0)).equals(content(0, 3000))).toBe(true);
  });

  it('two checkpoints at once: on one object BUSY at begin; through two objects the second commit is BUSY', async () => {
    const pair = new FakePair();
    const { region, key } = await Region.create(pair.connect(), 'r', { mode: 'overwrite', sizeBytes: 1000, generations: 4, policy: 'tiny' });
    const cp = await region.beginCheckpoint();
    expect(await codeOf(region.beginCheckpoint())).toBe('BUSY:region');
    const other = await Region.open(pair.connect(), 'r', key);
    const cp2 = await other.beginCheckpoint();
    expect(cp2.generation).toBe(cp.generation);
    await cp.write(0, content(0, 1000));
    await cp.commit();
    await cp2.write(0, content(9, 1000));
    expect(await codeOf(cp2.commit())).toBe('BUSY:region');
    // Why two writers are not supported: the second one's data went over the first one's
    // committed generation (the same slot). A whole read catches it by the CRC.
    expect(await codeOf(other.readWhole(0))).toBe('CHECKSUM_MISMATCH:generation');
    // After abort, the object takes a new checkpoint.
    cp2.abort();
    expect((await commit(other, content(1, 10))).generation).toBe(1);
  });
});

/** Requests of one checkpoint, counted by a dry run, and what each is. */
async function dryRunSteps(mode: 'overwrite' | 'append'): Promise<string[]> {
  const { io, key } = await setUp(mode);
  const steps: string[] = [];
  const region = await Region.open(io, 'kill', key, { onStep: (s) => void steps.push(s) });
  await commit(region, content(9, NEW_BYTES), 500);
  return steps;
}

const NEW_BYTES = 1400;

async function setUp(mode: 'overwrite' | 'append'): Promise<{ pair: FakePair; io: FakeConn; region: Region; key: string; before: Map<number, Buffer> }> {
  const pair = new FakePair();
  const io = pair.connect();
  const { region, key } = await Region.create(io, 'kill', mode === 'overwrite' ? { mode, sizeBytes: 2000, generations: 3, policy: 'tiny' } : { mode, sizeBytes: 20_000, policy: 'tiny' }, {});
  const before = new Map<number, Buffer>();
  for (let g = 0; g < 4; g++) {
    const data = content(g, 900 + g * 100);
    await commit(region, data);
    before.set(g, data);
  }
  if (mode === 'overwrite') before.delete(0);
  return { pair, io, region, key, before };
}

describe('a crash at every request of a commit', () => {
  for (const mode of ['overwrite', 'append'] as const) {
    for (const how of ['crash', 'crash-after-landing'] as const) {
      it(`${mode}, ${how}: a reader sees the previous generation or the new one, whole, and the others listed before`, async () => {
        const names = await dryRunSteps(mode);
        expect(names.length).toBeGreaterThanOrEqual(6);
        const seen = new Set<number>();
        for (let step = 0; step <= names.length; step++) {
          const { pair, region, key, before } = await setUp(mode);
          const newData = content(9, NEW_BYTES);
          let committed: GenerationInfo | null = null;
          // step === names.length: the crash comes after the commit was answered.
          const first = pair.seen.length;
          if (step < names.length) pair.faults.set(first + step, { kind: how });
          try {
            committed = await commit(region, newData, 500);
          } catch (err) {
            expect(isPagepairError(err, 'NOT_ACTIVE'), `step ${step} (${names[step]}): ${String(err)}`).toBe(true);
          }
          pair.restart();
          const reader = await Region.open(pair.connect(), 'kill', key);
          const listed = await reader.list();
          const latest = listed[listed.length - 1]!;
          const where = `${mode} ${how} at step ${step} (${names[step] ?? 'after the commit'})`;
          expect([3, 4], where).toContain(latest.generation);
          if (committed !== null) expect(latest.generation, where).toBe(4);
          seen.add(latest.generation);
          const want = latest.generation === 4 ? newData : before.get(3)!;
          expect((await reader.readWhole(latest.generation)).equals(want), where).toBe(true);
          for (const g of listed) if (g.generation < 4) expect((await reader.readWhole(g.generation)).equals(before.get(g.generation)!), `${where}: generation ${g.generation}`).toBe(true);
          // Everything listed before is still there, but the generation whose slot the new one took.
          const kept = [...before.keys()].filter((g) => mode === 'append' || g % 3 !== 4 % 3);
          for (const g of kept) expect(listed.map((x) => x.generation), `${where}: generation ${g}`).toContain(g);
        }
        // The sweep saw both outcomes: the crash points before the metadata write and after it.
        expect([...seen].sort()).toEqual([3, 4]);
      });
    }
  }
});

describe('durable regions: both controllers lost at once', () => {
  /** Of the pages not in the store, only the metadata pages make it: the worst order for a region that does not flush. */
  const metadataOnly = (_guid: string, page: number): boolean => page < 2;

  it('without durable, losing both with only the metadata destaged lists a generation whose bytes are gone: readWhole says CHECKSUM_MISMATCH', async () => {
    const pair = new FakePair();
    const { region, key } = await Region.create(pair.connect(), 'd', { mode: 'overwrite', sizeBytes: 2000, policy: 'tiny' });
    await commit(region, content(0, 2000));
    pair.loseBoth(metadataOnly);
    const reader = await Region.open(pair.connect(), 'd', key);
    expect((await reader.latest())?.generation).toBe(0);
    expect(await codeOf(reader.readWhole(0))).toBe('CHECKSUM_MISMATCH:generation');
  });

  it('needs a connection that can flush', async () => {
    const pair = new FakePair();
    const conn = pair.connect();
    const noFlush = { allocate: conn.allocate.bind(conn), unlock: conn.unlock.bind(conn), write: conn.write.bind(conn), read: conn.read.bind(conn), release: conn.release.bind(conn), list: conn.list.bind(conn) };
    expect(await codeOf(Region.create(noFlush, 'd', { mode: 'append', sizeBytes: 1000, policy: 'tiny' }, { durable: true }))).toBe('BAD_FIELD:durable');
    expect(pair.allocs.size).toBe(0);
    expect(await codeOf(Region.create(conn, 'd', { mode: 'append', sizeBytes: 1000, policy: 'tiny' }, { durable: 'yes' as never }))).toBe('BAD_FIELD:durable');
  });

  for (const mode of ['overwrite', 'append'] as const) {
    it(`${mode}: flushes data before the metadata that lists it; both lost at any request of a commit leaves the previous generation or the new one, whole`, async () => {
      const make = async (): Promise<{ pair: FakePair; region: Region; key: string; before: Map<number, Buffer>; steps: string[] }> => {
        const pair = new FakePair();
        const steps: string[] = [];
        const opts: RegionCreateOptions = mode === 'overwrite' ? { mode, sizeBytes: 2000, generations: 2, policy: 'tiny' } : { mode, sizeBytes: 20_000, policy: 'tiny' };
        const { region, key } = await Region.create(pair.connect(), 'd', opts, { durable: true, onStep: (s) => void steps.push(s) });
        const before = new Map<number, Buffer>();
        for (let g = 0; g < 3; g++) {
          before.set(g, content(g, 1000 + g));
          await commit(region, before.get(g)!);
        }
        if (mode === 'overwrite') before.delete(0);
        steps.length = 0;
        return { pair, region, key, before, steps };
      };
      const dry = await make();
      await commit(dry.region, content(3, 1800), 600);
      expect(dry.steps.indexOf(REGION_STEPS.commitFlushData)).toBe(dry.steps.indexOf(REGION_STEPS.commitWrite) - 1);
      expect(dry.steps[dry.steps.length - 1]).toBe(REGION_STEPS.commitFlushMetadata);
      if (mode === 'overwrite') expect(dry.steps.indexOf(REGION_STEPS.beginFlush)).toBe(dry.steps.indexOf(REGION_STEPS.beginDrop) + 1);
      const outcomes = new Set<number>();
      for (let step = 0; step <= dry.steps.length; step++) {
        for (const how of ['crash', 'crash-after-landing'] as const) {
          for (const destaged of [metadataOnly, () => false, () => true]) {
            const { pair, region, key, before } = await make();
            if (step < dry.steps.length) pair.faults.set(pair.seen.length + step, { kind: how });
            let committed = false;
            try {
              await commit(region, content(3, 1800), 600);
              committed = true;
            } catch (err) {
              expect(isPagepairError(err, 'NOT_ACTIVE')).toBe(true);
            }
            pair.loseBoth(destaged);
            pair.restart();
            const where = `${mode}, ${how} at step ${step} (${dry.steps[step] ?? 'after the commit'}), destaged ${destaged.name || String(destaged)}`;
            const reader = await Region.open(pair.connect(), 'd', key);
            const listed = await reader.list();
            const latest = listed[listed.length - 1]!.generation;
            expect([2, 3], where).toContain(latest);
            if (committed) expect(latest, where).toBe(3);
            outcomes.add(latest);
            for (const g of listed) {
              const want = g.generation === 3 ? content(3, 1800) : before.get(g.generation)!;
              expect((await reader.readWhole(g.generation)).equals(want), `${where}: generation ${g.generation}`).toBe(true);
            }
            for (const g of before.keys()) if (mode === 'append' || g % 2 !== 3 % 2) expect(listed.map((x) => x.generation), where).toContain(g);
          }
        }
      }
      expect([...outcomes].sort()).toEqual([2, 3]);
    });
  }
});
