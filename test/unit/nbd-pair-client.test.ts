// NbdPairClient against two of the project's NBD servers (in-memory backends)
// standing for controllers A and B: requests go to the first until it fails;
// a lost connection, a timeout or ESHUTDOWN sends them, and what was in
// flight with them, to the other; a refused export is final.

import { afterEach, describe, expect, it } from 'vitest';
import { NbdPairClient } from '../../src/client/nbd-pair-client.js';
import { MemoryNbdBackend } from '../../src/testing/memory-nbd-backend.js';
import { NbdServer } from '../../src/transport/nbd-server.js';
import { captureLog, waitFor } from './transport-helpers.js';

const servers: NbdServer[] = [];
const clients: NbdPairClient[] = [];

async function controller(): Promise<{ server: NbdServer; backend: MemoryNbdBackend; port: number }> {
  const backend = new MemoryNbdBackend([{ name: 'vol', sizeBytes: 1024 * 1024 }]);
  const server = new NbdServer({ host: '127.0.0.1', port: 0, log: captureLog().log, limits: { closeGraceMs: 100 } }, backend);
  servers.push(server);
  const { port } = await server.start();
  return { server, backend, port };
}

type Controller = Awaited<ReturnType<typeof controller>>;

/** Two controllers, and a client of both (A first) with `opts`, closed after the test. */
async function pairClient(opts: Omit<ConstructorParameters<typeof NbdPairClient>[0], 'endpoints'> = {}): Promise<{ a: Controller; b: Controller; c: NbdPairClient }> {
  const a = await controller();
  const b = await controller();
  const c = new NbdPairClient({ endpoints: [{ id: 'A', host: '127.0.0.1', port: a.port }, { id: 'B', host: '127.0.0.1', port: b.port }], ...opts });
  clients.push(c);
  return { a, b, c };
}

function cutAll(server: NbdServer): void {
  for (const conn of (server as unknown as { conns: Set<{ destroy(r: string): void }> }).conns) conn.destroy('test cut');
}

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

describe('NbdPairClient', () => {
  it('sends to the first controller while it answers', async () => {
    const { a, b, c } = await pairClient();
    await c.write('vol', 0, Buffer.alloc(4096, 1));
    expect((await c.read('vol', 0, 4096))[0]).toBe(1);
    expect(c.currentController).toBe('A');
    expect(a.backend.calls.length).toBe(2);
    expect(b.backend.calls.length).toBe(0);
  });

  it('resends what was in flight on a lost connection to the other controller, and stays there', async () => {
    const switches: string[] = [];
    const { a, b, c } = await pairClient({ onSwitch: (s) => switches.push(`${s.from}>${s.to}`) });
    await c.open('vol');
    a.backend.holding = true;
    const writes = [0, 1, 2].map((i) => c.write('vol', i * 4096, Buffer.alloc(4096, 10 + i)));
    await waitFor(() => a.backend.held.length === 3, 'three writes held by A');
    cutAll(a.server);
    await Promise.all(writes);
    expect(c.resent).toBe(3);
    expect(switches).toEqual(['A>B']);
    expect(c.currentController).toBe('B');
    expect([0, 1, 2].map((i) => b.backend.bytesOf('vol')[i * 4096])).toEqual([10, 11, 12]);
    await c.write('vol', 0, Buffer.alloc(1, 99));
    expect(b.backend.bytesOf('vol')[0]).toBe(99);
    a.backend.releaseAll();
  });

  it('with resendWrites false, a write that may have landed fails instead of going again; reads still move, and so do later writes', async () => {
    const { a, b, c } = await pairClient({ resendWrites: false });
    await c.open('vol');
    a.backend.holding = true;
    const w = c.write('vol', 0, Buffer.alloc(4096, 5));
    const r = c.read('vol', 0, 4096);
    await waitFor(() => a.backend.held.length === 2, 'a write and a read held by A');
    cutAll(a.server);
    await expect(w).rejects.toMatchObject({ code: 'NOT_ACTIVE' });
    expect((await r)[0]).toBe(0);
    expect(b.backend.calls.map((x) => x.op)).toEqual(['read']);
    await c.write('vol', 0, Buffer.alloc(4096, 6));
    expect(b.backend.bytesOf('vol')[0]).toBe(6);
    a.backend.releaseAll();
  });

  it('takes ESHUTDOWN (a fenced or stopping controller) as "go to the other one"', async () => {
    const { a, b, c } = await pairClient();
    a.backend.failWith('FENCED');
    await c.write('vol', 512, Buffer.from('moved'));
    expect(b.backend.bytesOf('vol').subarray(512, 517).toString()).toBe('moved');
    expect(c.currentController).toBe('B');
  });

  it('moves on from a controller that does not answer in time', async () => {
    const { a, b, c } = await pairClient({ timeoutMs: 150 });
    await c.open('vol');
    a.backend.holding = true;
    expect((await c.read('vol', 0, 16)).length).toBe(16);
    expect(c.currentController).toBe('B');
    a.backend.releaseAll();
  });

  it('does not retry an error that is the answer (an unknown export, EIO)', async () => {
    const { a, b, c } = await pairClient();
    await expect(c.read('nope', 0, 1)).rejects.toMatchObject({ code: 'UNKNOWN_GUID' });
    a.backend.failWith('IO_ERROR');
    await expect(c.write('vol', 0, Buffer.alloc(1))).rejects.toMatchObject({ code: 'IO_ERROR' });
    expect(b.backend.calls.length).toBe(0);
  });

  it('with one controller and no time to retry, fails with NOT_ACTIVE and connects again later', async () => {
    const a = await controller();
    const c = new NbdPairClient({ endpoints: [{ id: 'A', host: '127.0.0.1', port: a.port }], retryForMs: 0 });
    clients.push(c);
    await c.open('vol');
    a.backend.holding = true;
    const w = c.write('vol', 0, Buffer.alloc(8, 1));
    await waitFor(() => a.backend.held.length === 1, 'the write held');
    cutAll(a.server);
    await expect(w).rejects.toMatchObject({ code: 'NOT_ACTIVE' });
    a.backend.holding = false;
    a.backend.releaseAll();
    await c.write('vol', 0, Buffer.alloc(8, 2));
    expect(a.backend.bytesOf('vol')[0]).toBe(2);
  });
});
