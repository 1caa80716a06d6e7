// The peer link: one authenticated WebSocket between the two controllers of a
// pair, carrying one binary frame per ws message.
//
// Both controllers listen; the one with the lower id dials (and re-dials while
// the link is down), so there is never a race of two links made at once. The
// listener (ws-listener.ts) bounds what a connection may do before it has
// authenticated and, with tls.mode on or require, runs it over TLS-PSK with a
// key derived from the secret; the dialer then dials with TLS too. The
// handshake (docs/protocol.md) proves to each side that the other knows the
// pair's secret without sending it: HELLO -> HELLO_REPLY (the listener's
// nonce) -> AUTH (the dialer's proof) -> AUTH_REPLY (the listener's proof).
// The side that dials proves first, so a stranger reaching the peer port gets
// no proof to guess the secret from. Only then does a connection become the
// link; a newer authenticated connection replaces an older one, because it
// means the partner restarted while the old socket had not noticed yet.

import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type pino from 'pino';
import { WebSocket, type RawData } from 'ws';
import { isPagepairError, PagepairError, type ErrorCodeName } from '../protocol/errors.js';
import { decode, isReplyType, ProtocolError, typeOfKind } from '../protocol/codec.js';
import { isGuid } from '../protocol/guid.js';
import { authProof, helloProof, NONCE_BYTES, proofMatches } from '../protocol/handshake.js';
import type { Limits } from '../protocol/limits.js';
import { PROTOCOL_VERSION, Role, type Message } from '../protocol/messages.js';
import { FRAMES } from './frame-pool.js';
import { derivePsk, PEER_PSK_IDENTITY, pskClientOptions } from './tls.js';
import { WsListener, type AcceptedConnection, type ListenerCounters, type TlsMode, type WsListenerBounds } from './ws-listener.js';
import { closeGracefully, encodeSafely, errorReply, messageBytes, WS_COMMON, zeroMask } from './ws-util.js';

export interface PeerLinkOptions {
  /** 1 = A, 2 = B. */
  selfId: number;
  partnerId: number;
  pairId: string;
  secret: string;
  pid: number;
  /** Every controller listens (port 0 = any free port, for tests). */
  listen: { host: string; port: number };
  /** Where the partner listens. */
  partner: { host: string; port: number };
  limits: Limits;
  reconnectMs: number;
  /** Longest a connection may take from open to authenticated. Default 5000. */
  handshakeTimeoutMs?: number;
  /**
   * The peer listener's bounds on connections not yet authenticated (see
   * ws-listener.ts); handshakeTimeoutMs above is the listener's too. The
   * partner's host (partner.host) is always let in. Defaults PEER_BOUNDS_DEFAULT.
   */
  bounds?: Partial<Omit<WsListenerBounds, 'handshakeTimeoutMs'>>;
  /**
   * Bytes queued to the partner and not yet taken by the socket; past it the
   * link is dropped with a logged reason (a partner that stopped reading).
   * Default PEER_BYTES_BUFFERED_MAX_DEFAULT.
   */
  bytesBufferedMax?: number;
  /**
   * TLS-PSK with a key derived from the secret: "on" takes TLS and plain
   * connections, "require" TLS only; either way this side dials with TLS.
   * Default "off".
   */
  tlsMode?: TlsMode;
  log: pino.Logger;
}

export interface PeerLinkHandlers {
  onUp(info: { partnerId: number; partnerPid: number }): void;
  /** Exactly once for every onUp, including when close() takes the link down. */
  onDown(reason: string): void;
  /** Every frame the authenticated partner sends, decoded. */
  onMessage(msg: Message): void;
}

const HANDSHAKE_TIMEOUT_MS_DEFAULT = 5000;
const SEND_BINARY = { binary: true } as const;
/**
 * Connections on the peer port at once, and unfinished handshakes per source
 * address. One source holding all of its slots costs the partner nothing:
 * the partner's address is always let in, and within one source the oldest
 * handshake gives way to the newest.
 */
export const PEER_BOUNDS_DEFAULT = { connectionsMax: 64, preAuthBytesMax: 64 * 1024, handshakesPerSourceMax: 4 } as const;
/** 256 MiB: a resync or a burst of mirrored writes to a partner that reads them stays well under it. */
export const PEER_BYTES_BUFFERED_MAX_DEFAULT = 256 * 1024 * 1024;

const CLOSE_NORMAL = 1000;
const CLOSE_PROTOCOL = 1002;
const CLOSE_POLICY = 1008;
const CLOSE_REPLACED = 4000;

type Phase =
  | 'await-open' // dialer: TCP + ws upgrade under way
  | 'await-hello' // listener: waiting for HELLO
  | 'await-hello-reply' // dialer: HELLO sent
  | 'await-auth' // listener: HELLO_REPLY sent
  | 'await-auth-reply' // dialer: AUTH sent
  | 'up'
  | 'dead';

interface Conn {
  readonly ws: WebSocket;
  readonly dialed: boolean;
  socket: Socket | undefined;
  remote: string;
  phase: Phase;
  timer: NodeJS.Timeout | undefined;
  /** The listener's hold on an accepted connection, let go once authenticated. */
  accepted: AcceptedConnection | undefined;
  ourNonce: Buffer;
  theirNonce: Buffer;
  partnerPid: number;
}

export class PeerLink {
  private readonly opts: PeerLinkOptions;
  private readonly handlers: PeerLinkHandlers;
  private readonly log: pino.Logger;
  private readonly handshakeTimeoutMs: number;
  private readonly bytesBufferedMax: number;
  private readonly dialTls: ReturnType<typeof pskClientOptions> | undefined;
  private server: WsListener | undefined;
  private current: Conn | undefined;
  private dialing: Conn | undefined;
  private readonly handshakes = new Set<Conn>();
  private retryTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private dialFailures = 0;

  constructor(opts: PeerLinkOptions, handlers: PeerLinkHandlers) {
    if (opts.selfId === opts.partnerId) {
      throw new PagepairError('BAD_CONFIG', `controller id ${opts.selfId} is also the partner's id`, 'partnerId');
    }
    if (!isGuid(opts.pairId)) throw new PagepairError('BAD_CONFIG', `pair id ${opts.pairId} is not a uuid`, 'pairId');
    this.opts = opts;
    this.handlers = handlers;
    this.log = opts.log;
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS_DEFAULT;
    this.bytesBufferedMax = opts.bytesBufferedMax ?? PEER_BYTES_BUFFERED_MAX_DEFAULT;
    const tlsMode = opts.tlsMode ?? 'off';
    this.dialTls = tlsMode === 'off' ? undefined : pskClientOptions(PEER_PSK_IDENTITY, derivePsk(opts.secret, 'peer'));
  }

  /** What the peer listener refused and why (undefined before start). */
  get listenerCounters(): ListenerCounters | undefined {
    return this.server?.counters;
  }

  get isUp(): boolean {
    return this.current !== undefined;
  }

  /** Bytes queued on the link's socket and not yet handed to the kernel: the sender's back-pressure signal. */
  get bufferedBytes(): number {
    return this.current?.ws.bufferedAmount ?? 0;
  }

  /** True when this side dials; the other side only accepts. */
  get dials(): boolean {
    return this.opts.selfId < this.opts.partnerId;
  }

  async start(): Promise<{ port: number }> {
    if (this.server !== undefined) throw new PagepairError('INTERNAL', 'peer link already started');
    const tlsMode = this.opts.tlsMode ?? 'off';
    const server = new WsListener({
      name: 'peer',
      host: this.opts.listen.host,
      port: this.opts.listen.port,
      maxPayload: this.opts.limits.frameBytesMax,
      ...PEER_BOUNDS_DEFAULT,
      ...this.opts.bounds,
      handshakeTimeoutMs: this.handshakeTimeoutMs,
      tls: { mode: tlsMode, identity: PEER_PSK_IDENTITY, key: derivePsk(this.opts.secret, 'peer') },
      // The newest connection from a source is most likely the partner dialing again.
      overSource: 'evict-oldest',
      trustedHosts: [this.opts.partner.host],
      log: this.log,
      onConnection: (ws, accepted) => this.accept(ws, accepted),
    });
    this.server = server;
    const bound = await server.start();
    this.log.info({ port: bound.port, dials: this.dials, tls: tlsMode, partnerAddresses: [...server.trustedAddresses] }, 'peer link listening');
    if (this.dials) this.dial();
    return bound;
  }

  /** Sends one message to the partner. Throws PARTNER_LOST when the link is down. */
  send(msg: Message): void {
    const conn = this.current;
    if (conn === undefined) throw new PagepairError('PARTNER_LOST', 'peer link is down');
    const frame = encodeSafely(msg, this.opts.selfId, this.log, FRAMES.take);
    if (frame !== undefined) conn.ws.send(frame, SEND_BINARY, FRAMES.giveBackAfter(frame));
    this.checkBuffered(conn);
  }

  /**
   * Sends several messages as one write to the socket: the frames are queued
   * while the socket is corked and leave in a single writev.
   */
  sendMany(msgs: readonly Message[]): void {
    const conn = this.current;
    if (conn === undefined) throw new PagepairError('PARTNER_LOST', 'peer link is down');
    const socket = conn.socket;
    socket?.cork();
    try {
      // One frame that cannot be encoded must not cost the others in the batch.
      for (const msg of msgs) {
        const frame = encodeSafely(msg, this.opts.selfId, this.log, FRAMES.take);
        if (frame !== undefined) conn.ws.send(frame, SEND_BINARY, FRAMES.giveBackAfter(frame));
      }
    } finally {
      socket?.uncork();
    }
    this.checkBuffered(conn);
  }

  /**
   * A partner that stopped reading (paused, or its socket stuck) would have
   * every mirrored write pile up here: past the bound the link is dropped,
   * as a silent partner's is, and the core handles the loss.
   */
  private checkBuffered(conn: Conn): void {
    const buffered = conn.ws.bufferedAmount;
    if (buffered <= this.bytesBufferedMax || this.current !== conn) return;
    this.log.warn(
      { remote: conn.remote, bufferedBytes: buffered, peerBytesBufferedMax: this.bytesBufferedMax },
      'partner does not read the peer link; link dropped',
    );
    this.takeDown(conn, `the partner stopped reading: ${buffered} bytes queued, more than peerBytesBufferedMax`, CLOSE_NORMAL, this.opts.reconnectMs);
    // At once, not a close frame queued behind what it is not reading.
    conn.ws.terminate();
  }

  /** Drop the current link (the core found the partner silent); the dialer dials again. */
  drop(reason: string): void {
    const current = this.current;
    if (current !== undefined) this.takeDown(current, reason, CLOSE_NORMAL, this.opts.reconnectMs);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const current = this.current;
    if (current !== undefined) this.takeDown(current, 'peer link closed');
    if (this.dialing !== undefined) this.kill(this.dialing);
    for (const conn of this.handshakes) this.kill(conn);
    this.handshakes.clear();
    if (this.server !== undefined) await this.server.close();
  }

  // -------------------------------------------------------------------------
  // dialing

  private dial(): void {
    this.retryTimer = undefined;
    if (this.closed || this.current !== undefined || this.dialing !== undefined) return;
    const { host, port } = this.opts.partner;
    const scheme = this.dialTls === undefined ? 'ws' : 'wss';
    const url = `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}/`;
    const ws = new WebSocket(url, {
      ...WS_COMMON,
      ...this.dialTls,
      maxPayload: this.opts.limits.frameBytesMax,
      handshakeTimeout: this.handshakeTimeoutMs,
      generateMask: zeroMask,
    });
    const conn = this.newConn(ws, true, `${host}:${port}`);
    conn.phase = 'await-open';
    this.dialing = conn;
    ws.on('upgrade', (res: IncomingMessage) => {
      conn.socket = res.socket as Socket;
      conn.socket.setNoDelay(true);
    });
    ws.on('open', () => {
      if (conn.phase !== 'await-open') return;
      conn.phase = 'await-hello-reply';
      this.sendHello(conn);
    });
    this.wire(conn);
  }

  private scheduleDial(delayMs: number): void {
    if (this.closed || !this.dials || this.retryTimer !== undefined) return;
    this.retryTimer = setTimeout(() => this.dial(), delayMs);
  }

  // -------------------------------------------------------------------------
  // accepting

  /**
   * A connection the listener let in (under its cap, per-source slots, byte
   * and time bounds, TLS mode); it stays under them until bringUp.
   */
  private accept(ws: WebSocket, accepted: AcceptedConnection): void {
    const conn = this.newConn(ws, false, accepted.remote);
    conn.socket = accepted.socket;
    conn.accepted = accepted;
    if (this.closed) {
      ws.on('error', (err) => this.onSocketError(conn, err));
      this.kill(conn);
      return;
    }
    conn.phase = 'await-hello';
    this.handshakes.add(conn);
    this.wire(conn);
  }

  /**
   * The fuzzer's seam (src/testing/fuzz): runs this side's handshake, then
   * the link, over a ws that is already open, with no listener or socket under
   * it. dialed: as if this side had dialed it (HELLO goes first).
   */
  serveOpenWs(ws: WebSocket, dialed: boolean): void {
    const conn = this.newConn(ws, dialed, 'in-process');
    conn.phase = dialed ? 'await-hello-reply' : 'await-hello';
    if (!dialed) this.handshakes.add(conn);
    this.wire(conn);
    if (!dialed) return;
    this.sendHello(conn);
  }

  /** The dialer's first frame: who we are and our nonce. */
  private sendHello(conn: Conn): void {
    this.sendRaw(conn, {
      kind: 'HELLO',
      requestId: 0,
      epoch: 0,
      sender: this.opts.selfId,
      flags: 0,
      protocolVersion: PROTOCOL_VERSION,
      pairId: this.opts.pairId,
      controllerId: this.opts.selfId,
      nonce: conn.ourNonce,
      pid: this.opts.pid,
    });
  }

  // -------------------------------------------------------------------------
  // one connection, from open to dead

  private newConn(ws: WebSocket, dialed: boolean, remote: string): Conn {
    return {
      ws,
      dialed,
      socket: undefined,
      remote,
      phase: 'await-open',
      timer: undefined,
      accepted: undefined,
      ourNonce: randomBytes(NONCE_BYTES),
      theirNonce: Buffer.alloc(0),
      partnerPid: 0,
    };
  }

  private wire(conn: Conn): void {
    const { ws } = conn;
    // An accepted connection's time counts from its TCP accept, as the listener's does.
    const spentMs = conn.accepted === undefined ? 0 : performance.now() - conn.accepted.acceptedAtMs;
    conn.timer = setTimeout(() => {
      this.refuse(conn, 'TIMEOUT', `handshake not finished within ${this.handshakeTimeoutMs} ms`);
    }, Math.max(0, this.handshakeTimeoutMs - spentMs));
    ws.on('message', (data, isBinary) => this.receiveGuarded(conn, data, isBinary));
    ws.on('error', (err) => this.onSocketError(conn, err));
    ws.on('close', (code, reason) => this.onClosed(conn, code, reason.toString()));
  }

  /**
   * Nothing the other side sends may throw out of here: a throw from a ws
   * listener would escape to the process. What slips past receive()'s own
   * answers is a bug; the connection is refused (the link taken down, the
   * dialer dials again) with the reason logged.
   */
  private receiveGuarded(conn: Conn, data: RawData, isBinary: boolean): void {
    try {
      this.receive(conn, messageBytes(data), isBinary);
    } catch (err) {
      this.log.error({ remote: conn.remote, phase: conn.phase, err: err instanceof Error ? err.stack : String(err) }, 'peer frame handler threw');
      try {
        this.refuse(conn, 'INTERNAL', 'internal error handling a frame');
      } catch {
        conn.ws.terminate();
      }
    }
  }

  private receive(conn: Conn, frame: Buffer, isBinary: boolean): void {
    if (conn.phase === 'dead') return;
    if (!isBinary) {
      this.refuse(conn, 'BAD_FRAME', 'text message on the peer link');
      return;
    }
    let msg: Message;
    try {
      msg = decode(frame, this.opts.limits);
    } catch (err) {
      // Anything the decoder throws is the frame's fault, never a reason to crash.
      const code = err instanceof ProtocolError ? err.code : 'BAD_FRAME';
      this.refuse(conn, code, `bad frame: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    if (conn.phase === 'up') {
      this.deliver(conn, msg);
      return;
    }
    if (msg.kind === 'ERROR') {
      // The other side refused us; it closes the socket itself.
      this.log.warn({ remote: conn.remote, code: msg.code, reason: msg.message }, 'peer refused the handshake');
      this.kill(conn);
      return;
    }
    switch (conn.phase) {
      case 'await-hello':
        this.onHello(conn, msg);
        return;
      case 'await-auth':
        this.onAuth(conn, msg);
        return;
      case 'await-hello-reply':
        this.onHelloReply(conn, msg);
        return;
      case 'await-auth-reply':
        this.onAuthReply(conn, msg);
        return;
      default:
        this.refuse(conn, 'NOT_AUTHENTICATED', `${msg.kind} before the handshake`);
    }
  }

  /**
   * Hands one frame from the partner to the core. A request the core cannot
   * apply is answered with a typed ERROR and the link goes on: one bad frame
   * is not a reason to drop every mirrored write in flight.
   */
  private deliver(conn: Conn, msg: Message): void {
    try {
      this.handlers.onMessage(msg);
    } catch (err) {
      const typed = isPagepairError(err);
      this.log[typed ? 'warn' : 'error'](
        { remote: conn.remote, kind: msg.kind, requestId: msg.requestId, err: typed ? err.message : err instanceof Error ? err.stack : String(err) },
        'peer frame could not be applied',
      );
      const type = typeOfKind(msg.kind);
      if (isReplyType(type)) return; // a reply is never answered
      const code = typed ? err.code : 'INTERNAL';
      const text = typed ? err.message : `internal error applying ${msg.kind}`;
      this.sendRaw(conn, errorReply(code, text, msg.requestId, type, this.opts.selfId, msg.epoch >>> 0));
    }
  }

  private onHello(conn: Conn, msg: Message): void {
    if (msg.kind !== 'HELLO') return this.refuse(conn, 'NOT_AUTHENTICATED', `expected HELLO, got ${msg.kind}`);
    if (msg.protocolVersion !== PROTOCOL_VERSION) {
      return this.refuse(conn, 'BAD_VERSION', `protocol version ${msg.protocolVersion}, expected ${PROTOCOL_VERSION}`);
    }
    if (msg.pairId !== this.opts.pairId) return this.refuse(conn, 'AUTH_FAILED', `pair id ${msg.pairId} is not ours`);
    if (msg.controllerId !== this.opts.partnerId) {
      return this.refuse(conn, 'AUTH_FAILED', `controller id ${msg.controllerId} is not our partner's (${this.opts.partnerId})`);
    }
    if (msg.nonce.length !== NONCE_BYTES) return this.refuse(conn, 'AUTH_FAILED', 'nonce of the wrong size');
    conn.theirNonce = msg.nonce;
    conn.partnerPid = msg.pid;
    conn.phase = 'await-auth';
    this.sendRaw(conn, {
      kind: 'HELLO_REPLY',
      requestId: msg.requestId,
      epoch: 0,
      sender: this.opts.selfId,
      flags: 0,
      pairId: this.opts.pairId,
      controllerId: this.opts.selfId,
      nonce: conn.ourNonce,
      pid: this.opts.pid,
    });
  }

  private onHelloReply(conn: Conn, msg: Message): void {
    if (msg.kind !== 'HELLO_REPLY') return this.refuse(conn, 'NOT_AUTHENTICATED', `expected HELLO_REPLY, got ${msg.kind}`);
    if (msg.pairId !== this.opts.pairId) return this.refuse(conn, 'AUTH_FAILED', `pair id ${msg.pairId} is not ours`);
    if (msg.controllerId !== this.opts.partnerId) {
      return this.refuse(conn, 'AUTH_FAILED', `controller id ${msg.controllerId} is not our partner's (${this.opts.partnerId})`);
    }
    if (msg.nonce.length !== NONCE_BYTES) return this.refuse(conn, 'AUTH_FAILED', 'nonce of the wrong size');
    conn.theirNonce = msg.nonce;
    // We dialed: we prove first, and the listener proves itself in AUTH_REPLY.
    conn.partnerPid = msg.pid;
    conn.phase = 'await-auth-reply';
    this.sendRaw(conn, {
      kind: 'AUTH',
      requestId: msg.requestId,
      epoch: 0,
      sender: this.opts.selfId,
      flags: 0,
      proof: this.dialerProof(conn),
    });
  }

  private onAuth(conn: Conn, msg: Message): void {
    if (msg.kind !== 'AUTH') return this.refuse(conn, 'NOT_AUTHENTICATED', `expected AUTH, got ${msg.kind}`);
    if (!proofMatches(msg.proof, this.dialerProof(conn))) {
      return this.refuse(conn, 'AUTH_FAILED', 'partner proof does not match: wrong secret');
    }
    // Only now, the dialer having proved it knows the secret, do we prove it too.
    this.sendRaw(conn, {
      kind: 'AUTH_REPLY',
      requestId: msg.requestId,
      epoch: 0,
      sender: this.opts.selfId,
      flags: 0,
      role: Role.STARTING,
      proof: this.listenerProof(conn),
    });
    this.bringUp(conn);
  }

  private onAuthReply(conn: Conn, msg: Message): void {
    if (msg.kind !== 'AUTH_REPLY') return this.refuse(conn, 'NOT_AUTHENTICATED', `expected AUTH_REPLY, got ${msg.kind}`);
    if (!proofMatches(msg.proof, this.listenerProof(conn))) {
      return this.refuse(conn, 'AUTH_FAILED', 'partner proof does not match: wrong secret');
    }
    this.bringUp(conn);
  }

  /** The proof the listening side gives in AUTH_REPLY, after the dialer's; the dialer recomputes it. */
  private listenerProof(conn: Conn): Buffer {
    const dialerId = conn.dialed ? this.opts.selfId : this.opts.partnerId;
    const listenerId = conn.dialed ? this.opts.partnerId : this.opts.selfId;
    const dialerNonce = conn.dialed ? conn.ourNonce : conn.theirNonce;
    const listenerNonce = conn.dialed ? conn.theirNonce : conn.ourNonce;
    return helloProof(this.opts.secret, this.opts.pairId, dialerId, listenerId, dialerNonce, listenerNonce);
  }

  /** The proof the dialing side gives in AUTH; the listener recomputes it. */
  private dialerProof(conn: Conn): Buffer {
    const dialerId = conn.dialed ? this.opts.selfId : this.opts.partnerId;
    const listenerId = conn.dialed ? this.opts.partnerId : this.opts.selfId;
    const dialerNonce = conn.dialed ? conn.ourNonce : conn.theirNonce;
    const listenerNonce = conn.dialed ? conn.theirNonce : conn.ourNonce;
    return authProof(this.opts.secret, this.opts.pairId, dialerId, listenerId, dialerNonce, listenerNonce);
  }

  private bringUp(conn: Conn): void {
    clearTimeout(conn.timer);
    conn.timer = undefined;
    this.handshakes.delete(conn);
    conn.accepted?.authenticated();
    if (this.dialing === conn) this.dialing = undefined;
    if (this.closed) {
      this.kill(conn);
      return;
    }
    const old = this.current;
    if (old !== undefined) {
      this.log.warn({ remote: old.remote, newRemote: conn.remote }, 'peer link replaced by a newer connection');
      this.takeDown(old, 'replaced by a newer connection from the partner', CLOSE_REPLACED);
    }
    conn.phase = 'up';
    this.current = conn;
    this.dialFailures = 0;
    this.log.info({ remote: conn.remote, partnerId: this.opts.partnerId, partnerPid: conn.partnerPid }, 'peer link up');
    this.handlers.onUp({ partnerId: this.opts.partnerId, partnerPid: conn.partnerPid });
  }

  /** The up link goes down: exactly one onDown, then the socket is closed. */
  private takeDown(conn: Conn, reason: string, closeCode = CLOSE_NORMAL, redialMs = 0): void {
    if (this.current !== conn) return;
    this.current = undefined;
    conn.phase = 'dead';
    this.log.warn({ remote: conn.remote, reason }, 'peer link down');
    this.closeWs(conn, closeCode, reason);
    this.handlers.onDown(reason);
    if (!this.closed) this.scheduleDial(redialMs);
  }

  /**
   * Refuses a connection: logs why, tells the other side with an ERROR frame
   * when the socket can still carry one, and closes.
   */
  private refuse(conn: Conn, code: ErrorCodeName, reason: string): void {
    if (conn.phase === 'dead') return;
    if (conn.phase === 'up') {
      this.log.warn({ remote: conn.remote, code, reason }, 'peer link protocol error');
      this.trySendError(conn, code, reason);
      // Waiting before the re-dial keeps a partner that keeps sending bad frames from spinning us.
      this.takeDown(conn, `protocol error: ${reason}`, CLOSE_PROTOCOL, this.opts.reconnectMs);
      return;
    }
    this.log.warn({ remote: conn.remote, code, reason, dialed: conn.dialed }, 'peer handshake refused');
    this.trySendError(conn, code, reason);
    this.kill(conn, code === 'AUTH_FAILED' ? CLOSE_POLICY : CLOSE_PROTOCOL, reason);
  }

  private trySendError(conn: Conn, code: ErrorCodeName, reason: string): void {
    if (conn.ws.readyState !== WebSocket.OPEN) return;
    this.sendRaw(conn, errorReply(code, reason, 0, 0, this.opts.selfId));
  }

  /** Ends a connection that is not (or no longer) the link. */
  private kill(conn: Conn, closeCode = CLOSE_NORMAL, reason = ''): void {
    if (this.current === conn) {
      this.takeDown(conn, reason || 'closed', closeCode);
      return;
    }
    conn.phase = 'dead';
    clearTimeout(conn.timer);
    conn.timer = undefined;
    this.handshakes.delete(conn);
    this.closeWs(conn, closeCode, reason);
  }

  private closeWs(conn: Conn, code: number, reason: string): void {
    clearTimeout(conn.timer);
    conn.timer = undefined;
    closeGracefully(conn.ws, code, reason);
  }

  private sendRaw(conn: Conn, msg: Message): void {
    if (conn.ws.readyState !== WebSocket.OPEN) return;
    const frame = encodeSafely(msg, this.opts.selfId, this.log);
    if (frame !== undefined) conn.ws.send(frame, SEND_BINARY);
  }

  private onSocketError(conn: Conn, err: Error): void {
    if (conn.dialed && conn.phase === 'await-open') {
      // The partner is down or restarting: routine, so say it once per streak.
      this.dialFailures++;
      const level = this.dialFailures === 1 ? 'info' : 'debug';
      this.log[level]({ remote: conn.remote, err: err.message, failures: this.dialFailures, tls: this.dialTls !== undefined }, 'peer dial failed');
      return;
    }
    this.log.warn({ remote: conn.remote, err: err.message, phase: conn.phase }, 'peer socket error');
  }

  private onClosed(conn: Conn, code: number, reason: string): void {
    clearTimeout(conn.timer);
    conn.timer = undefined;
    this.handshakes.delete(conn);
    if (this.current === conn) {
      // Replaced means another instance with our id holds the link now: a
      // restarted us, or a misconfigured twin. Either way, do not fight it at once.
      const redialMs = code === CLOSE_REPLACED ? this.opts.reconnectMs : 0;
      this.takeDown(conn, `connection closed (${code}${reason ? ` ${reason}` : ''})`, CLOSE_NORMAL, redialMs);
    } else {
      conn.phase = 'dead';
    }
    if (this.dialing === conn) {
      this.dialing = undefined;
      this.scheduleDial(this.opts.reconnectMs);
    }
  }
}
