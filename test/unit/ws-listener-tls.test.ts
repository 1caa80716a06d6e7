// Issue 11, part 4: TLS-PSK on the client link and the peer link. "require"
// refuses plain connections (a plain client is told why), "on" takes both,
// "off" refuses TLS; a wrong key fails the TLS handshake. The peer link's
// key derives from the pair secret, the client link's from the token.

import { type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { PagepairClient, parseControllerUrl } from '../../src/client/client.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import type { Message } from '../../src/protocol/messages.js';
import type { ClientEndpoint, ClientEndpointOptions } from '../../src/transport/client-endpoint.js';
import type { PeerLink, PeerLinkOptions } from '../../src/transport/peer-link.js';
import type { TlsMode } from '../../src/transport/ws-listener.js';
import { TOKEN, testClientEndpoint, testPeerLink } from './helpers/endpoints.js';
import { captureLog, waitFor, type LogRecord } from './transport-helpers.js';

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function endpoint(tlsMode: TlsMode, extra: Partial<ClientEndpointOptions> = {}): Promise<{ port: number; ep: ClientEndpoint; records: LogRecord[] }> {
  const { log, records } = captureLog();
  const ep = testClientEndpoint({
    tlsMode,
    ...extra,
    log,
    onRequest: (conn, msg) => {
      if (msg.kind === 'C_READ') conn.reply({ kind: 'C_READ_REPLY', requestId: msg.requestId, epoch: 1, sender: 1, flags: 0, data: Buffer.alloc(msg.length, 9) } as Message);
    },
  });
  const { port } = await ep.start();
  cleanups.push(() => ep.close());
  return { port, ep, records };
}

async function connect(port: number, opts: { tls?: boolean; token?: string } = {}): Promise<PagepairClient> {
  const c = await PagepairClient.connect({ host: '127.0.0.1', port, token: opts.token ?? TOKEN, timeoutMs: 3000, ...(opts.tls === true ? { tls: true } : {}) });
  cleanups.push(() => c.close());
  return c;
}

async function failure(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a failure');
}

const GUID = '00000000-0000-4000-8000-000000000001';

describe('client link TLS', () => {
  it('wss:// URLs mean TLS, ws:// plain', () => {
    expect(parseControllerUrl('wss://127.0.0.1:7100/')).toEqual({ host: '127.0.0.1', port: 7100, tls: true });
    expect(parseControllerUrl('ws://[::1]:7101')).toEqual({ host: '::1', port: 7101, tls: false });
    expect(() => parseControllerUrl('http://127.0.0.1:7100')).toThrow(/ws:\/\/ or wss:\/\//);
    expect(() => parseControllerUrl('wss://127.0.0.1')).toThrow(/port/);
  });

  it('"require": a TLS client is served; a plain client is refused and told to use TLS', async () => {
    const { port, ep } = await endpoint('require');
    const c = await connect(port, { tls: true });
    expect((await c.read(GUID, 0, 64)).equals(Buffer.alloc(64, 9))).toBe(true);
    const err = await failure(connect(port));
    expect(isPagepairError(err, 'NOT_ALLOWED')).toBe(true);
    expect(err.message).toMatch(/requires TLS/);
    expect(ep.listenerCounters).toMatchObject({ plainUnderRequire: 1 });
  });

  it('"on": plain and TLS clients both work', async () => {
    const { port } = await endpoint('on');
    const plain = await connect(port);
    const tls = await connect(port, { tls: true });
    expect((await plain.read(GUID, 0, 8)).length).toBe(8);
    expect((await tls.read(GUID, 0, 8)).length).toBe(8);
  });

  it('a wrong token fails the TLS handshake (its key derives from the token); "off" refuses TLS', async () => {
    const on = await endpoint('on');
    const err = await failure(connect(on.port, { tls: true, token: 'not-the-token' }));
    expect(isPagepairError(err, 'NOT_ACTIVE')).toBe(true);
    await waitFor(() => (on.ep.listenerCounters?.tlsFailed ?? 0) === 1, 'the TLS failure counted');
    const off = await endpoint('off');
    const err2 = await failure(connect(off.port, { tls: true }));
    expect(err2.message).toMatch(/TLS/);
    expect(off.ep.listenerCounters).toMatchObject({ tlsUnderOff: 1 });
  });
});

function peer(opts: Partial<PeerLinkOptions> & { selfId: number; partnerId: number }): { link: PeerLink; records: LogRecord[] } {
  const { log, records } = captureLog();
  const link = testPeerLink({ log, ...opts });
  cleanups.push(() => link.close());
  return { link, records };
}

describe('peer link TLS', () => {
  it('"require" on both: the link comes up over TLS', async () => {
    const b = peer({ selfId: 2, partnerId: 1, tlsMode: 'require' });
    const { port } = await b.link.start();
    const a = peer({ selfId: 1, partnerId: 2, tlsMode: 'require', partner: { host: '127.0.0.1', port } });
    await a.link.start();
    await waitFor(() => a.link.isUp && b.link.isUp, 'the link up');
    const sockets = [a, b].map((x) => (x.link as unknown as { current: { socket: Socket & { encrypted?: boolean; getProtocol?(): string | null } } }).current.socket);
    for (const s of sockets) {
      expect(s.encrypted).toBe(true);
      expect(s.getProtocol?.()).toMatch(/^TLSv1\.[23]$/);
    }
  });

  it('"require": a plain dialer is refused; a TLS dialer with another secret fails the TLS handshake', async () => {
    const b = peer({ selfId: 2, partnerId: 1, tlsMode: 'require' });
    const { port } = await b.link.start();
    const plain = peer({ selfId: 1, partnerId: 2, tlsMode: 'off', partner: { host: '127.0.0.1', port } });
    await plain.link.start();
    await waitFor(() => (b.link.listenerCounters?.plainUnderRequire ?? 0) >= 1, 'the plain dialer refused');
    await plain.link.close();
    const wrong = peer({ selfId: 1, partnerId: 2, tlsMode: 'require', secret: 'another-secret', partner: { host: '127.0.0.1', port } });
    await wrong.link.start();
    // Refused, it dials again and is refused again: never up.
    await waitFor(() => (b.link.listenerCounters?.tlsFailed ?? 0) >= 2, 'the wrong key refused twice');
    expect(b.link.isUp).toBe(false);
    expect(b.records.some((r) => r.msg === 'peer connection refused: plain, and tls.mode is "require"')).toBe(true);
  });

  it('"on" at the listener: a plain dialer and a TLS dialer both come up', async () => {
    for (const dialerMode of ['off', 'on'] as const) {
      const b = peer({ selfId: 2, partnerId: 1, tlsMode: 'on' });
      const { port } = await b.link.start();
      const a = peer({ selfId: 1, partnerId: 2, tlsMode: dialerMode, partner: { host: '127.0.0.1', port } });
      await a.link.start();
      await waitFor(() => a.link.isUp && b.link.isUp, `the link up (dialer ${dialerMode})`);
      await a.link.close();
      await b.link.close();
    }
  });
});

describe('client link TLS: the reply bound', () => {
  it('a TLS client that stops reading is dropped past replyBytesBufferedMax, as a plain one is', async () => {
    const { port, records } = await endpoint('require', { inflightMax: 256, replyBytesBufferedMax: 8 * 1024 * 1024 });
    const c = await connect(port, { tls: true });
    // Stop reading the TLS socket (and the TCP socket under it).
    const ws = (c as unknown as { ws: { _socket: Socket & { _parent?: Socket } } }).ws;
    ws._socket.pause();
    ws._socket._parent?.pause();
    const reads = Array.from({ length: 64 }, () => c.read(GUID, 0, 1024 * 1024).catch(() => null));
    await waitFor(() => records.some((r) => r.msg === 'client does not read its replies; connection dropped'), 'the TLS slow reader dropped', 15_000);
    const dropped = records.find((r) => r.msg === 'client does not read its replies; connection dropped')!;
    expect(dropped.bufferedBytes as number).toBeGreaterThan(8 * 1024 * 1024);
    expect(dropped.bufferedBytes as number).toBeLessThan(10 * 1024 * 1024);
    ws._socket.resume();
    await Promise.all(reads);
  }, 30_000);
});
