// The write hole with real processes: a pair over a parity (or parity2)
// pool of files, two writers (one client on each controller) on the same
// pages, and one controller that kills itself with SIGKILL as it is about
// to make its k-th write into the members' data area (the test hook
// testKillAfterDataWrites), for k = 0, 1, 2, 3: so a row's writes reach
// some members and not the others. The survivor takes over, repairs the
// rows the dead one was writing, and serves on. Checked: the history of
// every page (both writers' writes, acknowledged or not, and the final
// contents read through the survivor) is linearizable, and after the
// survivor stops, a scrub of the pool finds no mismatch and every page
// reads the same with any one member gone.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { PairClient } from '../../src/client/pair-client.js';
import { checkFinal, type HistoryOp } from '../../src/checker/index.js';
import { FileDevice } from '../../src/store/file-device.js';
import { PageStore } from '../../src/store/page-store.js';
import { ParityDevice } from '../../src/store/parity-device.js';
import type { PoolMember } from '../../src/store/pool.js';
import { Broken } from '../sim/pool-workload.js';
import { makePairFiles, runCli, startProcess, stopPair, waitUntil, type PairFiles, type Proc } from './helpers.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
const PAGES = 24;

let files: PairFiles | undefined;
let procs: Proc[] = [];

afterEach(() => stopPair(procs, files), 30_000);

/** Page p's bytes for a value: the value and the page, over and over. */
function stamp(p: number, value: number): Buffer {
  const b = Buffer.alloc(PAGE);
  for (let i = 0; i < PAGE; i += 8) {
    b.writeUInt32LE(value, i);
    b.writeUInt32LE(p, i + 4);
  }
  return b;
}

function valueOf(p: number, b: Buffer): number | 'zero' | 'garbage' {
  if (b.every((x) => x === 0)) return 'zero';
  const v = b.readUInt32LE(0);
  return b.equals(stamp(p, v)) ? v : 'garbage';
}

const cases: { layout: 'parity' | 'parity2'; devices: number; step: number; victim: 'A' | 'B' }[] = [
  { layout: 'parity', devices: 3, step: 0, victim: 'A' },
  { layout: 'parity', devices: 3, step: 1, victim: 'B' },
  { layout: 'parity', devices: 4, step: 2, victim: 'A' },
  { layout: 'parity2', devices: 4, step: 1, victim: 'A' },
  { layout: 'parity2', devices: 5, step: 3, victim: 'B' },
];

describe('a real controller killed in the middle of a row write', () => {
  for (const c of cases) {
    it(`${c.layout} over ${c.devices}: ${c.victim} dies before its data-area write ${c.step + 1}; nothing acknowledged is lost and the pool agrees with itself`, async () => {
      files = await makePairFiles();
      const f = files;
      const paths = Array.from({ length: c.devices }, (_, i) => join(f.dir, 'pool', `d${i}.img`));
      const store = { pool: { layout: c.layout, devices: paths, deviceBytes: 16 * MiB, chunkBytes: 16384 }, tableEntriesMax: 64 };
      const base = { store, partnerTimeoutMs: 1500, heartbeatIntervalMs: 100, cache: { dirtyAgeMaxMs: 50 } };
      const victimHooks = { testHooks: true, testKillAfterDataWrites: c.step };
      writeFileSync(f.a, JSON.stringify(f.configOf('A', { ...base, ...(c.victim === 'A' ? victimHooks : {}) })));
      writeFileSync(f.b, JSON.stringify(f.configOf('B', { ...base, ...(c.victim === 'B' ? victimHooks : {}) })));
      // Created before the pair starts, so both controllers open it (the gate sits under the opened pool).
      const created = await runCli(['pool', 'create', '--config', f.a, '--device-bytes', '16MiB']);
      expect(created.code, created.stderr).toBe(0);

      procs = [startProcess(['start', '--config', f.a]), startProcess(['start', '--config', f.b])];
      const victim = procs[c.victim === 'A' ? 0 : 1]!;
      const survivor = procs[c.victim === 'A' ? 1 : 0]!;
      // The victim may die before the pair is mirrored (k = 0 and a join's own writes): wait for the survivor to serve.
      await survivor.waitForLog((r) => r.msg === 'mirrored with partner' || (typeof r.msg === 'string' && r.msg.startsWith('took over')), 20_000);

      const addr = (id: 'A' | 'B') => ({ id, host: '127.0.0.1', port: id === 'A' ? f.ports.aClient : f.ports.bClient, token: f.token });
      const pairOpts = { timeoutMs: 3000, retryForMs: 30_000 };
      const admin = await PairClient.connect({ controllers: [addr(c.victim === 'A' ? 'B' : 'A')], ...pairOpts });
      const al = await admin.allocate('row-kill', PAGES * PAGE);
      // Each writer starts on its own controller and moves to the other when it is gone.
      const writers = await Promise.all([0, 1].map((i) => PairClient.connect({ controllers: i === 0 ? [addr('A'), addr('B')] : [addr('B'), addr('A')], ...pairOpts })));
      const history: HistoryOp[] = [];
      let next = 1;
      const writer = async (i: number): Promise<void> => {
        const cl = writers[i]!;
        for (let round = 0; round < 40; round++) {
          const p = (round * 5 + i * 3) % PAGES;
          const value = next++;
          const startMs = performance.now();
          let ok = true;
          try {
            await cl.write(al.guid, p * PAGE, stamp(p, value));
          } catch {
            ok = false;
          }
          history.push({ id: history.length + 1, process: i, kind: 'write', key: String(p), value, startMs, endMs: ok ? performance.now() : null, outcome: ok ? 'ok' : 'unknown' });
          if (round % 8 === 7) await cl.flush(al.guid).catch(() => undefined);
        }
      };
      await Promise.all([writer(0), writer(1)]);
      // The victim died somewhere in there.
      await waitUntil(() => victim.child.exitCode !== null || victim.child.signalCode !== null, 30_000, 'the victim to die');
      expect(victim.child.signalCode).toBe('SIGKILL');
      await survivor.waitForLog((r) => typeof r.msg === 'string' && r.msg.includes('the pool agrees again'), 20_000);

      // The final contents, read through the survivor, close the history.
      const direct = await PagepairClient.connect({ ...addr(c.victim === 'A' ? 'B' : 'A') });
      const served: Buffer[] = [];
      const finals = new Map<string, number>();
      const problems: string[] = [];
      try {
        for (let p = 0; p < PAGES; p++) {
          const b = await direct.read(al.guid, p * PAGE, PAGE);
          served.push(b);
          const v = valueOf(p, b);
          if (v === 'garbage') problems.push(`page ${p} holds no write's bytes`);
          finals.set(String(p), v === 'zero' || v === 'garbage' ? 0 : v);
        }
        await direct.flush(al.guid);
      } finally {
        await direct.close();
        await Promise.all([admin.close(), ...writers.map((w) => w.close())]);
      }
      const verdict = checkFinal(history, finals);
      expect(verdict.verdict, JSON.stringify(verdict.byKind)).toBe('linearizable');
      expect(problems).toEqual([]);
      await survivor.stop();

      // Offline: no row disagrees, and any one member gone still reads every page as served.
      const members = async (gone: number | null): Promise<PoolMember[]> =>
        Promise.all(paths.map(async (p, i) => ({ name: p, device: i === gone ? new Broken(16 * MiB) : await FileDevice.open(p) })));
      const pool = await ParityDevice.open(await members(null));
      const report = await pool.scrub({ repair: false });
      await pool.close();
      expect(report.mismatches, JSON.stringify(report)).toBe(0);
      for (let gone = 0; gone < c.devices; gone++) {
        const degraded = await ParityDevice.open(await members(gone));
        const st = await PageStore.open(degraded);
        const rec = (await st.readTable()).records.find((r) => r.guid === al.guid)!;
        for (let p = 0; p < PAGES; p++) {
          const sp = await st.readPage({ guid: rec.guid, dataOffset: rec.dataOffset, pageSizeBytes: rec.pageSizeBytes }, p);
          expect(sp.data.equals(served[p]!), `page ${p} without member ${gone}`).toBe(true);
        }
        await degraded.close();
      }
    }, 90_000);
  }
});
