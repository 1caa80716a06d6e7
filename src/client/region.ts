// Checkpoint regions: a named, keyed allocation that a process writes its
// checkpoints into, generation after generation, and that another process
// opens with the key and reads, above all after the first one failed.
//
// A region is one keyed allocation named `region:<name>`. Its first two pages
// hold two copies of the region's metadata; its data follows. A commit writes
// the generation's bytes first and its metadata entry after them, into the
// copy that does not hold the newest metadata, with a sequence number one
// higher. Each write is acknowledged only once both controllers hold it, and
// a write of one page lands whole or not at all, so a reader that takes the
// valid copy with the highest sequence sees the new generation whole or the
// one before, never half of one. In overwrite mode (a ring of K slots) a
// generation leaves the metadata before its slot is written again, and a
// read checks the metadata after the bytes too. A durable region also
// flushes around its metadata writes, so the order holds in the store when
// both controllers are lost at once. docs/regions.md has the layout byte by
// byte.
//
// Two writers on one region at once are not supported: commit re-reads the
// metadata and refuses if it moved since beginCheckpoint, which catches most
// of it, not all.

import { crc32c } from '../protocol/crc32c.js';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import { BUILTIN_POLICIES } from '../core/policy.js';
import { accessKeyBytes } from './client.js';

export type RegionMode = 'overwrite' | 'append';

/** What a region needs of a connection: PagepairClient and PairClient satisfy it, and the simulator's client through a small adapter. */
export interface RegionIo {
  allocate(name: string, sizeBytes: number, policy?: string, opts?: { keyed?: boolean }): Promise<{ guid: string; pageSizeBytes: number; pageCount: number; key?: string }>;
  unlock(guid: string, key: string | Uint8Array): Promise<void>;
  write(guid: string, offset: number, data: Buffer): Promise<void>;
  read(guid: string, offset: number, length: number): Promise<Buffer>;
  release(guid: string): Promise<void>;
  list(): Promise<{ guid: string; name: string; pageSizeBytes: number; pageCount: number; keyed?: boolean }[]>;
  /** Largest read or write the controller takes in one request (PagepairClient says); requests are cut to it. */
  readonly requestBytesMax?: number;
  /** Destages the allocation's dirty pages to the store (PagepairClient and PairClient have it); needed by RegionOptions.durable. */
  flush?(guid: string): Promise<unknown>;
}

export interface RegionCreateOptions {
  mode: RegionMode;
  /** overwrite: bytes one generation may hold; append: bytes all generations together may hold */
  sizeBytes: number;
  /** overwrite: the ring's K (default 2, 1..64) */
  generations?: number;
  /** default 'checkpoint' */
  policy?: string;
}

export interface GenerationInfo {
  generation: number;
  lengthBytes: number;
  crc: number;
  committedAtMs: number;
  /** where its bytes start in the allocation */
  offset: number;
}

export interface RegionSummary {
  name: string;
  guid: string;
  allocatedBytes: number;
}

export interface RegionOptions {
  /** called before each request of beginCheckpoint/write/commit with a step name and a counter, awaited: tests kill a controller here */
  onStep?: (step: string, index: number) => Promise<void> | void;
  now?: () => number;
  /** Largest piece one read or write request carries (default: the connection's requestBytesMax, at most 1 MiB). */
  chunkBytes?: number;
  /** Data requests (writes of one Checkpoint.write, reads of one read) in flight at once (default 4, 1..64). */
  writesInFlight?: number;
  /**
   * Flush the data to the store before writing the metadata that lists it,
   * and that metadata after (and a drop before its slot is written), so a
   * commit also holds when both controllers are lost at once. Costs two or
   * three flushes per commit; needs RegionIo.flush. Default false: a commit
   * is as safe as any acknowledged write of the pair (one controller lost).
   */
  durable?: boolean;
}

/** The steps onStep is called with, before the request each names. */
export const REGION_STEPS = {
  /** beginCheckpoint reads the metadata copies. */
  beginRead: 'begin.read-metadata',
  /** beginCheckpoint drops the generation whose ring slot the new one takes (overwrite mode). */
  beginDrop: 'begin.drop-generation',
  /** Checkpoint.write writes a piece of data. */
  write: 'write.data',
  /** commit reads the metadata again, to see that nobody else committed meanwhile. */
  commitRead: 'commit.read-metadata',
  /** commit reads back the generation's bytes to checksum them (only after writes out of order). */
  commitReadBack: 'commit.read-back',
  /** commit writes the metadata that lists the new generation. */
  commitWrite: 'commit.write-metadata',
  /** durable: the drop is flushed before the slot is written. */
  beginFlush: 'begin.flush',
  /** durable: the data is flushed before the metadata is written. */
  commitFlushData: 'commit.flush-data',
  /** durable: the metadata is flushed before commit answers. */
  commitFlushMetadata: 'commit.flush-metadata',
} as const;

/** Allocation names of regions start with this, so `region list` finds them and volumes tell them apart. */
export const REGION_NAME_PREFIX = 'region:';
/** An allocation name is at most 64 bytes; the prefix takes 7 of them. */
export const REGION_NAME_BYTES_MAX = 64 - REGION_NAME_PREFIX.length;
export const RING_SIZE_MAX = 64;
export const RING_SIZE_DEFAULT = 2;
/** Most generations one region lists (append mode; the metadata copy may hold fewer). */
export const GENERATIONS_MAX = 1024;
/** Largest region: the data, not counting its metadata pages. */
export const REGION_BYTES_MAX = 2 ** 40;
/** A metadata copy is at most this many bytes (and at most one page). */
export const METADATA_COPY_BYTES_MAX = 64 * 1024;
export const REGION_POLICY_DEFAULT = 'checkpoint';

const CHUNK_BYTES_DEFAULT = 1024 * 1024;
const WRITES_IN_FLIGHT_DEFAULT = 4;
const WRITES_IN_FLIGHT_MAX = 64;

// ---------------------------------------------------------------------------
// The metadata codec. Little endian; see docs/regions.md.

export const METADATA_MAGIC = Buffer.from('PPREGION', 'ascii');
export const METADATA_VERSION = 1;
export const METADATA_HEADER_BYTES = 64;
export const METADATA_ENTRY_BYTES = 40;
const CRC_BYTES = 4;
const MODE_CODE: Record<RegionMode, number> = { overwrite: 1, append: 2 };

export interface RegionMetadata {
  mode: RegionMode;
  /** overwrite: K; append: 0. */
  ringSize: number;
  pageSizeBytes: number;
  copyBytes: number;
  /** overwrite: bytes one generation may hold; append: bytes all together may hold. */
  sizeBytes: number;
  /** Where the data starts in the allocation (after the two metadata pages). */
  dataOffset: number;
  /** overwrite: bytes between ring slots (sizeBytes rounded up to a page); append: 0. */
  slotBytes: number;
  sequence: number;
  /** The number the next generation gets: generation numbers are never handed out twice once listed. */
  nextGeneration: number;
  /** Oldest first. */
  generations: GenerationInfo[];
}

/** Generations a metadata copy of copyBytes can list. */
export function entriesThatFit(copyBytes: number): number {
  return Math.max(0, Math.floor((copyBytes - METADATA_HEADER_BYTES - CRC_BYTES) / METADATA_ENTRY_BYTES));
}

/** Bytes of one metadata copy for a page size: one page, at most METADATA_COPY_BYTES_MAX. */
export function metadataCopyBytes(pageSizeBytes: number): number {
  return Math.min(pageSizeBytes, METADATA_COPY_BYTES_MAX);
}

/** Most generations a region of this geometry may list. */
export function generationsMax(meta: Pick<RegionMetadata, 'mode' | 'ringSize' | 'copyBytes'>): number {
  return meta.mode === 'overwrite' ? meta.ringSize : Math.min(GENERATIONS_MAX, entriesThatFit(meta.copyBytes));
}

function putU64(b: Buffer, off: number, v: number): void {
  b.writeUInt32LE(v % 0x1_0000_0000, off);
  b.writeUInt32LE(Math.floor(v / 0x1_0000_0000), off + 4);
}

/** A u64 that fits a safe integer, or -1. */
function getU64(b: Buffer, off: number): number {
  const hi = b.readUInt32LE(off + 4);
  if (hi > 0x1f_ffff) return -1;
  return hi * 0x1_0000_0000 + b.readUInt32LE(off);
}

/** The bytes of metadata copy `copyIndex` (0 or 1): exactly meta.copyBytes long. */
export function encodeMetadata(meta: RegionMetadata, copyIndex: 0 | 1): Buffer {
  const n = meta.generations.length;
  const used = METADATA_HEADER_BYTES + n * METADATA_ENTRY_BYTES;
  if (n > generationsMax(meta) || used + CRC_BYTES > meta.copyBytes) {
    throw new PagepairError('BAD_FIELD', `${n} generations do not fit a metadata copy of ${meta.copyBytes} bytes (at most ${generationsMax(meta)})`, 'generations');
  }
  const b = Buffer.alloc(meta.copyBytes);
  METADATA_MAGIC.copy(b, 0);
  b.writeUInt16LE(METADATA_VERSION, 8);
  b.writeUInt8(MODE_CODE[meta.mode], 10);
  b.writeUInt8(copyIndex, 11);
  b.writeUInt16LE(meta.ringSize, 12);
  b.writeUInt16LE(n, 14);
  b.writeUInt32LE(meta.pageSizeBytes, 16);
  b.writeUInt32LE(meta.copyBytes, 20);
  putU64(b, 24, meta.sizeBytes);
  putU64(b, 32, meta.dataOffset);
  putU64(b, 40, meta.slotBytes);
  putU64(b, 48, meta.sequence);
  putU64(b, 56, meta.nextGeneration);
  meta.generations.forEach((g, i) => {
    const at = METADATA_HEADER_BYTES + i * METADATA_ENTRY_BYTES;
    putU64(b, at, g.generation);
    putU64(b, at + 8, g.offset);
    putU64(b, at + 16, g.lengthBytes);
    putU64(b, at + 24, g.committedAtMs);
    b.writeUInt32LE(g.crc >>> 0, at + 32);
    // at + 36: four bytes kept zero
  });
  b.writeUInt32LE(crc32c(b.subarray(0, used)), used);
  return b;
}

/**
 * Decodes a metadata copy read from position `copyIndex`: the metadata, or
 * the reason it is not a valid copy (a string). Every byte of the copy is
 * checked: header and entries by the CRC and by their own rules, the bytes
 * after the CRC by being zero.
 */
export function decodeMetadata(b: Buffer, copyIndex: 0 | 1): RegionMetadata | string {
  if (b.length < METADATA_HEADER_BYTES + CRC_BYTES) return `${b.length} bytes is too short for a metadata copy`;
  if (!b.subarray(0, 8).equals(METADATA_MAGIC)) return 'no region magic';
  const version = b.readUInt16LE(8);
  if (version !== METADATA_VERSION) return `format version ${version}, this library reads ${METADATA_VERSION}`;
  const modeCode = b.readUInt8(10);
  const mode: RegionMode | null = modeCode === 1 ? 'overwrite' : modeCode === 2 ? 'append' : null;
  if (mode === null) return `unknown mode ${modeCode}`;
  if (b.readUInt8(11) !== copyIndex) return `copy ${b.readUInt8(11)} found where copy ${copyIndex} belongs`;
  const ringSize = b.readUInt16LE(12);
  const n = b.readUInt16LE(14);
  const pageSizeBytes = b.readUInt32LE(16);
  const copyBytes = b.readUInt32LE(20);
  if (copyBytes !== b.length) return `copy says ${copyBytes} bytes, ${b.length} were read`;
  if (copyBytes !== metadataCopyBytes(pageSizeBytes)) return `copy of ${copyBytes} bytes does not go with pages of ${pageSizeBytes}`;
  const used = METADATA_HEADER_BYTES + n * METADATA_ENTRY_BYTES;
  if (used + CRC_BYTES > copyBytes) return `${n} generations do not fit ${copyBytes} bytes`;
  const crc = b.readUInt32LE(used);
  if (crc !== crc32c(b.subarray(0, used))) return 'CRC32C does not match';
  for (let i = used + CRC_BYTES; i < b.length; i++) if (b[i] !== 0) return `byte ${i}, after the CRC, is not zero`;
  const sizeBytes = getU64(b, 24);
  const dataOffset = getU64(b, 32);
  const slotBytes = getU64(b, 40);
  const sequence = getU64(b, 48);
  const nextGeneration = getU64(b, 56);
  if (sizeBytes < 1 || sizeBytes > REGION_BYTES_MAX) return `sizeBytes ${sizeBytes} out of bounds`;
  if (dataOffset !== 2 * pageSizeBytes) return `data offset ${dataOffset} is not two pages of ${pageSizeBytes}`;
  if (sequence < 0 || nextGeneration < 0) return 'sequence or next generation out of bounds';
  if (mode === 'overwrite') {
    if (ringSize < 1 || ringSize > RING_SIZE_MAX) return `ring size ${ringSize} out of 1..${RING_SIZE_MAX}`;
    if (slotBytes !== roundUp(sizeBytes, pageSizeBytes)) return `slot of ${slotBytes} bytes for generations of ${sizeBytes}`;
  } else if (ringSize !== 0 || slotBytes !== 0) return 'ring size or slot bytes set in append mode';
  const meta: RegionMetadata = { mode, ringSize, pageSizeBytes, copyBytes, sizeBytes, dataOffset, slotBytes, sequence, nextGeneration, generations: [] };
  if (n > generationsMax(meta)) return `${n} generations, at most ${generationsMax(meta)} in this region`;
  let appendEnd = dataOffset;
  for (let i = 0; i < n; i++) {
    const at = METADATA_HEADER_BYTES + i * METADATA_ENTRY_BYTES;
    const g: GenerationInfo = {
      generation: getU64(b, at),
      offset: getU64(b, at + 8),
      lengthBytes: getU64(b, at + 16),
      committedAtMs: getU64(b, at + 24),
      crc: b.readUInt32LE(at + 32),
    };
    if (b.readUInt32LE(at + 36) !== 0) return `entry ${i}: reserved bytes are not zero`;
    if (g.generation < 0 || g.offset < 0 || g.lengthBytes < 0 || g.committedAtMs < 0) return `entry ${i}: a field out of bounds`;
    const prev = meta.generations[i - 1];
    if (prev !== undefined && g.generation <= prev.generation) return `entry ${i}: generations not in order`;
    if (g.generation >= nextGeneration) return `entry ${i}: generation ${g.generation} not below the next one, ${nextGeneration}`;
    if (mode === 'overwrite') {
      if (g.offset !== dataOffset + (g.generation % ringSize) * slotBytes) return `entry ${i}: offset ${g.offset} is not generation ${g.generation}'s slot`;
      if (g.lengthBytes > sizeBytes) return `entry ${i}: ${g.lengthBytes} bytes, more than a generation holds`;
    } else {
      if (g.offset !== roundUp(appendEnd, pageSizeBytes)) return `entry ${i}: offset ${g.offset} does not follow the generation before`;
      appendEnd = g.offset + g.lengthBytes;
      if (appendEnd > dataOffset + sizeBytes) return `entry ${i}: ends past the region's capacity`;
    }
    meta.generations.push(g);
  }
  return meta;
}

/** The newest valid metadata of the two copies (the higher sequence), and why each invalid one is. */
export function newestMetadata(copy0: Buffer, copy1: Buffer): { meta: RegionMetadata | null; invalid: string[] } {
  const invalid: string[] = [];
  let best: RegionMetadata | null = null;
  for (const [i, bytes] of [copy0, copy1].entries()) {
    const m = decodeMetadata(bytes, i as 0 | 1);
    if (typeof m === 'string') invalid.push(`copy ${i}: ${m}`);
    else if (best === null || m.sequence > best.sequence) best = m;
  }
  return { meta: best, invalid };
}

function roundUp(n: number, unit: number): number {
  return Math.ceil(n / unit) * unit;
}

// ---------------------------------------------------------------------------

/** A generation that is not listed (never committed, dropped from the ring), or that was overwritten while it was read. */
export class GenerationGoneError extends PagepairError {
  constructor(
    readonly generation: number,
    /** True when it was listed as the read began and dropped before it ended (its slot taken by a newer one). */
    readonly overwrittenWhileRead: boolean,
    message: string,
  ) {
    super('OUT_OF_RANGE', message, 'generation');
  }
}

function checkRegionName(name: unknown): string {
  if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name) || name.length > REGION_NAME_BYTES_MAX) {
    throw new PagepairError('BAD_FIELD', `a region name is 1 to ${REGION_NAME_BYTES_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit; got ${JSON.stringify(name)}`, 'name');
  }
  return name;
}

function checkCount(field: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new PagepairError('BAD_FIELD', `${field} must be an integer in ${min}..${max}, got ${String(v)}`, field);
  }
  return v;
}

function checkKey(key: unknown): Buffer {
  if (typeof key !== 'string' && !(key instanceof Uint8Array)) throw new PagepairError('BAD_FIELD', 'the key must be a string or bytes', 'key');
  return accessKeyBytes(key);
}

async function findRegion(io: RegionIo, name: string): Promise<{ guid: string; pageSizeBytes: number; pageCount: number }> {
  const found = (await io.list()).find((a) => a.name === REGION_NAME_PREFIX + name);
  if (found === undefined) throw new PagepairError('UNKNOWN_GUID', `no region named ${JSON.stringify(name)}`, 'name');
  return found;
}

/** RegionOptions checked against the connection, before any request. */
function checkOptions(io: RegionIo, ropts: RegionOptions): { chunkBytes: number; writesInFlight: number; durable: boolean } {
  if (ropts === null || typeof ropts !== 'object') throw new PagepairError('BAD_FIELD', 'region options must be an object', 'ropts');
  if (ropts.onStep !== undefined && typeof ropts.onStep !== 'function') throw new PagepairError('BAD_FIELD', 'onStep must be a function', 'onStep');
  if (ropts.now !== undefined && typeof ropts.now !== 'function') throw new PagepairError('BAD_FIELD', 'now must be a function', 'now');
  const ioMax = io.requestBytesMax ?? CHUNK_BYTES_DEFAULT;
  const chunkBytes = checkCount('chunkBytes', ropts.chunkBytes ?? Math.min(ioMax, CHUNK_BYTES_DEFAULT), 1, Math.max(1, ioMax));
  const writesInFlight = checkCount('writesInFlight', ropts.writesInFlight ?? WRITES_IN_FLIGHT_DEFAULT, 1, WRITES_IN_FLIGHT_MAX);
  if (ropts.durable !== undefined && typeof ropts.durable !== 'boolean') throw new PagepairError('BAD_FIELD', 'durable must be a boolean', 'durable');
  const durable = ropts.durable === true;
  if (durable && typeof io.flush !== 'function') throw new PagepairError('BAD_FIELD', 'a durable region needs a connection that can flush (RegionIo.flush)', 'durable');
  return { chunkBytes, writesInFlight, durable };
}

interface Geometry {
  pageSizeBytes: number;
  dataOffset: number;
  slotBytes: number;
  /** Bytes the allocation needs. */
  totalBytes: number;
}

function geometry(mode: RegionMode, sizeBytes: number, ringSize: number, pageSizeBytes: number): Geometry {
  const dataOffset = 2 * pageSizeBytes;
  const slotBytes = mode === 'overwrite' ? roundUp(sizeBytes, pageSizeBytes) : 0;
  const dataBytes = mode === 'overwrite' ? ringSize * slotBytes : roundUp(sizeBytes, pageSizeBytes);
  return { pageSizeBytes, dataOffset, slotBytes, totalBytes: dataOffset + dataBytes };
}

export class Region {
  readonly name: string;
  readonly guid: string;
  readonly mode: RegionMode;
  /** overwrite: bytes one generation may hold; append: bytes all generations together may hold. */
  readonly generationBytesMax: number;
  /** overwrite: K; append: 0. */
  readonly ringSize: number;
  readonly allocatedBytes: number;
  readonly pageSizeBytes: number;
  /** Most generations the region lists at once. */
  readonly generationsMax: number;

  private readonly copyBytes: number;
  private readonly dataOffset: number;
  private readonly slotBytes: number;
  private readonly chunkBytes: number;
  private readonly writesInFlight: number;
  private readonly durable: boolean;
  /** The checkpoint this object has open ('beginning' while beginCheckpoint runs). */
  private open: Checkpoint | 'beginning' | null = null;

  private constructor(
    private readonly io: RegionIo,
    name: string,
    guid: string,
    allocatedBytes: number,
    meta: RegionMetadata,
    private readonly ropts: RegionOptions,
  ) {
    this.name = name;
    this.guid = guid;
    this.mode = meta.mode;
    this.generationBytesMax = meta.sizeBytes;
    this.ringSize = meta.ringSize;
    this.allocatedBytes = allocatedBytes;
    this.pageSizeBytes = meta.pageSizeBytes;
    this.copyBytes = meta.copyBytes;
    this.dataOffset = meta.dataOffset;
    this.slotBytes = meta.slotBytes;
    this.generationsMax = generationsMax(meta);
    ({ chunkBytes: this.chunkBytes, writesInFlight: this.writesInFlight, durable: this.durable } = checkOptions(io, ropts));
  }

  /**
   * Makes a region: a keyed allocation named `region:<name>` with its first
   * metadata written. Resolves with the region and its key (base64url), which
   * nobody else keeps: whoever should open the region needs it.
   */
  static async create(io: RegionIo, name: string, opts: RegionCreateOptions, ropts: RegionOptions = {}): Promise<{ region: Region; key: string }> {
    checkRegionName(name);
    if (opts === null || typeof opts !== 'object') throw new PagepairError('BAD_FIELD', 'options are needed: { mode, sizeBytes }', 'opts');
    const mode = opts.mode;
    if (mode !== 'overwrite' && mode !== 'append') throw new PagepairError('BAD_FIELD', `mode must be 'overwrite' or 'append', got ${String(mode)}`, 'mode');
    const sizeBytes = checkCount('sizeBytes', opts.sizeBytes, 1, REGION_BYTES_MAX);
    let ringSize = 0;
    if (mode === 'overwrite') ringSize = checkCount('generations', opts.generations ?? RING_SIZE_DEFAULT, 1, RING_SIZE_MAX);
    else if (opts.generations !== undefined) throw new PagepairError('BAD_FIELD', 'generations is the ring size of overwrite mode; append mode keeps generations until its sizeBytes is full', 'generations');
    if (mode === 'overwrite' && ringSize * sizeBytes > REGION_BYTES_MAX) {
      throw new PagepairError('BAD_FIELD', `${ringSize} generations of ${sizeBytes} bytes is more than ${REGION_BYTES_MAX} bytes`, 'sizeBytes');
    }
    const { durable } = checkOptions(io, ropts);
    const policy = opts.policy ?? REGION_POLICY_DEFAULT;
    if (typeof policy !== 'string' || policy.length === 0) throw new PagepairError('BAD_FIELD', 'policy must be a policy name', 'policy');

    // The layout depends on the page size, which the controller tells: guess it
    // from the built-in policies, and allocate again if the guess was wrong.
    const guess = BUILTIN_POLICIES.find((p) => p.name === policy)?.pageSizeBytes ?? 4096;
    const allocName = REGION_NAME_PREFIX + name;
    let made = await io.allocate(allocName, geometry(mode, sizeBytes, ringSize, guess).totalBytes, policy, { keyed: true });
    if (made.pageSizeBytes !== guess) {
      await io.release(made.guid);
      made = await io.allocate(allocName, geometry(mode, sizeBytes, ringSize, made.pageSizeBytes).totalBytes, policy, { keyed: true });
    }
    const key = made.key;
    if (key === undefined) {
      await io.release(made.guid).catch(() => undefined);
      throw new PagepairError('INTERNAL', `the allocation for region ${name} came back without a key`, 'key');
    }
    try {
      const geo = geometry(mode, sizeBytes, ringSize, made.pageSizeBytes);
      const copyBytes = metadataCopyBytes(made.pageSizeBytes);
      const meta: RegionMetadata = { mode, ringSize, pageSizeBytes: made.pageSizeBytes, copyBytes, sizeBytes, dataOffset: geo.dataOffset, slotBytes: geo.slotBytes, sequence: 0, nextGeneration: 0, generations: [] };
      if (generationsMax(meta) < 1 || entriesThatFit(copyBytes) < generationsMax(meta)) {
        throw new PagepairError('BAD_FIELD', `a metadata copy of ${copyBytes} bytes (pages of ${made.pageSizeBytes} under policy ${policy}) lists at most ${entriesThatFit(copyBytes)} generations; the ring asks for ${ringSize}`, 'generations');
      }
      if (made.pageSizeBytes * made.pageCount < geo.totalBytes) {
        throw new PagepairError('INTERNAL', `allocation of ${made.pageSizeBytes * made.pageCount} bytes for a region that needs ${geo.totalBytes}`, 'sizeBytes');
      }
      await io.write(made.guid, 0, encodeMetadata(meta, 0));
      if (durable) await io.flush!(made.guid);
      const region = new Region(io, name, made.guid, made.pageSizeBytes * made.pageCount, meta, ropts);
      return { region, key };
    } catch (err) {
      await io.release(made.guid).catch(() => undefined);
      throw err;
    }
  }

  /** Opens a region by name with its key (ACCESS_DENIED from the controller for a wrong one). */
  static async open(io: RegionIo, name: string, key: string | Uint8Array, ropts: RegionOptions = {}): Promise<Region> {
    checkRegionName(name);
    const keyBytes = checkKey(key);
    checkOptions(io, ropts);
    const found = await findRegion(io, name);
    await io.unlock(found.guid, keyBytes);
    const allocatedBytes = found.pageSizeBytes * found.pageCount;
    const copyBytes = metadataCopyBytes(found.pageSizeBytes);
    const { meta, invalid } = newestMetadata(await io.read(found.guid, 0, copyBytes), await io.read(found.guid, found.pageSizeBytes, copyBytes));
    if (meta === null) throw new PagepairError('STORE_CORRUPT', `region ${name} has no valid metadata (${invalid.join('; ')}): was its create cut short?`, 'metadata');
    if (meta.pageSizeBytes !== found.pageSizeBytes) throw new PagepairError('STORE_CORRUPT', `region ${name}'s metadata says pages of ${meta.pageSizeBytes} bytes, its allocation has ${found.pageSizeBytes}`, 'metadata');
    const geo = geometry(meta.mode, meta.sizeBytes, meta.ringSize, meta.pageSizeBytes);
    if (geo.totalBytes > allocatedBytes) throw new PagepairError('STORE_CORRUPT', `region ${name} needs ${geo.totalBytes} bytes, its allocation has ${allocatedBytes}`, 'metadata');
    return new Region(io, name, found.guid, allocatedBytes, meta, ropts);
  }

  /** The regions the pair holds (allocations named `region:*`); no key needed. */
  static async list(io: RegionIo): Promise<RegionSummary[]> {
    return (await io.list())
      .filter((a) => a.name.startsWith(REGION_NAME_PREFIX))
      .map((a) => ({ name: a.name.slice(REGION_NAME_PREFIX.length), guid: a.guid, allocatedBytes: a.pageSizeBytes * a.pageCount }))
      .sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  }

  /** Deletes a region and every generation in it; the key is needed (the controller refuses a release without it). */
  static async delete(io: RegionIo, name: string, key: string | Uint8Array): Promise<void> {
    checkRegionName(name);
    const keyBytes = checkKey(key);
    const found = await findRegion(io, name);
    await io.unlock(found.guid, keyBytes);
    await io.release(found.guid);
  }

  /** Bytes all generations together may hold (append) or one may (overwrite). */
  get capacityBytes(): number {
    return this.generationBytesMax;
  }

  /**
   * Starts the next generation. Overwrite mode: if the ring slot it takes
   * holds a committed generation, that one is dropped from the metadata
   * first (a metadata write), so no listed generation is ever half
   * overwritten. Append mode: NO_SPACE when the region is full.
   */
  async beginCheckpoint(): Promise<Checkpoint> {
    if (this.open !== null) {
      const which = this.open === 'beginning' ? 'a checkpoint beginning' : `checkpoint ${this.open.generation} open`;
      throw new PagepairError('BUSY', `region ${this.name} has ${which}; commit or abort it first`, 'region');
    }
    const steps = new StepCounter(this.ropts.onStep);
    this.open = 'beginning';
    try {
      let meta = await this.readMetadata(steps, REGION_STEPS.beginRead);
      let generation = meta.nextGeneration;
      let offset: number;
      let roomBytes: number;
      if (meta.mode === 'overwrite') {
        // A slot no listed generation holds (a checkpoint given up after its
        // drop left it empty) is taken before a full one: the number skips
        // ahead to it, so given-up checkpoints never drain the ring.
        const held = new Set(meta.generations.map((g) => g.offset));
        for (let k = 0; k < meta.ringSize; k++) {
          const g = meta.nextGeneration + k;
          if (!held.has(this.dataOffset + (g % meta.ringSize) * this.slotBytes)) {
            generation = g;
            break;
          }
        }
        offset = this.dataOffset + (generation % meta.ringSize) * this.slotBytes;
        roomBytes = meta.sizeBytes;
        const inSlot = meta.generations.filter((g) => g.offset === offset);
        if (inSlot.length > 0) {
          meta = { ...meta, sequence: meta.sequence + 1, nextGeneration: generation + 1, generations: meta.generations.filter((g) => g.offset !== offset) };
          await this.writeMetadata(steps, REGION_STEPS.beginDrop, meta);
          await this.flushIfDurable(steps, REGION_STEPS.beginFlush);
        }
      } else {
        if (meta.generations.length >= generationsMax(meta)) {
          throw new PagepairError('NO_SPACE', `region ${this.name} lists ${meta.generations.length} generations, as many as its metadata holds; nothing committed is lost (delete the region and make a larger one)`, 'generations');
        }
        const last = meta.generations[meta.generations.length - 1];
        offset = last === undefined ? this.dataOffset : roundUp(last.offset + last.lengthBytes, this.pageSizeBytes);
        roomBytes = Math.max(0, this.dataOffset + meta.sizeBytes - offset);
        if (roomBytes === 0) {
          throw new PagepairError('NO_SPACE', `region ${this.name} is full: its ${meta.sizeBytes} bytes hold ${meta.generations.length} generations; nothing committed is lost`, 'sizeBytes');
        }
      }
      const cp = new Checkpoint(this, generation, offset, roomBytes, meta.sequence, steps);
      this.open = cp;
      return cp;
    } catch (err) {
      this.open = null;
      throw err;
    }
  }

  /** The newest committed generation, or null; reads the metadata again each call. */
  async latest(): Promise<GenerationInfo | null> {
    const meta = await this.readMetadata(null, '');
    return meta.generations[meta.generations.length - 1] ?? null;
  }

  /** The committed generations, oldest first. */
  async list(): Promise<GenerationInfo[]> {
    return (await this.readMetadata(null, '')).generations;
  }

  /**
   * Bytes [offset, offset+length) of a committed generation. The metadata is
   * read before and after the bytes: a generation dropped meanwhile (its
   * slot reused) is a GenerationGoneError, never bytes of two generations.
   */
  async read(generation: number, offset: number, length: number): Promise<Buffer> {
    checkCount('generation', generation, 0, Number.MAX_SAFE_INTEGER);
    checkCount('offset', offset, 0, REGION_BYTES_MAX);
    checkCount('length', length, 0, REGION_BYTES_MAX);
    const g = await this.listed(generation);
    if (offset + length > g.lengthBytes) {
      throw new PagepairError('OUT_OF_RANGE', `generation ${generation} holds ${g.lengthBytes} bytes; ${offset}+${length} is past its end`, offset > g.lengthBytes ? 'offset' : 'length');
    }
    const bytes = await this.readData(g.offset + offset, length, null, '');
    await this.stillListed(g);
    return bytes;
  }

  /** A committed generation whole, its CRC32C checked. */
  async readWhole(generation: number): Promise<Buffer> {
    checkCount('generation', generation, 0, Number.MAX_SAFE_INTEGER);
    const g = await this.listed(generation);
    const bytes = await this.readData(g.offset, g.lengthBytes, null, '');
    await this.stillListed(g);
    const crc = crc32c(bytes);
    if (crc !== g.crc) {
      throw new PagepairError('CHECKSUM_MISMATCH', `generation ${generation} of region ${this.name}: CRC32C ${hex(crc)} of its bytes, ${hex(g.crc)} committed`, 'generation');
    }
    return bytes;
  }

  // ------------------------------------------------------------- for Checkpoint

  /** @internal */
  async commitCheckpoint(cp: Checkpoint, lengthBytes: number, crcIfKnown: number | null, baseSequence: number, steps: StepCounter): Promise<GenerationInfo> {
    const meta = await this.readMetadata(steps, REGION_STEPS.commitRead);
    if (meta.sequence !== baseSequence) {
      throw new PagepairError('BUSY', `region ${this.name}'s metadata moved since checkpoint ${cp.generation} began (sequence ${baseSequence} then, ${meta.sequence} now): another writer? Two writers on one region are not supported; nothing was committed`, 'region');
    }
    const crc = crcIfKnown ?? crc32c(await this.readData(cp.offset, lengthBytes, steps, REGION_STEPS.commitReadBack));
    const info: GenerationInfo = { generation: cp.generation, lengthBytes, crc, committedAtMs: Math.max(0, Math.floor((this.ropts.now ?? Date.now)())), offset: cp.offset };
    const next: RegionMetadata = { ...meta, sequence: meta.sequence + 1, nextGeneration: cp.generation + 1, generations: [...meta.generations, info] };
    await this.flushIfDurable(steps, REGION_STEPS.commitFlushData);
    await this.writeMetadata(steps, REGION_STEPS.commitWrite, next);
    await this.flushIfDurable(steps, REGION_STEPS.commitFlushMetadata);
    return info;
  }

  /** @internal */
  checkpointClosed(cp: Checkpoint): void {
    if (this.open === cp) this.open = null;
  }

  /** @internal */
  async writeData(offset: number, data: Buffer, steps: StepCounter): Promise<void> {
    const pieces: { at: number; bytes: Buffer }[] = [];
    for (let at = 0; at < data.length; at += this.chunkBytes) pieces.push({ at: offset + at, bytes: data.subarray(at, Math.min(data.length, at + this.chunkBytes)) });
    const inFlight = new Set<Promise<void>>();
    let failed: unknown = null;
    for (const p of pieces) {
      if (failed !== null) break;
      await steps.step(REGION_STEPS.write);
      const w: Promise<void> = this.io.write(this.guid, p.at, p.bytes).then(
        () => void inFlight.delete(w),
        (err: unknown) => {
          inFlight.delete(w);
          failed ??= err;
        },
      );
      inFlight.add(w);
      if (inFlight.size >= this.writesInFlight) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (failed !== null) throw failed;
  }

  // ------------------------------------------------------------------ inside

  private async listed(generation: number): Promise<GenerationInfo> {
    const meta = await this.readMetadata(null, '');
    const g = meta.generations.find((x) => x.generation === generation);
    if (g === undefined) {
      const have = meta.generations.length === 0 ? 'none' : meta.generations.map((x) => x.generation).join(', ');
      throw new GenerationGoneError(generation, false, `generation ${generation} is not in region ${this.name} (it lists ${have})`);
    }
    return g;
  }

  private async stillListed(g: GenerationInfo): Promise<void> {
    const meta = await this.readMetadata(null, '');
    const now = meta.generations.find((x) => x.generation === g.generation);
    if (now === undefined || now.offset !== g.offset || now.lengthBytes !== g.lengthBytes || now.crc !== g.crc) {
      throw new GenerationGoneError(g.generation, true, `generation ${g.generation} of region ${this.name} was dropped (its slot taken by a newer one) while it was read`);
    }
  }

  private async readMetadata(steps: StepCounter | null, step: string): Promise<RegionMetadata> {
    // Both copies in one request when they fill their pages; else each copy alone, both in flight.
    let copy0: Buffer;
    let copy1: Buffer;
    if (this.copyBytes === this.pageSizeBytes && 2 * this.pageSizeBytes <= this.chunkBytes) {
      await steps?.step(step);
      const both = await this.io.read(this.guid, 0, 2 * this.pageSizeBytes);
      copy0 = both.subarray(0, this.copyBytes);
      copy1 = both.subarray(this.pageSizeBytes);
    } else {
      await steps?.step(step);
      const first = this.io.read(this.guid, 0, this.copyBytes);
      // A rejection before the second request is sent must not go unhandled.
      first.catch(() => undefined);
      await steps?.step(step);
      [copy0, copy1] = await Promise.all([first, this.io.read(this.guid, this.pageSizeBytes, this.copyBytes)]);
    }
    const { meta, invalid } = newestMetadata(copy0, copy1);
    if (meta === null) throw new PagepairError('STORE_CORRUPT', `region ${this.name} has no valid metadata copy (${invalid.join('; ')})`, 'metadata');
    if (meta.mode !== this.mode || meta.pageSizeBytes !== this.pageSizeBytes || meta.sizeBytes !== this.generationBytesMax || meta.ringSize !== this.ringSize) {
      throw new PagepairError('STORE_CORRUPT', `region ${this.name}'s metadata changed its shape since it was opened`, 'metadata');
    }
    return meta;
  }

  private async writeMetadata(steps: StepCounter, step: string, meta: RegionMetadata): Promise<void> {
    const copy = (meta.sequence % 2) as 0 | 1;
    const bytes = encodeMetadata(meta, copy);
    await steps.step(step);
    await this.io.write(this.guid, copy * this.pageSizeBytes, bytes);
  }

  private async flushIfDurable(steps: StepCounter, step: string): Promise<void> {
    if (!this.durable) return;
    await steps.step(step);
    await this.io.flush!(this.guid);
  }

  private async readData(offset: number, length: number, steps: StepCounter | null, step: string): Promise<Buffer> {
    if (length === 0) return Buffer.alloc(0);
    if (length <= this.chunkBytes) {
      await steps?.step(step);
      return this.io.read(this.guid, offset, length);
    }
    // Pieces in flight as writes are (writesInFlight), copied into place as they come.
    const out = Buffer.alloc(length);
    const inFlight = new Set<Promise<void>>();
    let failed: unknown = null;
    for (let at = 0; at < length && failed === null; at += this.chunkBytes) {
      await steps?.step(step);
      const n = Math.min(this.chunkBytes, length - at);
      const into = at;
      const r: Promise<void> = this.io.read(this.guid, offset + at, n).then(
        (piece) => {
          inFlight.delete(r);
          if (piece.length !== n) failed ??= new PagepairError('INTERNAL', `a read of ${n} bytes gave ${piece.length}`, 'length');
          else piece.copy(out, into);
        },
        (err: unknown) => {
          inFlight.delete(r);
          failed ??= err;
        },
      );
      inFlight.add(r);
      if (inFlight.size >= this.writesInFlight) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (failed !== null) throw failed;
    return out;
  }
}

/** @internal Counts the requests of one checkpoint and calls onStep before each. */
class StepCounter {
  private index = 0;
  constructor(private readonly onStep: RegionOptions['onStep']) {}
  async step(name: string): Promise<void> {
    const i = this.index++;
    if (this.onStep !== undefined) await this.onStep(name, i);
  }
}

type CheckpointState = 'open' | 'committing' | 'committed' | 'aborted' | 'failed';

/**
 * One generation being written: write() its bytes (anywhere in its room, in
 * any order), then commit(). Bytes of the room not written this time hold
 * whatever was there before (zeros in a fresh region): a generation is
 * [0, highest byte written).
 */
export class Checkpoint {
  readonly generation: number;
  /** Where the generation's bytes start in the allocation. */
  readonly offset: number;
  /** Bytes this generation may hold. */
  readonly roomBytes: number;

  private state: CheckpointState = 'open';
  private lengthBytes = 0;
  /** CRC32C of [0, crcEnd) while the writes come in order from 0; null once one does not. */
  private crc: number | null = 0;
  private crcEnd = 0;
  private writing = 0;

  /** @internal */
  constructor(
    private readonly region: Region,
    generation: number,
    offset: number,
    roomBytes: number,
    private readonly baseSequence: number,
    private readonly steps: StepCounter,
  ) {
    this.generation = generation;
    this.offset = offset;
    this.roomBytes = roomBytes;
  }

  /** Bytes [offset, offset+data.length) of this generation; past its room: OUT_OF_RANGE (overwrite) or NO_SPACE (append). */
  async write(offset: number, data: Buffer): Promise<void> {
    this.expectOpen('write');
    checkCount('offset', offset, 0, REGION_BYTES_MAX);
    if (!Buffer.isBuffer(data)) throw new PagepairError('BAD_FIELD', 'data must be a Buffer', 'data');
    if (offset + data.length > this.roomBytes) {
      if (this.region.mode === 'append') {
        throw new PagepairError('NO_SPACE', `region ${this.region.name} has ${this.roomBytes} bytes left for generation ${this.generation}; ${offset}+${data.length} does not fit (nothing committed is lost)`, 'sizeBytes');
      }
      throw new PagepairError('OUT_OF_RANGE', `a generation of region ${this.region.name} holds ${this.roomBytes} bytes; ${offset}+${data.length} is past it`, 'offset');
    }
    if (data.length === 0) return;
    // The CRC follows writes that come in order; any other pattern is read back at commit.
    if (this.crc !== null && offset === this.crcEnd) {
      this.crc = crc32c(data, this.crc);
      this.crcEnd += data.length;
    } else this.crc = null;
    this.lengthBytes = Math.max(this.lengthBytes, offset + data.length);
    this.writing++;
    try {
      await this.region.writeData(this.offset + offset, data, this.steps);
    } catch (err) {
      // What landed is not known: this generation cannot be committed.
      this.fail();
      throw err;
    } finally {
      this.writing--;
    }
  }

  /**
   * Lists the generation in the metadata (after its data, which every write
   * above has put on both controllers): from the moment that write lands, a
   * reader through either controller sees it whole. BUSY if the metadata
   * moved since beginCheckpoint (another writer).
   */
  async commit(): Promise<GenerationInfo> {
    this.expectOpen('commit');
    if (this.writing > 0) throw new PagepairError('BUSY', `checkpoint ${this.generation} has ${this.writing} writes not answered yet; await them before commit`, 'checkpoint');
    this.state = 'committing';
    try {
      const info = await this.region.commitCheckpoint(this, this.lengthBytes, this.crc !== null && this.crcEnd === this.lengthBytes ? this.crc : null, this.baseSequence, this.steps);
      this.state = 'committed';
      return info;
    } catch (err) {
      this.state = 'failed';
      throw err;
    } finally {
      this.region.checkpointClosed(this);
    }
  }

  /** Gives the checkpoint up: nothing is listed. The next beginCheckpoint takes the slot it emptied, under a higher number. */
  abort(): void {
    if (this.state === 'open') this.state = 'aborted';
    this.region.checkpointClosed(this);
  }

  private fail(): void {
    this.state = 'failed';
    this.region.checkpointClosed(this);
  }

  private expectOpen(what: string): void {
    if (this.state !== 'open') {
      throw new PagepairError('BAD_FIELD', `checkpoint ${this.generation} of region ${this.region.name} is ${this.state}: no ${what} (begin a new one)`, 'checkpoint');
    }
  }
}

function hex(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

/** Whether an error means "the generation asked for is not there (any more)". */
export function isGenerationGone(err: unknown): err is GenerationGoneError {
  return err instanceof GenerationGoneError || (isPagepairError(err, 'OUT_OF_RANGE') && err.field === 'generation');
}
