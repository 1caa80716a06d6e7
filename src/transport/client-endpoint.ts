// The client endpoint: where clients (the client library, tools, workloads)
// connect to a controller. It authenticates each connection, turns frames into
// requests for the controller and guards the controller against bad input:
// a bad request gets a typed ERROR and the connection goes on; a frame whose
// header cannot be trusted gets an ERROR and that connection alone is closed.
// Before the hello, the listener (ws-listener.ts) bounds each connection (cap,
// bytes, time, handshakes per address) and takes TLS-PSK keyed by the token;
// after it, replies a client leaves unread are bounded (replyBytesBufferedMax).

import { createHash, timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type pino from 'pino';
import type { RawData, WebSocket } from 'ws';
import { isPagepairError, type ErrorCodeName } from '../protocol/errors.js';
import { decode, ProtocolError, typeOfKind } from '../protocol/codec.js';
import type { Limits } from '../protocol/limits.js';
import { TurnCorker } from './turn-corker.js';
import {
  PROTOCOL_VERSION,
  type ClientRequest,
  type Message,
  type MessageKind,
  type RoleCode,
} from '../protocol/messages.js';
import { FRAMES } from './frame-pool.js';
import { CLIENT_PSK_IDENTITY, derivePsk } from './tls.js';
import { WsListener, type AcceptedConnection, type ListenerCounters, type TlsMode, type WsListenerBounds } from './ws-listener.js';
import { closeGracefully, encodeSafely, errorReply, messageBytes } from './ws-util.js';

export interface ClientConn {
  readonly id: number;
  readonly remote: string;
  /** Sends a reply (or an ERROR) for a request this connection made; dropped if the connection closed. */
  reply(msg: Message): void;
  close(code?: number, reason?: string): void;
  /** Requests handed to onRequest and not yet answered. */
  inflight: number;
}

export interface ClientEndpointOptions {
  host: string;
  /** 0 = any free port (tests). */
  port: number;
  token: string;
  controllerId: number;
  pairId: string;
  limits: Limits;
  /** Requests one connection may have unanswered; more get BUSY. */
  inflightMax: number;
  log: pino.Logger;
  /** Longest a connection may take from its TCP accept to an accepted CLIENT_HELLO. Default 10000. */
  helloTimeoutMs?: number;
  /**
   * The listener's bounds on connections not yet authenticated (see
   * ws-listener.ts): bytes before the hello, and unfinished handshakes per
   * source address (past them a connection waits for a slot). Defaults
   * CLIENT_BOUNDS_DEFAULT.
   */
  bounds?: Partial<Pick<WsListenerBounds, 'preAuthBytesMax' | 'handshakesPerSourceMax'>>;
  /**
   * TLS-PSK with a key derived from the client token: "on" takes TLS and
   * plain connections, "require" TLS only. Default "off".
   */
  tlsMode?: TlsMode;
  /**
   * Reply bytes one connection may have waiting to be sent (its client is not
   * reading them); past it the connection is dropped with a logged reason.
   * Default REPLY_BYTES_BUFFERED_MAX_DEFAULT.
   */
  replyBytesBufferedMax?: number;
  /** Client connections open at once, authenticated or not; more are dropped as they come. Default CLIENT_CONNECTIONS_MAX_DEFAULT. */
  connectionsMax?: number;
  getRole(): RoleCode;
  /** The controller answers later with conn.reply(...). A PagepairError it throws becomes the ERROR reply. */
  onRequest(conn: ClientConn, msg: ClientRequest): void;
  onClose?(conn: ClientConn): void;
}

const HELLO_TIMEOUT_MS_DEFAULT = 10_000;
/** 64 MiB: eight of the largest replies (requestBytesMax 8 MiB) at their default. */
export const REPLY_BYTES_BUFFERED_MAX_DEFAULT = 64 * 1024 * 1024;
export const CLIENT_CONNECTIONS_MAX_DEFAULT = 1024;
export const CLIENT_BOUNDS_DEFAULT = { preAuthBytesMax: 64 * 1024, handshakesPerSourceMax: 4 } as const;
const WITH_DATA_CRC = { dataCrc: true } as const;
const SEND_BINARY = { binary: true } as const;

const CLOSE_PROTOCOL = 1002;
const CLOSE_UNSUPPORTED_DATA = 1003;
const CLOSE_POLICY = 1008;
const CLOSE_GOING_AWAY = 1001;
const CLOSE_INTERNAL_ERROR = 1011;

const CLIENT_REQUEST_KINDS: ReadonlySet<MessageKind> = new Set<ClientRequest['kind']>([
  'C_ALLOCATE',
  'C_RELEASE',
  'C_WRITE',
  'C_READ',
  'C_FLUSH',
  'C_STATUS',
  'C_LIST',
  'C_OPEN_POINTER',
  'C_CLOSE_POINTER',
  'C_VERIFY',
  'C_VERIFY_REPORT',
  'C_TEST_CORRUPT',
  'C_REWRITE',
  'C_POOL_JOB',
  'C_UNLOCK',
  'C_SNAPSHOT',
]);

function isClientRequest(msg: Message): msg is ClientRequest {
  return CLIENT_REQUEST_KINDS.has(msg.kind);
}

/** Token comparison that reveals neither content nor length through timing. */
function tokenDigest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

class EndpointConn implements ClientConn {
  inflight = 0;
  authenticated = false;
  closed = false;
  requests = 0;
  clientName = '';
  helloTimer: NodeJS.Timeout | undefined;
  accepted: AcceptedConnection | undefined;
  /**
   * Reply bytes of the reads handed to the controller and not yet answered,
   * by request id: with bufferedAmount, what this connection makes the
   * controller hold. Past replyBytesBufferedMax requests wait in `deferred`.
   */
  owedBytes = 0;
  readonly owedById = new Map<number, number>();
  /** Requests held back, in order, until the replies owed and buffered fall under the bound (counted in inflight). */
  readonly deferred: ClientRequest[] = [];
  /** Called after each reply, to hand on what was held back. */
  onReplied: (() => void) | undefined;
  handingOn = false;

  private readonly corker: TurnCorker;

  constructor(
    readonly id: number,
    readonly remote: string,
    readonly ws: WebSocket,
    private readonly sender: number,
    private readonly socket: Socket,
    private readonly log: pino.Logger,
    private readonly replyBytesBufferedMax: number,
  ) {
    this.corker = new TurnCorker(socket);
  }

  reply(msg: Message): void {
    // Every reply answers one request the endpoint counted in.
    if (this.inflight > 0) this.inflight--;
    const owed = this.owedById.get(msg.requestId);
    if (owed !== undefined) {
      this.owedById.delete(msg.requestId);
      this.owedBytes -= owed;
    }
    if (this.closed) return;
    // Replies made in one turn of the event loop leave in one write.
    this.corker.cork();
    // A reply that cannot be encoded (an echo of input too long for a string
    // field) must not throw into the core: it goes as a short ERROR.
    const frame = encodeSafely(msg, this.sender, this.log, FRAMES.take);
    if (frame === undefined) return;
    this.ws.send(frame, SEND_BINARY, FRAMES.giveBackAfter(frame));
    // A client that sends requests but does not read the replies would have
    // them pile up here without end: past the bound it is dropped.
    if (this.ws.bufferedAmount > this.replyBytesBufferedMax) {
      this.dropSlowReader();
      return;
    }
    if (this.deferred.length > 0) this.onReplied?.();
  }

  /** True when the reads owed and the replies buffered leave room under the bound (one request may cross it). */
  hasReplyRoom(): boolean {
    return this.owedBytes + this.ws.bufferedAmount <= this.replyBytesBufferedMax;
  }

  private dropSlowReader(): void {
    this.log.warn(
      { conn: this.id, remote: this.remote, bufferedBytes: this.ws.bufferedAmount, replyBytesBufferedMax: this.replyBytesBufferedMax },
      'client does not read its replies; connection dropped',
    );
    this.closed = true;
    this.deferred.length = 0;
    clearTimeout(this.helloTimer);
    // At once, not a close handshake queued behind the replies it is not reading.
    this.ws.terminate();
  }

  /** A frame the endpoint itself sends: not counted against inflight. */
  sendError(code: ErrorCodeName, message: string, requestId: number, requestType: number): void {
    if (this.closed) return;
    const frame = encodeSafely(errorReply(code, message, requestId, requestType, this.sender), this.sender, this.log);
    if (frame !== undefined) this.ws.send(frame, SEND_BINARY);
  }

  close(code = 1000, reason = ''): void {
    if (this.closed) return;
    this.closed = true;
    this.deferred.length = 0;
    clearTimeout(this.helloTimer);
    closeGracefully(this.ws, code, reason);
  }
}

export class ClientEndpoint {
  private readonly opts: ClientEndpointOptions;
  private readonly log: pino.Logger;
  private readonly tokenHash: Buffer;
  private readonly conns = new Set<EndpointConn>();
  private server: WsListener | undefined;
  private nextId = 1;
  private closing = false;

  constructor(opts: ClientEndpointOptions) {
    this.opts = opts;
    this.log = opts.log;
    this.tokenHash = tokenDigest(opts.token);
  }

  /** Open connections, authenticated or not. */
  get connections(): number {
    return this.conns.size;
  }

  /** What the client listener refused and why (undefined before start). */
  get listenerCounters(): ListenerCounters | undefined {
    return this.server?.counters;
  }

  async start(): Promise<{ port: number }> {
    const tlsMode = this.opts.tlsMode ?? 'off';
    const server = new WsListener({
      name: 'client',
      host: this.opts.host,
      port: this.opts.port,
      maxPayload: this.opts.limits.frameBytesMax,
      // Connections past the cap are dropped before a byte is read: nothing is kept for them.
      connectionsMax: this.opts.connectionsMax ?? CLIENT_CONNECTIONS_MAX_DEFAULT,
      ...CLIENT_BOUNDS_DEFAULT,
      ...this.opts.bounds,
      handshakeTimeoutMs: this.opts.helloTimeoutMs ?? HELLO_TIMEOUT_MS_DEFAULT,
      tls: { mode: tlsMode, identity: CLIENT_PSK_IDENTITY, key: derivePsk(this.opts.token, 'client') },
      overSource: 'wait',
      log: this.log,
      onConnection: (ws, accepted) => this.accept(ws, accepted),
    });
    this.server = server;
    const bound = await server.start();
    this.log.info({ host: this.opts.host, port: bound.port, tls: tlsMode }, 'client endpoint listening');
    return bound;
  }

  async close(): Promise<void> {
    this.closing = true;
    for (const conn of this.conns) conn.close(CLOSE_GOING_AWAY, 'controller stopping');
    if (this.server !== undefined) await this.server.close();
  }

  /** The fuzzer's seam (src/testing/fuzz): serves a ws as if the listener had let it in, with no socket under it. */
  serveOpenWs(ws: WebSocket, accepted: AcceptedConnection): void {
    this.accept(ws, accepted);
  }

  private accept(ws: WebSocket, accepted: AcceptedConnection): void {
    const conn = new EndpointConn(
      this.nextId++,
      accepted.remote,
      ws,
      this.opts.controllerId,
      accepted.socket,
      this.log,
      this.opts.replyBytesBufferedMax ?? REPLY_BYTES_BUFFERED_MAX_DEFAULT,
    );
    conn.accepted = accepted;
    this.conns.add(conn);
    this.log.info({ conn: conn.id, remote: conn.remote }, 'client connected');
    ws.on('error', (err) => this.log.warn({ conn: conn.id, remote: conn.remote, err: err.message }, 'client socket error'));
    ws.on('close', (code) => this.onClosed(conn, code));
    ws.on('message', (data, isBinary) => this.receiveGuarded(conn, data, isBinary));
    if (this.closing) {
      conn.close(CLOSE_GOING_AWAY, 'controller stopping');
      return;
    }
    const helloTimeoutMs = this.opts.helloTimeoutMs ?? HELLO_TIMEOUT_MS_DEFAULT;
    // Counted from the TCP accept, as the listener counts it; the listener cuts the socket soon after.
    const spentMs = performance.now() - accepted.acceptedAtMs;
    conn.helloTimer = setTimeout(() => {
      this.refuse(conn, 'NOT_AUTHENTICATED', `no CLIENT_HELLO within ${helloTimeoutMs} ms`, CLOSE_POLICY);
    }, Math.max(0, helloTimeoutMs - spentMs));
  }

  private onClosed(conn: EndpointConn, code: number): void {
    const wasOpen = this.conns.delete(conn);
    conn.closed = true;
    conn.deferred.length = 0;
    clearTimeout(conn.helloTimer);
    if (!wasOpen) return;
    this.log.info(
      { conn: conn.id, remote: conn.remote, code, requests: conn.requests, inflight: conn.inflight },
      'client disconnected',
    );
    if (conn.authenticated) this.opts.onClose?.(conn);
  }

  private refuse(conn: EndpointConn, code: ErrorCodeName, reason: string, closeCode: number): void {
    if (conn.closed) return;
    this.log.warn({ conn: conn.id, remote: conn.remote, code, reason }, 'client connection refused');
    conn.sendError(code, reason, 0, 0);
    conn.close(closeCode, reason);
  }

  /**
   * Nothing a client sends may throw out of here: a throw from a ws listener
   * would escape to the process. What slips past receive()'s own answers is a
   * bug; that connection alone is closed, with the reason logged.
   */
  private receiveGuarded(conn: EndpointConn, data: RawData, isBinary: boolean): void {
    try {
      this.receive(conn, messageBytes(data), isBinary);
    } catch (err) {
      this.log.error({ conn: conn.id, remote: conn.remote, err: err instanceof Error ? err.stack : String(err) }, 'client frame handler threw; closing the connection');
      try {
        this.refuse(conn, 'INTERNAL', 'internal error handling a frame', CLOSE_INTERNAL_ERROR);
      } catch {
        conn.ws.terminate();
      }
    }
  }

  private receive(conn: EndpointConn, frame: Buffer, isBinary: boolean): void {
    if (conn.closed) return;
    if (!isBinary) {
      this.refuse(conn, 'BAD_FRAME', 'text message: frames are binary', CLOSE_UNSUPPORTED_DATA);
      return;
    }
    let msg: Message;
    try {
      // The controller reuses a written page's CRC from here (see DATA_CRC).
      msg = decode(frame, this.opts.limits, WITH_DATA_CRC);
    } catch (err) {
      this.badFrame(conn, err);
      return;
    }
    if (!conn.authenticated) {
      this.hello(conn, msg);
      return;
    }
    if (!isClientRequest(msg)) {
      conn.sendError('UNKNOWN_TYPE', `${msg.kind} is not a client request`, msg.requestId, typeOfKind(msg.kind));
      return;
    }
    if (conn.inflight >= this.opts.inflightMax) {
      conn.sendError(
        'BUSY',
        `more than ${this.opts.inflightMax} requests in flight on this connection`,
        msg.requestId,
        typeOfKind(msg.kind),
      );
      return;
    }
    conn.inflight++;
    conn.requests++;
    // The controller makes a read's reply as soon as it is handed on: many
    // large reads at once from a client that does not read the replies would
    // all be made before it is dropped. Past the bound they wait here, in
    // order (a later request never overtakes an earlier one).
    if (conn.deferred.length > 0 || !conn.hasReplyRoom()) {
      conn.deferred.push(msg);
      conn.onReplied ??= () => this.handOnDeferred(conn);
      return;
    }
    this.handOn(conn, msg);
  }

  private handOnDeferred(conn: EndpointConn): void {
    // A reply made while a held request is handed on lands here again: the loop already running goes on.
    if (conn.handingOn) return;
    conn.handingOn = true;
    try {
      while (conn.deferred.length > 0 && !conn.closed && conn.hasReplyRoom()) this.handOn(conn, conn.deferred.shift()!);
    } finally {
      conn.handingOn = false;
    }
  }

  /** Gives one request to the controller. */
  private handOn(conn: EndpointConn, msg: ClientRequest): void {
    if (msg.kind === 'C_READ') {
      // A request id used twice at once (a client's bug) adds up rather than loses bytes.
      conn.owedById.set(msg.requestId, (conn.owedById.get(msg.requestId) ?? 0) + msg.length);
      conn.owedBytes += msg.length;
    }
    try {
      this.opts.onRequest(conn, msg);
    } catch (err) {
      // One request's failure must not take the endpoint (or its other clients) down.
      if (isPagepairError(err)) {
        conn.reply(errorReply(err.code, err.message, msg.requestId, typeOfKind(msg.kind), this.opts.controllerId));
      } else {
        this.log.error({ conn: conn.id, err, kind: msg.kind }, 'request handler threw');
        conn.reply(errorReply('INTERNAL', 'internal error', msg.requestId, typeOfKind(msg.kind), this.opts.controllerId));
      }
    }
  }

  private badFrame(conn: EndpointConn, err: unknown): void {
    const text = err instanceof Error ? err.message : String(err);
    if (err instanceof ProtocolError && err.requestId !== undefined && conn.authenticated) {
      // The header checked out, so the request id is trustworthy: answer that
      // request and keep the connection.
      this.log.debug({ conn: conn.id, code: err.code, reason: text }, 'bad client request');
      conn.sendError(err.code, text, err.requestId, err.frameType ?? 0);
      return;
    }
    // The byte stream itself cannot be trusted (or no hello yet): nothing
    // after this frame can be read safely.
    const code = err instanceof ProtocolError ? err.code : 'BAD_FRAME';
    this.refuse(conn, code, `bad frame: ${text}`, CLOSE_PROTOCOL);
  }

  private hello(conn: EndpointConn, msg: Message): void {
    if (msg.kind !== 'CLIENT_HELLO') {
      this.refuse(conn, 'NOT_AUTHENTICATED', `expected CLIENT_HELLO, got ${msg.kind}`, CLOSE_POLICY);
      return;
    }
    if (msg.protocolVersion !== PROTOCOL_VERSION) {
      this.refuse(
        conn,
        'BAD_VERSION',
        `protocol version ${msg.protocolVersion}, this controller speaks ${PROTOCOL_VERSION}`,
        CLOSE_POLICY,
      );
      return;
    }
    if (!timingSafeEqual(tokenDigest(msg.token), this.tokenHash)) {
      this.refuse(conn, 'AUTH_FAILED', 'wrong client token', CLOSE_POLICY);
      return;
    }
    clearTimeout(conn.helloTimer);
    conn.helloTimer = undefined;
    conn.authenticated = true;
    // From here frameBytesMax bounds its frames, no longer preAuthBytesMax.
    conn.accepted?.authenticated();
    conn.clientName = msg.clientName;
    this.log.debug({ conn: conn.id, remote: conn.remote, name: msg.clientName }, 'client authenticated');
    const reply = encodeSafely(
      {
        kind: 'CLIENT_HELLO_REPLY',
        requestId: msg.requestId,
        epoch: 0,
        sender: this.opts.controllerId,
        flags: 0,
        controllerId: this.opts.controllerId,
        pairId: this.opts.pairId,
        role: this.opts.getRole(),
        requestBytesMax: this.opts.limits.requestBytesMax,
        inflightMax: this.opts.inflightMax,
      },
      this.opts.controllerId,
      this.log,
    );
    if (reply !== undefined) conn.ws.send(reply, SEND_BINARY);
  }
}
