// The NBD protocol (the NBD project's doc/proto.md), server side. Pure: bytes
// in, typed events or a typed PagepairError out; values in, bytes out. The
// server (transport/nbd-server.ts) decides what to answer; docs/nbd.md says
// what pagepair supports.
//
// Everything on the wire is big-endian. Only the fixed newstyle handshake is
// spoken (oldstyle is long gone from clients), with simple replies and,
// when the client asks, structured replies.

import { PagepairError } from './errors.js';
import type { ErrorCodeName } from './errors.js';

// ---------------------------------------------------------------------------
// Magics. The 64-bit ones are split in two words: no BigInt on the hot path.

/** 'NBDMAGIC', the first 8 bytes a server sends. */
export const NBD_INIT_MAGIC_HI = 0x4e42444d;
export const NBD_INIT_MAGIC_LO = 0x41474943;
/** 'IHAVEOPT': the newstyle greeting's second word and every option's first. */
export const NBD_OPTS_MAGIC_HI = 0x49484156;
export const NBD_OPTS_MAGIC_LO = 0x454f5054;
/** 0x0003e889045565a9, the first 8 bytes of every option reply. */
export const NBD_REP_MAGIC_HI = 0x0003e889;
export const NBD_REP_MAGIC_LO = 0x045565a9;
export const NBD_REQUEST_MAGIC = 0x25609513;
/** Extended headers (an experimental extension) are never negotiated; seeing this magic is a client bug. */
export const NBD_EXTENDED_REQUEST_MAGIC = 0x21e41c71;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---------------------------------------------------------------------------
// Handshake

/** Handshake flags (server, 16 bits). */
export const NbdHandshakeFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const;

/** Client flags (32 bits). */
export const NbdClientFlag = {
  C_FIXED_NEWSTYLE: 1 << 0,
  C_NO_ZEROES: 1 << 1,
} as const;

export const NbdOpt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const REP_ERR = 0x8000_0000;

/** Option reply types; errors have bit 31 set. */
export const NbdRep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR + 1,
  ERR_POLICY: REP_ERR + 2,
  ERR_INVALID: REP_ERR + 3,
  ERR_PLATFORM: REP_ERR + 4,
  ERR_TLS_REQD: REP_ERR + 5,
  ERR_UNKNOWN: REP_ERR + 6,
  ERR_SHUTDOWN: REP_ERR + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR + 8,
  ERR_TOO_BIG: REP_ERR + 9,
} as const;

/** NBD_REP_INFO information types. */
export const NbdInfo = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

// ---------------------------------------------------------------------------
// Transmission

/** Transmission flags (16 bits), sent with the export's size. */
export const NbdFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const NbdCmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

/** Command flags (16 bits, per request). */
export const NbdCmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  PAYLOAD_LEN: 1 << 5,
} as const;

/** Structured reply chunk flags and types. */
export const NbdReplyFlag = { DONE: 1 << 0 } as const;

export const NbdReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8000 + 1,
  ERROR_OFFSET: 0x8000 + 2,
} as const;

/** The error values the spec allows in replies (they match Linux errno). */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

export const NBD_REQUEST_HEADER_BYTES = 28;
export const NBD_SIMPLE_REPLY_HEADER_BYTES = 16;
export const NBD_STRUCTURED_REPLY_HEADER_BYTES = 20;
export const NBD_OPTION_HEADER_BYTES = 16;
export const NBD_OPTION_REPLY_HEADER_BYTES = 20;
/** The greeting: NBDMAGIC, IHAVEOPT, handshake flags. */
export const NBD_GREETING_BYTES = 18;
/** Strings (export names, messages) MUST be no longer than this (proto.md, Conventions). */
export const NBD_STRING_BYTES_MAX = 4096;
/** The payload every server should accept without advertising otherwise (2^25). */
export const NBD_DEFAULT_PAYLOAD_BYTES_MAX = 32 * 1024 * 1024;

const TWO_POW_32 = 0x1_0000_0000;

// ---------------------------------------------------------------------------
// Names, for logs and error messages

function nameOf(table: Record<string, number>, value: number, what: string): string {
  for (const key in table) if (table[key] === value) return key;
  return `${what} ${value}`;
}

export function nbdOptName(option: number): string {
  return `NBD_OPT_${nameOf(NbdOpt, option, 'unknown')}`;
}

export function nbdCmdName(type: number): string {
  return `NBD_CMD_${nameOf(NbdCmd, type, 'unknown')}`;
}

// ---------------------------------------------------------------------------
// Client side: a byte-fed parser

/** The client's 32 flag bits, right after the greeting. */
export interface NbdClientFlagsEvent {
  kind: 'clientFlags';
  flags: number;
}

/** One option of the handshake; `data` is its payload (copied: it outlives the pushed chunks). */
export interface NbdOptionEvent {
  kind: 'option';
  option: number;
  data: Buffer;
}

/** One transmission request. */
export interface NbdRequest {
  kind: 'request';
  flags: number;
  type: number;
  /** The cookie (formerly "handle"), opaque, echoed in the reply: high and low 32 bits. */
  cookieHi: number;
  cookieLo: number;
  /** Bytes. Exact up to 2^53; above that only known to be beyond any export. */
  offset: number;
  length: number;
  /**
   * NBD_CMD_WRITE's data, else null. It may be a view of a pushed chunk
   * (no copy): chunks must not be modified after they are pushed.
   */
  payload: Buffer | null;
  /** A write whose payload was over payloadBytesMax: read and thrown away, so the stream stays in step. */
  payloadDropped: boolean;
}

export type NbdClientEvent = NbdClientFlagsEvent | NbdOptionEvent | NbdRequest;

export interface NbdParserLimits {
  /** Largest option payload kept; a longer option is taken as abuse (hard disconnect). */
  optionBytesMax: number;
  /** Largest write payload handed over. */
  payloadBytesMax: number;
  /**
   * Largest write payload read and thrown away (the request then gets an
   * error); beyond it the length is absurd and the stream is given up.
   */
  droppedPayloadBytesMax: number;
}

export const NBD_PARSER_DEFAULT_LIMITS: Readonly<NbdParserLimits> = Object.freeze({
  optionBytesMax: 64 * 1024,
  payloadBytesMax: NBD_DEFAULT_PAYLOAD_BYTES_MAX,
  droppedPayloadBytesMax: 2 * NBD_DEFAULT_PAYLOAD_BYTES_MAX,
});

const Phase = { CLIENT_FLAGS: 0, OPTIONS: 1, TRANSMISSION: 2, FAILED: 3 } as const;
type PhaseValue = (typeof Phase)[keyof typeof Phase];

const CLIENT_FLAGS_KNOWN = NbdClientFlag.C_FIXED_NEWSTYLE | NbdClientFlag.C_NO_ZEROES;

/**
 * What a client sends, from the bytes after the server's greeting: the client
 * flags, options, then (once the server calls startTransmission) requests.
 *
 * Pull-based: push() bytes as they arrive, then call next() until it returns
 * undefined (more bytes needed). Events the caller does not pull stay
 * buffered, which is how the server applies backpressure. Bad bytes throw a
 * PagepairError naming the field; after that the parser stays failed, since
 * the stream can no longer be divided into messages.
 */
export class NbdClientParser {
  private readonly limits: NbdParserLimits;
  private readonly handshakeFlags: number;
  private chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private head = 0;
  private buffered = 0;
  private phase: PhaseValue = Phase.CLIENT_FLAGS;
  /** A request or option whose payload is still being read or dropped. */
  private pendingRequest: NbdRequest | null = null;
  private pendingOption = -1;
  private pendingOptionBytes = 0;
  private dropRemaining = 0;
  private failure: PagepairError | null = null;
  private readonly scratch = Buffer.alloc(NBD_REQUEST_HEADER_BYTES);

  /** `handshakeFlags`: what the server's greeting offered; the client may not claim more. */
  constructor(limits: Partial<NbdParserLimits> = {}, handshakeFlags: number = NbdHandshakeFlag.FIXED_NEWSTYLE | NbdHandshakeFlag.NO_ZEROES) {
    this.limits = { ...NBD_PARSER_DEFAULT_LIMITS, ...limits };
    this.handshakeFlags = handshakeFlags;
  }

  /** Bytes pushed and not yet consumed. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  get inTransmission(): boolean {
    return this.phase === Phase.TRANSMISSION;
  }

  /**
   * Changes the largest option kept, from the next option header on (a
   * server lowers it while it answers everything but STARTTLS with an error).
   */
  setOptionBytesMax(bytes: number): void {
    this.limits.optionBytesMax = bytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /**
   * From now on bytes are transmission requests. The server calls it after
   * it ended the handshake (NBD_OPT_GO acknowledged, or NBD_OPT_EXPORT_NAME).
   */
  startTransmission(): void {
    if (this.phase === Phase.FAILED) return;
    this.phase = Phase.TRANSMISSION;
  }

  next(): NbdClientEvent | undefined {
    if (this.failure !== null) throw this.failure;
    try {
      switch (this.phase) {
        case Phase.TRANSMISSION:
          return this.nextRequest();
        case Phase.OPTIONS:
          return this.nextOption();
        case Phase.CLIENT_FLAGS:
          return this.nextClientFlags();
        default:
          return undefined;
      }
    } catch (err) {
      this.phase = Phase.FAILED;
      this.failure = err instanceof PagepairError ? err : new PagepairError('INTERNAL', String(err));
      this.chunks = [];
      this.buffered = 0;
      throw this.failure;
    }
  }

  private nextClientFlags(): NbdClientFlagsEvent | undefined {
    if (this.buffered < 4) return undefined;
    const b = this.peek(4);
    const flags = b.readUInt32BE(this.peekAt);
    this.consume(4);
    if ((flags & ~CLIENT_FLAGS_KNOWN) !== 0) {
      throw new PagepairError('BAD_FIELD', `client flags 0x${flags.toString(16)} have bits nobody defined`, 'clientFlags');
    }
    if ((flags & NbdClientFlag.C_NO_ZEROES) !== 0 && (this.handshakeFlags & NbdHandshakeFlag.NO_ZEROES) === 0) {
      throw new PagepairError('BAD_FIELD', 'client flags claim NO_ZEROES, which the server did not offer', 'clientFlags');
    }
    this.phase = Phase.OPTIONS;
    return { kind: 'clientFlags', flags };
  }

  private nextOption(): NbdOptionEvent | undefined {
    if (this.pendingOption < 0) {
      if (this.buffered < NBD_OPTION_HEADER_BYTES) return undefined;
      const b = this.peek(NBD_OPTION_HEADER_BYTES);
      const p = this.peekAt;
      if (b.readUInt32BE(p) !== NBD_OPTS_MAGIC_HI || b.readUInt32BE(p + 4) !== NBD_OPTS_MAGIC_LO) {
        throw new PagepairError('BAD_MAGIC', `option magic is 0x${hex8(b, p)}, not IHAVEOPT`, 'optionMagic');
      }
      const option = b.readUInt32BE(p + 8);
      const length = b.readUInt32BE(p + 12);
      this.consume(NBD_OPTION_HEADER_BYTES);
      if (length > this.limits.optionBytesMax) {
        throw new PagepairError(
          'LIMIT_EXCEEDED',
          `${nbdOptName(option)} carries ${length} bytes, over the limit of ${this.limits.optionBytesMax}`,
          'optionLength',
        );
      }
      this.pendingOption = option;
      this.pendingOptionBytes = length;
    }
    if (this.buffered < this.pendingOptionBytes) return undefined;
    const data = Buffer.allocUnsafe(this.pendingOptionBytes);
    this.copyOut(data, this.pendingOptionBytes);
    const option = this.pendingOption;
    this.pendingOption = -1;
    return { kind: 'option', option, data };
  }

  private nextRequest(): NbdRequest | undefined {
    let req = this.pendingRequest;
    if (req === null) {
      if (this.buffered < NBD_REQUEST_HEADER_BYTES) return undefined;
      const b = this.peek(NBD_REQUEST_HEADER_BYTES);
      const p = this.peekAt;
      const magic = b.readUInt32BE(p);
      if (magic !== NBD_REQUEST_MAGIC) {
        const why = magic === NBD_EXTENDED_REQUEST_MAGIC ? ' (an extended header, which was not negotiated)' : '';
        throw new PagepairError('BAD_MAGIC', `request magic is 0x${magic.toString(16).padStart(8, '0')}${why}`, 'requestMagic');
      }
      const type = b.readUInt16BE(p + 6);
      const length = b.readUInt32BE(p + 24);
      req = {
        kind: 'request',
        flags: b.readUInt16BE(p + 4),
        type,
        cookieHi: b.readUInt32BE(p + 8),
        cookieLo: b.readUInt32BE(p + 12),
        offset: b.readUInt32BE(p + 16) * TWO_POW_32 + b.readUInt32BE(p + 20),
        length,
        payload: null,
        payloadDropped: false,
      };
      this.consume(NBD_REQUEST_HEADER_BYTES);
      if (type !== NbdCmd.WRITE || length === 0) return req;
      if (length > this.limits.payloadBytesMax) {
        if (length > this.limits.droppedPayloadBytesMax) {
          throw new PagepairError(
            'LIMIT_EXCEEDED',
            `NBD_CMD_WRITE of ${length} bytes, far over the maximum payload of ${this.limits.payloadBytesMax}`,
            'length',
          );
        }
        req.payloadDropped = true;
        this.dropRemaining = length;
      }
      this.pendingRequest = req;
    }
    if (req.payloadDropped) {
      // Dropped as it arrives: an oversize payload is never held in memory.
      const n = Math.min(this.dropRemaining, this.buffered);
      this.consume(n);
      this.dropRemaining -= n;
      if (this.dropRemaining > 0) return undefined;
    } else {
      if (this.buffered < req.length) return undefined;
      req.payload = this.take(req.length);
    }
    this.pendingRequest = null;
    return req;
  }

  // -------------------------------------------------------------------------
  // The chunk queue

  /** Set by peek(): where the bytes start in the buffer it returned. */
  private peekAt = 0;

  /** n (<= 28) contiguous bytes at the read position, without consuming them. */
  private peek(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      this.peekAt = this.head;
      return first;
    }
    this.copyInto(this.scratch, n);
    this.peekAt = 0;
    return this.scratch;
  }

  /** n bytes as one Buffer: a view when they lie in one chunk, else a copy. */
  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.consume(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyOut(out, n);
    return out;
  }

  private copyInto(dst: Buffer, n: number): void {
    let i = 0;
    let pos = this.head;
    let copied = 0;
    while (copied < n) {
      const c = this.chunks[i]!;
      const k = Math.min(n - copied, c.length - pos);
      c.copy(dst, copied, pos, pos + k);
      copied += k;
      i++;
      pos = 0;
    }
  }

  private copyOut(dst: Buffer, n: number): void {
    this.copyInto(dst, n);
    this.consume(n);
  }

  private consume(n: number): void {
    this.buffered -= n;
    while (n > 0) {
      const first = this.chunks[0]!;
      const left = first.length - this.head;
      if (n < left) {
        this.head += n;
        return;
      }
      n -= left;
      this.chunks.shift();
      this.head = 0;
    }
    if (this.chunks.length > 0 && this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}

function hex8(b: Buffer, p: number): string {
  return b.toString('hex', p, p + 8);
}

// ---------------------------------------------------------------------------
// Option payloads

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** An NBD string: valid UTF-8, no NUL, at most NBD_STRING_BYTES_MAX bytes. */
export function decodeNbdString(bytes: Uint8Array, field: string): string {
  if (bytes.length > NBD_STRING_BYTES_MAX) {
    throw new PagepairError('LIMIT_EXCEEDED', `${field} is ${bytes.length} bytes, over ${NBD_STRING_BYTES_MAX}`, field);
  }
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw new PagepairError('BAD_FIELD', `${field} is not valid UTF-8`, field);
  }
  if (text.includes('\0')) throw new PagepairError('BAD_FIELD', `${field} contains a NUL character`, field);
  return text;
}

/** The data of NBD_OPT_INFO and NBD_OPT_GO. */
export interface NbdInfoRequest {
  exportName: string;
  /** The NBD_INFO_* types asked for, in the client's order. */
  infoTypes: number[];
}

export function decodeInfoRequest(data: Buffer): NbdInfoRequest {
  if (data.length < 6) {
    throw new PagepairError('BAD_FRAME', `option data is ${data.length} bytes; it needs at least 6`, 'optionLength');
  }
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 6) {
    throw new PagepairError('BAD_FIELD', `export name length ${nameBytes} does not fit ${data.length} bytes of option data`, 'exportNameLength');
  }
  const exportName = decodeNbdString(data.subarray(4, 4 + nameBytes), 'exportName');
  const count = data.readUInt16BE(4 + nameBytes);
  const listAt = 6 + nameBytes;
  if (data.length - listAt !== count * 2) {
    throw new PagepairError(
      'BAD_FIELD',
      `${count} information requests need ${count * 2} bytes; the option has ${data.length - listAt}`,
      'infoRequestCount',
    );
  }
  const infoTypes: number[] = [];
  for (let i = 0; i < count; i++) infoTypes.push(data.readUInt16BE(listAt + 2 * i));
  return { exportName, infoTypes };
}

/** NBD_OPT_EXPORT_NAME's data is the bare name. */
export function decodeExportName(data: Buffer): string {
  return decodeNbdString(data, 'exportName');
}

// ---------------------------------------------------------------------------
// Server side: encoders

function putU64(b: Buffer, p: number, v: number): void {
  b.writeUInt32BE(Math.floor(v / TWO_POW_32), p);
  b.writeUInt32BE(v >>> 0, p + 4);
}

function checkU64(v: number, field: string): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new PagepairError('BAD_FIELD', `${field} must be a safe non-negative integer, got ${v}`, field);
}

function checkU16(v: number, field: string): void {
  if ((v & 0xffff) !== v) throw new PagepairError('BAD_FIELD', `${field} must be a u16, got ${v}`, field);
}

function checkU32(v: number, field: string): void {
  if (!Number.isInteger(v) || v >>> 0 !== v) throw new PagepairError('BAD_FIELD', `${field} must be a u32, got ${v}`, field);
}

function stringBytes(text: string, field: string): Buffer {
  const b = Buffer.from(text, 'utf8');
  if (b.length > NBD_STRING_BYTES_MAX) throw new PagepairError('LIMIT_EXCEEDED', `${field} is ${b.length} bytes, over ${NBD_STRING_BYTES_MAX}`, field);
  return b;
}

/** NBDMAGIC, IHAVEOPT, handshake flags: the server's first 18 bytes. */
export function encodeGreeting(handshakeFlags: number): Buffer {
  checkU16(handshakeFlags, 'handshakeFlags');
  const b = Buffer.allocUnsafe(NBD_GREETING_BYTES);
  b.writeUInt32BE(NBD_INIT_MAGIC_HI, 0);
  b.writeUInt32BE(NBD_INIT_MAGIC_LO, 4);
  b.writeUInt32BE(NBD_OPTS_MAGIC_HI, 8);
  b.writeUInt32BE(NBD_OPTS_MAGIC_LO, 12);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

/** One option reply: magic, option, reply type, length, data. */
export function encodeOptionReply(option: number, replyType: number, data?: Uint8Array): Buffer {
  checkU32(option, 'option');
  checkU32(replyType, 'replyType');
  const n = data === undefined ? 0 : data.length;
  const b = Buffer.allocUnsafe(NBD_OPTION_REPLY_HEADER_BYTES + n);
  b.writeUInt32BE(NBD_REP_MAGIC_HI, 0);
  b.writeUInt32BE(NBD_REP_MAGIC_LO, 4);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(replyType, 12);
  b.writeUInt32BE(n, 16);
  if (data !== undefined) b.set(data, NBD_OPTION_REPLY_HEADER_BYTES);
  return b;
}

export function encodeAck(option: number): Buffer {
  return encodeOptionReply(option, NbdRep.ACK);
}

/** An error reply (NBD_REP_ERR_*); the message is for a human. */
export function encodeOptionError(option: number, errorType: number, message = ''): Buffer {
  if ((errorType & REP_ERR) === 0) throw new PagepairError('BAD_FIELD', `reply type ${errorType} is not an error`, 'replyType');
  return encodeOptionReply(option, errorType, clipString(message));
}

/** NBD_REP_SERVER: the name, then (optionally) a description for humans. */
export function encodeRepServer(option: number, exportName: string, description = ''): Buffer {
  const name = stringBytes(exportName, 'exportName');
  const desc = stringBytes(description, 'description');
  const data = Buffer.allocUnsafe(4 + name.length + desc.length);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  desc.copy(data, 4 + name.length);
  return encodeOptionReply(option, NbdRep.SERVER, data);
}

/** NBD_REP_INFO / NBD_INFO_EXPORT: size and transmission flags. */
export function encodeInfoExport(option: number, sizeBytes: number, transmissionFlags: number): Buffer {
  checkU64(sizeBytes, 'sizeBytes');
  checkU16(transmissionFlags, 'transmissionFlags');
  const data = Buffer.allocUnsafe(12);
  data.writeUInt16BE(NbdInfo.EXPORT, 0);
  putU64(data, 2, sizeBytes);
  data.writeUInt16BE(transmissionFlags, 10);
  return encodeOptionReply(option, NbdRep.INFO, data);
}

function encodeInfoString(option: number, infoType: number, text: string, field: string): Buffer {
  const s = stringBytes(text, field);
  const data = Buffer.allocUnsafe(2 + s.length);
  data.writeUInt16BE(infoType, 0);
  s.copy(data, 2);
  return encodeOptionReply(option, NbdRep.INFO, data);
}

export function encodeInfoName(option: number, exportName: string): Buffer {
  return encodeInfoString(option, NbdInfo.NAME, exportName, 'exportName');
}

export function encodeInfoDescription(option: number, description: string): Buffer {
  return encodeInfoString(option, NbdInfo.DESCRIPTION, description, 'description');
}

export interface NbdBlockSizes {
  minimumBytes: number;
  preferredBytes: number;
  maximumPayloadBytes: number;
}

/** NBD_INFO_BLOCK_SIZE, checked against the spec's rules for the three values. */
export function encodeInfoBlockSize(option: number, sizes: NbdBlockSizes): Buffer {
  const { minimumBytes, preferredBytes, maximumPayloadBytes } = sizes;
  checkU32(minimumBytes, 'minimumBytes');
  checkU32(preferredBytes, 'preferredBytes');
  checkU32(maximumPayloadBytes, 'maximumPayloadBytes');
  if (!isPowerOfTwo(minimumBytes) || minimumBytes > 65536) {
    throw new PagepairError('BAD_FIELD', `minimum block size ${minimumBytes} must be a power of 2 up to 65536`, 'minimumBytes');
  }
  if (!isPowerOfTwo(preferredBytes) || preferredBytes < Math.max(minimumBytes, 512)) {
    throw new PagepairError('BAD_FIELD', `preferred block size ${preferredBytes} must be a power of 2 of at least max(minimum, 512)`, 'preferredBytes');
  }
  if (maximumPayloadBytes < preferredBytes) {
    throw new PagepairError('BAD_FIELD', `maximum payload ${maximumPayloadBytes} is under the preferred block size ${preferredBytes}`, 'maximumPayloadBytes');
  }
  const data = Buffer.allocUnsafe(14);
  data.writeUInt16BE(NbdInfo.BLOCK_SIZE, 0);
  data.writeUInt32BE(minimumBytes, 2);
  data.writeUInt32BE(preferredBytes, 6);
  data.writeUInt32BE(maximumPayloadBytes, 10);
  return encodeOptionReply(option, NbdRep.INFO, data);
}

export function isPowerOfTwo(n: number): boolean {
  return n > 0 && Number.isInteger(n) && (n & (n - 1)) === 0;
}

/** The reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless the client said NO_ZEROES. */
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  checkU64(sizeBytes, 'sizeBytes');
  checkU16(transmissionFlags, 'transmissionFlags');
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  putU64(b, 0, sizeBytes);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

/**
 * A simple reply's 16-byte header. For a successful NBD_CMD_READ the data
 * follows it on the wire (written separately: no copy).
 */
export function encodeSimpleReply(errno: number, cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(NBD_SIMPLE_REPLY_HEADER_BYTES);
  putSimpleReply(b, 0, errno, cookieHi, cookieLo);
  return b;
}

/** encodeSimpleReply into `b` at `at` (16 bytes), for a server that gathers the replies of a turn in one buffer. */
export function putSimpleReply(b: Buffer, at: number, errno: number, cookieHi: number, cookieLo: number): void {
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, at);
  b.writeUInt32BE(errno, at + 4);
  b.writeUInt32BE(cookieHi, at + 8);
  b.writeUInt32BE(cookieLo, at + 12);
}

function writeChunkHeader(b: Buffer, flags: number, type: number, cookieHi: number, cookieLo: number, length: number, at = 0): void {
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  b.writeUInt32BE(cookieHi, at + 8);
  b.writeUInt32BE(cookieLo, at + 12);
  b.writeUInt32BE(length, at + 16);
}

/** The bytes of encodeOffsetDataHead. */
export const NBD_OFFSET_DATA_HEAD_BYTES = NBD_STRUCTURED_REPLY_HEADER_BYTES + 8;

/**
 * The head of an NBD_REPLY_TYPE_OFFSET_DATA chunk (20-byte chunk header and
 * the 8-byte offset) for `dataBytes` of data that follow it on the wire.
 */
export function encodeOffsetDataHead(cookieHi: number, cookieLo: number, offset: number, dataBytes: number, done: boolean): Buffer {
  const b = Buffer.allocUnsafe(NBD_OFFSET_DATA_HEAD_BYTES);
  putOffsetDataHead(b, 0, cookieHi, cookieLo, offset, dataBytes, done);
  return b;
}

/** encodeOffsetDataHead into `b` at `at` (NBD_OFFSET_DATA_HEAD_BYTES). */
export function putOffsetDataHead(b: Buffer, at: number, cookieHi: number, cookieLo: number, offset: number, dataBytes: number, done: boolean): void {
  writeChunkHeader(b, done ? NbdReplyFlag.DONE : 0, NbdReplyType.OFFSET_DATA, cookieHi, cookieLo, 8 + dataBytes, at);
  putU64(b, at + NBD_STRUCTURED_REPLY_HEADER_BYTES, offset);
}

/** NBD_REPLY_TYPE_NONE with DONE: the end of a structured reply (a successful zero-length read). */
export function encodeNoneChunk(cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_BYTES);
  writeChunkHeader(b, NbdReplyFlag.DONE, NbdReplyType.NONE, cookieHi, cookieLo, 0);
  return b;
}

/** NBD_REPLY_TYPE_ERROR with DONE: an errno and a message for a human. */
export function encodeErrorChunk(cookieHi: number, cookieLo: number, errno: number, message = ''): Buffer {
  if (errno === 0) throw new PagepairError('BAD_FIELD', 'an error chunk needs a nonzero error', 'errno');
  const msg = clipString(message);
  const b = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_BYTES + 6 + msg.length);
  writeChunkHeader(b, NbdReplyFlag.DONE, NbdReplyType.ERROR, cookieHi, cookieLo, 6 + msg.length);
  b.writeUInt32BE(errno, 20);
  b.writeUInt16BE(msg.length, 24);
  msg.copy(b, 26);
  return b;
}

/** Messages a server sends are clipped to a size any client takes, at a character boundary. */
const MESSAGE_BYTES_MAX = 1024;

function clipString(text: string): Buffer {
  const b = Buffer.from(text, 'utf8');
  if (b.length <= MESSAGE_BYTES_MAX) return b;
  let end = MESSAGE_BYTES_MAX;
  // Back off continuation bytes (10xxxxxx) so no character is cut.
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}

// ---------------------------------------------------------------------------
// Errors

/**
 * The NBD error for a pagepair error code. A controller that no longer
 * serves says ESHUTDOWN: the spec tells the client to disconnect then,
 * which is what lets it go to the partner.
 */
export function nbdErrnoFor(code: ErrorCodeName): number {
  switch (code) {
    case 'NO_SPACE':
      return NbdErrno.ENOSPC;
    case 'OUT_OF_RANGE':
    case 'BAD_FIELD':
    case 'TOO_LARGE':
    case 'LIMIT_EXCEEDED':
      return NbdErrno.EINVAL;
    case 'FENCED':
    case 'NOT_ACTIVE':
    case 'SHUTTING_DOWN':
    case 'STALE_EPOCH':
      return NbdErrno.ESHUTDOWN;
    case 'READ_ONLY':
      // A write to a snapshot: the spec's error for writes to a read-only export.
      return NbdErrno.EPERM;
    default:
      return NbdErrno.EIO;
  }
}
