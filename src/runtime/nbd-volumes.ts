// The NBD server's view of a controller: volumes are named allocations, and
// block I/O on them goes into the core as client requests on one pseudo client
// connection, answered through the same reply routing as network clients. So
// NBD I/O gets exactly what clients get (mirrored acks, ownership, write-
// through when alone), and a volume made through either controller, by any
// client, is exported by both.
//
// Snapshots are exported too, read only, under their allocation's name
// (`<volume>@<snapshot>`). An NBD write goes into the core as one C_WRITE,
// never in pieces: the core applies a C_WRITE in one event, so a snapshot
// holds all of the write or none of it. Write-zeroes and trims, which may
// cover a whole export, still go in pieces: each piece lands wholly on one
// side of a snapshot, the request as a whole need not.

import { randomInt } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as realSleep } from 'node:timers/promises';
import { PagepairError, invariant, type ErrorCodeName } from '../protocol/errors.js';
import { Role, SENDER_CLIENT, type ClientRequest, type CListReply, type CRead, type CReadReply, type CWrite, type Message, type RoleCode } from '../protocol/messages.js';
import type { NbdBackend, NbdRequester, NbdVolume } from '../transport/nbd-backend.js';

/**
 * The client connection id NBD requests carry into the core. Network client
 * connections count up from 1; this one lies far above any of them.
 */
export const NBD_CONN_ID = 0x7fff_0000;

/**
 * Bytes one client request to the core carries at most (the core refuses
 * writes over half its cache): the largest NBD write, which the controller
 * advertises as the maximum payload, and the pieces of write-zeroes.
 */
export const NBD_PIECE_BYTES_DEFAULT = 1024 * 1024;
/** Reads go in smaller pieces: the core stages the pages of one read one after another, pieces run side by side. */
export const NBD_READ_PIECE_BYTES_DEFAULT = 128 * 1024;
/** Pieces of one NBD request in the core at once, so a huge write-zeroes cannot flood the cache. */
export const NBD_PIECES_IN_FLIGHT_DEFAULT = 8;
/** How long a request keeps retrying, from its first refusal, while the pair sorts itself out (a takeover, a join). */
export const NBD_RETRY_FOR_MS_DEFAULT = 20_000;

/**
 * Refusals that pass on their own: the partner was just lost and arbitration
 * runs, a restarted controller has not joined yet, the cache is full of dirty
 * pages, ownership kept moving. An NBD client cannot fail over or retry by
 * itself, so the backend waits them out. FENCED and SHUTTING_DOWN are final
 * for this controller: the client must go to the other one.
 */
const TRANSIENT: ReadonlySet<ErrorCodeName> = new Set<ErrorCodeName>(['NOT_MIRRORED', 'PARTNER_LOST', 'NOT_ACTIVE', 'BUSY', 'CACHE_FULL', 'TIMEOUT']);
const RETRY_PAUSE_MS_MIN = 5;
const RETRY_PAUSE_MS_MAX = 200;

const REQUEST_ID_MAX = 0xffff_ffff;

/** What the backend needs of the core: its role, and a way in for client requests. */
export interface VolumeCore {
  readonly currentRole: RoleCode;
  onClientRequest(connId: number, msg: ClientRequest): void;
}

export interface CoreVolumesOptions {
  core: VolumeCore;
  /** Default NBD_CONN_ID. */
  connId?: number;
  /** The largest write (one C_WRITE), and the pieces write-zeroes and trims are cut into (whole pages). */
  pieceBytes?: number;
  readPieceBytes?: number;
  piecesInFlight?: number;
  retryForMs?: number;
  /** The retry tag's client id of this backend's writes (default: random). The simulator passes a seeded one. */
  clientId?: number;
  /** Monotonic ms and a pause, injected so the simulator can run this on virtual time. */
  nowMs?: () => number;
  sleep?: (ms: number) => Promise<void>;
  /** Told why an export asked for is not served (a keyed allocation). */
  log?: { info(obj: object, msg: string): void };
}

/**
 * One request in the core, awaited. `data`: the request is a read, resolved
 * with the bytes; otherwise it resolves with nothing.
 */
interface Waiter {
  msg: ClientRequest;
  readonly expect: Message['kind'];
  readonly data: boolean;
  resolve(value: Buffer | undefined): void;
  reject(err: Error): void;
  /** Set at the first refusal that passes: retries stop then. */
  retryUntilMs: number;
  attempts: number;
  /** The NBD connection that asked: once it is gone, a refusal is final (nothing is resent). */
  readonly requester: NbdRequester | undefined;
}

const EMPTY = Buffer.alloc(0);

export class CoreVolumes implements NbdBackend {
  readonly connId: number;
  private readonly core: VolumeCore;
  private readonly pieceBytes: number;
  private readonly readPieceBytes: number;
  private readonly piecesInFlight: number;
  private readonly retryForMs: number;
  private readonly nowMs: () => number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly log: { info(obj: object, msg: string): void } | undefined;
  private readonly pending = new Map<number, Waiter>();
  private nextRequestId = 1;
  /**
   * Every write piece carries a retry tag (clientId, clientSeq), kept when it
   * is resent after a refusal: a piece the core applied before refusing it
   * (the partner was lost while it was being mirrored) is not applied again,
   * here or at the partner, which learnt the tag with the mirrored page.
   */
  private readonly clientId: number;
  private clientSeq = 0;
  private closed = false;
  /** Shared by every write-zeroes; never written to. */
  private zeros: Buffer | null = null;
  /** The C_LIST in progress and its answer: the core answers it before onClientRequest returns. */
  private listRequestId = 0;
  private listAnswer: Message | undefined;

  constructor(opts: CoreVolumesOptions) {
    this.core = opts.core;
    this.connId = opts.connId ?? NBD_CONN_ID;
    this.clientId = opts.clientId ?? randomInt(1, 0x1_0000_0000);
    invariant(Number.isInteger(this.clientId) && this.clientId >= 1 && this.clientId <= 0xffff_ffff, 'an NBD retry tag client id is a u32 other than 0');
    this.pieceBytes = opts.pieceBytes ?? NBD_PIECE_BYTES_DEFAULT;
    this.readPieceBytes = opts.readPieceBytes ?? NBD_READ_PIECE_BYTES_DEFAULT;
    this.piecesInFlight = opts.piecesInFlight ?? NBD_PIECES_IN_FLIGHT_DEFAULT;
    this.retryForMs = opts.retryForMs ?? NBD_RETRY_FOR_MS_DEFAULT;
    this.nowMs = opts.nowMs ?? (() => performance.now());
    this.sleep = opts.sleep ?? ((ms) => realSleep(ms));
    this.log = opts.log;
    invariant(this.pieceBytes >= 1 && this.readPieceBytes >= 1 && this.piecesInFlight >= 1, 'NBD piece sizes and concurrency are positive');
  }

  /** The core's answer to one of our requests (the runtime routes replies for connId here). */
  reply(msg: Message): void {
    if (msg.requestId === this.listRequestId && this.listRequestId !== 0) {
      this.listAnswer = msg;
      return;
    }
    const w = this.pending.get(msg.requestId);
    if (w === undefined) return; // answered after close()
    this.pending.delete(msg.requestId);
    if (msg.kind === 'ERROR') {
      this.refused(w, PagepairError.fromWire(msg.code, msg.message));
      return;
    }
    if (msg.kind !== w.expect) {
      w.reject(new PagepairError('INTERNAL', `${w.msg.kind} answered with ${msg.kind}`));
      return;
    }
    if (!w.data) {
      w.resolve(undefined);
      return;
    }
    const data = (msg as CReadReply).data;
    const asked = (w.msg as CRead).length;
    if (data.length !== asked) w.reject(new PagepairError('INTERNAL', `C_READ of ${asked} bytes answered ${data.length}`));
    else w.resolve(data);
  }

  /** Requests still unanswered fail; later ones are refused. The controller is stopping. */
  close(): void {
    this.closed = true;
    const waiting = [...this.pending.values()];
    this.pending.clear();
    for (const w of waiting) w.reject(shuttingDown());
  }

  get inflight(): number {
    return this.pending.size;
  }

  /**
   * The longest write taken: it goes into the core as one C_WRITE. The
   * server must advertise no larger a maximum payload (controller-process.ts
   * does); a longer write is refused with TOO_LARGE, never cut in pieces.
   */
  get writeBytesMax(): number {
    return this.pieceBytes;
  }

  // ---------------------------------------------------------------- volumes

  /**
   * Keyed allocations are not exported: NBD has no way to present a key, so
   * they are neither listed nor found (an NBD client asking for one gets the
   * error for an unknown export, and the log says why). The core would
   * refuse their I/O on this connection anyway (ACCESS_DENIED). A snapshot
   * of a keyed volume is keyed too. Snapshots are exported read only.
   */
  listVolumes(): readonly NbdVolume[] {
    return this.allocations()
      .filter((a) => a.keyed !== true)
      .map(toVolume);
  }

  findVolume(name: string): NbdVolume | undefined {
    const a = this.allocations().find((x) => x.name === name);
    if (a?.keyed === true) {
      this.log?.info({ export: name, guid: a.guid }, 'nbd: export refused: the allocation is keyed, and keyed allocations are not exported');
      return undefined;
    }
    return a === undefined ? undefined : toVolume(a);
  }

  serving(): boolean {
    const role = this.core.currentRole;
    return !this.closed && role !== Role.FENCED && role !== Role.STOPPING;
  }

  /**
   * The allocation table, as C_LIST answers it. Both controllers hold the same
   * table, so this lists what was made through either. The core answers
   * C_LIST at once, which is what lets the NBD handshake look names up
   * without waiting. Only the handshake asks: block I/O never lists.
   */
  private allocations(): CListReply['allocations'] {
    const requestId = this.newRequestId();
    this.listRequestId = requestId;
    this.listAnswer = undefined;
    try {
      this.core.onClientRequest(this.connId, { kind: 'C_LIST', requestId, epoch: 0, sender: SENDER_CLIENT, flags: 0 });
    } finally {
      this.listRequestId = 0;
    }
    const answer = this.listAnswer as Message | undefined;
    this.listAnswer = undefined;
    invariant(answer !== undefined, 'the core answers C_LIST synchronously');
    if (answer.kind === 'ERROR') throw PagepairError.fromWire(answer.code, answer.message);
    invariant(answer.kind === 'C_LIST_REPLY', `C_LIST answered with ${answer.kind}`);
    return answer.allocations;
  }

  // ---------------------------------------------------------------- block I/O
  //
  // The common request, a read within one piece or any write (every 4 KiB
  // request), is one message into the core and one promise, settled straight
  // from reply(): no piece list, no async function on the way. Longer reads
  // and write-zeroes are cut into whole-page pieces, a few in the core at
  // once; a write never is (see the top of this file).

  read(volume: NbdVolume, offsetBytes: number, lengthBytes: number, requester?: NbdRequester): Promise<Buffer> {
    const bad = rangeError(volume, offsetBytes, lengthBytes);
    if (bad !== null) return Promise.reject(bad);
    if (lengthBytes === 0) return Promise.resolve(EMPTY);
    const size = pieceSize(this.readPieceBytes, volume.pageSizeBytes);
    if (onePiece(offsetBytes, lengthBytes, size)) return this.readPiece(volume, offsetBytes, lengthBytes, requester);
    return this.readPieces(volume, offsetBytes, lengthBytes, size, requester);
  }

  /** One C_WRITE, whatever its alignment: a snapshot holds all of it or none (see the top of this file). */
  write(volume: NbdVolume, offsetBytes: number, data: Buffer, fua: boolean, requester?: NbdRequester): Promise<void> {
    const bad = rangeError(volume, offsetBytes, data.length);
    if (bad !== null) return Promise.reject(bad);
    if (data.length === 0) return fua ? this.flush(volume, requester) : Promise.resolve();
    if (data.length > this.pieceBytes) {
      return Promise.reject(new PagepairError('TOO_LARGE', `an NBD write of ${data.length} bytes is over the ${this.pieceBytes} one request to the core may carry`, 'length'));
    }
    if (!fua) return this.writePiece(volume, offsetBytes, data, requester);
    return this.writePiece(volume, offsetBytes, data, requester).then(() => this.flush(volume, requester));
  }

  async writeZeroes(volume: NbdVolume, offsetBytes: number, lengthBytes: number, fua: boolean, requester?: NbdRequester): Promise<void> {
    const bad = rangeError(volume, offsetBytes, lengthBytes);
    if (bad !== null) throw bad;
    if (lengthBytes === 0) return fua ? this.flush(volume, requester) : undefined;
    const size = pieceSize(this.pieceBytes, volume.pageSizeBytes);
    if (this.zeros === null || this.zeros.length < size) this.zeros = Buffer.alloc(size);
    const zeros = this.zeros;
    await this.eachPiece(splitRange(offsetBytes, lengthBytes, size), ([at, n]) => this.writePiece(volume, at, zeros.subarray(0, n), requester));
    if (fua) await this.flush(volume, requester);
  }

  /**
   * C_FLUSH of the volume: the core destages every dirty page of it, its own
   * and those mirrored from the partner (taking their ownership), so a write
   * acknowledged through either controller is in the store after it.
   */
  flush(volume: NbdVolume, requester?: NbdRequester): Promise<void> {
    return this.ask({ kind: 'C_FLUSH', requestId: this.newRequestId(), epoch: 0, sender: SENDER_CLIENT, flags: 0, guid: volume.guid }, 'C_FLUSH_REPLY', false, requester) as Promise<void>;
  }

  private async readPieces(volume: NbdVolume, offsetBytes: number, lengthBytes: number, size: number, requester: NbdRequester | undefined): Promise<Buffer> {
    const out = Buffer.allocUnsafe(lengthBytes);
    await this.eachPiece(splitRange(offsetBytes, lengthBytes, size), async ([at, n]) => {
      const data = await this.readPiece(volume, at, n, requester);
      data.copy(out, at - offsetBytes);
    });
    return out;
  }

  private readPiece(volume: NbdVolume, offset: number, length: number, requester: NbdRequester | undefined): Promise<Buffer> {
    // Fields in the order the client endpoint's decoder makes them: the core sees one shape.
    const msg: CRead = { kind: 'C_READ', requestId: this.newRequestId(), epoch: 0, sender: SENDER_CLIENT, flags: 0, guid: volume.guid, offset, length, pointerId: 0 };
    return this.ask(msg, 'C_READ_REPLY', true, requester) as Promise<Buffer>;
  }

  private writePiece(volume: NbdVolume, offset: number, data: Buffer, requester: NbdRequester | undefined): Promise<void> {
    // A retry tag: resending the same bytes is not harmless once a later
    // write of the same pages was acknowledged (through either controller).
    this.clientSeq = this.clientSeq >= 0xffff_ffff ? 1 : this.clientSeq + 1;
    const msg: CWrite = {
      kind: 'C_WRITE',
      requestId: this.newRequestId(),
      epoch: 0,
      sender: SENDER_CLIENT,
      flags: 0,
      guid: volume.guid,
      offset,
      pointerId: 0,
      clientId: this.clientId,
      clientSeq: this.clientSeq,
      data,
    };
    return this.ask(msg, 'C_WRITE_REPLY', false, requester) as Promise<void>;
  }

  /** Runs fn over the pieces, at most piecesInFlight at a time; the first failure wins once all have stopped. */
  private async eachPiece(pieces: [number, number][], fn: (piece: [number, number]) => Promise<void>): Promise<void> {
    if (pieces.length === 1) return fn(pieces[0]!);
    let next = 0;
    let failure: unknown = null;
    const lane = async (): Promise<void> => {
      while (failure === null && next < pieces.length) {
        const piece = pieces[next++]!;
        try {
          await fn(piece);
        } catch (err) {
          failure ??= err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.piecesInFlight, pieces.length) }, lane));
    if (failure !== null) throw failure;
  }

  /** One request into the core; reply() settles it, retrying refusals that pass (see TRANSIENT). */
  private ask(msg: ClientRequest, expect: Message['kind'], data: boolean, requester: NbdRequester | undefined): Promise<Buffer | undefined> {
    if (this.closed) return Promise.reject(shuttingDown());
    if (requester?.gone === true) return Promise.reject(requesterGone());
    return new Promise<Buffer | undefined>((resolve, reject) => {
      const w: Waiter = { msg, expect, data, resolve, reject, retryUntilMs: Number.NaN, attempts: 0, requester };
      this.pending.set(msg.requestId, w);
      try {
        this.core.onClientRequest(this.connId, msg);
      } catch (err) {
        // The core answers everything with a reply; a throw is a bug, and this request's end.
        this.pending.delete(msg.requestId);
        throw err;
      }
    });
  }

  /**
   * A refusal: final ones reject; one that passes is retried after a pause
   * growing from RETRY_PAUSE_MS_MIN, for up to retryForMs from the first.
   */
  private refused(w: Waiter, err: PagepairError): void {
    if (!TRANSIENT.has(err.code) || this.closed || w.requester?.gone === true) {
      w.reject(err);
      return;
    }
    const now = this.nowMs();
    if (Number.isNaN(w.retryUntilMs)) w.retryUntilMs = now + this.retryForMs;
    if (now >= w.retryUntilMs) {
      w.reject(err);
      return;
    }
    const pauseMs = Math.min(RETRY_PAUSE_MS_MAX, RETRY_PAUSE_MS_MIN << Math.min(w.attempts++, 6));
    this.sleep(pauseMs).then(
      () => {
        if (this.closed) {
          w.reject(shuttingDown());
          return;
        }
        // The client gave up on the connection meanwhile, and may have sent
        // the request elsewhere and gone on: a resend now could land after
        // its later writes and undo them.
        if (w.requester?.gone === true) {
          w.reject(requesterGone());
          return;
        }
        // A fresh message: the core may still hold the one it refused.
        w.msg = { ...w.msg, requestId: this.newRequestId() };
        this.pending.set(w.msg.requestId, w);
        try {
          this.core.onClientRequest(this.connId, w.msg);
        } catch (err) {
          this.pending.delete(w.msg.requestId);
          w.reject(err instanceof Error ? err : new PagepairError('INTERNAL', String(err)));
        }
      },
      (sleepErr: unknown) => w.reject(sleepErr instanceof Error ? sleepErr : new PagepairError('INTERNAL', String(sleepErr))),
    );
  }

  private newRequestId(): number {
    for (;;) {
      const id = this.nextRequestId;
      this.nextRequestId = id >= REQUEST_ID_MAX ? 1 : id + 1;
      if (!this.pending.has(id)) return id;
    }
  }
}

function requesterGone(): PagepairError {
  return new PagepairError('NOT_ACTIVE', 'the NBD connection that sent the request is gone; it is not resent');
}

function shuttingDown(): PagepairError {
  return new PagepairError('SHUTTING_DOWN', 'controller is stopping');
}

/** A snapshot (C_LIST names its origin) is exported read only. */
function toVolume(a: CListReply['allocations'][number]): NbdVolume {
  const readOnly = a.origin !== undefined && a.origin !== '';
  return Object.freeze({ name: a.name, guid: a.guid, sizeBytes: a.pageCount * a.pageSizeBytes, pageSizeBytes: a.pageSizeBytes, readOnly });
}

/** The server checks ranges already; a request past the end here is a bug in the caller. */
function rangeError(volume: NbdVolume, offsetBytes: number, lengthBytes: number): PagepairError | null {
  if (Number.isSafeInteger(offsetBytes) && Number.isSafeInteger(lengthBytes) && offsetBytes >= 0 && lengthBytes >= 0 && offsetBytes + lengthBytes <= volume.sizeBytes) return null;
  return new PagepairError('OUT_OF_RANGE', `${lengthBytes} bytes at ${offsetBytes} reach outside volume "${volume.name}" (${volume.sizeBytes} bytes)`, 'offset');
}

/** Whether a non-empty range lies within one piece (splitRange would return it whole). */
function onePiece(offsetBytes: number, lengthBytes: number, size: number): boolean {
  return Math.floor(offsetBytes / size) === Math.floor((offsetBytes + lengthBytes - 1) / size);
}

/** A piece is whole pages, so no two pieces of one request touch the same page. */
function pieceSize(bound: number, pageSizeBytes: number): number {
  return Math.max(pageSizeBytes, Math.floor(bound / pageSizeBytes) * pageSizeBytes);
}

/** [offset, length] pieces of a non-empty range, cut at multiples of `size`. */
export function splitRange(offsetBytes: number, lengthBytes: number, size: number): [number, number][] {
  const end = offsetBytes + lengthBytes;
  const pieces: [number, number][] = [];
  let at = offsetBytes;
  do {
    const cut = Math.min(end, (Math.floor(at / size) + 1) * size);
    pieces.push([at, cut - at]);
    at = cut;
  } while (at < end);
  return pieces;
}
