// A pair over a pool of nbdkit memory exports loses one nbdkit (a mirror of
// two and a parity pool of three while it serves; a parity pool of three
// while it is stopped, so the pool opens with it gone); while it serves, a
// replace onto an export that is not there is refused by the controller; with
// the pair stopped, `pagepair device replace` rebuilds that slot onto a new
// nbdkit export and rewrites both configurations, `pagepair scrub` finds
// the pool clean, and the restarted pair, with another original export
// killed too, reads every byte back through both controllers from what the
// rebuild wrote (issue 14: "a pool whose devices are nbdkit exports keeps
// serving when one nbdkit is killed, and rebuilds onto a new one").

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { makePairFiles, runCli, startMirroredPair, stopPair, type PairFiles, type Proc } from '../integration/helpers.js';
import { describeWithTools, itWithTools } from '../tools.js';
import { killed, useNbdkitExports } from './nbdkit-exports.js';

const MiB = 1024 * 1024;

function pattern(seed: number, bytes: number): Buffer {
  const buf = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) buf[i] = (seed * 41 + i * 7) & 0xff;
  return buf;
}

let files: PairFiles | undefined;
let procs: Proc[] = [];
const nbdkit = useNbdkitExports();

afterEach(async () => {
  await stopPair(procs, undefined);
  files?.cleanup();
}, 30_000);

interface PoolJson {
  degraded: boolean;
  members: { name: string; state: string }[];
}

describeWithTools(['nbdkit'], 'device replace onto a new nbdkit export, the pair stopped', () => {
  for (const [layout, n, killWhile] of [
    ['mirror', 2, 'serving'],
    ['parity', 3, 'serving'],
    ['parity', 3, 'stopped'],
  ] as const) {
    itWithTools(['nbdkit'], `a ${layout} pool of ${n} nbdkit exports loses one (the pair ${killWhile}); replace and scrub with the pair stopped; the restarted pair reads everything back from the rebuilt export`, async () => {
      files = await makePairFiles();
      const f = files;
      const uri = (s: string): string => `nbd+unix:///?socket=${s}`;
      const sockets = Array.from({ length: n }, (_, i) => join(f.dir, `n${i}.sock`));
      const nbdkits = await Promise.all(sockets.map((s) => nbdkit.memory(s, 48 * MiB)));
      const store = { pool: { layout, ...(layout === 'mirror' ? {} : { chunkBytes: 16384 }), devices: sockets.map(uri) }, tableEntriesMax: 64 };
      writeFileSync(f.a, JSON.stringify(f.configOf('A', { store }), null, 2));
      writeFileSync(f.b, JSON.stringify(f.configOf('B', { store }), null, 2));
      const created = await runCli(['pool', 'create', '--config', f.a, '--zeroed']);
      expect(created.code, created.stderr).toBe(0);

      procs = await startMirroredPair(f);
      const connect = (id: 'A' | 'B') => PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? f.ports.aClient : f.ports.bClient, token: f.token });
      const written: { guid: string; offset: number; data: Buffer }[] = [];
      const ca = await connect('A');
      const cb = await connect('B');
      try {
        const x = await ca.allocate('through-a', 4 * MiB);
        const y = await cb.allocate('through-b', 4 * MiB);
        for (let i = 0; i < 4; i++) {
          const w = [
            { guid: x.guid, offset: i * 700_000 + 3, data: pattern(i, 40_000 + i) },
            { guid: y.guid, offset: i * 650_000 + 11, data: pattern(50 + i, 30_000 + i) },
          ];
          await Promise.all([ca.write(w[0]!.guid, w[0]!.offset, w[0]!.data), cb.write(w[1]!.guid, w[1]!.offset, w[1]!.data)]);
          written.push(...w);
        }
        await Promise.all([ca.flush(x.guid), cb.flush(y.guid)]);

        if (killWhile === 'serving') await killed(nbdkits[1]!);
        // Writes after the loss go on and reach the store over the members left.
        const late = [
          { guid: x.guid, offset: 3 * MiB + 5, data: pattern(90, 25_000) },
          { guid: y.guid, offset: 2 * MiB + 9, data: pattern(91, 25_000) },
        ];
        await ca.write(late[0]!.guid, late[0]!.offset, late[0]!.data);
        await cb.write(late[1]!.guid, late[1]!.offset, late[1]!.data);
        await Promise.all([ca.flush(x.guid), cb.flush(y.guid)]);
        written.push(...late);
        for (const w of written) expect((await cb.read(w.guid, w.offset, w.data.length)).equals(w.data)).toBe(true);
      } finally {
        await Promise.all([ca.close(), cb.close()]);
      }

      // While the pair serves, the controller runs the job itself: a replace onto an export that is not there is refused by it, naming the device, and the pair serves on.
      const never = uri(join(f.dir, 'never.sock'));
      const refused = await runCli(['device', 'replace', '--config', f.a, '--slot', '1', '--with', never]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/IO_ERROR: controller A refused the replace: device nbd\+unix:\/\/\/\?socket=.*never\.sock cannot be opened/);
      const after = await connect('B');
      try {
        for (const w of written) expect((await after.read(w.guid, w.offset, w.data.length)).equals(w.data)).toBe(true);
      } finally {
        await after.close();
      }

      await Promise.all(procs.map((p) => p.stop()));
      procs = [];
      if (killWhile === 'stopped') await killed(nbdkits[1]!);

      const spareSocket = join(f.dir, 'spare.sock');
      await nbdkit.memory(spareSocket, 48 * MiB);
      const replaced = await runCli(['device', 'replace', '--config', f.a, '--slot', '1', '--with', uri(spareSocket), '--update-config', f.a, f.b, '--json']);
      expect(replaced.code, replaced.stderr).toBe(0);
      const r = JSON.parse(replaced.stdout) as { pool: PoolJson; devices: string[]; updated: string[] };
      expect(r.pool.degraded).toBe(false);
      expect(r.devices).toEqual(sockets.map((s, i) => uri(i === 1 ? spareSocket : s)));
      for (const file of [f.a, f.b]) expect((JSON.parse(readFileSync(file, 'utf8')) as { store: { pool: { devices: string[] } } }).store.pool.devices).toEqual(r.devices);

      const scrub = await runCli(['scrub', '--config', f.b, '--json']);
      expect(scrub.code, scrub.stdout + scrub.stderr).toBe(0);
      const s = JSON.parse(scrub.stdout) as { pool: { mismatches: number; unreadable: number }; pages: { checksumMismatches: number; pagesChecked: number }; status: PoolJson };
      expect(s.pool).toMatchObject({ mismatches: 0, unreadable: 0 });
      expect(s.pages.checksumMismatches).toBe(0);
      expect(s.pages.pagesChecked).toBeGreaterThan(0);
      expect(s.status.degraded).toBe(false);

      // Another original export killed: what is read now comes from (or is rebuilt with) what the rebuild wrote.
      await killed(nbdkits[0]!);

      procs = await startMirroredPair(f);
      const ra = await connect('A');
      const rb = await connect('B');
      try {
        for (const c of [ra, rb]) for (const w of written) expect((await c.read(w.guid, w.offset, w.data.length)).equals(w.data)).toBe(true);
        const st = await runCli(['status', '--config', f.a, '--json']);
        expect(st.code, st.stderr).toBe(0);
        const pool = (JSON.parse(st.stdout) as { pool: PoolJson }).pool;
        expect(pool.members.map((m) => m.state)).toEqual(['failed', ...Array<string>(n - 1).fill('healthy')]);
      } finally {
        await Promise.all([ra.close(), rb.close()]);
      }
    }, 60_000);
  }
});
