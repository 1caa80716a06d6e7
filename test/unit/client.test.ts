// The client endpoint and the client library together over real sockets, with
// a fake controller behind the endpoint that keeps allocations in a Map.

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { controllerAddresses, PagepairClient } from '../../src/client/index.js';
import { ErrorCode, PagepairError } from '../../src/protocol/errors.js';
import { encode, errorReply } from '../../src/protocol/codec.js';
import { DEFAULT_LIMITS } from '../../src/protocol/limits.js';
import {
  PROTOCOL_VERSION,
  Role,
  SenseReason,
  type ClientRequest,
  type Message,
} from '../../src/protocol/messages.js';
import type { ClientEndpoint, ClientConn } from '../../src/transport/client-endpoint.js';
import { PAIR_ID, TOKEN, clientHello, testClientEndpoint } from './helpers/endpoints.js';
import { captureLog, RawWs, rejection, waitFor, type LogRecord } from './transport-helpers.js';

const UNKNOWN_GUID = '00000000-0000-4000-8000-0000000000ff';
/** C_FLUSH of this guid is held (never answered) until the test lets it go. */
const HOLD_GUID = '00000000-0000-4000-8000-00000000aaaa';
const INFLIGHT_MAX = 4;
const PAGE_BYTES = 4096;

/** A controller stand-in: allocations are Buffers in a Map. */
class FakeController {
  readonly store = new Map<string, Buffer>();
  /** Keys of keyed allocations, as the fake hands them out. */
  readonly keys = new Map<string, Buffer>();
  readonly seen: ClientRequest[] = [];
  readonly held: { conn: ClientConn; msg: ClientRequest }[] = [];
  lastConn: ClientConn | undefined;
  private nextGuid = 1;

  onRequest(conn: ClientConn, msg: ClientRequest): void {
    this.lastConn = conn;
    this.seen.push(msg);
    const head = { requestId: msg.requestId, epoch: 1, sender: 1, flags: 0 };
    const fail = (code: keyof typeof ErrorCode, text: string): void =>
      conn.reply(errorReply(msg, new PagepairError(code, text), 1, 1));
    switch (msg.kind) {
      case 'C_ALLOCATE': {
        const guid = `00000000-0000-4000-8000-${(this.nextGuid++).toString(16).padStart(12, '0')}`;
        const pageCount = Math.ceil(msg.sizeBytes / PAGE_BYTES);
        this.store.set(guid, Buffer.alloc(pageCount * PAGE_BYTES));
        const key = msg.keyed ? Buffer.alloc(16, this.nextGuid) : Buffer.alloc(16);
        if (msg.keyed) this.keys.set(guid, key);
        conn.reply({ ...head, kind: 'C_ALLOCATE_REPLY', guid, pageSizeBytes: PAGE_BYTES, pageCount, key });
        return;
      }
      case 'C_UNLOCK': {
        const key = this.keys.get(msg.guid);
        if (key === undefined || !key.equals(msg.key)) return fail('ACCESS_DENIED', `allocation ${msg.guid} is keyed and this connection has not unlocked it`);
        conn.reply({ ...head, kind: 'C_UNLOCK_REPLY' });
        return;
      }
      case 'C_WRITE': {
        const buf = this.store.get(msg.guid);
        if (buf === undefined) return fail('UNKNOWN_GUID', `no allocation ${msg.guid}`);
        if (msg.offset + msg.data.length > buf.length) return fail('OUT_OF_RANGE', 'write past the end');
        msg.data.copy(buf, msg.offset);
        // Answer later, as a real controller does once the partner holds it.
        setImmediate(() => conn.reply({ ...head, kind: 'C_WRITE_REPLY' }));
        return;
      }
      case 'C_READ': {
        const buf = this.store.get(msg.guid);
        if (buf === undefined) return fail('UNKNOWN_GUID', `no allocation ${msg.guid}`);
        if (msg.offset + msg.length > buf.length) return fail('OUT_OF_RANGE', 'read past the end');
        conn.reply({ ...head, kind: 'C_READ_REPLY', data: buf.subarray(msg.offset, msg.offset + msg.length) });
        return;
      }
      case 'C_RELEASE':
        // Thrown, not replied: the endpoint turns it into the ERROR reply.
        if (!this.store.delete(msg.guid)) throw new PagepairError('UNKNOWN_GUID', `no allocation ${msg.guid}`);
        conn.reply({ ...head, kind: 'C_RELEASE_REPLY' });
        return;
      case 'C_FLUSH':
        if (msg.guid === HOLD_GUID) {
          this.held.push({ conn, msg });
          return;
        }
        conn.reply({ ...head, kind: 'C_FLUSH_REPLY', pages: msg.guid === '' ? 7 : 3 });
        return;
      case 'C_STATUS':
        conn.reply({ ...head, kind: 'C_STATUS_REPLY', json: JSON.stringify({ role: 'MIRRORED', allocations: this.store.size }) });
        return;
      case 'C_LIST':
        conn.reply({
          ...head,
          kind: 'C_LIST_REPLY',
          allocations: [...this.store].map(([guid, buf]) => ({
            guid,
            name: 'vol',
            policy: 'default',
            pageSizeBytes: PAGE_BYTES,
            pageCount: buf.length / PAGE_BYTES,
            keyed: this.keys.has(guid),
            origin: '',
          })),
        });
        return;
      case 'C_OPEN_POINTER':
        if (msg.firstPage === 999) {
          // A confused controller: the wrong kind of reply.
          conn.reply({ ...head, kind: 'C_FLUSH_REPLY', pages: 0 });
          return;
        }
        conn.reply({ ...head, kind: 'C_OPEN_POINTER_REPLY', pointerId: 70 + msg.mode });
        return;
      case 'C_CLOSE_POINTER':
        conn.reply({ ...head, kind: 'C_CLOSE_POINTER_REPLY', pages: msg.commit ? 2 : 0 });
        return;
    }
  }

  releaseHeld(): void {
    for (const { conn, msg } of this.held.splice(0)) {
      conn.reply({ requestId: msg.requestId, epoch: 1, sender: 1, flags: 0, kind: 'C_FLUSH_REPLY', pages: 1 });
    }
  }
}

let fake: FakeController;
let endpoint: ClientEndpoint;
let port: number;
let records: LogRecord[];
const clients: PagepairClient[] = [];
const raws: RawWs[] = [];

beforeEach(async () => {
  fake = new FakeController();
  const cap = captureLog();
  records = cap.records;
  endpoint = testClientEndpoint({
    inflightMax: INFLIGHT_MAX,
    helloTimeoutMs: 300,
    log: cap.log,
    onRequest: (conn, msg) => fake.onRequest(conn, msg),
  });
  ({ port } = await endpoint.start());
});

afterEach(async () => {
  for (const raw of raws.splice(0)) raw.terminate();
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await endpoint.close();
});

async function connect(opts: { token?: string; timeoutMs?: number } = {}): Promise<PagepairClient> {
  const client = await PagepairClient.connect({
    host: '127.0.0.1',
    port,
    token: opts.token ?? TOKEN,
    name: 'test',
    timeoutMs: opts.timeoutMs ?? 3000,
  });
  clients.push(client);
  return client;
}

/** A raw connection that has said a correct hello. */
async function rawHello(): Promise<RawWs> {
  const raw = new RawWs(port);
  raws.push(raw);
  await raw.opened;
  raw.send({ ...clientHello(), clientName: 'raw' });
  expect(await raw.nth(1)).toMatchObject({ kind: 'CLIENT_HELLO_REPLY' });
  return raw;
}

/** Deterministic bytes: no randomness in tests. */
function pattern(bytes: number, seed: number): Buffer {
  const buf = Buffer.alloc(bytes);
  let x = seed >>> 0;
  for (let i = 0; i < bytes; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    buf[i] = x >>> 24;
  }
  return buf;
}

describe('hello', () => {
  it('connects with the right token and learns the controller', async () => {
    const client = await connect();
    expect(client.controllerId).toBe(1);
    expect(client.pairId).toBe(PAIR_ID);
    expect(client.role).toBe(Role.MIRRORED);
    expect(client.inflightMax).toBe(INFLIGHT_MAX);
    expect(client.requestBytesMax).toBe(DEFAULT_LIMITS.requestBytesMax);
    expect(endpoint.connections).toBe(1);
    expect(records.some((r) => r.msg === 'client connected' && /^127\.0\.0\.1:\d+$/.test(String(r.remote)))).toBe(true);
  });

  it('refuses a wrong token with AUTH_FAILED and drops the connection', async () => {
    const err = await rejection(connect({ token: 'wrong' }));
    expect(err.code).toBe('AUTH_FAILED');
    await waitFor(() => endpoint.connections === 0, 'connection dropped');
    expect(records.some((r) => r.msg === 'client connection refused' && r.code === 'AUTH_FAILED')).toBe(true);
  });

  it('refuses another protocol version and requests before hello', async () => {
    const old = new RawWs(port);
    raws.push(old);
    await old.opened;
    old.send({ ...clientHello(), protocolVersion: PROTOCOL_VERSION + 1, clientName: 'future' });
    await old.closed;
    expect(old.received[0]).toMatchObject({ kind: 'ERROR', code: ErrorCode.BAD_VERSION });

    const eager = new RawWs(port);
    raws.push(eager);
    await eager.opened;
    eager.send({ kind: 'C_STATUS', requestId: 5, epoch: 0, sender: 0, flags: 0 });
    await eager.closed;
    expect(eager.received[0]).toMatchObject({ kind: 'ERROR', code: ErrorCode.NOT_AUTHENTICATED });
    expect(fake.seen).toEqual([]);
  });

  it('drops a connection that never says hello', async () => {
    const silent = new RawWs(port);
    raws.push(silent);
    await silent.opened;
    await silent.closed;
    expect(silent.received[0]).toMatchObject({ kind: 'ERROR', code: ErrorCode.NOT_AUTHENTICATED });
  });

  it('rejects with NOT_ACTIVE when nobody listens', async () => {
    const spare = testClientEndpoint({ controllerId: 2, inflightMax: 1, log: captureLog().log, getRole: () => Role.ALONE, onRequest: () => undefined });
    const { port: freePort } = await spare.start();
    await spare.close();
    const err = await rejection(PagepairClient.connect({ host: '127.0.0.1', port: freePort, token: TOKEN, timeoutMs: 2000 }));
    expect(err.code).toBe('NOT_ACTIVE');
  });
});

describe('requests', () => {
  it('a keyed allocate returns the key as base64url and unlocks the connection; unlock takes base64url, hex or bytes', async () => {
    const client = await connect();
    const alloc = await client.allocate('ckpt', 4096, 'default', { keyed: true });
    const sent = fake.seen.filter((m) => m.kind === 'C_ALLOCATE' || m.kind === 'C_UNLOCK');
    expect(sent.map((m) => m.kind)).toEqual(['C_ALLOCATE', 'C_UNLOCK']);
    expect(sent[0]).toMatchObject({ keyed: true });
    const key = fake.keys.get(alloc.guid)!;
    expect(alloc.key).toBe(key.toString('base64url'));
    expect(alloc.key).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect((sent[1] as { key: Buffer }).key.equals(key)).toBe(true);
    await client.unlock(alloc.guid, key.toString('hex'));
    await client.unlock(alloc.guid, key);
    expect(await client.list()).toEqual([expect.objectContaining({ guid: alloc.guid, keyed: true })]);
    const wrong = Buffer.from(key);
    wrong[0] = wrong[0]! ^ 0xff;
    await expect(client.unlock(alloc.guid, wrong.toString('base64url'))).rejects.toMatchObject({ code: 'ACCESS_DENIED' });
    // A key that is not 16 bytes is refused before anything is sent.
    const before = fake.seen.length;
    await expect(client.unlock(alloc.guid, 'c2hvcnQ')).rejects.toMatchObject({ code: 'BAD_FIELD', field: 'key' });
    await expect(client.unlock(alloc.guid, Buffer.alloc(15))).rejects.toMatchObject({ code: 'BAD_FIELD', field: 'key' });
    expect(fake.seen.length).toBe(before);
    // A plain allocation has no key.
    expect((await client.allocate('plain', 4096)).key).toBeUndefined();
  });

  it('writes and reads back, and the other calls map their replies', async () => {
    const client = await connect();
    const alloc = await client.allocate('vol', 1024 * 1024);
    expect(alloc).toMatchObject({ pageSizeBytes: PAGE_BYTES, pageCount: 256 });

    const data = pattern(256 * 1024, 7);
    await client.write(alloc.guid, 4096, data);
    const back = await client.read(alloc.guid, 4096, data.length);
    expect(back.equals(data)).toBe(true);
    expect((await client.read(alloc.guid, 0, 4096)).equals(Buffer.alloc(4096))).toBe(true);

    // Many small writes in flight at once, each read back.
    const writes = [0, 1, 2, 3].map((i) => client.write(alloc.guid, 600_000 + i * 100, pattern(100, i)));
    expect(client.inflight).toBe(4);
    await Promise.all(writes);
    for (const i of [0, 1, 2, 3]) {
      expect((await client.read(alloc.guid, 600_000 + i * 100, 100)).equals(pattern(100, i))).toBe(true);
    }

    expect(await client.flush(alloc.guid)).toBe(3);
    expect(await client.flush()).toBe(7);
    expect(await client.status()).toEqual({ role: 'MIRRORED', allocations: 1 });
    expect(await client.list()).toEqual([
      { guid: alloc.guid, name: 'vol', policy: 'default', pageSizeBytes: PAGE_BYTES, pageCount: 256, keyed: false, origin: '' },
    ]);
    expect(await client.openPointer(alloc.guid, 0, 4, 'read')).toBe(71);
    expect(await client.openPointer(alloc.guid, 0, 4, 'write')).toBe(72);
    expect(await client.closePointer(72)).toBe(2);
    expect(await client.closePointer(72, false)).toBe(0);
    await client.release(alloc.guid);
    expect(fake.store.size).toBe(0);
    expect(client.inflight).toBe(0);
    expect(fake.lastConn?.inflight).toBe(0);
  });

  it('typed error replies reach the caller with their code', async () => {
    const client = await connect();
    const alloc = await client.allocate('small', PAGE_BYTES);
    expect((await rejection(client.read(UNKNOWN_GUID, 0, 10))).code).toBe('UNKNOWN_GUID');
    expect((await rejection(client.write(alloc.guid, PAGE_BYTES, Buffer.alloc(1)))).code).toBe('OUT_OF_RANGE');
    // The fake throws for this one; the endpoint answers with the thrown code.
    const thrown = await rejection(client.release(UNKNOWN_GUID));
    expect(thrown.code).toBe('UNKNOWN_GUID');
    expect(thrown.message).toContain(UNKNOWN_GUID);
    // A reply of the wrong kind.
    expect((await rejection(client.openPointer(alloc.guid, 999, 1, 'read'))).code).toBe('INTERNAL');
    expect(fake.lastConn?.inflight).toBe(0);
    // The connection is still good.
    await client.write(alloc.guid, 0, Buffer.from('still fine'));
  });

  it('checks arguments before sending anything', async () => {
    const client = await connect();
    const cases: [Promise<unknown>, string, string][] = [
      [client.write(UNKNOWN_GUID, -1, Buffer.alloc(1)), 'BAD_FIELD', 'offset'],
      [client.write(UNKNOWN_GUID, 0.5, Buffer.alloc(1)), 'BAD_FIELD', 'offset'],
      [client.write(UNKNOWN_GUID, 0, 'text' as unknown as Buffer), 'BAD_FIELD', 'data'],
      [client.read(UNKNOWN_GUID, 0, Number.NaN), 'BAD_FIELD', 'length'],
      [client.read(UNKNOWN_GUID, 0, DEFAULT_LIMITS.requestBytesMax + 1), 'TOO_LARGE', 'length'],
      [client.allocate('vol', -4096), 'BAD_FIELD', 'sizeBytes'],
      [client.openPointer(UNKNOWN_GUID, 0, 1, 'both' as 'read'), 'BAD_FIELD', 'mode'],
      [client.closePointer(-3), 'BAD_FIELD', 'pointerId'],
    ];
    for (const [p, code, field] of cases) {
      const err = await rejection(p);
      expect([err.code, err.field]).toEqual([code, field]);
    }
    expect(fake.seen).toEqual([]);
  });

  it('numbers requests as a wrapping u32 that skips 0', async () => {
    const client = await connect();
    (client as unknown as { lastRequestId: number }).lastRequestId = 0xffff_fffe;
    await client.status();
    await client.status();
    await client.status();
    expect(fake.seen.map((m) => m.requestId)).toEqual([0xffff_ffff, 1, 2]);
  });

  it('holds requests past the in-flight limit in the client until a slot frees', async () => {
    const client = await connect();
    const held = Array.from({ length: INFLIGHT_MAX }, () => client.flush(HOLD_GUID));
    const extra = client.flush(HOLD_GUID);
    await waitFor(() => fake.held.length === INFLIGHT_MAX, 'requests held');
    expect(fake.lastConn?.inflight).toBe(INFLIGHT_MAX);
    // Another connection has its own budget.
    const other = await connect();
    expect(await other.flush()).toBe(7);

    fake.releaseHeld();
    expect(await Promise.all(held)).toEqual(Array(INFLIGHT_MAX).fill(1));
    await waitFor(() => fake.held.length === 1, 'the held-back request sent');
    fake.releaseHeld();
    expect(await extra).toBe(1);
    expect(client.inflight).toBe(0);
  });

  it('answers BUSY to a connection that goes past its in-flight limit', async () => {
    const raw = await rawHello();
    for (let i = 0; i <= INFLIGHT_MAX; i++) {
      raw.send({ kind: 'C_FLUSH', requestId: 100 + i, epoch: 0, sender: 0, flags: 0, guid: HOLD_GUID });
    }
    expect(await raw.nth(2)).toMatchObject({ kind: 'ERROR', requestId: 100 + INFLIGHT_MAX, code: ErrorCode.BUSY });
    expect(fake.held).toHaveLength(INFLIGHT_MAX);
    fake.releaseHeld();
  });

  it('times out a request that gets no answer, and ignores the late reply', async () => {
    const client = await connect({ timeoutMs: 150 });
    const err = await rejection(client.flush(HOLD_GUID));
    expect(err.code).toBe('TIMEOUT');
    expect(client.inflight).toBe(0);
    fake.releaseHeld();
    expect(await client.flush()).toBe(7);
  });

  it('rejects pending and later requests with NOT_ACTIVE when the connection closes', async () => {
    const client = await connect();
    const pending = client.flush(HOLD_GUID);
    await waitFor(() => fake.held.length === 1, 'request held');
    await endpoint.close();
    const err = await rejection(pending);
    expect(err.code).toBe('NOT_ACTIVE');
    expect(err.message).toContain('controller 1');
    expect((await rejection(client.status())).code).toBe('NOT_ACTIVE');
    expect(client.isOpen).toBe(false);
  });
});

describe('bad input', () => {
  it('answers garbage with an ERROR and a close, while another client keeps working', async () => {
    const client = await connect();
    const alloc = await client.allocate('vol', 8 * PAGE_BYTES);

    const garbage = await rawHello();
    garbage.sendBytes(pattern(200, 99));
    expect(await garbage.closed).toBe(1002);
    expect(garbage.received[1]).toMatchObject({ kind: 'ERROR', requestId: 0 });

    const early = new RawWs(port);
    raws.push(early);
    await early.opened;
    early.sendBytes(pattern(64, 5));
    await early.closed;
    expect(early.received[0]).toMatchObject({ kind: 'ERROR', requestId: 0 });

    const text = await rawHello();
    text.sendBytes('{"kind":"C_STATUS"}', false);
    await text.closed;
    expect(text.received[1]).toMatchObject({ kind: 'ERROR', code: ErrorCode.BAD_FRAME });

    await client.write(alloc.guid, 0, Buffer.from('abc'));
    expect((await client.read(alloc.guid, 0, 3)).toString()).toBe('abc');
    expect(fake.seen.every((m) => m.kind !== 'C_STATUS')).toBe(true);
  });

  it('answers a bad request whose header is sound and keeps the connection', async () => {
    const raw = await rawHello();
    const frame = encode({
      kind: 'C_WRITE',
      requestId: 77,
      epoch: 0,
      sender: 0,
      flags: 0,
      guid: UNKNOWN_GUID,
      offset: 0,
      pointerId: 0,
      clientId: 0,
      clientSeq: 0,
      data: Buffer.alloc(32, 1),
    });
    const last = frame.length - 1;
    frame.writeUInt8(frame.readUInt8(last) ^ 0x55, last);
    raw.sendBytes(frame);
    expect(await raw.nth(2)).toMatchObject({ kind: 'ERROR', requestId: 77, code: ErrorCode.CHECKSUM_MISMATCH });

    // Not a client request: UNKNOWN_TYPE, connection kept.
    raw.send({ kind: 'SENSE_REQUEST', requestId: 78, epoch: 0, sender: 0, flags: 0, role: Role.ALONE, reason: SenseReason.HEARTBEAT, joinFlags: 0, poolGeneration: 0 });
    expect(await raw.nth(3)).toMatchObject({ kind: 'ERROR', requestId: 78, code: ErrorCode.UNKNOWN_TYPE });

    raw.send({ kind: 'C_STATUS', requestId: 79, epoch: 0, sender: 0, flags: 0 });
    expect(await raw.nth(4)).toMatchObject({ kind: 'C_STATUS_REPLY', requestId: 79 });
    // Still open after all of it: a later request is answered, and no close came before its answer.
    raw.send({ kind: 'C_STATUS', requestId: 80, epoch: 0, sender: 0, flags: 0 });
    expect(await raw.nth(5)).toMatchObject({ kind: 'C_STATUS_REPLY', requestId: 80 });
    expect(raw.closeCode).toBeUndefined();
    expect(fake.seen.map((m: Message) => m.kind)).toEqual(['C_STATUS', 'C_STATUS']);
  });
});

describe('controllerAddresses', () => {
  it('gives both controllers from one configuration', () => {
    const addrs = controllerAddresses({
      id: 'A',
      clientToken: TOKEN,
      listen: { client: { host: '0.0.0.0', port: 7101 } },
      partner: { id: 'B', client: { host: '10.0.0.2', port: 7102 } },
    });
    expect(addrs.self).toEqual({ id: 'A', host: '127.0.0.1', port: 7101, token: TOKEN });
    expect(addrs.partner).toEqual({ id: 'B', host: '10.0.0.2', port: 7102, token: TOKEN });
    expect(addrs.all).toEqual([addrs.self, addrs.partner]);
  });
});
