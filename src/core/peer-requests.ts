// Requests to the partner and what answers them: request ids, the replies
// awaited (each a Future, with a timeout counted by tick), replies and errors
// framed for the partner and for clients, and the outbox flushed onto the
// link (WRITE_PAGE frames settle the pages they carry when answered).

import { MsgType, type ClientReply, type ClientRequest, type Message, type PeerReply, type PeerRequest, type WritePage } from '../protocol/messages.js';
import { ErrorCode, PagepairError, isPagepairError } from '../protocol/errors.js';
import { clipErrorMessage } from '../protocol/clip.js';
import { settleOp, type MirrorOp } from './peer-outbox.js';
import type { DistributiveOmit } from './shared.js';
import type { Core } from './context.js';
import type { Future } from './tasks.js';

/** A frame to the partner waiting for its answer. */
interface PendingPeer {
  kind: PeerRequest['kind'];
  sentMs: number;
  /** Beyond peerRequestTimeoutMs: work the partner does before it answers (zeroing an extent). */
  extraTimeoutMs: number;
  /** Run as the reply's frame is handled, before any task resumes: for what must take effect in link order. */
  onReply: ((reply: PeerReply) => void) | undefined;
  /** A request's answer; null for a WRITE_PAGE frame, which settles its pages' ops instead. */
  reply: Future<PeerReply> | null;
  ops: MirrorOp[] | null;
}

export class PeerRequests {
  private nextRequestId = 1;
  private readonly pendingPeer = new Map<number, PendingPeer>();

  constructor(private readonly c: Core) {}

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
        this.pendingPeer.set(requestId, { kind: 'WRITE_PAGE', sentMs: this.c.env.nowMs(), extraTimeoutMs: 0, onReply: undefined, reply: null, ops });
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
  ): Future<PeerReply> {
    if (!this.c.membership.linkUp) return this.c.tasks.failed(new PagepairError('NOT_MIRRORED', 'partner link is down'));
    const msg = this.frame<PeerRequest>(body);
    const reply = this.c.tasks.future<PeerReply>();
    this.pendingPeer.set(msg.requestId, { kind: msg.kind, sentMs: this.c.env.nowMs(), extraTimeoutMs, onReply, reply, ops: null });
    this.c.outbox.push(msg);
    return reply;
  }

  /** Fail the requests unanswered past their timeout; true if any was. */
  expire(now: number): boolean {
    let timedOut = false;
    for (const [id, p] of this.pendingPeer) {
      const timeoutMs = this.c.cfg.peerRequestTimeoutMs + p.extraTimeoutMs;
      if (now - p.sentMs > timeoutMs) {
        this.pendingPeer.delete(id);
        fail(p, new PagepairError('TIMEOUT', `partner did not answer ${p.kind} within ${timeoutMs} ms`));
        timedOut = true;
      }
    }
    return timedOut;
  }

  /** The link is gone: every frame queued and every request unanswered fails with err. */
  failAll(err: Error): void {
    this.c.outbox.failAll(err);
    const pending = [...this.pendingPeer.values()];
    this.pendingPeer.clear();
    for (const p of pending) fail(p, err);
  }

  onPeerReply(msg: Message): void {
    const pending = this.pendingPeer.get(msg.requestId);
    if (pending === undefined) {
      this.c.env.log.debug({ kind: msg.kind, requestId: msg.requestId }, 'reply to no pending request');
      return;
    }
    this.pendingPeer.delete(msg.requestId);
    if (msg.kind === 'ERROR') {
      fail(pending, PagepairError.fromWire(msg.code, `partner: ${msg.message}`));
      return;
    }
    pending.onReply?.(msg as PeerReply);
    if (pending.reply !== null) pending.reply.resolve(msg as PeerReply);
    if (pending.ops !== null) for (const op of pending.ops) settleOp(op, null);
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
    return { kind: 'ERROR', requestId, epoch: this.c.membership.epoch, sender: this.c.selfId, flags: 0, code: ErrorCode[err.code], requestType, message: clipErrorMessage(err.message) };
  }

  asTyped(err: unknown, kind: string): PagepairError {
    if (isPagepairError(err)) return err;
    this.c.env.log.error({ kind, err: err instanceof Error ? err.stack : String(err) }, 'internal error serving a request');
    return new PagepairError('INTERNAL', `internal error serving ${kind}`);
  }
}

function fail(p: PendingPeer, err: Error): void {
  if (p.reply !== null) p.reply.reject(err);
  if (p.ops !== null) for (const op of p.ops) settleOp(op, err);
}
