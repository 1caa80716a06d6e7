// The pagepair client library: one WebSocket to one controller, requests
// matched to replies by request id, every failure a PagepairError.

import type { CListReply, ClientRequest, Message, MessageKind, VerifiedPage } from '../protocol/messages.js';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { WebSocket, type RawData } from 'ws';
import { PagepairError } from '../protocol/errors.js';
import { decode, encode } from '../protocol/codec.js';
import { HARD_LIMITS } from '../protocol/limits.js';
import { PointerMode, PoolJobKind, PROTOCOL_VERSION, SENDER_CLIENT, SnapshotOp, type PoolJobKindCode, type RoleCode } from '../protocol/messages.js';
import { FRAMES } from '../transport/frame-pool.js';
import { CLIENT_PSK_IDENTITY, derivePsk, pskClientOptions } from '../transport/tls.js';
import { closeGracefully, messageBytes, WS_COMMON, zeroMask } from '../transport/ws-util.js';
import { TurnCorker } from '../transport/turn-corker.js';

export interface ClientOptions {
  host: string;
  port: number;
  token: string;
  /** Shown in the controller's logs. */
  name?: string;
  /** Per request, and for the connect + hello. Default 10000. */
  timeoutMs?: number;
  /**
   * Connect with TLS (wss://), the key derived from the token (TLS-PSK): needed
   * when the controller's tls.mode is "require", possible when it is "on".
   */
  tls?: boolean;
}

/** Host, port and TLS of a `ws://host:port` or `wss://host:port` URL (wss: TLS). */
export function parseControllerUrl(url: string): { host: string; port: number; tls: boolean } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new PagepairError('BAD_FIELD', `${JSON.stringify(url)} is not a URL (ws://host:port or wss://host:port)`, 'url');
  }
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new PagepairError('BAD_FIELD', `${url}: the scheme must be ws:// or wss://`, 'url');
  const port = Number(u.port);
  if (u.port === '' || !Number.isInteger(port) || port < 1 || port > 65535) throw new PagepairError('BAD_FIELD', `${url}: a port is needed`, 'url');
  const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
  return { host, port, tls: u.protocol === 'wss:' };
}

export interface AllocationInfo {
  guid: string;
  pageSizeBytes: number;
  pageCount: number;
  /**
   * A keyed allocation's access key, base64url (16 bytes): told once, kept
   * by no controller. Whoever holds it may unlock the allocation on any
   * connection to either controller; nobody else may use it.
   */
  key?: string;
}

export interface AllocateOptions {
  /** Make a keyed allocation (see AllocationInfo.key). The connection that made it is unlocked at once. */
  keyed?: boolean;
}

/** An access key as the library takes it: base64url or hex text, or the 16 bytes. */
export function accessKeyBytes(key: string | Uint8Array): Buffer {
  let b: Buffer;
  if (typeof key !== 'string') b = Buffer.from(key);
  else if (/^[0-9a-f]{32}$/i.test(key)) b = Buffer.from(key, 'hex');
  else if (/^[A-Za-z0-9_-]{22}$/.test(key)) b = Buffer.from(key, 'base64url');
  else throw new PagepairError('BAD_FIELD', 'an access key is 16 bytes, written as 22 characters of base64url or 32 hex digits', 'key');
  if (b.length !== 16) throw new PagepairError('BAD_FIELD', `an access key is 16 bytes, got ${b.length}`, 'key');
  return b;
}

type ReplyOf<K extends MessageKind> = Extract<Message, { kind: K }>;

/** What a request resolves to: the reply itself, nothing, or the reply's data. */
const RESOLVE_REPLY = 0;
const RESOLVE_VOID = 1;
const RESOLVE_DATA = 2;
type ResolveShape = typeof RESOLVE_REPLY | typeof RESOLVE_VOID | typeof RESOLVE_DATA;

interface Pending {
  requestId: number;
  expect: MessageKind;
  shape: ResolveShape;
  resolve(value: unknown): void;
  reject(err: Error): void;
  deadlineMs: number;
  kind: string;
  /** The encoded request while it waits for room under inflightMax; null once sent. */
  frame: Buffer | null;
}

const SEND_BINARY = { binary: true } as const;

const TIMEOUT_MS_DEFAULT = 10_000;
const REQUEST_ID_MAX = 0xffff_ffff;

const NO_TAG = { clientId: 0, clientSeq: 0 };
/** Header fields of a request before it is sent; request() sets the requestId. */
const HEAD = { requestId: 0, epoch: 0, sender: SENDER_CLIENT, flags: 0 } as const;

export class PagepairClient {
  readonly controllerId: number;
  readonly pairId: string;
  /** The controller's role when the connection was made. */
  readonly role: RoleCode;
  /** Largest read or write the controller accepts in one request. */
  readonly requestBytesMax: number;
  /** Requests the controller lets this connection have in flight; more are answered BUSY. */
  readonly inflightMax: number;

  private readonly ws: WebSocket;
  private readonly timeoutMs: number;
  private readonly pending = new Map<number, Pending>();
  private sweepTimer: NodeJS.Timeout | undefined;
  /** Requests sent in one turn of the event loop leave in one write. */
  private readonly corker: TurnCorker;
  /** Requests held back while inflightMax are pending. */
  private readonly waiting: Pending[] = [];
  private lastRequestId: number;
  private closed = false;
  /** Why the controller ended the connection, when it said so (an ERROR with request id 0). */
  private closeCause = '';
  private readonly closedPromise: Promise<void>;

  private constructor(ws: WebSocket, timeoutMs: number, hello: ReplyOf<'CLIENT_HELLO_REPLY'>) {
    this.ws = ws;
    this.corker = new TurnCorker((ws as unknown as { _socket?: Socket })._socket);
    this.timeoutMs = timeoutMs;
    this.controllerId = hello.controllerId;
    this.pairId = hello.pairId;
    this.role = hello.role;
    this.requestBytesMax = hello.requestBytesMax;
    this.inflightMax = hello.inflightMax;
    this.lastRequestId = hello.requestId;
    ws.on('message', (data, isBinary) => this.onFrame(data, isBinary));
    this.closedPromise = new Promise((resolve) => {
      ws.once('close', () => {
        this.onClosed();
        resolve();
      });
    });
  }

  /** Connects and says hello. Rejects with a PagepairError (AUTH_FAILED, TIMEOUT, NOT_ACTIVE, ...). */
  static connect(opts: ClientOptions): Promise<PagepairClient> {
    const timeoutMs = opts.timeoutMs ?? TIMEOUT_MS_DEFAULT;
    const tls = opts.tls === true;
    const where = `${opts.host}:${opts.port}${tls ? ' (TLS)' : ''}`;
    const url = `${tls ? 'wss' : 'ws'}://${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${opts.port}/`;
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new WebSocket(url, {
        ...WS_COMMON,
        // ws hands these to tls.connect: the key is the check, no certificates.
        ...(tls ? pskClientOptions(CLIENT_PSK_IDENTITY, derivePsk(opts.token, 'client')) : {}),
        // Replies may be as large as any controller allows; the hard limit bounds them.
        maxPayload: HARD_LIMITS.frameBytesMax,
        handshakeTimeout: timeoutMs,
        generateMask: zeroMask,
      });
      const fail = (err: PagepairError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        ws.off('message', onMessage);
        closeGracefully(ws, 1000, '');
        reject(err);
      };
      const timer = setTimeout(() => fail(new PagepairError('TIMEOUT', `no hello from ${where} within ${timeoutMs} ms`)), timeoutMs);
      const onMessage = (data: RawData, isBinary: boolean): void => {
        if (settled) return;
        let msg: Message;
        try {
          if (!isBinary) throw new PagepairError('BAD_FRAME', 'text message from the controller');
          msg = decode(messageBytes(data), HARD_LIMITS);
        } catch (err) {
          fail(new PagepairError('BAD_FRAME', `bad hello reply from ${where}: ${errorText(err)}`));
          return;
        }
        if (msg.kind === 'ERROR') {
          fail(PagepairError.fromWire(msg.code, `${where} refused the connection: ${msg.message}`));
          return;
        }
        if (msg.kind !== 'CLIENT_HELLO_REPLY') {
          fail(new PagepairError('INTERNAL', `expected CLIENT_HELLO_REPLY from ${where}, got ${msg.kind}`));
          return;
        }
        settled = true;
        clearTimeout(timer);
        ws.off('message', onMessage);
        resolve(new PagepairClient(ws, timeoutMs, msg));
      };
      // A controller whose tls.mode is "require" answers a plain upgrade with 426 and says why.
      ws.on('unexpected-response', (_req, res: IncomingMessage) => {
        const tlsRequired = res.statusCode === 426 && res.headers['x-pagepair-refused'] === 'tls-required';
        res.resume();
        fail(
          tlsRequired
            ? new PagepairError('NOT_ALLOWED', `controller at ${where} requires TLS (its tls.mode is "require"): connect with TLS (tls: true, wss://, or --tls)`)
            : new PagepairError('NOT_ACTIVE', `controller at ${where} answered the upgrade with HTTP ${res.statusCode ?? '?'}`),
        );
      });
      // Stays for the socket's whole life: an unhandled 'error' would crash the caller.
      ws.on('error', (err) => {
        // A TLS handshake that fails is a wrong token (the key derives from it) or a controller that takes no TLS.
        const hint = tls && ws.readyState === WebSocket.CONNECTING ? ' (over TLS: a controller whose tls.mode is "off" refuses TLS, and a wrong token fails the TLS handshake)' : '';
        fail(new PagepairError('NOT_ACTIVE', `cannot reach controller at ${where}: ${err.message}${hint}`));
      });
      ws.on('close', (code) => fail(new PagepairError('NOT_ACTIVE', `connection to ${where} closed during hello (${code})`)));
      ws.on('message', onMessage);
      ws.once('open', () => {
        ws.send(
          encode({
            kind: 'CLIENT_HELLO',
            requestId: 1,
            epoch: 0,
            sender: SENDER_CLIENT,
            flags: 0,
            protocolVersion: PROTOCOL_VERSION,
            token: opts.token,
            clientName: opts.name ?? `pagepair-client/${process.pid}`,
          }),
          { binary: true },
        );
      });
    });
  }

  /** Requests sent and not yet answered (nor timed out). */
  get inflight(): number {
    return this.pending.size;
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  async allocate(name: string, sizeBytes: number, policy = 'default', opts: AllocateOptions = {}): Promise<AllocationInfo> {
    checkString('name', name);
    checkString('policy', policy);
    checkCount('sizeBytes', sizeBytes);
    const keyed = opts.keyed === true;
    const r = await this.request<ReplyOf<'C_ALLOCATE_REPLY'>>({ kind: 'C_ALLOCATE', ...HEAD, name, policy, sizeBytes, keyed }, 'C_ALLOCATE_REPLY');
    const info: AllocationInfo = { guid: r.guid, pageSizeBytes: r.pageSizeBytes, pageCount: r.pageCount };
    if (!keyed) return info;
    info.key = Buffer.from(r.key).toString('base64url');
    await this.unlock(r.guid, r.key);
    return info;
  }

  /**
   * Presents a keyed allocation's key: this connection may use it from now
   * on, until it closes. A wrong key or an unknown guid is ACCESS_DENIED.
   */
  async unlock(guid: string, key: string | Uint8Array): Promise<void> {
    checkString('guid', guid);
    const bytes = accessKeyBytes(key);
    await this.request({ kind: 'C_UNLOCK', ...HEAD, guid, key: bytes }, 'C_UNLOCK_REPLY', RESOLVE_VOID);
  }

  async release(guid: string): Promise<void> {
    checkString('guid', guid);
    await this.request({ kind: 'C_RELEASE', ...HEAD, guid }, 'C_RELEASE_REPLY', RESOLVE_VOID);
  }

  /** `tag`: the client id and sequence number that make a retried write apply once (see PairClient). */
  write(guid: string, offset: number, data: Buffer, pointerId = 0, tag: { clientId: number; clientSeq: number } = NO_TAG): Promise<void> {
    // The hot path: one object of one shape per request, no async wrapper.
    try {
      checkString('guid', guid);
      checkCount('offset', offset);
      checkCount('pointerId', pointerId);
      if (!Buffer.isBuffer(data)) throw new PagepairError('BAD_FIELD', 'data must be a Buffer', 'data');
      this.checkSize('data', data.length);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.request<void>(
      { kind: 'C_WRITE', requestId: 0, epoch: 0, sender: SENDER_CLIENT, flags: 0, guid, offset, pointerId, clientId: tag.clientId, clientSeq: tag.clientSeq, data },
      'C_WRITE_REPLY',
      RESOLVE_VOID,
    );
  }

  read(guid: string, offset: number, length: number, pointerId = 0): Promise<Buffer> {
    try {
      checkString('guid', guid);
      checkCount('offset', offset);
      checkCount('length', length);
      checkCount('pointerId', pointerId);
      this.checkSize('length', length);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.request<Buffer>({ kind: 'C_READ', requestId: 0, epoch: 0, sender: SENDER_CLIENT, flags: 0, guid, offset, length, pointerId }, 'C_READ_REPLY', RESOLVE_DATA);
  }

  /** Destages dirty pages (of one allocation, or all when guid is omitted); resolves to the pages written. */
  async flush(guid?: string): Promise<number> {
    if (guid !== undefined) checkString('guid', guid);
    const r = await this.request<ReplyOf<'C_FLUSH_REPLY'>>({ kind: 'C_FLUSH', ...HEAD, guid: guid ?? '' }, 'C_FLUSH_REPLY');
    return r.pages;
  }

  async status(): Promise<unknown> {
    const r = await this.request<ReplyOf<'C_STATUS_REPLY'>>({ kind: 'C_STATUS', ...HEAD }, 'C_STATUS_REPLY');
    try {
      return JSON.parse(r.json) as unknown;
    } catch (err) {
      throw new PagepairError('INTERNAL', `status reply is not JSON: ${errorText(err)}`);
    }
  }

  /**
   * Takes a copy-on-write snapshot of the allocation `guid` (a volume) while
   * I/O goes on: a new, read-only allocation named `<volume>@<name>` that
   * keeps the volume's bytes of one instant. Delete it with release().
   */
  async snapshot(guid: string, name: string): Promise<AllocationInfo> {
    checkString('guid', guid);
    checkString('name', name);
    const r = await this.request<ReplyOf<'C_SNAPSHOT_REPLY'>>({ kind: 'C_SNAPSHOT', ...HEAD, op: SnapshotOp.CREATE, guid, name }, 'C_SNAPSHOT_REPLY');
    return { guid: r.guid, pageSizeBytes: r.pageSizeBytes, pageCount: r.pageCount };
  }

  /**
   * ROLLBACK: writes the snapshot `guid`'s bytes back into its volume where
   * they differ, run by run while the volume stays in use; resolves to the
   * pages written back. COMMIT: folds the volume's changes since the
   * snapshot into it and takes the snapshot again, now, under its name;
   * resolves to the new snapshot's guid.
   */
  async snapshotRollback(guid: string): Promise<number> {
    checkString('guid', guid);
    const r = await this.request<ReplyOf<'C_SNAPSHOT_REPLY'>>({ kind: 'C_SNAPSHOT', ...HEAD, op: SnapshotOp.ROLLBACK, guid, name: '' }, 'C_SNAPSHOT_REPLY');
    return r.pages;
  }

  async snapshotCommit(guid: string): Promise<AllocationInfo> {
    checkString('guid', guid);
    const r = await this.request<ReplyOf<'C_SNAPSHOT_REPLY'>>({ kind: 'C_SNAPSHOT', ...HEAD, op: SnapshotOp.COMMIT, guid, name: '' }, 'C_SNAPSHOT_REPLY');
    return { guid: r.guid, pageSizeBytes: r.pageSizeBytes, pageCount: r.pageCount };
  }

  async list(): Promise<CListReply['allocations']> {
    const r = await this.request<ReplyOf<'C_LIST_REPLY'>>({ kind: 'C_LIST', ...HEAD }, 'C_LIST_REPLY');
    return r.allocations;
  }

  async openPointer(guid: string, firstPage: number, pageCount: number, mode: 'read' | 'write'): Promise<number> {
    checkString('guid', guid);
    checkCount('firstPage', firstPage);
    checkCount('pageCount', pageCount);
    if (mode !== 'read' && mode !== 'write') {
      throw new PagepairError('BAD_FIELD', `mode must be 'read' or 'write', got ${String(mode)}`, 'mode');
    }
    const r = await this.request<ReplyOf<'C_OPEN_POINTER_REPLY'>>(
      { kind: 'C_OPEN_POINTER', ...HEAD, guid, firstPage, pageCount, mode: mode === 'read' ? PointerMode.READ : PointerMode.WRITE },
      'C_OPEN_POINTER_REPLY',
    );
    return r.pointerId;
  }

  /** Gives a pointer back; for a write pointer `commit` (default true) keeps its pages. Resolves to the pages committed. */
  async closePointer(pointerId: number, commit = true): Promise<number> {
    checkCount('pointerId', pointerId);
    if (typeof commit !== 'boolean') throw new PagepairError('BAD_FIELD', 'commit must be a boolean', 'commit');
    const r = await this.request<ReplyOf<'C_CLOSE_POINTER_REPLY'>>({ kind: 'C_CLOSE_POINTER', ...HEAD, pointerId, commit }, 'C_CLOSE_POINTER_REPLY');
    return r.pages;
  }

  /**
   * Compares both controllers' copies of pages [firstPage, firstPage+pageCount)
   * (at most limits.headersPerMessageMax); lists the pages that differ or
   * were busy. See `pagepair verify`.
   */
  async verify(guid: string, firstPage: number, pageCount: number): Promise<{ pagesChecked: number; pages: VerifiedPage[] }> {
    checkString('guid', guid);
    checkCount('firstPage', firstPage);
    checkCount('pageCount', pageCount);
    const r = await this.request<ReplyOf<'C_VERIFY_REPLY'>>({ kind: 'C_VERIFY', ...HEAD, guid, firstPage, pageCount }, 'C_VERIFY_REPLY');
    return { pagesChecked: r.pagesChecked, pages: r.pages };
  }

  /** Tells the controller what a whole verify run found, for its status. */
  async reportVerify(report: { pagesChecked: number; mismatches: number; repaired: number; unsettled: number }): Promise<void> {
    await this.request<ReplyOf<'C_VERIFY_REPORT_REPLY'>>({ kind: 'C_VERIFY_REPORT', ...HEAD, ...report }, 'C_VERIFY_REPORT_REPLY');
  }

  /** Test hook (needs testHooks: true in the controller's configuration): this controller's copy of one page becomes `data`, unmirrored. */
  /**
   * Verify's repair: this controller's copy of the page is written again as a
   * new version, mirrored, so both copies end equal to it (a client write
   * landing meanwhile is kept).
   */
  async rewrite(guid: string, page: number): Promise<{ version: number; crc: number }> {
    checkString('guid', guid);
    checkCount('page', page);
    const r = await this.request<ReplyOf<'C_REWRITE_REPLY'>>({ kind: 'C_REWRITE', ...HEAD, guid, page }, 'C_REWRITE_REPLY');
    return { version: r.version, crc: r.crc };
  }

  /**
   * Start a device replace or a scrub on this controller's pool while the
   * pair serves (see `pagepair device replace`, `pagepair scrub`); resolves
   * with the job's id once it runs. Its progress and its end are in
   * status().poolJob. `device`: the new device of a replace, an absolute path
   * or an nbd:// URI (both controllers open it by that name).
   */
  async poolJob(job: { kind: 'replace'; slot: number; device: string; rateBytesPerSec?: number } | { kind: 'scrub'; repair?: boolean; rateBytesPerSec?: number }): Promise<number> {
    const rateBytesPerSec = job.rateBytesPerSec ?? 0;
    checkCount('rateBytesPerSec', rateBytesPerSec);
    let body: { job: PoolJobKindCode; slot: number; device: string; repair: boolean };
    if (job.kind === 'replace') {
      checkCount('slot', job.slot);
      checkString('device', job.device);
      body = { job: PoolJobKind.REPLACE, slot: job.slot, device: job.device, repair: false };
    } else if (job.kind === 'scrub') {
      if (job.repair !== undefined && typeof job.repair !== 'boolean') throw new PagepairError('BAD_FIELD', 'repair must be a boolean', 'repair');
      body = { job: PoolJobKind.SCRUB, slot: 0, device: '', repair: job.repair === true };
    } else {
      throw new PagepairError('BAD_FIELD', `kind must be 'replace' or 'scrub', got ${String((job as { kind: unknown }).kind)}`, 'kind');
    }
    const r = await this.request<ReplyOf<'C_POOL_JOB_REPLY'>>({ kind: 'C_POOL_JOB', ...HEAD, ...body, rateBytesPerSec }, 'C_POOL_JOB_REPLY');
    return r.jobId;
  }

  async testCorrupt(guid: string, page: number, data: Buffer): Promise<{ version: number; crc: number }> {
    checkString('guid', guid);
    checkCount('page', page);
    const r = await this.request<ReplyOf<'C_TEST_CORRUPT_REPLY'>>({ kind: 'C_TEST_CORRUPT', ...HEAD, guid, page, data }, 'C_TEST_CORRUPT_REPLY');
    return { version: r.version, crc: r.crc };
  }

  /** Closes the connection; requests still pending reject with NOT_ACTIVE. */
  async close(): Promise<void> {
    if (!this.closed) closeGracefully(this.ws, 1000, 'client closing');
    await this.closedPromise;
  }

  // -------------------------------------------------------------------------

  /** Sends `msg` (its requestId is filled in here) and resolves with the reply in `shape`. */
  private request<T>(msg: ClientRequest, expect: MessageKind, shape: ResolveShape = RESOLVE_REPLY): Promise<T> {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(this.closedError());
    }
    const requestId = this.nextRequestId();
    msg.requestId = requestId;
    let frame: Buffer;
    try {
      frame = encode(msg, FRAMES.take);
    } catch (err) {
      // The codec refuses what the controller would refuse (a string too long, ...).
      return Promise.reject(err instanceof PagepairError ? err : new PagepairError('BAD_FIELD', errorText(err)));
    }
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { requestId, expect, shape, resolve: resolve as (value: unknown) => void, reject, deadlineMs: 0, kind: msg.kind, frame };
      // Past the controller's in-flight limit a request waits here, not in a BUSY reply.
      if (this.pending.size >= this.inflightMax) this.waiting.push(p);
      else this.start(p);
    });
  }

  private start(p: Pending): void {
    const frame = p.frame!;
    p.frame = null;
    p.deadlineMs = Date.now() + this.timeoutMs;
    this.pending.set(p.requestId, p);
    this.armSweep();
    this.corker.cork();
    this.ws.send(frame, SEND_BINARY, FRAMES.giveBackAfter(frame));
  }


  /** One timer for every pending request's deadline, not one timer each. */
  private armSweep(): void {
    if (this.sweepTimer !== undefined) return;
    this.sweepTimer = setInterval(() => this.sweep(), Math.max(10, Math.min(1000, Math.floor(this.timeoutMs / 4))));
    this.sweepTimer.unref();
  }

  private sweep(): void {
    const now = Date.now();
    for (const [id, p] of this.pending) {
      if (p.deadlineMs > now) continue;
      this.pending.delete(id);
      p.reject(new PagepairError('TIMEOUT', `${p.kind} to controller ${this.controllerId} not answered within ${this.timeoutMs} ms`));
    }
    if (this.waiting.length > 0) this.startWaiting();
    if (this.pending.size === 0 && this.sweepTimer !== undefined) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    }
  }

  private startWaiting(): void {
    while (this.waiting.length > 0 && this.pending.size < this.inflightMax && !this.closed) this.start(this.waiting.shift()!);
  }

  private nextRequestId(): number {
    // u32, wrapping, never 0 (0 marks a connection-level ERROR), never one still pending.
    let id = this.lastRequestId;
    do {
      id = id >= REQUEST_ID_MAX ? 1 : id + 1;
    } while (this.pending.has(id));
    this.lastRequestId = id;
    return id;
  }

  private onFrame(data: RawData, isBinary: boolean): void {
    let msg: Message;
    try {
      if (!isBinary) throw new PagepairError('BAD_FRAME', 'text message');
      msg = decode(messageBytes(data), HARD_LIMITS);
    } catch (err) {
      // The byte stream from the controller can no longer be trusted.
      this.closeCause = `bad frame from controller: ${errorText(err)}`;
      closeGracefully(this.ws, 1002, 'bad frame');
      return;
    }
    if (msg.requestId === 0) {
      if (msg.kind === 'ERROR') this.closeCause = msg.message;
      return;
    }
    const p = this.pending.get(msg.requestId);
    if (p === undefined) return; // answered after its timeout
    this.pending.delete(msg.requestId);
    if (this.waiting.length > 0) this.startWaiting();
    if (msg.kind === 'ERROR') p.reject(PagepairError.fromWire(msg.code, msg.message));
    else if (msg.kind !== p.expect) p.reject(new PagepairError('INTERNAL', `expected ${p.expect}, got ${msg.kind}`));
    else if (p.shape === RESOLVE_VOID) p.resolve(undefined);
    else if (p.shape === RESOLVE_DATA) p.resolve((msg as ReplyOf<'C_READ_REPLY'>).data);
    else p.resolve(msg);
  }

  private onClosed(): void {
    this.closed = true;
    const err = this.closedError();
    const pending = [...this.pending.values()];
    this.pending.clear();
    if (this.sweepTimer !== undefined) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    for (const p of pending) p.reject(err);
    for (const w of this.waiting.splice(0)) w.reject(err);
  }

  private closedError(): PagepairError {
    const cause = this.closeCause ? `: ${this.closeCause}` : '';
    return new PagepairError('NOT_ACTIVE', `connection to controller ${this.controllerId} closed${cause}`);
  }

  private checkSize(field: string, bytes: number): void {
    if (bytes > this.requestBytesMax) {
      throw new PagepairError('TOO_LARGE', `${field}: ${bytes} bytes, the controller takes at most ${this.requestBytesMax}`, field);
    }
  }
}

function checkString(field: string, value: unknown): void {
  if (typeof value !== 'string') throw new PagepairError('BAD_FIELD', `${field} must be a string`, field);
}

function checkCount(field: string, value: unknown): void {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new PagepairError('BAD_FIELD', `${field} must be a non-negative integer, got ${String(value)}`, field);
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------------------

export interface ControllerAddress {
  /** The controller's id as its configuration names it. */
  id: string;
  host: string;
  port: number;
  token: string;
  /** Connect with TLS (see ClientOptions.tls). */
  tls?: boolean;
}

export interface ControllerConfigAddresses {
  id: string;
  clientToken: string;
  listen: { client: { host: string; port: number } };
  partner: { id: string; client: { host: string; port: number } };
  /** The configuration's tls section: "require" means clients must use TLS. */
  tls?: { mode: 'off' | 'on' | 'require' };
}

/**
 * Both controllers' client addresses, from one controller's configuration
 * file, so a tool can reach A, B or both. Each entry can be passed to
 * PagepairClient.connect as it is.
 */
export function controllerAddresses(
  cfg: ControllerConfigAddresses,
  opts: { tls?: boolean } = {},
): {
  self: ControllerAddress;
  partner: ControllerAddress;
  all: [ControllerAddress, ControllerAddress];
} {
  // TLS when asked for (--tls), and always when the controllers take nothing else.
  const tls = opts.tls === true || cfg.tls?.mode === 'require';
  const self: ControllerAddress = {
    id: cfg.id,
    host: dialableHost(cfg.listen.client.host),
    port: cfg.listen.client.port,
    token: cfg.clientToken,
    ...(tls ? { tls: true } : {}),
  };
  const partner: ControllerAddress = {
    id: cfg.partner.id,
    host: dialableHost(cfg.partner.client.host),
    port: cfg.partner.client.port,
    token: cfg.clientToken,
    ...(tls ? { tls: true } : {}),
  };
  return { self, partner, all: [self, partner] };
}

/** A controller listening on every interface is reached through loopback. */
function dialableHost(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::' || host === '[::]') return '::1';
  return host;
}
