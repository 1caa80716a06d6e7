// The NBD server's view of a controller: volumes are named allocations, and
// block I/O on them goes into the core as client requests on one pseudo client
// connection, answered through the same reply routing as network clients. So
// NBD I/O gets exactly what clients get (mirrored acks, ownership, write-
// through when alone), and a volume made through either controller, by any
// client, is exported by both.

import { performance } from 'node:perf_hooks';
import { setTimeout as realSleep } from 'node:timers/promises';
import { PagepairError, invariant, isPagepairError, type ErrorCodeName } from '../errors.js';
import { Role, SENDER_CLIENT, type ClientRequest, type CListReply, type Message, type RoleCode } from '../protocol/messages.js';
import type { NbdBackend, NbdVolume } from '../transport/nbd-backend.js';

/**
 * The client connection id NBD requests carry into the core. Network client
 * connections count up from 1; this one lies far above any of them.
 */
export const NBD_CONN_ID = 0x7fff_0000;

/** Bytes one client request to the core carries at most (the core refuses writes over half its cache). */
export const NBD_PIECE_BYTES_DEFAULT = 1024 * 1024;
/** Reads go in smaller pieces: the core stages the pages of one read one after another, pieces run side by side. */
export const NBD_READ_PIECE_BYTES_DEFAULT = 128 * 1024;
/** Pieces of one NBD request in the core at once, so a huge write-zeroes cannot flood the cache. */
export const NBD_PIECES_IN_FLIGHT_DEFAULT = 8;
/** How long a request keeps retrying while the pair sorts itself out (a takeover, a join). */
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
  pieceBytes?: number;
  readPieceBytes?: number;
  piecesInFlight?: number;
  retryForMs?: number;
  /** Monotonic ms and a pause, injected so the simulator can run this on virtual time. */
  nowMs?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

type RequestBody = ClientRequest extends infer R ? (R extends ClientRequest ? Omit<R, 'requestId' | 'epoch' | 'sender' | 'flags'> : never) : never;

interface Pending {
  resolve(msg: Message): void;
  reject(err: Error): void;
}

export class CoreVolumes implements NbdBackend {
  readonly connId: number;
  private readonly core: VolumeCore;
  private readonly pieceBytes: number;
  private readonly readPieceBytes: number;
  private readonly piecesInFlight: number;
  private readonly retryForMs: number;
  private readonly nowMs: () => number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly pending = new Map<number, Pending>();
  private nextRequestId = 1;
  private closed = false;
  /** Shared by every write-zeroes; never written to. */
  private zeros: Buffer | null = null;

  constructor(opts: CoreVolumesOptions) {
    this.core = opts.core;
    this.connId = opts.connId ?? NBD_CONN_ID;
    this.pieceBytes = opts.pieceBytes ?? NBD_PIECE_BYTES_DEFAULT;
    this.readPieceBytes = opts.readPieceBytes ?? NBD_READ_PIECE_BYTES_DEFAULT;
    this.piecesInFlight = opts.piecesInFlight ?? NBD_PIECES_IN_FLIGHT_DEFAULT;
    this.retryForMs = opts.retryForMs ?? NBD_RETRY_FOR_MS_DEFAULT;
    this.nowMs = opts.nowMs ?? (() => performance.now());
    this.sleep = opts.sleep ?? ((ms) => realSleep(ms));
    invariant(this.pieceBytes >= 1 && this.readPieceBytes >= 1 && this.piecesInFlight >= 1, 'NBD piece sizes and concurrency are positive');
  }

  /** The core's answer to one of our requests (the runtime routes replies for connId here). */
  reply(msg: Message): void {
    const p = this.pending.get(msg.requestId);
    if (p === undefined) return; // answered after close()
    this.pending.delete(msg.requestId);
    if (msg.kind === 'ERROR') p.reject(PagepairError.fromWire(msg.code, msg.message));
    else p.resolve(msg);
  }

  /** Requests still unanswered fail; later ones are refused. The controller is stopping. */
  close(): void {
    this.closed = true;
    const waiting = [...this.pending.values()];
    this.pending.clear();
    for (const p of waiting) p.reject(new PagepairError('SHUTTING_DOWN', 'controller is stopping'));
  }

  get inflight(): number {
    return this.pending.size;
  }

  // ---------------------------------------------------------------- volumes

  listVolumes(): readonly NbdVolume[] {
    return this.allocations().map(toVolume);
  }

  findVolume(name: string): NbdVolume | undefined {
    const a = this.allocations().find((x) => x.name === name);
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
   * without waiting.
   */
  private allocations(): CListReply['allocations'] {
    let answer: Message | Error | undefined;
    const requestId = this.newRequestId();
    this.pending.set(requestId, { resolve: (m) => (answer = m), reject: (e) => (answer = e) });
    this.core.onClientRequest(this.connId, { kind: 'C_LIST', requestId, epoch: 0, sender: SENDER_CLIENT, flags: 0 });
    if (answer === undefined) {
      this.pending.delete(requestId);
      invariant(false, 'the core answers C_LIST synchronously');
    }
    if (answer instanceof Error) throw answer;
    invariant(answer.kind === 'C_LIST_REPLY', `C_LIST answered with ${answer.kind}`);
    return answer.allocations;
  }

  // ---------------------------------------------------------------- block I/O

  async read(volume: NbdVolume, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    checkRange(volume, offsetBytes, lengthBytes);
    if (lengthBytes === 0) return Buffer.alloc(0);
    const pieces = splitRange(offsetBytes, lengthBytes, pieceSize(this.readPieceBytes, volume.pageSizeBytes));
    if (pieces.length === 1) return this.readPiece(volume, offsetBytes, lengthBytes);
    const out = Buffer.allocUnsafe(lengthBytes);
    await this.eachPiece(pieces, async ([at, n]) => {
      const data = await this.readPiece(volume, at, n);
      data.copy(out, at - offsetBytes);
    });
    return out;
  }

  async write(volume: NbdVolume, offsetBytes: number, data: Buffer, fua: boolean): Promise<void> {
    checkRange(volume, offsetBytes, data.length);
    if (data.length === 0) return fua ? this.flush(volume) : undefined;
    const pieces = splitRange(offsetBytes, data.length, pieceSize(this.pieceBytes, volume.pageSizeBytes));
    await this.eachPiece(pieces, ([at, n]) => this.writePiece(volume, at, data.subarray(at - offsetBytes, at - offsetBytes + n)));
    if (fua) await this.flush(volume);
  }

  async writeZeroes(volume: NbdVolume, offsetBytes: number, lengthBytes: number, fua: boolean): Promise<void> {
    checkRange(volume, offsetBytes, lengthBytes);
    if (lengthBytes === 0) return fua ? this.flush(volume) : undefined;
    const size = pieceSize(this.pieceBytes, volume.pageSizeBytes);
    if (this.zeros === null || this.zeros.length < size) this.zeros = Buffer.alloc(size);
    const zeros = this.zeros;
    await this.eachPiece(splitRange(offsetBytes, lengthBytes, size), ([at, n]) => this.writePiece(volume, at, zeros.subarray(0, n)));
    if (fua) await this.flush(volume);
  }

  /**
   * C_FLUSH of the volume: the core destages every dirty page of it, its own
   * and those mirrored from the partner (taking their ownership), so a write
   * acknowledged through either controller is in the store after it.
   */
  async flush(volume: NbdVolume): Promise<void> {
    await this.call({ kind: 'C_FLUSH', guid: volume.guid }, 'C_FLUSH_REPLY');
  }

  private async readPiece(volume: NbdVolume, offset: number, length: number): Promise<Buffer> {
    const r = await this.call({ kind: 'C_READ', guid: volume.guid, offset, length, pointerId: 0 }, 'C_READ_REPLY');
    invariant(r.data.length === length, `C_READ of ${length} bytes answered ${r.data.length}`);
    return r.data;
  }

  private async writePiece(volume: NbdVolume, offset: number, data: Buffer): Promise<void> {
    // No retry tag: rewriting the same bytes at the same offset is harmless,
    // and NBD leaves the order of overlapping writes in flight undefined.
    await this.call({ kind: 'C_WRITE', guid: volume.guid, offset, pointerId: 0, clientId: 0, clientSeq: 0, data }, 'C_WRITE_REPLY');
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

  /** One request to the core, retried while the refusal is one that passes (see TRANSIENT). */
  private async call<K extends Message['kind']>(body: RequestBody, expect: K): Promise<Extract<Message, { kind: K }>> {
    const deadline = this.nowMs() + this.retryForMs;
    for (let attempt = 0; ; attempt++) {
      try {
        const reply = await this.send(body);
        invariant(reply.kind === expect, `${body.kind} answered with ${reply.kind}`);
        return reply as Extract<Message, { kind: K }>;
      } catch (err) {
        if (!isPagepairError(err) || !TRANSIENT.has(err.code) || this.closed || this.nowMs() >= deadline) throw err;
        await this.sleep(Math.min(RETRY_PAUSE_MS_MAX, RETRY_PAUSE_MS_MIN << Math.min(attempt, 6)));
      }
    }
  }

  private send(body: RequestBody): Promise<Message> {
    if (this.closed) return Promise.reject(new PagepairError('SHUTTING_DOWN', 'controller is stopping'));
    return new Promise<Message>((resolve, reject) => {
      const requestId = this.newRequestId();
      this.pending.set(requestId, { resolve, reject });
      this.core.onClientRequest(this.connId, { ...body, requestId, epoch: 0, sender: SENDER_CLIENT, flags: 0 } as ClientRequest);
    });
  }

  private newRequestId(): number {
    for (;;) {
      const id = this.nextRequestId;
      this.nextRequestId = id >= REQUEST_ID_MAX ? 1 : id + 1;
      if (!this.pending.has(id)) return id;
    }
  }
}

function toVolume(a: CListReply['allocations'][number]): NbdVolume {
  return Object.freeze({ name: a.name, guid: a.guid, sizeBytes: a.pageCount * a.pageSizeBytes, pageSizeBytes: a.pageSizeBytes });
}

/** The server checks ranges already; a request past the end here is a bug in the caller. */
function checkRange(volume: NbdVolume, offsetBytes: number, lengthBytes: number): void {
  if (!Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) || offsetBytes < 0 || lengthBytes < 0 || offsetBytes + lengthBytes > volume.sizeBytes) {
    throw new PagepairError('OUT_OF_RANGE', `${lengthBytes} bytes at ${offsetBytes} reach outside volume "${volume.name}" (${volume.sizeBytes} bytes)`, 'offset');
  }
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
