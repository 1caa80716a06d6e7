// A real pair over a pool (store.pool): a mirror of 2 file devices and a
// parity pool of 3. The first controller to start creates the pool and
// formats the store; writes go through both controllers; after a stop the
// pool's labels say healthy (pagepair pool status), and a restarted pair
// reads every byte back through either controller.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { makePairFiles, runCli, startMirroredPair, stopPair, type PairFiles, type Proc } from './helpers.js';

const MiB = 1024 * 1024;

function pattern(seed: number, bytes: number): Buffer {
  const buf = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) buf[i] = (seed * 37 + i * 11) & 0xff;
  return buf;
}

let files: PairFiles | undefined;
let procs: Proc[] = [];

afterEach(() => stopPair(procs, files), 30_000);

interface PoolJson {
  layout: string;
  generation: number;
  degraded: boolean;
  members: { slot: number; name: string; state: string }[];
}

for (const [layout, devices] of [
  ['mirror', 2],
  ['parity', 3],
] as const) {
  describe(`a pair over a ${layout} pool of ${devices} file devices`, () => {
    it('creates it at first start, serves writes through both controllers, shows it healthy offline, and reads everything back after a restart', async () => {
      files = await makePairFiles();
      const f = files;
      const paths = Array.from({ length: devices }, (_, i) => join(f.dir, 'pool', `d${i}.img`));
      const store = { pool: { layout, devices: paths, deviceBytes: 48 * MiB, ...(layout === 'mirror' ? {} : { chunkBytes: 16384 }) }, tableEntriesMax: 64 };
      writeFileSync(f.a, JSON.stringify(f.configOf('A', { store })));
      writeFileSync(f.b, JSON.stringify(f.configOf('B', { store })));
      const connect = (id: 'A' | 'B') => PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? f.ports.aClient : f.ports.bClient, token: f.token });

      procs = await startMirroredPair(f);
      const created = procs.flatMap((p) => p.records()).filter((r) => r.msg === 'creating pool');
      expect(created.length).toBe(1);
      const ca = await connect('A');
      const cb = await connect('B');
      const written: { guid: string; offset: number; data: Buffer }[] = [];
      try {
        const x = await ca.allocate('through-a', 2 * MiB);
        const y = await cb.allocate('through-b', 2 * MiB);
        for (let i = 0; i < 6; i++) {
          const w1 = { guid: x.guid, offset: i * 300_000 + 17, data: pattern(i, 20_000 + i) };
          const w2 = { guid: y.guid, offset: i * 290_000 + 5, data: pattern(100 + i, 9_000 + i) };
          await Promise.all([ca.write(w1.guid, w1.offset, w1.data), cb.write(w2.guid, w2.offset, w2.data)]);
          written.push(w1, w2);
        }
        await Promise.all([ca.flush(x.guid), cb.flush(y.guid)]);
        for (const w of written) {
          expect((await ca.read(w.guid, w.offset, w.data.length)).equals(w.data)).toBe(true);
          expect((await cb.read(w.guid, w.offset, w.data.length)).equals(w.data)).toBe(true);
        }
        // The running controller's status carries the pool.
        const st = await runCli(['status', '--config', f.a, '--json']);
        expect(st.code, st.stderr).toBe(0);
        const live = (JSON.parse(st.stdout) as { pool: PoolJson | null }).pool;
        expect(live).toMatchObject({ layout, generation: 1, degraded: false });
        expect(live!.members.map((m) => m.state)).toEqual(Array(devices).fill('healthy'));
        const text = await runCli(['status', '--config', f.b]);
        expect(text.stdout).toMatch(new RegExp(`^pool +${layout}`, 'm'));
        expect(text.stdout).toMatch(/^degraded +no/m);
      } finally {
        await Promise.all([ca.close(), cb.close()]);
      }
      await Promise.all(procs.map((p) => p.stop()));

      const offline = await runCli(['pool', 'status', '--config', f.a, '--json']);
      expect(offline.code, offline.stderr).toBe(0);
      const o = JSON.parse(offline.stdout) as { pool: PoolJson; store: string };
      expect(o.pool).toMatchObject({ layout, generation: 1, degraded: false });
      expect(o.pool.members.map((m) => [m.name, m.state])).toEqual(paths.map((p) => [p, 'healthy']));
      expect(o.store).toMatch(/^formatted for pair /);

      procs = await startMirroredPair(f);
      expect(procs.flatMap((p) => p.records()).filter((r) => r.msg === 'creating pool').length).toBe(0);
      const ra = await connect('A');
      const rb = await connect('B');
      try {
        for (const w of written) {
          expect((await rb.read(w.guid, w.offset, w.data.length)).equals(w.data)).toBe(true);
          expect((await ra.read(w.guid, w.offset, w.data.length)).equals(w.data)).toBe(true);
        }
      } finally {
        await Promise.all([ra.close(), rb.close()]);
      }
    }, 30_000);
  });
}
