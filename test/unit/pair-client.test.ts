// PairClient against two fake controllers behind real client endpoints: it
// moves to the other controller when one goes away or says "not here",
// tags every write so a retry is recognisable, gives up in time, and leaves
// errors about the request itself alone.

import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { PairClient } from '../../src/client/pair-client.js';
import { PagepairError, type ErrorCodeName } from '../../src/protocol/errors.js';
import { errorReply } from '../../src/protocol/codec.js';
import type { ClientRequest } from '../../src/protocol/messages.js';
import type { ClientEndpoint, ClientConn } from '../../src/transport/client-endpoint.js';
import { TOKEN, testClientEndpoint } from './helpers/endpoints.js';
import { rejection, waitFor } from './transport-helpers.js';

const GUID = '00000000-0000-4000-8000-000000000001';
const PAGES = 4;
const PAGE_BYTES = 4096;

/** What a fake controller does with the next requests. */
type Behaviour = { kind: 'serve' } | { kind: 'error'; code: ErrorCodeName } | { kind: 'drop' } | { kind: 'hold' };

/** Both fakes share one memory, as a mirrored pair would. */
const memory = Buffer.alloc(PAGES * PAGE_BYTES);
/** And the keys of keyed allocations. */
const keys = new Map<string, Buffer>();

class FakeController {
  behaviour: Behaviour = { kind: 'serve' };
  readonly seen: ClientRequest[] = [];
  readonly endpoint: ClientEndpoint;
  port = 0;

  constructor(readonly id: 1 | 2) {
    this.endpoint = testClientEndpoint({
      controllerId: id,
      inflightMax: 16,
      log: pino({ level: 'silent' }),
      onRequest: (conn, msg) => this.onRequest(conn, msg),
    });
  }

  async start(): Promise<void> {
    ({ port: this.port } = await this.endpoint.start());
  }

  writes(): { clientId: number; clientSeq: number }[] {
    return this.seen.flatMap((m) => (m.kind === 'C_WRITE' ? [{ clientId: m.clientId, clientSeq: m.clientSeq }] : []));
  }

  private onRequest(conn: ClientConn, msg: ClientRequest): void {
    this.seen.push(msg);
    const b = this.behaviour;
    if (b.kind === 'drop') {
      conn.close(1001, 'going away');
      return;
    }
    if (b.kind === 'hold') return;
    if (b.kind === 'error') {
      conn.reply(errorReply(msg, new PagepairError(b.code, `fake ${this.id} says ${b.code}`), 1, this.id));
      return;
    }
    const head = { requestId: msg.requestId, epoch: 1, sender: this.id, flags: 0 };
    switch (msg.kind) {
      case 'C_WRITE':
        if (msg.guid !== GUID) throw new PagepairError('UNKNOWN_GUID', `no allocation ${msg.guid}`);
        if (msg.offset + msg.data.length > memory.length) throw new PagepairError('OUT_OF_RANGE', 'write past the end');
        msg.data.copy(memory, msg.offset);
        conn.reply({ ...head, kind: 'C_WRITE_REPLY' });
        return;
      case 'C_READ':
        if (msg.guid !== GUID) throw new PagepairError('UNKNOWN_GUID', `no allocation ${msg.guid}`);
        if (msg.offset + msg.length > memory.length) throw new PagepairError('OUT_OF_RANGE', 'read past the end');
        conn.reply({ ...head, kind: 'C_READ_REPLY', data: memory.subarray(msg.offset, msg.offset + msg.length) });
        return;
      case 'C_STATUS':
        conn.reply({ ...head, kind: 'C_STATUS_REPLY', json: JSON.stringify({ controller: this.id === 1 ? 'A' : 'B' }) });
        return;
      case 'C_ALLOCATE': {
        const key = Buffer.alloc(16, 0x6b);
        if (msg.keyed) keys.set(GUID, key);
        conn.reply({ ...head, kind: 'C_ALLOCATE_REPLY', guid: GUID, pageSizeBytes: PAGE_BYTES, pageCount: PAGES, key: msg.keyed ? key : Buffer.alloc(16) });
        return;
      }
      case 'C_UNLOCK':
        if (!keys.get(msg.guid)?.equals(msg.key)) throw new PagepairError('ACCESS_DENIED', `allocation ${msg.guid} is keyed and this connection has not unlocked it`);
        conn.reply({ ...head, kind: 'C_UNLOCK_REPLY' });
        return;
      default:
        throw new PagepairError('INTERNAL', `the fake does not do ${msg.kind}`);
    }
  }
}

let a: FakeController;
let b: FakeController;
const clients: PairClient[] = [];
const switches: { from: string | null; to: string; reason: string }[] = [];

beforeEach(async () => {
  memory.fill(0);
  keys.clear();
  switches.length = 0;
  a = new FakeController(1);
  b = new FakeController(2);
  await Promise.all([a.start(), b.start()]);
});

afterEach(async () => {
  vi.useRealTimers();
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await Promise.all([a.endpoint.close(), b.endpoint.close()]);
});

async function connect(opts: { timeoutMs?: number; retryForMs?: number } = {}): Promise<PairClient> {
  const c = await PairClient.connect({
    controllers: [
      { id: 'A', host: '127.0.0.1', port: a.port, token: TOKEN },
      { id: 'B', host: '127.0.0.1', port: b.port, token: TOKEN },
    ],
    name: 'pair-client-test',
    timeoutMs: opts.timeoutMs ?? 2000,
    retryForMs: opts.retryForMs ?? 3000,
    retryIntervalMs: 10,
    onSwitch: (info) => switches.push(info),
  });
  clients.push(c);
  return c;
}

function bytes(n: number, fill: number): Buffer {
  return Buffer.alloc(n, fill);
}

describe('PairClient failover', () => {
  it('starts on the first controller and stays there while it serves', async () => {
    const c = await connect();
    await c.write(GUID, 0, bytes(100, 1));
    expect((await c.read(GUID, 0, 100)).equals(bytes(100, 1))).toBe(true);
    expect(c.currentController).toBe('A');
    expect(a.seen.map((m) => m.kind)).toEqual(['C_WRITE', 'C_READ']);
    expect(b.seen).toEqual([]);
    expect(switches).toEqual([]);
  });

  it('moves to the other controller when the connection is lost, and the retried write carries the same tag', async () => {
    const c = await connect();
    await c.write(GUID, 0, bytes(10, 1));
    // A takes the next write and drops the connection without an answer: it may have landed.
    a.behaviour = { kind: 'drop' };
    await c.write(GUID, 4096, bytes(10, 2));
    expect(c.currentController).toBe('B');
    expect(switches).toEqual([expect.objectContaining({ from: 'A', to: 'B' })]);
    const lost = a.writes()[1]!;
    expect(b.writes()).toEqual([lost]);
    expect(lost.clientId).toBe(c.clientId);
    // A later write is a new request: same client, next sequence number.
    await c.write(GUID, 8192, bytes(10, 3));
    expect(b.writes()[1]).toEqual({ clientId: c.clientId, clientSeq: lost.clientSeq + 1 });
    expect(a.writes()[0]!.clientSeq).toBe(lost.clientSeq - 1);
  });

  it('unlocks the keyed allocations it holds keys for on the connection it fails over to, before the request', async () => {
    const c = await connect();
    const made = await c.allocate('ckpt', PAGES * PAGE_BYTES, 'default', { keyed: true });
    expect(made.key).toBe(Buffer.alloc(16, 0x6b).toString('base64url'));
    expect(a.seen.map((m) => m.kind)).toEqual(['C_ALLOCATE', 'C_UNLOCK']);
    a.behaviour = { kind: 'drop' };
    await c.write(GUID, 0, bytes(10, 1));
    expect(c.currentController).toBe('B');
    expect(b.seen.map((m) => m.kind)).toEqual(['C_UNLOCK', 'C_WRITE']);
    expect(b.seen[0]).toMatchObject({ guid: GUID, key: Buffer.alloc(16, 0x6b) });
  });

  it('forgets a key the controller no longer takes (the allocation went) instead of failing the connection', async () => {
    const c = await connect();
    // A wrong key is refused and not kept.
    await expect(c.unlock(GUID, Buffer.alloc(16, 0x6b))).rejects.toMatchObject({ code: 'ACCESS_DENIED' });
    keys.set(GUID, Buffer.alloc(16, 0x6b));
    await c.unlock(GUID, Buffer.alloc(16, 0x6b).toString('hex'));
    // The allocation goes: B refuses the key when the client fails over to it, and serves on.
    keys.clear();
    a.behaviour = { kind: 'drop' };
    await c.write(GUID, 0, bytes(10, 2));
    expect(c.currentController).toBe('B');
    expect(b.seen.map((m) => m.kind)).toEqual(['C_UNLOCK', 'C_WRITE']);
    // Back on A, on a new connection: the key is no longer presented.
    a.seen.length = 0;
    a.behaviour = { kind: 'serve' };
    b.behaviour = { kind: 'drop' };
    await c.write(GUID, 16, bytes(10, 3));
    expect(c.currentController).toBe('A');
    expect(a.seen.map((m) => m.kind)).toEqual(['C_WRITE']);
  });

  it('requests failing over together share one connection to the other controller', async () => {
    const c = await connect();
    await c.write(GUID, 0, bytes(10, 1));
    a.behaviour = { kind: 'drop' };
    await Promise.all(Array.from({ length: 8 }, (_, i) => c.write(GUID, i * 16, bytes(10, i))));
    expect(c.currentController).toBe('B');
    expect(b.endpoint.connections).toBe(1);
  });

  it('moves to the other controller when the first is not listening at all', async () => {
    const c = await connect();
    await a.endpoint.close();
    expect((await c.read(GUID, 0, 10)).length).toBe(10);
    expect(c.currentController).toBe('B');
    expect(b.seen.map((m) => m.kind)).toEqual(['C_READ']);
  });

  it.each(['FENCED', 'NOT_ACTIVE', 'NOT_MIRRORED'] as const)('retries a write answered %s on the other controller, with the same tag', async (code) => {
    const c = await connect();
    a.behaviour = { kind: 'error', code };
    await c.write(GUID, 0, bytes(64, 7));
    expect(c.currentController).toBe('B');
    expect(a.writes()).toHaveLength(1);
    expect(b.writes()).toEqual(a.writes());
    expect(memory.subarray(0, 64).equals(bytes(64, 7))).toBe(true);
    // And back again when B says the same and A serves.
    a.behaviour = { kind: 'serve' };
    b.behaviour = { kind: 'error', code };
    await c.read(GUID, 0, 64);
    expect(c.currentController).toBe('A');
  });

  it('retries a write that timed out on the other controller, with the same tag', async () => {
    const c = await connect({ timeoutMs: 200 });
    a.behaviour = { kind: 'hold' };
    await c.write(GUID, 0, bytes(32, 9));
    // It moved on because A's answer did not come within timeoutMs.
    expect(switches).toEqual([{ from: 'A', to: 'B', reason: expect.stringMatching(/not answered within 200 ms/) }]);
    expect(a.writes()).toHaveLength(1);
    expect(b.writes()).toEqual(a.writes());
    expect(c.currentController).toBe('B');
  });

  it('gives up after retryForMs with the last error', async () => {
    const c = await connect({ retryForMs: 300 });
    a.behaviour = { kind: 'error', code: 'NOT_MIRRORED' };
    b.behaviour = { kind: 'error', code: 'FENCED' };
    // retryForMs is counted on a fake clock (Date): the sockets and the pauses between rounds are real.
    vi.useFakeTimers({ toFake: ['Date'] });
    const t0 = Date.now();
    let settled = false;
    const write = c.write(GUID, 0, bytes(8, 1));
    void write.then(
      () => (settled = true),
      () => (settled = true),
    );
    // It keeps trying both, round after round, while the clock stands 1 ms short of retryForMs.
    vi.setSystemTime(t0 + 299);
    await waitFor(() => a.writes().length > 3 && b.writes().length > 3, 'rounds of attempts on both');
    expect(settled).toBe(false);
    // At retryForMs it gives up, at the end of the round under way.
    vi.setSystemTime(t0 + 300);
    const err = await rejection(write);
    expect(['NOT_MIRRORED', 'FENCED']).toContain(err.code);
    expect(err.message).toMatch(/fake \d says/);
    // Always the same write.
    const tags = new Set([...a.writes(), ...b.writes()].map((t) => `${t.clientId}/${t.clientSeq}`));
    expect(tags.size).toBe(1);
  });

  it('gives up with NOT_ACTIVE when neither controller can be reached', async () => {
    const c = await connect({ retryForMs: 200 });
    await Promise.all([a.endpoint.close(), b.endpoint.close()]);
    const err = await rejection(c.read(GUID, 0, 8));
    expect(err.code).toBe('NOT_ACTIVE');
  });

  it.each([
    ['UNKNOWN_GUID', () => ({ guid: '00000000-0000-4000-8000-0000000000ff', offset: 0 })],
    ['OUT_OF_RANGE', () => ({ guid: GUID, offset: PAGES * PAGE_BYTES })],
  ] as const)('does not retry %s', async (code, where) => {
    const c = await connect();
    const { guid, offset } = where();
    const werr = await rejection(c.write(guid, offset, bytes(16, 1)));
    expect(werr.code).toBe(code);
    const rerr = await rejection(c.read(guid, offset, 16));
    expect(rerr.code).toBe(code);
    expect(a.seen.map((m) => m.kind)).toEqual(['C_WRITE', 'C_READ']);
    expect(b.seen).toEqual([]);
    expect(c.currentController).toBe('A');
  });
});
