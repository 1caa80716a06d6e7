// `pagepair attach` on a real pair (issue 12): a local NBD client writes
// through attach while controller A, then B, is SIGKILLed and restarted. The
// client must see no error at all, only pauses; every write it saw
// acknowledged must read back through attach and through each controller
// directly; attach's status counts the failovers and their stalls. With
// --spread, two local clients write the same blocks at once (their requests
// going to both controllers), and both controllers' copies must be the same.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchAttachStatus } from '../../src/attach/attach.js';
import type { AttachStatus } from '../../src/attach/paths.js';
import { PagepairClient } from '../../src/client/index.js';
import { NbdClient } from '../../src/client/nbd-client.js';
import { makePairFiles, roundValue, seededInts, startMirroredPair, startProcess, stopPair, waitUntil, type PairFiles, type Proc } from './helpers.js';

const BLOCK = 4096;
const BLOCKS = 256;
const INFLIGHT = 16;

let files: PairFiles;
let pair: [Proc, Proc];
const attaches: Proc[] = [];

beforeAll(async () => {
  files = await makePairFiles({}, { nbd: true });
  pair = await startMirroredPair(files);
  const admin = await PagepairClient.connect({ host: '127.0.0.1', port: files.ports.aClient, token: files.token });
  await admin.allocate('hostvol', BLOCKS * BLOCK);
  await admin.allocate('spreadvol', BLOCKS * BLOCK);
  await admin.allocate('holdvol', BLOCKS * BLOCK);
  await admin.close();
}, 60_000);

afterAll(async () => {
  await Promise.all(attaches.map((p) => p.stop()));
  await stopPair(pair, files);
}, 60_000);

/** Starts `pagepair attach` on volume `vol`; resolves with its unix socket and status socket. */
async function startAttach(vol: string, extra: string[] = []): Promise<{ proc: Proc; socket: string; status: string }> {
  const socket = join(files.dir, `attach-${vol}.sock`);
  const status = join(files.dir, `attach-${vol}.status.sock`);
  const proc = startProcess([
    'attach',
    vol,
    '--a-url',
    `nbd://127.0.0.1:${files.ports.aNbd!}`,
    '--b-url',
    `nbd://127.0.0.1:${files.ports.bNbd!}`,
    '--listen',
    '127.0.0.1:0',
    '--socket',
    socket,
    '--status-socket',
    status,
    '--hold-ms',
    '30000',
    '--reconnect-ms',
    '100',
    ...extra,
  ]);
  attaches.push(proc);
  await proc.waitForLog((r) => r.msg === 'attach serving', 20_000);
  return { proc, socket, status };
}

function direct(id: 'A' | 'B', vol: string): Promise<NbdClient> {
  return NbdClient.connect(`nbd://127.0.0.1:${id === 'A' ? files.ports.aNbd! : files.ports.bNbd!}/${vol}`);
}

describe('pagepair attach on a real pair', () => {
  it('a writer through attach sees no error while A, then B, is killed and restarted; every acknowledged write reads back everywhere', async () => {
    const { socket, status } = await startAttach('hostvol');
    const client = await NbdClient.connect(`nbd+unix:///hostvol?socket=${socket}`, { requestTimeoutMs: 60_000 });
    /** What each block holds: the last write to it that was acknowledged (one writer per block at a time). */
    const expected: (Buffer | null)[] = Array.from({ length: BLOCKS }, () => null);
    const rand = seededInts(1201);
    let acked = 0;
    let errors = 0;
    let round = 0;
    let stop = false;
    const busy = new Set<number>();
    const worker = async (): Promise<void> => {
      while (!stop) {
        let block = rand(BLOCKS);
        while (busy.has(block)) block = (block + 1) % BLOCKS;
        busy.add(block);
        const value = roundValue(BLOCK, round++, block + 1);
        try {
          await client.write(block * BLOCK, value);
          expected[block] = value;
          acked++;
        } catch {
          errors++;
        } finally {
          busy.delete(block);
        }
      }
    };
    const workers = Array.from({ length: INFLIGHT }, () => worker());
    const ackedBy = async (n: number): Promise<void> => {
      const target = acked + n;
      const deadline = Date.now() + 60_000;
      while (acked < target && Date.now() < deadline && errors === 0) await new Promise((r) => setTimeout(r, 20));
      expect(errors, 'the local client saw an error').toBe(0);
      expect(acked, 'writes go on').toBeGreaterThanOrEqual(target);
    };

    await ackedBy(500);
    for (const [victim, idx] of [
      ['A', 0],
      ['B', 1],
    ] as const) {
      pair[idx].child.kill('SIGKILL');
      await pair[idx].exited;
      await ackedBy(1000);
      pair[idx] = startProcess(['start', '--config', victim === 'A' ? files.a : files.b]);
      await pair[idx].waitForLog((r) => r.msg === 'mirrored with partner', 60_000);
      await ackedBy(500);
    }
    stop = true;
    await Promise.all(workers);
    expect(errors).toBe(0);

    const s: AttachStatus = await fetchAttachStatus(status);
    console.log(`attach: ${acked} writes acknowledged, ${s.failovers} failovers, stalls ${s.stallsMs.join(", ")} ms, longest request ${s.longestRequestStallMs} ms, resent ${s.resent}`);
    expect(s.failovers, JSON.stringify(s)).toBeGreaterThanOrEqual(2);
    expect(s.stallsMs.length).toBeGreaterThanOrEqual(2);
    expect(s.failedNoPath).toBe(0);
    expect(s.paths.every((p) => p.state === 'up'), JSON.stringify(s.paths)).toBe(true);

    const a = await direct('A', 'hostvol');
    const b = await direct('B', 'hostvol');
    const all = [client, a, b];
    const reads = await Promise.all(all.map((c) => c.read(0, BLOCKS * BLOCK)));
    for (let i = 0; i < BLOCKS; i++) {
      const want = expected[i] ?? Buffer.alloc(BLOCK);
      for (const [k, got] of reads.entries()) {
        expect(got.subarray(i * BLOCK, (i + 1) * BLOCK).equals(want), `block ${i} through ${['attach', 'A', 'B'][k]}`).toBe(true);
      }
    }
    await Promise.all(all.map((c) => c.close()));
  }, 240_000);

  it('--spread: two local writers on the same blocks, requests over both controllers; both copies are the same', async () => {
    const { socket, status } = await startAttach('spreadvol', ['--spread']);
    const w1 = await NbdClient.connect(`nbd+unix:///spreadvol?socket=${socket}`);
    const w2 = await NbdClient.connect(`nbd+unix:///spreadvol?socket=${socket}`);
    const rand = seededInts(1202);
    for (let round = 0; round < 600; round++) {
      const block = rand(16);
      await Promise.all([w1.write(block * BLOCK, roundValue(BLOCK, round, 1)), w2.write(block * BLOCK, roundValue(BLOCK, round, 2))]);
    }
    await w1.flush();
    const s = await fetchAttachStatus(status);
    expect(s.paths.map((p) => p.answered > 100)).toEqual([true, true]);
    const a = await direct('A', 'spreadvol');
    const b = await direct('B', 'spreadvol');
    const [ra, rb] = await Promise.all([a.read(0, 16 * BLOCK), b.read(0, 16 * BLOCK)]);
    expect(ra.equals(rb), 'A and B hold the same bytes').toBe(true);
    for (const c of [w1, w2, a, b]) await c.close();
  }, 120_000);

  // Last: it stops both controllers.
  it('with both controllers gone, a request is held for --hold-ms and then fails with EIO; a flushed write survives; nothing else is acknowledged', async () => {
    const { status } = await startAttach('holdvol', ['--hold-ms', '3000']);
    const s0 = await fetchAttachStatus(status);
    expect(s0.holdMs).toBe(3000);
    const socket = join(files.dir, 'attach-holdvol.sock');
    const client = await NbdClient.connect(`nbd+unix:///holdvol?socket=${socket}`, { requestTimeoutMs: 60_000 });
    const kept = roundValue(BLOCK, 1, 77);
    await client.write(0, kept);
    await client.flush();
    for (const p of pair) p.child.kill('SIGKILL');
    await Promise.all(pair.map((p) => p.exited));
    let acked = false;
    const late = client.write(BLOCK, roundValue(BLOCK, 2, 78)).then(() => (acked = true));
    late.catch(() => undefined);
    // Held, not failed at once (how long, to the millisecond, is test/unit/attach-paths.test.ts's, on a fake clock).
    await waitUntil(async () => (await fetchAttachStatus(status)).held === 1, 10_000, 'the write held by attach');
    await expect(late).rejects.toMatchObject({ errno: 5 });
    expect(acked).toBe(false);
    const s1 = await fetchAttachStatus(status);
    expect(s1.failedNoPath).toBe(1);
    expect(s1.paths.map((p) => p.state)).toEqual(['down', 'down']);
    // Both come back; attach finds them again; the flushed write is there.
    pair = [startProcess(['start', '--config', files.a]), startProcess(['start', '--config', files.b])];
    await Promise.all(pair.map((p) => p.waitForLog((r) => r.msg === 'mirrored with partner', 60_000)));
    const back = await client.read(0, BLOCK);
    expect(back.equals(kept)).toBe(true);
    await client.close();
  }, 120_000);
});
