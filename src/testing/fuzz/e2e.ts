// The slower pass of each socket target over real sockets on 127.0.0.1, so
// that the in-process seams are not all that is tested: the same cases, sent
// by a ws client (frames as messages, splits cutting a message in two) or
// by a TCP socket (NBD, each split its own write). Oracles: the runner's
// (nothing escapes, nothing logged at error, no hang) and the target still
// serving at the end; the byte-level checks are the in-process targets'.

import net from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { decode, encode } from '../../protocol/codec.js';
import { authProof } from '../../protocol/handshake.js';
import { DEFAULT_LIMITS } from '../../protocol/limits.js';
import { PROTOCOL_VERSION, Role } from '../../protocol/messages.js';
import type { Message } from '../../protocol/messages.js';
import { ClientEndpoint } from '../../transport/client-endpoint.js';
import { PeerLink } from '../../transport/peer-link.js';
import { countingLogger } from './fakes.js';
import { chunksOf, messagesOf, OracleFailure } from './runner.js';
import type { FuzzCase, FuzzTarget, Splits, TargetInstance } from './runner.js';
import { CLIENT_TOKEN, clientCases } from './target-client.js';
import { checkHandshakeReplies, nbdCases, nbdServers, nbdServesWriteRead } from './target-nbd.js';
import type { NbdServer } from '../../transport/nbd-server.js';
import { PEER_PAIR_ID, PEER_SECRET, peerCases } from './target-peer.js';
import type { PeerMeta } from './target-peer.js';
import { MemorySocket } from './fakes.js';

const UPGRADE = Buffer.from(
  'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Key: cGFnZXBhaXItZnV6ei1rZXk=\r\nSec-WebSocket-Version: 13\r\n\r\n',
  'latin1',
);

/** One binary ws message as a client sends it: masked (with a zero key, so the payload reads as it is). */
export function wsClientFrame(payload: Buffer): Buffer {
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x82, 0x80 | n]) : n < 0x10000 ? Buffer.from([0x82, 0x80 | 126, n >> 8, n & 0xff]) : Buffer.alloc(10);
  if (n >= 0x10000) {
    head[0] = 0x82;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(n), 2);
  }
  return Buffer.concat([head, Buffer.alloc(4), payload]);
}

/**
 * Sends the messages as raw bytes on a fresh TCP connection, the upgrade
 * request and the ws frames in one stream, cut at the splits (shifted past
 * the upgrade: each cut falls inside the frames); then waits for the server
 * to close, or for quiet.
 */
async function sendRawWs(port: number, messages: readonly Buffer[], splits: Splits, quietMs: number): Promise<void> {
  const stream = Buffer.concat([UPGRADE, ...messages.map(wsClientFrame)]);
  const sock = net.connect({ host: '127.0.0.1', port });
  sock.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
  await new Promise<void>((resolve) => sock.once('connect', () => resolve()).once('close', () => resolve()));
  for (const chunk of chunksOf(stream, splits.map((s) => s + UPGRADE.length))) {
    if (sock.destroyed) break;
    sock.write(chunk);
    await new Promise((resolve) => setImmediate(resolve));
  }
  await hangUpAfter(closed, quietMs, () => sock.destroy());
}

/** Waits for the server to close the connection or for quietMs of quiet, then closes it from this side and waits until it is closed. */
async function hangUpAfter(closed: Promise<void>, quietMs: number, hangUp: () => void): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, quietMs)))]);
  clearTimeout(timer);
  hangUp();
  await closed;
}

/** A ws client connected to the server at port, and the messages it has received so far. */
async function openWsClient(port: number): Promise<{ ws: WebSocket; got: Buffer[] }> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false });
  const got: Buffer[] = [];
  ws.on('message', (d: Buffer) => got.push(d));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  return { ws, got };
}

function frames(msgs: readonly Message[]): Buffer[] {
  return msgs.map((m) => encode(m));
}

/**
 * The peer link on real sockets, both sides: listener-side cases go to a
 * listening PeerLink (B) as raw ws bytes; dialer-side cases are the answers
 * of a hostile ws server that a dialing PeerLink (A) keeps dialing.
 */
class PeerE2e implements TargetInstance {
  readonly cases = peerCases;
  private readonly logged = countingLogger();
  private ups = 0;
  private listener!: PeerLink;
  private dialer!: PeerLink;
  private hostile!: WebSocketServer;
  private readonly dialed: WebSocket[] = [];
  private dialWaiter: (() => void) | undefined;
  private port = 0;

  async start(): Promise<this> {
    const handlers = { onUp: () => void this.ups++, onDown: () => undefined, onMessage: () => undefined };
    const common = { pairId: PEER_PAIR_ID, secret: PEER_SECRET, pid: 1, limits: DEFAULT_LIMITS, log: this.logged.log };
    this.listener = new PeerLink({ ...common, selfId: 2, partnerId: 1, listen: { host: '127.0.0.1', port: 0 }, partner: { host: '127.0.0.1', port: 1 }, reconnectMs: 60_000 }, handlers);
    this.port = (await this.listener.start()).port;
    this.hostile = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
    this.hostile.on('connection', (ws) => {
      ws.on('error', () => undefined);
      this.dialed.push(ws);
      this.dialWaiter?.();
    });
    const hostilePort = await new Promise<number>((resolve) => this.hostile.once('listening', () => resolve((this.hostile.address() as { port: number }).port)));
    this.dialer = new PeerLink({ ...common, selfId: 1, partnerId: 2, listen: { host: '127.0.0.1', port: 0 }, partner: { host: '127.0.0.1', port: hostilePort }, reconnectMs: 1 }, handlers);
    await this.dialer.start();
    return this;
  }

  /** The dialer's next connection to the hostile server. */
  private async nextDialed(): Promise<WebSocket> {
    const deadline = Date.now() + 3000;
    while (this.dialed.length === 0) {
      if (Date.now() > deadline) throw new OracleFailure('the dialing peer link stopped dialing');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 50);
        this.dialWaiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    return this.dialed.shift()!;
  }

  async run(c: FuzzCase, splits: Splits): Promise<void> {
    const meta = c.meta as PeerMeta;
    const before = this.ups;
    if (meta.side === 'listener') {
      await sendRawWs(this.port, chunksOf(c.bytes, c.boundaries), splits, 15);
    } else {
      const ws = await this.nextDialed();
      const closed = new Promise<void>((resolve) => (ws.readyState === WebSocket.CLOSED ? resolve() : ws.once('close', () => resolve())));
      for (const m of messagesOf(c, splits)) if (ws.readyState === WebSocket.OPEN) ws.send(m);
      await hangUpAfter(closed, 15, () => ws.terminate());
    }
    // No case carries a valid proof over a real socket (the nonces are the links' own): nothing may come up.
    if (this.ups !== before) throw new OracleFailure('the peer link came up without a valid proof');
  }

  async stillServes(): Promise<boolean> {
    const { ws, got } = await openWsClient(this.port);
    const nonce = Buffer.alloc(32, 3);
    const before = this.ups;
    ws.send(encode({ kind: 'HELLO', requestId: 0, epoch: 0, sender: 1, flags: 0, protocolVersion: PROTOCOL_VERSION, pairId: PEER_PAIR_ID, controllerId: 1, nonce, pid: 1 }));
    await waitUntil(() => got.length >= 1, 2000);
    const reply = decode(got[0]!);
    if (reply.kind !== 'HELLO_REPLY') return false;
    ws.send(encode({ kind: 'AUTH', requestId: 0, epoch: 0, sender: 1, flags: 0, proof: authProof(PEER_SECRET, PEER_PAIR_ID, 1, 2, nonce, reply.nonce) }));
    await waitUntil(() => this.ups > before, 2000);
    ws.terminate();
    return this.ups > before;
  }

  errorsLogged(): readonly string[] {
    return this.logged.errors;
  }

  async close(): Promise<void> {
    await this.dialer.close();
    await this.listener.close();
    for (const ws of this.hostile.clients) ws.terminate();
    await new Promise<void>((resolve) => this.hostile.close(() => resolve()));
  }
}

class ClientE2e implements TargetInstance {
  readonly cases = clientCases;
  private readonly logged = countingLogger();
  private endpoint!: ClientEndpoint;
  private port = 0;

  async start(): Promise<this> {
    this.endpoint = new ClientEndpoint({
      host: '127.0.0.1',
      port: 0,
      token: CLIENT_TOKEN,
      controllerId: 2,
      pairId: PEER_PAIR_ID,
      limits: DEFAULT_LIMITS,
      inflightMax: 4,
      log: this.logged.log,
      getRole: () => Role.MIRRORED,
      onRequest: (conn, msg) => conn.reply({ kind: 'ERROR', requestId: msg.requestId, epoch: 0, sender: 2, flags: 0, code: 20, requestType: 0, message: `no ${msg.kind}` }),
    });
    this.port = (await this.endpoint.start()).port;
    return this;
  }

  async run(c: FuzzCase, splits: Splits): Promise<void> {
    const msgs = chunksOf(c.bytes, c.boundaries);
    const withHello = (c.meta as { authFirst: boolean }).authFirst
      ? [...frames([{ kind: 'CLIENT_HELLO', requestId: 1, epoch: 0, sender: 0, flags: 0, protocolVersion: PROTOCOL_VERSION, token: CLIENT_TOKEN, clientName: 'e2e' }]), ...msgs]
      : msgs;
    await sendRawWs(this.port, withHello, splits, 15);
  }

  async stillServes(): Promise<boolean> {
    const { ws, got } = await openWsClient(this.port);
    ws.send(encode({ kind: 'CLIENT_HELLO', requestId: 1, epoch: 0, sender: 0, flags: 0, protocolVersion: PROTOCOL_VERSION, token: CLIENT_TOKEN, clientName: 'e2e' }));
    ws.send(encode({ kind: 'C_STATUS', requestId: 2, epoch: 0, sender: 0, flags: 0 }));
    await waitUntil(() => got.length >= 2, 2000);
    ws.terminate();
    return got.length >= 2 && decode(got[0]!).kind === 'CLIENT_HELLO_REPLY' && decode(got[1]!).requestId === 2;
  }

  errorsLogged(): readonly string[] {
    return this.logged.errors;
  }

  close(): Promise<void> {
    return this.endpoint.close();
  }
}

class NbdE2e implements TargetInstance {
  readonly cases = nbdCases;
  private readonly logged = countingLogger();
  private readonly servers = nbdServers(this.logged.log);
  private ports = { plain: 0, tlsRequired: 0 };

  async start(): Promise<this> {
    this.ports = { plain: (await this.servers.plain.start()).port, tlsRequired: (await this.servers.tlsRequired.start()).port };
    return this;
  }

  async run(c: FuzzCase, splits: Splits): Promise<void> {
    const port = (c.meta as { server: string }).server === 'plain' ? this.ports.plain : this.ports.tlsRequired;
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.on('error', () => undefined);
    const out: Buffer[] = [];
    sock.on('data', (d: Buffer) => out.push(d));
    const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
    await new Promise<void>((resolve) => sock.once('connect', () => resolve()));
    for (const chunk of messagesOf(c, splits)) {
      if (sock.destroyed) break;
      sock.write(chunk);
      // After a cut the server has answered (STARTTLS waits for its ACK), as a client would wait.
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    await hangUpAfter(closed, 15, () => sock.destroy());
    checkHandshakeReplies(Buffer.concat(out));
  }

  async stillServes(): Promise<boolean> {
    // Over a real socket: the in-memory helper's protocol, with a TCP socket under it.
    const open = (): MemorySocket => {
      const mem = new MemorySocket();
      const sock = net.connect({ host: '127.0.0.1', port: this.ports.plain });
      sock.on('error', () => undefined);
      // What the server sends lands in mem's output; what the check inputs goes to the server.
      sock.on('data', (d: Buffer) => mem.write(d));
      mem.on('close', () => sock.destroy());
      mem.input = (chunk: Buffer): void => void sock.write(chunk);
      return mem;
    };
    return nbdServesWriteRead(open);
  }

  errorsLogged(): readonly string[] {
    return this.logged.errors;
  }

  async close(): Promise<void> {
    await this.servers.plain.close();
    await this.servers.tlsRequired.close();
  }
}

async function waitUntil(cond: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
}

export const E2E_TARGETS: Readonly<Record<string, FuzzTarget>> = {
  'peer-handshake': { name: 'peer-handshake (tcp)', description: 'the peer cases against a listening PeerLink', setup: () => new PeerE2e().start() },
  'client-handshake': { name: 'client-handshake (tcp)', description: 'the client cases against a listening ClientEndpoint', setup: () => new ClientE2e().start() },
  nbd: { name: 'nbd (tcp)', description: 'the NBD cases against a listening NbdServer', setup: () => new NbdE2e().start() },
};
