// The NBD client against the project's own NBD server over an in-memory
// backend, in this process: the handshake, every command, many requests in
// flight answered out of order, errors, TCP and unix sockets, clean close.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { NbdClient, NbdRequestError, formatNbdUrl, parseNbdUrl } from '../../src/client/nbd-client.js';
import { NbdErrno, NbdFlag } from '../../src/protocol/nbd.js';
import { MemoryNbdBackend } from '../../src/testing/memory-nbd-backend.js';
import { NbdServer } from '../../src/transport/nbd-server.js';
import { captureLog, waitFor } from './transport-helpers.js';

const MiB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'pagepair-nbd-client-'));
const servers: NbdServer[] = [];
const clients: NbdClient[] = [];

async function serve(socket = false): Promise<{ server: NbdServer; backend: MemoryNbdBackend; port: number; socketPath: string | undefined; records: ReturnType<typeof captureLog>['records'] }> {
  const backend = new MemoryNbdBackend([{ name: 'vol', sizeBytes: 4 * MiB }, { name: 'other', sizeBytes: 64 * 1024 }]);
  const { log, records } = captureLog();
  const socketPath = socket ? join(dir, `s${servers.length}.sock`) : undefined;
  const server = new NbdServer({ host: '127.0.0.1', port: 0, log, ...(socketPath !== undefined ? { socketPath } : {}) }, backend);
  servers.push(server);
  const { port } = await server.start();
  return { server, backend, port, socketPath, records };
}

async function open(url: string, opts: Parameters<typeof NbdClient.connect>[1] = {}): Promise<NbdClient> {
  const c = await NbdClient.connect(url, opts);
  clients.push(c);
  return c;
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('NBD URLs', () => {
  it('parses TCP and unix socket forms and prints them back', () => {
    expect(parseNbdUrl('nbd://127.0.0.1:10809/vol')).toEqual({ host: '127.0.0.1', port: 10809, exportName: 'vol' });
    expect(parseNbdUrl('nbd://localhost/vol')).toEqual({ host: 'localhost', port: 10809, exportName: 'vol' });
    expect(parseNbdUrl('nbd+unix:///vol?socket=/tmp/x.sock')).toEqual({ socketPath: '/tmp/x.sock', exportName: 'vol' });
    expect(formatNbdUrl({ socketPath: '/tmp/x.sock', exportName: 'vol' })).toBe('nbd+unix:///vol?socket=/tmp/x.sock');
    expect(() => parseNbdUrl('nbds://h/vol')).toThrow(expect.objectContaining({ code: 'BAD_FIELD' }));
    expect(() => parseNbdUrl('nbd+unix:///vol')).toThrow(expect.objectContaining({ code: 'BAD_FIELD' }));
  });
});

describe('NbdClient', () => {
  it('negotiates the export with NBD_OPT_GO and learns its size, flags and block sizes', async () => {
    const { port } = await serve();
    const c = await open(`nbd://127.0.0.1:${port}/vol`);
    expect(c.sizeBytes).toBe(4 * MiB);
    expect(c.info.transmissionFlags & NbdFlag.SEND_FUA).toBe(NbdFlag.SEND_FUA);
    expect(c.info.transmissionFlags & NbdFlag.CAN_MULTI_CONN).toBe(NbdFlag.CAN_MULTI_CONN);
    expect(c.info.preferredBytes).toBe(4096);
    expect(c.info.maximumPayloadBytes).toBeGreaterThanOrEqual(64 * 1024);
  });

  it('refuses an export that does not exist with UNKNOWN_GUID', async () => {
    const { port } = await serve();
    await expect(NbdClient.connect(`nbd://127.0.0.1:${port}/missing`)).rejects.toMatchObject({ code: 'UNKNOWN_GUID' });
  });

  it('writes, reads, write-zeroes, trims and flushes, with FUA, over TCP', async () => {
    const { port, backend } = await serve();
    const c = await open(`nbd://127.0.0.1:${port}/vol`);
    const data = Buffer.alloc(10_000, 0xab);
    await c.write(1234, data, { fua: true });
    expect(backend.bytesOf('vol').subarray(1234, 11_234).equals(data)).toBe(true);
    expect((await c.read(1234, 10_000)).equals(data)).toBe(true);
    await c.writeZeroes(2000, 100, { fua: true });
    await c.trim(3000, 100);
    await c.flush();
    const back = await c.read(1234, 10_000);
    expect(back.subarray(2000 - 1234, 2100 - 1234).every((b) => b === 0)).toBe(true);
    expect(back.subarray(3000 - 1234, 3100 - 1234).every((b) => b === 0)).toBe(true);
    expect(back[2100 - 1234]).toBe(0xab);
    const ops = backend.calls.map((x) => `${x.op}${x.fua ? '+fua' : ''}`);
    expect(ops).toEqual(['write+fua', 'read', 'writeZeroes+fua', 'writeZeroes', 'flush', 'read']);
    expect((await c.read(0, 0)).length).toBe(0);
  });

  it('works over the unix socket', async () => {
    const { socketPath } = await serve(true);
    const c = await open(`nbd+unix:///other?socket=${socketPath!}`);
    expect(c.sizeBytes).toBe(64 * 1024);
    await c.write(0, Buffer.from('pagepair'));
    expect((await c.read(0, 8)).toString()).toBe('pagepair');
  });

  it('keeps many requests in flight, matched by cookie when answered out of order, at most inflightMax on the wire', async () => {
    const { port, backend } = await serve();
    const c = await open(`nbd://127.0.0.1:${port}/vol`, { inflightMax: 8 });
    backend.holding = true;
    const writes = Array.from({ length: 40 }, (_, i) => c.write(i * 4096, Buffer.alloc(4096, i + 1)));
    await waitFor(() => backend.held.length === 8, 'the backend');
    expect(c.inflight).toBe(40);
    // Answer the held ones newest first, again and again, until all are done.
    while (backend.held.length > 0 || c.inflight > 0) {
      const held = backend.held.splice(0).reverse();
      for (const h of held) h.release();
      await new Promise((r) => setTimeout(r, 5));
    }
    await Promise.all(writes);
    backend.holding = false;
    const reads = await Promise.all(Array.from({ length: 40 }, (_, i) => c.read(i * 4096, 4096)));
    reads.forEach((r, i) => expect(r.every((b) => b === i + 1)).toBe(true));
  });

  it('turns error replies into typed errors carrying the errno; the connection goes on', async () => {
    const { port, backend } = await serve();
    const c = await open(`nbd://127.0.0.1:${port}/vol`);
    backend.failWith('FENCED');
    const err = await c.write(0, Buffer.alloc(512)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdRequestError);
    expect(err).toMatchObject({ code: 'SHUTTING_DOWN', errno: NbdErrno.ESHUTDOWN });
    backend.failWith('IO_ERROR');
    await expect(c.read(0, 512)).rejects.toMatchObject({ code: 'IO_ERROR', errno: NbdErrno.EIO });
    backend.failWith('NO_SPACE');
    await expect(c.flush()).rejects.toMatchObject({ code: 'NO_SPACE', errno: NbdErrno.ENOSPC });
    // A write to a snapshot: READ_ONLY, not a failed connection to try the other controller on.
    backend.failWith('READ_ONLY');
    await expect(c.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'READ_ONLY', errno: NbdErrno.EPERM });
    expect(c.isOpen).toBe(true);
    expect((await c.read(0, 4)).length).toBe(4);
  });

  it('checks ranges and sizes before sending', async () => {
    const { port } = await serve();
    const c = await open(`nbd://127.0.0.1:${port}/other`, { payloadBytesMax: 16 * 1024 });
    expect(() => c.read(60 * 1024, 8 * 1024)).toThrow(expect.objectContaining({ code: 'OUT_OF_RANGE' }));
    await expect(c.write(0, Buffer.alloc(32 * 1024))).rejects.toMatchObject({ code: 'TOO_LARGE' });
    expect(() => c.read(-1, 1)).toThrow(expect.objectContaining({ code: 'BAD_FIELD' }));
  });

  it('fails everything in flight with NOT_ACTIVE when the connection is lost', async () => {
    const { port, backend, server } = await serve();
    const c = await open(`nbd://127.0.0.1:${port}/vol`);
    let closedWith: unknown = 'not yet';
    c.onClosed((e) => (closedWith = e));
    backend.holding = true;
    const inflight = [c.write(0, Buffer.alloc(4096, 1)), c.read(0, 4096)];
    await waitFor(() => backend.held.length === 2, 'the backend');
    for (const conn of (server as unknown as { conns: Set<{ destroy(r: string): void }> }).conns) conn.destroy('test cut');
    for (const p of inflight) await expect(p).rejects.toMatchObject({ code: 'NOT_ACTIVE' });
    expect(c.isOpen).toBe(false);
    expect(closedWith).toMatchObject({ code: 'NOT_ACTIVE' });
    await expect(c.read(0, 1)).rejects.toMatchObject({ code: 'NOT_ACTIVE' });
    backend.releaseAll();
  });

  it('closes cleanly: waits for what is in flight, then NBD_CMD_DISC', async () => {
    const { port, backend, records, server } = await serve();
    const c = await open(`nbd://127.0.0.1:${port}/vol`);
    backend.holding = true;
    const w = c.write(0, Buffer.alloc(4096, 7));
    await waitFor(() => backend.held.length === 1, 'the backend');
    const closed = c.close();
    await expect(c.read(0, 1)).rejects.toMatchObject({ code: 'NOT_ACTIVE' });
    backend.releaseAll();
    await w;
    await closed;
    await waitFor(() => server.connections === 0, 'the backend');
    const rec = records.find((r) => r.msg === 'nbd connection closed');
    expect(rec?.inflightDropped).toBe(0);
    expect(backend.bytesOf('vol')[0]).toBe(7);
  });

  it('times a request out with TIMEOUT and drops the connection', async () => {
    const { port, backend } = await serve();
    const c = await open(`nbd://127.0.0.1:${port}/vol`, { requestTimeoutMs: 100 });
    backend.holding = true;
    await expect(c.read(0, 512)).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(c.isOpen).toBe(false);
    backend.releaseAll();
  });
});
