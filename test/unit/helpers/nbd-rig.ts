// NBD servers over an in-memory backend, made per test and closed after it:
// the unit tests of the server and the real NBD clients in test/interop both
// stand one up with `rig()`.

import { afterEach, expect } from 'vitest';
import { MemoryNbdBackend } from '../../../src/testing/memory-nbd-backend.js';
import type { MemoryVolumeSpec } from '../../../src/testing/memory-nbd-backend.js';
import { NbdServer } from '../../../src/transport/nbd-server.js';
import type { NbdServerLimits } from '../../../src/transport/nbd-server.js';
import { captureLog } from '../transport-helpers.js';
import type { LogRecord } from '../transport-helpers.js';

const MiB = 1024 * 1024;

export interface Rig {
  server: NbdServer;
  backend: MemoryNbdBackend;
  port: number;
  records: LogRecord[];
}

export type MakeRig = (limits?: Partial<NbdServerLimits>, volumes?: MemoryVolumeSpec[], socketPath?: string) => Promise<Rig>;

/** Returns `rig()`; every server it starts is closed after each test of the calling file. */
export function useNbdRig(): MakeRig {
  const open: NbdServer[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.close()));
  });
  return async (
    limits = {},
    volumes = [
      { name: 'vol0', sizeBytes: 4 * MiB },
      { name: 'vol1', sizeBytes: 1 * MiB, pageSizeBytes: 8192 },
    ],
    socketPath,
  ) => {
    const backend = new MemoryNbdBackend(volumes);
    const { log, records } = captureLog();
    const server = new NbdServer({ host: '127.0.0.1', port: 0, limits, log, ...(socketPath !== undefined ? { socketPath } : {}) }, backend);
    open.push(server);
    const { port } = await server.start();
    return { server, backend, port, records };
  };
}

interface ServerSideConnection {
  paused: boolean;
  writeBlocked: boolean;
  /** A request read but waiting for room in flight. */
  held: unknown;
  socket: { writableNeedDrain: boolean };
  closeReason: string | null;
}

/** The server's one open connection as the server sees it: its flow control, and why it is closing. */
export function onlyConnection(server: NbdServer): ServerSideConnection {
  const conns = [...(server as unknown as { conns: Set<ServerSideConnection> }).conns];
  expect(conns).toHaveLength(1);
  return conns[0]!;
}

/**
 * Whether the server has stopped reading the one connection until its client
 * reads replies: past the reply queue's bound, or holding a request that
 * waits for room in flight while the socket waits for a drain.
 */
export function blockedByUnreadReplies(server: NbdServer): boolean {
  const c = onlyConnection(server);
  return c.paused && (c.writeBlocked || (c.held !== null && c.socket.writableNeedDrain));
}

/** Counts, from now on, the most reads `backend` holds at once; returns a reader of that count. */
export function heldAtOnce(backend: MemoryNbdBackend): () => number {
  let most = 0;
  const read = backend.read.bind(backend);
  backend.read = (volume, offset, length) => {
    const p = read(volume, offset, length);
    most = Math.max(most, backend.held.length);
    return p;
  };
  return () => most;
}
