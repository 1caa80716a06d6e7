// A promise-based client on one controller connection of the simulator. Each
// request is encoded with the real codec, delivered to the core by a scheduler
// event (in order per connection, like a WebSocket), and its reply decoded
// back, so the client requests and replies travel as bytes too.

import { PagepairError } from '../../src/protocol/errors.js';
import { decode, encode } from '../../src/protocol/codec.js';
import type { Limits } from '../../src/protocol/limits.js';
import { PointerMode, SENDER_CLIENT, type ClientRequest, type Message, type PointerModeCode } from '../../src/protocol/messages.js';
import type { CoreStatus } from '../../src/core/controller.js';

type RequestBody = ClientRequest extends infer R ? (R extends ClientRequest ? Omit<R, 'requestId' | 'epoch' | 'sender' | 'flags'> : never) : never;

export interface ClientWire {
  /** Deliver an encoded request to the controller the client is connected to. */
  submit(connId: number, frame: Buffer): void;
  /** Run fn after ms of virtual time (for request timeouts). */
  timer?(ms: number, fn: () => void): void;
}

/** A write's retry tag: a retried write with the same pair is applied once. */
export interface WriteTag {
  clientId: number;
  clientSeq: number;
}

export interface AllocationInfo {
  guid: string;
  pageSizeBytes: number;
  pageCount: number;
}

interface Waiting {
  kind: string;
  resolve(msg: Message): void;
  reject(err: Error): void;
}

export class SimClient {
  private nextRequestId = 1;
  private readonly waiting = new Map<number, Waiting>();
  /** Requests given up on: a late answer to one of them is dropped. */
  private readonly abandoned = new Set<number>();
  closed = false;
  /** A request unanswered this long fails with TIMEOUT (0: wait for ever). Needs wire.timer. */
  timeoutMs = 0;

  constructor(
    readonly connId: number,
    readonly controller: 'A' | 'B',
    private readonly wire: ClientWire,
    private readonly limits: Limits,
  ) {}

  get outstanding(): number {
    return this.waiting.size;
  }

  allocate(name: string, sizeBytes: number, policy = ''): Promise<AllocationInfo> {
    return this.call({ kind: 'C_ALLOCATE', name, policy, sizeBytes, keyed: false }, 'C_ALLOCATE_REPLY').then((r) => ({
      guid: r.guid,
      pageSizeBytes: r.pageSizeBytes,
      pageCount: r.pageCount,
    }));
  }

  /** A keyed allocation (C_ALLOCATE with keyed set): its guid and its key. This connection has not unlocked it. */
  allocateKeyed(name: string, sizeBytes: number, policy = ''): Promise<AllocationInfo & { key: Buffer }> {
    return this.call({ kind: 'C_ALLOCATE', name, policy, sizeBytes, keyed: true }, 'C_ALLOCATE_REPLY').then((r) => ({
      guid: r.guid,
      pageSizeBytes: r.pageSizeBytes,
      pageCount: r.pageCount,
      key: Buffer.from(r.key),
    }));
  }

  /** A copy-on-write snapshot of `guid` (C_SNAPSHOT CREATE): the snapshot's own allocation. */
  snapshot(guid: string, name: string): Promise<AllocationInfo> {
    return this.call({ kind: 'C_SNAPSHOT', op: 1, guid, name }, 'C_SNAPSHOT_REPLY').then((r) => ({ guid: r.guid, pageSizeBytes: r.pageSizeBytes, pageCount: r.pageCount }));
  }

  /** C_SNAPSHOT ROLLBACK (op 2) or COMMIT (op 3) of the snapshot `guid`: its guid afterwards and the pages written back. */
  snapshotOp(op: 2 | 3, guid: string): Promise<{ guid: string; pages: number }> {
    return this.call({ kind: 'C_SNAPSHOT', op, guid, name: '' }, 'C_SNAPSHOT_REPLY').then((r) => ({ guid: r.guid, pages: r.pages }));
  }

  unlock(guid: string, key: Buffer): Promise<void> {
    return this.call({ kind: 'C_UNLOCK', guid, key }, 'C_UNLOCK_REPLY').then(() => undefined);
  }

  write(guid: string, offset: number, data: Buffer, pointerId = 0, tag: WriteTag = { clientId: 0, clientSeq: 0 }): Promise<void> {
    return this.call({ kind: 'C_WRITE', guid, offset, pointerId, clientId: tag.clientId, clientSeq: tag.clientSeq, data }, 'C_WRITE_REPLY').then(() => undefined);
  }

  read(guid: string, offset: number, length: number, pointerId = 0): Promise<Buffer> {
    return this.call({ kind: 'C_READ', guid, offset, length, pointerId }, 'C_READ_REPLY').then((r) => Buffer.from(r.data));
  }

  flush(guid = ''): Promise<number> {
    return this.call({ kind: 'C_FLUSH', guid }, 'C_FLUSH_REPLY').then((r) => r.pages);
  }

  rewrite(guid: string, page: number): Promise<{ version: number; crc: number }> {
    return this.call({ kind: 'C_REWRITE', guid, page }, 'C_REWRITE_REPLY').then((r) => ({ version: r.version, crc: r.crc }));
  }

  release(guid: string): Promise<void> {
    return this.call({ kind: 'C_RELEASE', guid }, 'C_RELEASE_REPLY').then(() => undefined);
  }

  status(): Promise<CoreStatus> {
    return this.call({ kind: 'C_STATUS' }, 'C_STATUS_REPLY').then((r) => JSON.parse(r.json) as CoreStatus);
  }

  list(): Promise<{ guid: string; name: string; policy: string; pageSizeBytes: number; pageCount: number; keyed?: boolean; origin?: string }[]> {
    return this.call({ kind: 'C_LIST' }, 'C_LIST_REPLY').then((r) => r.allocations);
  }

  openPointer(guid: string, firstPage: number, pageCount: number, mode: PointerModeCode = PointerMode.READ): Promise<number> {
    return this.call({ kind: 'C_OPEN_POINTER', guid, firstPage, pageCount, mode }, 'C_OPEN_POINTER_REPLY').then((r) => r.pointerId);
  }

  closePointer(pointerId: number, commit: boolean): Promise<number> {
    return this.call({ kind: 'C_CLOSE_POINTER', pointerId, commit }, 'C_CLOSE_POINTER_REPLY').then((r) => r.pages);
  }

  /** The controller answered on this connection. */
  onReply(frame: Buffer): void {
    const msg = decode(frame, this.limits);
    const w = this.waiting.get(msg.requestId);
    if (w === undefined && this.abandoned.delete(msg.requestId)) return;
    if (w === undefined) throw new Error(`client ${this.connId}: reply ${msg.kind} to no request ${msg.requestId}`);
    this.waiting.delete(msg.requestId);
    w.resolve(msg);
  }

  /** The connection is gone (its controller was killed): nothing will answer. */
  close(): void {
    this.closed = true;
    const w = [...this.waiting.values()];
    this.waiting.clear();
    for (const x of w) x.reject(new Error(`connection to ${this.controller} lost during ${x.kind}`));
  }

  private call<K extends Message['kind']>(body: RequestBody, replyKind: K): Promise<Extract<Message, { kind: K }>> {
    if (this.closed) return Promise.reject(new Error(`connection to ${this.controller} is closed`));
    const requestId = this.nextRequestId++;
    const msg = { ...body, requestId, epoch: 0, sender: SENDER_CLIENT, flags: 0 } as ClientRequest;
    const frame = encode(msg);
    return new Promise((resolve, reject) => {
      this.waiting.set(requestId, {
        kind: body.kind,
        resolve: (reply) => {
          if (reply.kind === 'ERROR') reject(PagepairError.fromWire(reply.code, reply.message));
          else if (reply.kind !== replyKind) reject(new Error(`${body.kind} answered with ${reply.kind}`));
          else resolve(reply as Extract<Message, { kind: K }>);
        },
        reject,
      });
      if (this.timeoutMs > 0 && this.wire.timer !== undefined) {
        this.wire.timer(this.timeoutMs, () => {
          const w = this.waiting.get(requestId);
          if (w === undefined) return;
          this.waiting.delete(requestId);
          this.abandoned.add(requestId);
          w.reject(new PagepairError('TIMEOUT', `no answer to ${body.kind} from ${this.controller} within ${this.timeoutMs} ms`));
        });
      }
      this.wire.submit(this.connId, frame);
    });
  }
}
