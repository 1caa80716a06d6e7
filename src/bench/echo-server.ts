// The first floor: a bare WebSocket server in its own process that answers
// every binary message with a message of the size the request asks for. It
// does what a controller's client endpoint does to move bytes and nothing
// else. Forked by the benchmark; tells its port over IPC and exits when the
// benchmark goes away.

import { WebSocketServer } from 'ws';
import { DEFAULT_LIMITS } from '../protocol/limits.js';
import { WS_COMMON } from '../transport/ws-util.js';
import { floorId, floorMessage, floorReplyBytes, announceFloor, exitWithBenchmark, socketOf, TurnCorker } from './floor-wire.js';

exitWithBenchmark();

const server = new WebSocketServer({ ...WS_COMMON, host: '127.0.0.1', port: 0, maxPayload: DEFAULT_LIMITS.frameBytesMax });

server.on('connection', (ws) => {
  const corker = new TurnCorker(socketOf(ws));
  ws.on('error', () => ws.terminate());
  ws.on('message', (data, isBinary) => {
    if (!isBinary || !Buffer.isBuffer(data)) {
      ws.close(1003, 'binary messages only');
      return;
    }
    corker.cork();
    ws.send(floorMessage(floorId(data), floorReplyBytes(data), 0), { binary: true });
  });
});

announceFloor(server, 'echo floor');
