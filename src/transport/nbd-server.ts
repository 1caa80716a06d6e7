// The NBD server: block clients (qemu, libnbd's tools, fio, nbd-client) read
// and write pagepair volumes over the NBD protocol, on TCP and optionally a
// unix socket. The bytes are protocol/nbd.ts; the volumes and their I/O are
// an NbdBackend. docs/nbd.md lists what is supported.
//
// Per connection: the fixed newstyle handshake, then any number of requests
// in flight, each answered as soon as the backend completes it (out of
// order), replies completed together leaving in one write. A request the
// server can judge bad (out of range, oversize, unknown) gets an NBD error
// and the connection goes on; bytes that cannot be divided into messages
// close that connection only.
//
// TLS (NBD_OPT_STARTTLS) with pre-shared keys: "off" refuses it, "on" offers
// it, "require" answers every other option NBD_REP_ERR_TLS_REQD until the
// client has upgraded (the spec's FORCEDTLS mode). After the ACK the same
// connection goes on, over a TLSSocket wrapped around the plain one.

import { lstat, unlink } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import type pino from 'pino';
import { isPagepairError, PagepairError } from '../protocol/errors.js';
import {
  decodeExportName,
  decodeInfoRequest,
  encodeAck,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeNoneChunk,
  encodeOptionError,
  encodeRepServer,
  isPowerOfTwo,
  NBD_DEFAULT_PAYLOAD_BYTES_MAX,
  nbdCmdName,
  NbdClientFlag,
  NbdClientParser,
  NbdCmd,
  NbdCmdFlag,
  NbdErrno,
  nbdErrnoFor,
  NbdFlag,
  NbdHandshakeFlag,
  NbdInfo,
  NbdOpt,
  nbdOptName,
  NbdRep,
  NBD_OFFSET_DATA_HEAD_BYTES,
  NBD_SIMPLE_REPLY_HEADER_BYTES,
  putOffsetDataHead,
  putSimpleReply,
} from '../protocol/nbd.js';
import type { NbdBlockSizes, NbdClientEvent, NbdOptionEvent, NbdRequest } from '../protocol/nbd.js';
import type { NbdBackend, NbdVolume } from './nbd-backend.js';
import { pskServerOptions, type PskKeys } from './tls.js';
import { listenPrivateSocket } from './unix-socket.js';

export interface NbdServerLimits {
  /** Largest READ or WRITE payload, advertised in NBD_INFO_BLOCK_SIZE. TRIM and WRITE_ZEROES may be longer: they are done in pieces of this size. */
  payloadBytesMax: number;
  /** Requests one connection may have in flight; at the limit the server stops reading that socket. */
  inflightPerConnectionMax: number;
  /** A WRITE over payloadBytesMax but under this is read, dropped and answered EINVAL; longer closes the connection. */
  droppedPayloadBytesMax: number;
  /** Largest option payload (export names are at most 4096 bytes anyway); longer closes the connection. */
  optionBytesMax: number;
  /** Options one connection may send before it must choose an export. */
  optionsPerConnectionMax: number;
  /** Open connections, handshaking or not. */
  connectionsMax: number;
  /** Reply bytes waiting for a slow reader before the server stops reading its requests. */
  replyQueueBytesMax: number;
  /**
   * Bytes one connection may have in flight: write payloads and read replies
   * of requests the backend holds, plus replies not yet taken by the socket.
   * A request that would pass it waits (and the socket is not read) until
   * replies drain. At least payloadBytesMax.
   */
  bytesInFlightMax: number;
  /** Longest a connection may take to choose an export. */
  handshakeTimeoutMs: number;
  /** How long close() lets requests in flight finish before cutting connections. */
  closeGraceMs: number;
}

export const NBD_SERVER_DEFAULT_LIMITS: Readonly<NbdServerLimits> = Object.freeze({
  payloadBytesMax: NBD_DEFAULT_PAYLOAD_BYTES_MAX,
  inflightPerConnectionMax: 128,
  droppedPayloadBytesMax: 2 * NBD_DEFAULT_PAYLOAD_BYTES_MAX,
  optionBytesMax: 64 * 1024,
  optionsPerConnectionMax: 256,
  connectionsMax: 1024,
  replyQueueBytesMax: 16 * 1024 * 1024,
  bytesInFlightMax: 2 * NBD_DEFAULT_PAYLOAD_BYTES_MAX,
  handshakeTimeoutMs: 10_000,
  closeGraceMs: 2_000,
});

export interface NbdServerOptions {
  /** TCP address to listen on. */
  host: string;
  /** 0 = any free port. */
  port: number;
  /** A unix socket to listen on as well; a stale file there is removed at start, and the socket at close. */
  socketPath?: string;
  limits?: Partial<NbdServerLimits>;
  /** NBD_OPT_STARTTLS. Absent: mode "off". */
  tls?: NbdTlsOptions;
  log: pino.Logger;
}

/**
 * "off": STARTTLS is refused (NBD_REP_ERR_POLICY). "on": offered, plain
 * sessions allowed. "require": nothing but STARTTLS and ABORT before TLS
 * (NBD_REP_ERR_TLS_REQD; NBD_OPT_EXPORT_NAME closes the connection).
 */
export interface NbdTlsOptions {
  mode: 'off' | 'on' | 'require';
  /** Keys by PSK identity; needed unless mode is "off". */
  keys?: PskKeys;
}

/**
 * Before TLS in "require" mode the only useful options carry no data; others
 * are answered NBD_REP_ERR_TLS_REQD, so their data is only ever skipped. Room
 * for an NBD_OPT_GO with a full-length name, no more.
 */
const PRE_TLS_OPTION_BYTES_MAX = 4096 + 64;

/** What every writable export supports; SEND_DF is added when structured replies were negotiated. */
const TRANSMISSION_FLAGS =
  NbdFlag.HAS_FLAGS | NbdFlag.SEND_FLUSH | NbdFlag.SEND_FUA | NbdFlag.SEND_TRIM | NbdFlag.SEND_WRITE_ZEROES | NbdFlag.CAN_MULTI_CONN;

/**
 * A read-only export (a snapshot): nothing that is only for writing (FUA,
 * TRIM, WRITE_ZEROES, and FLUSH, which is about writes acknowledged before
 * it). Reads through either controller see the same bytes: MULTI_CONN holds.
 */
const READ_ONLY_TRANSMISSION_FLAGS = NbdFlag.HAS_FLAGS | NbdFlag.READ_ONLY | NbdFlag.CAN_MULTI_CONN;

const HANDSHAKE_FLAGS = NbdHandshakeFlag.FIXED_NEWSTYLE | NbdHandshakeFlag.NO_ZEROES;

/** Command flags each command accepts. FUA is valid on every command once SEND_FUA is offered (proto.md). */
const READ_FLAGS = NbdCmdFlag.FUA;
const WRITE_FLAGS = NbdCmdFlag.FUA;
const WRITE_ZEROES_FLAGS = NbdCmdFlag.FUA | NbdCmdFlag.NO_HOLE;

const EMPTY = Buffer.alloc(0);

/**
 * Replies are gathered in slabs of this size: a reply header (and read data
 * up to REPLY_COPY_BYTES_MAX) is written right after the previous one, and
 * the replies of one turn leave as one view of the slab, in one write. Bytes
 * handed to the socket are never written again: a full slab is replaced, not
 * reused. One slab per connection in transmission.
 */
const REPLY_SLAB_BYTES = 64 * 1024;
/** Read data up to this size is copied next to its header (one buffer to write); longer data is written as it is. */
const REPLY_COPY_BYTES_MAX = 8 * 1024;

function checkLimits(l: NbdServerLimits): void {
  const bad = (field: keyof NbdServerLimits, what: string): never => {
    throw new PagepairError('BAD_CONFIG', `nbd limits: ${field} ${what}, got ${String(l[field])}`, field);
  };
  for (const key of Object.keys(l) as (keyof NbdServerLimits)[]) {
    if (!Number.isSafeInteger(l[key]) || l[key] <= 0) bad(key, 'must be a positive integer');
  }
  if (l.payloadBytesMax < 64 * 1024 || l.payloadBytesMax > 0x7fff_ffff) bad('payloadBytesMax', 'must lie in [64 KiB, 2 GiB)');
  if (l.droppedPayloadBytesMax < l.payloadBytesMax) bad('droppedPayloadBytesMax', 'must be at least payloadBytesMax');
  if (l.optionBytesMax < 4096 + 6) bad('optionBytesMax', 'must hold a 4096-byte export name (at least 4102)');
  if (l.replyQueueBytesMax < 64 * 1024) bad('replyQueueBytesMax', 'must be at least 64 KiB');
  if (l.bytesInFlightMax < l.payloadBytesMax) bad('bytesInFlightMax', `must be at least payloadBytesMax (${l.payloadBytesMax})`);
}

/** The constraints one export advertises: any alignment, the page as the efficient unit. */
function blockSizesFor(volume: NbdVolume, payloadBytesMax: number): NbdBlockSizes {
  let preferred = isPowerOfTwo(volume.pageSizeBytes) ? volume.pageSizeBytes : 4096;
  preferred = Math.max(512, preferred);
  while (preferred > payloadBytesMax) preferred /= 2;
  return { minimumBytes: 1, preferredBytes: preferred, maximumPayloadBytes: payloadBytesMax };
}

function describeVolume(v: NbdVolume): string {
  const what = v.readOnly === true ? 'snapshot (read only)' : 'volume';
  return `pagepair ${what} ${v.guid}, ${v.sizeBytes} bytes in pages of ${v.pageSizeBytes}`;
}

const State = { HANDSHAKE: 0, TRANSMISSION: 1, DRAINING: 2, CLOSED: 3 } as const;
type StateValue = (typeof State)[keyof typeof State];

class NbdConnection {
  state: StateValue = State.HANDSHAKE;
  /** The export asked for (for logs), then the one served. */
  exportName: string | null = null;
  volume: NbdVolume | null = null;
  closeReason: string | null = null;
  requests = 0;
  inflight = 0;
  private readonly parser: NbdClientParser;
  private readonly limits: NbdServerLimits;
  private structured = false;
  private noZeroes = false;
  private fixedNewstyle = false;
  /** "plain" until STARTTLS is acknowledged, "handshaking" until the TLS handshake is done. */
  private tlsState: 'plain' | 'handshaking' | 'secure' = 'plain';
  /** The PSK identity the client named in its TLS handshake. */
  private tlsIdentity: string | null = null;
  private options = 0;
  /** Bytes of requests in the backend: write payloads, read lengths (bytesInFlightMax). */
  private reservedBytes = 0;
  /** A request parsed but not started: it would pass bytesInFlightMax. */
  private held: NbdRequest | null = null;
  private paused = false;
  private writeBlocked = false;
  private hungUp = false;
  /** Replies of this turn not yet handed to the socket: views of slabs and long read data, in order. */
  private readonly outQueue: Buffer[] = [];
  private outBytes = 0;
  private flushScheduled = false;
  private slab: Buffer = EMPTY;
  /** Where this turn's bytes start in the slab, and where the next byte goes. */
  private slabStart = 0;
  private slabUsed = 0;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private readonly openedAtMs = Date.now();

  constructor(
    readonly id: number,
    readonly remote: string,
    /** The plain socket, then (after STARTTLS) the TLSSocket around it. */
    private socket: net.Socket,
    private readonly server: NbdServer,
  ) {
    this.limits = server.limits;
    this.parser = new NbdClientParser(
      {
        optionBytesMax: this.limits.optionBytesMax,
        payloadBytesMax: this.limits.payloadBytesMax,
        droppedPayloadBytesMax: this.limits.droppedPayloadBytesMax,
      },
      HANDSHAKE_FLAGS,
    );
  }

  start(): void {
    const s = this.socket;
    s.setNoDelay(true);
    s.setKeepAlive(true, 30_000);
    this.listen(s);
    this.handshakeTimer = setTimeout(this.onHandshakeTimeout, this.limits.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    this.send(encodeGreeting(HANDSHAKE_FLAGS));
  }

  /**
   * The server is closing: a connection still in the handshake is closed; one
   * in transmission finishes what is in flight, answering anything new with
   * ESHUTDOWN (which tells the client to disconnect), then is closed.
   */
  shutdown(): void {
    if (this.state === State.CLOSED) return;
    if (this.state !== State.TRANSMISSION || this.inflight === 0) this.hangUp('server closing');
    else this.closeReason ??= 'server closing';
  }

  destroy(reason: string): void {
    if (this.state === State.CLOSED) return;
    this.closeReason ??= reason;
    this.socket.destroy();
  }

  /** What this connection holds now against bytesInFlightMax. */
  get bytesInFlight(): number {
    return this.reservedBytes + this.outBytes + this.socket.writableLength;
  }

  get tlsEstablished(): boolean {
    return this.tlsState === 'secure';
  }

  private listen(s: net.Socket): void {
    s.on('data', this.onData);
    s.on('drain', this.onDrain);
    s.on('error', this.onError);
    s.on('close', this.onClose);
  }

  // -------------------------------------------------------------------------
  // Socket events (bound once per connection)

  private readonly onData = (chunk: Buffer): void => {
    if (this.state !== State.HANDSHAKE && this.state !== State.TRANSMISSION) return;
    this.parser.push(chunk);
    this.pump();
  };

  private readonly onDrain = (): void => {
    if (!this.writeBlocked && this.held === null) return;
    this.writeBlocked = false;
    this.pump();
  };

  private readonly onError = (err: Error): void => {
    if (this.tlsState === 'handshaking') {
      // Wrong key, unknown identity, or not TLS at all: this connection only.
      const who = this.tlsIdentity === null ? '' : this.server.tlsKnows(this.tlsIdentity) ? ` (identity ${JSON.stringify(this.tlsIdentity)}: wrong key?)` : ` (unknown identity ${JSON.stringify(this.tlsIdentity)})`;
      this.closeReason ??= `TLS handshake failed${who}: ${err.message.split('\n')[0]}`;
      return;
    }
    this.closeReason ??= `socket error: ${err.message}`;
  };

  /** The socket closed: requests of this connection still retrying in the backend stop (NbdRequester). */
  get gone(): boolean {
    return this.state === State.CLOSED;
  }

  private readonly onClose = (): void => {
    this.state = State.CLOSED;
    clearTimeout(this.handshakeTimer);
    this.server.connectionClosed(this, this.volume === null, Date.now() - this.openedAtMs);
  };

  private readonly onHandshakeTimeout = (): void => {
    if (this.state === State.HANDSHAKE) this.destroy(`no export chosen within ${this.limits.handshakeTimeoutMs} ms`);
  };

  private readonly onFlushTime = (): void => {
    this.flushScheduled = false;
    this.flushOut();
    // A request held for room may fit now that the replies went to the socket.
    if (this.held !== null && !this.socket.writableNeedDrain) this.pump();
  };

  // -------------------------------------------------------------------------
  // Reading

  /** Handles buffered messages until the parser needs bytes or a limit says wait. */
  private pump(): void {
    while (this.state === State.HANDSHAKE || this.state === State.TRANSMISSION) {
      if (this.inflight >= this.limits.inflightPerConnectionMax || this.writeBlocked) break;
      // The TLS handshake runs on its own; options resume once it is done.
      if (this.tlsState === 'handshaking') break;
      let ev: NbdClientEvent | undefined;
      if (this.held !== null) {
        if (!this.hasRoomFor(this.held)) break;
        ev = this.held;
        this.held = null;
      } else {
        try {
          ev = this.parser.next();
        } catch (err) {
          this.protocolViolation(err);
          return;
        }
        if (ev === undefined) break;
        if (ev.kind === 'request' && !this.hasRoomFor(ev)) {
          this.held = ev;
          break;
        }
      }
      try {
        if (ev.kind === 'request') this.onRequest(ev);
        else if (ev.kind === 'option') this.onOption(ev);
        else this.onClientFlags(ev.flags);
      } catch (err) {
        // A bug, or a volume the encoders refuse (a name over 4096 bytes): this connection only.
        this.server.log.error({ conn: this.id, err: String(err) }, 'nbd connection failed');
        this.destroy(`internal error: ${String(err)}`);
        return;
      }
    }
    this.updateFlow();
  }

  /**
   * Whether a request may start within bytesInFlightMax. One that does not
   * fit waits for replies to leave; with nothing of this connection in the
   * backend or queued it goes anyway, since no drain may be coming (a
   * request is never over bytesInFlightMax, which is at least payloadBytesMax,
   * so the bound holds up to the socket's small write buffer).
   */
  private hasRoomFor(req: NbdRequest): boolean {
    const cost = requestCost(req, this.limits.payloadBytesMax);
    if (cost === 0) return true;
    if (this.bytesInFlight + cost <= this.limits.bytesInFlightMax) return true;
    return this.reservedBytes === 0 && this.outBytes === 0 && !this.socket.writableNeedDrain;
  }

  /** Reads the socket only while there is room for what it may bring. */
  private updateFlow(): void {
    const open = this.state === State.HANDSHAKE || this.state === State.TRANSMISSION;
    const wait = !open || this.inflight >= this.limits.inflightPerConnectionMax || this.writeBlocked || this.held !== null;
    if (wait === this.paused) return;
    this.paused = wait;
    if (wait) this.socket.pause();
    else this.socket.resume();
  }

  private protocolViolation(err: unknown): void {
    const what = err instanceof Error ? err.message : String(err);
    const field = isPagepairError(err) && err.field !== undefined ? ` [${err.field}]` : '';
    this.hangUp(`protocol error: ${what}${field}`);
  }

  // -------------------------------------------------------------------------
  // Handshake

  private onClientFlags(flags: number): void {
    this.noZeroes = (flags & NbdClientFlag.C_NO_ZEROES) !== 0;
    this.fixedNewstyle = (flags & NbdClientFlag.C_FIXED_NEWSTYLE) !== 0;
    if (this.server.tlsMode !== 'require') return;
    // TLS needs fixed newstyle (proto.md); without it the client could only send NBD_OPT_EXPORT_NAME, which is closed anyway.
    if (!this.fixedNewstyle) {
      this.hangUp('TLS is required and the client did not agree to fixed newstyle negotiation');
      return;
    }
    this.parser.setOptionBytesMax(Math.min(this.limits.optionBytesMax, PRE_TLS_OPTION_BYTES_MAX));
  }

  private onOption(ev: NbdOptionEvent): void {
    const opt = ev.option;
    if (++this.options > this.limits.optionsPerConnectionMax) {
      this.hangUp(`more than ${this.limits.optionsPerConnectionMax} options without choosing an export`);
      return;
    }
    if (this.server.tlsMode === 'require' && this.tlsState === 'plain' && opt !== NbdOpt.STARTTLS && opt !== NbdOpt.ABORT) {
      // FORCEDTLS: NBD_OPT_EXPORT_NAME cannot be refused, so it ends the session.
      if (opt === NbdOpt.EXPORT_NAME) this.hangUp('NBD_OPT_EXPORT_NAME without TLS, which this server requires');
      else this.send(encodeOptionError(opt, NbdRep.ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first (nbds:// with a pre-shared key)'));
      return;
    }
    switch (opt) {
      case NbdOpt.STARTTLS:
        this.optStartTls(ev.data);
        return;
      case NbdOpt.GO:
      case NbdOpt.INFO:
        this.optInfo(opt, ev.data);
        return;
      case NbdOpt.EXPORT_NAME:
        this.optExportName(ev.data);
        return;
      case NbdOpt.LIST:
        this.optList(ev.data);
        return;
      case NbdOpt.ABORT:
        this.send(encodeAck(opt));
        this.hangUp('client sent NBD_OPT_ABORT');
        return;
      case NbdOpt.STRUCTURED_REPLY:
        if (ev.data.length !== 0) this.send(encodeOptionError(opt, NbdRep.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data'));
        else if (this.structured) this.send(encodeOptionError(opt, NbdRep.ERR_INVALID, 'structured replies are already on'));
        else {
          this.structured = true;
          this.send(encodeAck(opt));
        }
        return;
      default:
        // STARTTLS, meta contexts, extended headers and whatever comes next.
        this.send(encodeOptionError(opt, NbdRep.ERR_UNSUP, `${nbdOptName(opt)} is not supported by pagepair`));
    }
  }

  private optStartTls(data: Buffer): void {
    const opt = NbdOpt.STARTTLS;
    const keys = this.server.tlsKeys;
    if (keys === null) {
      // NOTLS mode: the spec allows NBD_REP_ERR_UNSUP (what this server answered before it had TLS) or ERR_POLICY.
      this.send(encodeOptionError(opt, NbdRep.ERR_UNSUP, 'TLS is not enabled on this server (tls.mode is "off")'));
      return;
    }
    if (!this.fixedNewstyle) {
      this.send(encodeOptionError(opt, NbdRep.ERR_POLICY, 'TLS needs fixed newstyle negotiation, which the client did not agree to'));
      return;
    }
    if (this.tlsState !== 'plain') {
      this.send(encodeOptionError(opt, NbdRep.ERR_INVALID, 'TLS is on already'));
      return;
    }
    if (data.length !== 0) {
      this.send(encodeOptionError(opt, NbdRep.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data'));
      return;
    }
    if (this.parser.bufferedBytes !== 0) {
      // The client must wait for the ACK before its TLS handshake; bytes already sent would be lost in the switch.
      this.hangUp('bytes sent after NBD_OPT_STARTTLS before its reply');
      return;
    }
    this.send(encodeAck(opt));
    // The ACK leaves in plain, before the socket changes hands; the TLS layer takes the socket as it is.
    this.flushOut();
    const plain = this.socket;
    plain.off('data', this.onData);
    plain.off('drain', this.onDrain);
    plain.off('error', this.onError);
    plain.off('close', this.onClose);
    // Errors surface on the TLS socket; a listener here keeps one on the plain socket from being unhandled.
    plain.on('error', () => undefined);
    if (this.paused) plain.resume();
    this.paused = false;
    const base = pskServerOptions(keys);
    const options: tls.TlsOptions = {
      ...base,
      pskCallback: (socket, identity) => {
        this.tlsIdentity = identity;
        return base.pskCallback!(socket, identity);
      },
    };
    // TLSSocket takes the server options (pskCallback among them); its declared type lists fewer.
    const secure = new tls.TLSSocket(plain, { ...options, isServer: true } as tls.TLSSocketOptions);
    this.tlsState = 'handshaking';
    this.socket = secure;
    this.listen(secure);
    secure.once('secure', this.onSecure);
  }

  private readonly onSecure = (): void => {
    if (this.state !== State.HANDSHAKE) return;
    this.tlsState = 'secure';
    // proto.md: nothing negotiated before STARTTLS survives it.
    this.structured = false;
    this.parser.setOptionBytesMax(this.limits.optionBytesMax);
    const s = this.socket as tls.TLSSocket;
    this.server.log.info({ conn: this.id, remote: this.remote, identity: this.tlsIdentity, protocol: s.getProtocol(), cipher: s.getCipher().name }, 'nbd tls established');
    this.pump();
  };

  private optInfo(opt: number, data: Buffer): void {
    let name: string;
    let infoTypes: number[];
    try {
      ({ exportName: name, infoTypes } = decodeInfoRequest(data));
    } catch (err) {
      this.send(encodeOptionError(opt, NbdRep.ERR_INVALID, err instanceof Error ? err.message : String(err)));
      return;
    }
    this.exportName = name;
    const volume = this.server.lookup(name);
    if (volume === undefined) {
      this.send(encodeOptionError(opt, NbdRep.ERR_UNKNOWN, name === '' ? 'no default export: name a volume' : `no volume named "${name}"`));
      return;
    }
    if (!this.server.backend.serving()) {
      this.send(encodeOptionError(opt, NbdRep.ERR_SHUTDOWN, 'this controller does not serve I/O now; try its partner'));
      return;
    }
    const flags = this.transmissionFlags(volume);
    this.send(encodeInfoExport(opt, volume.sizeBytes, flags));
    if (infoTypes.includes(NbdInfo.NAME) || name !== volume.name) this.send(encodeInfoName(opt, volume.name));
    if (infoTypes.includes(NbdInfo.DESCRIPTION)) this.send(encodeInfoDescription(opt, describeVolume(volume)));
    this.send(encodeInfoBlockSize(opt, blockSizesFor(volume, this.limits.payloadBytesMax)));
    this.send(encodeAck(opt));
    if (opt === NbdOpt.GO) this.enterTransmission(volume, flags);
  }

  private optExportName(data: Buffer): void {
    // No error reply exists for this option: whatever fails ends the session.
    let name: string;
    try {
      name = decodeExportName(data);
    } catch (err) {
      this.protocolViolation(err);
      return;
    }
    this.exportName = name;
    const volume = this.server.lookup(name);
    if (volume === undefined) {
      this.hangUp(`NBD_OPT_EXPORT_NAME: no volume named "${name}"`);
      return;
    }
    if (!this.server.backend.serving()) {
      this.hangUp('NBD_OPT_EXPORT_NAME while this controller does not serve I/O');
      return;
    }
    const flags = this.transmissionFlags(volume);
    this.send(encodeExportNameReply(volume.sizeBytes, flags, this.noZeroes));
    this.enterTransmission(volume, flags);
  }

  private optList(data: Buffer): void {
    if (data.length !== 0) {
      this.send(encodeOptionError(NbdOpt.LIST, NbdRep.ERR_INVALID, 'NBD_OPT_LIST takes no data'));
      return;
    }
    for (const v of this.server.backend.listVolumes()) this.send(encodeRepServer(NbdOpt.LIST, v.name, describeVolume(v)));
    this.send(encodeAck(NbdOpt.LIST));
  }

  private transmissionFlags(volume: NbdVolume): number {
    const base = volume.readOnly === true ? READ_ONLY_TRANSMISSION_FLAGS : TRANSMISSION_FLAGS;
    // One content chunk per read, always: "don't fragment" costs nothing.
    return this.structured ? base | NbdFlag.SEND_DF : base;
  }

  private enterTransmission(volume: NbdVolume, flags: number): void {
    this.volume = volume;
    this.exportName = volume.name;
    this.state = State.TRANSMISSION;
    clearTimeout(this.handshakeTimer);
    this.parser.startTransmission();
    this.server.log.info(
      { conn: this.id, remote: this.remote, export: volume.name, readOnly: volume.readOnly === true, structuredReplies: this.structured, transmissionFlags: flags },
      'nbd export opened',
    );
  }

  // -------------------------------------------------------------------------
  // Transmission

  private onRequest(req: NbdRequest): void {
    this.requests++;
    const volume = this.volume!;
    if (req.type === NbdCmd.DISC) {
      this.closeReason ??= 'client sent NBD_CMD_DISC';
      this.state = State.DRAINING;
      if (this.inflight === 0) this.hangUp(this.closeReason);
      return;
    }
    if (this.server.closing) {
      this.replyError(req, NbdErrno.ESHUTDOWN, 'the server is shutting down');
      return;
    }
    const end = req.offset + req.length;
    switch (req.type) {
      case NbdCmd.READ: {
        const allowed = this.structured ? READ_FLAGS | NbdCmdFlag.DF : READ_FLAGS;
        if ((req.flags & ~allowed) !== 0) return this.badFlags(req);
        if (req.length > this.limits.payloadBytesMax) {
          return this.replyError(
            req,
            this.structured ? NbdErrno.EOVERFLOW : NbdErrno.EINVAL,
            `NBD_CMD_READ of ${req.length} bytes is over the maximum payload of ${this.limits.payloadBytesMax}`,
          );
        }
        if (end > volume.sizeBytes) return this.pastEnd(req, NbdErrno.EINVAL);
        if (req.length === 0) return this.replyData(req, EMPTY);
        this.begin(req);
        this.serveRead(req, volume);
        return;
      }
      case NbdCmd.WRITE:
        if ((req.flags & ~WRITE_FLAGS) !== 0) return this.badFlags(req);
        if (volume.readOnly === true) return this.readOnly(req);
        if (req.payloadDropped) {
          return this.replyError(req, NbdErrno.EINVAL, `NBD_CMD_WRITE of ${req.length} bytes is over the maximum payload of ${this.limits.payloadBytesMax}`);
        }
        if (end > volume.sizeBytes) return this.pastEnd(req, NbdErrno.ENOSPC);
        if (req.length === 0) return this.replyOk(req);
        this.begin(req);
        this.serveWrite(req, volume);
        return;
      case NbdCmd.WRITE_ZEROES:
      case NbdCmd.TRIM: {
        const zeroes = req.type === NbdCmd.WRITE_ZEROES;
        if ((req.flags & ~(zeroes ? WRITE_ZEROES_FLAGS : NbdCmdFlag.FUA)) !== 0) return this.badFlags(req);
        if (volume.readOnly === true) return this.readOnly(req);
        if (end > volume.sizeBytes) return this.pastEnd(req, zeroes ? NbdErrno.ENOSPC : NbdErrno.EINVAL);
        if (req.length === 0) return this.replyOk(req);
        this.begin(req);
        this.serveZeroes(req, volume).catch((err: unknown) => this.completionFailed(req, err));
        return;
      }
      case NbdCmd.FLUSH:
        if ((req.flags & ~NbdCmdFlag.FUA) !== 0) return this.badFlags(req);
        if (req.offset !== 0 || req.length !== 0) return this.replyError(req, NbdErrno.EINVAL, 'NBD_CMD_FLUSH must have offset and length 0');
        this.begin(req);
        this.serveFlush(req, volume).catch((err: unknown) => this.completionFailed(req, err));
        return;
      default:
        // CACHE, BLOCK_STATUS, RESIZE are not offered; the rest do not exist.
        this.replyError(req, NbdErrno.EINVAL, `${nbdCmdName(req.type)} is not supported`);
    }
  }

  private badFlags(req: NbdRequest): void {
    this.replyError(req, NbdErrno.EINVAL, `${nbdCmdName(req.type)} does not take command flags 0x${req.flags.toString(16)}`);
  }

  /** A write, write-zeroes or trim on a read-only export (the client was told: NBD_FLAG_READ_ONLY). */
  private readOnly(req: NbdRequest): void {
    this.replyError(req, NbdErrno.EPERM, `${nbdCmdName(req.type)}: export "${this.volume!.name}" is read only (a snapshot)`);
  }

  private pastEnd(req: NbdRequest, errno: number): void {
    this.replyError(
      req,
      errno,
      `${nbdCmdName(req.type)} of ${req.length} bytes at offset ${req.offset} ends past the export's ${this.volume!.sizeBytes} bytes`,
    );
  }

  // Reads and writes are most of the traffic: a promise from the backend and
  // its two callbacks, no async function around them.

  private serveRead(req: NbdRequest, volume: NbdVolume): void {
    this.server.backend.read(volume, req.offset, req.length, this).then(
      (data) => {
        try {
          if (!Buffer.isBuffer(data) || data.length !== req.length) {
            const what = Buffer.isBuffer(data) ? `${data.length} bytes` : `a ${typeof data}`;
            this.completeError(req, new PagepairError('INTERNAL', `the backend read ${what} for a read of ${req.length}`));
            return;
          }
          this.end(req);
          this.replyData(req, data);
          this.afterCompletion();
        } catch (err) {
          this.completionFailed(req, err);
        }
      },
      (err: unknown) => this.completeErrorGuarded(req, err),
    );
  }

  private serveWrite(req: NbdRequest, volume: NbdVolume): void {
    this.server.backend.write(volume, req.offset, req.payload!, (req.flags & NbdCmdFlag.FUA) !== 0, this).then(
      () => {
        try {
          this.completeOk(req);
        } catch (err) {
          this.completionFailed(req, err);
        }
      },
      (err: unknown) => this.completeErrorGuarded(req, err),
    );
  }

  private completeErrorGuarded(req: NbdRequest, err: unknown): void {
    try {
      this.completeError(req, err);
    } catch (thrown) {
      this.completionFailed(req, thrown);
    }
  }

  /**
   * A completion that threw is a bug, here or in the backend: it must not
   * reach the process as an unhandled rejection. This connection alone is
   * closed (its client retries or fails over), with the reason logged.
   */
  private completionFailed(req: NbdRequest, err: unknown): void {
    this.server.log.error({ conn: this.id, cmd: nbdCmdName(req.type), err: err instanceof Error ? err.stack : String(err) }, 'nbd completion failed; closing the connection');
    this.destroy(`internal error completing ${nbdCmdName(req.type)}: ${err instanceof Error ? err.message : String(err)}`);
  }

  /** TRIM and WRITE_ZEROES, in pieces no longer than the payload limit (they may ask for a whole export). */
  private async serveZeroes(req: NbdRequest, volume: NbdVolume): Promise<void> {
    const fua = (req.flags & NbdCmdFlag.FUA) !== 0;
    const step = this.limits.payloadBytesMax;
    try {
      for (let off = req.offset, left = req.length; left > 0; ) {
        const n = Math.min(left, step);
        await this.server.backend.writeZeroes(volume, off, n, fua, this);
        off += n;
        left -= n;
      }
    } catch (err) {
      this.completeError(req, err);
      return;
    }
    this.completeOk(req);
  }

  private async serveFlush(req: NbdRequest, volume: NbdVolume): Promise<void> {
    try {
      await this.server.backend.flush(volume, this);
    } catch (err) {
      this.completeError(req, err);
      return;
    }
    this.completeOk(req);
  }

  /** A request goes into the backend: it counts against both in-flight limits until it completes. */
  private begin(req: NbdRequest): void {
    this.inflight++;
    this.reservedBytes += requestCost(req, this.limits.payloadBytesMax);
    this.server.noteBytesInFlight(this.bytesInFlight);
  }

  /** Its reply, if any, is counted from here on as bytes queued for the socket. */
  private end(req: NbdRequest): void {
    this.inflight--;
    this.reservedBytes -= requestCost(req, this.limits.payloadBytesMax);
  }

  private completeOk(req: NbdRequest): void {
    this.end(req);
    this.replyOk(req);
    this.afterCompletion();
  }

  private completeError(req: NbdRequest, err: unknown): void {
    this.end(req);
    let errno: number;
    let message: string;
    if (isPagepairError(err)) {
      errno = nbdErrnoFor(err.code);
      message = `${err.code}: ${err.message}`;
      this.server.log.debug({ conn: this.id, cmd: nbdCmdName(req.type), code: err.code, errno, err: err.message }, 'nbd request failed');
    } else {
      errno = NbdErrno.EIO;
      message = 'internal error';
      this.server.log.error({ conn: this.id, cmd: nbdCmdName(req.type), err: String(err) }, 'nbd request failed unexpectedly');
    }
    this.replyError(req, errno, message);
    this.afterCompletion();
  }

  private afterCompletion(): void {
    if (this.state === State.DRAINING || this.server.closing) {
      if (this.inflight === 0) this.hangUp(this.closeReason ?? 'drained');
      return;
    }
    // A slot or bytes freed: requests left in the parser may go now.
    if (this.paused || this.held !== null) this.pump();
  }

  // -------------------------------------------------------------------------
  // Replies

  private replyOk(req: NbdRequest): void {
    this.replySimple(req, 0);
  }

  private replySimple(req: NbdRequest, errno: number): void {
    if (!this.canSend()) return;
    putSimpleReply(this.room(NBD_SIMPLE_REPLY_HEADER_BYTES), this.slabUsed, errno, req.cookieHi, req.cookieLo);
    this.slabUsed += NBD_SIMPLE_REPLY_HEADER_BYTES;
    this.queued(NBD_SIMPLE_REPLY_HEADER_BYTES);
  }

  private replyData(req: NbdRequest, data: Buffer): void {
    if (!this.canSend()) return;
    if (this.structured && data.length === 0) {
      this.send(encodeNoneChunk(req.cookieHi, req.cookieLo));
      return;
    }
    const head = this.structured ? NBD_OFFSET_DATA_HEAD_BYTES : NBD_SIMPLE_REPLY_HEADER_BYTES;
    const copy = data.length <= REPLY_COPY_BYTES_MAX;
    const slab = this.room(copy ? head + data.length : head);
    if (this.structured) putOffsetDataHead(slab, this.slabUsed, req.cookieHi, req.cookieLo, req.offset, data.length, true);
    else putSimpleReply(slab, this.slabUsed, 0, req.cookieHi, req.cookieLo);
    this.slabUsed += head;
    if (copy) {
      data.copy(slab, this.slabUsed);
      this.slabUsed += data.length;
    } else {
      this.cutSlab();
      this.outQueue.push(data);
    }
    this.queued(head + data.length);
  }

  private replyError(req: NbdRequest, errno: number, message: string): void {
    // With structured replies a read must be answered by chunks; an error chunk carries the message too.
    if (this.structured) this.send(encodeErrorChunk(req.cookieHi, req.cookieLo, errno, message));
    else this.replySimple(req, errno);
  }

  /**
   * Handshake replies and the rarer transmission replies (error and empty
   * chunks): queued as they are, in order with the rest. A connection that
   * never reaches transmission never takes a slab.
   */
  private send(b: Buffer): void {
    if (!this.canSend()) return;
    this.cutSlab();
    this.outQueue.push(b);
    this.queued(b.length);
  }

  private canSend(): boolean {
    return !this.hungUp && this.state !== State.CLOSED;
  }

  /** The slab, with room for n more bytes at slabUsed. */
  private room(n: number): Buffer {
    if (this.slab.length - this.slabUsed < n) {
      this.cutSlab();
      // Bytes handed to the socket stay where they are; a new slab takes the next ones.
      this.slab = Buffer.allocUnsafe(Math.max(REPLY_SLAB_BYTES, n));
      this.slabStart = 0;
      this.slabUsed = 0;
    }
    return this.slab;
  }

  /** Queues the slab's bytes of this turn so far. */
  private cutSlab(): void {
    if (this.slabUsed === this.slabStart) return;
    this.outQueue.push(this.slab.subarray(this.slabStart, this.slabUsed));
    this.slabStart = this.slabUsed;
  }

  /**
   * Replies made in one turn (the handling of one event: a socket read, the
   * core's answers to one peer frame) leave together at its end, on the next
   * tick: before the other I/O that turn set off (frames to the partner,
   * store writes, which wait for setImmediate), and in one write of one
   * buffer when they all fit the slab.
   */
  private queued(n: number): void {
    this.outBytes += n;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      process.nextTick(this.onFlushTime);
    }
    if (!this.writeBlocked && this.outBytes + this.socket.writableLength > this.limits.replyQueueBytesMax) {
      // Past the queue limit the stream surely asks for a drain once flushed, which unblocks.
      this.writeBlocked = true;
    }
  }

  private flushOut(): void {
    this.cutSlab();
    const q = this.outQueue;
    if (q.length === 0) return;
    this.outBytes = 0;
    if (this.state === State.CLOSED) {
      q.length = 0;
      return;
    }
    if (q.length === 1) {
      this.socket.write(q[0]!);
    } else {
      this.socket.cork();
      for (const b of q) this.socket.write(b);
      this.socket.uncork();
    }
    q.length = 0;
    if (this.state === State.TRANSMISSION) this.server.noteBytesInFlight(this.socket.writableLength + this.reservedBytes);
  }

  /**
   * Ends the session once the replies queued so far are out; replies to
   * requests still in flight are dropped. A peer that does not read them is
   * cut off after closeGraceMs.
   */
  private hangUp(reason: string): void {
    if (this.hungUp || this.state === State.CLOSED) return;
    // What was queued (the last reply, the ACK of NBD_OPT_ABORT) goes out first.
    this.flushOut();
    this.hungUp = true;
    this.closeReason ??= reason;
    this.state = State.DRAINING;
    this.updateFlow();
    this.socket.destroySoon();
    setTimeout(this.onHangUpTimeout, this.limits.closeGraceMs).unref();
  }

  private readonly onHangUpTimeout = (): void => {
    if (this.state !== State.CLOSED) this.socket.destroy();
  };
}

/** What a request holds while in flight: its write payload, or the reply data of its read (an oversize read is refused, holding nothing). */
function requestCost(req: NbdRequest, payloadBytesMax: number): number {
  if (req.type === NbdCmd.READ) return req.length <= payloadBytesMax ? req.length : 0;
  if (req.type === NbdCmd.WRITE) return req.payload?.length ?? 0;
  return 0;
}

function describeRemote(socket: net.Socket, socketPath: string | undefined): string {
  if (socket.remoteAddress === undefined) return `unix:${socketPath ?? '?'}`;
  const host = socket.remoteAddress;
  return host.includes(':') ? `[${host}]:${socket.remotePort}` : `${host}:${socket.remotePort}`;
}

export class NbdServer {
  readonly limits: NbdServerLimits;
  readonly log: pino.Logger;
  readonly tlsMode: NbdTlsOptions['mode'];
  /** null when TLS is off. */
  readonly tlsKeys: PskKeys | null;
  closing = false;
  /** The most bytes one connection held in flight (bytesInFlightMax), since start: for tests and status. */
  bytesInFlightPeak = 0;
  /** Connections dropped at connectionsMax since start. */
  connectionsRefused = 0;
  private refusedUnlogged = 0;
  private refusedLoggedAtMs = 0;
  private readonly opts: NbdServerOptions;
  private readonly conns = new Set<NbdConnection>();
  private tcp: net.Server | undefined;
  private unixServer: net.Server | undefined;
  private nextId = 1;
  private closed: Promise<void> | undefined;
  private idle: (() => void) | undefined;

  constructor(
    opts: NbdServerOptions,
    readonly backend: NbdBackend,
  ) {
    this.opts = opts;
    this.log = opts.log;
    this.limits = { ...NBD_SERVER_DEFAULT_LIMITS, ...opts.limits };
    checkLimits(this.limits);
    this.tlsMode = opts.tls?.mode ?? 'off';
    if (this.tlsMode !== 'off' && (opts.tls?.keys === undefined || opts.tls.keys.size === 0)) {
      throw new PagepairError('BAD_CONFIG', `nbd tls: mode "${this.tlsMode}" needs pre-shared keys (tls.pskFile)`, 'tls.pskFile');
    }
    this.tlsKeys = this.tlsMode === 'off' ? null : opts.tls!.keys!;
  }

  /** Whether a PSK identity has a key here (for the reason of a failed TLS handshake). */
  tlsKnows(identity: string): boolean {
    return this.tlsKeys?.has(identity) ?? false;
  }

  noteBytesInFlight(bytes: number): void {
    if (bytes > this.bytesInFlightPeak) this.bytesInFlightPeak = bytes;
  }

  /** Bytes every connection holds in flight now (see bytesInFlightMax). */
  get bytesInFlight(): number {
    let n = 0;
    for (const c of this.conns) n += c.bytesInFlight;
    return n;
  }

  /** Open connections, in handshake or transmission. */
  get connections(): number {
    return this.conns.size;
  }

  /** Listens on TCP, then on the unix socket if configured. Resolves with the TCP port. */
  async start(): Promise<{ port: number }> {
    if (this.tcp !== undefined) throw new PagepairError('BAD_CONFIG', 'the NBD server was started already');
    this.tcp = this.makeServer(undefined);
    let port: number;
    try {
      port = await listen(this.tcp, { host: this.opts.host, port: this.opts.port });
      if (this.opts.socketPath !== undefined) {
        await removeStaleSocket(this.opts.socketPath);
        this.unixServer = this.makeServer(this.opts.socketPath);
        // Mode 0600 in a directory of our own: the socket gives every volume to whoever can connect.
        await listenPrivateSocket(this.unixServer, this.opts.socketPath);
      }
    } catch (err) {
      await this.close();
      throw err;
    }
    this.log.info({ host: this.opts.host, port, socket: this.opts.socketPath ?? null }, 'nbd server listening');
    return { port };
  }

  /** Stops listening, lets requests in flight finish (up to closeGraceMs), closes every connection and removes the unix socket. */
  close(): Promise<void> {
    this.closed ??= this.closeOnce();
    return this.closed;
  }

  /** An export name to a volume. The default export "" is the only volume, when there is exactly one. */
  lookup(name: string): NbdVolume | undefined {
    const v = this.backend.findVolume(name);
    if (v !== undefined || name !== '') return v;
    const all = this.backend.listVolumes();
    return all.length === 1 ? all[0] : undefined;
  }

  connectionClosed(conn: NbdConnection, inHandshake: boolean, durationMs: number): void {
    this.conns.delete(conn);
    this.log.info(
      {
        conn: conn.id,
        remote: conn.remote,
        export: conn.exportName,
        reason: conn.closeReason ?? 'client closed the connection',
        inHandshake,
        requests: conn.requests,
        inflightDropped: conn.inflight,
        durationMs,
      },
      'nbd connection closed',
    );
    if (this.conns.size === 0) this.idle?.();
  }

  private makeServer(socketPath: string | undefined): net.Server {
    const server = net.createServer({ noDelay: true });
    server.maxConnections = this.limits.connectionsMax;
    // Past maxConnections node closes the socket itself and says so here.
    server.on('drop', () => this.refused());
    server.on('connection', (socket) => this.accept(socket, socketPath));
    server.on('error', (err) => this.log.error({ err: err.message, socket: socketPath ?? null }, 'nbd listener error'));
    return server;
  }

  /**
   * The fuzzer's seam (src/testing/fuzz): serves a connection over a stream
   * shaped like a socket (an in-memory duplex), as if a listener had accepted it.
   */
  serveSocket(socket: net.Socket): void {
    this.accept(socket, undefined);
  }

  private accept(socket: net.Socket, socketPath: string | undefined): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    // Across both listeners: maxConnections counts each alone.
    if (this.conns.size >= this.limits.connectionsMax) {
      socket.destroy();
      this.refused();
      return;
    }
    const conn = new NbdConnection(this.nextId++, describeRemote(socket, socketPath), socket, this);
    this.conns.add(conn);
    this.log.debug({ conn: conn.id, remote: conn.remote }, 'nbd connection opened');
    conn.start();
  }

  /** A connection dropped at connectionsMax: counted, and logged at most once a second (a flood must not flood the log). */
  private refused(): void {
    this.connectionsRefused++;
    this.refusedUnlogged++;
    const now = Date.now();
    if (now - this.refusedLoggedAtMs < 1000) return;
    this.log.warn({ connectionsMax: this.limits.connectionsMax, refused: this.refusedUnlogged, refusedTotal: this.connectionsRefused }, 'nbd connection refused: at the connection limit');
    this.refusedLoggedAtMs = now;
    this.refusedUnlogged = 0;
  }

  private async closeOnce(): Promise<void> {
    this.closing = true;
    const listeners = [this.tcp, this.unixServer].filter((s): s is net.Server => s !== undefined && s.listening);
    const stopped = Promise.all(listeners.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    if (this.conns.size > 0) {
      const idle = new Promise<void>((resolve) => (this.idle = resolve));
      for (const c of [...this.conns]) c.shutdown();
      const timer = setTimeout(() => {
        for (const c of [...this.conns]) c.destroy(`server closing: requests still in flight after ${this.limits.closeGraceMs} ms`);
      }, this.limits.closeGraceMs);
      await idle;
      clearTimeout(timer);
    }
    await stopped;
    if (this.unixServer !== undefined && this.opts.socketPath !== undefined) {
      await unlink(this.opts.socketPath).catch(() => undefined);
    }
    this.log.info('nbd server closed');
  }
}

function listen(server: net.Server, where: net.ListenOptions): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    server.listen(where, () => {
      server.off('error', onError);
      const addr = server.address();
      resolve(addr !== null && typeof addr === 'object' ? addr.port : 0);
    });
  });
}

/**
 * A socket file left by a server that died is removed; one a live server
 * listens on, or a file that is not a socket, is an error (never deleted).
 */
async function removeStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = (await lstat(path)).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!isSocket) throw new PagepairError('BAD_CONFIG', `NBD socket path ${path} exists and is not a socket`, 'socket');
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new PagepairError('BAD_CONFIG', `another server listens on NBD socket ${path}`, 'socket');
  await unlink(path);
}
