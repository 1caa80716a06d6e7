// NBD over TLS with pre-shared keys (NBD_OPT_STARTTLS), and the bound on the
// bytes one NBD connection keeps in flight. The server runs over an
// in-memory backend; the clients are pagepair's NbdClient and a raw socket
// written here, which sends what a well-behaved client never would.

import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { NbdClient, parseNbdUrl, type NbdTlsCredentials } from '../../src/client/nbd-client.js';
import { NbdClientFlag, NbdCmd, NbdOpt, NbdRep, NBD_SIMPLE_REPLY_MAGIC } from '../../src/protocol/nbd.js';
import { MemoryNbdBackend } from '../../src/testing/memory-nbd-backend.js';
import { NbdServer, type NbdServerLimits, type NbdTlsOptions } from '../../src/transport/nbd-server.js';
import { formatPskLine, pskClientOptions } from '../../src/transport/tls.js';
import { blockedByUnreadReplies, heldAtOnce } from './helpers/nbd-rig.js';
import { captureLog, sleep, waitFor, type LogRecord } from './transport-helpers.js';

const MiB = 1024 * 1024;

/** Keys from fixed seeds: the same every run. */
function keyOf(seed: string): Buffer {
  return createHash('sha256').update(`nbd-tls test key ${seed}`).digest();
}

const ALICE: NbdTlsCredentials = { identity: 'alice', key: keyOf('alice') };
const BOB: NbdTlsCredentials = { identity: 'bob', key: keyOf('bob') };
const KEYS = new Map([
  [ALICE.identity, ALICE.key],
  [BOB.identity, BOB.key],
]);

const servers: NbdServer[] = [];
const dirs: string[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

interface Rig {
  server: NbdServer;
  backend: MemoryNbdBackend;
  port: number;
  records: LogRecord[];
  socketPath?: string;
}

async function rig(tlsOpts: NbdTlsOptions, limits: Partial<NbdServerLimits> = {}, withSocket = false): Promise<Rig> {
  const backend = new MemoryNbdBackend([{ name: 'vol0', sizeBytes: 64 * MiB }]);
  const { log, records } = captureLog();
  let socketPath: string | undefined;
  if (withSocket) {
    const dir = mkdtempSync(join(tmpdir(), 'pagepair-nbd-tls-'));
    dirs.push(dir);
    socketPath = join(dir, 'nbd.sock');
  }
  const server = new NbdServer({ host: '127.0.0.1', port: 0, limits, tls: tlsOpts, log, ...(socketPath !== undefined ? { socketPath } : {}) }, backend);
  servers.push(server);
  const { port } = await server.start();
  return { server, backend, port, records, ...(socketPath !== undefined ? { socketPath } : {}) };
}

function closeReasons(records: LogRecord[]): string[] {
  return records.filter((r) => r.msg === 'nbd connection closed').map((r) => String(r.reason));
}

/** Writes a pattern through one connection, reads it back, closes cleanly. */
async function roundTrip(url: string, tlsCreds?: NbdTlsCredentials, offset = 4096): Promise<void> {
  const c = await NbdClient.connect(url, { connectTimeoutMs: 5000, ...(tlsCreds !== undefined ? { tls: tlsCreds } : {}) });
  const data = Buffer.alloc(12_345, (offset / 4096) & 0xff);
  await c.write(offset, data);
  expect((await c.read(offset, data.length)).equals(data)).toBe(true);
  await c.close();
}

// ---------------------------------------------------------------------------
// A raw client: greeting, flags and options by hand.

class Raw {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | null = null;
  closed = false;
  readonly done: Promise<void>;

  constructor(public socket: net.Socket) {
    this.done = new Promise((resolve) => {
      this.attach(socket, resolve);
    });
  }

  private attach(s: net.Socket, onClose?: () => void): void {
    s.on('data', (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.wake?.();
    });
    s.on('error', () => undefined);
    s.once('close', () => {
      this.closed = true;
      this.wake?.();
      onClose?.();
    });
  }

  static async open(port: number, flags = NbdClientFlag.C_FIXED_NEWSTYLE | NbdClientFlag.C_NO_ZEROES): Promise<Raw> {
    const s = net.connect({ host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    const r = new Raw(s);
    const greeting = await r.read(18);
    expect(greeting.toString('latin1', 0, 8)).toBe('NBDMAGIC');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(flags);
    s.write(f);
    return r;
  }

  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`closed with ${this.buf.length} of ${n} bytes`);
      if (Date.now() > deadline) throw new Error(`no ${n} bytes within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 50);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  option(opt: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 0, 'latin1');
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([h, data]));
  }

  async reply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    const data = await this.read(h.readUInt32BE(16));
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** After an ACKed STARTTLS: the TLS handshake on this socket, then bytes come through TLS. */
  async upgrade(creds: NbdTlsCredentials): Promise<void> {
    const secure = tls.connect({ socket: this.socket, ...pskClientOptions(creds.identity, creds.key) });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.socket = secure;
    this.attach(secure);
  }

  waitClosed(timeoutMs = 5000): Promise<void> {
    return Promise.race([this.done, sleep(timeoutMs).then(() => Promise.reject(new Error(`still open after ${timeoutMs} ms`)))]);
  }
}

function goData(name: string): Buffer {
  const n = Buffer.from(name);
  const d = Buffer.alloc(4 + n.length + 2);
  d.writeUInt32BE(n.length, 0);
  n.copy(d, 4);
  return d;
}

// ---------------------------------------------------------------------------

describe('NBD STARTTLS, mode "require"', () => {
  it('refuses a plain client with NBD_REP_ERR_TLS_REQD, closes on NBD_OPT_EXPORT_NAME, and serves a client with the key', async () => {
    const { port, records } = await rig({ mode: 'require', keys: KEYS });

    // pagepair's client without TLS: its NBD_OPT_GO is answered TLS_REQD.
    await expect(NbdClient.connect(`nbd://127.0.0.1:${port}/vol0`)).rejects.toMatchObject({ code: 'NOT_AUTHENTICATED', message: expect.stringMatching(/requires TLS/) });

    // By hand: every option but STARTTLS and ABORT is refused, and the session goes on.
    const raw = await Raw.open(port);
    for (const opt of [NbdOpt.LIST, NbdOpt.GO, NbdOpt.INFO, NbdOpt.STRUCTURED_REPLY, 0x4242]) {
      raw.option(opt, opt === NbdOpt.GO || opt === NbdOpt.INFO ? goData('vol0') : Buffer.alloc(0));
      expect(await raw.reply()).toMatchObject({ option: opt, type: NbdRep.ERR_TLS_REQD });
    }
    // NBD_OPT_EXPORT_NAME cannot be refused: the connection ends.
    raw.option(NbdOpt.EXPORT_NAME, Buffer.from('vol0'));
    await raw.waitClosed();
    expect(closeReasons(records)).toContain('NBD_OPT_EXPORT_NAME without TLS, which this server requires');

    // Before TLS an option's data is held to a small bound: a large one closes the connection unread.
    const big = await Raw.open(port);
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 0, 'latin1');
    h.writeUInt32BE(NbdOpt.GO, 8);
    h.writeUInt32BE(60 * 1024, 12);
    big.socket.write(h);
    await big.waitClosed();
    expect(closeReasons(records).some((r) => /over the limit of 4160/.test(r))).toBe(true);

    // The right key: reads and writes, over TCP.
    await roundTrip(`nbds://127.0.0.1:${port}/vol0`, ALICE);
    await roundTrip(`nbds://127.0.0.1:${port}/vol0`, BOB, 8192);
    expect(records.filter((r) => r.msg === 'nbd tls established').map((r) => r.identity)).toEqual(['alice', 'bob']);
  });

  it('refuses a wrong key and an unknown identity, logs why, and keeps serving', async () => {
    const { port, records, server } = await rig({ mode: 'require', keys: KEYS });
    const wrongKey = { identity: 'alice', key: keyOf('not alice') };
    await expect(NbdClient.connect(`nbds://127.0.0.1:${port}/vol0`, { tls: wrongKey })).rejects.toMatchObject({ code: 'AUTH_FAILED' });
    await roundTrip(`nbds://127.0.0.1:${port}/vol0`, ALICE);
    await expect(NbdClient.connect(`nbds://127.0.0.1:${port}/vol0`, { tls: { identity: 'mallory', key: keyOf('mallory') } })).rejects.toMatchObject({ code: 'AUTH_FAILED' });
    await roundTrip(`nbds://127.0.0.1:${port}/vol0`, ALICE);
    await waitFor(() => closeReasons(records).filter((r) => r.startsWith('TLS handshake failed')).length === 2, 'two failed handshakes logged');
    const failed = closeReasons(records).filter((r) => r.startsWith('TLS handshake failed'));
    expect(failed[0]).toMatch(/identity "alice": wrong key\?/);
    expect(failed[1]).toMatch(/unknown identity "mallory"/);
    // Every connection, refused or served, is gone: nothing is left holding a slot.
    await waitFor(() => server.connections === 0, 'every connection closed');
  });

  it('closes a connection that sends garbage instead of a TLS handshake, or none in time', async () => {
    const { port, records } = await rig({ mode: 'require', keys: KEYS }, { handshakeTimeoutMs: 400 });
    const g = await Raw.open(port);
    g.option(NbdOpt.STARTTLS);
    expect(await g.reply()).toMatchObject({ option: NbdOpt.STARTTLS, type: NbdRep.ACK });
    g.socket.write(Buffer.alloc(300, 0x41));
    await g.waitClosed();
    expect(closeReasons(records).some((r) => r.startsWith('TLS handshake failed'))).toBe(true);

    // The TLS handshake counts against the handshake timeout.
    const idle = await Raw.open(port);
    idle.option(NbdOpt.STARTTLS);
    expect((await idle.reply()).type).toBe(NbdRep.ACK);
    // Closed by the handshake timeout (400 ms here), as its close record says.
    await idle.waitClosed();
    await waitFor(() => closeReasons(records).includes('no export chosen within 400 ms'), 'the timeout logged');

    await roundTrip(`nbds://127.0.0.1:${port}/vol0`, ALICE);
  });

  it('answers options over TLS, refuses a second STARTTLS, and forgets structured replies negotiated before it', async () => {
    const { port } = await rig({ mode: 'on', keys: KEYS });
    const r = await Raw.open(port);
    r.option(NbdOpt.STRUCTURED_REPLY);
    expect((await r.reply()).type).toBe(NbdRep.ACK);
    r.option(NbdOpt.STARTTLS, Buffer.from('x'));
    expect((await r.reply()).type).toBe(NbdRep.ERR_INVALID);
    r.option(NbdOpt.STARTTLS);
    expect((await r.reply()).type).toBe(NbdRep.ACK);
    await r.upgrade(ALICE);
    r.option(NbdOpt.STARTTLS);
    expect(await r.reply()).toMatchObject({ option: NbdOpt.STARTTLS, type: NbdRep.ERR_INVALID });
    // Structured replies were dropped by STARTTLS: asking again is accepted, not "already on".
    r.option(NbdOpt.STRUCTURED_REPLY);
    expect((await r.reply()).type).toBe(NbdRep.ACK);
    r.option(NbdOpt.ABORT);
    expect((await r.reply()).type).toBe(NbdRep.ACK);
    await r.waitClosed();
  });

  it('speaks TLS on the unix socket too (nbds+unix://)', async () => {
    const { socketPath } = await rig({ mode: 'require', keys: KEYS }, {}, true);
    await roundTrip(`nbds+unix:///vol0?socket=${socketPath!}`, ALICE);
    await expect(NbdClient.connect(`nbd+unix:///vol0?socket=${socketPath!}`)).rejects.toMatchObject({ code: 'NOT_AUTHENTICATED' });
  });
});

describe('NBD STARTTLS, modes "off" and "on"', () => {
  it('"off" refuses STARTTLS and goes on in plain', async () => {
    const { port } = await rig({ mode: 'off' });
    const r = await Raw.open(port);
    r.option(NbdOpt.STARTTLS);
    const rep = await r.reply();
    expect(rep.type).toBe(NbdRep.ERR_UNSUP);
    expect(rep.data.toString()).toMatch(/tls.mode is "off"/);
    r.option(NbdOpt.GO, goData('vol0'));
    for (;;) {
      const x = await r.reply();
      if (x.type === NbdRep.ACK) break;
      expect(x.type).toBe(NbdRep.INFO);
    }
    // A client that asked for TLS does not go on without it.
    await expect(NbdClient.connect(`nbds://127.0.0.1:${port}/vol0`, { tls: ALICE })).rejects.toMatchObject({ code: 'NOT_ALLOWED' });
    await roundTrip(`nbd://127.0.0.1:${port}/vol0`);
  });

  it('"on" serves plain and TLS clients alike', async () => {
    const { port } = await rig({ mode: 'on', keys: KEYS });
    await roundTrip(`nbd://127.0.0.1:${port}/vol0`);
    await roundTrip(`nbds://127.0.0.1:${port}/vol0`, BOB, 16384);
  });

  it('refuses to start TLS without keys', () => {
    const backend = new MemoryNbdBackend([{ name: 'vol0', sizeBytes: MiB }]);
    expect(() => new NbdServer({ host: '127.0.0.1', port: 0, tls: { mode: 'require' }, log: captureLog().log }, backend)).toThrow(/needs pre-shared keys/);
  });
});

describe('NBD client URLs', () => {
  it('parses nbds:// and nbds+unix:// with a key file, the identity as the user', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pagepair-nbd-tls-'));
    dirs.push(dir);
    const file = join(dir, 'keys.psk');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(file, formatPskLine(ALICE.identity, ALICE.key) + formatPskLine(BOB.identity, BOB.key), { mode: 0o600 });
    expect(parseNbdUrl(`nbds://127.0.0.1:1234/v?tls-psk-file=${file}`)).toMatchObject({ host: '127.0.0.1', port: 1234, exportName: 'v', tls: { identity: 'alice' } });
    expect(parseNbdUrl(`nbds://bob@127.0.0.1:1234/v?tls-psk-file=${file}`).tls).toEqual(BOB);
    expect(parseNbdUrl(`nbds+unix:///v?socket=/x.sock&tls-psk-file=${file}`)).toMatchObject({ socketPath: '/x.sock', tls: { identity: 'alice' } });
    expect(() => parseNbdUrl('nbds://127.0.0.1/v')).toThrow(/gives no key/);
    expect(() => parseNbdUrl(`nbds://carol@127.0.0.1/v?tls-psk-file=${file}`)).toThrow(/no key for identity "carol"/);
    expect(parseNbdUrl('nbd://127.0.0.1/v').tls).toBeUndefined();
  });
});

// ---------------------------------------------------------------------------

describe('NBD bytes in flight', () => {
  const READS = 32;
  const READ_BYTES = MiB;
  const BOUND = 4 * MiB;

  /** READS reads of READ_BYTES each, sent at once on one raw plain connection in transmission. */
  async function floodReads(port: number): Promise<Raw> {
    const r = await Raw.open(port);
    r.option(NbdOpt.GO, goData('vol0'));
    for (;;) if ((await r.reply()).type === NbdRep.ACK) break;
    const reqs: Buffer[] = [];
    for (let i = 0; i < READS; i++) {
      const q = Buffer.alloc(28);
      q.writeUInt32BE(0x25609513, 0);
      q.writeUInt16BE(NbdCmd.READ, 6);
      q.writeUInt32BE(i + 1, 12);
      q.writeUInt32BE(i * READ_BYTES, 20);
      q.writeUInt32BE(READ_BYTES, 24);
      reqs.push(q);
    }
    r.socket.write(Buffer.concat(reqs));
    return r;
  }

  async function readAllReplies(r: Raw): Promise<number[]> {
    const cookies: number[] = [];
    for (let i = 0; i < READS; i++) {
      const h = await r.read(16, 20_000);
      expect(h.readUInt32BE(0)).toBe(NBD_SIMPLE_REPLY_MAGIC);
      expect(h.readUInt32BE(4)).toBe(0);
      const cookie = h.readUInt32BE(12);
      const data = await r.read(READ_BYTES, 20_000);
      expect(data[0]).toBe(cookie & 0xff);
      cookies.push(cookie);
    }
    return cookies.sort((x, y) => x - y);
  }

  it('keeps the reads a slow backend holds under bytesInFlightMax', async () => {
    const { port, backend, server } = await rig({ mode: 'off' }, { payloadBytesMax: READ_BYTES, bytesInFlightMax: BOUND });
    // Each MiB starts with its index, so a reply shows which read it answers.
    const bytes = backend.bytesOf('vol0');
    for (let i = 0; i < READS; i++) bytes[i * READ_BYTES] = (i + 1) & 0xff;
    const heldAtOnceMax = heldAtOnce(backend);
    backend.holding = true;
    const r = await floodReads(port);
    await waitFor(() => backend.held.length === BOUND / READ_BYTES, 'the backend to hold the first reads');
    // No more than the bound went into the backend.
    expect(backend.held.length).toBe(BOUND / READ_BYTES);
    expect(server.bytesInFlight).toBeLessThanOrEqual(BOUND);
    let heldMax = 0;
    const releaser = setInterval(() => {
      heldMax = Math.max(heldMax, backend.held.length);
      backend.releaseAll();
    }, 5);
    try {
      expect(await readAllReplies(r)).toEqual(Array.from({ length: READS }, (_, i) => i + 1));
    } finally {
      clearInterval(releaser);
    }
    expect(heldMax).toBeLessThanOrEqual(BOUND / READ_BYTES);
    // Nothing more came in while it held them, at any moment.
    expect(heldAtOnceMax()).toBe(BOUND / READ_BYTES);
    expect(server.bytesInFlightPeak).toBeLessThanOrEqual(BOUND + 64 * 1024);
    expect(backend.calls.filter((c) => c.op === 'read')).toHaveLength(READS);
    r.socket.destroy();
  });

  it('stops reading requests from a client that does not read its replies', async () => {
    const { port, backend, server } = await rig({ mode: 'off' }, { payloadBytesMax: READ_BYTES, bytesInFlightMax: BOUND });
    const bytes = backend.bytesOf('vol0');
    for (let i = 0; i < READS; i++) bytes[i * READ_BYTES] = (i + 1) & 0xff;
    const r = await floodReads(port);
    r.socket.pause();
    await waitFor(() => blockedByUnreadReplies(server), 'the server to stop reading', 20_000);
    // Replies wait in the kernel's buffers and in the server's socket; the server holds no more than the bound.
    expect(server.bytesInFlight).toBeLessThanOrEqual(BOUND + 64 * 1024);
    expect(server.bytesInFlightPeak).toBeLessThanOrEqual(BOUND + 64 * 1024);
    expect(backend.calls.length).toBeLessThan(READS);
    r.socket.resume();
    expect(await readAllReplies(r)).toEqual(Array.from({ length: READS }, (_, i) => i + 1));
    expect(server.bytesInFlightPeak).toBeLessThanOrEqual(BOUND + 64 * 1024);
    r.socket.destroy();
  });

  it('drops connections past connectionsMax, counts them and logs once a second at most', async () => {
    const { port, server, records } = await rig({ mode: 'off' }, { connectionsMax: 2 });
    const kept = [await Raw.open(port), await Raw.open(port)];
    const dropped = Array.from({ length: 5 }, () => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.on('error', () => undefined);
      s.resume();
      return new Promise<void>((resolve) => s.once('close', () => resolve()));
    });
    await Promise.all(dropped);
    expect(server.connectionsRefused).toBe(5);
    expect(records.filter((r) => r.msg === 'nbd connection refused: at the connection limit')).toHaveLength(1);
    for (const k of kept) k.socket.destroy();
    await waitFor(() => server.connections === 0, 'the kept connections closed');
    await roundTrip(`nbd://127.0.0.1:${port}/vol0`);
  });

  it('advertises its block sizes (minimum, preferred, maximum) and refuses a bound under the maximum payload', async () => {
    const { port } = await rig({ mode: 'off' }, { payloadBytesMax: READ_BYTES, bytesInFlightMax: BOUND });
    const c = await NbdClient.connect(`nbd://127.0.0.1:${port}/vol0`);
    expect(c.info).toMatchObject({ minimumBytes: 1, preferredBytes: 4096, maximumPayloadBytes: READ_BYTES });
    await c.close();
    const backend = new MemoryNbdBackend([{ name: 'vol0', sizeBytes: MiB }]);
    expect(() => new NbdServer({ host: '127.0.0.1', port: 0, limits: { payloadBytesMax: 2 * MiB, bytesInFlightMax: MiB }, log: captureLog().log }, backend)).toThrow(
      /bytesInFlightMax must be at least payloadBytesMax/,
    );
  });
});
