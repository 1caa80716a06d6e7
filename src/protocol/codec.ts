// Messages to frames and back. Pure: bytes in, typed messages or a typed
// ProtocolError out. The layout of every body is data (layout.ts); this file
// walks it. docs/protocol.md describes the bytes.
//
// Decoding trusts nothing: every length is checked against the bytes present
// and against a Limits entry before it is used, and anything wrong becomes a
// ProtocolError, never another exception. Data fields of decoded messages are
// views into the input (no copy): they alias it, so the input must not be
// reused while the message is alive.
//
// Page data is the bulk of every frame, so it is read as few times as
// possible: a page's CRC that is already known (a WRITE_PAGE record's `crc`,
// a message's DATA_CRC) is folded into the body CRC without reading the page
// again, and decoding hands the CRC of a message's data back (DATA_CRC), so
// the receiver need not compute it once more.

import { PagepairError } from './errors.js';
import type { ErrorCodeName } from './errors.js';
import { crc32cRange } from './crc32c.js';
import { clipUtf8 } from './clip.js';
import { combinesFast, crc32cCombine } from './crc32c-combine.js';
import { readGuid, writeGuid } from './guid.js';
import { BODY, KIND_OF_TYPE, TYPE_OF_KIND } from './layout.js';
import type { Field, ScalarField } from './layout.js';
import { DEFAULT_LIMITS, HARD_LIMITS } from './limits.js';
import type { Limits } from './limits.js';
import { FRAME_MAGIC, HEADER_BYTES, MsgType, PROTOCOL_VERSION, REPLY_BIT } from './messages.js';
import type { ErrorReply, Message, MessageKind } from './messages.js';

/** The header fields of a frame, once magic, version and header CRC checked out. */
export interface FrameHeader {
  type: number;
  flags: number;
  requestId: number;
  epoch: number;
  sender: number;
  bodyLength: number;
  bodyCrc: number;
}

/**
 * A frame that cannot be decoded. `requestId` and `frameType` are set once the
 * header itself checked out, so the receiver can still answer that request
 * with an ERROR reply.
 */
export class ProtocolError extends PagepairError {
  readonly requestId: number | undefined;
  readonly frameType: number | undefined;

  constructor(code: ErrorCodeName, message: string, field?: string, requestId?: number, frameType?: number) {
    super(code, message, field);
    this.name = 'ProtocolError';
    this.requestId = requestId;
    this.frameType = frameType;
  }
}

/**
 * The CRC-32C of a message's one top-level data field (C_WRITE, C_READ_REPLY).
 * decode sets it, for page-sized data (powers of two from 512 bytes); encode
 * uses it when present instead of reading the data again for the body CRC.
 * A wrong value is not silent: the frame's body CRC no longer matches, and the
 * receiver refuses the frame.
 */
export const DATA_CRC: unique symbol = Symbol('pagepair.dataCrc');

/** A message that may carry DATA_CRC. */
export type WithDataCrc = { [DATA_CRC]?: number };

/**
 * Attaches the CRC-32C of msg's data (see DATA_CRC). Not enumerable: the
 * message compares and prints as the plain message it is.
 */
export function setDataCrc<M extends object>(msg: M, crc: number): M {
  Object.defineProperty(msg, DATA_CRC, { value: crc >>> 0, writable: true, configurable: true });
  return msg;
}

// Header offsets
const OFF_MAGIC = 0;
const OFF_VERSION = 4;
const OFF_TYPE = 6;
const OFF_FLAGS = 7;
const OFF_REQUEST_ID = 8;
const OFF_EPOCH = 12;
const OFF_SENDER = 16;
const OFF_BODY_LENGTH = 20;
const OFF_BODY_CRC = 24;
const OFF_HEADER_CRC = 28;

const TWO_POW_32 = 0x1_0000_0000;
/** The high word of Number.MAX_SAFE_INTEGER. */
const SAFE_HIGH_MAX = 0x1f_ffff;

// ---------------------------------------------------------------------------
// Type codes

export function kindOfType(type: number): MessageKind | undefined {
  return KIND_OF_TYPE[type];
}

export function typeOfKind(kind: MessageKind): number {
  return TYPE_OF_KIND[kind];
}

/** True for reply type codes, ERROR included. */
export function isReplyType(type: number): boolean {
  return type === MsgType.ERROR || (type & REPLY_BIT) !== 0;
}

function typeName(type: number): string {
  return KIND_OF_TYPE[type] ?? `type 0x${type.toString(16).padStart(2, '0')}`;
}

// ---------------------------------------------------------------------------
// Little-endian access. Hand-written: faster than DataView or the checked
// Buffer methods, and every range was checked by the caller.

function getU16(b: Uint8Array, p: number): number {
  return b[p]! | (b[p + 1]! << 8);
}

function getU32(b: Uint8Array, p: number): number {
  return (b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16) | (b[p + 3]! << 24)) >>> 0;
}

function putU16(b: Uint8Array, p: number, v: number): void {
  b[p] = v;
  b[p + 1] = v >>> 8;
}

function putU32(b: Uint8Array, p: number, v: number): void {
  b[p] = v;
  b[p + 1] = v >>> 8;
  b[p + 2] = v >>> 16;
  b[p + 3] = v >>> 24;
}

/** v is a safe non-negative integer, or -1 (written as all ones). */
function putU64(b: Uint8Array, p: number, v: number): void {
  if (v === -1) {
    putU32(b, p, 0xffff_ffff);
    putU32(b, p + 4, 0xffff_ffff);
  } else {
    putU32(b, p, v >>> 0);
    putU32(b, p + 4, Math.floor(v / TWO_POW_32));
  }
}

// ---------------------------------------------------------------------------
// GUIDs: every page record and every client request carries one, and a pair
// serves a handful of allocations; the last few are remembered both ways. A
// decoded GUID that repeats is then the very same string, whose hash a Map
// lookup has already computed.

const GUIDS_REMEMBERED = 4;
const guidBytesSeen = new Uint8Array(16 * GUIDS_REMEMBERED);
const guidStringsSeen: string[] = new Array<string>(GUIDS_REMEMBERED).fill('');
let guidNextSlot = 0;

function decodeGuid(b: Uint8Array, p: number): string {
  next: for (let i = 0; i < GUIDS_REMEMBERED; i++) {
    const s = guidStringsSeen[i]!;
    if (s === '') continue;
    const o = i * 16;
    for (let k = 0; k < 16; k++) if (guidBytesSeen[o + k] !== b[p + k]) continue next;
    return s;
  }
  const s = readGuid(b, p);
  const slot = guidNextSlot;
  guidNextSlot = (slot + 1) % GUIDS_REMEMBERED;
  for (let k = 0; k < 16; k++) guidBytesSeen[slot * 16 + k] = b[p + k]!;
  guidStringsSeen[slot] = s;
  return s;
}

const guidEncodedBytes = new Uint8Array(16 * GUIDS_REMEMBERED);
const guidEncodedStrings: string[] = new Array<string>(GUIDS_REMEMBERED).fill('');
let guidEncodedNext = 0;

/** writeGuid, remembering the bytes of the last few GUIDs written. */
function encodeGuid(v: unknown, buf: Buffer, p: number): boolean {
  if (typeof v !== 'string' || v === '') return writeGuid(v, buf, p);
  for (let i = 0; i < GUIDS_REMEMBERED; i++) {
    if (guidEncodedStrings[i] === v) {
      const o = i * 16;
      for (let k = 0; k < 16; k++) buf[p + k] = guidEncodedBytes[o + k]!;
      return true;
    }
  }
  if (!writeGuid(v, buf, p)) return false;
  const slot = guidEncodedNext;
  guidEncodedNext = (slot + 1) % GUIDS_REMEMBERED;
  for (let k = 0; k < 16; k++) guidEncodedBytes[slot * 16 + k] = buf[p + k]!;
  guidEncodedStrings[slot] = v;
  return true;
}

// ---------------------------------------------------------------------------
// Encode

/**
 * Where a field of a list record is, for error messages: `list[index].field`.
 * One instance is reused for every record field, and the string is made only
 * when an error names it: building "pages[3].data" for every field of every
 * page was a measurable share of encoding and decoding a WRITE_PAGE.
 */
class RecordPath {
  list = '';
  index = 0;
  field = '';

  at(list: string, index: number, field: string): this {
    this.list = list;
    this.index = index;
    this.field = field;
    return this;
  }

  toString(): string {
    return `${this.list}[${this.index}].${this.field}`;
  }
}

/** A top-level field's name, or a record field's place. */
type FieldPath = string | RecordPath;

const encodePath = new RecordPath();
const decodePath = new RecordPath();

function badField(kind: MessageKind, field: FieldPath, what: string): PagepairError {
  const name = String(field);
  return new PagepairError('BAD_FIELD', `${kind}: field ${name} ${what}`, name);
}

/**
 * Checks one field's value against its encoding and the hard limits, and
 * returns its size on the wire. Everything is checked here, before the
 * buffer is allocated, except GUID syntax (checked as it is written).
 */
function scalarBytes(kind: MessageKind, f: ScalarField, v: unknown, path: FieldPath): number {
  switch (f.enc) {
    case 'u8':
      if (typeof v !== 'number' || (v & 0xff) !== v) throw badField(kind, path, `must be a u8, got ${String(v)}`);
      return 1;
    case 'u16':
      if (typeof v !== 'number' || (v & 0xffff) !== v) throw badField(kind, path, `must be a u16, got ${String(v)}`);
      return 2;
    case 'u32':
      if (typeof v !== 'number' || v >>> 0 !== v) throw badField(kind, path, `must be a u32, got ${String(v)}`);
      if (f.limit !== null && v > HARD_LIMITS[f.limit]) {
        throw badField(kind, path, `is ${v}, over the hard ${f.limit} ${HARD_LIMITS[f.limit]}`);
      }
      return 4;
    case 'u64':
      if (!Number.isSafeInteger(v) || (v as number) < 0) {
        throw badField(kind, path, `must be a safe non-negative integer, got ${String(v)}`);
      }
      return 8;
    case 'offset64':
      if (v !== -1 && (!Number.isSafeInteger(v) || (v as number) < 0)) {
        throw badField(kind, path, `must be -1 or a safe non-negative integer, got ${String(v)}`);
      }
      return 8;
    case 'bool':
      if (typeof v !== 'boolean') throw badField(kind, path, `must be a boolean, got ${String(v)}`);
      return 1;
    case 'enum':
      if (typeof v !== 'number' || (v & 0xff) !== v || f.allowed![v] !== 1) {
        throw badField(kind, path, `is not a ${f.enumName} value: ${String(v)}`);
      }
      return 1;
    case 'bits':
      if (typeof v !== 'number' || (v & 0xff) !== v || (v & ~f.allowed![0]!) !== 0) {
        throw badField(kind, path, `has bits outside ${f.enumName}: ${String(v)}`);
      }
      return 1;
    case 'guid':
    case 'guidOrEmpty':
      if (typeof v !== 'string') throw badField(kind, path, `must be a uuid string, got ${String(v)}`);
      return 16;
    case 'str':
    case 'json': {
      if (typeof v !== 'string') throw badField(kind, path, `must be a string, got ${typeof v}`);
      const n = Buffer.byteLength(v, 'utf8');
      const max = HARD_LIMITS[f.limit!];
      if (n > max) throw badField(kind, path, `is ${n} bytes of UTF-8, over the hard ${f.limit} ${max}`);
      return f.fixedBytes + n;
    }
    case 'bytes32':
      if (!(v instanceof Uint8Array) || v.length !== 32) throw badField(kind, path, 'must be exactly 32 bytes');
      return 32;
    case 'bytes16':
      if (!(v instanceof Uint8Array) || v.length !== 16) throw badField(kind, path, 'must be exactly 16 bytes');
      return 16;
    case 'data': {
      if (!(v instanceof Uint8Array)) throw badField(kind, path, 'must be a Buffer or Uint8Array');
      const max = HARD_LIMITS[f.limit!];
      if (v.length > max) throw badField(kind, path, `is ${v.length} bytes, over the hard ${f.limit} ${max}`);
      return 4 + v.length;
    }
  }
}

function bodyBytes(kind: MessageKind, msg: Record<string, unknown>, fields: readonly Field[]): number {
  let total = 0;
  for (const f of fields) {
    const v = msg[f.name];
    if (f.enc !== 'list') {
      total += scalarBytes(kind, f, v, f.name);
      continue;
    }
    if (!Array.isArray(v)) throw badField(kind, f.name, 'must be an array');
    const max = Math.min(HARD_LIMITS[f.limit], f.countBytes === 2 ? 0xffff : 0xffff_ffff);
    if (v.length < f.countMin || v.length > max) {
      throw badField(kind, f.name, `has ${v.length} entries, allowed ${f.countMin}..${max}`);
    }
    total += f.countBytes;
    for (let i = 0; i < v.length; i++) {
      const item = v[i] as Record<string, unknown> | null;
      if (typeof item !== 'object' || item === null) throw badField(kind, `${f.name}[${i}]`, 'must be an object');
      for (const g of f.item) total += scalarBytes(kind, g, item[g.name], encodePath.at(f.name, i, g.name));
    }
  }
  return total;
}

/** Writes one checked value at p; returns the position after it. */
function writeScalar(kind: MessageKind, buf: Buffer, p: number, f: ScalarField, v: unknown, path: FieldPath): number {
  switch (f.enc) {
    case 'u8':
    case 'enum':
    case 'bits':
      buf[p] = v as number;
      return p + 1;
    case 'bool':
      buf[p] = v ? 1 : 0;
      return p + 1;
    case 'u16':
      putU16(buf, p, v as number);
      return p + 2;
    case 'u32':
      putU32(buf, p, v as number);
      return p + 4;
    case 'u64':
    case 'offset64':
      putU64(buf, p, v as number);
      return p + 8;
    case 'guid':
      if (!encodeGuid(v, buf, p)) throw badField(kind, path, `is not a lowercase canonical uuid: ${JSON.stringify(v)}`);
      return p + 16;
    case 'guidOrEmpty':
      if (v === '') buf.fill(0, p, p + 16);
      else if (!encodeGuid(v, buf, p)) {
        throw badField(kind, path, `is not '' or a lowercase canonical uuid: ${JSON.stringify(v)}`);
      }
      return p + 16;
    case 'str': {
      const n = buf.write(v as string, p + 2, 'utf8');
      putU16(buf, p, n);
      return p + 2 + n;
    }
    case 'json': {
      const n = buf.write(v as string, p + 4, 'utf8');
      putU32(buf, p, n);
      return p + 4 + n;
    }
    case 'bytes32':
      buf.set(v as Uint8Array, p);
      return p + 32;
    case 'bytes16':
      buf.set(v as Uint8Array, p);
      return p + 16;
    case 'data': {
      const d = v as Uint8Array;
      putU32(buf, p, d.length);
      buf.set(d, p + 4);
      return p + 4 + d.length;
    }
  }
}

/**
 * Data fields of the frame being encoded whose CRC is known, in body order:
 * where the data starts, its length and its CRC. Module scratch: encode is
 * synchronous, so one frame at a time uses it.
 */
const known = { count: 0, pos: [] as number[], len: [] as number[], crc: [] as number[] };

function noteKnownCrc(p: number, data: unknown, crc: unknown): void {
  if (!(data instanceof Uint8Array) || !combinesFast(data.length) || typeof crc !== 'number' || crc >>> 0 !== crc) return;
  const i = known.count++;
  known.pos[i] = p + 4;
  known.len[i] = data.length;
  known.crc[i] = crc;
}

function writeBody(kind: MessageKind, buf: Buffer, p: number, msg: Record<string, unknown>, fields: readonly Field[]) {
  for (const f of fields) {
    const v = msg[f.name];
    if (f.enc !== 'list') {
      if (f.enc === 'data') noteKnownCrc(p, v, (msg as WithDataCrc)[DATA_CRC]);
      p = writeScalar(kind, buf, p, f, v, f.name);
      continue;
    }
    const items = v as Record<string, unknown>[];
    if (f.countBytes === 2) putU16(buf, p, items.length);
    else putU32(buf, p, items.length);
    p += f.countBytes;
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      for (const g of f.item) {
        if (g.crcField !== null) noteKnownCrc(p, item[g.name], item[g.crcField]);
        p = writeScalar(kind, buf, p, g, item[g.name], encodePath.at(f.name, i, g.name));
      }
    }
  }
  return p;
}

/** The body CRC of buf[start, end), folding in the data CRCs noted while the body was written. */
function encodedBodyCrc(buf: Buffer, start: number, end: number): number {
  let crc = 0;
  let at = start;
  for (let i = 0; i < known.count; i++) {
    const pos = known.pos[i]!;
    crc = crc32cRange(buf, at, pos, crc);
    crc = crc32cCombine(crc, known.crc[i]!, known.len[i]!);
    at = pos + known.len[i]!;
  }
  known.count = 0;
  return crc32cRange(buf, at, end, crc);
}

function allocateFrame(bytes: number): Buffer {
  return Buffer.allocUnsafe(bytes);
}

/**
 * One frame holding `msg`, in a single buffer of exactly its size. Throws
 * PagepairError BAD_FIELD (naming the field) for a value that cannot be
 * encoded, FRAME_TOO_LARGE past the hard frame limit. `allocate` supplies the
 * buffer (a pool of frames, in the transports); its contents are overwritten.
 */
export function encode(msg: Message, allocate: (bytes: number) => Buffer = allocateFrame): Buffer {
  const kind = msg.kind;
  const fields: readonly Field[] | undefined = Object.hasOwn(BODY, kind) ? BODY[kind] : undefined;
  if (fields === undefined) throw new PagepairError('UNKNOWN_TYPE', `no message kind ${String(kind)}`, 'kind');
  const { requestId, epoch, sender, flags } = msg;
  if (typeof requestId !== 'number' || requestId >>> 0 !== requestId) {
    throw badField(kind, 'requestId', `must be a u32, got ${String(requestId)}`);
  }
  if (typeof epoch !== 'number' || epoch >>> 0 !== epoch) {
    throw badField(kind, 'epoch', `must be a u32, got ${String(epoch)}`);
  }
  if (typeof sender !== 'number' || (sender & 0xff) !== sender) {
    throw badField(kind, 'sender', `must be 0..255, got ${String(sender)}`);
  }
  if (flags !== 0) throw badField(kind, 'flags', `must be 0 in protocol version ${PROTOCOL_VERSION}`);

  const record = msg as unknown as Record<string, unknown>;
  const bodyLength = bodyBytes(kind, record, fields);
  const frameBytes = HEADER_BYTES + bodyLength;
  if (frameBytes > HARD_LIMITS.frameBytesMax) {
    throw new PagepairError(
      'FRAME_TOO_LARGE',
      `${kind}: frame of ${frameBytes} bytes is over the hard frameBytesMax ${HARD_LIMITS.frameBytesMax}`,
      'bodyLength',
    );
  }

  const buf = allocate(frameBytes);
  known.count = 0;
  const end = writeBody(kind, buf, HEADER_BYTES, record, fields);
  if (end !== frameBytes) throw new Error(`invariant broken: ${kind} body wrote ${end} of ${frameBytes} bytes`);

  putU32(buf, OFF_MAGIC, FRAME_MAGIC);
  putU16(buf, OFF_VERSION, PROTOCOL_VERSION);
  buf[OFF_TYPE] = TYPE_OF_KIND[kind];
  buf[OFF_FLAGS] = 0;
  putU32(buf, OFF_REQUEST_ID, requestId);
  putU32(buf, OFF_EPOCH, epoch);
  putU32(buf, OFF_SENDER, sender);
  putU32(buf, OFF_BODY_LENGTH, bodyLength);
  putU32(buf, OFF_BODY_CRC, encodedBodyCrc(buf, HEADER_BYTES, frameBytes));
  putU32(buf, OFF_HEADER_CRC, crc32cRange(buf, 0, OFF_HEADER_CRC));
  return buf;
}

// ---------------------------------------------------------------------------
// Decode

/**
 * Checks and reads the 32-byte header at the start of `buf` (which may hold
 * more). Throws ProtocolError: TRUNCATED, BAD_MAGIC, BAD_VERSION,
 * CHECKSUM_MISMATCH; then, with requestId and frameType set, FRAME_TOO_LARGE,
 * UNKNOWN_TYPE, BAD_FRAME (flags) or BAD_FIELD (sender).
 */
export function decodeHeader(buf: Uint8Array, limits: Limits = DEFAULT_LIMITS): FrameHeader {
  if (buf.length < HEADER_BYTES) {
    throw new ProtocolError('TRUNCATED', `frame header: ${buf.length} bytes, need ${HEADER_BYTES}`, 'header');
  }
  const magic = getU32(buf, OFF_MAGIC);
  if (magic !== FRAME_MAGIC) {
    throw new ProtocolError('BAD_MAGIC', `frame header: magic 0x${magic.toString(16)} is not a pagepair frame`, 'magic');
  }
  const version = getU16(buf, OFF_VERSION);
  if (version !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      'BAD_VERSION',
      `frame header: protocol version ${version}, this side speaks ${PROTOCOL_VERSION}`,
      'version',
    );
  }
  const headerCrc = getU32(buf, OFF_HEADER_CRC);
  const computed = crc32cRange(buf, 0, OFF_HEADER_CRC);
  if (headerCrc !== computed) {
    throw new ProtocolError(
      'CHECKSUM_MISMATCH',
      `frame header: header CRC 0x${headerCrc.toString(16)} does not match the header (0x${computed.toString(16)})`,
      'headerCrc',
    );
  }

  const type = buf[OFF_TYPE]!;
  const requestId = getU32(buf, OFF_REQUEST_ID);
  const bodyLength = getU32(buf, OFF_BODY_LENGTH);
  const name = typeName(type);
  // Compared as body length so the sum cannot overflow anything.
  if (bodyLength > limits.frameBytesMax - HEADER_BYTES) {
    throw new ProtocolError(
      'FRAME_TOO_LARGE',
      `${name}: body of ${bodyLength} bytes makes the frame larger than frameBytesMax ${limits.frameBytesMax}`,
      'bodyLength',
      requestId,
      type,
    );
  }
  if (KIND_OF_TYPE[type] === undefined) {
    throw new ProtocolError('UNKNOWN_TYPE', `frame header: unknown ${name}`, 'type', requestId, type);
  }
  const flags = buf[OFF_FLAGS]!;
  if (flags !== 0) {
    throw new ProtocolError(
      'BAD_FRAME',
      `${name}: flags 0x${flags.toString(16)} must be 0 in protocol version ${PROTOCOL_VERSION}`,
      'flags',
      requestId,
      type,
    );
  }
  const sender = getU32(buf, OFF_SENDER);
  if (sender > 0xff) {
    throw new ProtocolError('BAD_FIELD', `${name}: sender ${sender} is over 255`, 'sender', requestId, type);
  }
  return {
    type,
    flags,
    requestId,
    epoch: getU32(buf, OFF_EPOCH),
    sender,
    bodyLength,
    bodyCrc: getU32(buf, OFF_BODY_CRC),
  };
}

/** Walks a body; positions are absolute offsets into `buf`. */
class BodyReader {
  pos: number;

  constructor(
    readonly buf: Buffer,
    start: number,
    readonly end: number,
    readonly kind: MessageKind,
    readonly header: FrameHeader,
    readonly limits: Limits,
    /** Note top-level data fields so that their CRC is handed back (DATA_CRC). */
    readonly wantDataCrc: boolean,
  ) {
    this.pos = start;
  }

  fail(code: ErrorCodeName, path: FieldPath, what: string): ProtocolError {
    const name = String(path);
    return new ProtocolError(
      code,
      `${this.kind}: field ${name} ${what}`,
      name,
      this.header.requestId,
      this.header.type,
    );
  }

  /** Reserves n bytes at the current position and returns where they start. */
  take(n: number, path: FieldPath): number {
    const p = this.pos;
    if (n > this.end - p) {
      throw this.fail('TRUNCATED', path, `needs ${n} bytes, the body has ${this.end - p} left`);
    }
    this.pos = p + n;
    return p;
  }

  /** A length or count prefix, checked against its limit before anything is read. */
  length(prefixBytes: 2 | 4, limit: keyof Limits, path: FieldPath): number {
    const p = this.take(prefixBytes, path);
    const n = prefixBytes === 2 ? getU16(this.buf, p) : getU32(this.buf, p);
    const max = this.limits[limit];
    if (n > max) throw this.fail('LIMIT_EXCEEDED', path, `is ${n}, over ${limit} ${max}`);
    return n;
  }

  u64(path: FieldPath, allowMinusOne: boolean): number {
    const b = this.buf;
    const p = this.take(8, path);
    const lo = getU32(b, p);
    const hi = getU32(b, p + 4);
    if (hi <= SAFE_HIGH_MAX) return hi * TWO_POW_32 + lo;
    if (allowMinusOne && hi === 0xffff_ffff && lo === 0xffff_ffff) return -1;
    throw this.fail('BAD_FIELD', path, `0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} is over 2^53 - 1`);
  }

  scalar(f: ScalarField, path: FieldPath): unknown {
    const b = this.buf;
    switch (f.enc) {
      case 'u8':
        return b[this.take(1, path)]!;
      case 'u16':
        return getU16(b, this.take(2, path));
      case 'u32': {
        const v = getU32(b, this.take(4, path));
        if (f.limit !== null && v > this.limits[f.limit]) {
          throw this.fail('LIMIT_EXCEEDED', path, `is ${v}, over ${f.limit} ${this.limits[f.limit]}`);
        }
        return v;
      }
      case 'u64':
        return this.u64(path, false);
      case 'offset64':
        return this.u64(path, true);
      case 'bool': {
        const v = b[this.take(1, path)]!;
        if (v > 1) throw this.fail('BAD_FIELD', path, `is ${v}, a boolean must be 0 or 1`);
        return v === 1;
      }
      case 'enum': {
        const v = b[this.take(1, path)]!;
        if (f.allowed![v] !== 1) throw this.fail('BAD_FIELD', path, `${v} is not a ${f.enumName} value`);
        return v;
      }
      case 'bits': {
        const v = b[this.take(1, path)]!;
        if ((v & ~f.allowed![0]!) !== 0) {
          throw this.fail('BAD_FIELD', path, `0x${v.toString(16)} has bits outside ${f.enumName}`);
        }
        return v;
      }
      case 'guid':
        return decodeGuid(b, this.take(16, path));
      case 'guidOrEmpty': {
        const p = this.take(16, path);
        for (let i = p; i < p + 16; i++) if (b[i] !== 0) return decodeGuid(b, p);
        return '';
      }
      case 'str':
      case 'json': {
        const n = this.length(f.enc === 'str' ? 2 : 4, f.limit!, path);
        const p = this.take(n, path);
        return b.toString('utf8', p, p + n);
      }
      case 'bytes32': {
        const p = this.take(32, path);
        return b.subarray(p, p + 32);
      }
      case 'bytes16': {
        const p = this.take(16, path);
        return b.subarray(p, p + 16);
      }
      case 'data': {
        const n = this.length(4, f.limit!, path);
        const p = this.take(n, path);
        return b.subarray(p, p + n);
      }
    }
  }

  fields(target: Record<string, unknown>, fields: readonly Field[]): void {
    for (const f of fields) {
      if (f.enc !== 'list') {
        target[f.name] = this.scalar(f, f.name);
        if (f.enc === 'data' && this.wantDataCrc) noteData(this.pos, target[f.name] as Buffer, target, f, '', -1);
        continue;
      }
      const count = this.length(f.countBytes, f.limit, f.name);
      if (count < f.countMin) throw this.fail('BAD_FIELD', f.name, `has ${count} entries, at least ${f.countMin} needed`);
      const items: Record<string, unknown>[] = [];
      for (let i = 0; i < count; i++) {
        const item: Record<string, unknown> = {};
        for (const g of f.item) {
          item[g.name] = this.scalar(g, decodePath.at(f.name, i, g.name));
          if (g.crcField !== null) noteData(this.pos, item[g.name] as Buffer, item, g, f.name, i);
        }
        items.push(item);
      }
      target[f.name] = items;
    }
  }
}

/**
 * Data fields of the frame being decoded, in body order: where each ends, the
 * record holding it, the field, the record's index in its list (-1 at the
 * top level). Module scratch: decode is synchronous.
 */
const seen = {
  count: 0,
  end: [] as number[],
  data: [] as Buffer[],
  holder: [] as Record<string, unknown>[],
  field: [] as ScalarField[],
  list: [] as string[],
  index: [] as number[],
  /** Filled in while the body CRC is checked: the data's CRC, -1 when not computed. */
  crc: [] as number[],
};

/** Placeholders left in the scratch arrays so they keep no frame alive. */
const EMPTY_DATA = Buffer.alloc(0);
const EMPTY_HOLDER: Record<string, unknown> = {};

/** Drops the references the scratch arrays hold, from index `from` on. */
function forgetSeen(from: number, count = seen.count): void {
  for (let j = from; j < count; j++) {
    seen.data[j] = EMPTY_DATA;
    seen.holder[j] = EMPTY_HOLDER;
  }
  seen.count = 0;
}

function noteData(end: number, data: Buffer, holder: Record<string, unknown>, field: ScalarField, list: string, index: number): void {
  if (data.length === 0) return;
  const i = seen.count++;
  seen.end[i] = end;
  seen.data[i] = data;
  seen.holder[i] = holder;
  seen.field[i] = field;
  seen.list[i] = list;
  seen.index[i] = index;
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function bodyCrcMismatch(kind: MessageKind, header: FrameHeader, computed: number): ProtocolError {
  return new ProtocolError(
    'CHECKSUM_MISMATCH',
    `${kind}: body CRC 0x${header.bodyCrc.toString(16)} does not match the body (0x${computed.toString(16)})`,
    'bodyCrc',
    header.requestId,
    header.type,
  );
}

/**
 * Decodes a frame whose header is already checked; `frame` must be exactly
 * the frame. The fields are read first and the body CRC checked after, data
 * field by data field, so that each page is read once and its CRC is known;
 * a frame that fails to parse is checked whole first, so a damaged body is
 * still reported as CHECKSUM_MISMATCH.
 */
function decodeChecked(frame: Buffer, header: FrameHeader, limits: Limits, wantDataCrc: boolean): Message {
  const kind = KIND_OF_TYPE[header.type]!;
  const end = HEADER_BYTES + header.bodyLength;
  const msg: Record<string, unknown> = {
    kind,
    requestId: header.requestId,
    epoch: header.epoch,
    sender: header.sender,
    flags: header.flags,
  };
  seen.count = 0;
  try {
    const r = new BodyReader(frame, HEADER_BYTES, end, kind, header, limits, wantDataCrc);
    r.fields(msg, BODY[kind]);
    if (r.pos !== end) {
      throw new ProtocolError('BAD_FRAME', `${kind}: ${end - r.pos} bytes after the last field`, 'bodyLength', header.requestId, header.type);
    }
  } catch (err) {
    forgetSeen(0);
    const whole = crc32cRange(frame, HEADER_BYTES, end);
    if (whole !== header.bodyCrc) throw bodyCrcMismatch(kind, header, whole);
    throw err;
  }
  const count = seen.count;
  seen.count = 0;
  let crc = 0;
  let at = HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    const n = seen.data[i]!.length;
    seen.crc[i] = -1;
    if (!combinesFast(n)) continue;
    const dataEnd = seen.end[i]!;
    const dataStart = dataEnd - n;
    const dataCrc = crc32cRange(frame, dataStart, dataEnd);
    crc = crc32cCombine(crc32cRange(frame, at, dataStart, crc), dataCrc, n);
    at = dataEnd;
    seen.crc[i] = dataCrc;
  }
  crc = crc32cRange(frame, at, end, crc);
  if (crc !== header.bodyCrc) throw bodyCrcMismatch(kind, header, crc);
  // The body is intact: hand out the data CRCs, and hold records to theirs.
  for (let i = 0; i < count; i++) {
    const f = seen.field[i]!;
    const holder = seen.holder[i]!;
    const data = seen.data[i]!;
    seen.data[i] = EMPTY_DATA;
    seen.holder[i] = EMPTY_HOLDER;
    if (f.crcField === null) {
      if (seen.crc[i]! >= 0) setDataCrc(holder, seen.crc[i]!);
      continue;
    }
    const dataCrc = seen.crc[i]! >= 0 ? seen.crc[i]! : crc32cRange(data, 0, data.length);
    if (holder[f.crcField] !== dataCrc) {
      forgetSeen(i + 1, count);
      const path = `${seen.list[i]!}[${seen.index[i]!}].${f.crcField}`;
      throw new ProtocolError(
        'CHECKSUM_MISMATCH',
        `${kind}: field ${path} 0x${(holder[f.crcField] as number).toString(16)} does not match the record's data (0x${dataCrc.toString(16)})`,
        path,
        header.requestId,
        header.type,
      );
    }
  }
  return msg as unknown as Message;
}

export interface DecodeOptions {
  /**
   * Hand back the CRC of a message's top-level data as DATA_CRC (page-sized
   * data only), so a receiver that needs it does not read the data again.
   */
  dataCrc?: boolean;
}

/**
 * Decodes exactly one whole frame. Throws only ProtocolError. Data, nonce and
 * proof fields of the result are views of `frame` (no copy).
 */
export function decode(frame: Uint8Array, limits: Limits = DEFAULT_LIMITS, opts?: DecodeOptions): Message {
  const header = decodeHeader(frame, limits);
  const frameBytes = HEADER_BYTES + header.bodyLength;
  if (frame.length !== frameBytes) {
    const name = typeName(header.type);
    throw frame.length < frameBytes
      ? new ProtocolError(
          'TRUNCATED',
          `${name}: ${frame.length} bytes, the header says ${frameBytes}`,
          'bodyLength',
          header.requestId,
          header.type,
        )
      : new ProtocolError(
          'BAD_FRAME',
          `${name}: ${frame.length - frameBytes} bytes after the end of the frame`,
          'bodyLength',
          header.requestId,
          header.type,
        );
  }
  return decodeChecked(asBuffer(frame), header, limits, opts?.dataCrc === true);
}

// ---------------------------------------------------------------------------
// Streams

/**
 * Reassembles frames from a byte stream whose chunks may split frames
 * anywhere or hold several. The WebSocket links do not need it (one frame is
 * one binary message); it is for byte streams. The header is checked as soon
 * as its 32 bytes are there, so an oversize frame is refused before its body
 * is buffered. After an error the stream cannot find the next frame again:
 * every later push throws the same error.
 *
 * A frame that arrived in one chunk is decoded in place, so messages alias
 * the pushed chunks; a frame split over chunks is copied once.
 */
export class FrameDecoder {
  private readonly limits: Limits;
  private chunks: Uint8Array[] = [];
  /** Bytes of chunks[0] already consumed. */
  private head = 0;
  private buffered = 0;
  /** Size of the frame whose header was checked, 0 while waiting for a header. */
  private frameBytes = 0;
  private failure: ProtocolError | undefined;
  private readonly headerScratch = Buffer.alloc(HEADER_BYTES);

  constructor(limits: Limits = DEFAULT_LIMITS) {
    this.limits = limits;
  }

  /** Bytes received and not yet returned as messages. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** Adds bytes; returns the messages they completed, in order. */
  push(chunk: Uint8Array): Message[] {
    if (this.failure !== undefined) throw this.failure;
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    const out: Message[] = [];
    try {
      for (;;) {
        if (this.frameBytes === 0) {
          if (this.buffered < HEADER_BYTES) break;
          const header = decodeHeader(this.peekHeader(), this.limits);
          this.frameBytes = HEADER_BYTES + header.bodyLength;
        }
        if (this.buffered < this.frameBytes) break;
        const frame = this.take(this.frameBytes);
        this.frameBytes = 0;
        out.push(decode(frame, this.limits));
      }
    } catch (err) {
      this.failure =
        err instanceof ProtocolError ? err : new ProtocolError('BAD_FRAME', `stream decoder: ${String(err)}`);
      this.chunks = [];
      this.head = 0;
      this.buffered = 0;
      throw this.failure;
    }
    return out;
  }

  private peekHeader(): Uint8Array {
    const first = this.chunks[0]!;
    if (first.length - this.head >= HEADER_BYTES) return first.subarray(this.head, this.head + HEADER_BYTES);
    let filled = 0;
    let offset = this.head;
    for (const c of this.chunks) {
      const n = Math.min(c.length - offset, HEADER_BYTES - filled);
      this.headerScratch.set(c.subarray(offset, offset + n), filled);
      filled += n;
      offset = 0;
      if (filled === HEADER_BYTES) break;
    }
    return this.headerScratch;
  }

  /** Removes the next n bytes (n <= buffered), as a view when they lie in one chunk. */
  private take(n: number): Buffer {
    this.buffered -= n;
    const first = this.chunks[0]!;
    const available = first.length - this.head;
    if (available >= n) {
      const out = asBuffer(first).subarray(this.head, this.head + n);
      this.head += n;
      if (this.head === first.length) {
        this.chunks.shift();
        this.head = 0;
      }
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let used = 0;
    while (filled < n) {
      const c = this.chunks[used]!;
      const k = Math.min(c.length - this.head, n - filled);
      out.set(c.subarray(this.head, this.head + k), filled);
      filled += k;
      if (this.head + k === c.length) {
        used++;
        this.head = 0;
      } else {
        this.head += k;
      }
    }
    this.chunks.splice(0, used);
    return out;
  }
}

// ---------------------------------------------------------------------------
// Error replies

/** Longest error message sent: fits any receiver's stringBytesMax at its default. */
const ERROR_MESSAGE_BYTES_MAX = DEFAULT_LIMITS.stringBytesMax;

/** The ERROR reply answering `req` with `err`. The message is clipped to fit any receiver's limits. */
export function errorReply(
  req: { requestId: number; kind: MessageKind },
  err: PagepairError,
  epoch: number,
  sender: number,
): ErrorReply {
  return {
    kind: 'ERROR',
    requestId: req.requestId,
    epoch,
    sender,
    flags: 0,
    code: err.codeNumber,
    requestType: TYPE_OF_KIND[req.kind],
    message: clipUtf8(err.message, ERROR_MESSAGE_BYTES_MAX),
  };
}

/**
 * The ERROR reply for a frame that failed to decode, when its header was good
 * enough to say which request it was; undefined otherwise (then the only
 * answer is to close the link).
 */
export function protocolErrorReply(err: ProtocolError, epoch: number, sender: number): ErrorReply | undefined {
  if (err.requestId === undefined || err.frameType === undefined) return undefined;
  return {
    kind: 'ERROR',
    requestId: err.requestId,
    epoch,
    sender,
    flags: 0,
    code: err.codeNumber,
    requestType: err.frameType,
    message: clipUtf8(err.message, ERROR_MESSAGE_BYTES_MAX),
  };
}

/** The PagepairError an ERROR reply carries, to throw at the requester. */
export function errorOfReply(reply: ErrorReply): PagepairError {
  return PagepairError.fromWire(reply.code, reply.message);
}
