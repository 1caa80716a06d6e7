// The bench's Redis client: one TCP connection, commands pipelined, replies
// matched to requests in order (Redis answers each connection in order).
// Like the pagepair client it sends everything issued in one event-loop turn
// in one write, and allocates one buffer and one promise per write.

import { connect, type Socket } from 'node:net';
import { PagepairError } from '../protocol/errors.js';
import { encodeCommand, encodeSetAndWait, RespError, RespParser, type RespValue } from './redis-resp.js';
import { TurnCorker } from '../transport/turn-corker.js';

interface Waiter {
  resolve(v: RespValue): void;
  reject(err: Error): void;
}

export class RedisClient {
  private readonly parser = new RespParser();
  private readonly waiting: Waiter[] = [];
  private head = 0;
  private readonly corker: TurnCorker;
  private closed: Error | null = null;

  private constructor(private readonly socket: Socket) {
    this.corker = new TurnCorker(socket);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      let replies: RespValue[];
      try {
        replies = this.parser.push(chunk);
      } catch (err) {
        this.fail(err instanceof Error ? err : new Error(String(err)));
        socket.destroy();
        return;
      }
      for (const r of replies) {
        const w = this.waiting[this.head];
        if (w === undefined) {
          this.fail(new PagepairError('INTERNAL', 'redis sent a reply nobody asked for'));
          socket.destroy();
          return;
        }
        this.waiting[this.head++] = undefined as unknown as Waiter;
        if (this.head > 1024 && this.head * 2 > this.waiting.length) {
          this.waiting.splice(0, this.head);
          this.head = 0;
        }
        if (r instanceof RespError) w.reject(new PagepairError('INTERNAL', `redis: ${r.message}`));
        else w.resolve(r);
      }
    });
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => this.fail(new PagepairError('NOT_ACTIVE', 'redis connection closed')));
  }

  static connect(port: number, host = '127.0.0.1', timeoutMs = 5000): Promise<RedisClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ port, host });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new PagepairError('TIMEOUT', `redis at ${host}:${port} did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new PagepairError('NOT_ACTIVE', `cannot reach redis at ${host}:${port}: ${err.message}`));
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new RedisClient(socket));
      });
    });
  }

  /** One command; resolves with its reply, rejects on an error reply. */
  command(args: readonly (string | Buffer)[]): Promise<RespValue> {
    return this.send(encodeCommand(args));
  }

  /**
   * SET key value, then WAIT 1 0 in the same write: resolves once the replica
   * holds this write (and every earlier one on this connection).
   */
  setAndWait(key: string, value: Buffer): Promise<void> {
    if (this.closed !== null) return Promise.reject(this.closed);
    return new Promise<void>((resolve, reject) => {
      let setFailed: Error | null = null;
      this.waiting.push({ resolve: ignore, reject: (err) => (setFailed = err) });
      this.waiting.push({
        resolve: (acked) => {
          if (setFailed !== null) reject(setFailed);
          else if (typeof acked !== 'number' || acked < 1) reject(new PagepairError('NOT_MIRRORED', `WAIT 1 0 answered ${String(acked)}`));
          else resolve();
        },
        reject,
      });
      this.write(encodeSetAndWait(key, value));
    });
  }

  close(): Promise<void> {
    if (this.closed !== null) return Promise.resolve();
    return new Promise((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.end();
      setTimeout(() => {
        this.socket.destroy();
        resolve();
      }, 2000).unref();
    });
  }

  private send(bytes: Buffer): Promise<RespValue> {
    if (this.closed !== null) return Promise.reject(this.closed);
    return new Promise<RespValue>((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.write(bytes);
    });
  }

  /** Everything written in one event-loop turn leaves in one write. */
  private write(bytes: Buffer): void {
    this.corker.cork();
    this.socket.write(bytes);
  }

  private fail(err: Error): void {
    if (this.closed === null) this.closed = err;
    const waiting = this.waiting.slice(this.head);
    this.waiting.length = 0;
    this.head = 0;
    for (const w of waiting) w.reject(err);
  }
}

function ignore(): void {}
