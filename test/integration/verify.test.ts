// `pagepair verify` against a real mirrored pair on 127.0.0.1: no difference
// while clients write through both controllers; a page made to differ on
// purpose through the test hook is found, named and repaired; status shows
// the last verify. B runs without testHooks, so it refuses the hook.

import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import { makePairFiles, runCli, startMirroredPair, stopPair, waitUntil, type PairFiles, type Proc } from './helpers.js';

let files: PairFiles;
let a: Proc;
let b: Proc;
let ca: PagepairClient;
let cb: PagepairClient;
let guid = '';

const PAGE = 4096;
const PAGES = 1024;

function fill(page: number, text: string): Buffer {
  const out = Buffer.alloc(PAGE);
  for (let i = 0; i < PAGE; i += text.length + 1) out.write(`${text}/${page}`, i);
  return out;
}

beforeAll(async () => {
  files = await makePairFiles({ testHooks: true });
  writeFileSync(files.b, JSON.stringify(files.configOf('B', { testHooks: false })));
  [a, b] = await startMirroredPair(files);
  ca = await PagepairClient.connect({ host: '127.0.0.1', port: files.ports.aClient, token: files.token, name: 'verify-test-a' });
  cb = await PagepairClient.connect({ host: '127.0.0.1', port: files.ports.bClient, token: files.token, name: 'verify-test-b' });
  guid = (await ca.allocate('vol', PAGES * PAGE)).guid;
  for (let p = 0; p < 64; p++) await (p % 2 === 0 ? ca : cb).write(guid, p * PAGE, fill(p, 'start'));
}, 60_000);

afterAll(async () => {
  await ca?.close().catch(() => undefined);
  await cb?.close().catch(() => undefined);
  await stopPair([a, b], files);
}, 60_000);

describe('pagepair verify on a real pair', () => {
  it('finds no difference while clients write the same pages through both controllers', async () => {
    let stop = false;
    let writes = 0;
    const writer = async (c: PagepairClient, side: string): Promise<void> => {
      for (let i = 0; !stop; i++) {
        const page = (i * 7 + (side === 'A' ? 0 : 3)) % 64;
        await c.write(guid, page * PAGE + (i % 3) * 100, fill(page, `${side}${i}`).subarray(0, PAGE - (i % 3) * 100));
        writes++;
      }
    };
    const load = Promise.all([writer(ca, 'A'), writer(cb, 'B')]);
    try {
      const r = await runCli(['verify', '--config', files.a, '--range', '32', '--pause-ms', '50']);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toContain(`${PAGES} / ${PAGES} pages checked (100%)`);
      expect(r.stdout).toMatch(new RegExp(`summary: ${PAGES} pages checked in [0-9.]+ s; 0 differ`));
    } finally {
      stop = true;
      await load;
    }
    expect(writes).toBeGreaterThan(0);
  }, 60_000);

  it('refuses the test hook where testHooks is off', async () => {
    const err = await cb.testCorrupt(guid, 7, Buffer.alloc(PAGE, 1)).catch((e: unknown) => e);
    expect(isPagepairError(err, 'NOT_ALLOWED')).toBe(true);
  });

  it('names a page corrupted on one side, repairs it, and then finds nothing', async () => {
    // Page 7 clean on both sides first (destaged), so nothing writes it meanwhile.
    await ca.write(guid, 7 * PAGE, fill(7, 'good'));
    await ca.flush(guid);
    await waitUntil(
      async () => ((await Promise.all([ca.status(), cb.status()])) as { dirtyPages: number; destageInFlight: number }[]).every((st) => st.dirtyPages === 0 && st.destageInFlight === 0),
      30_000,
      'nothing dirty on A and B',
    );
    const corrupted = await ca.testCorrupt(guid, 7, fill(7, 'bad'));
    expect(corrupted.version).toBeGreaterThan(0);
    expect((await ca.read(guid, 7 * PAGE, PAGE)).equals(fill(7, 'bad'))).toBe(true);
    expect((await cb.read(guid, 7 * PAGE, PAGE)).equals(fill(7, 'good'))).toBe(true);

    const found = await runCli(['verify', '--config', files.b, '--volume', 'vol']);
    expect(found.code, found.stdout + found.stderr).toBe(1);
    expect(found.stdout).toMatch(/vol page 7: A v\d+ crc [0-9a-f]{8} clean; B v\d+ crc [0-9a-f]{8} clean; store v\d+ crc [0-9a-f]{8}; owner [AB]; first differing byte 0/);
    expect(found.stdout).toContain('pages whose copies differ (1):');
    expect(found.stdout).toContain('1 differ');

    const json = await runCli(['verify', '--config', files.a, '--json']);
    expect(json.code).toBe(1);
    const parsed = JSON.parse(json.stdout) as { mismatches: { page: number; firstDifferentByte: number }[]; remaining: number };
    expect(parsed.mismatches.map((m) => m.page)).toEqual([7]);
    expect(parsed.remaining).toBe(1);

    const repaired = await runCli(['verify', '--config', files.a, '--repair']);
    expect(repaired.code, repaired.stdout + repaired.stderr).toBe(0);
    expect(repaired.stdout).toMatch(/repair: kept B's copy \(.*\): repaired/);
    expect(repaired.stdout).toContain('1 differ, 1 repaired, 0 remain');
    const [viaA, viaB] = [await ca.read(guid, 7 * PAGE, PAGE), await cb.read(guid, 7 * PAGE, PAGE)];
    expect(viaA.equals(viaB)).toBe(true);
    expect(viaA.equals(fill(7, 'good'))).toBe(true);

    const again = await runCli(['verify', '--config', files.a]);
    expect(again.code, again.stdout + again.stderr).toBe(0);
    expect(again.stdout).toContain(`summary: ${PAGES} pages checked`);
    expect(again.stdout).toContain('; 0 differ');
  }, 60_000);

  it('shows the last verify in status, on both controllers', async () => {
    for (const cfg of [files.a, files.b]) {
      const human = await runCli(['status', '--config', cfg]);
      expect(human.code, human.stderr).toBe(0);
      expect(human.stdout).toMatch(new RegExp(`copies\\s+verified ${PAGES} pages [0-9a-z ]+ ago, 0 differ`));
      const json = await runCli(['status', '--config', cfg, '--json']);
      const s = JSON.parse(json.stdout) as { lastVerify: { pagesChecked: number; mismatches: number; repaired: number; unsettled: number; msAgo: number } };
      expect(s.lastVerify).toMatchObject({ pagesChecked: PAGES, mismatches: 0, repaired: 0 });
    }
  }, 30_000);
});
