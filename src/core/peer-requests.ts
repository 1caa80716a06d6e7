// ROOM requests

import { MsgType, type ClientReply, type ClientRequest, type Message, type PeerReply, type PeerRequest, type WritePage } from '../protocol/messages.js';
import { ErrorCode, PagepairError, isPagepairError } from '../protocol/errors.js';
import { settleOp } from './peer-outbox.js';
import type { DistributiveOmit } from './shared.js';
import type { Core } from './context.js';

export interface PendingPeer {
  kind: PeerRequest['kind'];
  /** Run as the reply's frame is handled, before any promise continuation: for what must take effect in link order. */
  onReply: ((reply: PeerReply) => void) | undefined;
  sentMs: number;
  /** Beyond peerRequestTimeoutMs: work the partner does before it answers (zeroing an extent). */
  extraTimeoutMs: number;
  resolve(reply: PeerReply): void;
  reject(err: Error): void;
}

export class PeerRequests {
  constructor(private readonly c: Core) {}

  private nextRequestId = 1;

  readonly pendingPeer = new Map<number, PendingPeer>();

  /** Send every queued frame to the partner. The runtime calls it after requestFlush. */
  flushOutbox(): void {
    if (this.c.outbox.length === 0) return;
    if (!this.c.membership.linkUp) {
      this.c.outbox.failAll(new PagepairError('PARTNER_LOST', 'partner link is down'));
      return;
    }
    const frames = this.c.outbox.drain((pages): WritePage => ({ kind: 'WRITE_PAGE', requestId: this.newRequestId(), epoch: this.c.membership.epoch, sender: this.c.selfId, flags: 0, pages }));
    for (const { msg, ops } of frames) {
      if (ops !== null) {
        const requestId = msg.requestId;
        this.pendingPeer.set(requestId, {
          kind: 'WRITE_PAGE',
          sentMs: this.c.env.nowMs(),
          extraTimeoutMs: 0,
          onReply: undefined,
          resolve: () => {
            for (const op of ops) settleOp(op, null);
          },
          reject: (err: Error) => {
            for (const op of ops) settleOp(op, err);
          },
        });
      }
      this.c.env.sendPeer(msg);
    }
  }

  private newRequestId(): number {
    const requestId = this.nextRequestId;
    this.nextRequestId = this.nextRequestId >= 0xffff_ffff ? 1 : this.nextRequestId + 1;
    return requestId;
  }

  /** The header fields are set on the body itself: a spread of bodies of many shapes is slow. */
  private frame<M extends Message>(body: Omit<M, 'requestId' | 'epoch' | 'sender' | 'flags'>): M {
    const msg = body as M;
    msg.requestId = this.newRequestId();
    msg.epoch = this.c.membership.epoch;
    msg.sender = this.c.selfId;
    msg.flags = 0;
    return msg;
  }

  /** `extraTimeoutMs`: how much longer than peerRequestTimeoutMs the partner may take to answer. */
  /** `onReply`: run synchronously when the (non-error) reply's frame is handled. */
  request(
    body: DistributiveOmit<PeerRequest, 'requestId' | 'epoch' | 'sender' | 'flags'>,
    extraTimeoutMs = 0,
    onReply?: (reply: PeerReply) => void,
  ): Promise<PeerReply> {
    if (!this.c.membership.linkUp) return Promise.reject(new PagepairError('NOT_MIRRORED', 'partner link is down'));
    const msg = this.frame<PeerRequest>(body);
    return new Promise<PeerReply>((resolve, reject) => {
      this.pendingPeer.set(msg.requestId, { kind: msg.kind, sentMs: this.c.env.nowMs(), extraTimeoutMs, onReply, resolve, reject });
      this.c.outbox.push(msg);
    });
  }

  onPeerReply(msg: Message): void {
    const pending = this.pendingPeer.get(msg.requestId);
    if (pending === undefined) {
      this.c.env.log.debug({ kind: msg.kind, requestId: msg.requestId }, 'reply to no pending request');
      return;
    }
    this.pendingPeer.delete(msg.requestId);
    if (msg.kind === 'ERROR') pending.reject(PagepairError.fromWire(msg.code, `partner: ${msg.message}`));
    else {
      pending.onReply?.(msg as PeerReply);
      pending.resolve(msg as PeerReply);
    }
  }

  replyPeer(req: PeerRequest, body: DistributiveOmit<PeerReply, 'requestId' | 'epoch' | 'sender' | 'flags'>): void {
    if (!this.c.membership.linkUp) return;
    const msg = body as PeerReply;
    msg.requestId = req.requestId;
    msg.epoch = this.c.membership.epoch;
    msg.sender = this.c.selfId;
    msg.flags = 0;
    this.c.outbox.push(msg);
  }

  sendPeerError(req: PeerRequest, err: PagepairError): void {
    this.c.env.log.warn({ kind: req.kind, code: err.code, err: err.message }, 'refused partner request');
    if (!this.c.membership.linkUp) return;
    this.c.outbox.push(this.errorFrame(req.requestId, MsgType[req.kind], err));
  }

  reply(req: ClientRequest, body: DistributiveOmit<ClientReply, 'requestId' | 'epoch' | 'sender' | 'flags'>): ClientReply {
    const msg = body as ClientReply;
    msg.requestId = req.requestId;
    msg.epoch = this.c.membership.epoch;
    msg.sender = this.c.selfId;
    msg.flags = 0;
    return msg;
  }

  errorFrame(requestId: number, requestType: number, err: PagepairError): Message {
    return { kind: 'ERROR', requestId, epoch: this.c.membership.epoch, sender: this.c.selfId, flags: 0, code: ErrorCode[err.code], requestType, message: err.message };
  }

  asTyped(err: unknown, kind: string): PagepairError {
    if (isPagepairError(err)) return err;
    this.c.env.log.error({ kind, err: err instanceof Error ? err.stack : String(err) }, 'internal error serving a request');
    return new PagepairError('INTERNAL', `internal error serving ${kind}`);
  }
}
