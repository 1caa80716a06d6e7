// The second floor's middle hop: a process that relays every client message
// to a partner process over one WebSocket link and relays the partner's
// answer back, as controller A relays a write to B and B's reply to the
// client, without a memory manager or a codec: it only swaps the request id
// so that answers find their client. The partner is an echo floor process.
// Forked by the benchmark with the partner's port as its argument.

import { WebSocket } from 'ws';
import { HARD_LIMITS } from '../protocol/limits.js';
import { WS_COMMON, zeroMask } from '../transport/ws-util.js';
import { floorId, exitWithBenchmark, serveFloor, socketOf, TurnCorker, type FloorSender } from './floor-wire.js';

exitWithBenchmark();

const partnerPort = Number(process.argv[2]);
if (!Number.isInteger(partnerPort) || partnerPort <= 0) {
  console.error(`relay floor: bad partner port ${process.argv[2] ?? '(none)'}`);
  process.exit(2);
}

interface Waiting {
  client: FloorSender;
  clientId: number;
}

const waiting = new Map<number, Waiting>();
let nextRelayId = 1;

const link = new WebSocket(`ws://127.0.0.1:${partnerPort}/`, { ...WS_COMMON, maxPayload: HARD_LIMITS.frameBytesMax, generateMask: zeroMask });
let linkCorker: TurnCorker | undefined;

link.on('error', (err) => {
  console.error(`relay floor: link to the partner: ${err.message}`);
  process.exit(1);
});
link.on('close', () => process.exit(0));
link.on('message', (data) => {
  if (!Buffer.isBuffer(data)) return;
  const relayId = floorId(data);
  const w = waiting.get(relayId);
  if (w === undefined) return;
  waiting.delete(relayId);
  // The answer is ours to change: ws handed it over and keeps no reference.
  data.writeUInt32LE(w.clientId, 0);
  w.client.send(data);
});

link.on('open', () => {
  linkCorker = new TurnCorker(socketOf(link));
  serveFloor('relay floor', (data, client) => {
    const relayId = nextRelayId;
    nextRelayId = nextRelayId >= 0xffff_ffff ? 1 : nextRelayId + 1;
    waiting.set(relayId, { client, clientId: floorId(data) });
    data.writeUInt32LE(relayId, 0);
    linkCorker!.cork();
    link.send(data, { binary: true });
  });
});
