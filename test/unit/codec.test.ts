import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ErrorCode, PagepairError } from '../../src/protocol/errors.js';
import type { ErrorCodeName } from '../../src/protocol/errors.js';
import {
  decode,
  decodeHeader,
  encode,
  errorOfReply,
  errorReply,
  FrameDecoder,
  isReplyType,
  kindOfType,
  ProtocolError,
  protocolErrorReply,
  typeOfKind,
} from '../../src/protocol/codec.js';
import { crc32c } from '../../src/protocol/crc32c.js';
import { authProof, helloProof, proofMatches } from '../../src/protocol/handshake.js';
import { DEFAULT_LIMITS, HARD_LIMITS } from '../../src/protocol/limits.js';
import type { Limits } from '../../src/protocol/limits.js';
import {
  FRAME_MAGIC,
  HEADER_BYTES,
  LockOp,
  MsgType,
  PageFlag,
  PageState,
  PointerMode,
  PROTOCOL_VERSION,
  Role,
  SenseReason,
} from '../../src/protocol/messages.js';
import type { Message, MessageKind } from '../../src/protocol/messages.js';

// ---------------------------------------------------------------------------
// Fixtures: one message per kind, every field away from its zero value.

const GUID_A = '0123abcd-4567-89ef-a1b2-c3d4e5f60718';
const GUID_B = 'ffeeddcc-bbaa-4998-8776-655443322110';
const GUID_C = '0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0';
const PAIR_ID = '9f1c2e4a-7b3d-4e5f-8a6b-1c2d3e4f5a6b';

function bytes(length: number, salt: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 131 + salt * 17 + 3) & 0xff;
  return b;
}

let nextRequestId = 0x1000_0001;
function common(sender = 2) {
  return { requestId: nextRequestId++ >>> 0, epoch: 0xdead_0007, sender, flags: 0 };
}

const FIXTURES: { readonly [K in MessageKind]: Extract<Message, { kind: K }> | Message } = {
  SPACE_REQUEST: {
    kind: 'SPACE_REQUEST',
    ...common(),
    policy: 'volume-64k',
    pageSizeBytes: 65536,
    pageCount: 1234,
    reserve: true,
    dataOffset: 0x1_0000_0000 + 512,
  },
  SPACE_REQUEST_REPLY: {
    kind: 'SPACE_REQUEST_REPLY',
    ...common(1),
    reservationId: 77,
    dataOffset: 8192,
    cacheBytesFree: 3 * 1024 ** 3,
    storeBytesFree: Number.MAX_SAFE_INTEGER,
  },
  ALLOCATE: {
    kind: 'ALLOCATE',
    ...common(),
    guid: GUID_A,
    name: 'checkpoint region é',
    policy: 'ckpt',
    pageSizeBytes: 4096,
    pageCount: 99,
    dataOffset: 4096 * 1000,
    reservationId: 77,
    createdEpoch: 6,
    keyed: true,
    keyDigest: bytes(16, 9),
    snapshot: true,
  },
  ALLOCATE_REPLY: { kind: 'ALLOCATE_REPLY', ...common(1) },
  RELEASE: { kind: 'RELEASE', ...common(), guid: GUID_B },
  RELEASE_REPLY: { kind: 'RELEASE_REPLY', ...common(1) },
  LOCK_REQUEST: { kind: 'LOCK_REQUEST', ...common(), guid: GUID_A, firstPage: 10, pageCount: 20, op: LockOp.GIVE, ownerGen: 0xfedc_ba98 },
  LOCK_REQUEST_REPLY: { kind: 'LOCK_REQUEST_REPLY', ...common(1), granted: true, ownerGen: 7 },
  READ_HEADER: { kind: 'READ_HEADER', ...common(), guid: GUID_A, firstPage: 5, pageCount: 3 },
  READ_HEADER_REPLY: {
    kind: 'READ_HEADER_REPLY',
    ...common(1),
    guid: GUID_A,
    headers: [
      { page: 5, version: 2 ** 40 + 3, crc: 0xfedc_ba98, state: PageState.DIRTY, epoch: 6 },
      { page: 6, version: 1, crc: 0x0102_0304, state: PageState.DESTAGING, epoch: 5 },
      { page: 7, version: 9, crc: 0xffff_ffff, state: PageState.ABSENT, epoch: 4 },
    ],
  },
  WRITE_PAGE: {
    kind: 'WRITE_PAGE',
    ...common(),
    pages: [
      { guid: GUID_A, page: 1, version: 2, crc: crc32c(bytes(64, 1)), epoch: 6, pageFlags: 0, pointerId: 0, clientId: 0x7fff_0001, clientSeq: 99, ownerGen: 3, data: bytes(64, 1) },
      {
        guid: GUID_B,
        page: 0xffff_fffe,
        version: Number.MAX_SAFE_INTEGER,
        crc: crc32c(bytes(100, 2)),
        epoch: 7,
        pageFlags: PageFlag.POINTER_PENDING,
        pointerId: 42,
        clientId: 0,
        clientSeq: 0,
        ownerGen: 0xffff_ffff,
        data: bytes(100, 2),
      },
      {
        guid: GUID_A,
        page: 3,
        version: 17,
        crc: 0xabcd_ef01,
        epoch: 6,
        pageFlags: PageFlag.CLEAN_AT,
        pointerId: 0,
        clientId: 0xffff_ffff,
        clientSeq: 0xffff_ffff,
        ownerGen: 2,
        data: Buffer.alloc(0),
      },
    ],
  },
  WRITE_PAGE_REPLY: { kind: 'WRITE_PAGE_REPLY', ...common(1), count: 3 },
  SENSE_REQUEST: { kind: 'SENSE_REQUEST', ...common(), role: Role.MIRRORED, reason: SenseReason.SHUTTING_DOWN, joinFlags: 0x05, poolGeneration: 0xfedc_ba98 },
  SENSE_REQUEST_REPLY: {
    kind: 'SENSE_REQUEST_REPLY',
    ...common(1),
    role: Role.ALONE,
    senseCode: ErrorCode.PARTNER_LOST,
    allocations: 12,
    cachedPages: 3000,
    dirtyPages: 250,
    destageQueue: 17,
    tableDigest: '0123456789abcdef0123456789abcdef',
    dirtyDigest: 'fedcba9876543210fedcba9876543210',
    poolGeneration: 7,
  },
  ALLOCATE_READ: { kind: 'ALLOCATE_READ', ...common(), guid: GUID_A, firstPage: 8, pageCount: 4, pointerId: 9 },
  ALLOCATE_WRITE: { kind: 'ALLOCATE_WRITE', ...common(), guid: GUID_B, firstPage: 1, pageCount: 2, pointerId: 10 },
  ALLOCATE_READ_REPLY: { kind: 'ALLOCATE_READ_REPLY', ...common(1), pointerId: 9 },
  ALLOCATE_WRITE_REPLY: { kind: 'ALLOCATE_WRITE_REPLY', ...common(1), pointerId: 10 },
  RELEASE_POINTER: { kind: 'RELEASE_POINTER', ...common(), pointerId: 10, commit: true },
  RELEASE_POINTER_REPLY: { kind: 'RELEASE_POINTER_REPLY', ...common(1), pages: 2 },
  HELLO: {
    kind: 'HELLO',
    ...common(1),
    protocolVersion: PROTOCOL_VERSION,
    pairId: PAIR_ID,
    controllerId: 1,
    nonce: bytes(32, 3),
    pid: 4242,
  },
  HELLO_REPLY: {
    kind: 'HELLO_REPLY',
    ...common(),
    pairId: PAIR_ID,
    controllerId: 2,
    nonce: bytes(32, 4),
    pid: 4343,
  },
  AUTH: { kind: 'AUTH', ...common(1), proof: bytes(32, 6) },
  AUTH_REPLY: { kind: 'AUTH_REPLY', ...common(), role: Role.JOINING, proof: bytes(32, 5) },
  CLIENT_HELLO: {
    kind: 'CLIENT_HELLO',
    ...common(0),
    protocolVersion: PROTOCOL_VERSION,
    token: 's3cret-token',
    clientName: 'workload-7',
  },
  CLIENT_HELLO_REPLY: {
    kind: 'CLIENT_HELLO_REPLY',
    ...common(),
    controllerId: 2,
    pairId: PAIR_ID,
    role: Role.MIRRORED,
    requestBytesMax: 8 * 1024 * 1024,
    inflightMax: 64,
  },
  C_ALLOCATE: { kind: 'C_ALLOCATE', ...common(0), name: 'vol0', policy: 'volume-64k', sizeBytes: 2 ** 40, keyed: true },
  C_ALLOCATE_REPLY: { kind: 'C_ALLOCATE_REPLY', ...common(), guid: GUID_B, pageSizeBytes: 65536, pageCount: 16, key: bytes(16, 10) },
  C_RELEASE: { kind: 'C_RELEASE', ...common(0), guid: GUID_B },
  C_RELEASE_REPLY: { kind: 'C_RELEASE_REPLY', ...common() },
  C_WRITE: { kind: 'C_WRITE', ...common(0), guid: GUID_A, offset: 2 ** 33 + 5, pointerId: 3, clientId: 0xdead_beef, clientSeq: 12345, data: bytes(300, 7) },
  C_WRITE_REPLY: { kind: 'C_WRITE_REPLY', ...common() },
  C_READ: { kind: 'C_READ', ...common(0), guid: GUID_A, offset: 4096, length: 8192, pointerId: 4 },
  C_READ_REPLY: { kind: 'C_READ_REPLY', ...common(), data: bytes(200, 8) },
  C_FLUSH: { kind: 'C_FLUSH', ...common(0), guid: GUID_A },
  C_FLUSH_REPLY: { kind: 'C_FLUSH_REPLY', ...common(), pages: 31 },
  C_STATUS: { kind: 'C_STATUS', ...common(0) },
  C_STATUS_REPLY: { kind: 'C_STATUS_REPLY', ...common(), json: '{"role":"MIRRORED","epoch":7,"name":"ünïcode"}' },
  C_LIST: { kind: 'C_LIST', ...common(0) },
  C_LIST_REPLY: {
    kind: 'C_LIST_REPLY',
    ...common(),
    allocations: [
      { guid: GUID_A, name: 'vol0', policy: 'volume-64k', pageSizeBytes: 65536, pageCount: 16, keyed: false, origin: '' },
      { guid: GUID_B, name: 'vol0@monday', policy: 'volume-64k', pageSizeBytes: 65536, pageCount: 16, keyed: false, origin: GUID_A },
      { guid: GUID_C, name: 'buf', policy: 'app', pageSizeBytes: 4096, pageCount: 3, keyed: true, origin: '' },
    ],
  },
  C_OPEN_POINTER: {
    kind: 'C_OPEN_POINTER',
    ...common(0),
    guid: GUID_B,
    firstPage: 2,
    pageCount: 5,
    mode: PointerMode.WRITE,
  },
  C_OPEN_POINTER_REPLY: { kind: 'C_OPEN_POINTER_REPLY', ...common(), pointerId: 11 },
  C_CLOSE_POINTER: { kind: 'C_CLOSE_POINTER', ...common(0), pointerId: 11, commit: true },
  C_CLOSE_POINTER_REPLY: { kind: 'C_CLOSE_POINTER_REPLY', ...common(), pages: 5 },
  C_VERIFY: { kind: 'C_VERIFY', ...common(0), guid: GUID_A, firstPage: 4096, pageCount: 4096 },
  C_VERIFY_REPLY: {
    kind: 'C_VERIFY_REPLY',
    ...common(),
    pagesChecked: 4096,
    pages: [
      { page: 4100, verdict: 1, owner: 2, aVersion: 7, aCrc: 0xdeadbeef, aState: 1, bVersion: 7, bCrc: 0x01020304, bState: 1, storeVersion: -1, storeCrc: 0 },
      { page: 4101, verdict: 2, owner: 1, aVersion: 2 ** 40, aCrc: 1, aState: 0, bVersion: 0, bCrc: 0, bState: 4, storeVersion: 2 ** 40 - 1, storeCrc: 9 },
    ],
  },
  C_VERIFY_REPORT: { kind: 'C_VERIFY_REPORT', ...common(0), pagesChecked: 2 ** 33, mismatches: 3, repaired: 2, unsettled: 1 },
  C_VERIFY_REPORT_REPLY: { kind: 'C_VERIFY_REPORT_REPLY', ...common() },
  C_TEST_CORRUPT: { kind: 'C_TEST_CORRUPT', ...common(0), guid: GUID_A, page: 3, data: Buffer.alloc(512, 0x5a) },
  C_TEST_CORRUPT_REPLY: { kind: 'C_TEST_CORRUPT_REPLY', ...common(), version: 12, crc: 0xcafef00d },
  C_REWRITE: { kind: 'C_REWRITE', ...common(0), guid: GUID_B, page: 77 },
  C_REWRITE_REPLY: { kind: 'C_REWRITE_REPLY', ...common(), version: 2 ** 33 + 5, crc: 0x0badf00d },
  C_POOL_JOB: { kind: 'C_POOL_JOB', ...common(0), job: 1, slot: 2, device: 'nbd+unix:///spare?socket=/run/ünï.sock', rateBytesPerSec: 100 * 2 ** 20, repair: false },
  C_POOL_JOB_REPLY: { kind: 'C_POOL_JOB_REPLY', ...common(), jobId: 0x0102_0304 },
  C_UNLOCK: { kind: 'C_UNLOCK', ...common(0), guid: GUID_A, key: bytes(16, 11) },
  C_UNLOCK_REPLY: { kind: 'C_UNLOCK_REPLY', ...common() },
  C_SNAPSHOT: { kind: 'C_SNAPSHOT', ...common(0), op: 1, guid: GUID_A, name: 'before-upgrade' },
  C_SNAPSHOT_REPLY: { kind: 'C_SNAPSHOT_REPLY', ...common(), guid: GUID_B, pageSizeBytes: 4096, pageCount: 256, pages: 17 },
  ERROR: {
    kind: 'ERROR',
    ...common(),
    code: ErrorCode.LOCK_CONFLICT,
    requestType: MsgType.LOCK_REQUEST,
    message: 'pages 10..29 are locked by controller 1',
  },
};

const ALL = Object.values(FIXTURES) as Message[];
const frameOf = (kind: MessageKind): Buffer => encode(FIXTURES[kind]);

// ---------------------------------------------------------------------------
// Helpers to build frames the encoder would refuse, with valid CRCs.

/** Recomputes bodyLength (from the buffer's length) and both CRCs in place. */
function reseal(frame: Buffer): Buffer {
  frame.writeUInt32LE(frame.length - HEADER_BYTES, 20);
  frame.writeUInt32LE(crc32c(frame.subarray(HEADER_BYTES)), 24);
  frame.writeUInt32LE(crc32c(frame.subarray(0, 28)), 28);
  return frame;
}

/** A frame with a header of our choosing and the given body, CRCs valid. */
function rawFrame(type: number, body: Uint8Array, over: { flags?: number; sender?: number } = {}): Buffer {
  const frame = Buffer.alloc(HEADER_BYTES + body.length);
  frame.writeUInt32LE(FRAME_MAGIC, 0);
  frame.writeUInt16LE(PROTOCOL_VERSION, 4);
  frame[6] = type;
  frame[7] = over.flags ?? 0;
  frame.writeUInt32LE(0x0bad_cafe, 8);
  frame.writeUInt32LE(3, 12);
  frame.writeUInt32LE(over.sender ?? 1, 16);
  frame.set(body, HEADER_BYTES);
  return reseal(frame);
}

function protocolErrorOf(fn: () => unknown): ProtocolError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ProtocolError) return err;
    throw new Error(`expected a ProtocolError, got ${String(err)}`, { cause: err });
  }
  throw new Error('expected a ProtocolError, got a result');
}

function expectCode(fn: () => unknown, code: ErrorCodeName): ProtocolError {
  const err = protocolErrorOf(fn);
  expect(err.code, err.message).toBe(code);
  return err;
}

function expectEncodeError(msg: unknown, code: ErrorCodeName, field: string): void {
  try {
    encode(msg as Message);
  } catch (err) {
    expect(err).toBeInstanceOf(PagepairError);
    expect((err as PagepairError).code).toBe(code);
    expect((err as PagepairError).field).toBe(field);
    return;
  }
  throw new Error(`encode accepted a bad ${field}`);
}

// ---------------------------------------------------------------------------

describe('type codes', () => {
  it('map every kind to its code and back', () => {
    const seen = new Set<number>();
    for (const kind of Object.keys(FIXTURES) as MessageKind[]) {
      const type = typeOfKind(kind);
      expect(kindOfType(type)).toBe(kind);
      expect(seen.has(type)).toBe(false);
      seen.add(type);
    }
    expect(seen.size).toBe(59);
  });

  it('give replies the request code | 0x80', () => {
    expect(typeOfKind('WRITE_PAGE_REPLY')).toBe(0x86);
    expect(typeOfKind('SPACE_REQUEST_REPLY')).toBe(0x81);
    expect(typeOfKind('ALLOCATE_READ_REPLY')).toBe(0x88);
    expect(typeOfKind('ALLOCATE_WRITE_REPLY')).toBe(0x89);
    expect(typeOfKind('HELLO_REPLY')).toBe(0xa0);
    expect(typeOfKind('C_WRITE_REPLY')).toBe(0xb2);
    expect(typeOfKind('ERROR')).toBe(0xff);
    expect(isReplyType(0x86)).toBe(true);
    expect(isReplyType(0xff)).toBe(true);
    expect(isReplyType(0x06)).toBe(false);
  });

  it('leave unused codes unmapped', () => {
    expect(kindOfType(0x00)).toBeUndefined();
    expect(kindOfType(0x0b)).toBeUndefined();
    expect(kindOfType(0x80)).toBeUndefined();
    expect(kindOfType(0xfe)).toBeUndefined();
  });
});

describe('encode and decode', () => {
  it.each(Object.keys(FIXTURES) as MessageKind[])('%s round-trips', (kind) => {
    const msg = FIXTURES[kind];
    const frame = encode(msg);
    expect(frame.length).toBe(HEADER_BYTES + frame.readUInt32LE(20));
    expect(frame[6]).toBe(typeOfKind(kind));
    expect(decode(frame)).toEqual(msg);
  });

  it('lays out the header as documented', () => {
    const msg = FIXTURES.WRITE_PAGE_REPLY;
    const frame = encode(msg);
    expect(frame.length).toBe(36);
    expect(frame.readUInt32LE(0)).toBe(FRAME_MAGIC);
    expect(frame.subarray(0, 4).toString('latin1')).toBe('RPGP');
    expect(frame.readUInt16LE(4)).toBe(PROTOCOL_VERSION);
    expect(frame[6]).toBe(0x86);
    expect(frame[7]).toBe(0);
    expect(frame.readUInt32LE(8)).toBe(msg.requestId);
    expect(frame.readUInt32LE(12)).toBe(0xdead_0007);
    expect(frame.readUInt32LE(16)).toBe(1);
    expect(frame.readUInt32LE(20)).toBe(4);
    expect(frame.readUInt32LE(24)).toBe(crc32c(frame.subarray(32)));
    expect(frame.readUInt32LE(28)).toBe(crc32c(frame.subarray(0, 28)));
    expect(frame.readUInt32LE(32)).toBe(3);
    expect(decodeHeader(frame)).toEqual({
      type: 0x86,
      flags: 0,
      requestId: msg.requestId,
      epoch: 0xdead_0007,
      sender: 1,
      bodyLength: 4,
      bodyCrc: crc32c(frame.subarray(32)),
    });
  });

  it('lays out a WRITE_PAGE body as documented', () => {
    const data = bytes(8, 9);
    const frame = encode({
      kind: 'WRITE_PAGE',
      ...common(),
      pages: [{ guid: GUID_A, page: 7, version: 2 ** 32 + 1, crc: 0xaabbccdd, epoch: 5, pageFlags: 2, pointerId: 6, clientId: 1, clientSeq: 2, ownerGen: 0x01020304, data }],
    });
    const body = frame.subarray(HEADER_BYTES);
    expect(body.length).toBe(2 + 57 + 8);
    expect(body.readUInt16LE(0)).toBe(1);
    expect(body.subarray(2, 18).toString('hex')).toBe(GUID_A.replaceAll('-', ''));
    expect(body.readUInt32LE(18)).toBe(7);
    expect(body.readUInt32LE(22)).toBe(1);
    expect(body.readUInt32LE(26)).toBe(1);
    expect(body.readUInt32LE(30)).toBe(0xaabbccdd);
    expect(body.readUInt32LE(34)).toBe(5);
    expect(body[38]).toBe(2);
    expect(body.readUInt32LE(39)).toBe(6);
    expect(body.readUInt32LE(43)).toBe(1);
    expect(body.readUInt32LE(47)).toBe(2);
    expect(body.readUInt32LE(51)).toBe(0x01020304);
    expect(body.readUInt32LE(55)).toBe(8);
    expect(body.subarray(59)).toEqual(data);
  });

  it('lays out the SENSE bodies as documented: the pool generation last, a u32', () => {
    const req = encode(FIXTURES.SENSE_REQUEST).subarray(HEADER_BYTES);
    expect(req.length).toBe(7);
    expect([req[0], req[1], req[2]]).toEqual([Role.MIRRORED, SenseReason.SHUTTING_DOWN, 0x05]);
    expect(req.readUInt32LE(3)).toBe(0xfedc_ba98);
    const reply = encode(FIXTURES.SENSE_REQUEST_REPLY).subarray(HEADER_BYTES);
    expect(reply.length).toBe(19 + 2 + 32 + 2 + 32 + 4);
    expect(reply.readUInt32LE(reply.length - 4)).toBe(7);
  });

  it('encodes a dataOffset of -1 as all ones and decodes it back', () => {
    const msg = { ...FIXTURES.SPACE_REQUEST, dataOffset: -1 } as Message;
    const frame = encode(msg);
    expect(frame.subarray(frame.length - 8).toString('hex')).toBe('ffffffffffffffff');
    expect(decode(frame)).toEqual(msg);
    const reply = { ...FIXTURES.SPACE_REQUEST_REPLY, reservationId: 0, dataOffset: -1 } as Message;
    expect(decode(encode(reply))).toEqual(reply);
    const allocate = { ...FIXTURES.ALLOCATE, dataOffset: -1 } as Message;
    expect(decode(encode(allocate))).toEqual(allocate);
  });

  it("carries C_FLUSH's empty guid as 16 zero bytes", () => {
    const msg = { ...FIXTURES.C_FLUSH, guid: '' } as Message;
    const frame = encode(msg);
    expect(frame.subarray(HEADER_BYTES).equals(Buffer.alloc(16))).toBe(true);
    expect(decode(frame)).toEqual(msg);
  });

  it('carries empty lists, strings and data', () => {
    const msgs: Message[] = [
      { kind: 'C_LIST_REPLY', ...common(), allocations: [] },
      { kind: 'READ_HEADER_REPLY', ...common(), guid: GUID_A, headers: [] },
      { kind: 'C_READ_REPLY', ...common(), data: Buffer.alloc(0) },
      { kind: 'C_STATUS_REPLY', ...common(), json: '' },
      { kind: 'CLIENT_HELLO', ...common(0), protocolVersion: 1, token: '', clientName: '' },
    ];
    for (const msg of msgs) expect(decode(encode(msg))).toEqual(msg);
  });

  it('carries the largest values of each integer width', () => {
    const msg: Message = {
      kind: 'HELLO',
      requestId: 0xffff_ffff,
      epoch: 0xffff_ffff,
      sender: 255,
      flags: 0,
      protocolVersion: 0xffff,
      pairId: 'ffffffff-ffff-ffff-ffff-ffffffffffff',
      controllerId: 255,
      nonce: Buffer.alloc(32, 0xff),
      pid: 0xffff_ffff,
    };
    expect(decode(encode(msg))).toEqual(msg);
  });

  it('carries a full 4 KiB page and the hard-limit sizes', () => {
    const big: Message = {
      kind: 'WRITE_PAGE',
      ...common(),
      pages: [{ guid: GUID_A, page: 0, version: 1, crc: crc32c(bytes(4096, 11)), epoch: 3, pageFlags: 0, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: 1, data: bytes(4096, 11) }],
    };
    expect(decode(encode(big))).toEqual(big);
    const longName: Message = { kind: 'RELEASE', ...common(), guid: GUID_A };
    expect(decode(encode(longName))).toEqual(longName);
    const maxString: Message = { ...FIXTURES.ERROR, message: 'x'.repeat(HARD_LIMITS.stringBytesMax) } as Message;
    const hard: Limits = { ...DEFAULT_LIMITS, stringBytesMax: HARD_LIMITS.stringBytesMax };
    expect(decode(encode(maxString), hard)).toEqual(maxString);
  });

  it('decodes data, nonce and proof as views of the input, without copying', () => {
    const frame = encode(FIXTURES.C_WRITE);
    const msg = decode(frame);
    if (msg.kind !== 'C_WRITE') throw new Error('kind');
    expect(msg.data.buffer).toBe(frame.buffer);
    const at = msg.data.byteOffset - frame.byteOffset;
    frame[at] = frame[at]! ^ 0xff;
    expect(msg.data[0]).toBe(frame[at]);

    const hello = encode(FIXTURES.HELLO_REPLY);
    const h = decode(hello);
    if (h.kind !== 'HELLO_REPLY') throw new Error('kind');
    expect(h.nonce.buffer).toBe(hello.buffer);
    const auth = encode(FIXTURES.AUTH_REPLY);
    const a = decode(auth);
    if (a.kind !== 'AUTH_REPLY') throw new Error('kind');
    expect(a.proof.buffer).toBe(auth.buffer);
  });

  it('accepts a plain Uint8Array and still returns Buffers', () => {
    const frame = encode(FIXTURES.C_READ_REPLY);
    const copy = new Uint8Array(frame.length + 10).subarray(5, 5 + frame.length);
    copy.set(frame);
    const msg = decode(copy);
    if (msg.kind !== 'C_READ_REPLY') throw new Error('kind');
    expect(Buffer.isBuffer(msg.data)).toBe(true);
    expect(msg).toEqual(FIXTURES.C_READ_REPLY);
  });

  it('decodes every fixture with the hard limits too', () => {
    for (const msg of ALL) expect(decode(encode(msg), HARD_LIMITS)).toEqual(msg);
  });
});

describe('encode refuses what cannot be encoded', () => {
  const wp = FIXTURES.WRITE_PAGE as Extract<Message, { kind: 'WRITE_PAGE' }>;
  const page = wp.pages[0]!;

  it('bad uuids', () => {
    expectEncodeError({ ...FIXTURES.RELEASE, guid: GUID_A.toUpperCase() }, 'BAD_FIELD', 'guid');
    expectEncodeError({ ...FIXTURES.RELEASE, guid: GUID_A.slice(1) }, 'BAD_FIELD', 'guid');
    expectEncodeError({ ...FIXTURES.RELEASE, guid: GUID_A.replaceAll('-', '') }, 'BAD_FIELD', 'guid');
    expectEncodeError({ ...FIXTURES.RELEASE, guid: GUID_A.replace('-', 'x') }, 'BAD_FIELD', 'guid');
    expectEncodeError({ ...FIXTURES.RELEASE, guid: `${GUID_A.slice(0, 35)}g` }, 'BAD_FIELD', 'guid');
    expectEncodeError({ ...FIXTURES.RELEASE, guid: '' }, 'BAD_FIELD', 'guid');
    expectEncodeError({ ...FIXTURES.RELEASE, guid: 42 }, 'BAD_FIELD', 'guid');
    expectEncodeError({ ...FIXTURES.HELLO, pairId: 'nope' }, 'BAD_FIELD', 'pairId');
    expectEncodeError({ ...wp, pages: [page, { ...page, guid: 'x' }] }, 'BAD_FIELD', 'pages[1].guid');
  });

  it('out-of-range integers', () => {
    expectEncodeError({ ...FIXTURES.WRITE_PAGE_REPLY, count: 2 ** 32 }, 'BAD_FIELD', 'count');
    expectEncodeError({ ...FIXTURES.WRITE_PAGE_REPLY, count: -1 }, 'BAD_FIELD', 'count');
    expectEncodeError({ ...FIXTURES.WRITE_PAGE_REPLY, count: 1.5 }, 'BAD_FIELD', 'count');
    expectEncodeError({ ...FIXTURES.WRITE_PAGE_REPLY, count: Number.NaN }, 'BAD_FIELD', 'count');
    expectEncodeError({ ...FIXTURES.WRITE_PAGE_REPLY, count: '3' }, 'BAD_FIELD', 'count');
    expectEncodeError({ ...FIXTURES.WRITE_PAGE_REPLY, requestId: 2 ** 32 }, 'BAD_FIELD', 'requestId');
    expectEncodeError({ ...FIXTURES.WRITE_PAGE_REPLY, epoch: -1 }, 'BAD_FIELD', 'epoch');
    expectEncodeError({ ...FIXTURES.WRITE_PAGE_REPLY, sender: 256 }, 'BAD_FIELD', 'sender');
    expectEncodeError({ ...FIXTURES.WRITE_PAGE_REPLY, flags: 1 }, 'BAD_FIELD', 'flags');
    expectEncodeError({ ...FIXTURES.HELLO, protocolVersion: 0x1_0000 }, 'BAD_FIELD', 'protocolVersion');
    expectEncodeError({ ...FIXTURES.HELLO, controllerId: 256 }, 'BAD_FIELD', 'controllerId');
    expectEncodeError({ ...FIXTURES.C_ALLOCATE, sizeBytes: 2 ** 53 }, 'BAD_FIELD', 'sizeBytes');
    expectEncodeError({ ...FIXTURES.C_ALLOCATE, sizeBytes: -1 }, 'BAD_FIELD', 'sizeBytes');
    expectEncodeError({ ...FIXTURES.SPACE_REQUEST, dataOffset: -2 }, 'BAD_FIELD', 'dataOffset');
    expectEncodeError({ ...wp, pages: [{ ...page, version: 0.5 }] }, 'BAD_FIELD', 'pages[0].version');
  });

  it('enums, booleans and fixed-size byte fields', () => {
    expectEncodeError({ ...FIXTURES.SENSE_REQUEST, role: 8 }, 'BAD_FIELD', 'role');
    expectEncodeError({ ...FIXTURES.LOCK_REQUEST, op: 0 }, 'BAD_FIELD', 'op');
    expectEncodeError({ ...FIXTURES.C_OPEN_POINTER, mode: 3 }, 'BAD_FIELD', 'mode');
    expectEncodeError({ ...wp, pages: [{ ...page, pageFlags: 0x10 }] }, 'BAD_FIELD', 'pages[0].pageFlags');
    expectEncodeError({ ...FIXTURES.RELEASE_POINTER, commit: 1 }, 'BAD_FIELD', 'commit');
    expectEncodeError({ ...FIXTURES.HELLO, nonce: Buffer.alloc(31) }, 'BAD_FIELD', 'nonce');
    expectEncodeError({ ...FIXTURES.AUTH, proof: 'abc' }, 'BAD_FIELD', 'proof');
    expectEncodeError({ ...FIXTURES.C_WRITE, data: 'abc' }, 'BAD_FIELD', 'data');
  });

  it('strings, data and lists over the hard limits', () => {
    const tooLong = 'é'.repeat(HARD_LIMITS.stringBytesMax / 2 + 1);
    expectEncodeError({ ...FIXTURES.C_ALLOCATE, name: tooLong }, 'BAD_FIELD', 'name');
    expectEncodeError({ ...FIXTURES.C_ALLOCATE, name: undefined }, 'BAD_FIELD', 'name');
    expectEncodeError(
      { ...wp, pages: [{ ...page, data: Buffer.alloc(HARD_LIMITS.pageSizeBytesMax + 1) }] },
      'BAD_FIELD',
      'pages[0].data',
    );
    expectEncodeError({ ...wp, pages: [] }, 'BAD_FIELD', 'pages');
    expectEncodeError({ ...wp, pages: new Array(HARD_LIMITS.pagesPerMessageMax + 1).fill(page) }, 'BAD_FIELD', 'pages');
    expectEncodeError({ ...wp, pages: 'none' }, 'BAD_FIELD', 'pages');
    expectEncodeError({ ...FIXTURES.READ_HEADER, pageCount: HARD_LIMITS.headersPerMessageMax + 1 }, 'BAD_FIELD', 'pageCount');
  });

  it('a frame over the hard frame limit', () => {
    const pages = new Array(65).fill({ ...page, data: Buffer.alloc(HARD_LIMITS.pageSizeBytesMax) });
    expectEncodeError({ ...wp, pages }, 'FRAME_TOO_LARGE', 'bodyLength');
  });

  it('unknown kinds', () => {
    expectEncodeError({ ...FIXTURES.C_STATUS, kind: 'C_NOTHING' }, 'UNKNOWN_TYPE', 'kind');
    expectEncodeError({ ...FIXTURES.C_STATUS, kind: 'toString' }, 'UNKNOWN_TYPE', 'kind');
  });
});

describe('decode refuses bad frames with a typed error', () => {
  it('TRUNCATED at every length short of the whole frame', () => {
    for (const kind of ['WRITE_PAGE', 'READ_HEADER_REPLY', 'C_LIST_REPLY', 'HELLO', 'C_STATUS'] as const) {
      const frame = frameOf(kind);
      for (let n = 0; n < frame.length; n++) {
        const err = expectCode(() => decode(frame.subarray(0, n)), 'TRUNCATED');
        expect(err.requestId).toBe(n >= HEADER_BYTES ? FIXTURES[kind].requestId : undefined);
      }
    }
  });

  it('BAD_FRAME for bytes after the frame', () => {
    const frame = frameOf('C_READ');
    const err = expectCode(() => decode(Buffer.concat([frame, Buffer.of(0)])), 'BAD_FRAME');
    expect(err.requestId).toBe(FIXTURES.C_READ.requestId);
    expect(err.frameType).toBe(MsgType.C_READ);
  });

  it('a typed error for every single-bit flip, CHECKSUM_MISMATCH past the magic and version', () => {
    for (const kind of ['WRITE_PAGE', 'SENSE_REQUEST_REPLY', 'C_LIST_REPLY', 'ALLOCATE_REPLY'] as const) {
      const good = frameOf(kind);
      for (let bit = 0; bit < good.length * 8; bit++) {
        const frame = Buffer.from(good);
        frame[bit >> 3] = frame[bit >> 3]! ^ (1 << (bit & 7));
        const expected: ErrorCodeName = bit < 32 ? 'BAD_MAGIC' : bit < 48 ? 'BAD_VERSION' : 'CHECKSUM_MISMATCH';
        const err = expectCode(() => decode(frame), expected);
        if (bit >= 8 * HEADER_BYTES) {
          expect(err.field).toBe('bodyCrc');
          expect(err.requestId).toBe(FIXTURES[kind].requestId);
        }
      }
    }
  });

  it('only ProtocolError for random bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (input) => {
        protocolErrorOf(() => decode(input));
      }),
      { seed: 42, numRuns: 2000 },
    );
  });

  it('only ProtocolError or a message for random bodies behind valid headers', () => {
    const types = Object.values(FIXTURES).map((m) => typeOfKind(m.kind));
    fc.assert(
      fc.property(fc.constantFrom(...types), fc.uint8Array({ maxLength: 120 }), (type, body) => {
        const frame = rawFrame(type, body);
        try {
          // Whatever decodes must encode, and decode again to the same message
          // (not always the same bytes: invalid UTF-8 decodes to U+FFFD).
          const msg = decode(frame);
          expect(decode(encode(msg))).toEqual(msg);
        } catch (err) {
          if (!(err instanceof ProtocolError)) throw err;
          expect(err.requestId).toBe(0x0bad_cafe);
          expect(err.frameType).toBe(type);
        }
      }),
      { seed: 42, numRuns: 3000 },
    );
  });

  it('only ProtocolError or a message for mutated bodies with CRCs re-sealed', () => {
    const frames = ALL.map((m) => encode(m)).filter((f) => f.length > HEADER_BYTES);
    fc.assert(
      fc.property(
        fc.constantFrom(...frames),
        fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 4 }),
        fc.integer({ min: -8, max: 8 }),
        (good, edits, resize) => {
          const bodyLength = Math.max(0, good.length - HEADER_BYTES + resize);
          const frame = Buffer.alloc(HEADER_BYTES + bodyLength);
          good.copy(frame, 0, 0, Math.min(good.length, frame.length));
          for (const [at, value] of edits) frame[HEADER_BYTES + (at % Math.max(1, bodyLength))] = value;
          reseal(frame);
          try {
            const msg = decode(frame);
            expect(decode(encode(msg))).toEqual(msg);
          } catch (err) {
            if (!(err instanceof ProtocolError)) throw err;
            expect(err.requestId).toBe(good.readUInt32LE(8));
          }
        },
      ),
      { seed: 42, numRuns: 3000 },
    );
  });

  it('BAD_MAGIC, BAD_VERSION, UNKNOWN_TYPE, BAD_FRAME flags, BAD_FIELD sender', () => {
    const frame = frameOf('C_STATUS');
    const notOurs = Buffer.from(frame);
    notOurs.write('GET ', 0, 'latin1');
    expectCode(() => decode(notOurs), 'BAD_MAGIC');
    const v2 = Buffer.from(frame);
    v2.writeUInt16LE(2, 4);
    expectCode(() => decode(reseal(v2)), 'BAD_VERSION');
    for (const type of [0x00, 0x0b, 0x1f, 0x80, 0xa3, 0xfe]) {
      const err = expectCode(() => decode(rawFrame(type, Buffer.alloc(0))), 'UNKNOWN_TYPE');
      expect(err.frameType).toBe(type);
      expect(err.requestId).toBe(0x0bad_cafe);
    }
    expectCode(() => decode(rawFrame(MsgType.C_STATUS, Buffer.alloc(0), { flags: 1 })), 'BAD_FRAME');
    expectCode(() => decode(rawFrame(MsgType.C_STATUS, Buffer.alloc(0), { sender: 256 })), 'BAD_FIELD');
    expect(decode(rawFrame(MsgType.C_STATUS, Buffer.alloc(0), { sender: 255 })).sender).toBe(255);
  });

  it('FRAME_TOO_LARGE from the header alone', () => {
    const header = Buffer.from(frameOf('C_STATUS'));
    header.writeUInt32LE(DEFAULT_LIMITS.frameBytesMax - HEADER_BYTES + 1, 20);
    header.writeUInt32LE(crc32c(header.subarray(0, 28)), 28);
    const err = expectCode(() => decodeHeader(header), 'FRAME_TOO_LARGE');
    expect(err.requestId).toBe(FIXTURES.C_STATUS.requestId);
    expect(err.frameType).toBe(MsgType.C_STATUS);
    // exactly at the limit is fine for the header
    header.writeUInt32LE(DEFAULT_LIMITS.frameBytesMax - HEADER_BYTES, 20);
    header.writeUInt32LE(crc32c(header.subarray(0, 28)), 28);
    expect(decodeHeader(header).bodyLength).toBe(DEFAULT_LIMITS.frameBytesMax - HEADER_BYTES);
    header.writeUInt32LE(0xffff_ffff, 20);
    header.writeUInt32LE(crc32c(header.subarray(0, 28)), 28);
    expectCode(() => decodeHeader(header, HARD_LIMITS), 'FRAME_TOO_LARGE');
  });

  it('BAD_FIELD for enum values outside their enum', () => {
    const cases: [MessageKind, number, number, string][] = [
      // kind, body offset of the byte, bad value, field
      ['SENSE_REQUEST', 0, 8, 'role'],
      ['SENSE_REQUEST', 1, 3, 'reason'],
      ['LOCK_REQUEST', 24, 0, 'op'],
      ['LOCK_REQUEST', 24, 3, 'op'],
      ['C_OPEN_POINTER', 24, 0, 'mode'],
      ['AUTH_REPLY', 0, 200, 'role'],
      ['CLIENT_HELLO_REPLY', 17, 9, 'role'],
      ['SENSE_REQUEST_REPLY', 0, 255, 'role'],
      ['READ_HEADER_REPLY', 16 + 4 + 4 + 8 + 4, 5, 'headers[0].state'],
      ['WRITE_PAGE', 2 + 36, 0x10, 'pages[0].pageFlags'],
      ['WRITE_PAGE', 2 + 36, 0x80, 'pages[0].pageFlags'],
    ];
    for (const [kind, at, value, field] of cases) {
      const frame = Buffer.from(frameOf(kind));
      frame[HEADER_BYTES + at] = value;
      const err = expectCode(() => decode(reseal(frame)), 'BAD_FIELD');
      expect(err.field).toBe(field);
      expect(err.message).toContain(kind);
      expect(err.message).toContain(field);
      expect(err.requestId).toBe(FIXTURES[kind].requestId);
      expect(err.frameType).toBe(typeOfKind(kind));
    }
  });

  it('BAD_FIELD for booleans other than 0 and 1', () => {
    for (const [kind, at, field] of [
      ['LOCK_REQUEST_REPLY', 0, 'granted'],
      ['RELEASE_POINTER', 4, 'commit'],
      ['C_CLOSE_POINTER', 4, 'commit'],
    ] as const) {
      const frame = Buffer.from(frameOf(kind));
      frame[HEADER_BYTES + at] = 2;
      expect(expectCode(() => decode(reseal(frame)), 'BAD_FIELD').field).toBe(field);
    }
  });

  it('BAD_FIELD for a u64 over 2^53 - 1, and for all ones where -1 is not allowed', () => {
    const big = Buffer.from(frameOf('C_ALLOCATE'));
    const at = big.length - 9; // sizeBytes, before the keyed flag
    big.writeUInt32LE(0, at);
    big.writeUInt32LE(0x20_0000, at + 4);
    expect(expectCode(() => decode(reseal(big)), 'BAD_FIELD').field).toBe('sizeBytes');
    big.writeUInt32LE(0xffff_ffff, at);
    big.writeUInt32LE(0xffff_ffff, at + 4);
    expect(expectCode(() => decode(reseal(big)), 'BAD_FIELD').field).toBe('sizeBytes');
    // MAX_SAFE_INTEGER itself is fine
    big.writeUInt32LE(0xffff_ffff, at);
    big.writeUInt32LE(0x1f_ffff, at + 4);
    expect((decode(reseal(big)) as { sizeBytes: number }).sizeBytes).toBe(Number.MAX_SAFE_INTEGER);
    // offset64 refuses other huge values too
    const space = Buffer.from(frameOf('SPACE_REQUEST'));
    space.writeUInt32LE(0xffff_fffe, space.length - 8);
    space.writeUInt32LE(0xffff_ffff, space.length - 4);
    expect(expectCode(() => decode(reseal(space)), 'BAD_FIELD').field).toBe('dataOffset');
  });

  it('BAD_FIELD for a WRITE_PAGE with no pages', () => {
    expect(expectCode(() => decode(rawFrame(MsgType.WRITE_PAGE, Buffer.of(0, 0))), 'BAD_FIELD').field).toBe('pages');
  });

  it('BAD_FRAME for bytes after the last field', () => {
    for (const kind of ['WRITE_PAGE_REPLY', 'C_STATUS', 'WRITE_PAGE', 'ERROR'] as const) {
      const frame = reseal(Buffer.concat([frameOf(kind), Buffer.of(1, 2, 3)]));
      const err = expectCode(() => decode(frame), 'BAD_FRAME');
      expect(err.message).toContain(kind);
    }
  });

  it('TRUNCATED for a field running past the body end', () => {
    const frame = Buffer.from(frameOf('C_WRITE'));
    // claim one more data byte than there is
    const at = HEADER_BYTES + 16 + 8 + 4 + 4 + 4;
    frame.writeUInt32LE(frame.readUInt32LE(at) + 1, at);
    const err = expectCode(() => decode(reseal(frame)), 'TRUNCATED');
    expect(err.field).toBe('data');
    expect(err.message).toContain('C_WRITE');
    const short = reseal(Buffer.from(frameOf('READ_HEADER').subarray(0, HEADER_BYTES + 18)));
    expect(expectCode(() => decode(short), 'TRUNCATED').field).toBe('firstPage');
  });

  it('LIMIT_EXCEEDED for counts and lengths over the configured limits', () => {
    const tight: Limits = {
      ...DEFAULT_LIMITS,
      pagesPerMessageMax: 2,
      headersPerMessageMax: 2,
      pageSizeBytesMax: 99,
      requestBytesMax: 250,
      stringBytesMax: 8,
      jsonBytesMax: 10,
      listEntriesMax: 1,
    };
    const cases: [MessageKind, string][] = [
      ['WRITE_PAGE', 'pages'],
      ['READ_HEADER_REPLY', 'headers'],
      ['C_LIST_REPLY', 'allocations'],
      ['C_WRITE', 'data'],
      ['C_STATUS_REPLY', 'json'],
      ['SPACE_REQUEST', 'policy'],
      ['CLIENT_HELLO', 'token'],
      ['READ_HEADER', 'pageCount'],
      ['C_READ', 'length'],
    ];
    for (const [kind, field] of cases) {
      const err = expectCode(() => decode(frameOf(kind), tight), 'LIMIT_EXCEEDED');
      expect(err.field).toBe(field);
      expect(err.message).toContain(kind);
    }
    const onePage = { ...tight, pagesPerMessageMax: 3 };
    const err = expectCode(() => decode(frameOf('WRITE_PAGE'), onePage), 'LIMIT_EXCEEDED');
    expect(err.field).toBe('pages[1].data');
    expectCode(() => decode(frameOf('WRITE_PAGE'), { ...DEFAULT_LIMITS, frameBytesMax: 100 }), 'FRAME_TOO_LARGE');
  });
});

describe('FrameDecoder', () => {
  const decodeAll = (decoder: FrameDecoder, chunks: Uint8Array[]): Message[] =>
    chunks.flatMap((c) => decoder.push(c));

  it('decodes every fixture split into two chunks at every offset', () => {
    for (const msg of ALL) {
      const frame = encode(msg);
      for (let cut = 0; cut <= frame.length; cut++) {
        const d = new FrameDecoder();
        const first = d.push(frame.subarray(0, cut));
        expect(first.length).toBe(cut === frame.length ? 1 : 0);
        if (cut < frame.length) expect(d.bufferedBytes).toBe(cut);
        const second = d.push(frame.subarray(cut));
        expect([...first, ...second]).toEqual([msg]);
        expect(d.bufferedBytes).toBe(0);
      }
    }
  });

  it('decodes every fixture fed one byte at a time', () => {
    for (const msg of ALL) {
      const frame = encode(msg);
      const d = new FrameDecoder();
      const out: Message[] = [];
      for (let i = 0; i < frame.length; i++) out.push(...d.push(frame.subarray(i, i + 1)));
      expect(out).toEqual([msg]);
      expect(d.bufferedBytes).toBe(0);
    }
  });

  it('decodes all fixtures from one chunk, and from the stream split at every offset', () => {
    const stream = Buffer.concat(ALL.map((m) => encode(m)));
    expect(new FrameDecoder().push(stream)).toEqual(ALL);
    const few = ALL.filter((m) => ['WRITE_PAGE_REPLY', 'SENSE_REQUEST', 'C_STATUS', 'LOCK_REQUEST'].includes(m.kind));
    const small = Buffer.concat(few.map((m) => encode(m)));
    for (let cut = 0; cut <= small.length; cut++) {
      const d = new FrameDecoder();
      expect(decodeAll(d, [small.subarray(0, cut), small.subarray(cut)])).toEqual(few);
    }
  });

  it('decodes random chunkings of a stream of frames', () => {
    const stream = Buffer.concat(ALL.map((m) => encode(m)));
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 300 }), { minLength: 1, maxLength: 40 }), (sizes) => {
        const chunks: Buffer[] = [];
        let at = 0;
        for (let i = 0; at < stream.length; i++) {
          const n = sizes[i % sizes.length]!;
          chunks.push(stream.subarray(at, at + n));
          at += n;
        }
        expect(decodeAll(new FrameDecoder(), chunks)).toEqual(ALL);
      }),
      { seed: 42, numRuns: 200 },
    );
  });

  it('refuses an oversize frame once its 32 header bytes are in, and stays failed', () => {
    const msg: Message = {
      kind: 'C_READ_REPLY',
      ...common(),
      data: Buffer.alloc(DEFAULT_LIMITS.frameBytesMax - HEADER_BYTES - 4 + 1),
    };
    const frame = encode(msg);
    const d = new FrameDecoder();
    expect(d.push(frame.subarray(0, 31))).toEqual([]);
    const err = expectCode(() => d.push(frame.subarray(31, 32)), 'FRAME_TOO_LARGE');
    expect(err.requestId).toBe(msg.requestId);
    expect(err.frameType).toBe(typeOfKind('C_READ_REPLY'));
    expect(d.bufferedBytes).toBe(0);
    expect(protocolErrorOf(() => d.push(frame.subarray(32, 1000)))).toBe(err);
    expect(protocolErrorOf(() => d.push(encode(FIXTURES.C_STATUS)))).toBe(err);
    // the same frame passes under the hard limits (compared by hand: deep
    // equality over 8 MiB is slow)
    const [back, ...rest] = new FrameDecoder(HARD_LIMITS).push(frame);
    expect(rest).toEqual([]);
    expect(back?.kind === 'C_READ_REPLY' && back.data.equals(msg.data)).toBe(true);
  });

  it('throws the first error for a bad frame after good ones, then again on every push', () => {
    const bad = Buffer.from(frameOf('C_STATUS'));
    bad[HEADER_BYTES - 1] = bad[HEADER_BYTES - 1]! ^ 1;
    const d = new FrameDecoder();
    expect(d.push(frameOf('C_LIST'))).toEqual([FIXTURES.C_LIST]);
    const err = expectCode(() => d.push(Buffer.concat([frameOf('C_LIST'), bad])), 'CHECKSUM_MISMATCH');
    expect(protocolErrorOf(() => d.push(frameOf('C_LIST')))).toBe(err);
    expect(protocolErrorOf(() => d.push(new Uint8Array(0)))).toBe(err);
  });

  it('gives only ProtocolError for random byte streams', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 6 }), (chunks) => {
        const d = new FrameDecoder();
        try {
          for (const c of chunks) d.push(c);
        } catch (err) {
          if (!(err instanceof ProtocolError)) throw err;
        }
      }),
      { seed: 42, numRuns: 2000 },
    );
  });

  it('holds a partial frame without decoding it', () => {
    const frame = frameOf('WRITE_PAGE');
    const d = new FrameDecoder();
    expect(d.push(frame.subarray(0, frame.length - 1))).toEqual([]);
    expect(d.bufferedBytes).toBe(frame.length - 1);
    expect(d.push(frame.subarray(frame.length - 1))).toEqual([FIXTURES.WRITE_PAGE]);
  });
});

describe('error replies', () => {
  it('answer a request with its id and type, and carry the code back', () => {
    const req = FIXTURES.LOCK_REQUEST;
    const reply = errorReply(req, new PagepairError('LOCK_CONFLICT', 'pages 10..29 are locked'), 9, 1);
    expect(reply).toEqual({
      kind: 'ERROR',
      requestId: req.requestId,
      epoch: 9,
      sender: 1,
      flags: 0,
      code: ErrorCode.LOCK_CONFLICT,
      requestType: MsgType.LOCK_REQUEST,
      message: 'pages 10..29 are locked',
    });
    const back = decode(encode(reply));
    expect(back).toEqual(reply);
    const err = errorOfReply(back as typeof reply);
    expect(err.code).toBe('LOCK_CONFLICT');
    expect(err.message).toBe('pages 10..29 are locked');
  });

  it('clip long messages to what any receiver accepts', () => {
    const long = `${'ü'.repeat(200)}😀${'x'.repeat(500)}`;
    const reply = errorReply(FIXTURES.C_READ, new PagepairError('INTERNAL', long), 1, 2);
    expect(Buffer.byteLength(reply.message)).toBeLessThanOrEqual(DEFAULT_LIMITS.stringBytesMax);
    expect(long.startsWith(reply.message)).toBe(true);
    expect(decode(encode(reply))).toEqual(reply);
  });

  it('answer a frame that failed to decode when its header was good', () => {
    const frame = Buffer.from(frameOf('SENSE_REQUEST'));
    frame[HEADER_BYTES] = 99;
    const err = protocolErrorOf(() => decode(reseal(frame)));
    const reply = protocolErrorReply(err, 4, 2);
    expect(reply).toMatchObject({
      kind: 'ERROR',
      requestId: FIXTURES.SENSE_REQUEST.requestId,
      code: ErrorCode.BAD_FIELD,
      requestType: MsgType.SENSE_REQUEST,
    });
    expect(protocolErrorReply(protocolErrorOf(() => decode(Buffer.alloc(40))), 4, 2)).toBeUndefined();
  });
});

describe('handshake proofs', () => {
  const dialerNonce = bytes(32, 20);
  const listenerNonce = bytes(32, 21);
  const pairBytes = Buffer.from(PAIR_ID.replaceAll('-', ''), 'hex');

  it('are the documented HMACs', () => {
    const reply = createHmac('sha256', 'pair-secret')
      .update(Buffer.concat([Buffer.from('pagepair-peer-v1|reply|'), dialerNonce, listenerNonce, Buffer.of(1, 2), pairBytes]))
      .digest();
    const auth = createHmac('sha256', 'pair-secret')
      .update(Buffer.concat([Buffer.from('pagepair-peer-v1|auth|'), listenerNonce, dialerNonce, Buffer.of(1, 2), pairBytes]))
      .digest();
    expect(helloProof('pair-secret', PAIR_ID, 1, 2, dialerNonce, listenerNonce)).toEqual(reply);
    expect(authProof('pair-secret', PAIR_ID, 1, 2, dialerNonce, listenerNonce)).toEqual(auth);
  });

  it('differ by direction, secret, nonce, ids and pair', () => {
    const base = helloProof('s', PAIR_ID, 1, 2, dialerNonce, listenerNonce);
    expect(base.length).toBe(32);
    expect(proofMatches(base, helloProof('s', PAIR_ID, 1, 2, dialerNonce, listenerNonce))).toBe(true);
    for (const other of [
      authProof('s', PAIR_ID, 1, 2, dialerNonce, listenerNonce),
      helloProof('t', PAIR_ID, 1, 2, dialerNonce, listenerNonce),
      helloProof('s', PAIR_ID, 2, 1, dialerNonce, listenerNonce),
      helloProof('s', PAIR_ID, 1, 2, listenerNonce, dialerNonce),
      helloProof('s', GUID_A, 1, 2, dialerNonce, listenerNonce),
    ]) {
      expect(proofMatches(base, other)).toBe(false);
    }
    expect(proofMatches(base, base.subarray(1))).toBe(false);
  });

  it('refuse malformed inputs with BAD_FIELD', () => {
    expect(() => helloProof('s', PAIR_ID, 1, 2, dialerNonce.subarray(1), listenerNonce)).toThrow(PagepairError);
    expect(() => authProof('s', 'not-a-uuid', 1, 2, dialerNonce, listenerNonce)).toThrow(/pairId/);
    expect(() => authProof('s', PAIR_ID, 256, 2, dialerNonce, listenerNonce)).toThrow(/dialerId/);
  });
});

describe('keyed allocations on the wire (C_ALLOCATE keyed, its key, ALLOCATE key digest, C_UNLOCK)', () => {
  /** The frame of `kind` with its body cut by `cut` bytes from the end, CRCs valid. */
  const cutBody = (kind: MessageKind, cut: number): Buffer => reseal(Buffer.from(frameOf(kind).subarray(0, frameOf(kind).length - cut)));
  /** The frame of `kind` with body byte `at` (from the body's end when negative) set to `value`, CRCs valid. */
  const withByte = (kind: MessageKind, at: number, value: number): Buffer => {
    const frame = Buffer.from(frameOf(kind));
    frame[at < 0 ? frame.length + at : HEADER_BYTES + at] = value;
    return reseal(frame);
  };

  it('C_UNLOCK is 0x3E, its reply 0xBE, and both round-trip with the key as 16 raw bytes', () => {
    expect(typeOfKind('C_UNLOCK')).toBe(0x3e);
    expect(typeOfKind('C_UNLOCK_REPLY')).toBe(0xbe);
    const frame = frameOf('C_UNLOCK');
    expect(frame.length).toBe(HEADER_BYTES + 16 + 16);
    expect(frame.subarray(HEADER_BYTES + 16).equals((FIXTURES.C_UNLOCK as Extract<Message, { kind: 'C_UNLOCK' }>).key)).toBe(true);
    expect(decode(frame)).toEqual(FIXTURES.C_UNLOCK);
    expect(decode(frameOf('C_UNLOCK_REPLY'))).toEqual(FIXTURES.C_UNLOCK_REPLY);
  });

  it('keyed, key and keyDigest sit where docs/protocol.md says', () => {
    const alloc = frameOf('C_ALLOCATE');
    expect(alloc[alloc.length - 1]).toBe(1); // keyed, after sizeBytes
    const reply = frameOf('C_ALLOCATE_REPLY');
    expect(reply.length).toBe(HEADER_BYTES + 16 + 4 + 4 + 16);
    expect(reply.subarray(HEADER_BYTES + 24).equals((FIXTURES.C_ALLOCATE_REPLY as Extract<Message, { kind: 'C_ALLOCATE_REPLY' }>).key)).toBe(true);
    const peer = frameOf('ALLOCATE');
    expect(peer.subarray(peer.length - 17, peer.length - 1).equals((FIXTURES.ALLOCATE as Extract<Message, { kind: 'ALLOCATE' }>).keyDigest)).toBe(true);
    expect(peer[peer.length - 18]).toBe(1); // keyed
    expect(peer[peer.length - 1]).toBe(1); // snapshot, after the digest
  });

  it('TRUNCATED when the key, the digest or the flag is cut short (a frame of the layout before keys)', () => {
    for (const [kind, cut, field] of [
      ['C_UNLOCK', 1, 'key'],
      ['C_UNLOCK', 16, 'key'],
      ['C_ALLOCATE_REPLY', 16, 'key'],
      ['C_ALLOCATE', 1, 'keyed'],
      ['ALLOCATE', 1, 'snapshot'],
      ['ALLOCATE', 6, 'keyDigest'],
      ['ALLOCATE', 18, 'keyed'],
    ] as const) {
      const err = expectCode(() => decode(cutBody(kind, cut)), 'TRUNCATED');
      expect(err.field, `${kind} cut by ${cut}`).toBe(field);
      expect(err.frameType).toBe(typeOfKind(kind));
    }
  });

  it('BAD_FRAME for a byte after the key', () => {
    const frame = reseal(Buffer.concat([frameOf('C_UNLOCK'), Buffer.of(0)]));
    expectCode(() => decode(frame), 'BAD_FRAME');
  });

  it('BAD_FIELD for a keyed flag that is not 0 or 1', () => {
    expect(expectCode(() => decode(withByte('C_ALLOCATE', -1, 2)), 'BAD_FIELD').field).toBe('keyed');
    expect(expectCode(() => decode(withByte('ALLOCATE', -18, 0xff)), 'BAD_FIELD').field).toBe('keyed');
    expect(expectCode(() => decode(withByte('ALLOCATE', -1, 2)), 'BAD_FIELD').field).toBe('snapshot');
    expect(expectCode(() => decode(withByte('C_LIST_REPLY', -17, 2)), 'BAD_FIELD').field).toBe('allocations[2].keyed');
  });

  it('encode refuses a key or digest that is not 16 bytes, and a missing keyed flag', () => {
    expectEncodeError({ ...FIXTURES.C_UNLOCK, key: Buffer.alloc(15) }, 'BAD_FIELD', 'key');
    expectEncodeError({ ...FIXTURES.C_UNLOCK, key: Buffer.alloc(17) }, 'BAD_FIELD', 'key');
    expectEncodeError({ ...FIXTURES.C_UNLOCK, key: 'abcdefghijklmnop' }, 'BAD_FIELD', 'key');
    expectEncodeError({ ...FIXTURES.C_ALLOCATE_REPLY, key: Buffer.alloc(0) }, 'BAD_FIELD', 'key');
    expectEncodeError({ ...FIXTURES.ALLOCATE, keyDigest: Buffer.alloc(32) }, 'BAD_FIELD', 'keyDigest');
    expectEncodeError({ ...FIXTURES.ALLOCATE, keyed: 1 }, 'BAD_FIELD', 'keyed');
    const { keyed: _keyed, ...noFlag } = FIXTURES.C_ALLOCATE as Extract<Message, { kind: 'C_ALLOCATE' }>;
    expectEncodeError(noFlag, 'BAD_FIELD', 'keyed');
  });

  it('decoded keys are the received bytes, byte for byte, for every key', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (key) => {
        const msg = { ...FIXTURES.C_UNLOCK, key: Buffer.from(key) } as Message;
        const back = decode(encode(msg)) as Extract<Message, { kind: 'C_UNLOCK' }>;
        expect(Buffer.from(back.key).equals(Buffer.from(key))).toBe(true);
      }),
      { seed: 15, numRuns: 200 },
    );
  });
});
