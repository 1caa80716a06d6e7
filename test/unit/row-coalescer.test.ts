// Page writes gathered per parity row (src/store/row-coalescer.ts): writes
// of one turn to one row become one pool write where they touch; writes
// asked for while the row's batch is under way wait and go together after
// it; a write resolves only once its pool write did; overlapping writes land
// in the order asked; a failed pool write fails every write of its batch.
// Then the page store over a real parity pool: a destage run is one row
// update per row, reads back, and a failing pool fails every page of it.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isPagepairError } from '../../src/protocol/errors.js';
import { computeGeometry, stripeShape } from '../../src/store/layout.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { PageStore } from '../../src/store/page-store.js';
import { ParityDevice, type ParityLayout } from '../../src/store/parity-device.js';
import { POOL_LABEL_AREA_BYTES } from '../../src/store/pool-label.js';
import { RowCoalescer, type PartsWriter } from '../../src/store/row-coalescer.js';
import type { Device, PageLocation } from '../../src/store/types.js';

const ROW = 1000;

/** A pool write as the fake pool received it, settled by the test. */
interface Call {
  offset: number;
  bytes: Buffer;
  settled: boolean;
  resolve(): void;
  reject(err: unknown): void;
}

/** Records every writeParts call; bytes land in `bytes` when the test resolves the call. */
class FakePool implements PartsWriter {
  readonly calls: Call[] = [];
  readonly bytes = Buffer.alloc(4 * ROW);

  writeParts(offset: number, parts: readonly Buffer[]): Promise<void> {
    return new Promise((resolve, reject) => {
      const bytes = Buffer.concat(parts);
      const call: Call = {
        offset,
        bytes,
        settled: false,
        resolve: () => {
          call.settled = true;
          bytes.copy(this.bytes, offset);
          resolve();
        },
        reject: (err) => {
          call.settled = true;
          reject(err);
        },
      };
      this.calls.push(call);
    });
  }

  open(): Call[] {
    return this.calls.filter((c) => !c.settled);
  }
}

/** A coalescer whose "end of the turn" comes when the test says (turn()). */
function rig(): { pool: FakePool; rc: RowCoalescer; turn: () => void } {
  const pool = new FakePool();
  let due: (() => void)[] = [];
  const rc = new RowCoalescer(pool, ROW, (fn) => due.push(fn));
  return {
    pool,
    rc,
    turn: () => {
      const now = due;
      due = [];
      for (const fn of now) fn();
    },
  };
}

/** Lets promise continuations run. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Tracks a promise's outcome without awaiting it. */
function watch(p: Promise<void>): { state: 'pending' | 'ok' | 'failed'; err: unknown } {
  const w = { state: 'pending' as 'pending' | 'ok' | 'failed', err: undefined as unknown };
  p.then(
    () => (w.state = 'ok'),
    (err: unknown) => {
      w.state = 'failed';
      w.err = err;
    },
  );
  return w;
}

const fill = (n: number, byte: number): Buffer => Buffer.alloc(n, byte);

describe('RowCoalescer', () => {
  it('writes of one turn to one row that touch leave as one pool write, and none resolves before it does', async () => {
    const { pool, rc, turn } = rig();
    const ws = [
      watch(rc.writeParts(100, [fill(10, 1), fill(20, 2)])),
      watch(rc.writeParts(130, [fill(50, 3)])),
      watch(rc.writeParts(180, [fill(20, 4)])),
    ];
    expect(pool.calls).toHaveLength(0);
    turn();
    expect(pool.calls).toHaveLength(1);
    expect(pool.calls[0]!.offset).toBe(100);
    expect(pool.calls[0]!.bytes).toEqual(Buffer.concat([fill(10, 1), fill(20, 2), fill(50, 3), fill(20, 4)]));
    await settle();
    expect(ws.map((w) => w.state)).toEqual(['pending', 'pending', 'pending']);
    pool.calls[0]!.resolve();
    await settle();
    expect(ws.map((w) => w.state)).toEqual(['ok', 'ok', 'ok']);
    expect(rc.counters).toEqual({ writes: 3, batches: 1, poolWrites: 1 });
  });

  it('writes to one row that do not touch go out beside each other in the same batch', () => {
    const { pool, rc, turn } = rig();
    void rc.writeParts(500, [fill(10, 2)]);
    void rc.writeParts(0, [fill(10, 1)]);
    turn();
    expect(pool.calls.map((c) => c.offset)).toEqual([0, 500]);
    expect(rc.counters.batches).toBe(1);
  });

  it('writes asked for while the row is being written wait, then leave together as soon as it is done', async () => {
    const { pool, rc, turn } = rig();
    const a = watch(rc.writeParts(0, [fill(100, 1)]));
    turn();
    const b = watch(rc.writeParts(100, [fill(100, 2)]));
    const c = watch(rc.writeParts(200, [fill(100, 3)]));
    turn();
    // Another row is not held by this one.
    const other = watch(rc.writeParts(ROW, [fill(10, 9)]));
    turn();
    expect(pool.calls.map((x) => x.offset)).toEqual([0, ROW]);
    pool.calls[0]!.resolve();
    await settle();
    expect(a.state).toBe('ok');
    // No turn needed: what gathered meanwhile goes when the batch before it is done.
    expect(pool.calls.map((x) => x.offset)).toEqual([0, ROW, 100]);
    expect(pool.calls[2]!.bytes).toEqual(Buffer.concat([fill(100, 2), fill(100, 3)]));
    pool.calls[2]!.resolve();
    pool.calls[1]!.resolve();
    await settle();
    expect([b.state, c.state, other.state]).toEqual(['ok', 'ok', 'ok']);
  });

  it('overlapping writes land in the order they were asked for, in one batch and across batches', async () => {
    const { pool, rc, turn } = rig();
    void rc.writeParts(0, [fill(100, 0xaa)]);
    void rc.writeParts(50, [fill(100, 0xbb)]);
    void rc.writeParts(40, [fill(20, 0xcc)]);
    turn();
    expect(pool.calls).toHaveLength(1);
    const want = Buffer.concat([fill(40, 0xaa), fill(20, 0xcc), fill(90, 0xbb)]);
    expect(pool.calls[0]!.offset).toBe(0);
    expect(pool.calls[0]!.bytes).toEqual(want);
    // A later write over the same bytes is not sent while the earlier one is under way.
    void rc.writeParts(0, [fill(10, 0xdd)]);
    turn();
    expect(pool.calls).toHaveLength(1);
    pool.calls[0]!.resolve();
    await settle();
    expect(pool.calls).toHaveLength(2);
    pool.calls[1]!.resolve();
    await settle();
    expect(pool.bytes.subarray(0, 150)).toEqual(Buffer.concat([fill(10, 0xdd), want.subarray(10)]));
  });

  it('a failed pool write fails every write of its batch with its error, and the row goes on', async () => {
    const { pool, rc, turn } = rig();
    const ws = [watch(rc.writeParts(0, [fill(10, 1)])), watch(rc.writeParts(10, [fill(10, 2)])), watch(rc.writeParts(500, [fill(10, 3)]))];
    turn();
    expect(pool.calls).toHaveLength(2);
    const later = watch(rc.writeParts(0, [fill(10, 4)]));
    const err = new Error('EIO: member gone');
    // The run at 500 landed; the one at 0 failed: the batch failed, for every caller in it.
    pool.calls[1]!.resolve();
    pool.calls[0]!.reject(err);
    await settle();
    expect(ws.map((w) => w.state)).toEqual(['failed', 'failed', 'failed']);
    for (const w of ws) expect(w.err).toBe(err);
    expect(pool.calls).toHaveLength(3);
    pool.calls[2]!.resolve();
    await settle();
    expect(later.state).toBe('ok');
  });

  it('a write spanning rows is written per row and settles when all are; it fails when any row fails', async () => {
    const { pool, rc, turn } = rig();
    const data = Buffer.from(Array.from({ length: 1500 }, (_, i) => i & 0xff));
    const w = watch(rc.writeParts(700, [data.subarray(0, 100), data.subarray(100)]));
    turn();
    expect(pool.calls.map((c) => [c.offset, c.bytes.length])).toEqual([
      [700, 300],
      [1000, 1000],
      [2000, 200],
    ]);
    expect(Buffer.concat(pool.calls.map((c) => c.bytes))).toEqual(data);
    pool.calls[0]!.resolve();
    pool.calls[1]!.resolve();
    await settle();
    expect(w.state).toBe('pending');
    pool.calls[2]!.resolve();
    await settle();
    expect(w.state).toBe('ok');

    const err = new Error('EIO');
    const v = watch(rc.writeParts(900, [fill(200, 7)]));
    turn();
    pool.open()[0]!.reject(err);
    pool.open()[0]!.resolve();
    await settle();
    expect(v.state).toBe('failed');
    expect(v.err).toBe(err);
  });

  it('drain waits until every write asked for has settled', async () => {
    const { pool, rc, turn } = rig();
    await rc.drain();
    void rc.writeParts(0, [fill(10, 1)]).catch(() => undefined);
    const drained = watch(rc.drain());
    turn();
    await settle();
    expect(drained.state).toBe('pending');
    pool.calls[0]!.reject(new Error('EIO'));
    await settle();
    expect(drained.state).toBe('ok');
  });

  it('with the pool settling its writes in any order, each write is on the pool when it resolves and the end state is the writes in the order asked', async () => {
    const writeArb = fc.record({ row: fc.nat({ max: 2 }), at: fc.nat({ max: ROW - 1 }), length: fc.integer({ min: 1, max: 400 }), turnAfter: fc.boolean() });
    await fc.assert(
      fc.asyncProperty(fc.array(writeArb, { minLength: 1, maxLength: 60 }), fc.array(fc.nat(), { minLength: 1, maxLength: 200 }), async (writes, picks) => {
        const { pool, rc, turn } = rig();
        const model = Buffer.alloc(pool.bytes.length);
        const checks: Promise<void>[] = [];
        let pick = 0;
        /** Resolve one open pool write, chosen by the drawn numbers. */
        const settleOne = async (): Promise<void> => {
          const open = pool.open();
          if (open.length > 0) open[picks[pick++ % picks.length]! % open.length]!.resolve();
          await settle();
        };
        for (let k = 0; k < writes.length; k++) {
          const w = writes[k]!;
          const offset = w.row * ROW + w.at;
          const length = Math.min(w.length, pool.bytes.length - offset);
          // Each write's bytes are its number (1 up): a later write has a larger one.
          const tag = k + 1;
          fill(length, tag).copy(model, offset);
          checks.push(
            rc.writeParts(offset, [fill(length, tag)]).then(() => {
              // Resolved: its bytes are there, or those of a write asked for after it.
              for (let b = offset; b < offset + length; b++) expect(pool.bytes[b]!).toBeGreaterThanOrEqual(tag);
            }),
          );
          if (w.turnAfter) {
            turn();
            await settleOne();
          }
        }
        turn();
        while (pool.open().length > 0) await settleOne();
        await Promise.all(checks);
        expect(pool.bytes).toEqual(model);
        await rc.drain();
      }),
      { numRuns: 200 },
    );
  });
});

// ---------------------------------------------------------------- over a real parity pool

const PAIR = '11111111-2222-4333-8444-555555555555';
const GUID = '99999999-8888-4777-8666-555555555555';
const CHUNK = 64 * 1024;
const PAGE = 4096;

/** A member that fails every request once broken. */
class Breakable implements Device {
  broken = false;
  writes = 0;
  constructor(readonly inner: MemoryDevice) {}
  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }
  read(offset: number, length: number): Promise<Buffer> {
    return this.broken ? Promise.reject(new Error('EIO: member broken')) : this.inner.read(offset, length);
  }
  write(offset: number, data: Buffer): Promise<void> {
    this.writes++;
    return this.broken ? Promise.reject(new Error('EIO: member broken')) : this.inner.write(offset, data);
  }
  sync(): Promise<void> {
    return this.broken ? Promise.reject(new Error('EIO: member broken')) : this.inner.sync();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

const rowBytesOf = (layout: ParityLayout, n: number): number => CHUNK * (n - (layout === 'parity2' ? 2 : 1));

async function storeOverParity(layout: ParityLayout, n: number): Promise<{ store: PageStore; members: Breakable[] }> {
  const members = Array.from({ length: n }, () => new Breakable(new MemoryDevice(POOL_LABEL_AREA_BYTES + 2 * 1024 * 1024)));
  const rowBytes = rowBytesOf(layout, n);
  const prefix = computeGeometry({ deviceBytes: members[0]!.sizeBytes, tableEntriesMax: 16, alignBytes: rowBytes }).dataOffset;
  const pool = await ParityDevice.create(
    members.map((device, i) => ({ name: `m${i}`, device })),
    { layout, chunkBytes: CHUNK, mirroredPrefixBytes: Math.ceil(prefix / rowBytes) * rowBytes },
  );
  const store = await PageStore.format(pool, { pairId: PAIR, tableEntriesMax: 16, nowMs: 0 });
  return { store, members };
}

const loc: PageLocation = { guid: GUID, dataOffset: 0, pageSizeBytes: PAGE };
const pageData = (page: number, version: number): Buffer => Buffer.alloc(PAGE, (page * 7 + version) & 0xff);

describe('PageStore over a parity pool: page writes gathered per row', () => {
  for (const [layout, n] of [
    ['parity', 4],
    ['parity2', 5],
  ] as const) {
    it(`${layout} over ${n}: a run of pages written in one turn is one pool write per row, and every page reads back`, async () => {
      const { store } = await storeOverParity(layout, n);
      for (const version of [1, 2, 3]) {
        const before = store.rowWriteCounters!.poolWrites;
        await Promise.all(Array.from({ length: 32 }, (_, p) => store.writePage(loc, p, version, 1, pageData(p, version), undefined, version > 1)));
        await store.sync();
        // Rows of 192 KiB: a stripe of 23 pages is one row, and a page's slots of one version lie side by side in it.
        const { perStripe, pitchBytes } = stripeShape(PAGE, rowBytesOf(layout, n));
        expect(pitchBytes).toBe(rowBytesOf(layout, n));
        expect(store.rowWriteCounters!.poolWrites - before).toBe(Math.ceil(32 / perStripe));
        for (let p = 0; p < 32; p++) {
          const got = await store.readPage(loc, p);
          expect(got.header.version).toBe(version);
          expect(got.data.equals(pageData(p, version))).toBe(true);
        }
      }
      await store.close();
    });
  }

  it('when the pool fails a gathered write, every page write of the batch fails with IO_ERROR', async () => {
    const { store, members } = await storeOverParity('parity', 4);
    await Promise.all(Array.from({ length: 8 }, (_, p) => store.writePage(loc, p, 1, 1, pageData(p, 1))));
    await store.sync();
    // Two members of a parity pool gone: past what it survives.
    members[1]!.broken = true;
    members[2]!.broken = true;
    const batches = store.rowWriteCounters!.batches;
    const results = await Promise.allSettled(Array.from({ length: 8 }, (_, p) => store.writePage(loc, p, 2, 1, pageData(p, 2), undefined, true)));
    expect(store.rowWriteCounters!.batches - batches).toBe(1);
    expect(results.map((r) => r.status)).toEqual(Array(8).fill('rejected'));
    for (const r of results) expect(isPagepairError((r as PromiseRejectedResult).reason, 'IO_ERROR')).toBe(true);
    await store.close();
  });
});
