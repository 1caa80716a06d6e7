// Issue 11, finding 4 (and 2): the bounds on the two WebSocket listeners,
// each checked on the client listener and on the peer listener: the
// connection cap, the bytes a connection may send before it authenticates,
// the time it has for the upgrade and the handshake, the unfinished
// handshakes one source address may hold, the partner's address let in
// whatever strangers hold, and the peer link dropped when the partner stops
// reading. Strangers connect from other loopback addresses (127.0.0.2, ...),
// the partner from 127.0.0.1.

import { connect as tcpConnect, type Socket } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { crc32c } from '../../src/protocol/crc32c.js';
import { encode } from '../../src/protocol/codec.js';
import { PROTOCOL_VERSION, type Message, type WritePage } from '../../src/protocol/messages.js';
import type { PeerLink, PeerLinkOptions } from '../../src/transport/peer-link.js';
import type { ListenerCounters } from '../../src/transport/ws-listener.js';
import { PAIR_ID, TOKEN, testClientEndpoint, testPeerLink } from './helpers/endpoints.js';
import { captureLog, sleep, waitFor, type LogRecord } from './transport-helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

interface Bounds {
  connectionsMax: number;
  preAuthBytesMax: number;
  handshakeTimeoutMs: number;
  handshakesPerSourceMax: number;
}
const LOOSE: Bounds = { connectionsMax: 64, preAuthBytesMax: 64 * KiB, handshakeTimeoutMs: 10_000, handshakesPerSourceMax: 64 };

interface Rig {
  port: number;
  counters(): ListenerCounters;
  records: LogRecord[];
}

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function clientRig(bounds: Bounds): Promise<Rig & { requests: Message[] }> {
  const { log, records } = captureLog();
  const requests: Message[] = [];
  const endpoint = testClientEndpoint({
    connectionsMax: bounds.connectionsMax,
    helloTimeoutMs: bounds.handshakeTimeoutMs,
    bounds: { preAuthBytesMax: bounds.preAuthBytesMax, handshakesPerSourceMax: bounds.handshakesPerSourceMax },
    log,
    onRequest: (conn, msg) => {
      requests.push(msg);
      conn.reply({ kind: 'C_WRITE_REPLY', requestId: msg.requestId, epoch: 1, sender: 1, flags: 0 } as Message);
    },
  });
  const { port } = await endpoint.start();
  cleanups.push(() => endpoint.close());
  return { port, counters: () => endpoint.listenerCounters!, records, requests };
}

function peerLink(opts: Partial<PeerLinkOptions> & { selfId: number; partnerId: number }, log = captureLog()): { link: PeerLink; downs: string[]; records: LogRecord[] } {
  const downs: string[] = [];
  const link = testPeerLink({ log: log.log, ...opts }, { onDown: (reason) => downs.push(reason) });
  cleanups.push(() => link.close());
  return { link, downs, records: log.records };
}

/** B (id 2), listening; its partner A is configured at 127.0.0.1. */
async function peerRig(bounds: Bounds): Promise<Rig & { link: PeerLink }> {
  const { link, records } = peerLink({
    selfId: 2,
    partnerId: 1,
    handshakeTimeoutMs: bounds.handshakeTimeoutMs,
    bounds: { connectionsMax: bounds.connectionsMax, preAuthBytesMax: bounds.preAuthBytesMax, handshakesPerSourceMax: bounds.handshakesPerSourceMax },
  });
  const { port } = await link.start();
  return { port, counters: () => link.listenerCounters!, records, link };
}

const RIGS: [string, (b: Bounds) => Promise<Rig>][] = [
  ['client', clientRig],
  ['peer', peerRig],
];

/** A TCP connection from `from`, and its close. */
async function rawTcp(port: number, from = '127.0.0.2'): Promise<{ socket: Socket; closed: Promise<void> }> {
  const socket = tcpConnect({ host: '127.0.0.1', port, localAddress: from });
  socket.on('error', () => undefined);
  cleanups.push(() => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('close', () => reject(new Error('closed before connect')));
  });
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return { socket, closed };
}

/** A WebSocket from `from` that finishes the upgrade and then says nothing. */
function upgraded(port: number, from = '127.0.0.2'): { ws: WebSocket; opened: Promise<boolean>; closed: Promise<void> } {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false, localAddress: from });
  ws.on('error', () => undefined);
  cleanups.push(() => ws.terminate());
  const opened = new Promise<boolean>((resolve) => {
    ws.once('open', () => resolve(true));
    ws.once('close', () => resolve(false));
  });
  const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
  return { ws, opened, closed };
}

function hello(ws: WebSocket): void {
  ws.send(encode({ kind: 'CLIENT_HELLO', requestId: 1, epoch: 0, sender: 0, flags: 0, protocolVersion: PROTOCOL_VERSION, token: TOKEN, clientName: 't' }));
}

describe.each(RIGS)('%s listener', (name, rig) => {
  it('drops connections past connectionsMax at once, before reading a byte', async () => {
    const r = await rig({ ...LOOSE, connectionsMax: 4 });
    for (let i = 0; i < 4; i++) await rawTcp(r.port);
    await waitFor(() => r.counters().open === 4, 'four open');
    const extra = await Promise.all(Array.from({ length: 6 }, () => rawTcp(r.port)));
    await Promise.all(extra.map((e) => e.closed));
    // Dropped for the cap, not cut by a timeout (handshakeTimeoutMs is 10 s): nothing else could close them.
    expect(r.counters()).toMatchObject({ open: 4, overCap: 6, handshakeTimeout: 0, preAuthBytes: 0, badUpgrade: 0 });
    expect(r.records.filter((x) => x.msg === `${name} connection dropped: too many open`)).toHaveLength(6);
  });

  it('cuts a connection that sends more than preAuthBytesMax before authenticating: a 1 MiB frame is never buffered whole', async () => {
    const r = await rig({ ...LOOSE, preAuthBytesMax: 16 * KiB });
    const big = upgraded(r.port);
    expect(await big.opened).toBe(true);
    big.ws.send(Buffer.alloc(MiB, 0x5a), { binary: true });
    await big.closed;
    expect(r.counters().preAuthBytes).toBe(1);
    const cut = r.records.find((x) => x.reason === 'preAuthBytes')!;
    // Cut within one socket read past the bound, far from the frame's megabyte.
    expect(cut.bytes as number).toBeGreaterThan(16 * KiB);
    expect(cut.bytes as number).toBeLessThan(16 * KiB + 256 * KiB);
    // Nothing reached the decoder: no frame was refused, none was handed on.
    expect(r.records.some((x) => /refused|bad frame/.test(String(x.reason ?? '')) && x.reason !== 'preAuthBytes')).toBe(false);
    expect(r.records.some((x) => x.msg === 'client connection refused' || x.msg === 'peer handshake refused')).toBe(false);
  });

  it('cuts a raw socket that never sends the upgrade, and one that stops halfway, after handshakeTimeoutMs', async () => {
    const r = await rig({ ...LOOSE, handshakeTimeoutMs: 300 });
    // The listener's clock is a fake one from here: the sockets are real, the 300 ms are not.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const silent = await rawTcp(r.port);
    const half = await rawTcp(r.port, '127.0.0.3');
    half.socket.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n');
    // Both accepted, so both timers run.
    await waitFor(() => r.counters().open === 2, 'both accepted');
    vi.advanceTimersByTime(299);
    expect(r.counters()).toMatchObject({ open: 2, handshakeTimeout: 0 });
    vi.advanceTimersByTime(1);
    expect(r.counters().handshakeTimeout).toBe(2);
    await Promise.all([silent.closed, half.closed]);
    expect(r.counters().open).toBe(0);
  });

  it('answers an HTTP request that is not a WebSocket upgrade with 400, and cuts a request head past 8 KiB', async () => {
    const r = await rig(LOOSE);
    const plain = await rawTcp(r.port);
    let answer = '';
    plain.socket.on('data', (d: Buffer) => (answer += d.toString('latin1')));
    plain.socket.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    await plain.closed;
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    const endless = await rawTcp(r.port, '127.0.0.3');
    endless.socket.write(`GET / HTTP/1.1\r\nX-Long: ${'a'.repeat(9000)}`);
    await endless.closed;
    expect(r.counters().badUpgrade).toBe(2);
    expect(r.counters().open).toBe(0);
  });

  it('a connection that upgrades but never authenticates is cut too (within the time plus the link\'s grace)', async () => {
    const r = await rig({ ...LOOSE, handshakeTimeoutMs: 300 });
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const mute = upgraded(r.port);
    expect(await mute.opened).toBe(true);
    // The time, then the link's grace for its own answer (HANDSHAKE_ANSWER_GRACE_MS, 500): cut by then, on a fake clock.
    vi.advanceTimersByTime(300 + 500);
    await mute.closed;
    await waitFor(() => r.counters().open === 0, 'nothing left open');
  });
});

describe('after authentication', () => {
  it('a client frame is bounded by frameBytesMax, no longer by preAuthBytesMax: a 1 MiB write arrives', async () => {
    const r = await clientRig({ ...LOOSE, preAuthBytesMax: 16 * KiB });
    const c = upgraded(r.port);
    expect(await c.opened).toBe(true);
    hello(c.ws);
    await waitFor(() => r.counters().authenticated === 1, 'authenticated');
    const guid = '00000000-0000-4000-8000-000000000001';
    c.ws.send(encode({ kind: 'C_WRITE', requestId: 2, epoch: 0, sender: 0, flags: 0, guid, offset: 0, pointerId: 0, clientId: 0, clientSeq: 0, data: Buffer.alloc(MiB, 1) }));
    await waitFor(() => r.requests.length === 1, 'the write handed on');
    expect(r.requests[0]).toMatchObject({ kind: 'C_WRITE' });
    expect(r.counters().preAuthBytes).toBe(0);
  });
});

describe('handshakes per source', () => {
  it('peer: past handshakesPerSourceMax from one address the oldest gives way', async () => {
    const r = await peerRig({ ...LOOSE, handshakesPerSourceMax: 2 });
    const holders = [];
    for (let i = 0; i < 5; i++) {
      const h = upgraded(r.port);
      await h.opened;
      holders.push(h);
    }
    await Promise.all(holders.slice(0, 3).map((h) => h.closed));
    expect(r.counters()).toMatchObject({ perSource: 3, handshaking: 2 });
    // Another address has its own slots.
    const other = upgraded(r.port, '127.0.0.3');
    expect(await other.opened).toBe(true);
    expect(r.counters()).toMatchObject({ perSource: 3, handshaking: 3 });
  });

  it('client: past handshakesPerSourceMax a connection waits for a slot of its address; other addresses are served meanwhile', async () => {
    const r = await clientRig({ ...LOOSE, handshakesPerSourceMax: 2 });
    const holders = [upgraded(r.port), upgraded(r.port)];
    for (const h of holders) expect(await h.opened).toBe(true);
    const third = upgraded(r.port);
    let thirdOpen = false;
    void third.opened.then((o) => (thirdOpen = o));
    // Accepted, but not in a handshake: it waits for a slot of its address.
    await waitFor(() => r.counters().accepted === 3, 'the third accepted');
    expect(r.counters().handshaking).toBe(2);
    expect(thirdOpen).toBe(false);
    // A client on another address is not held up by them.
    const other = upgraded(r.port, '127.0.0.3');
    expect(await other.opened).toBe(true);
    hello(other.ws);
    await waitFor(() => r.counters().authenticated === 1, 'the other address authenticated');
    // One holder goes: the waiting one gets its slot.
    holders[0]!.ws.terminate();
    expect(await third.opened).toBe(true);
    expect(r.counters().perSource).toBe(0);
  });
});

describe('the partner is let in whatever strangers hold', () => {
  it('at the connection cap, full of strangers in their handshakes, the partner dials and the link comes up', async () => {
    const b = await peerRig({ connectionsMax: 6, preAuthBytesMax: 64 * KiB, handshakeTimeoutMs: 30_000, handshakesPerSourceMax: 1 });
    for (let i = 2; i <= 7; i++) expect(await upgraded(b.port, `127.0.0.${i}`).opened).toBe(true);
    // A seventh stranger finds the door shut.
    const late = upgraded(b.port, '127.0.0.8');
    expect(await late.opened).toBe(false);
    expect(b.counters()).toMatchObject({ open: 6, overCap: 1 });
    const a = peerLink({ selfId: 1, partnerId: 2, partner: { host: '127.0.0.1', port: b.port } });
    await a.link.start();
    await waitFor(() => a.link.isUp && b.link.isUp, 'the partner up despite the strangers', 10_000);
    // One stranger gave way for it.
    expect(b.counters()).toMatchObject({ open: 6, overCap: 2, authenticated: 1 });
    expect(b.records.some((x) => x.reason === 'overCap' && typeof x.givesWayTo === 'string')).toBe(true);
  });

  it('strangers on the partner\'s own address hold its slots: the partner still comes up (the oldest gives way)', async () => {
    const b = await peerRig({ ...LOOSE, handshakeTimeoutMs: 30_000, handshakesPerSourceMax: 2 });
    for (let i = 0; i < 4; i++) await upgraded(b.port, '127.0.0.1').opened;
    const a = peerLink({ selfId: 1, partnerId: 2, partner: { host: '127.0.0.1', port: b.port } });
    await a.link.start();
    await waitFor(() => a.link.isUp && b.link.isUp, 'the partner up', 10_000);
  });
});

describe('peer link: a partner that stops reading', () => {
  it('is dropped once the bytes queued to it pass bytesBufferedMax, with a logged reason', async () => {
    const b = peerLink({ selfId: 2, partnerId: 1 });
    const { port } = await b.link.start();
    const a = peerLink({ selfId: 1, partnerId: 2, partner: { host: '127.0.0.1', port }, bytesBufferedMax: 2 * MiB, reconnectMs: 60_000 });
    await a.link.start();
    await waitFor(() => a.link.isUp && b.link.isUp, 'the link up');
    // B stops reading its socket (as a paused or wedged partner does).
    const bConn = (b.link as unknown as { current: { socket: Socket } }).current;
    bConn.socket.pause();
    const data = Buffer.alloc(4096, 0xcd);
    const page = { guid: PAIR_ID, page: 0, version: 1, crc: crc32c(data), epoch: 1, pageFlags: 0, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: 0, data };
    const msg: WritePage = { kind: 'WRITE_PAGE', requestId: 1, epoch: 1, sender: 1, flags: 0, pages: Array.from({ length: 16 }, (_, i) => ({ ...page, page: i })) };
    // At most 256 MiB offered, 64 KiB a frame; the kernel's socket buffers take a few MiB first.
    for (let i = 0; i < 4096 && a.link.isUp; i++) {
      a.link.sendMany([{ ...msg, requestId: i + 1 }]);
      if (i % 64 === 63) await sleep(1);
    }
    expect(a.link.isUp).toBe(false);
    expect(a.downs[0]).toMatch(/stopped reading/);
    const rec = a.records.find((x) => x.msg === 'partner does not read the peer link; link dropped')!;
    expect(rec.bufferedBytes as number).toBeGreaterThan(2 * MiB);
    expect(rec.bufferedBytes as number).toBeLessThan(2 * MiB + 128 * KiB);
    bConn.socket.resume();
  });
});

describe('client endpoint: reads held back past replyBytesBufferedMax', () => {
  it('a client asking for 200 reads of 1 MiB and reading nothing has only the bound\'s worth made before it is dropped', async () => {
    const { log, records } = captureLog();
    let handedOn = 0;
    const endpoint = testClientEndpoint({
      inflightMax: 256,
      replyBytesBufferedMax: 8 * MiB,
      log,
      onRequest: (conn, msg) => {
        if (msg.kind !== 'C_READ') return;
        handedOn++;
        // Answered a moment later, as a read from the store is.
        setTimeout(() => conn.reply({ kind: 'C_READ_REPLY', requestId: msg.requestId, epoch: 1, sender: 1, flags: 0, data: Buffer.alloc(msg.length, 3) } as Message), 1);
      },
    });
    const { port } = await endpoint.start();
    cleanups.push(() => endpoint.close());
    const c = upgraded(port);
    expect(await c.opened).toBe(true);
    hello(c.ws);
    await waitFor(() => endpoint.listenerCounters!.authenticated === 1, 'authenticated');
    (c.ws as unknown as { _socket: Socket })._socket.pause();
    const guid = '00000000-0000-4000-8000-000000000001';
    for (let i = 0; i < 200; i++) c.ws.send(encode({ kind: 'C_READ', requestId: 10 + i, epoch: 0, sender: 0, flags: 0, guid, offset: 0, length: MiB, pointerId: 0 }));
    await waitFor(() => records.some((r) => r.msg === 'client does not read its replies; connection dropped'), 'the slow reader dropped', 10_000);
    // Closed, so nothing more can be handed on.
    await waitFor(() => endpoint.connections === 0, 'the connection closed');
    // The bound (8 MiB), one read past it, and what the kernel's socket buffers took.
    expect(handedOn).toBeGreaterThanOrEqual(9);
    expect(handedOn).toBeLessThan(40);
    expect(endpoint.connections).toBe(0);
  });
});
