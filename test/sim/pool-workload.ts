// What the simulator's pool tests share: the pool of each layout over member
// devices both controllers reach, writers on both controllers on the same
// cells with their history, and the checks at the end (the history through
// the controller that serves, and the store read back with members gone).

import { expect } from 'vitest';
import { checkFinal, type HistoryOp } from '../../src/checker/index.js';
import type { MemoryDevice } from '../../src/store/memory-device.js';
import { MirrorDevice } from '../../src/store/mirror-device.js';
import { PageStore } from '../../src/store/page-store.js';
import { ParityDevice } from '../../src/store/parity-device.js';
import type { MemberOpener, Pool, PoolLayout, PoolMember } from '../../src/store/pool.js';
import type { Device } from '../../src/store/types.js';
import { layCells, readCells, writeBytes, type Cell } from './cells.js';
import type { Harness, NodeName } from './harness.js';
import { shownViolations } from './history-text.js';
import { Prng } from './prng.js';
import type { AllocationInfo, SimClient } from './sim-client.js';
import { RETRYABLE, codeOf } from './workload-common.js';

export const PAGE = 512;
export const PAGES_PER_ALLOC = 10;
export const ALLOCS = 2;

export function parities(layout: PoolLayout): number {
  return layout === 'parity2' ? 2 : layout === 'parity' ? 1 : 0;
}

export function named(devs: readonly Device[]): PoolMember[] {
  return devs.map((device, i) => ({ name: `m${i}`, device }));
}

/** The pool over `devs` (named m0, m1, ...); openMember: how it opens a device another pool object rebuilds onto. */
export function openPoolOf(layout: PoolLayout, devs: readonly Device[], openMember?: MemberOpener): Promise<Pool> {
  const opts = openMember !== undefined ? { openMember } : {};
  return layout === 'mirror' ? MirrorDevice.open(named(devs), opts) : ParityDevice.open(named(devs), opts);
}

/** A member that is gone: every request fails. */
export class Broken implements Device {
  constructor(readonly sizeBytes: number) {}
  read(): Promise<Buffer> {
    return Promise.reject(new Error('EIO: member gone'));
  }
  write(): Promise<void> {
    return Promise.reject(new Error('EIO: member gone'));
  }
  sync(): Promise<void> {
    return Promise.reject(new Error('EIO: member gone'));
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

/**
 * A member as both controllers reach it: once it breaks, every request to it
 * fails, from either. With `delay`, each request first waits that (virtual)
 * while, so a pool's member writes and a rebuild's copies interleave with the
 * pair's work.
 */
export class Breakable implements Device {
  broken = false;
  delay: (() => Promise<void>) | null = null;
  constructor(readonly inner: MemoryDevice) {}
  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }
  async read(offset: number, length: number): Promise<Buffer> {
    await this.delay?.();
    if (this.broken) throw new Error('EIO: the device broke');
    return this.inner.read(offset, length);
  }
  async write(offset: number, data: Buffer): Promise<void> {
    await this.delay?.();
    if (this.broken) throw new Error('EIO: the device broke');
    return this.inner.write(offset, data);
  }
  async sync(): Promise<void> {
    await this.delay?.();
    if (this.broken) throw new Error('EIO: the device broke');
    return this.inner.sync();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

export interface PairWork {
  allocs: AllocationInfo[];
  cells: Cell[];
  history: HistoryOp[];
  /** Requests that failed with what no retry mends. */
  errors: string[];
  /** The workload: resolves when every actor is done. */
  done: Promise<void>;
  /** A write of `run` through `via`, in the history (for a test's own last writes). */
  writeThrough(via: NodeName, run: readonly Cell[]): Promise<boolean>;
  /** Reads answered so far. */
  reads(): number;
}

export interface PairWorkOptions {
  /** Actors, half starting on each controller (default 4). */
  actors?: number;
  /** Requests each actor makes (default 14). */
  ops?: number;
  /** Share of them that are writes (default 0.6). */
  writeShare?: number;
  /** Longest pause between an actor's requests, ms (default 14). */
  thinkMsMax?: number;
}

/**
 * Allocates ALLOCS allocations and starts `actors` actors, half on each
 * controller, writing and reading runs of the same cells; a failed request
 * is tried again on the other controller (with the same tag for a write).
 */
export async function startPairWork(h: Harness, seed: number, rng: Prng, opts: PairWorkOptions = {}): Promise<PairWork> {
  const admin = h.client('A');
  const allocs: AllocationInfo[] = [];
  for (let i = 0; i < ALLOCS; i++) allocs.push(await h.run(admin.allocate(`w${i}`, PAGES_PER_ALLOC * PAGE, 'tiny')));
  const cells = layCells(rng, ALLOCS, PAGES_PER_ALLOC, PAGE);
  const history: HistoryOp[] = [];
  const clock = (): number => h.nowMs + h.sched.steps / 1e7;
  const errors: string[] = [];
  let nextValue = 1;
  let reads = 0;

  const conns = new Map<string, SimClient>();
  const on = (actor: number, name: NodeName): SimClient => {
    const key = `${actor}:${name}`;
    let c = conns.get(key);
    if (c === undefined || c.closed) {
      c = h.client(name);
      c.timeoutMs = 1500;
      conns.set(key, c);
    }
    return c;
  };
  const attempt = async <T>(actor: number, start: NodeName, fn: (c: SimClient) => Promise<T>): Promise<{ ok: true; value: T } | { ok: false }> => {
    let target = start;
    const deadline = h.nowMs + 20_000;
    for (;;) {
      try {
        return { ok: true, value: await fn(on(actor, target)) };
      } catch (err) {
        const code = codeOf(err);
        if (!RETRYABLE.has(code)) {
          errors.push(`actor ${actor}: ${code} ${String(err)} at ${h.nowMs} ms`);
          return { ok: false };
        }
        if (h.nowMs >= deadline) return { ok: false };
        target = target === 'A' ? 'B' : 'A';
        await h.sleep(10 + ((actor * 7) % 20));
      }
    }
  };
  const write = async (actor: number, via: NodeName, run: readonly Cell[], tag: { clientId: number; clientSeq: number }): Promise<boolean> => {
    const guid = allocs[run[0]!.alloc]!.guid;
    const value = nextValue++;
    const { offset, data } = writeBytes(run, value);
    const t0 = clock();
    const r = await attempt(actor, via, (c) => c.write(guid, offset, data, 0, tag));
    const t1 = clock();
    for (const c of run) history.push({ id: history.length + 1, process: actor, kind: 'write', key: c.key, value, startMs: t0, endMs: r.ok ? t1 : null, outcome: r.ok ? 'ok' : 'unknown' });
    return r.ok;
  };

  const actor = async (idx: number): Promise<void> => {
    const my = new Prng(seed * 37 + idx);
    // Half the actors start on each controller: both write the same cells.
    const home: NodeName = idx % 2 === 0 ? 'A' : 'B';
    for (let op = 0; op < (opts.ops ?? 14); op++) {
      await h.sleep(my.int((opts.thinkMsMax ?? 14) + 1));
      const start = my.int(cells.length);
      let last = start;
      const want = 1 + my.int(6);
      while (last + 1 < cells.length && last - start + 1 < want && cells[last + 1]!.alloc === cells[start]!.alloc) last++;
      const run: Cell[] = cells.slice(start, last + 1);
      if (my.chance(opts.writeShare ?? 0.6)) {
        await write(idx, home, run, { clientId: 500 + idx, clientSeq: op + 1 });
      } else {
        const guid = allocs[run[0]!.alloc]!.guid;
        const offset = run[0]!.offset;
        const end = run[run.length - 1]!.offset + run[run.length - 1]!.length;
        const t0 = clock();
        const r = await attempt(idx, home, (c) => c.read(guid, offset, end - offset));
        if (!r.ok) continue;
        reads++;
        const t1 = clock();
        const { values } = readCells(run, offset, r.value);
        for (const [i, c] of run.entries()) history.push({ id: history.length + 1, process: idx, kind: 'read', key: c.key, value: values[i] ?? 0x7fff_0000 + c.index, startMs: t0, endMs: t1, outcome: 'ok' });
      }
    }
  };
  const actors = opts.actors ?? 4;
  const done = Promise.all(Array.from({ length: actors }, (_, i) => actor(i))).then(() => undefined);
  let own = 0;
  return { allocs, cells, history, errors, done, writeThrough: (via, run) => write(99, via, run, { clientId: 999, clientSeq: ++own }), reads: () => reads };
}

/**
 * The final contents through `via` close the history, which must be
 * linearizable; resolves with each allocation's bytes as served.
 */
export async function checkHistoryThrough(h: Harness, via: NodeName, w: PairWork, fail: (what: string) => string): Promise<Buffer[]> {
  expect(w.errors, fail(`client errors:\n${w.errors.join('\n')}`)).toEqual([]);
  const finals = new Map<string, number>();
  const served: Buffer[] = [];
  const c = h.client(via);
  for (const [i, al] of w.allocs.entries()) {
    const bytes = await h.run(c.read(al.guid, 0, PAGES_PER_ALLOC * PAGE));
    served.push(bytes);
    const mine = w.cells.filter((x) => x.alloc === i);
    const { values } = readCells(mine, 0, bytes);
    for (const [k, x] of mine.entries()) finals.set(x.key, values[k] ?? 0x7fff_0000 + x.index);
  }
  expect(h.violations, fail(`invariants:\n${h.violations.join('\n')}`)).toEqual([]);
  const result = checkFinal(w.history, finals);
  expect(result.verdict, fail(`history: ${JSON.stringify(result.byKind)}\n${shownViolations(result, w.history, finals)}`)).toBe('linearizable');
  return served;
}

/** The store over `pool` holds, page for page, what was served. */
export async function expectStoreHolds(pool: Pool, w: PairWork, served: readonly Buffer[], fail: (what: string) => string, what: string): Promise<void> {
  const store = await PageStore.open(pool);
  const table = await store.readTable();
  for (const [i, al] of w.allocs.entries()) {
    const rec = table.records.find((r) => r.guid === al.guid)!;
    for (let p = 0; p < PAGES_PER_ALLOC; p++) {
      const sp = await store.readPage({ guid: rec.guid, dataOffset: rec.dataOffset, pageSizeBytes: PAGE }, p);
      expect(sp.data.equals(served[i]!.subarray(p * PAGE, (p + 1) * PAGE)), fail(`page ${p} of allocation ${i} ${what}`)).toBe(true);
    }
  }
}
