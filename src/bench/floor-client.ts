// The benchmark's client for the floors: one WebSocket with the options the
// pagepair client uses (no compression, zero mask, one write per event-loop
// turn), requests matched to replies by id. Like PagepairClient it allocates
// and fills a message per request, so the two differ only by the codec and
// what the controller does.

import { WebSocket } from 'ws';
import { PagepairError } from '../protocol/errors.js';
import { HARD_LIMITS } from '../protocol/limits.js';
import { WS_COMMON, zeroMask } from '../transport/ws-util.js';
import { floorId, floorMessage, socketOf, TurnCorker } from './floor-wire.js';

export class FloorClient {
  private readonly pending = new Map<number, { resolve(): void; reject(err: Error): void }>();
  private readonly corker: TurnCorker;
  private lastId = 0;
  private closed = false;

  private constructor(private readonly ws: WebSocket) {
    this.corker = new TurnCorker(socketOf(ws));
    ws.on('message', (data) => {
      if (!Buffer.isBuffer(data)) return;
      const id = floorId(data);
      const p = this.pending.get(id);
      if (p === undefined) return;
      this.pending.delete(id);
      p.resolve();
    });
    ws.on('close', () => {
      this.closed = true;
      const err = new PagepairError('NOT_ACTIVE', 'floor connection closed');
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    });
  }

  static connect(port: number, timeoutMs = 5000): Promise<FloorClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`, {
        ...WS_COMMON,
        maxPayload: HARD_LIMITS.frameBytesMax,
        handshakeTimeout: timeoutMs,
        generateMask: zeroMask,
      });
      const fail = (err: Error): void => reject(new PagepairError('NOT_ACTIVE', `cannot reach the floor at port ${port}: ${err.message}`));
      ws.once('error', fail);
      ws.once('open', () => {
        ws.off('error', fail);
        ws.on('error', () => ws.terminate());
        resolve(new FloorClient(ws));
      });
    });
  }

  /** One request of `requestBytes`, answered by a message of `replyBytes`. */
  request(requestBytes: number, replyBytes: number): Promise<void> {
    if (this.closed) return Promise.reject(new PagepairError('NOT_ACTIVE', 'floor connection closed'));
    let id = this.lastId;
    do id = id >= 0xffff_ffff ? 1 : id + 1;
    while (this.pending.has(id));
    this.lastId = id;
    const msg = floorMessage(id, requestBytes, replyBytes);
    return new Promise<void>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.corker.cork();
      this.ws.send(msg, { binary: true });
    });
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.ws.once('close', () => resolve());
      this.ws.close(1000, '');
      setTimeout(() => {
        this.ws.terminate();
        resolve();
      }, 2000).unref();
    });
  }
}
