// A rebuild and a scrub's repair while a second pool object over the same
// members writes too (src/store/pool-rebuild.ts): the partner controller's,
// as when the pair serves. Object A rebuilds a slot (or repairs what a scrub
// found wrong); object B writes throughout, and reads the labels again at the
// barrier, as the partner does when a SENSE carries a newer pool generation.
// Each byte has one writer (a parity row belongs to one object at a time, as
// lock groups make it in the pair): A writes the even rows, B the odd ones,
// and each its own half of the mirrored prefix. Every member's writes land
// after a seeded number of event-loop turns, so member writes of one row
// and the copy's reads and writes interleave differently from seed to seed.

import { describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { MirrorDevice } from '../../src/store/mirror-device.js';
import { ParityDevice } from '../../src/store/parity-device.js';
import { POOL_LABEL_AREA_BYTES } from '../../src/store/pool-label.js';
import type { MemberOpener, Pool, PoolLayout } from '../../src/store/pool.js';
import type { Device } from '../../src/store/types.js';
import { Gate, jitter, pattern } from './pool-gate.js';

const CHUNK = 4096;
const POOL = '6c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f';
const ROWS = 12;
const SEEDS = 24;

interface Rig {
  layout: PoolLayout;
  /** The devices by name, as both objects open them. */
  raws: Map<string, MemoryDevice>;
  a: Pool;
  b: Pool;
  /** A's wrappers, by name: A's own path to each device. */
  aGates: Map<string, Gate>;
  /** Bytes each writer owns: [offset, length) pieces of the pool. */
  pieces: { a: [number, number][]; b: [number, number][] };
  model: Buffer;
}

function sizeOf(layout: PoolLayout, n: number): { memberBytes: number; rowBytes: number; prefixBytes: number } {
  const parities = layout === 'parity2' ? 2 : layout === 'parity' ? 1 : 0;
  const rowBytes = layout === 'mirror' ? 16 * 1024 : CHUNK * (n - parities);
  const prefixBytes = layout === 'mirror' ? 0 : rowBytes;
  const memberBytes = POOL_LABEL_AREA_BYTES + (layout === 'mirror' ? ROWS * rowBytes : prefixBytes + ROWS * CHUNK);
  return { memberBytes, rowBytes, prefixBytes };
}

async function rig(layout: PoolLayout, n: number, seed: number, opener?: MemberOpener): Promise<Rig> {
  const { memberBytes, rowBytes, prefixBytes } = sizeOf(layout, n);
  const raws = new Map<string, MemoryDevice>();
  for (let i = 0; i < n; i++) raws.set(`dev${i}`, new MemoryDevice(memberBytes));
  raws.set('spare', new MemoryDevice(memberBytes));
  const aGates = new Map([...raws].map(([name, d]) => [name, new Gate(d)]));
  const bGates = new Map([...raws].map(([name, d]) => [name, new Gate(d)]));
  jitter([...aGates.values()], seed);
  jitter([...bGates.values()], seed * 7 + 3);
  const members = (gates: Map<string, Gate>): { name: string; device: Device }[] => Array.from({ length: n }, (_, i) => ({ name: `dev${i}`, device: gates.get(`dev${i}`)! }));
  const bOpener: MemberOpener =
    opener ??
    ((name) => {
      const g = bGates.get(name);
      return g === undefined ? Promise.reject(new Error(`no device ${name}`)) : Promise.resolve(g);
    });
  let a: Pool;
  let b: Pool;
  if (layout === 'mirror') {
    a = await MirrorDevice.create(members(aGates), POOL, { copyChunkBytes: rowBytes });
    b = await MirrorDevice.open(members(bGates), { copyChunkBytes: rowBytes, openMember: bOpener });
  } else {
    a = await ParityDevice.create(members(aGates), { layout, chunkBytes: CHUNK, mirroredPrefixBytes: prefixBytes, poolId: POOL });
    b = await ParityDevice.open(members(bGates), { openMember: bOpener });
  }
  const pieces: Rig['pieces'] = { a: [], b: [] };
  if (prefixBytes > 0) {
    pieces.a.push([0, prefixBytes / 2]);
    pieces.b.push([prefixBytes / 2, prefixBytes / 2]);
  }
  for (let r = 0; r < ROWS; r++) (r % 2 === 0 ? pieces.a : pieces.b).push([prefixBytes + r * rowBytes, rowBytes]);
  const model = Buffer.alloc(a.sizeBytes);
  return { layout, raws, a, b, aGates, pieces, model };
}

/** Writes through `pool` to its own pieces until stopped, each a few bytes to a whole piece, checking what it reads back. */
async function writer(pool: Pool, pieces: [number, number][], model: Buffer, seed: number, stop: () => boolean): Promise<number> {
  let k = 0;
  while (!stop() || k < 10) {
    const [start, len] = pieces[(k * 7 + seed) % pieces.length]!;
    const at = start + ((k * 4099 + seed * 31) % len);
    const length = Math.max(1, Math.min(start + len - at, 1 + ((k * 1237 + seed) % (2 * CHUNK))));
    const data = pattern(length, seed * 100_000 + k);
    await pool.write(at, data);
    data.copy(model, at);
    expect((await pool.read(at, length)).equals(data)).toBe(true);
    k++;
  }
  return k;
}

/** A pool object over copies of the members as they are now, with `down` slots failing. */
async function copyWithDown(layout: PoolLayout, members: MemoryDevice[], down: number[]): Promise<Pool> {
  const gates = members.map((d) => new Gate(new MemoryDevice(d.snapshot())));
  const list = gates.map((device, i) => ({ name: `copy${i}`, device }));
  const pool = layout === 'mirror' ? await MirrorDevice.open(list, { readOnly: true }) : await ParityDevice.open(list);
  for (const s of down) gates[s]!.broken = true;
  return pool;
}

/** Where `got` first differs from `want`, and for how long, or null. */
function firstDifference(got: Buffer, want: Buffer): string | null {
  let i = 0;
  while (i < got.length && got[i] === want[i]) i++;
  if (i === got.length) return null;
  let j = i;
  while (j < got.length && got[j] !== want[j]) j++;
  return `bytes ${i}..${j} differ`;
}

/** After the writers stopped: both objects read the model, a scrub finds nothing, and the model reads back with any member (two for parity2) gone. */
async function checkWhole(r: Rig, slots: string[]): Promise<void> {
  await r.b.refresh();
  await r.a.refresh();
  expect(r.a.status().degraded).toBe(false);
  expect(r.b.status().degraded).toBe(false);
  expect(firstDifference(await r.a.read(0, r.a.sizeBytes), r.model)).toBeNull();
  expect(firstDifference(await r.b.read(0, r.b.sizeBytes), r.model)).toBeNull();
  expect(await r.a.scrub({ repair: false })).toMatchObject({ mismatches: 0, unreadable: 0 });
  const members = slots.map((name) => r.raws.get(name)!);
  const n = members.length;
  const downs: number[][] = [];
  for (let s = 0; s < n; s++) downs.push([s]);
  if (r.layout === 'parity2') for (let s = 0; s < n; s++) downs.push([s, (s + 1) % n]);
  if (r.layout === 'mirror') for (let s = 0; s < n; s++) downs.push(Array.from({ length: n }, (_, i) => i).filter((i) => i !== s));
  for (const down of downs) expect((await (await copyWithDown(r.layout, members, down)).read(0, r.a.sizeBytes)).equals(r.model), `down ${down.join(',')}`).toBe(true);
}

const CASES: { layout: PoolLayout; n: number }[] = [
  { layout: 'mirror', n: 3 },
  { layout: 'parity', n: 4 },
  { layout: 'parity2', n: 5 },
];

describe('a rebuild while a second pool object writes', () => {
  for (const { layout, n } of CASES) {
    it(`${layout} over ${n}: a failed member replaced while both objects write; nothing lost, every member right`, async () => {
      for (let seed = 1; seed <= SEEDS; seed++) {
        const r = await rig(layout, n, seed);
        let stop = false;
        const writers = [writer(r.a, r.pieces.a, r.model, seed, () => stop), writer(r.b, r.pieces.b, r.model, seed + 50, () => stop)];
        let barriers = 0;
        const replacing = (async () => {
          // Slot 1 breaks on A's path: A's next write there moves the generation on; B learns it when it reads the labels.
          await new Promise((res) => setTimeout(res, 2));
          r.aGates.get('dev1')!.broken = true;
          while (r.a.status().members[1]!.state === 'healthy') await new Promise((res) => setTimeout(res, 1));
          await r.b.refresh();
          await r.a.replace(1, { name: 'spare', device: new Gate(r.raws.get('spare')!) }, {
            barrier: async () => {
              barriers++;
              await r.b.refresh();
            },
          });
          // B hears of the join on its next SENSE.
          await r.b.refresh();
        })().finally(() => (stop = true));
        await Promise.all([replacing, ...writers]);
        expect(barriers).toBe(1);
        expect(r.b.status().members[1]).toMatchObject({ name: 'spare', state: 'healthy' });
        await checkWhole(r, ['dev0', 'spare', ...Array.from({ length: n - 2 }, (_, i) => `dev${i + 2}`)]);
      }
    });

    it(`${layout} over ${n}: scrub with repair while both objects write mends what was wrong behind the pool`, async () => {
      for (let seed = 1; seed <= SEEDS; seed++) {
        const r = await rig(layout, n, seed);
        // Bytes settled first, then redundancy spoiled behind the pool (a torn write of long ago): a row's
        // P, or a mirror copy after the first (the data, or the first copy, is what a repair keeps).
        await writer(r.a, r.pieces.a, r.model, seed, () => true);
        await writer(r.b, r.pieces.b, r.model, seed + 50, () => true);
        const { rowBytes, prefixBytes } = sizeOf(layout, n);
        const spoiled = [2, 5, 9];
        for (const row of spoiled) {
          const slot = layout === 'mirror' ? 1 + ((row + seed) % (n - 1)) : n - 1 - (row % n);
          const at = POOL_LABEL_AREA_BYTES + (layout === 'mirror' ? row * rowBytes : prefixBytes + row * CHUNK);
          await r.raws.get(`dev${slot}`)!.write(at + 100, pattern(50, row));
        }
        let stop = false;
        const writers = [writer(r.a, r.pieces.a, r.model, seed + 7, () => stop), writer(r.b, r.pieces.b, r.model, seed + 57, () => stop)];
        const report = await r.a.scrub({ repair: true, barrier: async () => void (await r.b.refresh()) }).finally(() => (stop = true));
        await Promise.all(writers);
        // A spoiled P under a write the writers made meanwhile was mended by that write.
        expect(report.mismatches).toBeGreaterThanOrEqual(1);
        expect(report.unrepaired).toBe(0);
        await checkWhole(r, Array.from({ length: n }, (_, i) => `dev${i}`));
      }
    });
  }

  it('a partner that cannot open the new device stops the rebuild: the member stays out, nothing is lost', async () => {
    const r = await rig('parity', 4, 3, () => Promise.reject(new Error('no such export here')));
    let stop = false;
    const writers = [writer(r.a, r.pieces.a, r.model, 3, () => stop), writer(r.b, r.pieces.b, r.model, 53, () => stop)];
    const outcome = await r.a
      .replace(2, { name: 'spare', device: new Gate(r.raws.get('spare')!) }, { barrier: async () => void (await r.b.refresh()) })
      .then(
        () => 'done',
        (err: Error) => err.message,
      )
      .finally(() => (stop = true));
    await Promise.all(writers);
    expect(outcome).toMatch(/other controller stopped writing it|moved from generation/);
    await r.b.refresh();
    expect(r.a.status().members[2]).toMatchObject({ name: 'spare', state: expect.stringMatching(/failed|stale/) });
    expect(r.b.status().members[2]!.state).not.toBe('healthy');
    const got = await r.a.read(0, r.a.sizeBytes);
  if (!got.equals(r.model)) {
    let i = 0;
    while (got[i] === r.model[i]) i++;
    let j = i;
    while (j < got.length && got[j] !== r.model[j]) j++;
    console.log('DIFF', r.layout, 'at', i, 'to', j, 'rowBytes', sizeOf(r.layout, 4).rowBytes, JSON.stringify(r.pieces), JSON.stringify(r.a.status().members), r.a.generation);
  }
  expect(got.equals(r.model)).toBe(true);
    expect(firstDifference(await r.b.read(0, r.b.sizeBytes), r.model)).toBeNull();
  });
});
