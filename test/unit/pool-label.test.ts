// The pool label's failed-slot set and currentSince (pool-label.ts), and how
// pool-members.ts judges members from the newest labels: a member the newest
// labels name is out; one they do not name, with an older label, is current
// (its label write is late); a label from before the set is judged by
// generation alone.

import { describe, expect, it } from 'vitest';
import { crc32c } from '../../src/protocol/crc32c.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import { decodePoolLabel, encodePoolLabel, type PoolLabel } from '../../src/store/pool-label.js';
import { poolView, staleness } from '../../src/store/pool-members.js';

const POOL = '4b2a9c1e-7d3f-4e8a-9b6c-2f1e0d3c4b5a';
const base: PoolLabel = { poolId: POOL, layout: 'parity2', slot: 0, devices: 32, generation: 7, dataBytes: 1 << 20, chunkBytes: 4096, mirroredPrefixBytes: 0 };

function decoded(l: PoolLabel): PoolLabel {
  const d = decodePoolLabel(encodePoolLabel(l));
  if (typeof d === 'string') throw new Error(d);
  return d;
}

function refusal(f: () => unknown): string {
  try {
    f();
    return 'accepted';
  } catch (err) {
    return isPagepairError(err) ? `${err.code}: ${err.message}` : String(err);
  }
}

describe('pool label: failed slots', () => {
  it('round-trips the failed-slot set (slots 0 and 31 too) and currentSince', () => {
    expect(decoded({ ...base, failedSlots: [31, 0, 5], currentSince: 3 })).toMatchObject({ failedSlots: [0, 5, 31], failedSlotsRecorded: true, currentSince: 3, generation: 7 });
    expect(decoded(base)).toMatchObject({ failedSlots: [], failedSlotsRecorded: true, currentSince: 7 });
    // generation − currentSince is kept in 16 bits: further back reads as 65535 back.
    expect(decoded({ ...base, generation: 100_000, currentSince: 1 }).currentSince).toBe(100_000 - 65535);
  });

  it('refuses a slot outside the pool or past 31, and currentSince past the generation', () => {
    expect(refusal(() => encodePoolLabel({ ...base, devices: 4, slot: 0, failedSlots: [4] }))).toMatch(/^BAD_FIELD: failed slot 4/);
    expect(refusal(() => encodePoolLabel({ ...base, devices: 40, failedSlots: [32] }))).toMatch(/^BAD_FIELD: failed slot 32/);
    expect(refusal(() => encodePoolLabel({ ...base, currentSince: 8 }))).toMatch(/^BAD_FIELD: currentSince/);
  });

  it('a label from before the set (bytes 9..12 and 56..60 zero) decodes as naming no slot, and says it does not record them', () => {
    const b = Buffer.from(encodePoolLabel({ ...base, failedSlots: [2], currentSince: 1 }));
    b.fill(0, 9, 12);
    b.fill(0, 56, 60);
    b.writeUInt32LE(crc32c(b.subarray(0, 60)), 60);
    expect(decodePoolLabel(b)).toMatchObject({ generation: 7, failedSlots: [], failedSlotsRecorded: false, currentSince: 7 });
  });
});

describe('pool label: the rebuild record', () => {
  it('round-trips the slot being rebuilt and its device name (UTF-8, up to 1024 bytes); none decodes as null', () => {
    expect(decoded({ ...base, rebuilding: { slot: 3, name: 'nbd+unix:///spare?socket=/run/é.sock' } }).rebuilding).toEqual({ slot: 3, name: 'nbd+unix:///spare?socket=/run/é.sock' });
    const long = `/${'d'.repeat(1023)}`;
    expect(decoded({ ...base, rebuilding: { slot: 0, name: long } }).rebuilding).toEqual({ slot: 0, name: long });
    expect(decoded(base).rebuilding).toBeNull();
    // The 64 bytes before it differ only in the flag: a build that knows no record reads the same label.
    const withRecord = encodePoolLabel({ ...base, rebuilding: { slot: 3, name: '/x' } });
    const without = encodePoolLabel(base);
    expect(withRecord.subarray(10, 60)).toEqual(without.subarray(10, 60));
    expect(withRecord.subarray(0, 9)).toEqual(without.subarray(0, 9));
  });

  it('refuses an empty or too long name and a slot outside the pool', () => {
    expect(refusal(() => encodePoolLabel({ ...base, rebuilding: { slot: 0, name: '' } }))).toMatch(/^BAD_FIELD: a rebuilt device's name takes 1 to 1024 bytes, got 0/);
    expect(refusal(() => encodePoolLabel({ ...base, rebuilding: { slot: 0, name: `/${'é'.repeat(600)}` } }))).toMatch(/^BAD_FIELD: a rebuilt device's name takes 1 to 1024 bytes, got 1201/);
    expect(refusal(() => encodePoolLabel({ ...base, devices: 4, rebuilding: { slot: 4, name: '/x' } }))).toMatch(/^BAD_FIELD: rebuilding slot 4/);
  });

  it('a damaged or cut record makes the label copy unreadable (the other copy wins), named', () => {
    const b = Buffer.from(encodePoolLabel({ ...base, rebuilding: { slot: 2, name: '/dev/sdb' } }));
    const flipped = Buffer.from(b);
    flipped[70] = flipped[70]! ^ 1;
    expect(decodePoolLabel(flipped)).toBe('rebuild record checksum mismatch');
    expect(decodePoolLabel(b.subarray(0, 66))).toBe('rebuild record cut short');
    const huge = Buffer.from(b);
    huge.writeUInt16LE(5000, 64);
    expect(decodePoolLabel(huge)).toBe('rebuild record with a 5000-byte name');
  });
});

describe('pool members judged from the newest labels', () => {
  const at = (slot: number, generation: number, failedSlots: number[], currentSince = 1): PoolLabel => decoded({ ...base, devices: 4, slot, generation, failedSlots, currentSince });

  it("a move half written: the slot named is out, the members the move has not reached are in", () => {
    const labels = [at(0, 3, [1]), at(1, 2, []), at(2, 2, []), at(3, 2, [])];
    const view = poolView(labels, POOL);
    expect(view).toMatchObject({ generation: 3, since: 1 });
    expect([...view.out!]).toEqual([1]);
    expect(labels.map((l) => staleness(l, view))).toEqual([null, 'stale: pool generation 2, the others are at 3', null, null]);
  });

  it('two moves to one generation naming different slots: out is their union', () => {
    const labels = [at(0, 3, [1]), at(1, 3, [2]), at(2, 3, [1]), at(3, 3, [2])];
    const view = poolView(labels, POOL);
    expect([...view.out!].sort()).toEqual([1, 2]);
    expect(labels.map((l) => staleness(l, view) === null)).toEqual([true, false, false, true]);
  });

  it('a label older than currentSince is of a device that left the pool: stale though not named', () => {
    const labels = [at(0, 5, [], 4), at(1, 2, [], 1), at(2, 5, [], 4), at(3, 4, [], 4)];
    const view = poolView(labels, POOL);
    expect(labels.map((l) => staleness(l, view) === null)).toEqual([true, false, true, true]);
  });

  it('newest labels from before the set: every older label is stale, as before; a rebuild unfinished (generation 0) always is', () => {
    const old = (slot: number, generation: number): PoolLabel => ({ ...at(slot, generation, []), failedSlotsRecorded: false, currentSince: generation });
    const labels = [old(0, 3), at(1, 2, []), old(2, 3), at(3, 0, [], 0)];
    const view = poolView(labels, POOL);
    expect(view.out).toBeNull();
    expect(labels.map((l) => staleness(l, view) === null)).toEqual([true, false, true, false]);
  });
});
