// Stand-ins for a socket, so the fuzz targets drive the real handlers in
// process at hundreds of thousands of inputs a minute: a ws whose messages the
// fuzzer hands in and whose sends it records, and a duplex stream shaped
// like a net.Socket for the NBD server.

import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import pino from 'pino';
import type { WebSocket } from 'ws';
import { decode, ProtocolError } from '../../protocol/codec.js';
import { DEFAULT_LIMITS } from '../../protocol/limits.js';
import type { Message } from '../../protocol/messages.js';
import type { AcceptedConnection } from '../../transport/ws-listener.js';
import { OracleFailure } from './runner.js';

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/** The frames `who` sent on ws, decoded; one that does not decode fails the oracle. */
export function decodeSent(ws: FakeWs, who: string): Message[] {
  return ws.sent.map((f) => {
    try {
      return decode(f, DEFAULT_LIMITS);
    } catch (err) {
      throw new OracleFailure(`${who} sent a frame that does not decode: ${err instanceof ProtocolError ? err.message : String(err)}`);
    }
  });
}

/**
 * What a handler under fuzz did with a ws: frames sent, whether and how it
 * closed. As with `ws`, close() and terminate() only start closing: messages
 * may still arrive, and 'close' is emitted later (settle()), never inside
 * the handler that asked for it.
 */
export class FakeWs extends EventEmitter {
  readyState = OPEN;
  bufferedAmount = 0;
  readonly sent: Buffer[] = [];
  closeCode: number | undefined;
  terminated = false;
  slowReader = false;
  private pendingClose: number | undefined;

  /** The shape the handlers take; only the members they use exist. */
  asWs(): WebSocket {
    return this as unknown as WebSocket;
  }

  send(data: Buffer, _opts?: unknown, cb?: (err?: Error) => void): void {
    // ws drops a send after close and reports it to the callback only.
    if (this.readyState !== OPEN) {
      cb?.(new Error('WebSocket is not open'));
      return;
    }
    this.sent.push(Buffer.from(data));
    // A reader that never reads: everything sent stays buffered.
    if (this.slowReader) this.bufferedAmount += data.length;
    cb?.();
  }

  /** A binary message from the other side: it can arrive until the close completes. */
  deliver(data: Buffer, isBinary = true): void {
    if (this.readyState === CLOSED) return;
    this.emit('message', data, isBinary);
  }

  close(code?: number, _reason?: string): void {
    if (this.readyState !== OPEN) return;
    this.closeCode = code;
    this.startClosing(code ?? 1005);
  }

  terminate(): void {
    this.terminated = true;
    this.startClosing(1006);
  }

  /** The other side goes away. */
  hangUp(): void {
    this.startClosing(1006);
    this.settle();
  }

  /** Emits the 'close' a close() or terminate() started. */
  settle(): void {
    const code = this.pendingClose;
    if (code === undefined || this.readyState === CLOSED) return;
    this.pendingClose = undefined;
    this.readyState = CLOSED;
    this.emit('close', code, Buffer.alloc(0));
  }

  /** Closing or closed: the handler gave up on it (or the other side did). */
  get closed(): boolean {
    return this.readyState !== OPEN;
  }

  private startClosing(code: number): void {
    if (this.readyState === CLOSED) return;
    if (this.readyState === CONNECTING) {
      this.readyState = CLOSED;
      return;
    }
    this.readyState = CLOSING;
    this.pendingClose ??= code;
  }
}

/** A socket-shaped object for AcceptedConnection (cork and uncork are all the client endpoint uses). */
const NULL_SOCKET = { cork() {}, uncork() {}, setNoDelay() {} } as unknown as Socket;

export function fakeAccepted(): AcceptedConnection {
  return {
    remote: 'fuzz:0',
    source: 'fuzz',
    tls: false,
    socket: NULL_SOCKET,
    acceptedAtMs: 0,
    authenticated() {},
  };
}

/**
 * The server's end of an in-memory connection, shaped like a net.Socket:
 * what the server writes is collected in `out`, `input` hands it bytes.
 */
export class MemorySocket extends Duplex {
  readonly out: Buffer[] = [];
  outBytes = 0;

  constructor() {
    super({ allowHalfOpen: true });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.out.push(chunk);
    this.outBytes += chunk.length;
    cb();
  }

  override _read(): void {}

  input(chunk: Buffer): void {
    if (!this.destroyed) this.push(chunk);
  }

  output(): Buffer {
    return Buffer.concat(this.out);
  }

  setNoDelay(): this {
    return this;
  }

  setKeepAlive(): this {
    return this;
  }

  destroySoon(): void {
    if (this.writableFinished) {
      this.destroy();
      return;
    }
    this.once('finish', () => this.destroy());
    this.end();
  }

  asSocket(): Socket {
    return this as unknown as Socket;
  }
}

/** A logger that drops everything below error and counts what it keeps: an error logged by a handler is a finding. */
export function countingLogger(): { log: pino.Logger; errors: string[] } {
  const errors: string[] = [];
  const log = pino({ level: 'error' }, { write: (line: string) => void errors.push(line) });
  return { log, errors };
}
