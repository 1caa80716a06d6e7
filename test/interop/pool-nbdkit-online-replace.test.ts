// A pair over a pool of nbdkit memory exports (a mirror of two, a parity
// pool of three) loses one nbdkit while it serves, and `pagepair device
// replace` rebuilds that slot onto a new nbdkit export while the pair goes
// on serving writers on both controllers (controller A runs the rebuild),
// rewriting both configurations; `pagepair scrub` (run by B) finds the pool
// clean, the writers still going. The history of every page with the final
// contents is linearizable. Then, the pair stopped and another original
// export killed, the restarted pair reads every page back through both
// controllers from what the rebuild wrote (skipped, with the standard
// notice, without nbdkit).

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { checkFinal, type HistoryOp } from '../../src/checker/index.js';
import type { ControllerStatus } from '../../src/runtime/controller-process.js';
import { makePairFiles, runCli, seededInts, startMirroredPair, stopPair, waitUntil, type PairFiles, type Proc } from '../integration/helpers.js';
import { describeWithTools, itWithTools } from '../tools.js';
import { killed, useNbdkitExports } from './nbdkit-exports.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
const PAGES = 24;

let files: PairFiles | undefined;
let procs: Proc[] = [];
const clients: PagepairClient[] = [];
const nbdkit = useNbdkitExports();

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
  await stopPair(procs, undefined);
  files?.cleanup();
}, 30_000);

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

describeWithTools(['nbdkit'], 'device replace onto a new nbdkit export while the pair serves', () => {
  for (const [layout, n] of [
    ['mirror', 2],
    ['parity', 3],
  ] as const) {
    itWithTools(['nbdkit'], `a ${layout} pool of ${n} nbdkit exports loses one under writers on both controllers; A rebuilds it onto a new export and B scrubs while they go on; the restarted pair, another export killed, reads everything back`, async () => {
      files = await makePairFiles();
      const f = files;
      const uri = (s: string): string => `nbd+unix:///?socket=${s}`;
      const sockets = Array.from({ length: n }, (_, i) => join(f.dir, `n${i}.sock`));
      const nbdkits = await Promise.all(sockets.map((s) => nbdkit.memory(s, 24 * MiB)));
      const store = { pool: { layout, ...(layout === 'mirror' ? {} : { chunkBytes: 16384 }), devices: sockets.map(uri) }, tableEntriesMax: 64 };
      const base = { store, partnerTimeoutMs: 1500, cache: { dirtyAgeMaxMs: 50 } };
      writeFileSync(f.a, JSON.stringify(f.configOf('A', base), null, 2));
      writeFileSync(f.b, JSON.stringify(f.configOf('B', base), null, 2));
      const created = await runCli(['pool', 'create', '--config', f.a, '--zeroed']);
      expect(created.code, created.stderr).toBe(0);

      procs = await startMirroredPair(f);
      const connect = async (id: 'A' | 'B'): Promise<PagepairClient> => {
        const cl = await PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? f.ports.aClient : f.ports.bClient, token: f.token });
        clients.push(cl);
        return cl;
      };
      const [ca, cb] = [await connect('A'), await connect('B')];
      const al = await ca.allocate('online', PAGES * PAGE);
      const history: HistoryOp[] = [];
      const errors: string[] = [];
      let next = 1;
      let running = true;
      const writer = async (i: number, cl: PagepairClient): Promise<void> => {
        const rnd = seededInts(7 + i);
        while (running) {
          const p = rnd(PAGES);
          const value = next++;
          const startMs = performance.now();
          try {
            await cl.write(al.guid, p * PAGE, stamp(p, value));
            history.push({ id: history.length + 1, process: i, kind: 'write', key: String(p), value, startMs, endMs: performance.now(), outcome: 'ok' });
          } catch (err) {
            errors.push(`write of page ${p} through ${cl.controllerId}: ${String(err)}`);
            history.push({ id: history.length + 1, process: i, kind: 'write', key: String(p), value, startMs, endMs: null, outcome: 'unknown' });
          }
          await new Promise((r) => setTimeout(r, 5));
        }
      };
      const writers = await Promise.all([connect('A'), connect('B')]);
      const work = Promise.all(writers.map((cl, i) => writer(i, cl)));
      const spare = join(f.dir, 'spare.sock');
      try {
        await new Promise((r) => setTimeout(r, 300));
        await killed(nbdkits[1]!);
        for (const cl of [ca, cb]) {
          await waitUntil(async () => ((await cl.status()) as ControllerStatus).pool!.members[1]!.state !== 'healthy', 20_000, `controller ${cl.controllerId} to see slot 1 gone`);
        }
        await nbdkit.memory(spare, 24 * MiB);
        const replaced = await runCli(['device', 'replace', '--config', f.a, '--slot', '1', '--with', uri(spare), '--rate', '16MiB/s', '--update-config', f.a, f.b, '--json'], 120_000);
        expect(replaced.code, replaced.stderr).toBe(0);
        const r = JSON.parse(replaced.stdout) as { online: boolean; controller: string; pool: { degraded: boolean }; devices: string[] };
        expect(r).toMatchObject({ online: true, controller: 'A' });
        expect(r.pool.degraded).toBe(false);
        expect(r.devices).toEqual(sockets.map((s, i) => uri(i === 1 ? spare : s)));
        for (const file of [f.a, f.b]) expect((JSON.parse(readFileSync(file, 'utf8')) as { store: { pool: { devices: string[] } } }).store.pool.devices).toEqual(r.devices);
        await waitUntil(async () => !((await cb.status()) as ControllerStatus).pool!.degraded, 20_000, "B's pool to be whole again");

        const scrub = await runCli(['scrub', '--config', f.b, '--json'], 120_000);
        expect(scrub.code, scrub.stdout + scrub.stderr).toBe(0);
        const s = JSON.parse(scrub.stdout) as { online: boolean; controller: string; pool: { mismatches: number; unreadable: number }; pages: { checksumMismatches: number } };
        expect(s).toMatchObject({ online: true, controller: 'B', pool: { mismatches: 0, unreadable: 0 }, pages: { checksumMismatches: 0 } });
      } finally {
        running = false;
        await work;
      }
      const finals = new Map<string, number>();
      const served: Buffer[] = [];
      for (let p = 0; p < PAGES; p++) {
        const b = await cb.read(al.guid, p * PAGE, PAGE);
        const v = valueOf(p, b);
        expect(v, `page ${p}`).not.toBe('garbage');
        finals.set(String(p), v as number);
        served.push(b);
      }
      expect(errors).toEqual([]);
      const verdict = checkFinal(history, finals);
      expect(verdict.verdict, JSON.stringify(verdict.byKind)).toBe('linearizable');
      await Promise.all([ca.flush(al.guid), cb.flush(al.guid)]);
      await Promise.all(clients.splice(0).map((cl) => cl.close()));
      await Promise.all(procs.map((p) => p.stop()));
      procs = [];

      // Another original export killed: what is read now comes from (or is rebuilt with) what the rebuild wrote.
      await killed(nbdkits[0]!);
      procs = await startMirroredPair(f);
      const [ra, rb] = [await connect('A'), await connect('B')];
      for (const cl of [ra, rb]) for (let p = 0; p < PAGES; p++) expect((await cl.read(al.guid, p * PAGE, PAGE)).equals(served[p]!), `page ${p} through ${cl.controllerId}`).toBe(true);
    }, 120_000);
  }
});
