// The first floor: a bare WebSocket server in its own process that answers
// every binary message with a message of the size the request asks for. It
// does what a controller's client endpoint does to move bytes and nothing
// else. Forked by the benchmark; tells its port over IPC and exits when the
// benchmark goes away.

import { floorId, floorMessage, floorReplyBytes, exitWithBenchmark, serveFloor } from './floor-wire.js';

exitWithBenchmark();

serveFloor('echo floor', (data, from) => from.send(floorMessage(floorId(data), floorReplyBytes(data), 0)));
