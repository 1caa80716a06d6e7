// Issue 11, finding 2, with real processes: a stranger fills B's peer port
// with connections held open mid-handshake (upgraded, never a HELLO; more
// than peerConnectionsMax of them, from many loopback addresses and from the
// partner's own), then A is killed with SIGKILL and started again. A dials B
// while the stranger still holds its connections, and the pair is mirrored
// again: the partner's address is always let in.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { PagepairClient } from '../../src/client/index.js';
import { makePairFiles, startMirroredPair, startProcess, stopPair, type PairFiles, type Proc } from './helpers.js';
import { statusOf } from './controller-status.js';

let files: PairFiles;
let procs: [Proc, Proc];
let restartedA: Proc | undefined;
const held: WebSocket[] = [];

const PEER_CONNECTIONS_MAX = 32;
/** The stranger's addresses: 127.0.0.1 is the partner's own, the rest are others. */
const STRANGER_SOURCES = ['127.0.0.1', ...Array.from({ length: 11 }, (_, i) => `127.0.0.${i + 2}`)];
const PER_SOURCE = 4;

beforeAll(async () => {
  // Handshakes are held for 60 s, longer than the test: the stranger never has to open new ones.
  files = await makePairFiles({ limits: { peerConnectionsMax: PEER_CONNECTIONS_MAX, handshakesPerSourceMax: PER_SOURCE, handshakeTimeoutMs: 60_000 } });
  procs = await startMirroredPair(files);
}, 60_000);

afterAll(async () => {
  for (const ws of held) ws.terminate();
  await stopPair([procs?.[0], procs?.[1], restartedA], files);
}, 60_000);

function hold(port: number, from: string): Promise<WebSocket | null> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false, localAddress: from });
  ws.on('error', () => undefined);
  return new Promise((resolve) => {
    ws.once('open', () => resolve(ws));
    ws.once('close', () => resolve(null));
  });
}

describe('a stranger holding handshakes on the peer port', () => {
  it('does not keep a restarted partner out: A is killed, started again, and the pair is mirrored again while the stranger holds them', async () => {
    // Twice the cap's worth of attempts, PER_SOURCE + 2 from each address: past the per-source slots the oldest gives way, past the cap the door is shut.
    const attempts = STRANGER_SOURCES.flatMap((from) => Array.from({ length: PER_SOURCE + 2 }, () => from));
    for (const from of attempts) {
      const ws = await hold(files.ports.bPeer, from);
      if (ws !== null) held.push(ws);
    }
    const open = (): WebSocket[] => held.filter((ws) => ws.readyState === WebSocket.OPEN);
    const before = await statusOf(files, files.ports.bClient, 5000);
    expect(before.refused.peer).not.toBeNull();
    // Every place on B's peer port but the link's own is the stranger's.
    expect(before.refused.peer!.open).toBe(PEER_CONNECTIONS_MAX);
    expect(before.refused.peer!.handshaking).toBe(PEER_CONNECTIONS_MAX - 1);
    expect(before.refused.peer!.overCap).toBeGreaterThan(0);
    expect(before.refused.peer!.perSource).toBeGreaterThan(0);
    const heldBefore = open().length;
    expect(heldBefore).toBe(PEER_CONNECTIONS_MAX - 1);

    procs[0].child.kill('SIGKILL');
    await procs[0].exited;
    await procs[1].waitForLog((r) => r.msg === 'peer link down', 10_000);
    restartedA = startProcess(['start', '--config', files.a]);
    await restartedA.waitForLog((r) => r.msg === 'mirrored with partner', 30_000);
    await procs[1].waitForLog((r) => r.msg === 'mirrored with partner' && procs[1].records().filter((x) => x.msg === 'mirrored with partner').length >= 2, 30_000);

    // The stranger still holds all but the one that gave way to the partner.
    expect(open().length).toBeGreaterThanOrEqual(heldBefore - 1);
    const after = await statusOf(files, files.ports.bClient, 5000);
    expect(after.role).toBe('mirrored');
    expect(after.refused.peer!.handshaking).toBeGreaterThanOrEqual(PEER_CONNECTIONS_MAX - 2);

    // And the pair mirrors: written through the restarted A, read through B.
    const ca = await PagepairClient.connect({ host: '127.0.0.1', port: files.ports.aClient, token: files.token });
    const cb = await PagepairClient.connect({ host: '127.0.0.1', port: files.ports.bClient, token: files.token });
    try {
      const al = await ca.allocate('after-the-stranger', 16 * 4096);
      const data = Buffer.alloc(4096, 0x3c);
      await ca.write(al.guid, 4096, data);
      expect((await cb.read(al.guid, 4096, 4096)).equals(data)).toBe(true);
    } finally {
      await Promise.all([ca.close(), cb.close()]);
    }
  }, 120_000);
});
