// Checkpoint regions on a real pair of controller processes: a commit is
// atomic when a controller is SIGKILLed at any step of it. For every request
// a checkpoint makes (beginCheckpoint, each write, commit: counted through
// the library's onStep hook), controller A, and in a second pass controller
// B, is killed just before that request is sent, the writer carrying on
// through the other controller (and once more just after commit()
// answered); then again, killed while that request is sent, the writer
// giving up at its next step as a primary dying with its controller would.
// Each time a fresh reader through the survivor opens the region with its
// key and must find the generation before or the new one, whole and byte for
// byte as written (the new one whenever commit() answered), the other
// committed generations the ring still holds readable, and the same once the
// killed controller is back. Also: a wrong key is refused through A and
// through B, and NBD does not export a region.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { NbdClient } from '../../src/client/nbd-client.js';
import { PairClient } from '../../src/client/pair-client.js';
import { Region, type GenerationInfo } from '../../src/client/region.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import { killAllPairControllers, NbdPair, type Letter } from '../../src/runtime/nbd-pair.js';

let dir: string;
let pair: NbdPair;
const open: { close(): Promise<void> }[] = [];

const RING = 3;

async function connect(id: Letter): Promise<PagepairClient> {
  const c = await PagepairClient.connect({ ...pair.of(id).address, name: `region-kill-${id}`, timeoutMs: 30_000 });
  open.push(c);
  return c;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return isPagepairError(err) ? err.code : String(err);
  }
}

/** The bytes of one commit attempt: its own length and contents, so a mix of two attempts or a short read shows. */
function payload(attempt: number): Buffer {
  const b = Buffer.alloc(9000 + ((attempt * 1237) % 7000));
  for (let i = 0; i < b.length; i++) b[i] = (attempt * 151 + i * 7 + (i >> 8)) & 0xff;
  b.writeUInt32LE(attempt, 0);
  b.writeUInt32LE(attempt, b.length - 4);
  return b;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'pagepair-it-region-'));
  pair = await NbdPair.start({ dir, storeBytes: 128 * 1024 * 1024, cacheBytesMax: 32 * 1024 * 1024 });
}, 60_000);

afterAll(async () => {
  await Promise.all(open.map((c) => c.close().catch(() => undefined)));
  await pair?.stop();
  killAllPairControllers();
  rmSync(dir, { recursive: true, force: true });
}, 60_000);

describe('checkpoint regions on a real pair', () => {
  it('refuses a wrong key through A and through B, and is not exported over NBD', async () => {
    const maker = await connect('A');
    const { region, key } = await Region.create(maker, 'it-keys', { mode: 'overwrite', sizeBytes: 16 * 1024 });
    const data = payload(1);
    const cp = await region.beginCheckpoint();
    await cp.write(0, data);
    await cp.commit();

    const wrong = Buffer.from(key, 'base64url');
    wrong[3] = wrong[3]! ^ 0x40;
    for (const id of ['A', 'B'] as const) {
      const c = await connect(id);
      expect(await codeOf(Region.open(c, 'it-keys', wrong.toString('base64url'))), `wrong key through ${id}`).toBe('ACCESS_DENIED');
      // Nor can a connection that never unlocked it read or write the allocation underneath.
      expect(await codeOf(c.read(region.guid, 0, 16)), `plain read through ${id}`).toBe('ACCESS_DENIED');
      expect(await codeOf(c.write(region.guid, 0, Buffer.from('x'))), `plain write through ${id}`).toBe('ACCESS_DENIED');
      // The region is listed (no key needed to see it exists), and the right key opens it.
      expect((await Region.list(c)).map((r) => r.name)).toContain('it-keys');
      const mine = await Region.open(c, 'it-keys', key);
      expect((await mine.readWhole((await mine.latest())!.generation)).equals(data), `read through ${id}`).toBe(true);
    }

    // NBD: an ordinary allocation is exported (so the listener works) and the region is not, through either controller.
    await maker.allocate('it-plain', 64 * 1024, 'default');
    for (const id of ['A', 'B'] as const) {
      const nbd = await NbdClient.connect({ host: '127.0.0.1', port: pair.of(id).nbdPort, exportName: 'it-plain' });
      await nbd.close();
      expect(await codeOf(NbdClient.connect({ host: '127.0.0.1', port: pair.of(id).nbdPort, exportName: 'region:it-keys' })), `NBD through ${id}`).toBe('UNKNOWN_GUID');
    }
  });

  it('commits atomically when A or B is SIGKILLed at any step of a commit', async () => {
    const maker = await connect('A');
    const { region: made, key } = await Region.create(maker, 'it-atomic', { mode: 'overwrite', sizeBytes: 20 * 1024, generations: RING });
    expect(made.ringSize).toBe(RING);

    /** What each generation number was last written with; the acknowledged ones, in order. */
    const written = new Map<number, Buffer>();
    /** Generations known committed (commit() answered, or a reader found it), oldest first. */
    const committed: number[] = [];
    let attempt = 0;
    let hook: ((step: string) => Promise<void>) | null = null;
    const steps: string[] = [];

    /** One checkpoint through a fresh pair client (A first): two writes, then the commit. */
    async function commitOnce(): Promise<{ generation: number; info: GenerationInfo | null; error: string | null }> {
      const data = payload(++attempt);
      const writer = await PairClient.connect({ controllers: [pair.a.address, pair.b.address], name: 'region-kill-writer', timeoutMs: 10_000, retryForMs: 30_000 });
      let generation = -1;
      try {
        const region = await Region.open(writer, 'it-atomic', key, { onStep: async (step) => hook?.(step) });
        const cp = await region.beginCheckpoint();
        generation = cp.generation;
        written.set(generation, data);
        const half = 4096 + 100;
        await cp.write(0, data.subarray(0, half));
        await cp.write(half, data.subarray(half));
        const info = await cp.commit();
        expect(info.generation).toBe(generation);
        expect(info.lengthBytes).toBe(data.length);
        committed.push(generation);
        return { generation, info, error: null };
      } catch (err) {
        if (err instanceof Error && err.name === 'AssertionError') throw err;
        return { generation, info: null, error: err instanceof Error ? `${(err as { code?: string }).code ?? ''} ${err.message}` : String(err) };
      } finally {
        await writer.close();
      }
    }

    /** A fresh reader through `via` finds `before` or `attempted` (the latter when acknowledged), whole, and every acknowledged generation still in the ring. */
    async function check(via: Letter, before: number, attempted: number, ackedNow: boolean, what: string, ringFull = true): Promise<number> {
      const c = await PagepairClient.connect({ ...pair.of(via).address, name: 'region-kill-reader', timeoutMs: 30_000 });
      try {
        const r = await Region.open(c, 'it-atomic', key);
        const latest = await r.latest();
        expect(latest, what).not.toBeNull();
        const g = latest!.generation;
        if (ackedNow) expect(g, `${what}: commit() answered, so the new generation is the latest`).toBe(attempted);
        else expect(attempted >= 0 ? [before, attempted] : [before], `${what}: latest generation`).toContain(g);
        const whole = await r.readWhole(g);
        expect(whole.length, `${what}: generation ${g}'s length`).toBe(written.get(g)!.length);
        expect(whole.equals(written.get(g)!), `${what}: generation ${g} byte for byte`).toBe(true);
        // A ring of RING slots holds the newest committed generations; a commit under way takes the oldest one's
        // slot. So the newest RING-1 committed generations (RING-2 besides the latest when the attempt did not
        // land) are listed and read back as written.
        const listed = new Map((await r.list()).map((x) => [x.generation, x]));
        for (const old of ringFull ? committed.filter((x) => x < g).slice(-(g === attempted ? RING - 1 : RING - 2)) : []) {
          expect(listed.has(old), `${what}: committed generation ${old} still listed (have ${[...listed.keys()].join(',')})`).toBe(true);
          expect((await r.readWhole(old)).equals(written.get(old)!), `${what}: generation ${old} byte for byte`).toBe(true);
        }
        for (const x of listed.values()) {
          expect(x.generation <= g, `${what}: generation ${x.generation} listed past the latest`).toBe(true);
          expect((await r.read(x.generation, 0, x.lengthBytes)).equals(written.get(x.generation)!), `${what}: listed generation ${x.generation}`).toBe(true);
        }
        if (!committed.includes(g)) committed.push(g);
        return g;
      } finally {
        await c.close();
      }
    }

    // A full ring to begin with; the commit after it (which drops the oldest) counts the steps of a commit.
    for (let i = 0; i < RING; i++) expect((await commitOnce()).error).toBeNull();
    hook = async (step) => {
      steps.push(step);
    };
    const counted = await commitOnce();
    hook = null;
    expect(counted.error).toBeNull();
    expect(steps.length, 'requests in one commit').toBeGreaterThanOrEqual(5);
    let latest = counted.generation;

    const log: string[] = [];
    // Two ways a step can meet a kill. carry-on: the victim is killed before the request is sent and
    // the writer, a pair client, carries on through the other controller. abandon: the request races the
    // kill (sent while the victim dies) and the writer gives up at its next step, as a primary dying
    // with its controller would; when that request was the last, the commit may still answer.
    for (const mode of ['carry-on', 'abandon'] as const) {
      for (const victim of ['A', 'B'] as const) {
        const survivor: Letter = victim === 'A' ? 'B' : 'A';
        // Before each request, and (carry-on) once after commit() answered.
        for (let at = 0; at < steps.length + (mode === 'carry-on' ? 1 : 0); at++) {
          let seen = 0;
          let killedAt: string | null = null;
          let dying: Promise<void> | null = null;
          hook = async (step) => {
            const n = seen++;
            if (n === at) {
              killedAt = step;
              dying = pair.of(victim).kill();
              if (mode === 'carry-on') await dying;
            } else if (mode === 'abandon' && n === at + 1) {
              await dying;
              throw new Error('the writer gives up (abandoned)');
            }
          };
          const r = await commitOnce();
          hook = null;
          if (killedAt === null) {
            expect(at, 'the hook fired at every step but the last').toBe(steps.length);
            dying = pair.of(victim).kill();
            killedAt = 'after commit';
          }
          await dying;
          const what = `${mode}: kill ${victim} at request ${at} (${killedAt})`;
          log.push(`${what}: ${r.error === null ? `generation ${r.generation} committed` : `${r.generation >= 0 ? `generation ${r.generation} ` : ''}not committed: ${r.error}`}`);
          if (mode === 'carry-on') expect(r.error, `${what}: the writer carries on through ${survivor}`).toBeNull();
          // The survivor serves once it has found its partner gone (until then it answers that reads wait).
          await pair.waitRole(survivor, ['alone'], 30_000);
          const found = await check(survivor, latest, r.generation, r.error === null, `${what}, read through ${survivor}`);
          await pair.restart(victim, 60_000);
          expect(await check(victim, latest, r.generation, r.error === null, `${what}, read through ${victim} once back`)).toBe(found);
          latest = found;
          if (found !== r.generation) {
            // One failure at a time: the writer (or its backup) commits RING times before the next kill, so
            // each step starts from a full ring. A checkpoint given up leaves its slot empty until the ring
            // comes round to it again, and the commits meanwhile drop older generations (the test below).
            for (let i = 1; i <= RING; i++) {
              const again = await commitOnce();
              expect(again.error, `${what}: commit ${i} after it`).toBeNull();
              latest = await check('A', latest, again.generation, true, `${what}, commit ${i} after it`, false);
            }
          }
        }
      }
    }
    // What happened at each step, for whoever reads the test's output.
    console.log(`region-kill: steps of a commit: ${steps.join(', ')}\n${log.join('\n')}`);
  }, 180_000);

  // A checkpoint that begins in overwrite mode with the ring full drops the generation in its slot; one
  // given up (a writer that dies, an abort) leaves that slot empty, and the next one must take it again
  // rather than drop another committed generation: K given up in a row still leave the newest K-1.
  it('keeps the newest K-1 committed generations through failed commits one after another', async () => {
    const c = await connect('A');
    const { region } = await Region.create(c, 'it-failed-in-a-row', { mode: 'overwrite', sizeBytes: 16384, generations: RING });
    for (let i = 0; i < RING; i++) {
      const cp = await region.beginCheckpoint();
      await cp.write(0, payload(100 + i));
      await cp.commit();
    }
    const before = (await region.list()).map((g) => g.generation);
    for (let i = 0; i < RING; i++) {
      const cp = await region.beginCheckpoint();
      await cp.write(0, payload(200 + i));
      cp.abort();
    }
    const after = (await region.list()).map((g) => g.generation);
    expect(after, `listed before the failed commits: ${before.join(', ')}`).toEqual(before.slice(1));
  });
});
