// Small pieces the peer link, the client endpoint and the client library share
// about running pagepair frames over the `ws` package.

import type pino from 'pino';
import { WebSocket, type RawData } from 'ws';
import { encode, isReplyType, typeOfKind } from '../protocol/codec.js';
import { REPLY_BIT, type ErrorReply, type Message } from '../protocol/messages.js';
import { ErrorCode, type ErrorCodeName } from '../protocol/errors.js';
import { clipErrorMessage } from '../protocol/clip.js';

/**
 * Mask generator for the dialing side. RFC 6455 masking guards browsers against
 * poisoning intermediary caches; pagepair's dialers are controllers and tools
 * talking to a controller, never browsers. A zero mask lets `ws` send the
 * encoded frame as it is instead of copying it into a masked buffer, and lets
 * the receiver skip the unmasking pass over every payload byte.
 */
export function zeroMask(mask: Buffer): void {
  mask.fill(0);
}

/** Options every pagepair WebSocket uses: frames are already compact binary. */
export const WS_COMMON = { perMessageDeflate: false } as const;

/**
 * The bytes of one ws message. With the default binaryType ('nodebuffer')
 * `ws` hands over a Buffer; the other shapes are only normalised in case a
 * caller changed it.
 */
export function messageBytes(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/** An ERROR frame answering `requestId` (0 when no request could be read). */
export function errorReply(
  code: ErrorCodeName,
  message: string,
  requestId: number,
  requestType: number,
  sender: number,
  epoch = 0,
): ErrorReply {
  return { kind: 'ERROR', requestId, epoch, sender, flags: 0, code: ErrorCode[code], requestType, message: clipErrorMessage(message) };
}

/** The type code of the request `msg` answers (or is). */
function requestTypeOf(msg: Message): number {
  return msg.kind === 'ERROR' ? msg.requestType : typeOfKind(msg.kind) & ~REPLY_BIT;
}

/**
 * Encodes a frame the controller sends, and never throws: an ERROR's message
 * is clipped first (it may quote input), and a reply that still cannot be
 * encoded goes as a short INTERNAL ERROR for the same request instead. A
 * request that cannot be encoded is not sent (undefined): its sender's
 * timeout answers it. Either way the failure is logged: it is a bug.
 */
export function encodeSafely(
  msg: Message,
  sender: number,
  log: pino.Logger,
  allocate?: (bytes: number) => Buffer,
): Buffer | undefined {
  let sendable = msg;
  if (msg.kind === 'ERROR') {
    const message = clipErrorMessage(msg.message);
    if (message !== msg.message) sendable = { ...msg, message };
  }
  try {
    return encode(sendable, allocate);
  } catch (err) {
    const reply = isReplyType(typeOfKind(msg.kind));
    log.error(
      { kind: msg.kind, requestId: msg.requestId, err: err instanceof Error ? err.message : String(err), substituted: reply },
      reply ? 'reply could not be encoded; a short ERROR goes instead' : 'frame could not be encoded; not sent',
    );
    if (!reply) return undefined;
    try {
      return encode(errorReply('INTERNAL', `the ${msg.kind} could not be encoded`, msg.requestId, requestTypeOf(msg), sender, msg.epoch >>> 0));
    } catch {
      return undefined;
    }
  }
}

/** A side that ends a connection waits this long for the close handshake before cutting the socket. */
export const CLOSE_GRACE_MS = 2000;

/**
 * Closes with a close frame, so that an ERROR frame queued just before still
 * arrives, and cuts the socket if the other side never answers the close.
 */
export function closeGracefully(ws: WebSocket, code: number, reason: string): void {
  if (ws.readyState === WebSocket.CLOSED) return;
  if (ws.readyState === WebSocket.CONNECTING) {
    ws.terminate();
    return;
  }
  if (ws.readyState === WebSocket.OPEN) ws.close(code, closeReason(reason));
  setTimeout(() => ws.terminate(), CLOSE_GRACE_MS).unref();
}

/** A ws close reason is at most 123 bytes of UTF-8. */
export function closeReason(reason: string): string {
  const bytes = Buffer.from(reason, 'utf8');
  return bytes.length <= 123 ? reason : bytes.subarray(0, 120).toString('utf8');
}
