// What the bytes are: the type code of every message kind and the field
// layout of every body, as data. The codec walks these tables to encode and
// decode, and docs/protocol.md is written from them, so the two cannot drift.

import type { Limits } from './limits.js';
import type { Common, Message, MessageKind } from './messages.js';
import { JoinFlag, LockOp, MsgType, PageFlag, PageState, PointerMode, PoolJobKind, REPLY_BIT, SnapshotOp, Role, SenseReason, VerifyVerdict } from './messages.js';

// ---------------------------------------------------------------------------
// Type codes

/** Every request's name is its MsgType key; ERROR is the one code with no reply. */
type RequestKind = Exclude<keyof typeof MsgType, 'ERROR'>;
type CodedKind = keyof typeof MsgType | `${RequestKind}_REPLY`;

// The compiler checks that the kinds with a code are exactly the message kinds.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type Holds<T extends true> = T;
type KindsAllCoded = Holds<Same<CodedKind, MessageKind>>;

/**
 * Every kind's type code: a request's is its MsgType code, its reply's that
 * code | REPLY_BIT. Kept in MsgType's groups (peer paging 0x0_, handshake
 * 0x2_, client 0x3_), each group's requests then their replies, ERROR last:
 * the fuzzers draw kinds by their place in this order.
 */
export const TYPE_OF_KIND: { readonly [K in MessageKind]: number } = (() => {
  const requests = (Object.entries(MsgType) as [keyof typeof MsgType, number][]).filter(
    (e): e is [RequestKind, number] => e[0] !== 'ERROR',
  );
  const codes: [CodedKind, number][] = [];
  for (const group of new Set(requests.map(([, code]) => code >> 4))) {
    const inGroup = requests.filter(([, code]) => code >> 4 === group);
    codes.push(...inGroup, ...inGroup.map(([kind, code]): [CodedKind, number] => [`${kind}_REPLY`, code | REPLY_BIT]));
  }
  codes.push(['ERROR', MsgType.ERROR]);
  return Object.fromEntries(codes) as Record<CodedKind, number>;
})();

/** Indexed by type code; undefined for codes no message uses. */
export const KIND_OF_TYPE: readonly (MessageKind | undefined)[] = (() => {
  const table = new Array<MessageKind | undefined>(256).fill(undefined);
  for (const [kind, type] of Object.entries(TYPE_OF_KIND) as [MessageKind, number][]) {
    if (table[type] !== undefined) throw new Error(`type code 0x${type.toString(16)} used twice`);
    table[type] = kind;
  }
  return table;
})();

// ---------------------------------------------------------------------------
// Field encodings

/**
 * How one field is laid out:
 * - u8, u16, u32: little-endian unsigned integers;
 * - u64: 8 bytes little-endian holding a safe integer (<= 2^53 - 1);
 * - offset64: a u64, or -1 written as eight 0xFF bytes;
 * - bool: a u8, 0 or 1;
 * - enum: a u8 that must be one of `values`;
 * - bits: a u8 with no bits outside `mask`;
 * - guid: 16 raw bytes; TypeScript side a lowercase canonical uuid string;
 * - guidOrEmpty: a guid, where 16 zero bytes stand for the empty string;
 * - str: u16 byte length, then UTF-8 (at most `stringBytesMax` bytes, or the
 *   field's own limit: `deviceNameBytesMax` for a device name);
 * - json: u32 byte length, then UTF-8 (at most `jsonBytesMax` bytes);
 * - bytes32: exactly 32 raw bytes (nonces, HMAC proofs);
 * - bytes16: exactly 16 raw bytes (access keys and their digests);
 * - data: u32 byte length, then the bytes (at most `limit` bytes).
 */
export type ScalarEncoding =
  | 'u8'
  | 'u16'
  | 'u32'
  | 'u64'
  | 'offset64'
  | 'bool'
  | 'enum'
  | 'bits'
  | 'guid'
  | 'guidOrEmpty'
  | 'str'
  | 'json'
  | 'bytes32'
  | 'bytes16'
  | 'data';

export interface ScalarField<N extends string = string> {
  readonly name: N;
  readonly enc: ScalarEncoding;
  /** Bytes before any variable part (for str/json/data: the length prefix). */
  readonly fixedBytes: number;
  /** For u32 and data: the Limits entry bounding the value or the length. */
  readonly limit: keyof Limits | null;
  /** For enum: allowed[v] === 1 for each allowed value. For bits: allowed[0] is the mask. */
  readonly allowed: Uint8Array | null;
  /** For enum: the enum's name and values, for messages and docs. */
  readonly enumName: string | null;
  readonly enumValues: Readonly<Record<string, number>> | null;
  /**
   * For data in a list record: the record's field that holds the CRC-32C of
   * the data whenever the data is not empty. Decoders check it; encoders may
   * use it instead of reading the data once more for the body CRC.
   */
  readonly crcField: string | null;
}

/** A counted list of records, each laid out by `item`. */
export interface ListField<N extends string = string> {
  readonly name: N;
  readonly enc: 'list';
  /** Width of the count prefix. */
  readonly countBytes: 2 | 4;
  readonly countMin: number;
  readonly limit: keyof Limits;
  readonly item: readonly ScalarField[];
}

export type Field<N extends string = string> = ScalarField<N> | ListField<N>;

const FIXED_BYTES: Record<ScalarEncoding, number> = {
  u8: 1,
  u16: 2,
  u32: 4,
  u64: 8,
  offset64: 8,
  bool: 1,
  enum: 1,
  bits: 1,
  guid: 16,
  guidOrEmpty: 16,
  str: 2,
  json: 4,
  bytes32: 32,
  bytes16: 16,
  data: 4,
};

function scalar<N extends string>(
  name: N,
  enc: ScalarEncoding,
  limit: keyof Limits | null = null,
  enumName: string | null = null,
  enumValues: Readonly<Record<string, number>> | null = null,
  allowed: Uint8Array | null = null,
  crcField: string | null = null,
): ScalarField<N> {
  return { name, enc, fixedBytes: FIXED_BYTES[enc], limit, allowed, enumName, enumValues, crcField };
}

const u8 = <N extends string>(name: N) => scalar(name, 'u8');
const u16 = <N extends string>(name: N) => scalar(name, 'u16');
const u32 = <N extends string>(name: N, limit: keyof Limits | null = null) => scalar(name, 'u32', limit);
const u64 = <N extends string>(name: N) => scalar(name, 'u64');
const offset64 = <N extends string>(name: N) => scalar(name, 'offset64');
const bool = <N extends string>(name: N) => scalar(name, 'bool');
const guid = <N extends string>(name: N) => scalar(name, 'guid');
const str = <N extends string>(name: N) => scalar(name, 'str', 'stringBytesMax');
const bytes32 = <N extends string>(name: N) => scalar(name, 'bytes32');
const bytes16 = <N extends string>(name: N) => scalar(name, 'bytes16');
const data = <N extends string>(name: N, limit: keyof Limits, crcField: string | null = null) => scalar(name, 'data', limit, null, null, null, crcField);

function enumField<N extends string>(name: N, enumName: string, values: Readonly<Record<string, number>>) {
  const allowed = new Uint8Array(256);
  for (const v of Object.values(values)) allowed[v] = 1;
  return scalar(name, 'enum', null, enumName, values, allowed);
}

function bits<N extends string>(name: N, enumName: string, values: Readonly<Record<string, number>>) {
  let mask = 0;
  for (const v of Object.values(values)) mask |= v;
  return scalar(name, 'bits', null, enumName, values, Uint8Array.of(mask));
}

function list<N extends string>(
  name: N,
  countBytes: 2 | 4,
  countMin: number,
  limit: keyof Limits,
  item: readonly ScalarField[],
): ListField<N> {
  return { name, enc: 'list', countBytes, countMin, limit, item };
}

// ---------------------------------------------------------------------------
// Body layouts

type MessageOf<K extends MessageKind> = Message extends infer M
  ? M extends Message
    ? K extends M['kind']
      ? M
      : never
    : never
  : never;
type BodyKey<K extends MessageKind> = Exclude<keyof MessageOf<K>, 'kind' | keyof Common> & string;

export type BodyLayouts = { readonly [K in MessageKind]: readonly Field<BodyKey<K>>[] };

const pointerRange = [guid('guid'), u32('firstPage'), u32('pageCount'), u32('pointerId')] as const;

/** Each body's fields, in wire order. An empty list is an empty body. */
export const BODY: BodyLayouts = {
  SPACE_REQUEST: [str('policy'), u32('pageSizeBytes'), u32('pageCount'), bool('reserve'), offset64('dataOffset')],
  SPACE_REQUEST_REPLY: [u32('reservationId'), offset64('dataOffset'), u64('cacheBytesFree'), u64('storeBytesFree')],
  ALLOCATE: [
    guid('guid'),
    str('name'),
    str('policy'),
    u32('pageSizeBytes'),
    u32('pageCount'),
    offset64('dataOffset'),
    u32('reservationId'),
    u32('createdEpoch'),
    bool('keyed'),
    bytes16('keyDigest'),
    bool('snapshot'),
  ],
  ALLOCATE_REPLY: [],
  RELEASE: [guid('guid')],
  RELEASE_REPLY: [],
  LOCK_REQUEST: [guid('guid'), u32('firstPage'), u32('pageCount'), enumField('op', 'LockOp', LockOp), u32('ownerGen')],
  LOCK_REQUEST_REPLY: [bool('granted'), u32('ownerGen')],
  READ_HEADER: [guid('guid'), u32('firstPage'), u32('pageCount', 'headersPerMessageMax')],
  READ_HEADER_REPLY: [
    guid('guid'),
    list('headers', 4, 0, 'headersPerMessageMax', [
      u32('page'),
      u64('version'),
      u32('crc'),
      enumField('state', 'PageState', PageState),
      u32('epoch'),
    ]),
  ],
  WRITE_PAGE: [
    list('pages', 2, 1, 'pagesPerMessageMax', [
      guid('guid'),
      u32('page'),
      u64('version'),
      u32('crc'),
      u32('epoch'),
      bits('pageFlags', 'PageFlag', PageFlag),
      u32('pointerId'),
      u32('clientId'),
      u32('clientSeq'),
      u32('ownerGen'),
      data('data', 'pageSizeBytesMax', 'crc'),
    ]),
  ],
  WRITE_PAGE_REPLY: [u32('count')],
  SENSE_REQUEST: [enumField('role', 'Role', Role), enumField('reason', 'SenseReason', SenseReason), bits('joinFlags', 'JoinFlag', JoinFlag), u32('poolGeneration')],
  SENSE_REQUEST_REPLY: [
    enumField('role', 'Role', Role),
    u16('senseCode'),
    u32('allocations'),
    u32('cachedPages'),
    u32('dirtyPages'),
    u32('destageQueue'),
    str('tableDigest'),
    str('dirtyDigest'),
    u32('poolGeneration'),
  ],
  ALLOCATE_READ: pointerRange,
  ALLOCATE_WRITE: pointerRange,
  ALLOCATE_READ_REPLY: [u32('pointerId')],
  ALLOCATE_WRITE_REPLY: [u32('pointerId')],
  RELEASE_POINTER: [u32('pointerId'), bool('commit')],
  RELEASE_POINTER_REPLY: [u32('pages')],

  HELLO: [u16('protocolVersion'), guid('pairId'), u8('controllerId'), bytes32('nonce'), u32('pid')],
  HELLO_REPLY: [guid('pairId'), u8('controllerId'), bytes32('nonce'), u32('pid')],
  AUTH: [bytes32('proof')],
  AUTH_REPLY: [enumField('role', 'Role', Role), bytes32('proof')],
  CLIENT_HELLO: [u16('protocolVersion'), str('token'), str('clientName')],
  CLIENT_HELLO_REPLY: [
    u8('controllerId'),
    guid('pairId'),
    enumField('role', 'Role', Role),
    u32('requestBytesMax'),
    u32('inflightMax'),
  ],

  C_ALLOCATE: [str('name'), str('policy'), u64('sizeBytes'), bool('keyed')],
  C_ALLOCATE_REPLY: [guid('guid'), u32('pageSizeBytes'), u32('pageCount'), bytes16('key')],
  C_RELEASE: [guid('guid')],
  C_RELEASE_REPLY: [],
  C_WRITE: [guid('guid'), u64('offset'), u32('pointerId'), u32('clientId'), u32('clientSeq'), data('data', 'requestBytesMax')],
  C_WRITE_REPLY: [],
  C_READ: [guid('guid'), u64('offset'), u32('length', 'requestBytesMax'), u32('pointerId')],
  C_READ_REPLY: [data('data', 'requestBytesMax')],
  C_FLUSH: [scalar('guid', 'guidOrEmpty')],
  C_FLUSH_REPLY: [u32('pages')],
  C_STATUS: [],
  C_STATUS_REPLY: [scalar('json', 'json', 'jsonBytesMax')],
  C_LIST: [],
  C_LIST_REPLY: [
    list('allocations', 4, 0, 'listEntriesMax', [
      guid('guid'),
      str('name'),
      str('policy'),
      u32('pageSizeBytes'),
      u32('pageCount'),
      bool('keyed'),
      scalar('origin', 'guidOrEmpty'),
    ]),
  ],
  C_OPEN_POINTER: [guid('guid'), u32('firstPage'), u32('pageCount'), enumField('mode', 'PointerMode', PointerMode)],
  C_OPEN_POINTER_REPLY: [u32('pointerId')],
  C_CLOSE_POINTER: [u32('pointerId'), bool('commit')],
  C_CLOSE_POINTER_REPLY: [u32('pages')],
  C_VERIFY: [guid('guid'), u32('firstPage'), u32('pageCount', 'headersPerMessageMax')],
  C_VERIFY_REPLY: [
    u32('pagesChecked'),
    list('pages', 4, 0, 'headersPerMessageMax', [
      u32('page'),
      enumField('verdict', 'VerifyVerdict', VerifyVerdict),
      u8('owner'),
      u64('aVersion'),
      u32('aCrc'),
      enumField('aState', 'PageState', PageState),
      u64('bVersion'),
      u32('bCrc'),
      enumField('bState', 'PageState', PageState),
      offset64('storeVersion'),
      u32('storeCrc'),
    ]),
  ],
  C_VERIFY_REPORT: [u64('pagesChecked'), u32('mismatches'), u32('repaired'), u32('unsettled')],
  C_VERIFY_REPORT_REPLY: [],
  C_TEST_CORRUPT: [guid('guid'), u32('page'), data('data', 'pageSizeBytesMax')],
  C_TEST_CORRUPT_REPLY: [u64('version'), u32('crc')],
  C_REWRITE: [guid('guid'), u32('page')],
  C_REWRITE_REPLY: [u64('version'), u32('crc')],
  C_POOL_JOB: [
    enumField('job', 'PoolJobKind', PoolJobKind),
    u32('slot'),
    scalar('device', 'str', 'deviceNameBytesMax'),
    u64('rateBytesPerSec'),
    bool('repair'),
  ],
  C_POOL_JOB_REPLY: [u32('jobId')],
  C_UNLOCK: [guid('guid'), bytes16('key')],
  C_UNLOCK_REPLY: [],
  C_SNAPSHOT: [enumField('op', 'SnapshotOp', SnapshotOp), guid('guid'), str('name')],
  C_SNAPSHOT_REPLY: [guid('guid'), u32('pageSizeBytes'), u32('pageCount'), u32('pages')],

  ERROR: [u16('code'), u8('requestType'), str('message')],
};
