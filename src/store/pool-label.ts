// The label at the start of every device of a pool (issue 14): which pool it
// belongs to, which slot it fills, how many devices the pool has, its layout,
// and the pool's generation, which grows whenever a device leaves or joins
// the pool. A device whose label names another pool or another slot is
// refused at open, and a stale one (see below) opens unused: a wrong,
// reordered or stale device never serves reads.
//
// A parity layout's label also holds its chunk size and how many of the
// pool's first bytes are plain copies on every member (the mirrored prefix);
// a mirror writes 0 there. A device being rebuilt carries generation 0 until
// the rebuild is whole: older than any pool, so a crash leaves it stale.
//
// The label also names the slots that are out of the pool at its
// generation (failed, stale or being rebuilt): a member whose label is
// older than the newest is stale only when the newest labels name its slot.
// Both controllers write the labels; one's label write to some members may
// land after the other has read them, so "older generation" alone cannot
// tell a member that missed writes from one whose label is merely late.
// Slots 0 to 31 can be named: a pool has at most POOL_MEMBERS_MAX members.
// A device that left the pool (moved off by a replace, or failed and
// replaced since) is no longer named once its slot's new device joined: the
// label also says since which generation the members are the current ones
// (currentSince), and a label older than that is stale whatever the set.
// Labels written before the set existed (flag bit clear) name no slot, and
// are judged by generation alone.
//
// While a member is being rebuilt and the pair serves, the labels also name
// the slot being rebuilt and the new device (its path or URI), so that the
// other controller's pool object opens it and writes it too (pool-rebuild.ts):
// flag bit 2 of byte 9, and a record after the 64 bytes, with its own CRC.
//
// Two copies, in the first two 4 KiB blocks, each with a CRC32C; the one
// with the higher generation (and a good CRC) wins, so a label write torn by
// a crash leaves the other. The pool's data starts after them
// (POOL_LABEL_AREA_BYTES).

import { crc32c } from '../protocol/crc32c.js';
import { PagepairError } from '../protocol/errors.js';
import { bytesToUuid, isUuid, uuidToBytes } from './layout.js';

export const POOL_LABEL_MAGIC = 'PGPL';
export const POOL_LABEL_VERSION = 1;
/** Two label copies of one block each; the pool's bytes start here on every device. */
export const POOL_LABEL_AREA_BYTES = 2 * 4096;
const LABEL_BYTES = 64;
/** The most members a pool may have: the failed-slot set is a 32-bit map. */
export const POOL_MEMBERS_MAX = 32;
/** Flag (byte 9): bytes 56..60 hold the failed-slot set. Clear in labels written before it existed. */
const FLAG_FAILED_SET = 1;
/** Flag (byte 9): a rebuild record follows the 64 bytes. */
const FLAG_REBUILDING = 2;
/** The longest device name a rebuild record holds, in UTF-8 bytes. */
export const POOL_REBUILD_NAME_MAX_BYTES = 1024;
/** Bytes to read at a label copy: the label and the longest rebuild record. */
export const POOL_LABEL_READ_BYTES = LABEL_BYTES + 4 + POOL_REBUILD_NAME_MAX_BYTES + 4;

export type PoolLayout = 'mirror' | 'parity' | 'parity2';

export interface PoolLabel {
  poolId: string;
  layout: PoolLayout;
  /** This device's place in the pool, 0-based. */
  slot: number;
  devices: number;
  /** Grows whenever a device leaves or joins: a device with an older one is stale. 0: being rebuilt. */
  generation: number;
  /** Bytes of the pool's data area on this device (after the labels). */
  dataBytes: number;
  /** Bytes of one chunk of a parity row; 0 (or absent) for a mirror. */
  chunkBytes?: number;
  /** The pool's first bytes, plain copies on every member; 0 (or absent) for a mirror. */
  mirroredPrefixBytes?: number;
  /** Slots out of the pool at this generation (failed, stale, being rebuilt), ascending. Absent or empty: none. */
  failedSlots?: readonly number[];
  /**
   * Decoded only: whether the label records its failed slots (written by a
   * build that keeps the set). When false failedSlots is empty and says nothing.
   */
  failedSlotsRecorded?: boolean;
  /**
   * A label older than this generation is of a device that is no longer the
   * pool's (a slot was filled anew at the generation after it). Absent: this
   * label's own generation. Stored as generation − currentSince, at most 65535.
   */
  currentSince?: number;
  /**
   * A member being rebuilt while the pair serves: its slot, and the device
   * filling it, as a name every controller can open (an absolute path or an
   * nbd:// URI). Absent or null: none.
   */
  rebuilding?: { slot: number; name: string } | null;
}

const LAYOUT_CODES: Record<PoolLayout, number> = { mirror: 1, parity: 2, parity2: 3 };

//  0 magic "PGPL" | 4 u16 version | 6 u8 layout | 7 u8 slot | 8 u8 devices | 9 u8 flags
// 10 u16 generation − currentSince (saturating)
// 12 u32 generation low | 16 u32 generation high | 20 uuid poolId (16) | 36 u32 dataBytes low
// 40 u32 dataBytes high | 44 u32 chunkBytes | 48 u32 mirroredPrefixBytes low
// 52 u32 mirroredPrefixBytes high | 56 u32 failed slots (bit s: slot s is out) | 60 u32 CRC32C of bytes 0..60
// With flag 2 (a rebuild record): 64 u16 name length L (1..1024) | 66 u8 slot | 67 u8 0 |
// 68 name (UTF-8, L bytes) | 68 + L u32 CRC32C of bytes 64..68 + L
// (44..56 were zero before the parity layouts: a mirror label reads as chunk 0, prefix 0.
// 9..12 and 56..60 were zero before the failed-slot set: such a label reads as recording none.)

export function encodePoolLabel(l: PoolLabel): Buffer {
  if (!isUuid(l.poolId)) throw new PagepairError('BAD_FIELD', `poolId must be a uuid, got ${JSON.stringify(l.poolId)}`, 'poolId');
  if (!Number.isInteger(l.devices) || l.devices < 1 || l.devices > 255) throw new PagepairError('BAD_FIELD', `a pool has 1 to 255 devices, got ${l.devices}`, 'devices');
  if (!Number.isInteger(l.slot) || l.slot < 0 || l.slot >= l.devices) throw new PagepairError('BAD_FIELD', `slot ${l.slot} is not one of the pool's ${l.devices}`, 'slot');
  if (!Number.isSafeInteger(l.generation) || l.generation < 0) throw new PagepairError('BAD_FIELD', `generation must be a non-negative integer, got ${l.generation}`, 'generation');
  if (!Number.isSafeInteger(l.dataBytes) || l.dataBytes < 0) throw new PagepairError('BAD_FIELD', `dataBytes must be a non-negative integer, got ${l.dataBytes}`, 'dataBytes');
  const chunkBytes = l.chunkBytes ?? 0;
  const prefixBytes = l.mirroredPrefixBytes ?? 0;
  if (!Number.isInteger(chunkBytes) || chunkBytes < 0 || chunkBytes > 0xffff_ffff) throw new PagepairError('BAD_FIELD', `chunkBytes must fit 32 bits, got ${chunkBytes}`, 'chunkBytes');
  if (!Number.isSafeInteger(prefixBytes) || prefixBytes < 0) throw new PagepairError('BAD_FIELD', `mirroredPrefixBytes must be a non-negative integer, got ${prefixBytes}`, 'mirroredPrefixBytes');
  let failedMap = 0;
  for (const s of l.failedSlots ?? []) {
    if (!Number.isInteger(s) || s < 0 || s >= l.devices || s >= POOL_MEMBERS_MAX) {
      throw new PagepairError('BAD_FIELD', `failed slot ${s} is not one of the pool's ${Math.min(l.devices, POOL_MEMBERS_MAX)} nameable slots`, 'failedSlots');
    }
    failedMap |= 1 << s;
  }
  const since = l.currentSince ?? l.generation;
  if (!Number.isSafeInteger(since) || since < 0 || since > l.generation) throw new PagepairError('BAD_FIELD', `currentSince must be 0 to the generation (${l.generation}), got ${since}`, 'currentSince');
  let record: Buffer | null = null;
  if (l.rebuilding !== undefined && l.rebuilding !== null) {
    const { slot, name } = l.rebuilding;
    if (!Number.isInteger(slot) || slot < 0 || slot >= l.devices) throw new PagepairError('BAD_FIELD', `rebuilding slot ${slot} is not one of the pool's ${l.devices}`, 'rebuilding');
    const nameBytes = Buffer.from(name, 'utf8');
    if (nameBytes.length < 1 || nameBytes.length > POOL_REBUILD_NAME_MAX_BYTES) {
      throw new PagepairError('BAD_FIELD', `a rebuilt device's name takes 1 to ${POOL_REBUILD_NAME_MAX_BYTES} bytes, got ${nameBytes.length}`, 'rebuilding');
    }
    record = Buffer.alloc(4 + nameBytes.length + 4);
    record.writeUInt16LE(nameBytes.length, 0);
    record.writeUInt8(slot, 2);
    nameBytes.copy(record, 4);
    record.writeUInt32LE(crc32c(record.subarray(0, 4 + nameBytes.length)), 4 + nameBytes.length);
  }
  const b = Buffer.alloc(LABEL_BYTES + (record?.length ?? 0));
  b.write(POOL_LABEL_MAGIC, 0, 'latin1');
  b.writeUInt16LE(POOL_LABEL_VERSION, 4);
  b.writeUInt8(LAYOUT_CODES[l.layout], 6);
  b.writeUInt8(l.slot, 7);
  b.writeUInt8(l.devices, 8);
  b.writeUInt8(FLAG_FAILED_SET | (record !== null ? FLAG_REBUILDING : 0), 9);
  b.writeUInt16LE(Math.min(0xffff, l.generation - since), 10);
  writeU53(b, 12, l.generation);
  uuidToBytes(l.poolId, 'poolId').copy(b, 20);
  writeU53(b, 36, l.dataBytes);
  b.writeUInt32LE(chunkBytes, 44);
  writeU53(b, 48, prefixBytes);
  b.writeUInt32LE(failedMap >>> 0, 56);
  b.writeUInt32LE(crc32c(b.subarray(0, 60)), 60);
  record?.copy(b, LABEL_BYTES);
  return b;
}

/** The label in `b`, or why it is not one. */
export function decodePoolLabel(b: Buffer): PoolLabel | string {
  if (b.length < LABEL_BYTES) return 'short read';
  if (b.toString('latin1', 0, 4) !== POOL_LABEL_MAGIC) return 'no pool label';
  if (b.readUInt32LE(60) !== crc32c(b.subarray(0, 60))) return 'label checksum mismatch';
  const version = b.readUInt16LE(4);
  if (version !== POOL_LABEL_VERSION) return `label version ${version}, this build reads ${POOL_LABEL_VERSION}`;
  const layout = (Object.keys(LAYOUT_CODES) as PoolLayout[]).find((k) => LAYOUT_CODES[k] === b.readUInt8(6));
  if (layout === undefined) return `unknown layout code ${b.readUInt8(6)}`;
  const recorded = (b.readUInt8(9) & FLAG_FAILED_SET) !== 0;
  const failedMap = recorded ? b.readUInt32LE(56) : 0;
  const failedSlots: number[] = [];
  for (let s = 0; s < POOL_MEMBERS_MAX; s++) if ((failedMap >>> s) & 1) failedSlots.push(s);
  const generation = readU53(b, 12);
  let rebuilding: { slot: number; name: string } | null = null;
  if ((b.readUInt8(9) & FLAG_REBUILDING) !== 0) {
    if (b.length < LABEL_BYTES + 4) return 'rebuild record cut short';
    const len = b.readUInt16LE(LABEL_BYTES);
    if (len < 1 || len > POOL_REBUILD_NAME_MAX_BYTES || b.length < LABEL_BYTES + 4 + len + 4) return `rebuild record with a ${len}-byte name`;
    if (b.readUInt32LE(LABEL_BYTES + 4 + len) !== crc32c(b.subarray(LABEL_BYTES, LABEL_BYTES + 4 + len))) return 'rebuild record checksum mismatch';
    rebuilding = { slot: b.readUInt8(LABEL_BYTES + 2), name: b.toString('utf8', LABEL_BYTES + 4, LABEL_BYTES + 4 + len) };
  }
  return {
    poolId: bytesToUuid(b.subarray(20, 36)),
    layout,
    slot: b.readUInt8(7),
    devices: b.readUInt8(8),
    generation,
    dataBytes: readU53(b, 36),
    chunkBytes: b.readUInt32LE(44),
    mirroredPrefixBytes: readU53(b, 48),
    failedSlots,
    failedSlotsRecorded: recorded,
    currentSince: recorded ? Math.max(0, generation - b.readUInt16LE(10)) : generation,
    rebuilding,
  };
}

/** Of a device's two label copies, the valid one with the higher generation, or why neither is. */
export function newestPoolLabel(copy0: Buffer, copy1: Buffer): PoolLabel | string {
  const a = decodePoolLabel(copy0);
  const b = decodePoolLabel(copy1);
  if (typeof a === 'string' && typeof b === 'string') return a === b ? a : `copy 0: ${a}; copy 1: ${b}`;
  if (typeof a === 'string') return b;
  if (typeof b === 'string') return a;
  return b.generation > a.generation ? b : a;
}

/** Which copy a label of `generation` is written to: they alternate, so the other keeps the one before. */
export function labelCopyFor(generation: number): 0 | 1 {
  return generation % 2 === 0 ? 0 : 1;
}

function writeU53(b: Buffer, off: number, v: number): void {
  b.writeUInt32LE(v % 2 ** 32, off);
  b.writeUInt32LE(Math.floor(v / 2 ** 32), off + 4);
}

function readU53(b: Buffer, off: number): number {
  return b.readUInt32LE(off + 4) * 2 ** 32 + b.readUInt32LE(off);
}
