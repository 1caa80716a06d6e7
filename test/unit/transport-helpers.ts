// Test helpers for the transport and client tests: a pino logger whose records
// the test reads back, polling with a deadline, and a raw ws peer that speaks
// frames by hand (to send what a well-behaved peer never would).

import { Writable } from 'node:stream';
import pino from 'pino';
import { WebSocket } from 'ws';
import { expect } from 'vitest';
import { decode, encode } from '../../src/protocol/codec.js';
import { PagepairError } from '../../src/protocol/errors.js';
import { HARD_LIMITS } from '../../src/protocol/limits.js';
import type { Message } from '../../src/protocol/messages.js';

export type LogRecord = Record<string, unknown> & { level: number; msg: string };

export function captureLog(): { log: pino.Logger; records: LogRecord[] } {
  const records: LogRecord[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) records.push(JSON.parse(line) as LogRecord);
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, stream), records };
}

export const WARN = 40;

// Taken before any test fakes the clock, so waiting for an event still works on a fake one.
const realSetTimeout = globalThis.setTimeout;
const realNow = performance.now.bind(performance);

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => realSetTimeout(resolve, ms));
}

/** Polls `cond` until it holds, on the real clock (a test's fake one stands still meanwhile). */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = realNow() + timeoutMs;
  while (!cond()) {
    if (realNow() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** The PagepairError `p` rejects with; fails the test if it resolves or rejects with anything else. */
export async function rejection(p: Promise<unknown>): Promise<PagepairError> {
  const err = await p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PagepairError);
  return err as PagepairError;
}

/** A ws connection the test drives frame by frame. */
export class RawWs {
  readonly ws: WebSocket;
  readonly received: Message[] = [];
  /** Binary messages that did not decode, kept as bytes. */
  readonly undecodable: Buffer[] = [];
  closeCode: number | undefined;
  readonly opened: Promise<void>;
  readonly closed: Promise<number>;

  constructor(port: number) {
    this.ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false });
    this.ws.on('error', () => {
      // the close event tells the test what happened
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('close', () => reject(new Error('closed before open')));
    });
    this.opened.catch(() => undefined);
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code) => {
        this.closeCode = code;
        resolve(code);
      });
    });
    this.ws.on('message', (data: Buffer) => {
      try {
        this.received.push(decode(data, HARD_LIMITS));
      } catch {
        this.undecodable.push(data);
      }
    });
  }

  send(msg: Message): void {
    this.ws.send(encode(msg), { binary: true });
  }

  sendBytes(bytes: Buffer | string, binary = true): void {
    this.ws.send(bytes, { binary });
  }

  /** Waits for the n-th (1-based) received message. */
  async nth(n: number, timeoutMs = 3000): Promise<Message> {
    await waitFor(() => this.received.length >= n, `message #${n}`, timeoutMs);
    return this.received[n - 1] as Message;
  }

  terminate(): void {
    this.ws.terminate();
  }
}
