// A pair whose store is a mirror pool of two nbdkit memory exports (issue 14:
// a pool's devices may be remote NBD exports): made with `pagepair pool
// create` (a controller never creates a pool of remote devices only), then
// served by a real pair; one nbdkit killed under it, the pair goes on
// serving every byte through both controllers and says the pool is
// degraded; restarted with that nbdkit still gone, the pair opens the pool
// degraded and reads every byte back from the export left.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { makePairFiles, runCli, startMirroredPair, stopPair, type PairFiles, type Proc } from '../integration/helpers.js';
import { describeWithTools, itWithTools } from '../tools.js';
import { useNbdkitExports } from './nbdkit-exports.js';

const MiB = 1024 * 1024;

function pattern(seed: number, bytes: number): Buffer {
  const buf = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) buf[i] = (seed * 29 + i * 13) & 0xff;
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
  layout: string;
  degraded: boolean;
  members: { state: string }[];
}

describeWithTools(['nbdkit'], 'a pair over a mirror pool of two nbdkit memory exports', () => {
  itWithTools(['nbdkit'], 'is made by pool create, serves through both controllers, and keeps serving when one nbdkit is killed', async () => {
    files = await makePairFiles();
    const f = files;
    const sockets = [join(f.dir, 'n0.sock'), join(f.dir, 'n1.sock')];
    const nbdkits = await Promise.all(sockets.map((s) => nbdkit.memory(s, 48 * MiB)));
    const store = { pool: { layout: 'mirror', devices: sockets.map((s) => `nbd+unix:///?socket=${s}`) }, tableEntriesMax: 64 };
    writeFileSync(f.a, JSON.stringify(f.configOf('A', { store })));
    writeFileSync(f.b, JSON.stringify(f.configOf('B', { store })));

    const created = await runCli(['pool', 'create', '--config', f.a, '--zeroed']);
    expect(created.code, created.stderr).toBe(0);
    expect(created.stdout).toMatch(/^pool +mirror/m);

    procs = await startMirroredPair(f);
    const connect = (id: 'A' | 'B') => PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? f.ports.aClient : f.ports.bClient, token: f.token });
    const ca = await connect('A');
    const cb = await connect('B');
    let guid = '';
    const before = pattern(1, 256 * 1024);
    const after = pattern(2, 256 * 1024);
    try {
      const x = await ca.allocate('remote', 4 * MiB);
      guid = x.guid;
      await ca.write(x.guid, 0, before);
      await ca.flush(x.guid);

      nbdkits[1]!.kill('SIGKILL');
      await new Promise((r) => (nbdkits[1]!.exitCode !== null || nbdkits[1]!.signalCode !== null ? r(null) : nbdkits[1]!.once("exit", r)));

      // Writes through both go on, and reach the store (flush) over the member left.
      await cb.write(x.guid, MiB, after);
      await cb.flush(x.guid);
      await ca.write(x.guid, 2 * MiB, after);
      await ca.flush(x.guid);
      for (const c of [ca, cb]) {
        expect((await c.read(x.guid, 0, before.length)).equals(before)).toBe(true);
        expect((await c.read(x.guid, MiB, after.length)).equals(after)).toBe(true);
        expect((await c.read(x.guid, 2 * MiB, after.length)).equals(after)).toBe(true);
      }
      for (const cfg of [f.a, f.b]) {
        const st = await runCli(['status', '--config', cfg, '--json']);
        expect(st.code, st.stderr).toBe(0);
        const pool = (JSON.parse(st.stdout) as { pool: PoolJson }).pool;
        expect(pool).toMatchObject({ layout: 'mirror', degraded: true });
        expect(pool.members.map((m) => m.state)).toEqual(['healthy', 'failed']);
      }
    } finally {
      await Promise.all([ca.close(), cb.close()]);
    }
    await Promise.all(procs.map((p) => p.stop()));

    const offline = await runCli(['pool', 'status', '--config', f.a]);
    expect(offline.code).toBe(1);
    expect(offline.stdout).toMatch(/^degraded +yes/m);
    expect(offline.stdout).toMatch(/^ {2}slot 1 +failed/m);

    procs = await startMirroredPair(f);
    const ra = await connect('A');
    const rb = await connect('B');
    try {
      for (const c of [rb, ra]) {
        expect((await c.read(guid, 0, before.length)).equals(before)).toBe(true);
        expect((await c.read(guid, MiB, after.length)).equals(after)).toBe(true);
        expect((await c.read(guid, 2 * MiB, after.length)).equals(after)).toBe(true);
      }
    } finally {
      await Promise.all([ra.close(), rb.close()]);
    }
  }, 30_000);
});
