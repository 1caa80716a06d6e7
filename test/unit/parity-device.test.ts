// The parity pool layouts (issue 14): parity (rotating P) and parity2 (P and
// Q) over N members with a mirrored prefix. A model test checks every read
// against a plain Buffer while members fail at random points; a torn row
// (data written, parity not) is found by scrub and made right by
// repairRange; a failed member is replaced while writes go on; a second
// pool object over the same members learns of a failure through refresh.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { crc32c } from '../../src/protocol/crc32c.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { MirrorDevice } from '../../src/store/mirror-device.js';
import { ParityDevice, type ParityLayout } from '../../src/store/parity-device.js';
import { POOL_LABEL_AREA_BYTES, encodePoolLabel, labelCopyFor, newestPoolLabel, type PoolLabel } from '../../src/store/pool-label.js';
import type { PoolMember } from '../../src/store/pool.js';
import type { Device } from '../../src/store/types.js';
import { Gate, jitter, pattern } from './pool-gate.js';

const CHUNK = 4096;
const POOL = '4b2a9c1e-7d3f-4e8a-9b6c-2f1e0d3c4b5a';

function parities(layout: ParityLayout): number {
  return layout === 'parity2' ? 2 : 1;
}

interface Rig {
  raws: MemoryDevice[];
  gates: Gate[];
  members: PoolMember[];
  pool: ParityDevice;
}

function memberBytes(layout: ParityLayout, n: number, rows: number, prefixRows: number): number {
  return POOL_LABEL_AREA_BYTES + prefixRows * CHUNK * (n - parities(layout)) + rows * CHUNK;
}

function gated(raws: Device[]): { gates: Gate[]; members: PoolMember[] } {
  const gates = raws.map((d) => new Gate(d));
  return { gates, members: gates.map((device, i) => ({ name: `dev${i}`, device })) };
}

async function rig(layout: ParityLayout, n: number, rows = 6, prefixRows = 1): Promise<Rig> {
  const raws = Array.from({ length: n }, () => new MemoryDevice(memberBytes(layout, n, rows, prefixRows)));
  const { gates, members } = gated(raws);
  const rowBytes = CHUNK * (n - parities(layout));
  const pool = await ParityDevice.create(members, { layout, chunkBytes: CHUNK, mirroredPrefixBytes: prefixRows * rowBytes, poolId: POOL });
  return { raws, gates, members, pool };
}

/** A pool over copies of the members as they are now, with `down` slots failing every operation. */
async function copyWithDown(raws: MemoryDevice[], down: number[]): Promise<ParityDevice> {
  const { gates, members } = gated(raws.map((d) => new MemoryDevice(d.snapshot())));
  const pool = await ParityDevice.open(members);
  for (const s of down) gates[s]!.broken = true;
  return pool;
}

async function labelOf(d: Device): Promise<PoolLabel> {
  const l = newestPoolLabel(await d.read(0, 64), await d.read(4096, 64));
  if (typeof l === 'string') throw new Error(l);
  return l;
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (err) {
    return isPagepairError(err) ? `${err.code}: ${err.message}` : String(err);
  }
}

// An operation at a place the test picks from the pool's geometry: anywhere,
// or near the prefix's end, a row's end or a chunk's end.
const opArb = fc.record({
  write: fc.boolean(),
  near: fc.constantFrom('any', 'prefix', 'row', 'chunk'),
  at: fc.nat(),
  delta: fc.integer({ min: -700, max: 700 }),
  length: fc.oneof(fc.integer({ min: 1, max: 600 }), fc.integer({ min: 1, max: 3 * 5 * CHUNK })),
  seed: fc.nat(),
});

interface Where {
  near: string;
  at: number;
  delta: number;
  length: number;
}

function place(op: Where, pool: ParityDevice): [number, number] {
  let offset: number;
  const rows = (pool.sizeBytes - pool.mirroredPrefixBytes) / pool.rowBytes;
  if (op.near === 'prefix') offset = pool.mirroredPrefixBytes + op.delta;
  else if (op.near === 'row') offset = pool.mirroredPrefixBytes + (op.at % rows) * pool.rowBytes + op.delta;
  else if (op.near === 'chunk') offset = pool.mirroredPrefixBytes + (op.at % (rows * (pool.rowBytes / CHUNK))) * CHUNK + op.delta;
  else offset = op.at % pool.sizeBytes;
  offset = Math.max(0, Math.min(pool.sizeBytes - 1, offset));
  return [offset, Math.min(op.length, pool.sizeBytes - offset)];
}

describe('parity pool: model', () => {
  const configs: [ParityLayout, number][] = [
    ['parity', 3],
    ['parity', 4],
    ['parity', 5],
    ['parity2', 4],
    ['parity2', 5],
    ['parity2', 6],
  ];
  for (const [layout, n] of configs) {
    it(`${layout} over ${n}: random reads and writes equal a plain buffer, healthy and as up to ${parities(layout)} members fail`, async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(opArb, { minLength: 5, maxLength: 30 }),
          fc.array(fc.record({ slot: fc.nat(), at: fc.nat(), calls: fc.nat({ max: 4 }) }), { maxLength: parities(layout) }),
          async (ops, failures) => {
            const { gates, pool } = await rig(layout, n);
            const model = Buffer.alloc(pool.sizeBytes);
            // Distinct slots, each breaking a few of its own calls into some operation.
            const breaks = new Map<number, { at: number; calls: number }>();
            for (const f of failures) if (!breaks.has(f.slot % n)) breaks.set(f.slot % n, { at: f.at % ops.length, calls: f.calls });
            for (let k = 0; k < ops.length; k++) {
              for (const [slot, b] of breaks) if (b.at === k) gates[slot]!.breakAfter = b.calls;
              const op = ops[k]!;
              const [offset, length] = place(op, pool);
              if (op.write) {
                const data = pattern(length, op.seed);
                // Half the writes come in two parts, as the page store writes a page's header and body.
                const cut = op.seed % 2 === 1 ? op.seed % (length + 1) : -1;
                if (cut < 0) await pool.write(offset, data);
                else await pool.writeParts(offset, [data.subarray(0, cut), data.subarray(cut)]);
                data.copy(model, offset);
              } else {
                const got = await pool.read(offset, length);
                expect(got.equals(model.subarray(offset, offset + length))).toBe(true);
              }
            }
            expect((await pool.read(0, pool.sizeBytes)).equals(model)).toBe(true);
            // A member breaking late may not have been touched yet: the full read and the sync touch every one.
            await pool.sync();
            for (const g of gates) if (g.breakAfter !== null) g.broken = true;
            await pool.sync();
            expect((await pool.read(0, pool.sizeBytes)).equals(model)).toBe(true);
            const st = pool.status();
            expect(st.members.filter((m) => m.state === 'failed').map((m) => m.slot).sort()).toEqual([...breaks.keys()].sort());
            expect(st.failuresTolerated).toBe(parities(layout) - breaks.size);
            // One generation per failure, also when a member breaks while taking the label of another's.
            expect(pool.generation).toBe(1 + breaks.size);
          },
        ),
        { seed: 1400 + n * 10 + parities(layout), numRuns: 60 },
      );
    });
  }

  it('writes the mirrored prefix as plain copies on every member, and a full row without reading', async () => {
    const { raws, pool } = await rig('parity', 4);
    const data = pattern(pool.mirroredPrefixBytes, 5);
    await pool.write(0, data);
    for (const d of raws) expect((await d.read(POOL_LABEL_AREA_BYTES, data.length)).equals(data)).toBe(true);
    let reads = 0;
    for (const d of raws) {
      const read = d.read.bind(d);
      d.read = (o, l) => (reads++, read(o, l));
    }
    await pool.write(pool.mirroredPrefixBytes + pool.rowBytes, pattern(pool.rowBytes, 6));
    expect(reads).toBe(0);
    // Row 1: left-symmetric, P on member 4 − 1 − 1 = 2, data 0, 1, 2 on members 3, 0, 1.
    const rowAt = POOL_LABEL_AREA_BYTES + pool.mirroredPrefixBytes + CHUNK;
    const row = pattern(pool.rowBytes, 6);
    expect((await raws[3]!.read(rowAt, CHUNK)).equals(row.subarray(0, CHUNK))).toBe(true);
    expect((await raws[0]!.read(rowAt, CHUNK)).equals(row.subarray(CHUNK, 2 * CHUNK))).toBe(true);
    expect((await raws[1]!.read(rowAt, CHUNK)).equals(row.subarray(2 * CHUNK))).toBe(true);
  });

  it('concurrent writes to different bytes of the same rows keep every row\'s parity right, and degraded reads among them are right', async () => {
    const { raws, gates, pool } = await rig('parity2', 5);
    jitter(gates, 5);
    const model = Buffer.alloc(pool.sizeBytes);
    const writes: Promise<void>[] = [];
    // Pieces of 300..1500 bytes tiling rows 0..3, issued all at once in a shuffled order.
    const pieces: [number, number][] = [];
    for (let at = pool.mirroredPrefixBytes, k = 0; at < pool.mirroredPrefixBytes + 4 * pool.rowBytes; k++) {
      const len = Math.min(300 + ((k * 577) % 1200), pool.mirroredPrefixBytes + 4 * pool.rowBytes - at);
      pieces.push([at, len]);
      at += len;
    }
    pieces.sort((a, b) => ((a[0] * 7919) % 1009) - ((b[0] * 7919) % 1009));
    for (const [at, len] of pieces) {
      const data = pattern(len, at);
      data.copy(model, at);
      writes.push(pool.write(at, data));
    }
    await Promise.all(writes);
    expect((await pool.scrub({ repair: false })).mismatches).toBe(0);
    for (const down of [[0, 1], [2, 4], [3]]) expect((await (await copyWithDown(raws, down)).read(0, pool.sizeBytes)).equals(model)).toBe(true);
    // Degraded: every other piece is written again while the ones between are read, rebuilt
    // from rows whose other bytes are changing (a read rebuilding a chunk holds the row's lock).
    gates[1]!.broken = true;
    await pool.sync();
    const ops: Promise<void>[] = [];
    pieces.forEach(([at, len], k) => {
      if (k % 2 === 0) {
        const data = pattern(len, at + 1);
        data.copy(model, at);
        ops.push(pool.write(at, data));
      } else {
        const want = Buffer.from(model.subarray(at, at + len));
        ops.push(pool.read(at, len).then((got) => expect(got.equals(want)).toBe(true)));
      }
    });
    await Promise.all(ops);
    expect((await pool.read(0, pool.sizeBytes)).equals(model)).toBe(true);
  });

  for (const layout of ['parity', 'parity2'] as const) {
    it(`${layout}: more failures than it survives give IO_ERROR naming the members`, async () => {
      const n = layout === 'parity' ? 3 : 4;
      const { gates, pool } = await rig(layout, n);
      await pool.write(pool.mirroredPrefixBytes, pattern(pool.rowBytes, 1));
      for (let s = 0; s <= parities(layout); s++) gates[s]!.broken = true;
      expect(await code(pool.write(pool.mirroredPrefixBytes, pattern(pool.rowBytes, 2)))).toMatch(/^IO_ERROR: pool .* survives .*dev0: [a-z ]*write failed.*dev1: [a-z ]*write failed/);
      expect(await code(pool.read(pool.mirroredPrefixBytes, 100))).toMatch(/^IO_ERROR: pool .*read impossible/);
      expect(pool.status().failuresTolerated).toBe(0);
      expect(await code(ParityDevice.open(gated(gates.map((g) => g.inner)).members))).toMatch(/^IO_ERROR: pool .*open impossible.*stale/);
    });
  }
});

describe('parity pool: create and open', () => {
  it('refuses too few devices, a chunk not of 4 KiB blocks, a prefix not of whole rows, and devices too small', async () => {
    const devs = (n: number, bytes = 1 << 20): PoolMember[] => Array.from({ length: n }, (_, i) => ({ name: `dev${i}`, device: new MemoryDevice(bytes) }));
    expect(await code(ParityDevice.create(devs(2), { layout: 'parity', chunkBytes: CHUNK, mirroredPrefixBytes: 0 }))).toMatch(/^BAD_CONFIG: a parity pool needs 3/);
    expect(await code(ParityDevice.create(devs(3), { layout: 'parity2', chunkBytes: CHUNK, mirroredPrefixBytes: 0 }))).toMatch(/^BAD_CONFIG: a parity2 pool needs 4/);
    expect(await code(ParityDevice.create(devs(3), { layout: 'parity', chunkBytes: 1000, mirroredPrefixBytes: 0 }))).toMatch(/^BAD_CONFIG: chunkBytes/);
    expect(await code(ParityDevice.create(devs(3), { layout: 'parity', chunkBytes: CHUNK, mirroredPrefixBytes: CHUNK }))).toMatch(/^BAD_CONFIG: mirroredPrefixBytes must be a multiple of the row \(8192/);
    expect(await code(ParityDevice.create(devs(3, POOL_LABEL_AREA_BYTES + 3 * CHUNK), { layout: 'parity', chunkBytes: CHUNK, mirroredPrefixBytes: 4 * CHUNK }))).toMatch(/^BAD_CONFIG: the smallest device/);
    const p = await ParityDevice.create(devs(5), { layout: 'parity2', chunkBytes: 2 * CHUNK, mirroredPrefixBytes: 6 * CHUNK });
    expect(p.rowBytes).toBe(6 * CHUNK);
    const rows = Math.floor((1 << 20) - POOL_LABEL_AREA_BYTES - 6 * CHUNK) / (2 * CHUNK);
    expect(p.sizeBytes).toBe(6 * CHUNK + Math.floor(rows) * 6 * CHUNK);
    expect(p.status()).toMatchObject({ layout: 'parity2', chunkBytes: 2 * CHUNK, generation: 1, degraded: false, failuresTolerated: 2, rebuild: null });
  });

  it('labels record the chunk and prefix; mirror labels still read as chunk 0, prefix 0', async () => {
    const { raws, pool } = await rig('parity2', 5);
    expect(await labelOf(raws[3]!)).toMatchObject({ layout: 'parity2', slot: 3, devices: 5, generation: 1, chunkBytes: CHUNK, mirroredPrefixBytes: pool.mirroredPrefixBytes });
    const m = [new MemoryDevice(1 << 20), new MemoryDevice(1 << 20)];
    await MirrorDevice.create(m.map((device, i) => ({ name: `m${i}`, device })), POOL);
    expect(await labelOf(m[0]!)).toMatchObject({ layout: 'mirror', chunkBytes: 0, mirroredPrefixBytes: 0 });
    expect(await code(ParityDevice.open(m.map((device, i) => ({ name: `m${i}`, device }))))).toMatch(/^STORE_MISMATCH: device m0 is labelled for a mirror pool/);
  });

  it('refuses another pool, a reordered or missing device, an unlabelled one and a disagreeing chunk; a stale one opens stale', async () => {
    const a = await rig('parity', 3);
    const b = await rig('parity', 3);
    // b's pool id differs
    const other = gated(b.raws.map((d) => new MemoryDevice(d.snapshot())));
    await ParityDevice.create(other.members, { layout: 'parity', chunkBytes: CHUNK, mirroredPrefixBytes: 0, poolId: '9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b' });
    const m = a.members;
    expect(await code(ParityDevice.open([m[0]!, m[1]!, other.members[2]!]))).toMatch(/^STORE_MISMATCH: device dev2 belongs to pool 9e8d7c6b/);
    expect(await code(ParityDevice.open([m[1]!, m[0]!, m[2]!]))).toMatch(/^STORE_MISMATCH: device dev1 fills slot 1 of the pool, it was given as slot 0/);
    expect(await code(ParityDevice.open([m[0]!, m[1]!]))).toMatch(/^STORE_MISMATCH: device dev0 is one of a pool of 3 devices, 2 were given/);
    const blank = { name: 'blank', device: new MemoryDevice(a.raws[0]!.sizeBytes) };
    expect(await code(ParityDevice.open([m[0]!, m[1]!, blank]))).toMatch(/^STORE_MISMATCH: device blank: no pool label/);
    const odd = new MemoryDevice(a.raws[2]!.snapshot());
    const l = await labelOf(odd);
    await odd.write(4096, encodePoolLabel({ ...l, chunkBytes: 2 * CHUNK }));
    expect(await code(ParityDevice.open([m[0]!, m[1]!, { name: 'odd', device: odd }]))).toMatch(/^STORE_MISMATCH: device odd is labelled with chunk 8192/);
    // dev1 fails: the others move to generation 2, and dev1 opens stale.
    a.gates[1]!.broken = true;
    await a.pool.write(0, Buffer.alloc(10, 1));
    a.gates[1]!.broken = false;
    expect((await labelOf(a.raws[0]!)).generation).toBe(2);
    const again = await ParityDevice.open(m);
    expect(again.status().members.map((s) => s.state)).toEqual(['healthy', 'stale', 'healthy']);
    expect(again.status().members[1]!.reason).toMatch(/stale: pool generation 1, the others are at 2/);
    expect((await again.read(0, 10)).equals(Buffer.alloc(10, 1))).toBe(true);
  });
});

describe('parity pool: a torn row', () => {
  for (const layout of ['parity', 'parity2'] as const) {
    it(`${layout}: data written without its parity is found by scrub, and a degraded read is right only after repairRange`, async () => {
      const n = layout === 'parity' ? 4 : 5;
      const { raws, pool } = await rig(layout, n);
      const model = pattern(pool.sizeBytes, 9);
      await pool.write(0, model);
      // Row 2's data chunk 0 is rewritten on its member alone: a writer that died before the parity.
      const r = 2;
      const pSlot = n - 1 - (r % n);
      const slotOf = (i: number): number => (pSlot + parities(layout) + i) % n;
      const rowStart = pool.mirroredPrefixBytes + r * pool.rowBytes;
      const torn = pattern(CHUNK, 77);
      await raws[slotOf(0)]!.write(POOL_LABEL_AREA_BYTES + pool.mirroredPrefixBytes + r * CHUNK, torn);
      torn.copy(model, rowStart);
      // The data reads back as written...
      expect((await pool.read(rowStart, pool.rowBytes)).equals(model.subarray(rowStart, rowStart + pool.rowBytes))).toBe(true);
      // ...but chunk 1 rebuilt from the others (its member lost) is wrong.
      const chunk1 = (): Buffer => model.subarray(rowStart + CHUNK, rowStart + 2 * CHUNK);
      expect((await (await copyWithDown(raws, [slotOf(1)])).read(rowStart + CHUNK, CHUNK)).equals(chunk1())).toBe(false);
      expect(await pool.scrub({ repair: false })).toEqual({ bytesChecked: pool.sizeBytes, mismatches: 1, repaired: 0, unreadable: 0, unrepaired: 1 });
      await pool.repairRange(rowStart + 100, 10);
      expect((await pool.scrub({ repair: false })).mismatches).toBe(0);
      expect((await (await copyWithDown(raws, [slotOf(1)])).read(rowStart + CHUNK, CHUNK)).equals(chunk1())).toBe(true);
      if (layout === 'parity2') {
        expect((await (await copyWithDown(raws, [slotOf(1), pSlot])).read(rowStart + CHUNK, CHUNK)).equals(chunk1())).toBe(true);
      }
    });
  }

  it('scrub with repair rewrites a wrong parity and a disagreeing prefix copy, counting each', async () => {
    const { raws, pool } = await rig('parity2', 5, 8, 2);
    await pool.write(0, pattern(pool.sizeBytes, 3));
    await raws[2]!.write(POOL_LABEL_AREA_BYTES + pool.rowBytes + 5, Buffer.from('x')); // prefix copy on dev2, unit 1
    await raws[0]!.write(POOL_LABEL_AREA_BYTES + pool.mirroredPrefixBytes + 4 * CHUNK + 9, Buffer.from('y')); // row 4, any piece
    await raws[4]!.write(POOL_LABEL_AREA_BYTES + pool.mirroredPrefixBytes + 7 * CHUNK, Buffer.from('z')); // row 7
    const seen: number[] = [];
    const first = await pool.scrub({ repair: true, onProgress: (done) => seen.push(done) });
    expect(first).toEqual({ bytesChecked: pool.sizeBytes, mismatches: 3, repaired: 3, unreadable: 0, unrepaired: 0 });
    expect(seen.at(-1)).toBe(pool.sizeBytes);
    expect((await pool.scrub({ repair: false })).mismatches).toBe(0);
    // Repair follows the data as it stands: the prefix from the first member, the row from its data chunks.
    const c0 = await raws[0]!.read(POOL_LABEL_AREA_BYTES, pool.mirroredPrefixBytes);
    for (const d of raws) expect((await d.read(POOL_LABEL_AREA_BYTES, pool.mirroredPrefixBytes)).equals(c0)).toBe(true);
  });

  it('scrub while writes go on finds no mismatch: it checks each row under the row\'s lock', async () => {
    const { gates, pool } = await rig('parity2', 5, 12);
    jitter(gates, 7);
    let stop = false;
    let k = 0;
    const writer = (async () => {
      while (!stop) {
        const [offset, length] = place({ near: 'row', at: k * 31, delta: (k * 97) % 2000, length: 1 + ((k * 1543) % pool.rowBytes) }, pool);
        await pool.write(offset, pattern(length, k++));
      }
    })();
    const reports = [];
    for (let i = 0; i < 5; i++) reports.push(await pool.scrub({ repair: false }));
    stop = true;
    await writer;
    expect(k).toBeGreaterThan(20);
    for (const r of reports) expect(r).toEqual({ bytesChecked: pool.sizeBytes, mismatches: 0, repaired: 0, unreadable: 0, unrepaired: 0 });
  });

  it('scrub keeps to its rate and stops when aborted', async () => {
    const { pool } = await rig('parity', 3, 16);
    const ac = new AbortController();
    const t0 = performance.now();
    const run = pool.scrub({ repair: false, rateBytesPerSec: 400_000, signal: ac.signal, onProgress: (done) => done >= 10 * pool.rowBytes && ac.abort() });
    expect(await code(run)).toMatch(/abort/i);
    // 10 rows of 2 chunks read plus the prefix: about 90 KB at 400 KB/s.
    expect(performance.now() - t0).toBeGreaterThan(150);
  });
});

describe('parity pool: replace and refresh', () => {
  for (const [layout, n] of [
    ['parity', 4],
    ['parity2', 5],
  ] as const) {
    it(`${layout} over ${n}: a failed member is replaced while writes go on; then scrub finds nothing and any member may be lost`, async () => {
      const { raws, gates, pool } = await rig(layout, n, 24, 2);
      const model = pattern(pool.sizeBytes, 11);
      await pool.write(0, model);
      gates[1]!.broken = true;
      await pool.write(0, model.subarray(0, 100));
      expect(pool.status().members[1]!.state).toBe('failed');
      const fresh = new MemoryDevice(raws[1]!.sizeBytes);
      const freshGate = new Gate(fresh);
      jitter([...gates, freshGate], 9);
      let rebuilding = 0;
      let stop = false;
      const replacing = pool
        .replace(1, { name: 'new1', device: freshGate }, {
          rateBytesPerSec: 0,
          onProgress: () => {
            const st = pool.status();
            if (st.rebuild !== null && st.members[1]!.state === 'rebuilding') rebuilding++;
          },
        })
        .finally(() => (stop = true));
      let k = 0;
      const writer = (async () => {
        while (!stop || k < 20) {
          const [offset, length] = place({ near: k % 2 === 0 ? 'row' : 'any', at: k * 7919, delta: (k * 37) % 500, length: 1 + ((k * 4099) % (3 * pool.rowBytes)) }, pool);
          const data = pattern(length, 1000 + k);
          await pool.write(offset, data);
          data.copy(model, offset);
          const [ro, rl] = place({ near: 'chunk', at: k * 104729, delta: (k * 53) % 900 - 450, length: 1 + ((k * 8191) % (2 * pool.rowBytes)) }, pool);
          expect((await pool.read(ro, rl)).equals(model.subarray(ro, ro + rl))).toBe(true);
          k++;
        }
      })();
      await Promise.all([replacing, writer]);
      expect(rebuilding).toBeGreaterThan(10);
      // 2: the member failed; 3: its rebuild announced; 4: the new one named in.
      expect(pool.status()).toMatchObject({ degraded: false, rebuild: null, generation: 4, failuresTolerated: parities(layout) });
      expect(pool.status().members[1]).toMatchObject({ name: 'new1', state: 'healthy' });
      expect((await labelOf(fresh)).generation).toBe(4);
      expect(await pool.scrub({ repair: false })).toMatchObject({ mismatches: 0, unreadable: 0 });
      expect((await pool.read(0, pool.sizeBytes)).equals(model)).toBe(true);
      const now = raws.map((d, i) => (i === 1 ? fresh : d));
      for (let s = 0; s < n; s++) expect((await (await copyWithDown(now, [s])).read(0, pool.sizeBytes)).equals(model)).toBe(true);
      if (layout === 'parity2') for (let s = 0; s < n; s++) expect((await (await copyWithDown(now, [s, (s + 1) % n])).read(0, pool.sizeBytes)).equals(model)).toBe(true);
    });
  }

  it('a rebuild that stops part way leaves the new member stale, at open too', async () => {
    const { raws, gates, members, pool } = await rig('parity', 3, 16);
    gates[2]!.broken = true;
    await pool.write(0, Buffer.alloc(10, 3));
    const fresh = new MemoryDevice(raws[2]!.sizeBytes);
    const ac = new AbortController();
    expect(await code(pool.replace(2, { name: 'new2', device: fresh }, { signal: ac.signal, onProgress: (done) => done > pool.sizeBytes / 2 && ac.abort() }))).toMatch(/abort/i);
    expect(pool.status().members[2]).toMatchObject({ name: 'new2', state: 'stale' });
    expect((await labelOf(fresh)).generation).toBe(0);
    const again = await ParityDevice.open([members[0]!, members[1]!, { name: 'new2', device: fresh }]);
    expect(again.status().members[2]).toMatchObject({ state: 'stale', reason: expect.stringContaining('did not finish') });
    await again.replace(2, { name: 'new2', device: fresh });
    expect(again.status().degraded).toBe(false);
    expect((await again.read(0, 10)).equals(Buffer.alloc(10, 3))).toBe(true);
  });

  it("refresh: a failure one pool object met is seen by another's refresh, which stops using the member", async () => {
    const { raws, gates, pool: a } = await rig('parity2', 5);
    const b = await ParityDevice.open(raws.map((device, i) => ({ name: `dev${i}`, device })));
    const model = pattern(a.sizeBytes, 21);
    await a.write(0, model);
    // a's own wrapper of dev3 breaks: a marks it failed and moves the pool to generation 2.
    gates[3]!.broken = true;
    await a.write(0, model);
    expect(a.generation).toBe(2);
    expect(b.generation).toBe(1);
    // dev3's bytes go bad; b, still trusting it, would read them.
    await raws[3]!.write(POOL_LABEL_AREA_BYTES, Buffer.alloc(raws[3]!.sizeBytes - POOL_LABEL_AREA_BYTES, 0xee));
    expect(await b.refresh()).toBe(2);
    expect(b.status().members[3]).toMatchObject({ state: 'stale', reason: expect.stringMatching(/generation 1, the others are at 2/) });
    for (let i = 0; i < 8; i++) expect((await b.read(0, b.sizeBytes)).equals(model)).toBe(true);
    // a puts dev3 back and rebuilds it; b's refresh finds it current and uses it again.
    gates[3]!.broken = false;
    // 3: the rebuild announced (b has no way to open devices by name, but dev3 is its own); 4: dev3 named in.
    await a.replace(3, { name: 'dev3', device: gates[3]! });
    expect(await b.refresh()).toBe(4);
    expect(b.status().degraded).toBe(false);
    for (let i = 0; i < 8; i++) expect((await b.read(0, b.sizeBytes)).equals(model)).toBe(true);
  });

  it('moving off a healthy member: it leaves the pool (generation 2), the new one joins (3), and the old one opens stale', async () => {
    const { raws, members, pool } = await rig('parity', 3);
    const model = pattern(pool.sizeBytes, 31);
    await pool.write(0, model);
    const fresh = new MemoryDevice(raws[0]!.sizeBytes);
    await pool.replace(0, { name: 'new0', device: fresh });
    expect(pool.generation).toBe(3);
    expect((await pool.read(0, pool.sizeBytes)).equals(model)).toBe(true);
    expect((await ParityDevice.open(members)).status().members[0]).toMatchObject({ state: 'stale', reason: expect.stringMatching(/generation 1, the others are at 3/) });
    expect((await (await copyWithDown([fresh, raws[1]!, raws[2]!], [1])).read(0, pool.sizeBytes)).equals(model)).toBe(true);
    expect(await code(pool.replace(1, { name: 'small', device: new MemoryDevice(4096 * 4) }))).toMatch(/^BAD_CONFIG: device small holds/);
  });

  it('a member whose label cannot be read at open opens failed, and the pool serves without it', async () => {
    const { gates, members, pool } = await rig('parity2', 4);
    const model = pattern(pool.sizeBytes, 41);
    await pool.write(0, model);
    gates[2]!.broken = true;
    const again = await ParityDevice.open(members);
    expect(again.status().members[2]).toMatchObject({ state: 'failed', reason: expect.stringContaining('label read failed') });
    expect((await again.read(0, again.sizeBytes)).equals(model)).toBe(true);
  });
});

/** Write the label `fields` (with its own generation) to the copy it goes to on `d`, as another pool object's move would. */
async function putLabel(d: Device, fields: PoolLabel): Promise<void> {
  await d.write(labelCopyFor(fields.generation) * 4096, encodePoolLabel(fields));
}

describe('parity pool: labels name the members out (two pool objects moving the generation at once)', () => {
  it("a refresh during another object's half-written move does not judge the members its label write has not reached stale", async () => {
    const { raws, pool: a } = await rig('parity2', 4);
    const b = await ParityDevice.open(raws.map((device, i) => ({ name: `dev${i}`, device })));
    const model = pattern(a.sizeBytes, 51);
    await a.write(0, model);
    const l0 = await labelOf(raws[0]!);
    // Another object fails dev1 and has written generation 2 (dev1 out) to dev0 only so far.
    await putLabel(raws[0]!, { ...l0, generation: 2, failedSlots: [1], currentSince: 1 });
    expect(await b.refresh()).toBe(2);
    expect(b.status().members.map((m) => m.state)).toEqual(['healthy', 'stale', 'healthy', 'healthy']);
    expect(b.status().failuresTolerated).toBe(1);
    for (let i = 0; i < 4; i++) expect((await b.read(0, b.sizeBytes)).equals(model)).toBe(true);
    // So does an open at that moment.
    const c = await ParityDevice.open(raws.map((device, i) => ({ name: `dev${i}`, device })));
    expect(c.status().members.map((m) => m.state)).toEqual(['healthy', 'stale', 'healthy', 'healthy']);
    expect(c.generation).toBe(2);
    // dev0 breaking as well leaves a parity2 pool serving (two out, not three).
    await raws[0]!.write(POOL_LABEL_AREA_BYTES, Buffer.alloc(64, 0xee));
    const { gates, members } = gated(raws);
    const d = await ParityDevice.open(members);
    gates[0]!.broken = true;
    expect((await d.read(0, d.sizeBytes)).subarray(64).equals(model.subarray(64))).toBe(true);
    expect(d.status().members.map((m) => m.state)).toEqual(['failed', 'stale', 'healthy', 'healthy']);
  });

  it('a member that missed writes (named out by the newest labels) opens stale, however its own label reads', async () => {
    const { raws, gates, pool } = await rig('parity', 3);
    const model = pattern(pool.sizeBytes, 52);
    gates[1]!.broken = true;
    await pool.write(0, model);
    expect(pool.generation).toBe(2);
    expect(await labelOf(raws[0]!)).toMatchObject({ generation: 2, failedSlots: [1], failedSlotsRecorded: true, currentSince: 1 });
    const again = await ParityDevice.open(raws.map((device, i) => ({ name: `dev${i}`, device })));
    expect(again.status().members[1]).toMatchObject({ state: 'stale', reason: 'stale: pool generation 1, the others are at 2' });
    // Its label at the newest generation too (another object wrote it there before it was named out): still out.
    const l1 = await labelOf(raws[1]!);
    await putLabel(raws[1]!, { ...l1, generation: 2, currentSince: 1 });
    const third = await ParityDevice.open(raws.map((device, i) => ({ name: `dev${i}`, device })));
    expect(third.status().members[1]).toMatchObject({ state: 'stale', reason: expect.stringContaining('named out of the pool at generation 2') });
    expect((await third.read(0, third.sizeBytes)).equals(model)).toBe(true);
  });

  it('two objects failing different members at once: the labels name both, and a later move keeps the slot another object named', async () => {
    const { raws, gates: aGates, pool: a } = await rig('parity2', 5);
    const { gates: bGates, members: bMembers } = gated(raws);
    const b = await ParityDevice.open(bMembers);
    const model = pattern(a.sizeBytes, 53);
    await a.write(0, model);
    // Each object loses a different member on its own path, at once.
    aGates[1]!.broken = true;
    bGates[2]!.broken = true;
    await Promise.all([a.sync(), b.sync()]);
    const fresh = await ParityDevice.open(raws.map((device, i) => ({ name: `dev${i}`, device })));
    expect(fresh.status().members.map((m) => m.state)).toEqual(['healthy', 'stale', 'stale', 'healthy', 'healthy']);
    expect((await fresh.read(0, fresh.sizeBytes)).equals(model)).toBe(true);
  });

  it("a move reads the labels first: it names the slot another object's newer labels name, and marks that member stale here", async () => {
    const { raws, gates, pool: a } = await rig('parity2', 4);
    const model = pattern(a.sizeBytes, 54);
    await a.write(0, model);
    // Another object named dev1 out at generation 2, on dev0 and dev3 so far; a has not refreshed.
    for (const s of [0, 3]) await putLabel(raws[s]!, { ...(await labelOf(raws[s]!)), generation: 2, failedSlots: [1], currentSince: 1 });
    gates[2]!.broken = true;
    await a.write(0, model);
    expect(a.generation).toBe(3);
    expect(a.status().members.map((m) => m.state)).toEqual(['healthy', 'stale', 'failed', 'healthy']);
    for (const s of [0, 3]) expect(await labelOf(raws[s]!)).toMatchObject({ generation: 3, failedSlots: [1, 2] });
    const fresh = await ParityDevice.open(raws.map((device, i) => ({ name: `dev${i}`, device })));
    expect(fresh.status().members.map((m) => m.state)).toEqual(['healthy', 'stale', 'stale', 'healthy']);
    expect((await fresh.read(0, fresh.sizeBytes)).equals(model)).toBe(true);
  });

  it('a move whose labels another object overtook, from labels read before them, moves on again until the newest name its slot', async () => {
    const { raws, gates, pool: a } = await rig('parity', 4);
    const model = pattern(a.sizeBytes, 55);
    await a.write(0, model);
    // When a's label write reaches dev0, another object's generation 3 (naming nothing) lands on every member.
    const inner = gates[0]!;
    const write = inner.write.bind(inner);
    let overtaken = false;
    inner.write = async (offset: number, data: Buffer): Promise<void> => {
      await write(offset, data);
      if (offset < POOL_LABEL_AREA_BYTES && !overtaken) {
        overtaken = true;
        for (const d of raws) await putLabel(d, { ...(await labelOf(d)), generation: 3, failedSlots: [], currentSince: 1 });
      }
    };
    gates[1]!.broken = true;
    await a.write(0, model);
    expect(overtaken).toBe(true);
    expect(a.generation).toBe(4);
    const fresh = await ParityDevice.open(raws.map((device, i) => ({ name: `dev${i}`, device })));
    expect(fresh.status().members.map((m) => m.state)).toEqual(['healthy', 'stale', 'healthy', 'healthy']);
    expect((await fresh.read(0, fresh.sizeBytes)).equals(model)).toBe(true);
  });

  it('labels written before the failed-slot set (byte 9 and bytes 56..60 zero) are judged by generation, as before', async () => {
    const { raws, pool } = await rig('parity', 3);
    const model = pattern(pool.sizeBytes, 56);
    await pool.write(0, model);
    // An older build's labels: dev0 and dev2 at generation 2, dev1 left at 1.
    for (const s of [0, 2]) await raws[s]!.write(labelCopyFor(2) * 4096, oldStyle(encodePoolLabel({ ...(await labelOf(raws[s]!)), generation: 2 })));
    expect(newestPoolLabel(await raws[0]!.read(0, 64), await raws[0]!.read(4096, 64))).toMatchObject({ generation: 2, failedSlots: [], failedSlotsRecorded: false });
    const again = await ParityDevice.open(raws.map((device, i) => ({ name: `dev${i}`, device })));
    expect(again.status().members.map((m) => m.state)).toEqual(['healthy', 'stale', 'healthy']);
    expect((await again.read(0, again.sizeBytes)).equals(model)).toBe(true);
  });

  it('refuses more than 32 members at create, naming the count', async () => {
    const many = Array.from({ length: 33 }, (_, i) => ({ name: `dev${i}`, device: new MemoryDevice(memberBytes('parity', 33, 2, 1)) }));
    expect(await code(ParityDevice.create(many, { layout: 'parity', chunkBytes: CHUNK, mirroredPrefixBytes: 0 }))).toMatch(/^BAD_CONFIG: a parity pool needs 3 to 32 devices, got 33/);
  });
});

/** The label as a build before the failed-slot set wrote it: flags, since-delta and the set zero, CRC redone. */
function oldStyle(label: Buffer): Buffer {
  const b = Buffer.from(label);
  b.fill(0, 9, 12);
  b.fill(0, 56, 60);
  b.writeUInt32LE(crc32c(b.subarray(0, 60)), 60);
  return b;
}
