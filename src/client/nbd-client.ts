// An NBD client: one connection to one export of an NBD server (a pagepair
// controller, or any server that speaks the fixed newstyle handshake). It
// negotiates with NBD_OPT_GO (the export name is the volume's name), asks
// for simple replies only, and then keeps many requests in flight, matching
// each reply to its request by cookie. TCP (nbd://host:port/name) and unix
// sockets (nbd+unix:///name?socket=path) both work, and so does TLS with a
// pre-shared key (nbds://, nbds+unix://): NBD_OPT_STARTTLS first, then the
// rest of the handshake and every request over TLS.
//
// Failures are PagepairErrors: an NBD error reply carries its errno
// (NbdRequestError), a lost connection fails everything in flight with
// NOT_ACTIVE (no answer: the request may or may not have happened), a reply
// that breaks the protocol closes the connection. Every buffer is bounded:
// option replies, request payloads and requests in flight.

import net from 'node:net';
import tls from 'node:tls';
import { PagepairError, type ErrorCodeName } from '../protocol/errors.js';
import { pskClientOptions, readPskFile } from '../transport/tls.js';
import {
  NBD_INIT_MAGIC_HI,
  NBD_INIT_MAGIC_LO,
  NBD_OPTS_MAGIC_HI,
  NBD_OPTS_MAGIC_LO,
  NBD_REP_MAGIC_HI,
  NBD_REP_MAGIC_LO,
  NBD_REQUEST_HEADER_BYTES,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_HEADER_BYTES,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRING_BYTES_MAX,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBD_DEFAULT_PAYLOAD_BYTES_MAX,
  NBD_GREETING_BYTES,
  NBD_OPTION_REPLY_HEADER_BYTES,
  NbdClientFlag,
  NbdCmd,
  NbdCmdFlag,
  NbdErrno,
  NbdFlag,
  NbdHandshakeFlag,
  NbdInfo,
  NbdOpt,
  NbdRep,
  nbdCmdName,
} from '../protocol/nbd.js';

const TWO_POW_32 = 0x1_0000_0000;

/** A pre-shared key and the identity it goes by (one line of a psktool key file). */
export interface NbdTlsCredentials {
  identity: string;
  key: Buffer;
}

/** Where an export is: a TCP address or a unix socket, and the export's name; with `tls`, reached over TLS-PSK. */
export type NbdAddress = ({ host: string; port: number; exportName: string } | { socketPath: string; exportName: string }) & { tls?: NbdTlsCredentials };

/**
 * One key of a psktool key file (`identity:hexkey` lines, mode 0600): the
 * identity asked for, or the file's first.
 */
export function nbdTlsFromPskFile(path: string, identity?: string): NbdTlsCredentials {
  const keys = readPskFile(path);
  const id = identity ?? keys.keys().next().value!;
  const key = keys.get(id);
  if (key === undefined) throw new PagepairError('BAD_FIELD', `TLS key file ${path} has no key for identity ${JSON.stringify(id)}`, 'tlsIdentity');
  return { identity: id, key };
}

/** A key file and identity as a tool's options name them (--tls-psk-file, --tls-identity). */
export interface NbdTlsChoice {
  pskFile?: string;
  identity?: string;
}

/**
 * The key an NBD client uses: from the file chosen, else from the
 * controller's own key file when its configuration requires TLS (a tool on
 * the controller's host reads the same file), else none: plain NBD.
 */
export function resolveNbdTls(choice: NbdTlsChoice | undefined, controllerTls?: { mode: string; pskFile?: string }): NbdTlsCredentials | undefined {
  const file = choice?.pskFile ?? (controllerTls?.mode === 'require' ? controllerTls.pskFile : undefined);
  if (file !== undefined) return nbdTlsFromPskFile(file, choice?.identity);
  if (choice?.identity !== undefined) throw new PagepairError('BAD_FIELD', 'a TLS identity needs a key file (--tls-psk-file)', 'tlsIdentity');
  return undefined;
}

/**
 * The NBD URI forms: nbd://host[:port]/name, nbd+unix:///name?socket=path,
 * and their TLS twins nbds:// and nbds+unix://. A TLS URI takes its key from
 * opts.tls, or, as libnbd reads it, from ?tls-psk-file=PATH with the
 * identity as the URI's user (nbds://alice@host/name; else the file's first).
 */
export function parseNbdUrl(url: string, opts: { tls?: NbdTlsCredentials } = {}): NbdAddress {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new PagepairError('BAD_FIELD', `not a URL: ${url}`, 'url');
  }
  const exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  const secure = u.protocol === 'nbds:' || u.protocol === 'nbds+unix:';
  let creds: { tls?: NbdTlsCredentials } = {};
  if (secure) {
    const pskFile = u.searchParams.get('tls-psk-file');
    const user = u.username === '' ? undefined : decodeURIComponent(u.username);
    if (opts.tls !== undefined) creds = { tls: opts.tls };
    else if (pskFile !== null && pskFile !== '') creds = { tls: nbdTlsFromPskFile(pskFile, user) };
    else throw new PagepairError('BAD_FIELD', `${url} asks for TLS but gives no key: add ?tls-psk-file=PATH (or give a key file with --tls-psk-file)`, 'url');
  }
  if (u.protocol === 'nbd:' || u.protocol === 'nbds:') {
    const port = u.port === '' ? 10809 : Number(u.port);
    if (u.hostname === '') throw new PagepairError('BAD_FIELD', `${url} names no host`, 'url');
    return { host: u.hostname.replace(/^\[|\]$/g, ''), port, exportName, ...creds };
  }
  if (u.protocol === 'nbd+unix:' || u.protocol === 'nbds+unix:') {
    const socketPath = u.searchParams.get('socket');
    if (socketPath === null || socketPath === '') throw new PagepairError('BAD_FIELD', `${url} has no ?socket=path`, 'url');
    return { socketPath, exportName, ...creds };
  }
  throw new PagepairError('BAD_FIELD', `${url}: only nbd://, nbds://, nbd+unix:// and nbds+unix:// are supported`, 'url');
}

/** The address as a URI (never with the key: for messages and logs). */
export function formatNbdUrl(a: NbdAddress): string {
  const name = encodeURIComponent(a.exportName);
  const s = a.tls !== undefined ? 's' : '';
  return 'socketPath' in a ? `nbd${s}+unix:///${name}?socket=${a.socketPath}` : `nbd${s}://${a.host}:${a.port}/${name}`;
}

/** The error codes NBD errnos stand for (any other: IO_ERROR). ESHUTDOWN is what a fenced or stopping pagepair controller answers. */
const ERROR_CODE_OF_ERRNO: ReadonlyMap<number, ErrorCodeName> = new Map([
  [NbdErrno.ESHUTDOWN, 'SHUTTING_DOWN'],
  [NbdErrno.ENOSPC, 'NO_SPACE'],
  [NbdErrno.EINVAL, 'BAD_FIELD'],
  [NbdErrno.EOVERFLOW, 'TOO_LARGE'],
  [NbdErrno.ENOTSUP, 'UNKNOWN_TYPE'],
  [NbdErrno.ENOMEM, 'BUSY'],
  // What pagepair answers a write to a snapshot (a read-only export); not a reason to try the other controller.
  [NbdErrno.EPERM, 'READ_ONLY'],
]);

export function errorCodeForNbdErrno(errno: number): ErrorCodeName {
  return ERROR_CODE_OF_ERRNO.get(errno) ?? 'IO_ERROR';
}

/** A request the server answered with an error. */
export class NbdRequestError extends PagepairError {
  constructor(
    readonly errno: number,
    readonly command: string,
  ) {
    super(errorCodeForNbdErrno(errno), `${command} failed with NBD error ${errno}`);
  }
}

export interface NbdClientOptions {
  /** Connecting and the handshake together. Default 10 s. */
  connectTimeoutMs?: number;
  /** One request's answer; on expiry it fails with TIMEOUT and the connection is closed (its stream can no longer be trusted). 0 = none. Default 30 s. */
  requestTimeoutMs?: number;
  /** Requests on the wire at once; more wait their turn in this client. Default 64. */
  inflightMax?: number;
  /** Largest READ or WRITE sent; the server's NBD_INFO_BLOCK_SIZE maximum lowers it. Default 32 MiB. */
  payloadBytesMax?: number;
  /** TLS with this key, whatever the address says (an nbds:// URL without ?tls-psk-file needs it). */
  tls?: NbdTlsCredentials;
}

export interface NbdExportInfo {
  sizeBytes: number;
  transmissionFlags: number;
  /** From NBD_INFO_BLOCK_SIZE when the server sent it. */
  minimumBytes: number;
  preferredBytes: number;
  maximumPayloadBytes: number;
}

interface Pending {
  command: string;
  /** For a READ: the bytes that follow the reply header; else 0. */
  readBytes: number;
  resolve(data: Buffer | null): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | undefined;
}

/** Option replies are small (info, errors with a message); anything longer is refused. */
const OPTION_REPLY_BYTES_MAX = 64 * 1024;

/** Bytes in arrival order, taken out in exact amounts. */
class ByteQueue {
  private chunks: Buffer[] = [];
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  /** n bytes (n <= length): a view when they lie in one chunk, else a copy. */
  take(n: number): Buffer {
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.length -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0]!;
      const k = Math.min(n - at, c.length);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.length -= n;
    return out;
  }

  clear(): void {
    this.chunks = [];
    this.length = 0;
  }
}

function putU64(b: Buffer, p: number, v: number): void {
  b.writeUInt32BE(Math.floor(v / TWO_POW_32), p);
  b.writeUInt32BE(v >>> 0, p + 4);
}

function getU64(b: Buffer, p: number): number {
  return b.readUInt32BE(p) * TWO_POW_32 + b.readUInt32BE(p + 4);
}

export class NbdClient {
  readonly address: NbdAddress;
  readonly info: NbdExportInfo;
  private readonly socket: net.Socket;
  private readonly in: ByteQueue;
  private readonly inflightMax: number;
  private readonly requestTimeoutMs: number;
  private readonly payloadBytesMax: number;
  private readonly pending = new Map<number, Pending>();
  /** Requests waiting for a slot: their bytes are sent when one frees. */
  private readonly queue: { cookie: number; bytes: Buffer[]; p: Pending }[] = [];
  private nextCookie = 1;
  /** The reply whose read data is still arriving. */
  private current: { cookie: number; errno: number; p: Pending } | null = null;
  private failure: PagepairError | null = null;
  private closing: Promise<void> | null = null;
  private readonly closedPromise: Promise<void>;
  private closedListeners: ((err: PagepairError | null) => void)[] = [];

  private constructor(address: NbdAddress, socket: net.Socket, queue: ByteQueue, info: NbdExportInfo, opts: Required<Omit<NbdClientOptions, 'tls'>>) {
    this.address = address;
    this.socket = socket;
    this.in = queue;
    this.info = info;
    this.inflightMax = opts.inflightMax;
    this.requestTimeoutMs = opts.requestTimeoutMs;
    this.payloadBytesMax = Math.min(opts.payloadBytesMax, info.maximumPayloadBytes);
    this.closedPromise = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (c: Buffer) => {
      this.in.push(c);
      this.pump();
    });
    socket.on('error', (err) => this.fail(new PagepairError('NOT_ACTIVE', `NBD connection to ${formatNbdUrl(address)}: ${err.message}`)));
    socket.on('close', () => this.fail(new PagepairError('NOT_ACTIVE', `NBD connection to ${formatNbdUrl(address)} closed`)));
    this.pump();
  }

  /** Connects and negotiates the export; rejects with a PagepairError (UNKNOWN_GUID when the export does not exist). */
  static async connect(where: NbdAddress | string, options: NbdClientOptions = {}): Promise<NbdClient> {
    const { tls: tlsOption, ...rest } = options;
    const given = typeof where === 'string' ? parseNbdUrl(where, tlsOption !== undefined ? { tls: tlsOption } : {}) : where;
    const address: NbdAddress = tlsOption !== undefined && given.tls === undefined ? { ...given, tls: tlsOption } : given;
    const opts: Required<Omit<NbdClientOptions, 'tls'>> = {
      connectTimeoutMs: 10_000,
      requestTimeoutMs: 30_000,
      inflightMax: 64,
      payloadBytesMax: NBD_DEFAULT_PAYLOAD_BYTES_MAX,
      ...rest,
    };
    if (!Number.isSafeInteger(opts.inflightMax) || opts.inflightMax < 1) throw new PagepairError('BAD_FIELD', 'inflightMax must be a positive integer', 'inflightMax');
    if (Buffer.byteLength(address.exportName) > NBD_STRING_BYTES_MAX) {
      throw new PagepairError('LIMIT_EXCEEDED', `export name is over ${NBD_STRING_BYTES_MAX} bytes`, 'exportName');
    }
    const url = formatNbdUrl(address);
    const socket = 'socketPath' in address ? net.connect({ path: address.socketPath }) : net.connect({ host: address.host, port: address.port });
    socket.setNoDelay?.(true);
    const hs = new Handshake(socket, url);
    const timer = setTimeout(() => hs.abort(new PagepairError('TIMEOUT', `NBD handshake with ${url} took over ${opts.connectTimeoutMs} ms`)), opts.connectTimeoutMs);
    try {
      const info = await hs.run(address.exportName, address.tls);
      return new NbdClient(address, hs.socket, hs.detach(), info, opts);
    } catch (err) {
      hs.socket.destroy();
      socket.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  get sizeBytes(): number {
    return this.info.sizeBytes;
  }

  /** Open and not closing: requests may be sent. */
  get isOpen(): boolean {
    return this.failure === null && this.closing === null;
  }

  /** Requests sent and not answered, and requests waiting for a slot. */
  get inflight(): number {
    return this.pending.size + this.queue.length;
  }

  /** Called once when the connection ends: with the error that ended it, or null for close(). */
  onClosed(listener: (err: PagepairError | null) => void): void {
    if (this.failure !== null) listener(this.closing !== null ? null : this.failure);
    else this.closedListeners.push(listener);
  }

  read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length, true);
    return this.request(NbdCmd.READ, 0, offset, length, null) as Promise<Buffer>;
  }

  /** The data must not change until the promise settles. */
  async write(offset: number, data: Uint8Array, opts: { fua?: boolean } = {}): Promise<void> {
    this.checkRange(offset, data.length, true);
    if (opts.fua === true) this.needFlag(NbdFlag.SEND_FUA, 'FUA');
    await this.request(NbdCmd.WRITE, opts.fua === true ? NbdCmdFlag.FUA : 0, offset, data.length, data);
  }

  async flush(): Promise<void> {
    this.needFlag(NbdFlag.SEND_FLUSH, 'NBD_CMD_FLUSH');
    await this.request(NbdCmd.FLUSH, 0, 0, 0, null);
  }

  async trim(offset: number, length: number, opts: { fua?: boolean } = {}): Promise<void> {
    this.needFlag(NbdFlag.SEND_TRIM, 'NBD_CMD_TRIM');
    this.checkRange(offset, length, false);
    await this.request(NbdCmd.TRIM, opts.fua === true ? NbdCmdFlag.FUA : 0, offset, length, null);
  }

  async writeZeroes(offset: number, length: number, opts: { fua?: boolean; noHole?: boolean } = {}): Promise<void> {
    this.needFlag(NbdFlag.SEND_WRITE_ZEROES, 'NBD_CMD_WRITE_ZEROES');
    this.checkRange(offset, length, false);
    const flags = (opts.fua === true ? NbdCmdFlag.FUA : 0) | (opts.noHole === true ? NbdCmdFlag.NO_HOLE : 0);
    await this.request(NbdCmd.WRITE_ZEROES, flags, offset, length, null);
  }

  /**
   * A clean close: waits for every request in flight to be answered, sends
   * NBD_CMD_DISC and ends the connection. Requests made after the call are
   * refused.
   */
  close(): Promise<void> {
    this.closing ??= this.closeOnce();
    return this.closing;
  }

  /** Cuts the connection now; everything in flight fails with NOT_ACTIVE. */
  destroy(): void {
    this.fail(new PagepairError('NOT_ACTIVE', `NBD connection to ${formatNbdUrl(this.address)} destroyed`));
  }

  private async closeOnce(): Promise<void> {
    while (this.failure === null && this.inflight > 0) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (this.inflight > 0) await Promise.race([this.quiet(), this.closedPromise]);
    }
    if (this.failure === null) {
      const disc = Buffer.alloc(NBD_REQUEST_HEADER_BYTES);
      this.header(disc, NbdCmd.DISC, 0, 0, 0, 0);
      this.socket.end(disc);
      const t = setTimeout(() => this.socket.destroy(), 2000);
      await this.closedPromise;
      clearTimeout(t);
    } else {
      this.socket.destroy();
    }
  }

  private quietWaiters: (() => void)[] = [];

  private quiet(): Promise<void> {
    return new Promise((resolve) => this.quietWaiters.push(resolve));
  }

  private needFlag(flag: number, what: string): void {
    if ((this.info.transmissionFlags & flag) === 0) throw new PagepairError('UNKNOWN_TYPE', `the export does not offer ${what}`, 'transmissionFlags');
  }

  private checkRange(offset: number, length: number, payload: boolean): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || length > 0xffff_ffff) {
      throw new PagepairError('BAD_FIELD', `bad range ${offset}+${length}`, 'offset');
    }
    if (offset + length > this.info.sizeBytes) {
      throw new PagepairError('OUT_OF_RANGE', `${offset}+${length} is past the export's ${this.info.sizeBytes} bytes`, 'offset');
    }
    if (payload && length > this.payloadBytesMax) {
      throw new PagepairError('TOO_LARGE', `${length} bytes is over the largest request of ${this.payloadBytesMax}`, 'length');
    }
  }

  private header(b: Buffer, type: number, flags: number, cookie: number, offset: number, length: number): void {
    b.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    b.writeUInt16BE(flags, 4);
    b.writeUInt16BE(type, 6);
    b.writeUInt32BE(0, 8);
    b.writeUInt32BE(cookie, 12);
    putU64(b, 16, offset);
    b.writeUInt32BE(length, 24);
  }

  private request(type: number, flags: number, offset: number, length: number, payload: Uint8Array | null): Promise<Buffer | null> {
    if (this.failure !== null) return Promise.reject(this.failure);
    if (this.closing !== null) return Promise.reject(new PagepairError('NOT_ACTIVE', 'NBD client closing'));
    const cookie = this.nextCookie;
    this.nextCookie = this.nextCookie >= 0xffff_fffe ? 1 : this.nextCookie + 1;
    const head = Buffer.allocUnsafe(NBD_REQUEST_HEADER_BYTES);
    this.header(head, type, flags, cookie, offset, length);
    const bytes = payload === null || payload.length === 0 ? [head] : [head, Buffer.from(payload.buffer, payload.byteOffset, payload.length)];
    return new Promise<Buffer | null>((resolve, reject) => {
      const p: Pending = { command: nbdCmdName(type), readBytes: type === NbdCmd.READ ? length : 0, resolve, reject, timer: undefined };
      if (this.pending.size < this.inflightMax) this.send(cookie, bytes, p);
      else this.queue.push({ cookie, bytes, p });
    });
  }

  private send(cookie: number, bytes: Buffer[], p: Pending): void {
    this.pending.set(cookie, p);
    if (this.requestTimeoutMs > 0) {
      p.timer = setTimeout(() => {
        p.timer = undefined;
        this.fail(new PagepairError('TIMEOUT', `${p.command} got no answer from ${formatNbdUrl(this.address)} within ${this.requestTimeoutMs} ms`));
      }, this.requestTimeoutMs);
      p.timer.unref?.();
    }
    for (const b of bytes) this.socket.write(b);
  }

  private settle(cookie: number): Pending {
    const p = this.pending.get(cookie)!;
    this.pending.delete(cookie);
    if (p.timer !== undefined) clearTimeout(p.timer);
    const next = this.queue.shift();
    if (next !== undefined) this.send(next.cookie, next.bytes, next.p);
    if (this.pending.size === 0) for (const w of this.quietWaiters.splice(0)) w();
    return p;
  }

  /** Replies as they arrive (any order). */
  private pump(): void {
    while (this.failure === null) {
      if (this.current !== null) {
        const { cookie, p } = this.current;
        if (this.in.length < p.readBytes) return;
        const data = Buffer.from(this.in.take(p.readBytes));
        this.current = null;
        this.settle(cookie).resolve(data);
        continue;
      }
      if (this.in.length < NBD_SIMPLE_REPLY_HEADER_BYTES) return;
      const head = this.in.take(NBD_SIMPLE_REPLY_HEADER_BYTES);
      const magic = head.readUInt32BE(0);
      if (magic !== NBD_SIMPLE_REPLY_MAGIC) {
        const why = magic === NBD_STRUCTURED_REPLY_MAGIC ? ' (a structured reply, which was not negotiated)' : '';
        this.fail(new PagepairError('BAD_MAGIC', `reply magic 0x${magic.toString(16).padStart(8, '0')}${why}`, 'replyMagic'));
        return;
      }
      const errno = head.readUInt32BE(4);
      const cookieHi = head.readUInt32BE(8);
      const cookie = head.readUInt32BE(12);
      const p = cookieHi === 0 ? this.pending.get(cookie) : undefined;
      if (p === undefined) {
        this.fail(new PagepairError('BAD_FIELD', `reply for cookie ${cookieHi}:${cookie}, which no request in flight has`, 'cookie'));
        return;
      }
      if (errno !== 0) {
        this.settle(cookie).reject(new NbdRequestError(errno, p.command));
        continue;
      }
      if (p.readBytes > 0) {
        this.current = { cookie, errno, p };
        continue;
      }
      this.settle(cookie).resolve(p.command === nbdCmdName(NbdCmd.READ) ? Buffer.alloc(0) : null);
    }
  }

  private fail(err: PagepairError): void {
    if (this.failure !== null) return;
    this.failure = err;
    this.in.clear();
    this.current = null;
    const all = [...this.pending.values(), ...this.queue.map((q) => q.p)];
    this.pending.clear();
    this.queue.length = 0;
    for (const p of all) {
      if (p.timer !== undefined) clearTimeout(p.timer);
      p.reject(err);
    }
    for (const w of this.quietWaiters.splice(0)) w();
    this.socket.destroy();
    const closedByUs = this.closing !== null;
    for (const l of this.closedListeners.splice(0)) l(closedByUs ? null : err);
  }
}

/** The fixed newstyle handshake, client side, as a sequence of awaited reads. */
class Handshake {
  private readonly q = new ByteQueue();
  private waiter: { n: number; resolve(): void } | null = null;
  private failure: PagepairError | null = null;
  private failed: ((err: PagepairError) => void) | null = null;
  private readonly onData = (c: Buffer): void => {
    this.q.push(c);
    if (this.waiter !== null && this.q.length >= this.waiter.n) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve();
    }
  };
  private readonly onError = (err: Error): void => this.abort(new PagepairError('NOT_ACTIVE', `NBD connection to ${this.url}: ${err.message}`));
  private readonly onClose = (): void => this.abort(new PagepairError('NOT_ACTIVE', `NBD server ${this.url} closed the connection during the handshake`));

  constructor(
    /** The plain socket, then the TLS socket over it once STARTTLS is done. */
    public socket: net.Socket,
    private readonly url: string,
  ) {
    socket.on('data', this.onData);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
  }

  abort(err: PagepairError): void {
    if (this.failure !== null) return;
    this.failure = err;
    this.failed?.(err);
  }

  /** Stops listening; what was read past the handshake goes to the caller. */
  detach(): ByteQueue {
    this.socket.off('data', this.onData);
    this.socket.off('error', this.onError);
    this.socket.off('close', this.onClose);
    return this.q;
  }

  private async readExact(n: number): Promise<Buffer> {
    if (this.failure !== null) throw this.failure;
    if (this.q.length < n) {
      await new Promise<void>((resolve, reject) => {
        this.waiter = { n, resolve };
        this.failed = reject;
      });
      this.failed = null;
    }
    return Buffer.from(this.q.take(n));
  }

  /** Sends one option with its data. */
  private sendOption(option: number, data: Buffer, before?: Buffer): void {
    const opt = Buffer.alloc(16);
    opt.writeUInt32BE(NBD_OPTS_MAGIC_HI, 0);
    opt.writeUInt32BE(NBD_OPTS_MAGIC_LO, 4);
    opt.writeUInt32BE(option, 8);
    opt.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat(before !== undefined ? [before, opt, data] : [opt, data]));
  }

  /** Reads one option reply to `option`: its type and data. */
  private async optionReply(option: number): Promise<{ type: number; body: Buffer }> {
    const h = await this.readExact(NBD_OPTION_REPLY_HEADER_BYTES);
    if (h.readUInt32BE(0) !== NBD_REP_MAGIC_HI || h.readUInt32BE(4) !== NBD_REP_MAGIC_LO) {
      throw new PagepairError('BAD_MAGIC', `option reply magic from ${this.url} is wrong`, 'replyMagic');
    }
    const replyTo = h.readUInt32BE(8);
    const type = h.readUInt32BE(12);
    const length = h.readUInt32BE(16);
    if (replyTo !== option) throw new PagepairError('BAD_FIELD', `reply to option ${replyTo}, not to option ${option}`, 'option');
    if (length > OPTION_REPLY_BYTES_MAX) throw new PagepairError('LIMIT_EXCEEDED', `option reply of ${length} bytes`, 'optionReplyLength');
    return { type, body: await this.readExact(length) };
  }

  /**
   * NBD_OPT_STARTTLS, then the TLS handshake on the same socket. A server
   * that refuses TLS, or a key it does not take, ends the connection: a
   * client that asked for TLS does not go on without it (proto.md).
   */
  private async startTls(creds: NbdTlsCredentials, clientFlags: Buffer): Promise<void> {
    this.sendOption(NbdOpt.STARTTLS, Buffer.alloc(0), clientFlags);
    const { type, body } = await this.optionReply(NbdOpt.STARTTLS);
    if (type !== NbdRep.ACK) {
      const message = body.toString('utf8');
      throw new PagepairError('NOT_ALLOWED', `${this.url}: the server refused TLS (reply 0x${type.toString(16)})${message ? `: ${message}` : ''}`, 'tls');
    }
    if (this.q.length !== 0) throw new PagepairError('BAD_FRAME', `${this.url} sent bytes after acknowledging NBD_OPT_STARTTLS`, 'tls');
    const plain = this.socket;
    plain.off('data', this.onData);
    plain.off('error', this.onError);
    plain.off('close', this.onClose);
    plain.on('error', () => undefined);
    const secure = tls.connect({ socket: plain, ...pskClientOptions(creds.identity, creds.key) });
    this.socket = secure;
    // A second error after the first (which fails the handshake) must not go unhandled.
    secure.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      const fail = (err: PagepairError): void => {
        secure.off('secureConnect', done);
        reject(err);
      };
      const done = (): void => {
        secure.off('error', onError);
        secure.off('close', onClose);
        resolve();
      };
      const onError = (err: Error): void => fail(new PagepairError('AUTH_FAILED', `TLS with ${this.url} as ${JSON.stringify(creds.identity)} failed: ${err.message.split('\n')[0]}`, 'tls'));
      const onClose = (): void => fail(new PagepairError('AUTH_FAILED', `${this.url} closed the connection during the TLS handshake (wrong key for ${JSON.stringify(creds.identity)}?)`, 'tls'));
      secure.once('secureConnect', done);
      secure.once('error', onError);
      secure.once('close', onClose);
      this.failed = (err) => fail(err);
    });
    this.failed = null;
    if (this.failure !== null) throw this.failure;
    secure.on('data', this.onData);
    secure.on('error', this.onError);
    secure.on('close', this.onClose);
  }

  async run(exportName: string, creds?: NbdTlsCredentials): Promise<NbdExportInfo> {
    const greeting = await this.readExact(NBD_GREETING_BYTES);
    if (greeting.readUInt32BE(0) !== NBD_INIT_MAGIC_HI || greeting.readUInt32BE(4) !== NBD_INIT_MAGIC_LO) {
      throw new PagepairError('BAD_MAGIC', `${this.url} is not an NBD server (no NBDMAGIC)`, 'initMagic');
    }
    if (greeting.readUInt32BE(8) !== NBD_OPTS_MAGIC_HI || greeting.readUInt32BE(12) !== NBD_OPTS_MAGIC_LO) {
      throw new PagepairError('BAD_VERSION', `${this.url} speaks oldstyle NBD, which is not supported`, 'optsMagic');
    }
    const serverFlags = greeting.readUInt16BE(16);
    if ((serverFlags & NbdHandshakeFlag.FIXED_NEWSTYLE) === 0) {
      throw new PagepairError('BAD_VERSION', `${this.url} does not speak fixed newstyle NBD`, 'handshakeFlags');
    }
    const noZeroes = (serverFlags & NbdHandshakeFlag.NO_ZEROES) !== 0;
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(NbdClientFlag.C_FIXED_NEWSTYLE | (noZeroes ? NbdClientFlag.C_NO_ZEROES : 0));
    if (creds !== undefined) await this.startTls(creds, flags);
    // NBD_OPT_GO: the name, then one information request (block sizes).
    const name = Buffer.from(exportName, 'utf8');
    const data = Buffer.alloc(4 + name.length + 2 + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt16BE(1, 4 + name.length);
    data.writeUInt16BE(NbdInfo.BLOCK_SIZE, 6 + name.length);
    this.sendOption(NbdOpt.GO, data, creds === undefined ? flags : undefined);

    let size = -1;
    let transmissionFlags = 0;
    const info: Pick<NbdExportInfo, 'minimumBytes' | 'preferredBytes' | 'maximumPayloadBytes'> = {
      minimumBytes: 1,
      preferredBytes: 4096,
      maximumPayloadBytes: NBD_DEFAULT_PAYLOAD_BYTES_MAX,
    };
    for (let replies = 0; ; replies++) {
      if (replies > 64) throw new PagepairError('LIMIT_EXCEEDED', `${this.url} sent over 64 replies to NBD_OPT_GO`, 'optionReply');
      const { type, body } = await this.optionReply(NbdOpt.GO);
      if (type === NbdRep.ACK) break;
      if (type === NbdRep.INFO) {
        if (body.length < 2) throw new PagepairError('BAD_FRAME', 'NBD_REP_INFO without a type', 'info');
        const infoType = body.readUInt16BE(0);
        if (infoType === NbdInfo.EXPORT) {
          if (body.length !== 12) throw new PagepairError('BAD_FRAME', `NBD_INFO_EXPORT of ${body.length} bytes`, 'info');
          size = getU64(body, 2);
          transmissionFlags = body.readUInt16BE(10);
        } else if (infoType === NbdInfo.BLOCK_SIZE) {
          if (body.length !== 14) throw new PagepairError('BAD_FRAME', `NBD_INFO_BLOCK_SIZE of ${body.length} bytes`, 'info');
          info.minimumBytes = body.readUInt32BE(2);
          info.preferredBytes = body.readUInt32BE(6);
          info.maximumPayloadBytes = body.readUInt32BE(10);
        }
        continue;
      }
      if ((type & 0x8000_0000) !== 0) {
        const message = body.toString('utf8');
        if (type === NbdRep.ERR_TLS_REQD) {
          throw new PagepairError('NOT_AUTHENTICATED', `${this.url} requires TLS: use nbds:// with a pre-shared key (--tls-psk-file)${message ? `: ${message}` : ''}`, 'tls');
        }
        const code: ErrorCodeName = type === NbdRep.ERR_UNKNOWN ? 'UNKNOWN_GUID' : type === NbdRep.ERR_SHUTDOWN ? 'SHUTTING_DOWN' : type === NbdRep.ERR_UNSUP ? 'UNKNOWN_TYPE' : 'BAD_FIELD';
        throw new PagepairError(code, `${this.url}: export ${JSON.stringify(exportName)} refused (reply 0x${type.toString(16)})${message ? `: ${message}` : ''}`, 'exportName');
      }
      // Other reply types are for options we did not send: ignored, as the spec asks.
    }
    if (size < 0) throw new PagepairError('BAD_FRAME', `${this.url} ended NBD_OPT_GO without NBD_INFO_EXPORT`, 'info');
    return { sizeBytes: size, transmissionFlags, ...info };
  }
}
