// `pagepair device replace` and `pagepair scrub` while the pair serves, with
// real processes: a pair over a pool (a mirror of 2, parity2 over 4) whose
// slot 1 is an NBD export served by this test process (the others are
// files); clients on both controllers write and read the same pages all
// along, each write's bytes unique. The export goes away under the serving
// pair (both controllers meet the failure); `device replace` through the
// CLI rebuilds slot 1 onto a fresh file, run by controller A while the
// writers go on, and rewrites both configurations; `scrub` through the CLI
// (controller B runs it) finds the pool clean, the writers still going.
// Checked: the history of every page with the final contents is
// linearizable, reads through A and B agree and verify finds no copy
// differing, both controllers see the new member healthy; then, the pair
// stopped, a scrub finds no mismatch and every page reads back as served
// with any member gone (any two for parity2).
//
// And a pool job's requests against a serving controller: each mistake a
// typed error, the controller serving on; one job at a time (BUSY); a
// controller stopped in the middle of a rebuild aborts it (its partner never
// trusts the unfinished device), and the command, --config's controller
// gone, sends the replace to the partner.

import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it, onTestFailed } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { checkFinal, type HistoryOp } from '../../src/checker/index.js';
import type { ControllerStatus } from '../../src/runtime/controller-process.js';
import { FileDevice } from '../../src/store/file-device.js';
import { openPool } from '../../src/store/open-pool.js';
import { PageStore } from '../../src/store/page-store.js';
import type { PoolMember } from '../../src/store/pool.js';
import { MemoryNbdBackend } from '../../src/testing/memory-nbd-backend.js';
import { NbdServer } from '../../src/transport/nbd-server.js';
import { Broken } from '../sim/pool-workload.js';
import { BIN, makePairFiles, runCli, seededInts, startMirroredPair, stopPair, waitUntil, type PairFiles, type Proc } from './helpers.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
const PAGES = 32;
const DEVICE_BYTES = 24 * MiB;

let files: PairFiles | undefined;
let procs: Proc[] = [];
let nbd: NbdServer | undefined;
const clients: PagepairClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
  await stopPair(procs, files);
  await nbd?.close().catch(() => undefined);
  nbd = undefined;
}, 30_000);

/** Page p's bytes for a value: the value and the page, over and over. */
function stamp(p: number, value: number): Buffer {
  const b = Buffer.alloc(PAGE);
  for (let i = 0; i < PAGE; i += 8) {
    b.writeUInt32LE(value, i);
    b.writeUInt32LE(p, i + 4);
  }
  return b;
}

function valueOf(p: number, b: Buffer): number | 'garbage' {
  if (b.every((x) => x === 0)) return 0;
  const v = b.readUInt32LE(0);
  return b.equals(stamp(p, v)) ? v : 'garbage';
}

interface PoolJson {
  degraded: boolean;
  generation: number;
  members: { slot: number; name: string; state: string }[];
}

const cases = [
  { layout: 'mirror', devices: 2, rate: '8MiB/s', seed: 11 },
  { layout: 'parity2', devices: 4, rate: '12MiB/s', seed: 23 },
] as const;

describe('device replace and scrub while the pair serves', () => {
  for (const c of cases) {
    it(`${c.layout} over ${c.devices}: slot 1's export goes away under writers on both controllers, is rebuilt onto a file by A and scrubbed by B while they go on; nothing is lost and the pool agrees with itself`, async () => {
      files = await makePairFiles();
      const f = files;
      const backend = new MemoryNbdBackend([{ name: 'm1', sizeBytes: DEVICE_BYTES }]);
      const socket = join(f.dir, 'm1.sock');
      nbd = new NbdServer({ host: '127.0.0.1', port: 0, socketPath: socket, limits: { closeGraceMs: 100 }, log: pino({ level: 'silent' }) }, backend);
      await nbd.start();
      const paths = Array.from({ length: c.devices }, (_, i) => (i === 1 ? `nbd+unix:///m1?socket=${socket}` : join(f.dir, 'pool', `d${i}.img`)));
      const fresh = join(f.dir, 'pool', 'd1-new.img');
      const store = { pool: { layout: c.layout, devices: paths, deviceBytes: DEVICE_BYTES, ...(c.layout === 'mirror' ? {} : { chunkBytes: 16384 }) }, tableEntriesMax: 64 };
      const base = { store, partnerTimeoutMs: 1500, heartbeatIntervalMs: 100, cache: { dirtyAgeMaxMs: 50 } };
      writeFileSync(f.a, JSON.stringify(f.configOf('A', base), null, 2));
      writeFileSync(f.b, JSON.stringify(f.configOf('B', base), null, 2));
      const created = await runCli(['pool', 'create', '--config', f.a, '--zeroed']);
      expect(created.code, created.stderr).toBe(0);

      procs = await startMirroredPair(f);
      const started = procs;
      onTestFailed(() => {
        for (const p of started) console.error(p.lines.filter((l) => !l.includes('"level":20')).slice(-60).join('\n'));
      });
      const connect = async (id: 'A' | 'B'): Promise<PagepairClient> => {
        const cl = await PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? f.ports.aClient : f.ports.bClient, token: f.token });
        clients.push(cl);
        return cl;
      };
      const [ca, cb] = [await connect('A'), await connect('B')];
      const statusOf = async (cl: PagepairClient): Promise<ControllerStatus> => (await cl.status()) as ControllerStatus;
      const al = await ca.allocate('online', PAGES * PAGE);

      // Writers and readers: two on each controller, on the same pages.
      const history: HistoryOp[] = [];
      const errors: string[] = [];
      const garbage: string[] = [];
      let next = 1;
      let running = true;
      const actor = async (i: number, cl: PagepairClient): Promise<void> => {
        const rnd = seededInts(c.seed * 100 + i);
        while (running) {
          const p = rnd(PAGES);
          const startMs = performance.now();
          if (rnd(4) === 0) {
            try {
              const b = await cl.read(al.guid, p * PAGE, PAGE);
              const v = valueOf(p, b);
              if (v === 'garbage') garbage.push(`page ${p} read through ${cl.controllerId} holds no write's bytes`);
              else history.push({ id: history.length + 1, process: i, kind: 'read', key: String(p), value: v, startMs, endMs: performance.now(), outcome: 'ok' });
            } catch (err) {
              errors.push(`read of page ${p} through ${cl.controllerId}: ${String(err)}`);
            }
          } else {
            const value = next++;
            try {
              await cl.write(al.guid, p * PAGE, stamp(p, value));
              history.push({ id: history.length + 1, process: i, kind: 'write', key: String(p), value, startMs, endMs: performance.now(), outcome: 'ok' });
            } catch (err) {
              errors.push(`write of page ${p} through ${cl.controllerId}: ${String(err)}`);
              history.push({ id: history.length + 1, process: i, kind: 'write', key: String(p), value, startMs, endMs: null, outcome: 'unknown' });
            }
          }
          await new Promise((r) => setTimeout(r, 4));
        }
      };
      const actors = await Promise.all([connect('A'), connect('A'), connect('B'), connect('B')]);
      const work = Promise.all(actors.map((cl, i) => actor(i, cl)));
      const writesBetween = (fromMs: number, toMs: number): number => history.filter((op) => op.kind === 'write' && op.outcome === 'ok' && op.startMs >= fromMs && op.endMs! <= toMs).length;

      try {
        await new Promise((r) => setTimeout(r, 500));
        // Slot 1's export goes away: both controllers meet the failure (heartbeats and destages write every member).
        await nbd.close();
        for (const cl of [ca, cb]) {
          await waitUntil(async () => (await statusOf(cl)).pool!.members[1]!.state !== 'healthy', 20_000, `controller ${cl.controllerId} to see slot 1 gone`);
        }

        // Rebuilt onto a fresh file by A (the controller of --config), the writers going on.
        const replaceFrom = performance.now();
        const replaced = await runCli(['device', 'replace', '--config', f.a, '--slot', '1', '--with', fresh, '--rate', c.rate, '--update-config', f.a, f.b, '--json'], 120_000);
        const replaceTo = performance.now();
        expect(replaced.code, replaced.stderr).toBe(0);
        expect(replaced.stderr).toMatch(/rebuilding slot 1 onto .*d1-new\.img: 100% \(/);
        const r = JSON.parse(replaced.stdout) as { online: boolean; controller: string; device: string; bytesCopied: number; pool: PoolJson; devices: string[]; updated: string[] };
        expect(r).toMatchObject({ online: true, controller: 'A', device: fresh, updated: [f.a, f.b] });
        expect(r.bytesCopied).toBeGreaterThan(0);
        expect(r.pool.degraded).toBe(false);
        expect(r.pool.members[1]).toMatchObject({ name: fresh, state: 'healthy' });
        const devices = paths.map((p, i) => (i === 1 ? fresh : p));
        expect(r.devices).toEqual(devices);
        for (const file of [f.a, f.b]) expect((JSON.parse(readFileSync(file, 'utf8')) as { store: { pool: { devices: string[] } } }).store.pool.devices).toEqual(devices);
        expect(writesBetween(replaceFrom, replaceTo), 'writes acknowledged while the rebuild ran').toBeGreaterThan(20);
        // The partner's pool object took up the new member too.
        await waitUntil(
          async () => {
            const p = (await statusOf(cb)).pool!;
            return !p.degraded && p.members[1]!.name === fresh && p.members[1]!.state === 'healthy';
          },
          20_000,
          "B's pool to have the new member healthy",
        );
        const jobA = (await statusOf(ca)).poolJob;
        expect(jobA).toMatchObject({ kind: 'replace', slot: 1, device: fresh, state: 'done' });

        // Scrubbed by B (the controller of --config this time), the writers still going.
        const scrubFrom = performance.now();
        const scrubbed = await runCli(['scrub', '--config', f.b, '--json'], 120_000);
        const scrubTo = performance.now();
        expect(scrubbed.code, scrubbed.stdout + scrubbed.stderr).toBe(0);
        const s = JSON.parse(scrubbed.stdout) as { online: boolean; controller: string; pool: { mismatches: number; unreadable: number; bytesChecked: number }; pages: { checksumMismatches: number; unreadablePages: number; pagesChecked: number }; status: PoolJson; problems: string[] };
        expect(s).toMatchObject({ online: true, controller: 'B', problems: [] });
        expect(s.pool).toMatchObject({ mismatches: 0, unreadable: 0 });
        expect(s.pages).toMatchObject({ checksumMismatches: 0, unreadablePages: 0, pagesChecked: PAGES });
        expect(s.status.degraded).toBe(false);
        expect(writesBetween(scrubFrom, scrubTo), 'writes acknowledged while the scrub ran').toBeGreaterThan(5);
        const text = await runCli(['status', '--config', f.b]);
        expect(text.stdout).toMatch(/^pool job +job \d+, scrub: done: 0 mismatches, 0 repaired, 0 unreadable; 32 pages, 0 failing their CRC/m);
      } finally {
        running = false;
        await work;
      }

      // Both copies agree, page by page, and the history with the final contents is linearizable.
      const finals = new Map<string, number>();
      const served: Buffer[] = [];
      for (let p = 0; p < PAGES; p++) {
        const [x, y] = await Promise.all([ca.read(al.guid, p * PAGE, PAGE), cb.read(al.guid, p * PAGE, PAGE)]);
        expect(x.equals(y), `page ${p} through A and B`).toBe(true);
        const v = valueOf(p, x);
        if (v === 'garbage') garbage.push(`final page ${p} holds no write's bytes`);
        finals.set(String(p), v === 'garbage' ? 0 : v);
        served.push(x);
      }
      expect((await ca.verify(al.guid, 0, PAGES)).pages).toEqual([]);
      expect(errors).toEqual([]);
      expect(garbage).toEqual([]);
      expect(history.filter((op) => op.kind === 'write').length).toBeGreaterThan(100);
      const verdict = checkFinal(history, finals);
      expect(verdict.verdict, JSON.stringify(verdict.byKind)).toBe('linearizable');
      await Promise.all([ca.flush(al.guid), cb.flush(al.guid)]);
      await Promise.all(clients.splice(0).map((cl) => cl.close()));
      await Promise.all(procs.map((p) => p.stop()));
      procs = [];

      // Offline: no mismatch, and every page reads back as served with any member gone (any two for parity2).
      const offline = await runCli(['scrub', '--config', f.a, '--json']);
      expect(offline.code, offline.stdout + offline.stderr).toBe(0);
      const o = JSON.parse(offline.stdout) as { online?: boolean; pool: { mismatches: number; unreadable: number }; pages: { checksumMismatches: number }; status: PoolJson };
      expect(o.online).toBeUndefined();
      expect(o.pool).toMatchObject({ mismatches: 0, unreadable: 0 });
      expect(o.pages.checksumMismatches).toBe(0);
      expect(o.status.degraded).toBe(false);
      const filePaths = paths.map((p, i) => (i === 1 ? fresh : p));
      const gones: number[][] = [];
      for (let a = 0; a < c.devices; a++) {
        gones.push([a]);
        if (c.layout === 'parity2') for (let b = a + 1; b < c.devices; b++) gones.push([a, b]);
      }
      for (const gone of gones) {
        const members: PoolMember[] = await Promise.all(filePaths.map(async (p, i) => ({ name: p, device: gone.includes(i) ? new Broken(DEVICE_BYTES) : await FileDevice.open(p) })));
        const pool = await openPool(c.layout, members, { readOnly: true });
        const st = await PageStore.open(pool);
        try {
          const rec = (await st.readTable()).records.find((x) => x.guid === al.guid)!;
          for (let p = 0; p < PAGES; p++) {
            const sp = await st.readPage({ guid: rec.guid, dataOffset: rec.dataOffset, pageSizeBytes: rec.pageSizeBytes }, p);
            expect(sp.data.equals(served[p]!), `page ${p} without member(s) ${gone.join(', ')}`).toBe(true);
          }
        } finally {
          await st.close();
        }
      }
    }, 180_000);
  }
});

describe('pool job requests against a serving controller', () => {
  it('mistakes get typed errors and the controller serves on; a second job is BUSY; a rebuild cut short by a stop is never trusted, and the partner runs the next one', async () => {
    files = await makePairFiles();
    const f = files;
    const paths = [0, 1].map((i) => join(f.dir, 'pool', `d${i}.img`));
    const store = { pool: { layout: 'mirror', devices: paths, deviceBytes: DEVICE_BYTES }, tableEntriesMax: 64 };
    const base = { store, partnerTimeoutMs: 1500, heartbeatIntervalMs: 100, limits: { deviceNameBytesMax: 64 } };
    writeFileSync(f.a, JSON.stringify(f.configOf('A', base), null, 2));
    writeFileSync(f.b, JSON.stringify(f.configOf('B', base), null, 2));
    const created = await runCli(['pool', 'create', '--config', f.a]);
    expect(created.code, created.stderr).toBe(0);
    procs = await startMirroredPair(f);
    const connect = async (id: 'A' | 'B'): Promise<PagepairClient> => {
      const cl = await PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? f.ports.aClient : f.ports.bClient, token: f.token });
      clients.push(cl);
      return cl;
    };
    const ca = await connect('A');
    const al = await ca.allocate('kept', 8 * PAGE);
    await ca.write(al.guid, 0, stamp(0, 1));
    const refused = async (p: Promise<unknown>, code: string, text: RegExp): Promise<void> => {
      const err = await p.then(
        () => null,
        (e: unknown) => e as Error & { code?: string },
      );
      expect(err, 'refused').not.toBeNull();
      expect(err!.code, err!.message).toBe(code);
      expect(err!.message).toMatch(text);
      // The controller serves on, on the same connection.
      expect(valueOf(0, await ca.read(al.guid, 0, PAGE))).toBe(1);
    };
    onTestFailed(() => {
      for (const p of procs) console.error(p.lines.slice(-40).join('\n'));
    });
    await refused(ca.poolJob({ kind: 'replace', slot: 5, device: join(f.dir, 'x.img') }), 'BAD_FIELD', /slot must be one of 0\.\.1/);
    await refused(ca.poolJob({ kind: 'replace', slot: 1, device: 'pool/rel.img' }), 'BAD_FIELD', /relative path/);
    await refused(ca.poolJob({ kind: 'replace', slot: 1, device: paths[0]! }), 'BAD_FIELD', /slot 0: a device fills one slot/);
    await refused(ca.poolJob({ kind: 'replace', slot: 1, device: `nbd+unix:///x?socket=${join(f.dir, 'none.sock')}` }), 'IO_ERROR', /cannot be opened/);
    await refused(ca.poolJob({ kind: 'replace', slot: 1, device: `/${'n'.repeat(100)}` }), 'LIMIT_EXCEEDED', /device.*over deviceNameBytesMax 64/);

    // A slow rebuild of healthy slot 1 onto a new file, through the CLI; Ctrl-C stops following it, not the job.
    const fresh = join(f.dir, 'pool', 'd1-new.img');
    const cli = spawn(process.execPath, [BIN, 'device', 'replace', '--config', f.a, '--slot', '1', '--with', fresh, '--rate', '2MiB/s'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    cli.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => cli.on('exit', (code) => resolve(code)));
    try {
      await waitUntil(() => /rebuilding slot 1 onto .*d1-new\.img: \d+%/.test(stderr), 20_000, 'the CLI to show the rebuild going');
      cli.kill('SIGINT');
      expect(await exited).toBe(1);
    } finally {
      cli.kill('SIGKILL');
    }
    const following = /stopped following: the pool job (\d+) goes on in controller A; `pagepair status --config [^`]*` shows its progress and its result/.exec(stderr);
    expect(following, stderr).not.toBeNull();
    const id = Number(following![1]);
    const job = ((await ca.status()) as ControllerStatus).poolJob!;
    expect(job).toMatchObject({ id, kind: 'replace', slot: 1, device: fresh, state: 'running' });
    // One job at a time.
    await refused(ca.poolJob({ kind: 'scrub' }), 'BUSY', new RegExp(`job ${id}, replace of slot 1`));
    const text = await runCli(['status', '--config', f.a]);
    expect(text.stdout).toMatch(new RegExp(`^pool job +job ${id}, replace of slot 1 onto .*d1-new\\.img: running, copied \\d+%`, 'm'));

    // A stops in the middle: its job is aborted, and B never takes the unfinished device as whole.
    await Promise.all(clients.splice(0).map((cl) => cl.close()));
    await procs[0]!.stop();
    const end = procs[0]!.records().find((r) => r.msg === 'pool job ended') as { state: string; error: { code: string; message: string } } | undefined;
    expect(end).toMatchObject({ state: 'failed', error: { code: 'SHUTTING_DOWN' } });
    expect(end!.error.message).toMatch(/stays labelled unfinished/);
    const cb = await connect('B');
    await waitUntil(async () => ((await cb.status()) as ControllerStatus).role === 'alone', 20_000, 'B to serve alone');
    expect(valueOf(0, await cb.read(al.guid, 0, PAGE))).toBe(1);
    await waitUntil(async () => ((await cb.status()) as ControllerStatus).pool!.members[1]!.state !== 'rebuilding', 20_000, "B to stop writing the unfinished device");
    const seen = ((await cb.status()) as ControllerStatus).pool!;
    expect(seen.members[1]!.name === fresh && seen.members[1]!.state === 'healthy', JSON.stringify(seen.members)).toBe(false);

    // --config's controller is gone: the command sends the replace to its partner, onto the same device
    // (what the aborted job's message says to do: it is rebuilt from the start).
    const again = await runCli(['device', 'replace', '--config', f.a, '--slot', '1', '--with', fresh, '--update-config', f.a, f.b, '--json'], 120_000);
    expect(again.code, again.stderr).toBe(0);
    const r = JSON.parse(again.stdout) as { online: boolean; controller: string; pool: PoolJson };
    expect(r).toMatchObject({ online: true, controller: 'B' });
    expect(r.pool.degraded).toBe(false);
    expect(r.pool.members[1]).toMatchObject({ name: fresh, state: 'healthy' });
    expect(valueOf(0, await cb.read(al.guid, 0, PAGE))).toBe(1);
  }, 120_000);
});
