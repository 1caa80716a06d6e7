// The floors' own framing: only what a reply needs to find its request. The
// first 4 bytes of every ws message carry a request id and the next 4 the size
// of the reply wanted; the rest is filler so the message has the size of the
// pagepair frame it stands for. Both ends batch their sends per event-loop
// turn as pagepair does, so the floors differ from pagepair only by the work
// pagepair does on top.

import type { Socket } from 'node:net';
import { WebSocketServer } from 'ws';
import { DEFAULT_LIMITS } from '../protocol/limits.js';
import { WS_COMMON } from '../transport/ws-util.js';
import { TurnCorker } from '../transport/turn-corker.js';

export { TurnCorker };

export const FLOOR_HEADER_BYTES = 8;

/** Filler copied into every message, as the codec copies a page into a frame. */
const FILLER = Buffer.alloc(64 * 1024, 0xa5);

export function floorMessage(id: number, bytes: number, replyBytes: number): Buffer {
  const size = Math.max(bytes, FLOOR_HEADER_BYTES);
  const buf = Buffer.allocUnsafe(size);
  buf.writeUInt32LE(id >>> 0, 0);
  buf.writeUInt32LE(replyBytes >>> 0, 4);
  let at = FLOOR_HEADER_BYTES;
  while (at < size) at += FILLER.copy(buf, at, 0, Math.min(FILLER.length, size - at));
  return buf;
}

export function floorId(msg: Buffer): number {
  return msg.readUInt32LE(0);
}

export function floorReplyBytes(msg: Buffer): number {
  return msg.readUInt32LE(4);
}

/** The socket under a ws connection (ws keeps it private). */
export function socketOf(ws: unknown): Socket | undefined {
  return (ws as { _socket?: Socket })._socket;
}

/** A forked floor process ends with the benchmark that forked it (or its death). */
export function exitWithBenchmark(): void {
  process.on('disconnect', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0));
}

/** A floor's server tells the benchmark its port over IPC, and dies on an error. */
export function announceFloor(server: WebSocketServer, name: string): void {
  server.on('listening', () => {
    const addr = server.address();
    process.send?.({ port: typeof addr === 'object' && addr !== null ? addr.port : 0 });
  });
  server.on('error', (err) => {
    console.error(`${name}: ${err.message}`);
    process.exit(1);
  });
}

/** One client of a floor: what is sent to it in a turn leaves in one write. */
export interface FloorSender {
  send(msg: Buffer): void;
}

/**
 * A floor's WebSocket server on a free port of 127.0.0.1: each binary
 * message goes to onMessage with its client to answer (anything else closes
 * the connection), and the port is told to the benchmark.
 */
export function serveFloor(name: string, onMessage: (data: Buffer, from: FloorSender) => void): WebSocketServer {
  const server = new WebSocketServer({ ...WS_COMMON, host: '127.0.0.1', port: 0, maxPayload: DEFAULT_LIMITS.frameBytesMax });
  server.on('connection', (ws) => {
    const corker = new TurnCorker(socketOf(ws));
    const from: FloorSender = {
      send: (msg) => {
        corker.cork();
        ws.send(msg, { binary: true });
      },
    };
    ws.on('error', () => ws.terminate());
    ws.on('message', (data, isBinary) => {
      if (!isBinary || !Buffer.isBuffer(data)) {
        ws.close(1003, 'binary messages only');
        return;
      }
      onMessage(data, from);
    });
  });
  announceFloor(server, name);
  return server;
}
