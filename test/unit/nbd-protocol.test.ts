// The NBD protocol module: the client-side parser fed whole, byte by byte and
// split at every offset; every encoder against bytes worked out by hand from
// doc/proto.md; bad input always a PagepairError naming the field.

import { describe, expect, it } from 'vitest';
import { PagepairError } from '../../src/protocol/errors.js';
import { Prng } from '../../src/core/prng.js';
import {
  decodeExportName,
  decodeInfoRequest,
  encodeAck,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeNoneChunk,
  encodeOffsetDataHead,
  encodeOptionError,
  encodeOptionReply,
  encodeRepServer,
  encodeSimpleReply,
  NbdClientParser,
  NbdCmd,
  NbdCmdFlag,
  NbdErrno,
  nbdErrnoFor,
  NbdFlag,
  NbdInfo,
  NbdOpt,
  NbdRep,
  putOffsetDataHead,
  putSimpleReply,
} from '../../src/protocol/nbd.js';
import type { NbdClientEvent, NbdParserLimits } from '../../src/protocol/nbd.js';

// ---------------------------------------------------------------------------
// Building what a client sends

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

function u64(v: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
}

const IHAVEOPT = Buffer.from('IHAVEOPT', 'latin1');

function option(opt: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([IHAVEOPT, u32(opt), u32(data.length), data]);
}

function infoData(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  return Buffer.concat([u32(n.length), n, u16(infos.length), ...infos.map(u16)]);
}

function request(type: number, o: { flags?: number; cookie?: bigint; offset?: number; length?: number; payload?: Buffer } = {}): Buffer {
  const length = o.length ?? o.payload?.length ?? 0;
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(o.flags ?? 0, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(o.cookie ?? 1n, 8);
  h.writeBigUInt64BE(BigInt(o.offset ?? 0), 16);
  h.writeUInt32BE(length, 24);
  return o.payload === undefined ? h : Buffer.concat([h, o.payload]);
}

/** Plain objects, payloads as hex: what toEqual compares. */
function plain(ev: NbdClientEvent): Record<string, unknown> {
  if (ev.kind === 'option') return { kind: 'option', option: ev.option, data: ev.data.toString('hex') };
  if (ev.kind === 'clientFlags') return { ...ev };
  return { ...ev, payload: ev.payload === null ? null : ev.payload.toString('hex') };
}

/** Feeds chunks as a server would: after GO or EXPORT_NAME, requests follow. */
function drive(chunks: Buffer[], limits: Partial<NbdParserLimits> = {}): Record<string, unknown>[] {
  const p = new NbdClientParser(limits);
  const out: Record<string, unknown>[] = [];
  for (const c of chunks) {
    p.push(c);
    for (let ev = p.next(); ev !== undefined; ev = p.next()) {
      out.push(plain(ev));
      if (ev.kind === 'option' && (ev.option === NbdOpt.GO || ev.option === NbdOpt.EXPORT_NAME)) p.startTransmission();
    }
  }
  expect(p.bufferedBytes).toBe(0);
  return out;
}

function bytewise(b: Buffer): Buffer[] {
  return [...b].map((x) => Buffer.from([x]));
}

function expectError(fn: () => unknown, code: string, field?: string): PagepairError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(PagepairError);
  const e = caught as PagepairError;
  expect(e.code).toBe(code);
  if (field !== undefined) expect(e.field).toBe(field);
  return e;
}

const payload = Buffer.from('0123456789abcdef0123', 'latin1');

const session = Buffer.concat([
  u32(3),
  option(NbdOpt.LIST),
  option(0x1234, Buffer.from('junk')),
  option(NbdOpt.INFO, infoData('vol0', [NbdInfo.NAME, NbdInfo.BLOCK_SIZE])),
  option(NbdOpt.GO, infoData('vol0', [])),
  request(NbdCmd.READ, { cookie: 0x0102030405060708n, offset: 4096, length: 512 }),
  request(NbdCmd.WRITE, { flags: NbdCmdFlag.FUA, cookie: 2n, offset: 0x1_0000_0005, payload }),
  request(NbdCmd.WRITE, { cookie: 3n, offset: 7, length: 0 }),
  request(NbdCmd.FLUSH, { cookie: 4n }),
  request(NbdCmd.TRIM, { cookie: 5n, offset: 8192, length: 1 << 30 }),
  request(NbdCmd.WRITE_ZEROES, { flags: NbdCmdFlag.NO_HOLE, cookie: 0xffffffffffffffffn, offset: 1, length: 3 }),
  request(NbdCmd.DISC, { cookie: 7n }),
]);

const expected: Record<string, unknown>[] = [
  { kind: 'clientFlags', flags: 3 },
  { kind: 'option', option: NbdOpt.LIST, data: '' },
  { kind: 'option', option: 0x1234, data: Buffer.from('junk').toString('hex') },
  { kind: 'option', option: NbdOpt.INFO, data: infoData('vol0', [1, 3]).toString('hex') },
  { kind: 'option', option: NbdOpt.GO, data: infoData('vol0', []).toString('hex') },
  { kind: 'request', flags: 0, type: NbdCmd.READ, cookieHi: 0x01020304, cookieLo: 0x05060708, offset: 4096, length: 512, payload: null, payloadDropped: false },
  { kind: 'request', flags: 1, type: NbdCmd.WRITE, cookieHi: 0, cookieLo: 2, offset: 4294967301, length: 20, payload: payload.toString('hex'), payloadDropped: false },
  { kind: 'request', flags: 0, type: NbdCmd.WRITE, cookieHi: 0, cookieLo: 3, offset: 7, length: 0, payload: null, payloadDropped: false },
  { kind: 'request', flags: 0, type: NbdCmd.FLUSH, cookieHi: 0, cookieLo: 4, offset: 0, length: 0, payload: null, payloadDropped: false },
  { kind: 'request', flags: 0, type: NbdCmd.TRIM, cookieHi: 0, cookieLo: 5, offset: 8192, length: 1 << 30, payload: null, payloadDropped: false },
  { kind: 'request', flags: 2, type: NbdCmd.WRITE_ZEROES, cookieHi: 0xffffffff, cookieLo: 0xffffffff, offset: 1, length: 3, payload: null, payloadDropped: false },
  { kind: 'request', flags: 0, type: NbdCmd.DISC, cookieHi: 0, cookieLo: 7, offset: 0, length: 0, payload: null, payloadDropped: false },
];

describe('NbdClientParser', () => {
  it('reads a whole session pushed at once', () => {
    expect(drive([session])).toEqual(expected);
  });

  it('reads it byte by byte', () => {
    expect(drive(bytewise(session))).toEqual(expected);
  });

  it('reads it split in two at every offset', () => {
    for (let i = 1; i < session.length; i++) {
      expect(drive([session.subarray(0, i), session.subarray(i)]), `split at ${i}`).toEqual(expected);
    }
  });

  it('reads it in random pieces (seeded)', () => {
    const rng = new Prng(0x5eed);
    for (let run = 0; run < 200; run++) {
      const chunks: Buffer[] = [];
      for (let at = 0; at < session.length; ) {
        const n = 1 + rng.below(40);
        chunks.push(session.subarray(at, at + n));
        at += n;
      }
      expect(drive(chunks), `run ${run}`).toEqual(expected);
    }
  });

  it('hands over a payload inside one chunk as a view, and one across chunks as a copy', () => {
    const header = Buffer.concat([u32(1), option(NbdOpt.GO, infoData('', []))]);
    const write = request(NbdCmd.WRITE, { payload });

    const whole = Buffer.concat([header, write]);
    const p = new NbdClientParser();
    p.push(whole);
    p.next();
    p.next();
    p.startTransmission();
    const ev = p.next();
    expect(ev?.kind).toBe('request');
    const req = ev as Extract<NbdClientEvent, { kind: 'request' }>;
    expect(req.payload!.buffer).toBe(whole.buffer);
    expect(req.payload!.equals(payload)).toBe(true);

    const q = new NbdClientParser();
    q.push(header);
    q.next();
    q.next();
    q.startTransmission();
    q.push(write.subarray(0, 35));
    expect(q.next()).toBeUndefined();
    const tail = Buffer.alloc(write.length - 35);
    write.copy(tail, 0, 35);
    q.push(tail);
    const req2 = q.next() as Extract<NbdClientEvent, { kind: 'request' }>;
    expect(req2.payload!.equals(payload)).toBe(true);
    tail.fill(0);
    expect(req2.payload!.equals(payload)).toBe(true);
  });

  it('reads and drops a write over the payload limit, and the stream stays in step', () => {
    const big = Buffer.alloc(40, 0xee);
    const stream = Buffer.concat([
      u32(1),
      option(NbdOpt.EXPORT_NAME, Buffer.from('v')),
      request(NbdCmd.WRITE, { cookie: 1n, payload: big }),
      request(NbdCmd.READ, { cookie: 2n, length: 8 }),
    ]);
    const limits = { payloadBytesMax: 16, droppedPayloadBytesMax: 64 };
    const want = [
      { kind: 'clientFlags', flags: 1 },
      { kind: 'option', option: NbdOpt.EXPORT_NAME, data: Buffer.from('v').toString('hex') },
      { kind: 'request', flags: 0, type: NbdCmd.WRITE, cookieHi: 0, cookieLo: 1, offset: 0, length: 40, payload: null, payloadDropped: true },
      { kind: 'request', flags: 0, type: NbdCmd.READ, cookieHi: 0, cookieLo: 2, offset: 0, length: 8, payload: null, payloadDropped: false },
    ];
    expect(drive([stream], limits)).toEqual(want);
    expect(drive(bytewise(stream), limits)).toEqual(want);
  });

  it('does not buffer a dropped payload', () => {
    const p = new NbdClientParser({ payloadBytesMax: 16, droppedPayloadBytesMax: 1 << 20 });
    p.push(u32(1));
    p.next();
    p.push(option(NbdOpt.GO, infoData('', [])));
    p.next();
    p.startTransmission();
    p.push(request(NbdCmd.WRITE, { length: 1 << 20 }));
    for (let i = 0; i < 16; i++) {
      p.push(Buffer.alloc(65536));
      const ev = p.next();
      expect(p.bufferedBytes).toBe(0);
      if (i < 15) expect(ev).toBeUndefined();
      else expect(ev).toMatchObject({ kind: 'request', payloadDropped: true, length: 1 << 20 });
    }
  });

  it('gives up on an absurd write length, and stays failed', () => {
    const p = new NbdClientParser({ payloadBytesMax: 16, droppedPayloadBytesMax: 64 });
    p.push(Buffer.concat([u32(1), option(NbdOpt.GO, infoData('', []))]));
    p.next();
    p.next();
    p.startTransmission();
    p.push(request(NbdCmd.WRITE, { length: 65 }));
    const e = expectError(() => p.next(), 'LIMIT_EXCEEDED', 'length');
    expect(e.message).toContain('65');
    expectError(() => p.next(), 'LIMIT_EXCEEDED', 'length');
    expect(p.bufferedBytes).toBe(0);
  });

  it('refuses unknown client flags, and NO_ZEROES when it was not offered', () => {
    const p = new NbdClientParser();
    p.push(u32(4));
    expectError(() => p.next(), 'BAD_FIELD', 'clientFlags');
    const q = new NbdClientParser({}, 1);
    q.push(u32(3));
    expectError(() => q.next(), 'BAD_FIELD', 'clientFlags');
  });

  it('refuses a bad option magic', () => {
    const p = new NbdClientParser();
    p.push(Buffer.concat([u32(1), Buffer.from('IHAVEOPX'), u32(7), u32(0)]));
    p.next();
    const e = expectError(() => p.next(), 'BAD_MAGIC', 'optionMagic');
    expect(e.message).toContain('494841564f504558'.slice(0, 8));
  });

  it('refuses an option longer than the limit before reading its data', () => {
    const p = new NbdClientParser({ optionBytesMax: 100 });
    p.push(Buffer.concat([u32(1), IHAVEOPT, u32(NbdOpt.GO), u32(101)]));
    p.next();
    expectError(() => p.next(), 'LIMIT_EXCEEDED', 'optionLength');
  });

  it('refuses a bad request magic, naming extended headers when it sees them', () => {
    for (const [magic, words] of [
      [0x12345678, ''],
      [0x21e41c71, 'extended'],
    ] as const) {
      const p = new NbdClientParser();
      p.push(Buffer.concat([u32(1), option(NbdOpt.GO, infoData('', []))]));
      p.next();
      p.next();
      p.startTransmission();
      const r = request(NbdCmd.READ, { length: 1 });
      r.writeUInt32BE(magic, 0);
      p.push(r);
      const e = expectError(() => p.next(), 'BAD_MAGIC', 'requestMagic');
      expect(e.message).toContain(words);
    }
  });

  it('never throws anything but a PagepairError on random bytes (seeded)', () => {
    const rng = new Prng(42);
    for (let run = 0; run < 300; run++) {
      const p = new NbdClientParser({ optionBytesMax: 256, payloadBytesMax: 256, droppedPayloadBytesMax: 1024 });
      const inTransmission = run % 2 === 0;
      if (inTransmission) {
        p.push(Buffer.concat([u32(1), option(NbdOpt.GO, infoData('', []))]));
        p.next();
        p.next();
        p.startTransmission();
      }
      try {
        for (let k = 0; k < 20; k++) {
          // Mostly valid-looking headers with random fields, sometimes noise.
          const chunk =
            rng.below(4) === 0
              ? Buffer.from(Array.from({ length: 1 + rng.below(64) }, () => rng.below(256)))
              : inTransmission
                ? request(rng.below(10), { flags: rng.below(65536), offset: rng.below(1 << 30), length: rng.below(600) })
                : option(rng.below(12), Buffer.from(Array.from({ length: rng.below(300) }, () => rng.below(256))));
          p.push(chunk);
          while (p.next() !== undefined) {
            // drain
          }
        }
      } catch (err) {
        expect(err, `run ${run}`).toBeInstanceOf(PagepairError);
      }
    }
  });
});

describe('option data', () => {
  it('decodes NBD_OPT_GO / NBD_OPT_INFO data', () => {
    expect(decodeInfoRequest(infoData('vol0', [3, 1]))).toEqual({ exportName: 'vol0', infoTypes: [3, 1] });
    expect(decodeInfoRequest(infoData('', []))).toEqual({ exportName: '', infoTypes: [] });
    expect(decodeInfoRequest(infoData('été', [0]))).toEqual({ exportName: 'été', infoTypes: [0] });
  });

  it('refuses malformed GO / INFO data, naming the field', () => {
    expectError(() => decodeInfoRequest(Buffer.alloc(5)), 'BAD_FRAME', 'optionLength');
    // name length past the data
    expectError(() => decodeInfoRequest(Buffer.concat([u32(5), Buffer.from('abcd'), u16(0)])), 'BAD_FIELD', 'exportNameLength');
    // two info requests announced, one present
    expectError(() => decodeInfoRequest(Buffer.concat([u32(1), Buffer.from('a'), u16(2), u16(0)])), 'BAD_FIELD', 'infoRequestCount');
    // trailing garbage
    expectError(() => decodeInfoRequest(Buffer.concat([infoData('a', [1]), Buffer.from([9])])), 'BAD_FIELD', 'infoRequestCount');
    expectError(() => decodeInfoRequest(Buffer.concat([u32(2), Buffer.from([0xc3, 0x28]), u16(0)])), 'BAD_FIELD', 'exportName');
    expectError(() => decodeInfoRequest(Buffer.concat([u32(3), Buffer.from('a\0b'), u16(0)])), 'BAD_FIELD', 'exportName');
    expectError(() => decodeInfoRequest(infoData('x'.repeat(4097), [])), 'LIMIT_EXCEEDED', 'exportName');
  });

  it('decodes NBD_OPT_EXPORT_NAME data', () => {
    expect(decodeExportName(Buffer.from('vol0'))).toBe('vol0');
    expect(decodeExportName(Buffer.alloc(0))).toBe('');
    expectError(() => decodeExportName(Buffer.from([0xff])), 'BAD_FIELD', 'exportName');
  });
});

// ---------------------------------------------------------------------------
// Encoders, against bytes written out from the spec

const REP_MAGIC = '0003e889045565a9';

function hex(b: Buffer): string {
  return b.toString('hex');
}

describe('encoders', () => {
  it('greeting: NBDMAGIC, IHAVEOPT, handshake flags', () => {
    expect(hex(encodeGreeting(3))).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
  });

  it('option replies: ACK, errors, SERVER', () => {
    expect(hex(encodeAck(NbdOpt.GO))).toBe(REP_MAGIC + '00000007' + '00000001' + '00000000');
    expect(hex(encodeOptionError(0x1234, NbdRep.ERR_UNSUP, 'no'))).toBe(REP_MAGIC + '00001234' + '80000001' + '00000002' + '6e6f');
    expect(hex(encodeOptionError(7, NbdRep.ERR_UNKNOWN))).toBe(REP_MAGIC + '00000007' + '80000006' + '00000000');
    expect(hex(encodeOptionError(3, NbdRep.ERR_INVALID, ''))).toBe(REP_MAGIC + '00000003' + '80000003' + '00000000');
    expect(hex(encodeOptionError(7, NbdRep.ERR_POLICY, 'x'))).toBe(REP_MAGIC + '00000007' + '80000002' + '00000001' + '78');
    expect(hex(encodeOptionError(7, NbdRep.ERR_SHUTDOWN, ''))).toBe(REP_MAGIC + '00000007' + '80000007' + '00000000');
    expect(hex(encodeRepServer(NbdOpt.LIST, 'vol0', 'd'))).toBe(REP_MAGIC + '00000003' + '00000002' + '00000009' + '00000004' + '766f6c30' + '64');
    expect(hex(encodeRepServer(NbdOpt.LIST, ''))).toBe(REP_MAGIC + '00000003' + '00000002' + '00000004' + '00000000');
    expectError(() => encodeOptionError(7, NbdRep.ACK, ''), 'BAD_FIELD', 'replyType');
    expectError(() => encodeOptionReply(-1, NbdRep.ACK), 'BAD_FIELD', 'option');
  });

  it('NBD_REP_INFO: EXPORT, NAME, DESCRIPTION, BLOCK_SIZE', () => {
    const flags = NbdFlag.HAS_FLAGS | NbdFlag.SEND_FLUSH | NbdFlag.SEND_FUA | NbdFlag.CAN_MULTI_CONN; // 0x010d
    expect(hex(encodeInfoExport(7, 0x1_0000_0200, flags))).toBe(REP_MAGIC + '00000007' + '00000003' + '0000000c' + '0000' + '0000000100000200' + '010d');
    expect(hex(encodeInfoName(6, 'v'))).toBe(REP_MAGIC + '00000006' + '00000003' + '00000003' + '0001' + '76');
    expect(hex(encodeInfoDescription(6, 'ab'))).toBe(REP_MAGIC + '00000006' + '00000003' + '00000004' + '0002' + '6162');
    expect(hex(encodeInfoBlockSize(7, { minimumBytes: 1, preferredBytes: 4096, maximumPayloadBytes: 32 << 20 }))).toBe(
      REP_MAGIC + '00000007' + '00000003' + '0000000e' + '0003' + '00000001' + '00001000' + '02000000',
    );
    expectError(() => encodeInfoExport(7, -1, 1), 'BAD_FIELD', 'sizeBytes');
    expectError(() => encodeInfoExport(7, 2 ** 53, 1), 'BAD_FIELD', 'sizeBytes');
    expectError(() => encodeInfoExport(7, 0, 0x10000), 'BAD_FIELD', 'transmissionFlags');
    expectError(() => encodeInfoName(7, 'x'.repeat(4097)), 'LIMIT_EXCEEDED', 'exportName');
  });

  it('NBD_INFO_BLOCK_SIZE keeps to the spec rules', () => {
    expectError(() => encodeInfoBlockSize(7, { minimumBytes: 3, preferredBytes: 4096, maximumPayloadBytes: 1 << 20 }), 'BAD_FIELD', 'minimumBytes');
    expectError(() => encodeInfoBlockSize(7, { minimumBytes: 1 << 17, preferredBytes: 1 << 17, maximumPayloadBytes: 1 << 20 }), 'BAD_FIELD', 'minimumBytes');
    expectError(() => encodeInfoBlockSize(7, { minimumBytes: 1, preferredBytes: 256, maximumPayloadBytes: 1 << 20 }), 'BAD_FIELD', 'preferredBytes');
    expectError(() => encodeInfoBlockSize(7, { minimumBytes: 1, preferredBytes: 6000, maximumPayloadBytes: 1 << 20 }), 'BAD_FIELD', 'preferredBytes');
    expectError(() => encodeInfoBlockSize(7, { minimumBytes: 1, preferredBytes: 4096, maximumPayloadBytes: 4095 }), 'BAD_FIELD', 'maximumPayloadBytes');
  });

  it('NBD_OPT_EXPORT_NAME reply, with and without the 124 zero bytes', () => {
    const short = encodeExportNameReply(1 << 20, 0x016d, true);
    expect(hex(short)).toBe('0000000000100000' + '016d');
    const long = encodeExportNameReply(1 << 20, 0x016d, false);
    expect(long.length).toBe(134);
    expect(hex(long)).toBe('0000000000100000' + '016d' + '00'.repeat(124));
  });

  it('simple reply header', () => {
    expect(hex(encodeSimpleReply(NbdErrno.EINVAL, 0xdeadbeef, 0x01020304))).toBe('67446698' + '00000016' + 'deadbeef' + '01020304');
    expect(hex(encodeSimpleReply(0, 0, 9))).toBe('67446698' + '00000000' + '00000000' + '00000009');
  });

  it('structured reply chunks: OFFSET_DATA head, NONE, ERROR', () => {
    expect(hex(encodeOffsetDataHead(1, 2, 0x1_0000_0000, 512, true))).toBe(
      '668e33ef' + '0001' + '0001' + '00000001' + '00000002' + '00000208' + '0000000100000000',
    );
    expect(hex(encodeOffsetDataHead(1, 2, 0, 1, false))).toBe('668e33ef' + '0000' + '0001' + '00000001' + '00000002' + '00000009' + '0000000000000000');
    expect(hex(encodeNoneChunk(0, 5))).toBe('668e33ef' + '0001' + '0000' + '00000000' + '00000005' + '00000000');
    expect(hex(encodeErrorChunk(0, 5, NbdErrno.EINVAL, 'bad'))).toBe(
      '668e33ef' + '0001' + '8001' + '00000000' + '00000005' + '00000009' + '00000016' + '0003' + '626164',
    );
    expectError(() => encodeErrorChunk(0, 5, 0, 'x'), 'BAD_FIELD', 'errno');
  });

  it('writes reply heads into a shared buffer at any offset, touching nothing else', () => {
    const b = Buffer.alloc(5 + 16 + 28 + 3, 0xee);
    putSimpleReply(b, 5, NbdErrno.EIO, 7, 8);
    putOffsetDataHead(b, 21, 7, 9, 4096, 100, true);
    expect(hex(b.subarray(5, 21))).toBe(hex(encodeSimpleReply(NbdErrno.EIO, 7, 8)));
    expect(hex(b.subarray(21, 49))).toBe(hex(encodeOffsetDataHead(7, 9, 4096, 100, true)));
    expect(hex(b.subarray(0, 5))).toBe('ee'.repeat(5));
    expect(hex(b.subarray(49))).toBe('ee'.repeat(3));
  });

  it('clips long messages at a character boundary', () => {
    const chunk = encodeErrorChunk(0, 1, NbdErrno.EIO, 'é'.repeat(2000));
    const n = chunk.readUInt16BE(24);
    expect(n).toBeLessThanOrEqual(1024);
    expect(n % 2).toBe(0);
    expect(chunk.length).toBe(26 + n);
    expect(chunk.readUInt32BE(16)).toBe(6 + n);
    expect(new TextDecoder('utf-8', { fatal: true }).decode(chunk.subarray(26))).toBe('é'.repeat(n / 2));
  });
});

describe('nbdErrnoFor', () => {
  it('maps pagepair error codes to NBD errors', () => {
    const expected = { NO_SPACE: 28, OUT_OF_RANGE: 22, BAD_FIELD: 22, TOO_LARGE: 22, FENCED: 108, NOT_ACTIVE: 108, SHUTTING_DOWN: 108, READ_ONLY: 1, IO_ERROR: 5, CHECKSUM_MISMATCH: 5, INTERNAL: 5 } as const;
    const got = Object.fromEntries(Object.keys(expected).map((code) => [code, nbdErrnoFor(code as keyof typeof expected)]));
    expect(got).toEqual(expected);
  });
});
