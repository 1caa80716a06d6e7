// The NBD server over an in-memory backend: a raw socket client written here
// sends what well-behaved clients never would (bad magics, unknown options,
// requests out of range or oversize) and checks the bytes that come back;
// the real clients Debian ships read and write through the same server in
// test/interop/nbd-server-clients.test.ts.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { PagepairError } from '../../src/protocol/errors.js';
import { NbdCmd, NbdCmdFlag, NbdErrno, NbdFlag, NbdInfo, NbdOpt, NbdRep } from '../../src/protocol/nbd.js';
import { MemoryNbdBackend } from '../../src/testing/memory-nbd-backend.js';
import { NbdServer } from '../../src/transport/nbd-server.js';
import { blockedByUnreadReplies, heldAtOnce, onlyConnection, useNbdRig } from './helpers/nbd-rig.js';
import { captureLog, waitFor } from './transport-helpers.js';
import type { LogRecord } from './transport-helpers.js';
import type { NbdVolume } from '../../src/transport/nbd-backend.js';

const MiB = 1024 * 1024;
const FLAGS_SIMPLE = NbdFlag.HAS_FLAGS | NbdFlag.SEND_FLUSH | NbdFlag.SEND_FUA | NbdFlag.SEND_TRIM | NbdFlag.SEND_WRITE_ZEROES | NbdFlag.CAN_MULTI_CONN;
/** A snapshot's export: read only, and nothing that is only for writing. */
const FLAGS_READ_ONLY = NbdFlag.HAS_FLAGS | NbdFlag.READ_ONLY | NbdFlag.CAN_MULTI_CONN;

// ---------------------------------------------------------------------------
// A client that speaks NBD byte by byte

interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

interface SimpleReply {
  error: number;
  cookie: bigint;
  data: Buffer;
}

interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

class RawNbd {
  readonly socket: net.Socket;
  readonly closed: Promise<void>;
  isClosed = false;
  private buf = Buffer.alloc(0);
  private wake: (() => void) | null = null;
  /** Lengths of reads in flight by cookie, to know which simple replies carry data. */
  private readonly readLengths = new Map<bigint, number>();

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.wake?.();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.isClosed = true;
        this.wake?.();
        resolve();
      }),
    );
  }

  static connect(where: { port: number } | { path: string }): Promise<RawNbd> {
    return new Promise((resolve, reject) => {
      const s = 'port' in where ? net.connect({ host: '127.0.0.1', port: where.port }) : net.connect({ path: where.path });
      s.once('connect', () => resolve(new RawNbd(s)));
      s.once('error', reject);
    });
  }

  /** Connects and reads the greeting; sends client flags. */
  static async open(port: number, clientFlags = 3): Promise<RawNbd> {
    const c = await RawNbd.connect({ port });
    const g = await c.read(18);
    expect(g.toString('hex')).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
    c.send(u32(clientFlags));
    return c;
  }

  /** A client in transmission on `name`. */
  static async go(port: number, name = 'vol0', structured = false): Promise<RawNbd> {
    const c = await RawNbd.open(port);
    if (structured) {
      c.option(NbdOpt.STRUCTURED_REPLY);
      expect((await c.optionReply()).type).toBe(NbdRep.ACK);
    }
    const replies = await c.goOrInfo(NbdOpt.GO, name);
    expect(replies.at(-1)!.type).toBe(NbdRep.ACK);
    return c;
  }

  send(b: Buffer): void {
    this.socket.write(b);
  }

  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.isClosed) throw new Error(`connection closed with ${this.buf.length} of ${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.buf.length})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = null;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  get pendingBytes(): number {
    return this.buf.length;
  }

  option(opt: number, data: Buffer = Buffer.alloc(0)): void {
    this.send(Buffer.concat([Buffer.from('IHAVEOPT'), u32(opt), u32(data.length), data]));
  }

  async optionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    expect(h.readBigUInt64BE(0)).toBe(0x3e889045565a9n);
    const data = await this.read(h.readUInt32BE(16));
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** Sends GO or INFO; returns every reply up to the final one. */
  async goOrInfo(opt: number, name: string, infos: number[] = []): Promise<OptionReply[]> {
    this.option(opt, infoData(name, infos));
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.optionReply();
      expect(r.option).toBe(opt);
      out.push(r);
      if (r.type !== NbdRep.INFO) return out;
    }
  }

  request(type: number, o: { flags?: number; cookie: bigint; offset?: number; length?: number; payload?: Buffer }): void {
    const length = o.length ?? o.payload?.length ?? 0;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(o.flags ?? 0, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(o.cookie, 8);
    h.writeBigUInt64BE(BigInt(o.offset ?? 0), 16);
    h.writeUInt32BE(length, 24);
    if (type === NbdCmd.READ) this.readLengths.set(o.cookie, length);
    this.send(o.payload === undefined ? h : Buffer.concat([h, o.payload]));
  }

  async reply(): Promise<SimpleReply> {
    const h = await this.read(16);
    expect(h.readUInt32BE(0), 'simple reply magic').toBe(0x67446698);
    const error = h.readUInt32BE(4);
    const cookie = h.readBigUInt64BE(8);
    const n = this.readLengths.get(cookie);
    this.readLengths.delete(cookie);
    const data = error === 0 && n !== undefined ? await this.read(n) : Buffer.alloc(0);
    return { error, cookie, data };
  }

  async chunk(): Promise<Chunk> {
    const h = await this.read(20);
    expect(h.readUInt32BE(0), 'structured reply magic').toBe(0x668e33ef);
    return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), payload: await this.read(h.readUInt32BE(16)) };
  }

  /** With structured replies, writes still get simple replies: whichever comes next. */
  async replyOrChunk(): Promise<{ simple: SimpleReply } | { chunk: Chunk }> {
    const magic = (await this.read(4)).readUInt32BE(0);
    if (magic === 0x67446698) {
      const h = await this.read(12);
      return { simple: { error: h.readUInt32BE(0), cookie: h.readBigUInt64BE(4), data: Buffer.alloc(0) } };
    }
    expect(magic, 'structured reply magic').toBe(0x668e33ef);
    const h = await this.read(16);
    return { chunk: { flags: h.readUInt16BE(0), type: h.readUInt16BE(2), cookie: h.readBigUInt64BE(4), payload: await this.read(h.readUInt32BE(12)) } };
  }

  close(): void {
    this.socket.destroy();
  }
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

function infoData(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

// ---------------------------------------------------------------------------
// Servers made per test, closed after it

const rig = useNbdRig();

function closedRecords(records: LogRecord[]): LogRecord[] {
  return records.filter((r) => r.msg === 'nbd connection closed');
}

// ---------------------------------------------------------------------------

describe('NbdServer handshake', () => {
  it('lists exports, answers unknown options with ERR_UNSUP and then still goes', async () => {
    const { port } = await rig();
    const c = await RawNbd.open(port);
    c.option(NbdOpt.LIST);
    const names: string[] = [];
    for (;;) {
      const r = await c.optionReply();
      if (r.type === NbdRep.ACK) break;
      expect(r.type).toBe(NbdRep.SERVER);
      names.push(r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString());
    }
    expect(names).toEqual(['vol0', 'vol1']);

    for (const opt of [0x4242, NbdOpt.STARTTLS, NbdOpt.SET_META_CONTEXT, NbdOpt.LIST_META_CONTEXT, NbdOpt.EXTENDED_HEADERS]) {
      c.option(opt, Buffer.from('whatever'));
      const r = await c.optionReply();
      expect(r).toMatchObject({ option: opt, type: NbdRep.ERR_UNSUP });
    }

    const replies = await c.goOrInfo(NbdOpt.GO, 'vol0', [NbdInfo.BLOCK_SIZE]);
    const info = replies.filter((r) => r.type === NbdRep.INFO);
    const exp = info.find((r) => r.data.readUInt16BE(0) === NbdInfo.EXPORT)!;
    expect(exp.data.length).toBe(12);
    expect(Number(exp.data.readBigUInt64BE(2))).toBe(4 * MiB);
    expect(exp.data.readUInt16BE(10)).toBe(FLAGS_SIMPLE);
    expect(exp.data.readUInt16BE(10) & NbdFlag.READ_ONLY).toBe(0);
    const bs = info.find((r) => r.data.readUInt16BE(0) === NbdInfo.BLOCK_SIZE)!;
    expect([bs.data.readUInt32BE(2), bs.data.readUInt32BE(6), bs.data.readUInt32BE(10)]).toEqual([1, 4096, 32 * MiB]);
    expect(replies.at(-1)!.type).toBe(NbdRep.ACK);

    c.request(NbdCmd.WRITE, { cookie: 1n, offset: 10, payload: Buffer.from('hello') });
    expect(await c.reply()).toMatchObject({ error: 0, cookie: 1n });
    c.request(NbdCmd.READ, { cookie: 2n, offset: 8, length: 9 });
    expect((await c.reply()).data.toString('hex')).toBe('0000' + Buffer.from('hello').toString('hex') + '0000');
    c.close();
  });

  it('errors INFO and GO without ending the negotiation', async () => {
    const { port } = await rig();
    const c = await RawNbd.open(port);
    expect((await c.goOrInfo(NbdOpt.GO, 'nope')).map((r) => r.type)).toEqual([NbdRep.ERR_UNKNOWN]);
    // Two volumes: no default export.
    expect((await c.goOrInfo(NbdOpt.INFO, '')).map((r) => r.type)).toEqual([NbdRep.ERR_UNKNOWN]);
    c.option(NbdOpt.GO, Buffer.concat([u32(50), Buffer.from('vol0'), Buffer.alloc(2)]));
    expect((await c.optionReply()).type).toBe(NbdRep.ERR_INVALID);
    c.option(NbdOpt.LIST, Buffer.from('x'));
    expect((await c.optionReply()).type).toBe(NbdRep.ERR_INVALID);
    c.option(NbdOpt.STRUCTURED_REPLY, Buffer.from('x'));
    expect((await c.optionReply()).type).toBe(NbdRep.ERR_INVALID);

    const info = await c.goOrInfo(NbdOpt.INFO, 'vol1', [NbdInfo.NAME, NbdInfo.DESCRIPTION]);
    expect(info.at(-1)!.type).toBe(NbdRep.ACK);
    const byType = new Map(info.filter((r) => r.type === NbdRep.INFO).map((r) => [r.data.readUInt16BE(0), r.data.subarray(2)]));
    expect(byType.get(NbdInfo.NAME)!.toString()).toBe('vol1');
    expect(byType.get(NbdInfo.DESCRIPTION)!.toString()).toContain('pages of 8192');
    expect(byType.get(NbdInfo.BLOCK_SIZE)!.readUInt32BE(4)).toBe(8192);
    // INFO did not start transmission: GO still may.
    expect((await c.goOrInfo(NbdOpt.GO, 'vol1')).at(-1)!.type).toBe(NbdRep.ACK);
    c.request(NbdCmd.READ, { cookie: 5n, offset: MiB - 4, length: 4 });
    expect(await c.reply()).toMatchObject({ error: 0, cookie: 5n });
    c.close();
  });

  it('maps the default export "" to the only volume, and says its name', async () => {
    const { port } = await rig({}, [{ name: 'only', sizeBytes: 65536 }]);
    const c = await RawNbd.open(port);
    const replies = await c.goOrInfo(NbdOpt.GO, '');
    const name = replies.find((r) => r.type === NbdRep.INFO && r.data.readUInt16BE(0) === NbdInfo.NAME);
    expect(name?.data.subarray(2).toString()).toBe('only');
    expect(replies.at(-1)!.type).toBe(NbdRep.ACK);
    c.close();
  });

  it('closes only the connection that breaks the handshake', async () => {
    const { server, port, records } = await rig();
    const good = await RawNbd.go(port);

    const badMagic = await RawNbd.open(port);
    badMagic.send(Buffer.concat([Buffer.from('IHAVEOPX'), u32(NbdOpt.LIST), u32(0)]));
    await badMagic.closed;

    const badFlags = await RawNbd.connect({ port });
    await badFlags.read(18);
    badFlags.send(u32(0x80));
    await badFlags.closed;

    const tooLong = await RawNbd.open(port);
    tooLong.send(Buffer.concat([Buffer.from('IHAVEOPT'), u32(NbdOpt.GO), u32(1 << 30)]));
    await tooLong.closed;

    const unknownExport = await RawNbd.open(port);
    unknownExport.option(NbdOpt.EXPORT_NAME, Buffer.from('nope'));
    await unknownExport.closed;

    good.request(NbdCmd.READ, { cookie: 1n, length: 4 });
    expect(await good.reply()).toMatchObject({ error: 0, cookie: 1n });
    await waitFor(() => server.connections === 1, 'the broken connections to be gone');

    const reasons = closedRecords(records).map((r) => String(r.reason));
    expect(reasons.some((r) => r.includes('optionMagic'))).toBe(true);
    expect(reasons.some((r) => r.includes('clientFlags'))).toBe(true);
    expect(reasons.some((r) => r.includes('optionLength'))).toBe(true);
    expect(reasons.some((r) => r.includes('no volume named "nope"'))).toBe(true);
    good.close();
  });

  it('a volume the protocol cannot describe costs that connection, not the server', async () => {
    const { server, port, records } = await rig({}, [
      { name: 'x'.repeat(5000), sizeBytes: 4096 },
      { name: 'vol0', sizeBytes: 4096 },
    ]);
    const c = await RawNbd.open(port);
    c.option(NbdOpt.LIST);
    await c.closed;
    expect(records.some((r) => r.msg === 'nbd connection failed')).toBe(true);
    const d = await RawNbd.go(port);
    d.request(NbdCmd.READ, { cookie: 1n, length: 8 });
    expect(await d.reply()).toMatchObject({ error: 0 });
    await waitFor(() => server.connections === 1, 'the failed connection to be gone');
    d.close();
  });

  it('NBD_OPT_EXPORT_NAME: 124 zero bytes unless NO_ZEROES was agreed', async () => {
    const { port } = await rig();
    for (const [clientFlags, replyBytes] of [
      [3, 10],
      [1, 134],
    ] as const) {
      const c = await RawNbd.open(port, clientFlags);
      c.option(NbdOpt.EXPORT_NAME, Buffer.from('vol0'));
      const r = await c.read(replyBytes);
      expect(Number(r.readBigUInt64BE(0))).toBe(4 * MiB);
      expect(r.readUInt16BE(8)).toBe(FLAGS_SIMPLE);
      expect(r.subarray(10).equals(Buffer.alloc(replyBytes - 10))).toBe(true);
      c.request(NbdCmd.FLUSH, { cookie: 9n });
      expect(await c.reply()).toMatchObject({ error: 0, cookie: 9n });
      expect(c.pendingBytes).toBe(0);
      c.close();
    }
  });

  it('acknowledges NBD_OPT_ABORT and closes', async () => {
    const { port, records } = await rig();
    const c = await RawNbd.open(port);
    c.option(NbdOpt.ABORT);
    expect(await c.optionReply()).toMatchObject({ option: NbdOpt.ABORT, type: NbdRep.ACK });
    await c.closed;
    await waitFor(() => closedRecords(records).length === 1, 'the close record');
    expect(closedRecords(records)[0]!.reason).toBe('client sent NBD_OPT_ABORT');
  });

  it('bounds the handshake in time and in options', async () => {
    const { port, records } = await rig({ handshakeTimeoutMs: 150, optionsPerConnectionMax: 3 });
    const idle = await RawNbd.open(port);
    await idle.closed;
    const chatty = await RawNbd.open(port);
    for (let i = 0; i < 4; i++) chatty.option(0x999);
    for (let i = 0; i < 3; i++) expect((await chatty.optionReply()).type).toBe(NbdRep.ERR_UNSUP);
    await chatty.closed;
    await waitFor(() => closedRecords(records).length === 2, 'two close records');
    const reasons = closedRecords(records).map((r) => String(r.reason));
    expect(reasons).toContain('no export chosen within 150 ms');
    expect(reasons.some((r) => r.includes('more than 3 options'))).toBe(true);
  });
});

describe('NbdServer transmission', () => {
  it('answers out-of-range requests with EINVAL or ENOSPC and goes on', async () => {
    const { port, backend } = await rig();
    const c = await RawNbd.go(port);
    const end = 4 * MiB;
    c.request(NbdCmd.READ, { cookie: 1n, offset: end - 10, length: 11 });
    c.request(NbdCmd.WRITE, { cookie: 2n, offset: end - 1, payload: Buffer.from('ab') });
    c.request(NbdCmd.TRIM, { cookie: 3n, offset: end, length: 1 });
    c.request(NbdCmd.WRITE_ZEROES, { cookie: 4n, offset: end + 100, length: 0 });
    c.request(NbdCmd.READ, { cookie: 5n, offset: 2 ** 60, length: 1 });
    c.request(NbdCmd.READ, { cookie: 6n, offset: end - 2, length: 2 });
    const got = [await c.reply(), await c.reply(), await c.reply(), await c.reply(), await c.reply(), await c.reply()];
    expect(got.map((r) => [r.cookie, r.error])).toEqual([
      [1n, NbdErrno.EINVAL],
      [2n, NbdErrno.ENOSPC],
      [3n, NbdErrno.EINVAL],
      [4n, NbdErrno.ENOSPC],
      [5n, NbdErrno.EINVAL],
      [6n, 0],
    ]);
    expect(backend.calls.map((x) => x.op)).toEqual(['read']);
    c.close();
  });

  it('refuses oversize requests, drops an oversize write payload, and closes on an absurd one', async () => {
    const limits = { payloadBytesMax: 64 * 1024, droppedPayloadBytesMax: 256 * 1024 };
    const { port, server, backend, records } = await rig(limits);
    const c = await RawNbd.go(port);
    c.request(NbdCmd.READ, { cookie: 1n, length: 64 * 1024 + 1 });
    expect(await c.reply()).toMatchObject({ cookie: 1n, error: NbdErrno.EINVAL });
    c.request(NbdCmd.WRITE, { cookie: 2n, payload: Buffer.alloc(200 * 1024, 7) });
    c.request(NbdCmd.WRITE, { cookie: 3n, offset: 5, payload: Buffer.from([9]) });
    expect(await c.reply()).toMatchObject({ cookie: 2n, error: NbdErrno.EINVAL });
    expect(await c.reply()).toMatchObject({ cookie: 3n, error: 0 });
    expect(backend.bytesOf('vol0')[5]).toBe(9);
    expect(backend.bytesOf('vol0')[6]).toBe(0);
    // TRIM and WRITE_ZEROES carry no payload: longer than the limit is fine, done in pieces.
    c.request(NbdCmd.WRITE_ZEROES, { cookie: 4n, length: 200 * 1024 });
    expect(await c.reply()).toMatchObject({ cookie: 4n, error: 0 });
    expect(backend.calls.filter((x) => x.op === 'writeZeroes').map((x) => x.lengthBytes)).toEqual([65536, 65536, 65536, 8192]);

    const other = await RawNbd.go(port);
    c.request(NbdCmd.WRITE, { cookie: 5n, length: 256 * 1024 + 1 });
    await c.closed;
    other.request(NbdCmd.READ, { cookie: 1n, length: 1 });
    expect(await other.reply()).toMatchObject({ cookie: 1n, error: 0 });
    await waitFor(() => server.connections === 1, 'the absurd connection to be gone');
    expect(closedRecords(records).some((r) => String(r.reason).includes('[length]'))).toBe(true);
    other.close();
  });

  it('answers unknown commands and flags with EINVAL and goes on', async () => {
    const { port } = await rig();
    const c = await RawNbd.go(port);
    c.request(42, { cookie: 1n });
    c.request(NbdCmd.CACHE, { cookie: 2n, length: 4096 });
    c.request(NbdCmd.BLOCK_STATUS, { cookie: 3n, length: 4096 });
    c.request(NbdCmd.READ, { cookie: 4n, length: 1, flags: NbdCmdFlag.DF });
    c.request(NbdCmd.READ, { cookie: 5n, length: 1, flags: 0x100 });
    c.request(NbdCmd.WRITE_ZEROES, { cookie: 6n, length: 1, flags: NbdCmdFlag.FAST_ZERO });
    c.request(NbdCmd.WRITE, { cookie: 7n, flags: NbdCmdFlag.NO_HOLE, payload: Buffer.from('x') });
    c.request(NbdCmd.FLUSH, { cookie: 8n, offset: 1 });
    c.request(NbdCmd.READ, { cookie: 9n, length: 1, flags: NbdCmdFlag.FUA });
    c.request(NbdCmd.WRITE_ZEROES, { cookie: 10n, length: 1, flags: NbdCmdFlag.NO_HOLE | NbdCmdFlag.FUA });
    const got = [];
    for (let i = 0; i < 10; i++) got.push(await c.reply());
    const errors = new Map(got.map((r) => [r.cookie, r.error]));
    for (let i = 1n; i <= 8n; i++) expect(errors.get(i), `cookie ${i}`).toBe(NbdErrno.EINVAL);
    expect(errors.get(9n)).toBe(0);
    expect(errors.get(10n)).toBe(0);
    c.close();
  });

  it('replies out of order, as the backend completes', async () => {
    const { port, backend } = await rig();
    const c = await RawNbd.go(port);
    backend.bytesOf('vol0').fill(0x11, 0, 4096);
    backend.bytesOf('vol0').fill(0x22, 4096, 8192);
    backend.holding = true;
    c.request(NbdCmd.READ, { cookie: 1n, offset: 0, length: 4096 });
    c.request(NbdCmd.READ, { cookie: 2n, offset: 4096, length: 4096 });
    c.request(NbdCmd.WRITE, { cookie: 3n, offset: 100, payload: Buffer.from('zz') });
    await waitFor(() => backend.held.length === 3, 'three held operations');
    backend.held[2]!.release();
    backend.held[1]!.release();
    backend.held[0]!.release();
    const got = [await c.reply(), await c.reply(), await c.reply()];
    expect(got.map((r) => r.cookie)).toEqual([3n, 2n, 1n]);
    expect(got[1]!.data.equals(Buffer.alloc(4096, 0x22))).toBe(true);
    // The read of page 0 ran after the write: it sees it.
    expect(got[2]!.data.subarray(99, 103).toString('hex')).toBe('117a7a11');
    c.close();
  });

  it('replies completed together leave in one socket write', async () => {
    const { port, backend } = await rig();
    const c = await RawNbd.go(port);
    backend.holding = true;
    for (let i = 0; i < 24; i++) {
      if (i % 2 === 0) c.request(NbdCmd.WRITE, { cookie: BigInt(i), offset: i * 4096, payload: Buffer.alloc(4096, i) });
      else c.request(NbdCmd.READ, { cookie: BigInt(i), offset: (i - 1) * 4096, length: 4096 });
    }
    await waitFor(() => backend.held.length === 24, '24 held requests');
    const writes = vi.spyOn(net.Socket.prototype, 'write');
    try {
      backend.releaseAll();
      const got = new Map<bigint, Buffer>();
      for (let i = 0; i < 24; i++) {
        const r = await c.reply();
        expect(r.error).toBe(0);
        got.set(r.cookie, r.data);
      }
      // 12 write replies and 12 read replies with their data (under one reply slab): one buffer, one write.
      expect(writes).toHaveBeenCalledTimes(1);
      for (let i = 1; i < 24; i += 2) expect(got.get(BigInt(i))!.equals(Buffer.alloc(4096, i - 1)), `read ${i}`).toBe(true);
    } finally {
      writes.mockRestore();
    }
    c.close();
  });

  for (const structured of [false, true]) {
    it(`replies of every size, completed together, come out whole (${structured ? 'structured' : 'simple'} replies)`, async () => {
      // Sizes around what is copied next to its header and what is written
      // as it is, and enough of them to fill several reply slabs.
      const { port, backend } = await rig();
      const bytes = backend.bytesOf('vol0');
      for (let i = 0; i < bytes.length; i += 4) bytes.writeUInt32BE(i, i);
      const c = await RawNbd.go(port, 'vol0', structured);
      backend.holding = true;
      const sizes = [1, 16, 4095, 4096, 8191, 8192, 8193, 65536, 100_000, 3];
      const reads: { cookie: bigint; offset: number; length: number }[] = [];
      for (let i = 0; i < 60; i++) {
        const length = sizes[i % sizes.length]!;
        const offset = (i * 37_501) % (bytes.length - length);
        reads.push({ cookie: BigInt(1000 + i), offset, length });
        c.request(NbdCmd.READ, { cookie: BigInt(1000 + i), offset, length });
        if (i % 7 === 0) c.request(NbdCmd.WRITE, { cookie: BigInt(i), offset: 4 * MiB - 8, payload: Buffer.from('tailtail') });
      }
      await waitFor(() => backend.held.length === 60 + 9, 'every request held');
      backend.releaseAll();
      const want = new Map(reads.map((r) => [r.cookie, r]));
      for (let n = 0; n < 69; n++) {
        if (structured) {
          const got = await c.replyOrChunk();
          if ('simple' in got) {
            expect(got.simple.error).toBe(0);
            expect(want.has(got.simple.cookie), 'a write, simply replied').toBe(false);
            continue;
          }
          const ch = got.chunk;
          const r = want.get(ch.cookie)!;
          expect(ch).toMatchObject({ flags: 1, type: 1 });
          expect(Number(ch.payload.readBigUInt64BE(0))).toBe(r.offset);
          expect(ch.payload.subarray(8).equals(bytes.subarray(r.offset, r.offset + r.length)), `read ${ch.cookie}`).toBe(true);
        } else {
          const rep = await c.reply();
          expect(rep.error).toBe(0);
          const r = want.get(rep.cookie);
          if (r !== undefined) expect(rep.data.equals(bytes.subarray(r.offset, r.offset + r.length)), `read ${rep.cookie}`).toBe(true);
        }
      }
      expect(c.pendingBytes).toBe(0);
      c.close();
    });
  }

  it('stops reading at the in-flight limit and catches up as requests complete', async () => {
    const { port, backend } = await rig({ inflightPerConnectionMax: 4 });
    const heldMax = heldAtOnce(backend);
    const c = await RawNbd.go(port);
    backend.holding = true;
    for (let i = 0; i < 12; i++) c.request(NbdCmd.READ, { cookie: BigInt(i), offset: i * 512, length: 512 });
    await waitFor(() => backend.held.length === 4, 'four held reads');
    const seen = new Set<bigint>();
    while (seen.size < 12) {
      const want = Math.min(4, 12 - seen.size);
      await waitFor(() => backend.held.length === want, `${want} held reads`);
      const n = backend.held.length;
      backend.releaseAll();
      for (let i = 0; i < n; i++) {
        const r = await c.reply();
        expect(r.error).toBe(0);
        seen.add(r.cookie);
      }
      expect(backend.held.length).toBeLessThanOrEqual(4);
    }
    expect(backend.calls.length).toBe(12);
    expect(heldMax()).toBe(4);
    c.close();
  });

  it('stops reading requests while a client leaves its replies unread', async () => {
    const { port, backend, server } = await rig({ replyQueueBytesMax: 64 * 1024 });
    const c = await RawNbd.go(port);
    c.socket.pause();
    const count = 1000; // 64 MiB of replies: more than the kernel buffers hold
    for (let i = 0; i < count; i++) c.request(NbdCmd.READ, { cookie: BigInt(i), offset: (i % 64) * 65536, length: 65536 });
    // The server stops reading once its replies are queued past the bound and the socket does not drain.
    await waitFor(() => blockedByUnreadReplies(server), 'the server to stop reading');
    const served = backend.calls.length;
    expect(served).toBeGreaterThan(0);
    expect(served).toBeLessThan(count * 0.6);
    c.socket.resume();
    for (let i = 0; i < count; i++) expect((await c.reply()).error).toBe(0);
    expect(backend.calls.length).toBe(count);
    c.close();
  });

  it('maps backend errors to NBD errors', async () => {
    const { port, backend, records } = await rig();
    const c = await RawNbd.go(port);
    const cases: [() => void, number][] = [
      [() => backend.failWith('NO_SPACE'), NbdErrno.ENOSPC],
      [() => backend.failWith('FENCED'), NbdErrno.ESHUTDOWN],
      [() => backend.failWith('SHUTTING_DOWN'), NbdErrno.ESHUTDOWN],
      [() => backend.failWith('OUT_OF_RANGE'), NbdErrno.EINVAL],
      [() => backend.failWith('IO_ERROR'), NbdErrno.EIO],
      // The core's refusal of a write to a snapshot: the spec's error for writes to a read-only export.
      [() => backend.failWith('READ_ONLY'), NbdErrno.EPERM],
      [() => (backend.failNext = new Error('a bug')), NbdErrno.EIO],
    ];
    let cookie = 0n;
    for (const [arm, errno] of cases) {
      arm();
      c.request(NbdCmd.WRITE, { cookie: ++cookie, payload: Buffer.from('q') });
      expect(await c.reply()).toMatchObject({ cookie, error: errno });
    }
    c.request(NbdCmd.WRITE, { cookie: ++cookie, payload: Buffer.from('q') });
    expect(await c.reply()).toMatchObject({ cookie, error: 0 });
    expect(records.some((r) => r.msg === 'nbd request failed unexpectedly' && String(r.err).includes('a bug'))).toBe(true);
    c.close();
  });

  it('a backend read that resolves with no buffer is EIO, not an error escaping the server (issue 11)', async () => {
    const { port, backend, records } = await rig();
    const read = backend.read.bind(backend);
    let broken = true;
    backend.read = (volume, offset, length) => (broken ? Promise.resolve(undefined as unknown as Buffer) : read(volume, offset, length));
    const c = await RawNbd.go(port);
    c.request(NbdCmd.READ, { cookie: 1n, offset: 0, length: 512 });
    expect(await c.reply()).toMatchObject({ cookie: 1n, error: NbdErrno.EIO });
    broken = false;
    c.request(NbdCmd.READ, { cookie: 2n, offset: 0, length: 512 });
    expect(await c.reply()).toMatchObject({ cookie: 2n, error: 0 });
    expect(records.some((r) => r.msg === 'nbd request failed' || r.msg === 'nbd request failed unexpectedly')).toBe(true);
    c.close();
  });

  it('speaks structured replies when asked', async () => {
    const { port, backend } = await rig();
    const c = await RawNbd.open(port);
    c.option(NbdOpt.STRUCTURED_REPLY);
    expect((await c.optionReply()).type).toBe(NbdRep.ACK);
    c.option(NbdOpt.STRUCTURED_REPLY);
    expect((await c.optionReply()).type).toBe(NbdRep.ERR_INVALID);
    const replies = await c.goOrInfo(NbdOpt.GO, 'vol0');
    const exp = replies.find((r) => r.type === NbdRep.INFO && r.data.readUInt16BE(0) === NbdInfo.EXPORT)!;
    expect(exp.data.readUInt16BE(10)).toBe(FLAGS_SIMPLE | NbdFlag.SEND_DF);

    backend.bytesOf('vol0').write('structured', 1 << 20);
    c.request(NbdCmd.READ, { cookie: 1n, offset: (1 << 20) + 3, length: 7, flags: NbdCmdFlag.DF });
    const data = await c.chunk();
    expect(data).toMatchObject({ flags: 1, type: 1, cookie: 1n });
    expect(Number(data.payload.readBigUInt64BE(0))).toBe((1 << 20) + 3);
    expect(data.payload.subarray(8).toString()).toBe('uctured');

    c.request(NbdCmd.READ, { cookie: 2n, offset: 4 * MiB, length: 1 });
    const err = await c.chunk();
    expect(err).toMatchObject({ flags: 1, type: 0x8001, cookie: 2n });
    expect(err.payload.readUInt32BE(0)).toBe(NbdErrno.EINVAL);
    expect(err.payload.subarray(6, 6 + err.payload.readUInt16BE(4)).toString()).toContain('ends past');

    c.request(NbdCmd.READ, { cookie: 3n, offset: 0, length: 0 });
    expect(await c.chunk()).toMatchObject({ flags: 1, type: 0, cookie: 3n });

    // Replies without data stay simple.
    c.request(NbdCmd.WRITE, { cookie: 4n, payload: Buffer.from('w') });
    expect(await c.reply()).toMatchObject({ cookie: 4n, error: 0 });
    c.close();
  });

  it('finishes what is in flight after NBD_CMD_DISC, then closes', async () => {
    const { port, backend, records, server } = await rig();
    const c = await RawNbd.go(port);
    backend.holding = true;
    c.request(NbdCmd.WRITE, { cookie: 1n, payload: Buffer.from('last') });
    c.request(NbdCmd.DISC, { cookie: 2n });
    await waitFor(() => backend.held.length === 1, 'the held write');
    // The server has read the DISC, and keeps the connection for the write in flight.
    await waitFor(() => onlyConnection(server).closeReason === 'client sent NBD_CMD_DISC', 'the DISC read');
    expect(server.connections).toBe(1);
    expect(c.isClosed).toBe(false);
    backend.releaseAll();
    expect(await c.reply()).toMatchObject({ cookie: 1n, error: 0 });
    await c.closed;
    expect(backend.bytesOf('vol0').subarray(0, 4).toString()).toBe('last');
    await waitFor(() => closedRecords(records).length === 1, 'the close record');
    expect(closedRecords(records)[0]).toMatchObject({ export: 'vol0', reason: 'client sent NBD_CMD_DISC', requests: 2 });
  });

  it('closes a connection that sends a bad request magic, and only that one', async () => {
    const { port, server } = await rig();
    const a = await RawNbd.go(port);
    const b = await RawNbd.go(port);
    const bad = Buffer.alloc(28);
    bad.writeUInt32BE(0x21e41c71, 0);
    a.send(bad);
    await a.closed;
    b.request(NbdCmd.READ, { cookie: 1n, length: 1 });
    expect(await b.reply()).toMatchObject({ error: 0 });
    await waitFor(() => server.connections === 1, 'one connection left');
    b.close();
  });
});

// ---------------------------------------------------------------------------
// Read-only exports (snapshots)

/** A memory backend whose volume `vol0@snap` is read only, as the controller's backend marks a snapshot. */
class SnapshotBackend extends MemoryNbdBackend {
  override listVolumes(): readonly NbdVolume[] {
    return super.listVolumes().map((v) => (v.name.includes('@') ? { ...v, readOnly: true } : v));
  }

  override findVolume(name: string): NbdVolume | undefined {
    return this.listVolumes().find((v) => v.name === name);
  }
}

describe('NbdServer read-only exports (snapshots)', () => {
  const open: NbdServer[] = [];
  afterAll(() => Promise.all(open.map((s) => s.close())));

  async function serve(): Promise<{ port: number; backend: SnapshotBackend; records: LogRecord[] }> {
    const backend = new SnapshotBackend([
      { name: 'vol0', sizeBytes: MiB },
      { name: 'vol0@snap', sizeBytes: MiB },
    ]);
    backend.bytesOf('vol0@snap').fill(0x5a);
    const { log, records } = captureLog();
    const server = new NbdServer({ host: '127.0.0.1', port: 0, log }, backend);
    open.push(server);
    return { port: (await server.start()).port, backend, records };
  }

  it('advertises NBD_FLAG_READ_ONLY and no flag that is only for writing, through GO, INFO and EXPORT_NAME; the list says which is a snapshot', async () => {
    const { port } = await serve();
    const c = await RawNbd.open(port);
    c.option(NbdOpt.LIST);
    const listed: string[] = [];
    for (;;) {
      const r = await c.optionReply();
      if (r.type === NbdRep.ACK) break;
      const n = r.data.readUInt32BE(0);
      listed.push(`${r.data.subarray(4, 4 + n).toString()}: ${r.data.subarray(4 + n).toString()}`);
    }
    expect(listed).toEqual([expect.stringMatching(/^vol0: pagepair volume /), expect.stringMatching(/^vol0@snap: pagepair snapshot \(read only\) /)]);
    const flagsOf = (replies: { type: number; data: Buffer }[]): number => replies.find((r) => r.type === NbdRep.INFO && r.data.readUInt16BE(0) === NbdInfo.EXPORT)!.data.readUInt16BE(10);
    expect(flagsOf(await c.goOrInfo(NbdOpt.INFO, 'vol0@snap'))).toBe(FLAGS_READ_ONLY);
    expect(flagsOf(await c.goOrInfo(NbdOpt.INFO, 'vol0'))).toBe(FLAGS_SIMPLE);
    c.option(NbdOpt.STRUCTURED_REPLY);
    expect((await c.optionReply()).type).toBe(NbdRep.ACK);
    expect(flagsOf(await c.goOrInfo(NbdOpt.GO, 'vol0@snap'))).toBe(FLAGS_READ_ONLY | NbdFlag.SEND_DF);
    c.close();

    const old = await RawNbd.open(port);
    old.option(NbdOpt.EXPORT_NAME, Buffer.from('vol0@snap'));
    const r = await old.read(10);
    expect(r.readUInt16BE(8)).toBe(FLAGS_READ_ONLY);
    old.close();
  });

  for (const structured of [false, true]) {
    it(`answers WRITE, WRITE_ZEROES and TRIM with NBD_EPERM, never asks the backend, and goes on serving (${structured ? 'structured' : 'simple'} replies)`, async () => {
      const { port, backend, records } = await serve();
      const c = await RawNbd.go(port, 'vol0@snap', structured);
      const before = Buffer.from(backend.bytesOf('vol0@snap'));
      c.request(NbdCmd.WRITE, { cookie: 1n, offset: 0, payload: Buffer.alloc(4096, 1) });
      c.request(NbdCmd.WRITE, { cookie: 2n, offset: 100, flags: NbdCmdFlag.FUA, payload: Buffer.from('x') });
      c.request(NbdCmd.WRITE_ZEROES, { cookie: 3n, offset: 0, length: 8192 });
      c.request(NbdCmd.TRIM, { cookie: 4n, offset: 4096, length: 4096 });
      // Past the end too: read only comes first.
      c.request(NbdCmd.WRITE, { cookie: 5n, offset: MiB - 1, payload: Buffer.from('yz') });
      const errors = new Map<bigint, number>();
      const messages: string[] = [];
      for (let i = 0; i < 5; i++) {
        const r = await c.replyOrChunk();
        if ('simple' in r) errors.set(r.simple.cookie, r.simple.error);
        else {
          errors.set(r.chunk.cookie, r.chunk.payload.readUInt32BE(0));
          messages.push(r.chunk.payload.subarray(6).toString());
        }
      }
      expect([...errors.entries()].sort((x, y) => Number(x[0] - y[0]))).toEqual([1n, 2n, 3n, 4n, 5n].map((k) => [k, NbdErrno.EPERM]));
      if (structured) expect(messages[0]).toContain('read only');
      expect(backend.calls).toEqual([]);
      expect(backend.bytesOf('vol0@snap').equals(before)).toBe(true);
      // The connection goes on: reads are served.
      c.request(NbdCmd.READ, { cookie: 6n, offset: 10, length: 4 });
      if (structured) {
        const ch = await c.chunk();
        expect(ch.payload.subarray(8).toString('hex')).toBe('5a5a5a5a');
      } else expect((await c.reply()).data.toString('hex')).toBe('5a5a5a5a');
      // And the writable volume, on another connection, is written as ever.
      const w = await RawNbd.go(port, 'vol0');
      w.request(NbdCmd.WRITE, { cookie: 1n, offset: 0, payload: Buffer.from('ok') });
      expect(await w.reply()).toMatchObject({ cookie: 1n, error: 0 });
      expect(backend.bytesOf('vol0').subarray(0, 2).toString()).toBe('ok');
      expect(records.filter((r) => r.msg === 'nbd connection closed')).toEqual([]);
      expect(records.find((r) => r.msg === 'nbd export opened' && r.export === 'vol0@snap')).toMatchObject({ readOnly: true });
      c.close();
      w.close();
    });
  }
});

describe('NbdServer lifecycle', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'pagepair-nbd-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('close() lets requests in flight finish, closes every connection and removes the socket', async () => {
    const path = join(dir, 'close.sock');
    const { server, port, backend, records } = await rig({}, undefined, path);
    expect(statSync(path).isSocket()).toBe(true);
    const inTransmission = await RawNbd.go(port);
    const inHandshake = await RawNbd.open(port);
    const overUnix = await RawNbd.connect({ path });
    await overUnix.read(18);
    await waitFor(() => server.connections === 3, 'three connections');
    backend.holding = true;
    inTransmission.request(NbdCmd.READ, { cookie: 1n, length: 8 });
    await waitFor(() => backend.held.length === 1, 'the held read');
    let done = false;
    const closing = server.close().then(() => (done = true));
    await inHandshake.closed;
    await overUnix.closed;
    expect(done).toBe(false);
    // Requests that come now are told to go away; the one in flight finishes.
    inTransmission.request(NbdCmd.WRITE, { cookie: 2n, payload: Buffer.from('late') });
    expect(await inTransmission.reply()).toMatchObject({ cookie: 2n, error: NbdErrno.ESHUTDOWN });
    expect(done).toBe(false);
    backend.releaseAll();
    expect(await inTransmission.reply()).toMatchObject({ cookie: 1n, error: 0 });
    await inTransmission.closed;
    await closing;
    expect(server.connections).toBe(0);
    expect(existsSync(path)).toBe(false);
    expect(records.some((r) => r.msg === 'nbd server closed')).toBe(true);
  });

  it('makes its unix socket 0600, in a directory of its own made 0700 (issue 11: the socket gives every volume away)', async () => {
    const path = join(dir, 'private', 'nbd.sock');
    await rig({}, undefined, path);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'private')).mode & 0o777).toBe(0o700);
    const c = await RawNbd.connect({ path });
    expect((await c.read(18)).subarray(0, 8).toString()).toBe('NBDMAGIC');
    c.close();
  });

  it('removes a stale socket file, and refuses a live socket or a plain file', async () => {
    const stale = join(dir, 'stale.sock');
    // A process that bound the path and died without removing it.
    execFileSync('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(stale)})`]);
    expect(statSync(stale).isSocket()).toBe(true);
    const first = await rig({}, undefined, stale);
    const c = await RawNbd.connect({ path: stale });
    expect((await c.read(18)).subarray(0, 8).toString()).toBe('NBDMAGIC');
    c.close();

    const second = new NbdServer({ host: '127.0.0.1', port: 0, socketPath: stale, log: captureLog().log }, first.backend);
    await expect(second.start()).rejects.toMatchObject({ code: 'BAD_CONFIG', field: 'socket' });
    expect(second.connections).toBe(0);

    const plain = join(dir, 'plain-file');
    writeFileSync(plain, 'keep me');
    const third = new NbdServer({ host: '127.0.0.1', port: 0, socketPath: plain, log: captureLog().log }, first.backend);
    await expect(third.start()).rejects.toBeInstanceOf(PagepairError);
    expect(readFileSync(plain, 'utf8')).toBe('keep me');
  });

  it('refuses limits that make no sense, naming them', () => {
    const backend = new MemoryNbdBackend([]);
    const log = captureLog().log;
    expect(() => new NbdServer({ host: '127.0.0.1', port: 0, log, limits: { payloadBytesMax: 1000 } }, backend)).toThrow(
      expect.objectContaining({ code: 'BAD_CONFIG', field: 'payloadBytesMax' }),
    );
    expect(() => new NbdServer({ host: '127.0.0.1', port: 0, log, limits: { inflightPerConnectionMax: 0 } }, backend)).toThrow(
      expect.objectContaining({ code: 'BAD_CONFIG', field: 'inflightPerConnectionMax' }),
    );
  });
});
