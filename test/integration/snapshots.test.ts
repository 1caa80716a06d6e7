// Issue 15, copy-on-write snapshots with real processes: writers on both
// controllers at once, NBD clients (src/client/nbd-client.ts) and WebSocket
// clients, write stamped whole rows of one volume (test/sim/snapshot-cut.ts:
// a row is 80 pages, one stamp per write; two rows cross a multiple of 1 MiB,
// where a write cut into the NBD backend's old pieces would be split), and
// snapshots are taken through A and through B while they write. Each
// snapshot, read through A and through B, over NBD and over WebSocket, must be
// the same bytes, hold no split row, and equal the volume at one instant
// between its request and its answer. Then B is killed with SIGKILL: the
// snapshots read the same through A alone; B is restarted and rejoins: the
// same through both.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { NbdClient } from '../../src/client/nbd-client.js';
import { NbdFlag } from '../../src/protocol/nbd.js';
import { cutProblem, rowStamp, type RowGeometry } from '../sim/snapshot-cut.js';
import { makePairFiles, startMirroredPair, startProcess, stopPair, waitUntil, type PairFiles, type Proc } from './helpers.js';
import { now, StampedLoad, type RowWriter } from './stamped-rows.js';

const PAGE = 4096;
const MiB = 1024 * 1024;
/** Rows 3 and 6 cross 1 MiB and 2 MiB. */
const GEOMETRY: RowGeometry = { rows: 8, rowBytes: 80 * PAGE, pageBytes: PAGE };
const VOLUME_BYTES = GEOMETRY.rows * GEOMETRY.rowBytes; // 2.5 MiB
const VOLUME = 'snapvol';
/**
 * Near the most one volume may have (32): a write cut in two is caught only
 * when a snapshot falls between its halves, a window of one ownership round
 * trip. With the NBD backend cutting writes at 1 MiB again, 3 runs of 5
 * failed with 30 snapshots (1 of 2 with 24; none of 3 with 6).
 */
const SNAPSHOTS = 30;
/** Acknowledged writes between two snapshots. */
const WRITES_BETWEEN = 6;

let files: PairFiles;
let procs: [Proc, Proc];

function wsClient(id: 'A' | 'B'): Promise<PagepairClient> {
  return PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? files.ports.aClient : files.ports.bClient, token: files.token });
}

function nbdClient(id: 'A' | 'B', exportName: string): Promise<NbdClient> {
  return NbdClient.connect(`nbd://127.0.0.1:${id === 'A' ? files.ports.aNbd! : files.ports.bNbd!}/${exportName}`);
}

/** The whole export over NBD, in requests no longer than the server's maximum payload. */
async function nbdImage(id: 'A' | 'B', exportName: string, readOnly: boolean): Promise<Buffer> {
  const c = await nbdClient(id, exportName);
  try {
    expect((c.info.transmissionFlags & NbdFlag.READ_ONLY) !== 0, `${exportName} through ${id}: NBD_FLAG_READ_ONLY`).toBe(readOnly);
    expect(c.info.maximumPayloadBytes, 'the advertised maximum payload: the size of one request into the core').toBe(MiB);
    const out = Buffer.alloc(VOLUME_BYTES);
    for (let at = 0; at < VOLUME_BYTES; at += MiB) (await c.read(at, Math.min(MiB, VOLUME_BYTES - at))).copy(out, at);
    return out;
  } finally {
    await c.close();
  }
}

async function wsImage(id: 'A' | 'B', guid: string): Promise<Buffer> {
  const c = await wsClient(id);
  try {
    return await c.read(guid, 0, VOLUME_BYTES);
  } finally {
    await c.close();
  }
}

interface Snap {
  name: string;
  guid: string;
  via: 'A' | 'B';
  startMs: number;
  endMs: number;
  image: Buffer;
}

beforeAll(async () => {
  files = await makePairFiles({}, { nbd: true });
  procs = await startMirroredPair(files);
}, 60_000);

afterAll(() => stopPair(procs, files), 60_000);

describe('snapshots under writers on both controllers (real processes, NBD and WebSocket)', () => {
  it('each snapshot is the volume at one instant of its request, the same through A and B, over NBD and WebSocket, through a kill -9 and a rejoin', async () => {
    const admin = { A: await wsClient('A'), B: await wsClient('B') };
    const vol = await admin.A.allocate(VOLUME, VOLUME_BYTES);
    const nbd = [await nbdClient('A', VOLUME), await nbdClient('B', VOLUME), await nbdClient('A', VOLUME), await nbdClient('B', VOLUME)];
    const ws = [await wsClient('A'), await wsClient('B')];
    const writers: RowWriter[] = [
      { name: 'nbd-A-1', write: (o, d) => nbd[0]!.write(o, d) },
      { name: 'nbd-B-1', write: (o, d) => nbd[1]!.write(o, d) },
      { name: 'nbd-A-2', write: (o, d) => nbd[2]!.write(o, d) },
      { name: 'nbd-B-2', write: (o, d) => nbd[3]!.write(o, d) },
      { name: 'ws-A', write: (o, d) => ws[0]!.write(vol.guid, o, d) },
      { name: 'ws-B', write: (o, d) => ws[1]!.write(vol.guid, o, d) },
    ];
    const load = new StampedLoad(GEOMETRY, 0, writers, 1501);
    const snaps: Snap[] = [];
    const started = now();
    try {
      load.start();
      await waitUntil(() => load.ackedTotal >= 60 || load.errors.length > 0, 20_000, 'writes under way');
      for (let i = 0; i < SNAPSHOTS; i++) {
        const via = i % 2 === 0 ? 'A' : 'B';
        const name = `s${i}`;
        const startMs = now();
        const made = await admin[via].snapshot(vol.guid, name);
        const endMs = now();
        // Read at once, while the writers go on: what is read later must be this.
        snaps.push({ name, guid: made.guid, via, startMs, endMs, image: await admin[via].read(made.guid, 0, VOLUME_BYTES) });
        const ackedBefore = load.ackedTotal;
        await waitUntil(() => load.ackedTotal >= ackedBefore + WRITES_BETWEEN || load.errors.length > 0, 20_000, `writes after snapshot ${name}`);
      }
    } finally {
      await load.stop();
      await Promise.all([...nbd.map((c) => c.close()), ...ws.map((c) => c.close())]);
    }
    const loadMs = now() - started;
    expect(load.errors, 'writer errors').toEqual([]);
    console.log(`snapshots: ${load.writes.length} stamped writes in ${(loadMs / 1000).toFixed(1)} s (${[...load.acked].map(([w, n]) => `${w} ${n}`).join(', ')}), ${SNAPSHOTS} snapshots`);
    for (const w of writers) expect(load.acked.get(w.name) ?? 0, `writes through ${w.name}`).toBeGreaterThan(5);
    // Each snapshot fell among writes: some ended after it was answered, some began before it was asked for.
    for (const s of snaps) {
      expect(load.writes.some((w) => w.startMs < s.startMs), `writes before ${s.name}`).toBe(true);
      expect(load.writes.some((w) => w.endMs > s.endMs && w.startMs < s.endMs), `writes in flight at ${s.name}`).toBe(true);
    }

    // Judged against the history; then read through every path.
    const listed = await admin.B.list();
    for (const s of snaps) {
      expect(listed.find((e) => e.guid === s.guid), `C_LIST shows ${s.name}`).toMatchObject({ name: `${VOLUME}@${s.name}`, origin: vol.guid });
      expect(cutProblem(GEOMETRY, s.image, s, load.writes), `snapshot ${s.name} (made through ${s.via})`).toBeNull();
    }
    const sameEverywhere = async (ids: readonly ('A' | 'B')[], when: string): Promise<void> => {
      for (const s of snaps) {
        for (const id of ids) {
          expect((await nbdImage(id, `${VOLUME}@${s.name}`, true)).equals(s.image), `${when}: ${s.name} over NBD through ${id}`).toBe(true);
          expect((await wsImage(id, s.guid)).equals(s.image), `${when}: ${s.name} over WebSocket through ${id}`).toBe(true);
        }
      }
      const images = await Promise.all(ids.map((id) => nbdImage(id, VOLUME, false)));
      for (const img of images.slice(1)) expect(img.equals(images[0]!), `${when}: the volume reads the same through ${ids.join(' and ')}`).toBe(true);
      for (let row = 0; row < GEOMETRY.rows; row++) expect(typeof rowStamp(GEOMETRY, images[0]!, row), `${when}: volume row ${row}`).toBe('number');
    };
    await sameEverywhere(['A', 'B'], 'mirrored');
    await Promise.all([admin.A.close(), admin.B.close()]);

    // SIGKILL B: A takes over and serves the snapshots alone.
    procs[1].child.kill('SIGKILL');
    await procs[1].exited;
    const alone = await wsClient('A');
    try {
      await waitUntil(async () => ((await alone.status()) as { role?: string }).role === 'alone', 20_000, 'A alone');
    } finally {
      await alone.close();
    }
    await sameEverywhere(['A'], 'B killed');

    // B restarts and rejoins: the same through both again.
    procs[1] = startProcess(['start', '--config', files.b]);
    await procs[1].waitForLog((r) => r.msg === 'mirrored with partner', 60_000);
    await sameEverywhere(['A', 'B'], 'B rejoined');
  }, 120_000);
});
