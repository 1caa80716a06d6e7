// Issue 15: a snapshot exported over NBD, read only, as VOL@NAME, read by
// other people's NBD clients. A real pair; a volume written through both
// controllers (qemu-io patterns in its first half; stamped rows in the second,
// written by NBD clients on A and on B that keep writing while snapshots are
// taken through A and through B with the client library, and after). Then:
// - qemu-io reads each snapshot through A (TCP) and through B (unix socket)
//   and finds the patterns of before, though the volume was overwritten
//   after; nbdcopy copies each snapshot out through A and through B, and the
//   copies are the same bytes as the client library reads, whose stamped
//   rows are the volume at one instant of the snapshot's request;
// - nbdinfo sees the export read only, with nothing that is for writing;
// - qemu-io refuses to write it (the client sees the flag), so a write is
//   also sent as raw NBD with the project's client: NBD_EPERM, and the
//   connection and both controllers go on serving.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { NbdClient, NbdRequestError } from '../../src/client/nbd-client.js';
import { NbdErrno, NbdFlag } from '../../src/protocol/nbd.js';
import { stopPair, waitUntil, type PairFiles, type Proc } from '../integration/helpers.js';
import { now, StampedLoad, type RowWriter } from '../integration/stamped-rows.js';
import { cutProblem, type RowGeometry } from '../sim/snapshot-cut.js';
import { describeWithTools, itWithTools } from '../tools.js';
import { qemuIo, run, startServingPair, tcpUrl, unixUrl } from './clients.js';

const MiB = 1024 * 1024;
const KiB = 1024;
const VOLUME = { name: 'vol0', sizeBytes: 8 * MiB };
/** Stamped rows from 4 MiB: 8 rows of 320 KiB, to 6.5 MiB; rows 3 and 6 cross a multiple of 1 MiB. */
const ROWS_AT = 4 * MiB;
const GEOMETRY: RowGeometry = { rows: 8, rowBytes: 320 * KiB, pageBytes: 4096 };
const ROWS_END = ROWS_AT + GEOMETRY.rows * GEOMETRY.rowBytes;

interface Snap {
  name: string;
  guid: string;
  via: 'A' | 'B';
  startMs: number;
  endMs: number;
}

let files: PairFiles;
let a: Proc;
let b: Proc;
let work: string;
let guid: string;
let load: StampedLoad;
const snaps: Snap[] = [];

function wsClient(id: 'A' | 'B'): Promise<PagepairClient> {
  return PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? files.ports.aClient : files.ports.bClient, token: files.token });
}

/** Through A over TCP, through B over its unix socket: both listeners of both controllers get a turn. */
function urlOf(id: 'A' | 'B', exportName: string): string {
  return id === 'A' ? tcpUrl(files, 'A', exportName) : unixUrl(files, 'B', exportName);
}

describeWithTools(['qemu-io', 'nbdcopy', 'nbdinfo'], 'snapshots over NBD, read only, with real NBD clients on a real pair', () => {
  beforeAll(async () => {
    ({ files, a, b } = await startServingPair({}, [VOLUME]));
    work = mkdtempSync(join(tmpdir(), 'pagepair-snap-nbd-'));
    const admin = { A: await wsClient('A'), B: await wsClient('B') };
    guid = (await admin.A.list()).find((e) => e.name === VOLUME.name)!.guid;

    // Before: patterns through both controllers.
    await qemuIo(['-f', 'raw', urlOf('A', VOLUME.name)], ['write -P 0xa1 0 2M']);
    await qemuIo(['-f', 'raw', urlOf('B', VOLUME.name)], ['write -P 0xb2 2M 2M']);

    // Stamped rows by NBD clients on both controllers, going on while the snapshots are taken.
    const nbd = await Promise.all((['A', 'B', 'A', 'B'] as const).map((id) => NbdClient.connect(tcpUrl(files, id, VOLUME.name))));
    const writers: RowWriter[] = nbd.map((c, i) => ({ name: `nbd-${i % 2 === 0 ? 'A' : 'B'}-${i}`, write: (o, d) => c.write(o, d) }));
    load = new StampedLoad(GEOMETRY, ROWS_AT, writers, 1515);
    try {
      load.start();
      for (const [i, via] of (['A', 'B'] as const).entries()) {
        const before = load.ackedTotal;
        await waitUntil(() => load.ackedTotal >= before + 40 || load.errors.length > 0, 20_000, 'stamped writes under way');
        const name = `snap${via}`;
        const startMs = now();
        const made = await admin[via].snapshot(guid, name);
        snaps.push({ name, guid: made.guid, via, startMs, endMs: now() });
        expect(i).toBe(snaps.length - 1);
      }
      const after = load.ackedTotal;
      await waitUntil(() => load.ackedTotal >= after + 40 || load.errors.length > 0, 20_000, 'stamped writes after the snapshots');
      // After: the first half overwritten, through B, while the rows are still being written.
      await qemuIo(['-f', 'raw', urlOf('B', VOLUME.name)], ['write -P 0xc3 0 4M']);
    } finally {
      await load.stop();
      await Promise.all(nbd.map((c) => c.close()));
      await Promise.all([admin.A.close(), admin.B.close()]);
    }
    expect(load.errors, 'writer errors').toEqual([]);
  }, 90_000);

  afterAll(async () => {
    await stopPair([a, b], files);
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
  }, 60_000);

  itWithTools(['qemu-io'], 'qemu-io reads each snapshot through A and through B: the patterns of before the snapshot, not what was written after', async () => {
    for (const s of snaps) {
      for (const id of ['A', 'B'] as const) {
        // -r: qemu opens a read-only export only read only (see the last test).
        await qemuIo(['-f', 'raw', '-r', urlOf(id, `${VOLUME.name}@${s.name}`)], ['read -P 0xa1 0 2M', 'read -P 0xb2 2M 2M', `read -P 0 ${ROWS_END} ${VOLUME.sizeBytes - ROWS_END}`]);
      }
    }
    // The volume itself moved on.
    await qemuIo(['-f', 'raw', '-r', urlOf('A', VOLUME.name)], ['read -P 0xc3 0 4M']);
  }, 60_000);

  itWithTools(['nbdcopy'], 'nbdcopy copies each snapshot out through A and through B: the bytes the client library reads, each stamped row of one instant of the request', async () => {
    const c = await wsClient('B');
    try {
      for (const s of snaps) {
        const want = await c.read(s.guid, 0, VOLUME.sizeBytes);
        expect(cutProblem(GEOMETRY, want.subarray(ROWS_AT, ROWS_END), s, load.writes), `snapshot ${s.name} (made through ${s.via})`).toBeNull();
        // Some rows were written before the snapshot, and writes went on after it.
        expect(load.writes.some((w) => w.endMs < s.startMs)).toBe(true);
        expect(load.writes.some((w) => w.startMs > s.endMs)).toBe(true);
        for (const id of ['A', 'B'] as const) {
          const out = join(work, `${s.name}-${id}.raw`);
          const r = await run('nbdcopy', [urlOf(id, `${VOLUME.name}@${s.name}`), out], 60_000);
          expect(r.code, r.stderr).toBe(0);
          expect(readFileSync(out).equals(want), `nbdcopy of ${s.name} through ${id}`).toBe(true);
        }
      }
    } finally {
      await c.close();
    }
  }, 60_000);

  itWithTools(['nbdinfo'], 'nbdinfo: each snapshot is listed and read only, with nothing offered that is for writing', async () => {
    for (const id of ['A', 'B'] as const) {
      const r = await run('nbdinfo', ['--list', '--json', id === 'A' ? `nbd://127.0.0.1:${files.ports.aNbd}` : `nbd+unix://?socket=${files.nbdSockets!.b}`], 15_000);
      expect(r.code, r.stderr).toBe(0);
      const exports = (JSON.parse(r.stdout) as { exports: Record<string, unknown>[] }).exports;
      const byName = new Map(exports.map((e) => [e['export-name'], e]));
      expect(byName.get(VOLUME.name), `${VOLUME.name} through ${id}`).toMatchObject({ is_read_only: false, can_trim: true, block_size_maximum: MiB });
      for (const s of snaps) {
        expect(byName.get(`${VOLUME.name}@${s.name}`), `${s.name} through ${id}`).toMatchObject({
          'export-size': VOLUME.sizeBytes,
          is_read_only: true,
          can_trim: false,
          can_zero: false,
          can_fua: false,
          can_flush: false,
          can_multi_conn: true,
          block_size_maximum: MiB,
        });
      }
    }
  }, 30_000);

  itWithTools(['qemu-io'], 'a write to a snapshot is refused: by qemu-io itself (it sees the flag), and NBD_EPERM for a raw NBD write; the connection and both controllers go on', async () => {
    const s = snaps[0]!;
    const exportName = `${VOLUME.name}@${s.name}`;
    const c = await wsClient('A');
    try {
      const before = await c.read(s.guid, 0, VOLUME.sizeBytes);
      const rw = await run('qemu-io', ['-f', 'raw', urlOf('A', exportName), '-c', 'write -P 0x77 0 4k'], 20_000);
      expect(rw.code, rw.stdout + rw.stderr).not.toBe(0);
      expect(rw.stdout + rw.stderr).toMatch(/read-only|Permission denied/);
      const ro = await run('qemu-io', ['-f', 'raw', '-r', urlOf('B', exportName), '-c', 'write -P 0x77 0 4k'], 20_000);
      expect(ro.stdout + ro.stderr).toMatch(/read-only/);
      expect(ro.stdout + ro.stderr).not.toMatch(/wrote \d+/);

      for (const id of ['A', 'B'] as const) {
        const n = await NbdClient.connect(id === 'A' ? tcpUrl(files, 'A', exportName) : unixUrl(files, 'B', exportName));
        try {
          expect(n.info.transmissionFlags & NbdFlag.READ_ONLY, `NBD_FLAG_READ_ONLY through ${id}`).toBe(NbdFlag.READ_ONLY);
          expect(n.info.transmissionFlags & (NbdFlag.SEND_TRIM | NbdFlag.SEND_WRITE_ZEROES | NbdFlag.SEND_FUA | NbdFlag.SEND_FLUSH)).toBe(0);
          const err = await n.write(4096, Buffer.alloc(4096, 0x77)).catch((e: unknown) => e);
          expect(err, `a raw NBD write through ${id}`).toBeInstanceOf(NbdRequestError);
          expect(err).toMatchObject({ errno: NbdErrno.EPERM, code: 'READ_ONLY' });
          // The project's client does not send what the export does not offer.
          await expect(n.trim(0, 4096)).rejects.toMatchObject({ code: 'UNKNOWN_TYPE' });
          // The same connection goes on serving.
          expect((await n.read(0, 4096)).equals(Buffer.alloc(4096, 0xa1)), `a read after the refused write through ${id}`).toBe(true);
          expect(n.isOpen).toBe(true);
        } finally {
          await n.close();
        }
      }
      expect((await c.read(s.guid, 0, VOLUME.sizeBytes)).equals(before), 'the snapshot is unchanged').toBe(true);
      for (const id of ['A', 'B'] as const) {
        const st = await wsClient(id);
        try {
          expect(((await st.status()) as { role?: string }).role, `${id} still serves, mirrored`).toBe('mirrored');
        } finally {
          await st.close();
        }
      }
      expect(a.child.exitCode).toBeNull();
      expect(b.child.exitCode).toBeNull();
    } finally {
      await c.close();
    }
  }, 60_000);
});
