// A controller's pool job (src/runtime/pool-job.ts) over pools in memory:
// each mistake in a request refused with its typed error naming the field,
// before anything is opened or written; a replace and a scrub run to their
// end through the barrier, progress kept; one job at a time (BUSY); a job
// on a controller that does not serve refused (NOT_ACTIVE); stopping aborts
// the job and status says so.

import { describe, expect, it } from 'vitest';
import { poolJobText } from '../../src/cli/status.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import { checkDeviceName, checkPoolJobRequest, memberBytesOf, PoolJobRunner, type PoolJobDeps, type PoolJobRequest } from '../../src/runtime/pool-job.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { MirrorDevice } from '../../src/store/mirror-device.js';
import { PageStore } from '../../src/store/page-store.js';
import { ParityDevice } from '../../src/store/parity-device.js';
import { POOL_LABEL_AREA_BYTES } from '../../src/store/pool-label.js';
import type { Pool, PoolMember } from '../../src/store/pool.js';
import type { Device } from '../../src/store/types.js';

const MiB = 1024 * 1024;
const PAIR_ID = '6a1f0c52-8d3e-4b7a-9f21-0c4d5e6f7a8b';

function members(n: number, bytes: number): PoolMember[] {
  return Array.from({ length: n }, (_, i) => ({ name: `/pool/d${i}.img`, device: new MemoryDevice(bytes) }));
}

async function mirror(n = 2, bytes = 4 * MiB): Promise<{ pool: Pool; store: PageStore }> {
  const pool = await MirrorDevice.create(members(n, bytes));
  return { pool, store: await PageStore.format(pool, { pairId: PAIR_ID, tableEntriesMax: 16, nowMs: 0 }) };
}

async function parity(n = 3, bytes = 4 * MiB): Promise<{ pool: Pool; store: PageStore }> {
  const pool = await ParityDevice.create(members(n, bytes), { layout: 'parity', chunkBytes: 16384, mirroredPrefixBytes: 512 * 1024 });
  return { pool, store: await PageStore.format(pool, { pairId: PAIR_ID, tableEntriesMax: 16, nowMs: 0 }) };
}

function expectRefused(fn: () => unknown, code: string, field: string | undefined, text?: RegExp): void {
  try {
    fn();
  } catch (err) {
    expect(isPagepairError(err), String(err)).toBe(true);
    expect((err as { code: string }).code).toBe(code);
    expect((err as { field?: string }).field).toBe(field);
    if (text !== undefined) expect((err as Error).message).toMatch(text);
    return;
  }
  throw new Error('accepted');
}

async function expectRejected(p: Promise<unknown>, code: string, field?: string, text?: RegExp): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(isPagepairError(err), String(err)).toBe(true);
  expect((err as { code: string }).code, (err as Error).message).toBe(code);
  if (field !== undefined) expect((err as { field?: string }).field).toBe(field);
  if (text !== undefined) expect((err as Error).message).toMatch(text);
}

const replace = (over: Partial<PoolJobRequest> = {}): PoolJobRequest => ({ kind: 'replace', slot: 1, device: '/pool/d1-new.img', rateBytesPerSec: 0, repair: false, ...over });
const scrub = (over: Partial<PoolJobRequest> = {}): PoolJobRequest => ({ kind: 'scrub', slot: 0, device: '', rateBytesPerSec: 0, repair: false, ...over });

/** A runner over `pool`, whose new devices are memory devices made at the size asked for. */
function runner(pool: Pool | null, store: PageStore, over: Partial<PoolJobDeps> = {}): { jobs: PoolJobRunner; opened: { name: string; bytes: number }[]; barriers: { n: number } } {
  const opened: { name: string; bytes: number }[] = [];
  const barriers = { n: 0 };
  const jobs = new PoolJobRunner({
    pool,
    store,
    barrier: async () => {
      barriers.n++;
    },
    openMember: async (name, bytes): Promise<Device> => {
      opened.push({ name, bytes });
      return new MemoryDevice(bytes);
    },
    notServing: () => null,
    ...over,
  });
  return { jobs, opened, barriers };
}

async function ended(jobs: PoolJobRunner, timeoutMs = 10_000): Promise<NonNullable<ReturnType<PoolJobRunner['status']>>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = jobs.status();
    if (s !== null && s.state !== 'running') return s;
    if (Date.now() > deadline) throw new Error(`job still running: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('pool job requests: each mistake refused by name before anything is opened', () => {
  it('checks kind, slot, device, repair and rate against the pool', async () => {
    const { pool, store } = await mirror(3);
    expectRefused(() => checkPoolJobRequest(scrub(), null), 'BAD_CONFIG', 'store.pool', /one file, not a pool/);
    expectRefused(() => checkPoolJobRequest(replace({ slot: 3 }), pool), 'BAD_FIELD', 'slot', /slot must be one of 0\.\.2 .* got 3/);
    expectRefused(() => checkPoolJobRequest(replace({ slot: -1 }), pool), 'BAD_FIELD', 'slot');
    expectRefused(() => checkPoolJobRequest(replace({ slot: 0.5 }), pool), 'BAD_FIELD', 'slot');
    expectRefused(() => checkPoolJobRequest(replace({ device: '' }), pool), 'BAD_FIELD', 'device');
    expectRefused(() => checkPoolJobRequest(replace({ device: 'data/d1.img' }), pool), 'BAD_FIELD', 'device', /relative path/);
    expectRefused(() => checkPoolJobRequest(replace({ device: 'http://x/y' }), pool), 'BAD_FIELD', 'device', /not a URI a pool member can have/);
    expectRefused(() => checkPoolJobRequest(replace({ device: `/${'x'.repeat(1024)}` }), pool), 'BAD_FIELD', 'device', /1025 bytes long, at most 1024/);
    expectRefused(() => checkPoolJobRequest(replace({ device: '/a\0b' }), pool), 'BAD_FIELD', 'device', /NUL/);
    expectRefused(() => checkPoolJobRequest(replace({ device: '/pool/d2.img' }), pool), 'BAD_FIELD', 'device', /slot 2: a device fills one slot/);
    expectRefused(() => checkPoolJobRequest(replace({ repair: true }), pool), 'BAD_FIELD', 'repair');
    expectRefused(() => checkPoolJobRequest(replace({ rateBytesPerSec: -5 }), pool), 'BAD_FIELD', 'rateBytesPerSec');
    expectRefused(() => checkPoolJobRequest(scrub({ slot: 1 }), pool), 'BAD_FIELD', 'slot');
    expectRefused(() => checkPoolJobRequest(scrub({ device: '/x' }), pool), 'BAD_FIELD', 'device');
    expectRefused(() => checkPoolJobRequest({ ...scrub(), kind: 'defrag' as never }, pool), 'BAD_FIELD', 'kind');
    // Taken: the slot's own device again, a URI, a path.
    checkPoolJobRequest(replace({ device: '/pool/d1.img' }), pool);
    checkPoolJobRequest(replace({ device: 'nbd+unix:///x?socket=/run/x.sock' }), pool);
    checkPoolJobRequest(replace({ device: 'nbd://10.0.0.2:10809/e' }), pool);
    checkPoolJobRequest(scrub({ repair: true, rateBytesPerSec: 1 }), pool);
    checkDeviceName('/ünïcode/path.img');
    await store.close();
  });

  it('refuses a rebuild the other members cannot make (IO_ERROR naming them)', async () => {
    const fail: Device = {
      sizeBytes: 4 * MiB,
      read: () => Promise.reject(new Error('EIO')),
      write: () => Promise.reject(new Error('EIO')),
      sync: () => Promise.reject(new Error('EIO')),
      close: () => Promise.resolve(),
    };
    const ms = members(3, 4 * MiB);
    // A parity pool of three with slot 0 gone cannot rebuild slot 1.
    const labelled = await ParityDevice.create(ms, { layout: 'parity', chunkBytes: 16384, mirroredPrefixBytes: 512 * 1024 });
    await labelled.close();
    const degraded = await ParityDevice.open([{ name: '/pool/d0.img', device: fail }, ms[1]!, ms[2]!]);
    expectRefused(() => checkPoolJobRequest(replace({ slot: 1 }), degraded), 'IO_ERROR', 'slot', /slot 1 cannot be rebuilt: .*slot 0 \(\/pool\/d0\.img\)/);
    checkPoolJobRequest(replace({ slot: 0 }), degraded);
    await degraded.close();
  });

  it('makes a new device at the members\' size, and refuses one too small (BAD_FIELD device) or that cannot be opened (IO_ERROR)', async () => {
    const m = await mirror(2);
    expect(memberBytesOf(m.pool)).toBe(4 * MiB);
    const p = await parity(3);
    expect(memberBytesOf(p.pool)).toBeLessThanOrEqual(4 * MiB);
    expect(memberBytesOf(p.pool)).toBeGreaterThan(POOL_LABEL_AREA_BYTES + p.pool.mirroredPrefixBytes);
    const small = runner(m.pool, m.store, { openMember: async () => new MemoryDevice(MiB) });
    await expectRejected(small.jobs.start(replace()), 'BAD_FIELD', 'device', /holds 1048576 bytes; every device of this pool needs at least 4194304/);
    expect(small.jobs.status()).toBeNull();
    const gone = runner(m.pool, m.store, { openMember: () => Promise.reject(new Error('ECONNREFUSED')) });
    await expectRejected(gone.jobs.start(replace({ device: 'nbd://127.0.0.1:1/x' })), 'IO_ERROR', 'device', /nbd:\/\/127\.0\.0\.1:1\/x cannot be opened: ECONNREFUSED/);
    // A device holding something else (a file system, another program's file) is not written over.
    const used = new MemoryDevice(4 * MiB);
    await used.write(0, Buffer.from('ext4 superblock, say'));
    const taken = runner(m.pool, m.store, { openMember: async () => used });
    await expectRejected(taken.jobs.start(replace()), 'BAD_FIELD', 'device', /holds data that is not a pool label in its first 8192 bytes: not written over/);
    expect((await used.read(0, 20)).toString()).toBe('ext4 superblock, say');
    const notServing = runner(m.pool, m.store, { notServing: () => 'controller A is fenced, not serving' });
    await expectRejected(notServing.jobs.start(scrub()), 'NOT_ACTIVE', undefined, /fenced/);
    await m.store.close();
    await p.store.close();
  });
});

describe('pool jobs run', () => {
  for (const make of [mirror, parity]) {
    it(`a replace and a scrub with repair over a ${make === mirror ? 'mirror' : 'parity pool'}, one at a time, through the barrier`, async () => {
      const { pool, store } = await make();
      const { jobs, opened, barriers } = runner(pool, store);
      const id = await jobs.start(replace());
      expect(opened).toEqual([{ name: '/pool/d1-new.img', bytes: memberBytesOf(pool) }]);
      await expectRejected(jobs.start(scrub()), 'BUSY', undefined, new RegExp(`job ${id}, replace of slot 1`));
      const r = await ended(jobs);
      expect(r, JSON.stringify(r.error)).toMatchObject({ id, kind: 'replace', slot: 1, device: '/pool/d1-new.img', state: 'done', phase: 'pool' });
      expect(r.report).toMatchObject({ kind: 'replace', slot: 1, old: '/pool/d1.img', device: '/pool/d1-new.img', bytesCopied: pool.sizeBytes });
      expect(r.doneBytes).toBe(r.totalBytes);
      expect(r.endedAtMs).toBeGreaterThanOrEqual(r.startedAtMs);
      expect(barriers.n).toBeGreaterThanOrEqual(1);
      expect(pool.status().members[1]).toMatchObject({ name: '/pool/d1-new.img', state: 'healthy' });

      const id2 = await jobs.start(scrub({ repair: true }));
      expect(id2).toBe(id + 1);
      const s = await ended(jobs);
      expect(s, JSON.stringify(s.error)).toMatchObject({ id: id2, kind: 'scrub', slot: null, device: null, repair: true, state: 'done', phase: 'pages' });
      expect(s.report).toMatchObject({ kind: 'scrub', repair: true, pool: { mismatches: 0, unreadable: 0 }, pages: { allocations: 0, checksumMismatches: 0 } });
      await store.close();
    });
  }

  it('stopping aborts the job: failed, SHUTTING_DOWN, the new device left stale', async () => {
    const { pool, store } = await mirror(2, 32 * MiB);
    // Slow enough to be caught running: 4 MiB a second over 32 MiB.
    const { jobs } = runner(pool, store);
    await jobs.start(replace({ rateBytesPerSec: 4 * MiB }));
    await new Promise((r) => setTimeout(r, 50));
    expect(jobs.status()!.state).toBe('running');
    await jobs.stop();
    const s = jobs.status()!;
    expect(s.state).toBe('failed');
    expect(s.error).toMatchObject({ code: 'SHUTTING_DOWN' });
    expect(s.error!.message).toMatch(/stays labelled unfinished/);
    expect(pool.status().members[1]!.state).not.toBe('healthy');
    await store.close();
  });
});

describe('pagepair status: the pool job line', () => {
  const base = { id: 4, slot: 2, device: '/pool/d2-new.img', repair: false, phase: 'pool' as const, doneBytes: 3 * MiB, totalBytes: 12 * MiB, startedAtMs: 1_000_000, endedAtMs: null };
  it('says what, how far and how it ended', () => {
    expect(poolJobText({ ...base, kind: 'replace', state: 'running' }, 1_005_000)).toBe('job 4, replace of slot 2 onto /pool/d2-new.img: running, copied 25% (3.0 MiB of 12 MiB), for 5s');
    const done = { ...base, kind: 'replace' as const, state: 'done' as const, doneBytes: 12 * MiB, endedAtMs: 1_010_000, report: { kind: 'replace' as const, slot: 2, old: '/pool/d2.img', device: '/pool/d2-new.img', bytesCopied: 12 * MiB } };
    expect(poolJobText(done, 1_070_000)).toMatch(/^job 4, replace of slot 2 onto \/pool\/d2-new\.img: done, 12 MiB rebuilt \(was \/pool\/d2\.img\), ended 1m00s ago after 10s$/);
    const failed = { ...base, kind: 'scrub' as const, slot: null, device: null, state: 'failed' as const, endedAtMs: 1_002_000, error: { code: 'SHUTTING_DOWN', message: 'stopped with the controller' } };
    expect(poolJobText(failed, 1_002_000)).toMatch(/^job 4, scrub: FAILED at the pool's redundancy 25%: SHUTTING_DOWN: stopped with the controller/);
    const scrubbed = {
      ...base,
      kind: 'scrub' as const,
      slot: null,
      device: null,
      repair: true,
      phase: 'pages' as const,
      state: 'done' as const,
      endedAtMs: 1_002_000,
      report: { kind: 'scrub' as const, repair: true, pool: { bytesChecked: 1, mismatches: 1, repaired: 1, unreadable: 0, unrepaired: 0 }, pages: { allocations: 1, pagesChecked: 8, bytesChecked: 1, checksumMismatches: 0, tornSlots: 0, unreadablePages: 0, badPages: [] } },
    };
    expect(poolJobText(scrubbed, 1_002_000)).toMatch(/^job 4, scrub with repair: done: 1 mismatch, 1 repaired, 0 unreadable; 8 pages, 0 failing their CRC, 0 unreadable/);
  });
});
