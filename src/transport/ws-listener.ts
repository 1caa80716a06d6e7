// One listener for the peer link and the client endpoint: a TCP server that
// keeps every raw connection on a short leash until the link's own handshake
// says it is authenticated, and only then lets it be an ordinary WebSocket.
//
// The leash, per connection, from the first byte:
// - a cap on open connections (the partner is still let in at the cap: the
//   oldest stranger still in its handshake gives way);
// - bytes sent before authentication (the HTTP upgrade and the handshake
//   frames) counted, and the connection cut past preAuthBytesMax, so a
//   stranger never makes us buffer or decode a large frame;
// - the upgrade and the handshake finished within handshakeTimeoutMs, or cut
//   (a socket that never sends a byte too);
// - unfinished handshakes per source address bounded; past it the oldest of
//   that source gives way, so one address cannot take every slot;
// - TLS-PSK by the first byte (a ClientHello is 0x16, an HTTP request a
//   letter): "off" takes plain only, "on" both, "require" TLS only.
//
// The HTTP upgrade request is read here, not by node:http, so that every
// byte of it passes the count; `ws` gets the socket from handleUpgrade.

import { lookup } from 'node:dns/promises';
import { performance } from 'node:perf_hooks';
import { createServer, type Server, type Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type pino from 'pino';
import { WebSocketServer, type WebSocket } from 'ws';
import { PagepairError } from '../protocol/errors.js';
import { pskServerOptions, TLS_HANDSHAKE_RECORD } from './tls.js';
import { WS_COMMON } from './ws-util.js';

export type TlsMode = 'off' | 'on' | 'require';

export interface WsListenerTls {
  mode: TlsMode;
  /** The identity and key a client presents (TLS-PSK); unused when mode is "off". */
  identity: string;
  key: Buffer;
}

export interface WsListenerBounds {
  /** Connections open at once, in their handshake or authenticated. */
  connectionsMax: number;
  /** Bytes a connection may send before it has authenticated. */
  preAuthBytesMax: number;
  /** From accept to authenticated. */
  handshakeTimeoutMs: number;
  /** Unfinished handshakes one source address may hold at once. */
  handshakesPerSourceMax: number;
}

/**
 * What a connection past its source's handshake slots meets. "evict-oldest":
 * the oldest handshake of that source is cut (the peer port, where the one
 * connection that matters is the newest: the partner dialing again). "wait":
 * it is not read until a slot of its source frees, within its own handshake
 * time (the client port, where a tool opens many connections at once).
 */
export type OverSourcePolicy = 'evict-oldest' | 'wait';

export interface WsListenerOptions extends WsListenerBounds {
  /** 'peer' or 'client': names the listener in logs. */
  name: string;
  host: string;
  /** 0 = any free port (tests). */
  port: number;
  /** `ws` maxPayload once authenticated (limits.frameBytesMax). */
  maxPayload: number;
  tls: WsListenerTls;
  overSource: OverSourcePolicy;
  /**
   * Host names or addresses always let in, even at the connection cap and
   * whatever strangers hold (the peer listener: the partner's peer host).
   * Resolved when the listener starts.
   */
  trustedHosts?: readonly string[];
  log: pino.Logger;
  /** A connection that finished its WebSocket upgrade; call accepted.authenticated() once its handshake succeeds. */
  onConnection(ws: WebSocket, accepted: AcceptedConnection): void;
}

export interface AcceptedConnection {
  /** host:port of the other side. */
  readonly remote: string;
  /** The other side's address, as counted against handshakesPerSourceMax. */
  readonly source: string;
  readonly tls: boolean;
  /** The socket under the WebSocket (a TLSSocket when tls). */
  readonly socket: Socket;
  /** performance.now() when the TCP connection was accepted: the handshake time counts from here. */
  readonly acceptedAtMs: number;
  /** The link's handshake succeeded: the pre-authentication bounds no longer apply. */
  authenticated(): void;
}

/** Why connections were refused or cut, counted per listener (shown in status). */
export interface ListenerCounters {
  /** Open connections now. */
  open: number;
  /** Connections in their handshake now. */
  handshaking: number;
  accepted: number;
  authenticated: number;
  overCap: number;
  preAuthBytes: number;
  handshakeTimeout: number;
  perSource: number;
  plainUnderRequire: number;
  tlsUnderOff: number;
  tlsFailed: number;
  badUpgrade: number;
}

export type RefusalReason = Exclude<keyof ListenerCounters, 'open' | 'handshaking' | 'accepted' | 'authenticated'>;

/** The log message of each refusal, after the listener's name ("peer", "client"). */
const REFUSAL_TEXT: Record<RefusalReason, string> = {
  overCap: 'connection dropped: too many open',
  preAuthBytes: 'connection cut: it sent more than preAuthBytesMax before authenticating',
  handshakeTimeout: 'connection cut: upgrade and handshake not finished within handshakeTimeoutMs',
  perSource: 'handshake dropped: every slot was taken, the oldest gives way',
  plainUnderRequire: 'connection refused: plain, and tls.mode is "require"',
  tlsUnderOff: 'connection refused: TLS, and tls.mode is "off"',
  tlsFailed: 'connection refused: TLS handshake failed (wrong key, or not pagepair)',
  badUpgrade: 'connection refused: not a WebSocket upgrade request',
};

/**
 * Refusals of one kind logged per interval; the ones past it are only
 * counted, and the next record says how many, so a flood cannot flood the log.
 */
export const REFUSAL_LOGS_PER_INTERVAL = 32;
export const REFUSAL_LOG_INTERVAL_MS = 1000;
/** A connection upgraded and still in the link's handshake at handshakeTimeoutMs gets this long for the link's own TIMEOUT answer. */
const HANDSHAKE_ANSWER_GRACE_MS = 500;

/** The longest HTTP upgrade request read (pagepair's dialers send about 200 bytes). */
const UPGRADE_HEAD_BYTES_MAX = 8 * 1024;
const HEAD_END = Buffer.from('\r\n\r\n');
const NOT_TLS_REPLY =
  'HTTP/1.1 426 Upgrade Required\r\nUpgrade: TLS/1.3, HTTP/1.1\r\nConnection: close\r\nX-Pagepair-Refused: tls-required\r\nContent-Type: text/plain\r\nContent-Length: 58\r\n\r\n' +
  'this controller requires TLS: connect with wss:// (--tls)\r\n';

/** An IPv4 address as the kernel reports it on a dual-stack socket, made plain. */
export function normalizeAddress(address: string | undefined): string {
  if (address === undefined) return 'unknown';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

interface RawConn {
  readonly raw: Socket;
  /** The socket the WebSocket runs on: raw, or the TLSSocket over it. */
  socket: Socket;
  readonly source: string;
  readonly remote: string;
  readonly trusted: boolean;
  tls: boolean;
  /** 'peek': before the first byte; 'head': reading the upgrade; 'ws': upgraded; 'up': authenticated; 'dead'. */
  phase: 'peek' | 'head' | 'ws' | 'up' | 'dead';
  bytes: number;
  head: Buffer[];
  headBytes: number;
  timer: NodeJS.Timeout | undefined;
  readonly acceptedAtMs: number;
  counter: ((chunk: Buffer) => void) | undefined;
}

export class WsListener {
  private readonly opts: WsListenerOptions;
  private readonly log: pino.Logger;
  private readonly wss: WebSocketServer;
  private server: Server | undefined;
  private readonly conns = new Set<RawConn>();
  /** Unfinished handshakes by source, oldest first (a Set keeps insertion order). */
  private readonly bySource = new Map<string, Set<RawConn>>();
  /** Connections waiting for a handshake slot of their source (overSource "wait"), oldest first. */
  private readonly waiting = new Map<string, RawConn[]>();
  private trusted = new Set<string>();
  private closing = false;
  private readonly counts: Omit<ListenerCounters, 'open' | 'handshaking'> = {
    accepted: 0,
    authenticated: 0,
    overCap: 0,
    preAuthBytes: 0,
    handshakeTimeout: 0,
    perSource: 0,
    plainUnderRequire: 0,
    tlsUnderOff: 0,
    tlsFailed: 0,
    badUpgrade: 0,
  };
  private readonly logWindow = new Map<RefusalReason, { startMs: number; logged: number; suppressed: number }>();
  private readonly serverTlsOptions;

  constructor(opts: WsListenerOptions) {
    for (const key of ['connectionsMax', 'preAuthBytesMax', 'handshakeTimeoutMs', 'handshakesPerSourceMax'] as const) {
      if (!Number.isSafeInteger(opts[key]) || opts[key] < 1) throw new PagepairError('BAD_CONFIG', `${opts.name} listener: ${key} must be a positive integer`, `limits.${key}`);
    }
    this.opts = opts;
    this.log = opts.log;
    this.wss = new WebSocketServer({ ...WS_COMMON, noServer: true, clientTracking: false, maxPayload: opts.maxPayload });
    this.serverTlsOptions = opts.tls.mode === 'off' ? undefined : pskServerOptions(new Map([[opts.tls.identity, opts.tls.key]]));
  }

  get counters(): ListenerCounters {
    let handshaking = 0;
    for (const set of this.bySource.values()) handshaking += set.size;
    return { open: this.conns.size, handshaking, ...this.counts };
  }

  /** The addresses always let in (the partner's), as resolved at start. */
  get trustedAddresses(): ReadonlySet<string> {
    return this.trusted;
  }

  async start(): Promise<{ port: number }> {
    if (this.server !== undefined) throw new PagepairError('INTERNAL', `${this.opts.name} listener already started`);
    this.trusted = await this.resolveTrusted();
    const server = createServer({ noDelay: true });
    this.server = server;
    server.on('connection', (socket) => this.guarded(undefined, socket, () => this.onRawConnection(socket)));
    const port = await new Promise<number>((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      server.once('error', onError);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off('error', onError);
        const addr = server.address();
        resolve(addr === null || typeof addr === 'string' ? 0 : addr.port);
      });
    });
    server.on('error', (err) => this.log.error({ err: err.message }, `${this.opts.name} listener error`));
    return { port };
  }

  /** Stops listening and cuts every connection (authenticated or not). */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    for (const conn of this.conns) this.cut(conn);
    const server = this.server;
    if (server === undefined) return;
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async resolveTrusted(): Promise<Set<string>> {
    const out = new Set<string>();
    for (const host of this.opts.trustedHosts ?? []) {
      try {
        for (const { address } of await lookup(host, { all: true })) out.add(normalizeAddress(address));
      } catch (err) {
        this.log.warn({ host, err: err instanceof Error ? err.message : String(err) }, `${this.opts.name} listener: the partner's host does not resolve; it gets no reserved handshake slot`);
      }
    }
    return out;
  }

  // -------------------------------------------------------------------------

  private onRawConnection(raw: Socket): void {
    // Errors (a reset) end the connection through 'close'; without a listener they would crash the process.
    raw.on('error', () => undefined);
    if (this.closing) {
      raw.destroy();
      return;
    }
    const source = normalizeAddress(raw.remoteAddress);
    const port = raw.remotePort ?? 0;
    const remote = source.includes(':') ? `[${source}]:${port}` : `${source}:${port}`;
    const trusted = this.trusted.has(source);
    if (this.conns.size >= this.opts.connectionsMax && !(trusted && this.evictOldestStranger(remote))) {
      // Nothing is kept for it: a flood of connections costs a socket each, briefly.
      this.refusalLogged('overCap', remote, { connectionsMax: this.opts.connectionsMax });
      raw.destroy();
      return;
    }
    const conn: RawConn = { raw, socket: raw, source, remote, trusted, tls: false, phase: 'peek', bytes: 0, head: [], headBytes: 0, timer: undefined, acceptedAtMs: performance.now(), counter: undefined };
    this.conns.add(conn);
    this.counts.accepted++;
    raw.on('close', () => this.forget(conn));
    conn.timer = setTimeout(() => this.onHandshakeTimeout(conn, true), this.opts.handshakeTimeoutMs);
    const pending = this.bySource.get(source);
    if (pending !== undefined && pending.size >= this.opts.handshakesPerSourceMax) {
      if (this.opts.overSource === 'wait') {
        // Not read at all meanwhile: what it sent stays in the kernel's buffers.
        raw.pause();
        let queue = this.waiting.get(source);
        if (queue === undefined) {
          queue = [];
          this.waiting.set(source, queue);
        }
        queue.push(conn);
        return;
      }
      const oldest = pending.values().next().value as RawConn;
      this.refusalLogged('perSource', oldest.remote, { source, handshakesPerSourceMax: this.opts.handshakesPerSourceMax, givesWayTo: remote });
      this.cut(oldest);
    }
    this.startHandshake(conn);
  }

  private startHandshake(conn: RawConn): void {
    let pending = this.bySource.get(conn.source);
    if (pending === undefined) {
      pending = new Set();
      this.bySource.set(conn.source, pending);
    }
    pending.add(conn);
    conn.raw.once('data', (first: Buffer) => this.guarded(conn, conn.raw, () => this.onFirstBytes(conn, first)));
    conn.raw.resume();
  }

  /** A handshake slot of `source` freed: the oldest connection waiting for one (if any) starts. */
  private slotFreed(source: string): void {
    const pending = this.bySource.get(source);
    if (pending !== undefined && pending.size === 0) this.bySource.delete(source);
    const queue = this.waiting.get(source);
    if (queue === undefined) return;
    while (queue.length > 0 && (this.bySource.get(source)?.size ?? 0) < this.opts.handshakesPerSourceMax) {
      const next = queue.shift()!;
      if (next.phase === 'peek') this.startHandshake(next);
    }
    if (queue.length === 0) this.waiting.delete(source);
  }

  private onHandshakeTimeout(conn: RawConn, first: boolean): void {
    if (conn.phase === 'dead' || conn.phase === 'up') return;
    if (first && conn.phase === 'ws') {
      // The link's own timer (from the same start) answers with a TIMEOUT frame; cut if it has not closed by then.
      conn.timer = setTimeout(() => this.onHandshakeTimeout(conn, false), HANDSHAKE_ANSWER_GRACE_MS);
      return;
    }
    this.refusalLogged('handshakeTimeout', conn.remote, { phase: conn.phase, bytes: conn.bytes, handshakeTimeoutMs: this.opts.handshakeTimeoutMs });
    this.cut(conn);
  }

  /** At the cap, a partner's connection takes the place of the oldest stranger still in its handshake. */
  private evictOldestStranger(newcomer: string): boolean {
    let oldest: RawConn | undefined;
    for (const conn of this.conns) {
      if (conn.trusted || conn.phase === 'up' || conn.phase === 'dead') continue;
      oldest = conn;
      break;
    }
    if (oldest === undefined) return false;
    this.refusalLogged('overCap', oldest.remote, { connectionsMax: this.opts.connectionsMax, givesWayTo: newcomer });
    this.cut(oldest);
    return true;
  }

  private onFirstBytes(conn: RawConn, first: Buffer): void {
    if (conn.phase !== 'peek') return;
    const isTls = first[0] === TLS_HANDSHAKE_RECORD;
    const mode = this.opts.tls.mode;
    if (isTls && mode === 'off') {
      this.refuse(conn, 'tlsUnderOff');
      return;
    }
    if (!isTls && mode === 'require') {
      // An HTTP client is told why, so the person at the other end knows to add --tls.
      this.refusalLogged('plainUnderRequire', conn.remote, {});
      conn.phase = 'dead';
      conn.raw.end(NOT_TLS_REPLY);
      setTimeout(() => conn.raw.destroy(), 1000).unref();
      return;
    }
    conn.phase = 'head';
    if (!isTls) {
      this.countFrom(conn, conn.raw);
      // The first chunk came before the counter: count and read it now.
      conn.counter!(first);
      return;
    }
    conn.tls = true;
    // Give the bytes back; the TLSSocket reads what the raw socket buffered before its own reads.
    conn.raw.pause();
    conn.raw.unshift(first);
    const tlsSocket = new TLSSocket(conn.raw, { isServer: true, ...this.serverTlsOptions });
    conn.socket = tlsSocket;
    let secure = false;
    tlsSocket.once('secure', () => {
      secure = true;
    });
    tlsSocket.on('error', (err) => {
      if (conn.phase === 'dead') return;
      if (!secure) {
        this.refusalLogged('tlsFailed', conn.remote, { err: err.message });
      } else {
        this.log.debug({ remote: conn.remote, err: err.message }, `${this.opts.name} TLS socket error`);
      }
      this.cut(conn);
    });
    tlsSocket.on('close', () => this.cut(conn));
    this.countFrom(conn, tlsSocket);
  }

  /**
   * Counts what the other side sends until it authenticates (plaintext, under
   * TLS), and reads the upgrade request while phase is 'head'.
   */
  private countFrom(conn: RawConn, socket: Socket): void {
    conn.counter = (chunk: Buffer) => this.guarded(conn, socket, () => this.count(conn, chunk));
    socket.on('data', conn.counter);
  }

  private count(conn: RawConn, chunk: Buffer): void {
    if (conn.phase === 'dead' || conn.phase === 'up') return;
    conn.bytes += chunk.length;
    if (conn.bytes > this.opts.preAuthBytesMax) {
      this.refuse(conn, 'preAuthBytes', { bytes: conn.bytes, preAuthBytesMax: this.opts.preAuthBytesMax });
      return;
    }
    if (conn.phase === 'head') this.readHead(conn, chunk);
  }

  /**
   * Runs a socket event's handler: a throw from it would escape to the
   * process. What slips past is a bug, logged; that connection alone is cut.
   */
  private guarded(conn: RawConn | undefined, socket: Socket, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.error({ remote: conn?.remote, err: err instanceof Error ? err.stack : String(err) }, `${this.opts.name} listener handler threw; connection cut`);
      if (conn !== undefined) this.cut(conn);
      else socket.destroy();
    }
  }

  private readHead(conn: RawConn, chunk: Buffer): void {
    conn.head.push(chunk);
    conn.headBytes += chunk.length;
    const buf = conn.head.length === 1 ? chunk : Buffer.concat(conn.head);
    conn.head = [buf];
    const end = buf.indexOf(HEAD_END);
    if (end < 0) {
      if (conn.headBytes > UPGRADE_HEAD_BYTES_MAX) this.refuse(conn, 'badUpgrade', { headBytes: conn.headBytes });
      return;
    }
    const req = parseUpgradeHead(buf.subarray(0, end).toString('latin1'));
    const rest = buf.subarray(end + HEAD_END.length);
    conn.head = [];
    if (req === undefined) {
      this.refuse(conn, 'badUpgrade', {}, 400);
      return;
    }
    conn.phase = 'ws';
    // `ws` puts `rest` back on the socket, where the counter sees it again: count it once.
    conn.bytes -= rest.length;
    const socket = conn.socket;
    (req as { socket?: Socket }).socket = socket;
    this.wss.handleUpgrade(req as never, socket, rest, (ws) => {
      if (conn.phase !== 'ws') {
        ws.terminate();
        return;
      }
      socket.setNoDelay(true);
      const accepted: AcceptedConnection = {
        remote: conn.remote,
        source: conn.source,
        tls: conn.tls,
        socket,
        acceptedAtMs: conn.acceptedAtMs,
        authenticated: () => this.authenticated(conn),
      };
      try {
        this.opts.onConnection(ws, accepted);
      } catch (err) {
        this.log.error({ remote: conn.remote, err: err instanceof Error ? err.stack : String(err) }, `${this.opts.name} connection handler threw`);
        this.cut(conn);
      }
    });
    // A refused upgrade (ws answered 400 and ends the socket) is counted as a bad upgrade.
    if (conn.phase === 'ws' && !socket.writable) this.refusalLogged('badUpgrade', conn.remote, {});
  }

  private authenticated(conn: RawConn): void {
    if (conn.phase !== 'ws') return;
    conn.phase = 'up';
    this.counts.authenticated++;
    clearTimeout(conn.timer);
    conn.timer = undefined;
    if (conn.counter !== undefined) conn.socket.off('data', conn.counter);
    conn.counter = undefined;
    if (this.bySource.get(conn.source)?.delete(conn) === true) this.slotFreed(conn.source);
  }

  private refuse(conn: RawConn, reason: RefusalReason, detail: Record<string, unknown> = {}, httpStatus?: number): void {
    if (conn.phase === 'dead') return;
    this.refusalLogged(reason, conn.remote, detail);
    if (httpStatus !== undefined && conn.socket.writable) {
      conn.phase = 'dead';
      conn.socket.end(`HTTP/1.1 ${httpStatus} Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      setTimeout(() => this.cut(conn), 1000).unref();
      return;
    }
    this.cut(conn);
  }

  /** Ends a connection at once and forgets it. */
  private cut(conn: RawConn): void {
    conn.phase = 'dead';
    if (conn.socket !== conn.raw) conn.socket.destroy();
    conn.raw.destroy();
    this.forget(conn);
  }

  private forget(conn: RawConn): void {
    if (conn.phase !== 'dead' && !conn.raw.destroyed) return;
    conn.phase = 'dead';
    clearTimeout(conn.timer);
    conn.timer = undefined;
    conn.head = [];
    if (!this.conns.delete(conn)) return;
    if (this.bySource.get(conn.source)?.delete(conn) === true) {
      this.slotFreed(conn.source);
      return;
    }
    const queue = this.waiting.get(conn.source);
    const at = queue?.indexOf(conn) ?? -1;
    if (at >= 0) queue!.splice(at, 1);
    if (queue?.length === 0) this.waiting.delete(conn.source);
  }

  private refusalLogged(reason: RefusalReason, remote: string, detail: Record<string, unknown>): void {
    this.counts[reason]++;
    const nowMs = performance.now();
    let w = this.logWindow.get(reason);
    if (w === undefined || nowMs - w.startMs >= REFUSAL_LOG_INTERVAL_MS) {
      w = { startMs: nowMs, logged: 0, suppressed: w?.suppressed ?? 0 };
      this.logWindow.set(reason, w);
    }
    if (w.logged >= REFUSAL_LOGS_PER_INTERVAL) {
      w.suppressed++;
      return;
    }
    w.logged++;
    const suppressed = w.suppressed;
    w.suppressed = 0;
    this.log.warn(
      { listener: this.opts.name, remote, reason, ...detail, ...(suppressed > 0 ? { notLogged: suppressed } : {}), total: this.counts[reason] },
      `${this.opts.name} ${REFUSAL_TEXT[reason]}`,
    );
  }
}

/** The request line and headers of an HTTP/1.1 request; undefined when they do not parse. */
function parseUpgradeHead(text: string): { method: string; url: string; headers: Record<string, string> } | undefined {
  const lines = text.split('\r\n');
  const m = /^([A-Z]{1,16}) (\S{1,2048}) HTTP\/1\.[01]$/.exec(lines[0] ?? '');
  if (m === null) return undefined;
  const headers: Record<string, string> = {};
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(':');
    if (colon <= 0) return undefined;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(name)) return undefined;
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  return { method: m[1]!, url: m[2]!, headers };
}
