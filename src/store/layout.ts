// The store's on-device format: where each area lives and how each record is
// encoded. Pure: bytes in, values out, no I/O, so the core and the simulator
// can import it. docs/formats.md describes the same bytes in prose; keep the
// two in step. Every number is little-endian.

import { crc32c, crc32cRange } from '../protocol/crc32c.js';
import { PagepairError, invariant } from '../protocol/errors.js';
import { PAGE_HEADER_BYTES } from './types.js';
import type {
  AllocationRecord,
  EpochRecord,
  Geometry,
  MailboxSlot,
  StoredPageHeader,
  Superblock,
} from './types.js';

export const BLOCK_BYTES = 4096;
/**
 * The store's format, recorded in the superblock. 2: every page has two
 * slots (a torn page write keeps the previous version). A store of another
 * version is refused at open, never read under this version's rules.
 */
export const FORMAT_VERSION = 2;
/** Version field of the table header, heartbeat slot and epoch record: unchanged since format 1. */
export const RECORD_VERSION = 1;
/**
 * The table header's version when an entry is keyed (entry byte 38 bit 0 and
 * its key digest at 136): a controller of before keyed allocations refuses
 * such a table rather than serve a keyed allocation to everyone. A table
 * with no keyed entry is still written as RECORD_VERSION; both are read.
 */
export const TABLE_VERSION_KEYED = 2;
/** Table entry flag bits (entry byte 38). */
const ENTRY_KEYED = 0x01;
/** The entry is a copy-on-write snapshot (AllocationRecord.snapshot); its origin is the allocation named by its name up to the last '@'. */
const ENTRY_SNAPSHOT = 0x02;
const KEY_DIGEST_AT = 136;
const KEY_DIGEST_BYTES = 16;
export const MAILBOX_BYTES_DEFAULT = 64 * 1024;
/** Two heartbeat slots and two epoch-record copies, one block each. */
export const MAILBOX_BYTES_MIN = 4 * BLOCK_BYTES;
export const TABLE_ENTRIES_MAX_DEFAULT = 4096;
/** The controller ids that own a heartbeat slot. */
export const CONTROLLER_IDS = [1, 2] as const;

export const SUPERBLOCK_MAGIC = 'PGSB';
export const TABLE_MAGIC = 'PGAT';
export const PAGE_MAGIC = 'PGPG';
export const MAILBOX_SLOT_MAGIC = 'PGMB';
export const EPOCH_MAGIC = 'PGEP';

/** Bytes of the superblock record at the start of each superblock copy. */
export const SUPERBLOCK_RECORD_BYTES = 128;
export const TABLE_HEADER_BYTES = 64;
export const TABLE_ENTRY_BYTES = 160;
export const MAILBOX_SLOT_BYTES = 64;
export const EPOCH_RECORD_BYTES = 64;
/** Longest allocation name and policy name a table entry holds, in bytes of UTF-8. */
export const NAME_BYTES_MAX = 64;
export const POLICY_BYTES_MAX = 32;

// ---------------------------------------------------------------- geometry

export function roundUpToBlock(bytes: number, blockBytes = BLOCK_BYTES): number {
  return Math.ceil(bytes / blockBytes) * blockBytes;
}

export function tableCopyBytesFor(tableEntriesMax: number): number {
  return roundUpToBlock(TABLE_HEADER_BYTES + tableEntriesMax * TABLE_ENTRY_BYTES);
}

export interface GeometryOptions {
  deviceBytes: number;
  tableEntriesMax?: number;
  mailboxBytes?: number;
  /**
   * What the data area and every extent start on, and what an extent's
   * stripes are padded to (BLOCK_BYTES unless the device is a parity pool:
   * then its row, so that the pages sharing a row are one stripe of one
   * allocation, and the metadata before the data area sits in no row).
   */
  alignBytes?: number;
}

/** Lays the areas out on a device of deviceBytes. Throws BAD_CONFIG when the
 *  options are unusable or leave no data area. */
export function computeGeometry(opts: GeometryOptions): Geometry {
  const tableEntriesMax = opts.tableEntriesMax ?? TABLE_ENTRIES_MAX_DEFAULT;
  const mailboxBytes = opts.mailboxBytes ?? MAILBOX_BYTES_DEFAULT;
  if (!Number.isSafeInteger(tableEntriesMax) || tableEntriesMax < 1 || tableEntriesMax > 1_000_000) {
    throw new PagepairError('BAD_CONFIG', `tableEntriesMax must be an integer in 1..1000000, got ${tableEntriesMax}`, 'tableEntriesMax');
  }
  if (!Number.isSafeInteger(mailboxBytes) || mailboxBytes < MAILBOX_BYTES_MIN || mailboxBytes % BLOCK_BYTES !== 0) {
    throw new PagepairError(
      'BAD_CONFIG',
      `mailboxBytes must be a multiple of ${BLOCK_BYTES} and at least ${MAILBOX_BYTES_MIN}, got ${mailboxBytes}`,
      'mailboxBytes',
    );
  }
  const alignBytes = opts.alignBytes ?? BLOCK_BYTES;
  if (!Number.isSafeInteger(alignBytes) || alignBytes < BLOCK_BYTES || alignBytes % BLOCK_BYTES !== 0 || alignBytes > 0xffff_f000) {
    throw new PagepairError('BAD_CONFIG', `alignBytes must be a multiple of ${BLOCK_BYTES} below 4 GiB, got ${alignBytes}`, 'alignBytes');
  }
  const superblockCopyBytes = BLOCK_BYTES;
  const mailboxOffset = 2 * superblockCopyBytes;
  const tableOffset = mailboxOffset + mailboxBytes;
  const tableCopyBytes = tableCopyBytesFor(tableEntriesMax);
  const dataOffset = roundUpToBlock(tableOffset + 2 * tableCopyBytes, alignBytes);
  // The data area ends on an alignment boundary so that every extent, which
  // is rounded to it, fits whole.
  const dataBytes = Math.floor((opts.deviceBytes - dataOffset) / alignBytes) * alignBytes;
  if (!Number.isSafeInteger(opts.deviceBytes) || dataBytes < alignBytes) {
    throw new PagepairError(
      'BAD_CONFIG',
      `a store of ${opts.deviceBytes} bytes leaves no data area (metadata takes ${dataOffset} bytes)`,
      'sizeBytes',
    );
  }
  return {
    blockBytes: BLOCK_BYTES,
    superblockCopyBytes,
    mailboxOffset,
    mailboxBytes,
    tableOffset,
    tableCopyBytes,
    tableEntriesMax,
    dataOffset,
    dataBytes,
    alignBytes,
  };
}

/** Device offset of superblock copy 0 or 1. */
export function superblockCopyOffset(g: Geometry | undefined, copy: 0 | 1): number {
  return copy * (g?.superblockCopyBytes ?? BLOCK_BYTES);
}

/** Device offset of a controller's heartbeat slot block (ids 1 and 2). */
export function mailboxSlotOffset(g: Geometry, controllerId: number): number {
  invariant(controllerId === 1 || controllerId === 2, `controller id ${controllerId} has a mailbox slot`);
  return g.mailboxOffset + (controllerId - 1) * g.blockBytes;
}

/** Device offset of epoch-record copy 0 or 1 (after the two slot blocks). */
export function epochCopyOffset(g: Geometry, copy: 0 | 1): number {
  return g.mailboxOffset + (2 + copy) * g.blockBytes;
}

export function tableCopyOffset(g: Geometry, copy: 0 | 1): number {
  return g.tableOffset + copy * g.tableCopyBytes;
}

/** Which copy holds sequence number seq (tables and epoch records alike). */
export function copyForSeq(seq: number): 0 | 1 {
  return seq % 2 === 0 ? 0 : 1;
}

/** Slots each page has in its extent: the newest synced version is never overwritten in place. */
export const PAGE_SLOTS = 2;
/**
 * An extent is a row of stripes. A stripe holds slot 0 of some consecutive
 * pages back to back, then slot 1 of the same pages: so pages destaged
 * together into the same slot index are written end to end, in one vectored
 * write, as they were with one slot a page. Each half of a stripe holds as
 * many slots as fit in this many bytes (at least one).
 */
export const STRIPE_HALF_BYTES_MAX = 64 * 1024;

/** Bytes of one page slot: header then data. */
export function pageSlotBytes(pageSizeBytes: number): number {
  return PAGE_HEADER_BYTES + pageSizeBytes;
}

/** How pages of one size lie in their extent's stripes. */
export interface StripeShape {
  /** Pages whose slots share a stripe. */
  perStripe: number;
  /** Bytes from one stripe's start to the next. */
  pitchBytes: number;
}

const shapes = new Map<number, StripeShape>();

/**
 * The stripe shape for pages of pageSizeBytes in a store aligned to
 * alignBytes. At BLOCK_BYTES (a file, a mirror) stripes lie back to back,
 * each as many slot pairs as fit in STRIPE_HALF_BYTES_MAX a half. Aligned to
 * a parity row, a stripe is padded to whole rows and holds as many pages as
 * fit there: its pages share rows with no other stripe, so whoever owns them
 * is the only writer of those rows.
 */
export function stripeShape(pageSizeBytes: number, alignBytes: number = BLOCK_BYTES): StripeShape {
  const key = pageSizeBytes * 0x1_0000_0000 + alignBytes;
  let shape = shapes.get(key);
  if (shape === undefined) {
    const slotBytes = pageSlotBytes(pageSizeBytes);
    const packed = Math.max(1, Math.floor(STRIPE_HALF_BYTES_MAX / slotBytes));
    if (alignBytes <= BLOCK_BYTES) {
      shape = { perStripe: packed, pitchBytes: PAGE_SLOTS * packed * slotBytes };
    } else {
      const pitchBytes = roundUpToBlock(PAGE_SLOTS * packed * slotBytes, alignBytes);
      shape = { perStripe: Math.floor(pitchBytes / (PAGE_SLOTS * slotBytes)), pitchBytes };
    }
    if (shapes.size > 1024) shapes.clear();
    shapes.set(key, shape);
  }
  return shape;
}

/** Pages whose slots share a stripe. */
export function pagesPerStripe(pageSizeBytes: number, alignBytes: number = BLOCK_BYTES): number {
  return stripeShape(pageSizeBytes, alignBytes).perStripe;
}

/**
 * Pages that must have one owner at a time, because their bytes share a
 * parity row: a stripe's pages when the store is aligned to rows, else 1.
 */
export function lockGroupPages(pageSizeBytes: number, alignBytes: number = BLOCK_BYTES): number {
  return alignBytes <= BLOCK_BYTES ? 1 : pagesPerStripe(pageSizeBytes, alignBytes);
}

/** Offset of slot `slot` (0 or 1) of page `page`, relative to the data area. */
export function pageSlotOffset(dataOffset: number, pageSizeBytes: number, page: number, slot: 0 | 1 = 0, alignBytes: number = BLOCK_BYTES): number {
  const { perStripe, pitchBytes } = stripeShape(pageSizeBytes, alignBytes);
  const slotBytes = pageSlotBytes(pageSizeBytes);
  const stripe = Math.floor(page / perStripe);
  return dataOffset + stripe * pitchBytes + (slot * perStripe + (page % perStripe)) * slotBytes;
}

/** Bytes of the extent an allocation of pageCount pages of pageSizeBytes
 *  occupies in the data area: whole stripes (two slots for every page, and
 *  for every page the last stripe could hold), rounded up to the alignment. */
export function extentBytes(pageSizeBytes: number, pageCount: number, alignBytes: number = BLOCK_BYTES): number {
  const { perStripe, pitchBytes } = stripeShape(pageSizeBytes, alignBytes);
  return roundUpToBlock(Math.ceil(pageCount / perStripe) * pitchBytes, alignBytes);
}

// ---------------------------------------------------------------- helpers

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuid(s: string): boolean {
  return UUID_RE.test(s);
}

/** The 16 bytes of a uuid string (any version; case ignored). */
export function uuidToBytes(uuid: string, field: string): Buffer {
  if (!isUuid(uuid)) throw new PagepairError('BAD_FIELD', `${field} must be a uuid, got ${JSON.stringify(uuid)}`, field);
  return Buffer.from(uuid.replace(/-/g, ''), 'hex');
}

/** The last guids whose bytes a page header was written with: every page write would parse its guid again. */
const guidBytesSeen = new Map<string, Buffer>();
const GUID_BYTES_SEEN_MAX = 256;

/** uuidToBytes for a page header's guid, remembered (the caller copies the bytes, never changes them). */
function guidBytes(guid: string): Buffer {
  let b = guidBytesSeen.get(guid);
  if (b === undefined) {
    b = uuidToBytes(guid, 'guid');
    if (guidBytesSeen.size >= GUID_BYTES_SEEN_MAX) guidBytesSeen.clear();
    guidBytesSeen.set(guid, b);
  }
  return b;
}

/** Lower-case canonical uuid text of 16 bytes. */
export function bytesToUuid(b: Uint8Array): string {
  const h = Buffer.from(b.buffer, b.byteOffset, 16).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function isAllZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

const TWO_32 = 2 ** 32;
/** The high 32 bits of a u64 at most Number.MAX_SAFE_INTEGER (2^53 - 1). */
const SAFE_HIGH_MAX = 0x1f_ffff;

/** A little-endian u64, as two 32-bit halves (no BigInt per field). */
function readU64(b: Buffer, off: number): number {
  const high = b.readUInt32LE(off + 4);
  // A u64 past 2^53 cannot be one we wrote: treat it like a bad checksum.
  return high > SAFE_HIGH_MAX ? Number.NaN : high * TWO_32 + b.readUInt32LE(off);
}

function writeU64(b: Buffer, off: number, v: number): void {
  invariant(Number.isSafeInteger(v) && v >= 0, `u64 field is a safe non-negative integer (${v})`);
  b.writeUInt32LE(v % TWO_32, off);
  b.writeUInt32LE(Math.floor(v / TWO_32), off + 4);
}

/** Whether the 4 bytes at off spell `magic` (ASCII), compared byte by byte. */
function hasMagic(b: Buffer, off: number, magic: string): boolean {
  return b[off] === magic.charCodeAt(0) && b[off + 1] === magic.charCodeAt(1) && b[off + 2] === magic.charCodeAt(2) && b[off + 3] === magic.charCodeAt(3);
}

/** CRC32C of b[0, crcOffset) — the record's checksum sits right after what it covers. */
function crcBefore(b: Buffer, crcOffset: number): number {
  return crc32c(b.subarray(0, crcOffset));
}

// ---------------------------------------------------------------- superblock
//
//   0 magic "PGSB"          4
//   4 formatVersion u32
//   8 pairId               16
//  24 blockBytes u32
//  28 superblockCopyBytes u32
//  32 mailboxOffset u64
//  40 mailboxBytes u64
//  48 tableOffset u64
//  56 tableCopyBytes u64
//  64 tableEntriesMax u32
//  68 reserved u32 (0)
//  72 dataOffset u64
//  80 dataBytes u64
//  88 createdAtMs u64
//  96 alignBytes u32 (0: BLOCK_BYTES)
// 100 reserved (0) .. 124
// 124 crc32c of bytes 0..124

const SB_CRC = SUPERBLOCK_RECORD_BYTES - 4;

export function encodeSuperblock(sb: Superblock): Buffer {
  const b = Buffer.alloc(SUPERBLOCK_RECORD_BYTES);
  const g = sb.geometry;
  b.write(SUPERBLOCK_MAGIC, 0, 'latin1');
  b.writeUInt32LE(sb.formatVersion, 4);
  uuidToBytes(sb.pairId, 'pairId').copy(b, 8);
  b.writeUInt32LE(g.blockBytes, 24);
  b.writeUInt32LE(g.superblockCopyBytes, 28);
  writeU64(b, 32, g.mailboxOffset);
  writeU64(b, 40, g.mailboxBytes);
  writeU64(b, 48, g.tableOffset);
  writeU64(b, 56, g.tableCopyBytes);
  b.writeUInt32LE(g.tableEntriesMax, 64);
  writeU64(b, 72, g.dataOffset);
  writeU64(b, 80, g.dataBytes);
  writeU64(b, 88, sb.createdAtMs);
  // 0 for BLOCK_BYTES: a store not aligned to rows keeps the bytes it had
  // before the field existed.
  b.writeUInt32LE(g.alignBytes === BLOCK_BYTES ? 0 : g.alignBytes, 96);
  b.writeUInt32LE(crcBefore(b, SB_CRC), SB_CRC);
  return b;
}

/**
 * The format version a superblock copy records, when its magic and checksum
 * are right (whatever the version); null otherwise. Tells a store of another
 * format version apart from a damaged one.
 */
export function superblockFormatVersion(b: Buffer): number | null {
  if (b.length < SUPERBLOCK_RECORD_BYTES || !hasMagic(b, 0, SUPERBLOCK_MAGIC)) return null;
  if (b.readUInt32LE(SB_CRC) !== crcBefore(b, SB_CRC)) return null;
  return b.readUInt32LE(4);
}

/** The superblock in b (a copy's first bytes), or the reason it is not valid. */
export function decodeSuperblock(b: Buffer): Superblock | string {
  if (b.length < SUPERBLOCK_RECORD_BYTES) return 'short read';
  if (isAllZero(b.subarray(0, SUPERBLOCK_RECORD_BYTES))) return 'blank (never formatted)';
  if (!hasMagic(b, 0, SUPERBLOCK_MAGIC)) return 'bad magic';
  if (b.readUInt32LE(SB_CRC) !== crcBefore(b, SB_CRC)) return 'bad checksum';
  const formatVersion = b.readUInt32LE(4);
  if (formatVersion !== FORMAT_VERSION) return `format version ${formatVersion} is not ${FORMAT_VERSION}`;
  const geometry: Geometry = {
    blockBytes: b.readUInt32LE(24),
    superblockCopyBytes: b.readUInt32LE(28),
    mailboxOffset: readU64(b, 32),
    mailboxBytes: readU64(b, 40),
    tableOffset: readU64(b, 48),
    tableCopyBytes: readU64(b, 56),
    tableEntriesMax: b.readUInt32LE(64),
    dataOffset: readU64(b, 72),
    dataBytes: readU64(b, 80),
    alignBytes: b.readUInt32LE(96) === 0 ? BLOCK_BYTES : b.readUInt32LE(96),
  };
  // The checksum proves the bytes are the ones written; this proves they were
  // written by this version's layout rules, which the rest of the code assumes.
  let expected: Geometry;
  try {
    expected = computeGeometry({
      deviceBytes: geometry.dataOffset + geometry.dataBytes,
      tableEntriesMax: geometry.tableEntriesMax,
      mailboxBytes: geometry.mailboxBytes,
      alignBytes: geometry.alignBytes,
    });
  } catch {
    return 'geometry fields are inconsistent';
  }
  for (const k of Object.keys(expected) as (keyof Geometry)[]) {
    if (expected[k] !== geometry[k]) return `geometry field ${k} is ${geometry[k]}, expected ${expected[k]}`;
  }
  const createdAtMs = readU64(b, 88);
  if (Number.isNaN(createdAtMs)) return 'bad createdAtMs';
  return { formatVersion, pairId: bytesToUuid(b.subarray(8, 24)), geometry, createdAtMs };
}

// ---------------------------------------------------------------- allocation table
//
// Header (TABLE_HEADER_BYTES):
//   0 magic "PGAT"  4
//   4 formatVersion u32
//   8 seq u64
//  16 entryCount u32
//  20 entryBytes u32 (TABLE_ENTRY_BYTES)
//  24 crc32c of the entryCount entries
//  28 dataUsedBytes + 1, u64: how far into the data area any allocation has
//     ever reached; everything past it was never written (still zero in a
//     sparse file), so a new extent there needs no clearing. 0 = not known.
//  36 reserved (0) .. 60
//  60 crc32c of header bytes 0..60
//
// Entry (TABLE_ENTRY_BYTES), entries packed right after the header:
//   0 guid 16
//  16 pageSizeBytes u32
//  20 pageCount u32
//  24 dataOffset u64
//  32 createdEpoch u32
//  36 nameBytes u8, 37 policyBytes u8
//  38 flags u8: bit 0 keyed (the allocation has an access key); bit 1
//     snapshot (read only; its origin is named by its name up to the last
//     '@'); other bits 0
//  39 reserved (0)
//  40 name (UTF-8, zero padded) 64
// 104 policy (UTF-8, zero padded) 32
// 136 keyDigest 16: the digest of a keyed allocation's access key (never the key); 0 when not keyed
// 152 reserved (0) .. 160

const TH_CRC = TABLE_HEADER_BYTES - 4;

export interface TableHeader {
  seq: number;
  entryCount: number;
  entriesCrc: number;
  /** Bytes of the data area any allocation has ever used, from its start; null when not recorded. */
  dataUsedBytes: number | null;
}

function utf8Field(s: string, max: number, field: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > max) {
    throw new PagepairError('TOO_LARGE', `${field} ${JSON.stringify(s)} is ${b.length} bytes of UTF-8; the table holds at most ${max}`, field);
  }
  return b;
}

function encodeEntry(r: AllocationRecord, out: Buffer, off: number): void {
  uuidToBytes(r.guid, 'guid').copy(out, off);
  out.writeUInt32LE(r.pageSizeBytes, off + 16);
  out.writeUInt32LE(r.pageCount, off + 20);
  writeU64(out, off + 24, r.dataOffset);
  out.writeUInt32LE(r.createdEpoch, off + 32);
  const name = utf8Field(r.name, NAME_BYTES_MAX, 'name');
  const policy = utf8Field(r.policy, POLICY_BYTES_MAX, 'policy');
  out.writeUInt8(name.length, off + 36);
  out.writeUInt8(policy.length, off + 37);
  name.copy(out, off + 40);
  policy.copy(out, off + 104);
  let flags = 0;
  if (r.keyDigest !== undefined) {
    invariant(r.keyDigest.length === KEY_DIGEST_BYTES, 'a key digest is 16 bytes');
    flags |= ENTRY_KEYED;
    r.keyDigest.copy(out, off + KEY_DIGEST_AT);
  }
  if (r.snapshot === true) flags |= ENTRY_SNAPSHOT;
  out.writeUInt8(flags, off + 38);
}

function decodeEntry(b: Buffer, off: number): AllocationRecord | string {
  const nameBytes = Math.min(b.readUInt8(off + 36), NAME_BYTES_MAX);
  const policyBytes = Math.min(b.readUInt8(off + 37), POLICY_BYTES_MAX);
  const flags = b.readUInt8(off + 38);
  if ((flags & ~(ENTRY_KEYED | ENTRY_SNAPSHOT)) !== 0) return `unknown entry flags 0x${flags.toString(16)}`;
  const record: AllocationRecord = {
    guid: bytesToUuid(b.subarray(off, off + 16)),
    name: b.toString('utf8', off + 40, off + 40 + nameBytes),
    policy: b.toString('utf8', off + 104, off + 104 + policyBytes),
    pageSizeBytes: b.readUInt32LE(off + 16),
    pageCount: b.readUInt32LE(off + 20),
    dataOffset: readU64(b, off + 24),
    createdEpoch: b.readUInt32LE(off + 32),
  };
  if ((flags & ENTRY_KEYED) !== 0) record.keyDigest = Buffer.from(b.subarray(off + KEY_DIGEST_AT, off + KEY_DIGEST_AT + KEY_DIGEST_BYTES));
  if ((flags & ENTRY_SNAPSHOT) !== 0) record.snapshot = true;
  return record;
}

/** Bytes a table copy of entryCount entries takes when written: header and
 *  entries, rounded up to a block so that writes stay block-aligned. */
export function tableWriteBytes(entryCount: number): number {
  return roundUpToBlock(TABLE_HEADER_BYTES + entryCount * TABLE_ENTRY_BYTES);
}

/** The bytes of one table copy (what writeTable writes). Throws NO_SPACE past
 *  tableEntriesMax and TOO_LARGE for a name or policy the entry cannot hold. */
export function encodeTable(seq: number, records: readonly AllocationRecord[], tableEntriesMax: number, dataUsedBytes: number | null = null): Buffer {
  if (records.length > tableEntriesMax) {
    throw new PagepairError('NO_SPACE', `the allocation table holds at most ${tableEntriesMax} entries, asked for ${records.length}`);
  }
  const b = Buffer.alloc(tableWriteBytes(records.length));
  records.forEach((r, i) => encodeEntry(r, b, TABLE_HEADER_BYTES + i * TABLE_ENTRY_BYTES));
  const entriesEnd = TABLE_HEADER_BYTES + records.length * TABLE_ENTRY_BYTES;
  b.write(TABLE_MAGIC, 0, 'latin1');
  b.writeUInt32LE(records.some((r) => r.keyDigest !== undefined) ? TABLE_VERSION_KEYED : RECORD_VERSION, 4);
  writeU64(b, 8, seq);
  b.writeUInt32LE(records.length, 16);
  b.writeUInt32LE(TABLE_ENTRY_BYTES, 20);
  b.writeUInt32LE(crc32c(b.subarray(TABLE_HEADER_BYTES, entriesEnd)), 24);
  if (dataUsedBytes !== null) {
    invariant(Number.isSafeInteger(dataUsedBytes) && dataUsedBytes >= 0, 'dataUsedBytes is a byte count');
    writeU64(b, 28, dataUsedBytes + 1);
  }
  b.writeUInt32LE(crcBefore(b, TH_CRC), TH_CRC);
  return b;
}

/** The header at the start of a table copy, or the reason it is not valid.
 *  'blank' means all zeros: a copy never written. */
export function decodeTableHeader(b: Buffer, tableEntriesMax: number): TableHeader | string {
  if (b.length < TABLE_HEADER_BYTES) return 'short read';
  if (isAllZero(b.subarray(0, TABLE_HEADER_BYTES))) return 'blank';
  if (!hasMagic(b, 0, TABLE_MAGIC)) return 'bad magic';
  if (b.readUInt32LE(TH_CRC) !== crcBefore(b, TH_CRC)) return 'bad header checksum';
  const version = b.readUInt32LE(4);
  if (version !== RECORD_VERSION && version !== TABLE_VERSION_KEYED) return 'bad format version';
  if (b.readUInt32LE(20) !== TABLE_ENTRY_BYTES) return 'bad entry size';
  const seq = readU64(b, 8);
  const entryCount = b.readUInt32LE(16);
  if (Number.isNaN(seq)) return 'bad seq';
  if (entryCount > tableEntriesMax) return `entry count ${entryCount} exceeds ${tableEntriesMax}`;
  const usedPlusOne = readU64(b, 28);
  if (Number.isNaN(usedPlusOne)) return 'bad dataUsedBytes';
  return { seq, entryCount, entriesCrc: b.readUInt32LE(24), dataUsedBytes: usedPlusOne === 0 ? null : usedPlusOne - 1 };
}

/** Decodes a whole table copy (at least tableWriteBytes(entryCount) bytes). */
export function decodeTable(
  b: Buffer,
  tableEntriesMax: number,
): { seq: number; records: AllocationRecord[]; dataUsedBytes: number | null } | string {
  const h = decodeTableHeader(b, tableEntriesMax);
  if (typeof h === 'string') return h;
  const entriesEnd = TABLE_HEADER_BYTES + h.entryCount * TABLE_ENTRY_BYTES;
  if (b.length < entriesEnd) return 'short read';
  if (crc32c(b.subarray(TABLE_HEADER_BYTES, entriesEnd)) !== h.entriesCrc) return 'bad entries checksum';
  const records: AllocationRecord[] = [];
  for (let i = 0; i < h.entryCount; i++) {
    const r = decodeEntry(b, TABLE_HEADER_BYTES + i * TABLE_ENTRY_BYTES);
    if (typeof r === 'string') return `entry ${i}: ${r}`;
    if (Number.isNaN(r.dataOffset)) return `entry ${i} has a bad dataOffset`;
    records.push(r);
  }
  return { seq: h.seq, records, dataUsedBytes: h.dataUsedBytes };
}

// ---------------------------------------------------------------- page header
//
//   0 magic "PGPG"  4
//   4 guid         16
//  20 page u32
//  24 version u64
//  32 epoch u32
//  36 data crc32c u32
//  40 data length u32
//  44 header crc32c u32: of all 64 header bytes with these four taken as zero
//  48 zero padding .. 64

const PH_CRC = 44;

const ZERO_CRC_FIELD = Buffer.alloc(4);

/** CRC32C of the header's 64 bytes with its own CRC field taken as zero (no copy of the header). */
function pageHeaderCrc(b: Buffer): number {
  const before = crc32cRange(b, 0, PH_CRC);
  return crc32cRange(b, PH_CRC + 4, PAGE_HEADER_BYTES, crc32c(ZERO_CRC_FIELD, before));
}

export function encodePageHeader(h: StoredPageHeader, dataLength: number, out?: Buffer): Buffer {
  const b = out ?? Buffer.alloc(PAGE_HEADER_BYTES);
  b.fill(0, 0, PAGE_HEADER_BYTES);
  b.write(PAGE_MAGIC, 0, 'latin1');
  guidBytes(h.guid).copy(b, 4);
  b.writeUInt32LE(h.page, 20);
  writeU64(b, 24, h.version);
  b.writeUInt32LE(h.epoch, 32);
  b.writeUInt32LE(h.crc >>> 0, 36);
  b.writeUInt32LE(dataLength, 40);
  b.writeUInt32LE(pageHeaderCrc(b), PH_CRC);
  return b;
}

export type PageHeaderDecode =
  | { kind: 'blank' }
  | { kind: 'valid'; header: StoredPageHeader; dataLength: number }
  | { kind: 'invalid'; reason: string };

export function decodePageHeader(b: Buffer): PageHeaderDecode {
  const h = b.subarray(0, PAGE_HEADER_BYTES);
  if (h.length < PAGE_HEADER_BYTES) return { kind: 'invalid', reason: 'short read' };
  if (isAllZero(h)) return { kind: 'blank' };
  if (!hasMagic(h, 0, PAGE_MAGIC)) return { kind: 'invalid', reason: 'bad header magic' };
  if (h.readUInt32LE(PH_CRC) !== pageHeaderCrc(h)) return { kind: 'invalid', reason: 'bad header checksum' };
  const version = readU64(h, 24);
  if (Number.isNaN(version)) return { kind: 'invalid', reason: 'bad version' };
  return {
    kind: 'valid',
    header: {
      guid: bytesToUuid(h.subarray(4, 20)),
      page: h.readUInt32LE(20),
      version,
      epoch: h.readUInt32LE(32),
      crc: h.readUInt32LE(36),
    },
    dataLength: h.readUInt32LE(40),
  };
}

// ---------------------------------------------------------------- page slots
//
// Each page has two slots (in stripes: pageSlotOffset). A write goes to the slot that does not
// hold the newest valid copy (see chooseWriteSlot), so a write torn by a power
// cut can only damage a copy that a newer, intact one makes redundant, or one
// written since the last sync. Reads take the valid slot with the highest
// version.

/** What one slot holds, as far as page `page` of allocation `guid` is concerned. */
export type PageSlotRead =
  /** All zeros, or a header another allocation (or another page) left: not written by this page. */
  | { kind: 'absent' }
  | { kind: 'valid'; header: StoredPageHeader; data: Buffer }
  | { kind: 'invalid'; reason: string };

/** Decodes one slot (header and data, pageSlotBytes long) for page `page` of `guid` (lower case). */
export function decodePageSlot(slot: Buffer, guid: string, page: number, pageSizeBytes: number): PageSlotRead {
  const decoded = decodePageHeader(slot);
  if (decoded.kind === 'invalid') return decoded;
  // A blank header, or one left by an earlier allocation whose extent this
  // one reuses: the slot was never written by this page.
  if (decoded.kind === 'blank' || decoded.header.guid !== guid || decoded.header.page !== page) return { kind: 'absent' };
  const { header, dataLength } = decoded;
  if (dataLength !== pageSizeBytes) {
    return { kind: 'invalid', reason: `header says ${dataLength} data bytes, the allocation's pages are ${pageSizeBytes}` };
  }
  const data = slot.subarray(PAGE_HEADER_BYTES, PAGE_HEADER_BYTES + pageSizeBytes);
  if (data.length !== pageSizeBytes) return { kind: 'invalid', reason: 'short read' };
  if (crc32c(data) !== header.crc) return { kind: 'invalid', reason: `data checksum does not match (version ${header.version})` };
  return { kind: 'valid', header, data };
}

/**
 * Which of a page's two slots holds its current copy: the valid one with the
 * higher version; on equal versions the higher epoch, then slot 0. null when
 * neither is valid.
 */
export function newestPageSlot(slots: readonly [PageSlotRead, PageSlotRead]): 0 | 1 | null {
  const [a, b] = slots;
  if (a.kind !== 'valid') return b.kind === 'valid' ? 1 : null;
  if (b.kind !== 'valid') return 0;
  if (b.header.version !== a.header.version) return b.header.version > a.header.version ? 1 : 0;
  return b.header.epoch > a.header.epoch ? 1 : 0;
}

/**
 * The slot the next write of a page goes to, given what both slots hold now:
 * the one not holding the current copy (slot 0 when neither is valid). A
 * rewrite at the current version therefore lands beside it, never over it.
 * The caller writing again a slot it wrote since its last sync keeps to that
 * slot instead (the other one is then the last synced copy): PageStore does.
 */
export function chooseWriteSlot(slots: readonly [PageSlotRead, PageSlotRead]): 0 | 1 {
  const newest = newestPageSlot(slots);
  return newest === 0 ? 1 : 0;
}

// ---------------------------------------------------------------- mailbox
//
// Heartbeat slot (MAILBOX_SLOT_BYTES at the start of the controller's block):
//   0 magic "PGMB" 4
//   4 formatVersion u32
//   8 controllerId u32
//  12 epoch u32
//  16 counter u64
//  24 timeMs u64
//  32 pid u32
//  36 role u32
//  40 reserved (0) .. 60
//  60 crc32c of bytes 0..60
//
// Epoch record (EPOCH_RECORD_BYTES at the start of each copy's block):
//   0 magic "PGEP" 4
//   4 formatVersion u32
//   8 seq u64
//  16 epoch u32
//  20 activeId u32
//  24 timeMs u64
//  32 reserved (0) .. 60
//  60 crc32c of bytes 0..60

/** A 64-byte record: its magic, RECORD_VERSION, what `fill` writes, and the CRC of all that in its last 4 bytes. */
function sealedRecord(magic: string, bytes: number, fill: (b: Buffer) => void): Buffer {
  const b = Buffer.alloc(bytes);
  b.write(magic, 0, 'latin1');
  b.writeUInt32LE(RECORD_VERSION, 4);
  fill(b);
  b.writeUInt32LE(crcBefore(b, bytes - 4), bytes - 4);
  return b;
}

/** Whether b holds a whole record of sealedRecord's making with this magic: not blank, not torn. */
function isSealedRecord(b: Buffer, magic: string, bytes: number): boolean {
  if (b.length < bytes || !hasMagic(b, 0, magic)) return false;
  return b.readUInt32LE(bytes - 4) === crcBefore(b, bytes - 4) && b.readUInt32LE(4) === RECORD_VERSION;
}

export function encodeMailboxSlot(s: MailboxSlot): Buffer {
  return sealedRecord(MAILBOX_SLOT_MAGIC, MAILBOX_SLOT_BYTES, (b) => {
    b.writeUInt32LE(s.controllerId, 8);
    b.writeUInt32LE(s.epoch, 12);
    writeU64(b, 16, s.counter);
    writeU64(b, 24, s.timeMs);
    b.writeUInt32LE(s.pid, 32);
    b.writeUInt32LE(s.role, 36);
  });
}

/** The slot in b, or null when it is blank, torn or otherwise invalid. */
export function decodeMailboxSlot(b: Buffer): MailboxSlot | null {
  if (!isSealedRecord(b, MAILBOX_SLOT_MAGIC, MAILBOX_SLOT_BYTES)) return null;
  const counter = readU64(b, 16);
  const timeMs = readU64(b, 24);
  if (Number.isNaN(counter) || Number.isNaN(timeMs)) return null;
  return {
    controllerId: b.readUInt32LE(8),
    epoch: b.readUInt32LE(12),
    counter,
    timeMs,
    pid: b.readUInt32LE(32),
    role: b.readUInt32LE(36),
  };
}

export function encodeEpochRecord(r: EpochRecord): Buffer {
  return sealedRecord(EPOCH_MAGIC, EPOCH_RECORD_BYTES, (b) => {
    writeU64(b, 8, r.seq);
    b.writeUInt32LE(r.epoch, 16);
    b.writeUInt32LE(r.activeId, 20);
    writeU64(b, 24, r.timeMs);
  });
}

export function decodeEpochRecord(b: Buffer): EpochRecord | null {
  if (!isSealedRecord(b, EPOCH_MAGIC, EPOCH_RECORD_BYTES)) return null;
  const seq = readU64(b, 8);
  const timeMs = readU64(b, 24);
  if (Number.isNaN(seq) || Number.isNaN(timeMs)) return null;
  return { epoch: b.readUInt32LE(16), activeId: b.readUInt32LE(20), seq, timeMs };
}

/** Of two copies, the valid one with the highest seq (copy 0 on a tie). */
export function newestOf<T extends { seq: number }>(a: T | null, b: T | null): T | null {
  if (a === null) return b;
  if (b === null) return a;
  return b.seq > a.seq ? b : a;
}
