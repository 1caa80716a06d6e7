// One seeded random NBD workload on a simulated pair. Both controllers run
// the NBD volume layer (nbd-endpoint.ts: CoreVolumes on virtual time), and
// NBD clients on both hit the same pages at the same time: overlapping
// writes, partial pages (cells at unaligned offsets, cells.ts), writes and
// reads across several pages (cut into pieces by CoreVolumes), write-zeroes
// and trim, flush, and writes with FUA. A client or two of the client
// endpoint (SimClient, tagged writes) work on the same cells besides. With
// chaos, a fault actor cuts and drops the link, kills and restarts
// controllers and pauses them, one fault at a time.
//
// Registers: every cell is one (its key names the allocation and offset).
// Before the clients start, every cell is written once (a prefill), so that
// zeros can only come from a write-zeroes or trim; each cell is zeroed at
// most once in a run, so a zeroed cell reads as that zeroing's value. A
// write-zeroes, a trim and a write each record one write per cell they cover
// in the history (src/checker's format), from the request to its answer; an
// NBD request that got no answer (its controller died) or a refusal is a
// maybe-happened write.
//
// Checked after the run, once the pair is quiet and mirrored (every failure
// names the seed and the line that replays it):
// - both controllers' copies of every page are the same (copies-checker.ts:
//   bytes through both, versions and CRCs of pages both cache, no page owned
//   by both);
// - the history of every cell is linearizable, with the final contents as a
//   last read: no acknowledged write lost, no stale, future or garbage read;
// - bytes no write covers stay zero;
// - when a flush or a write with FUA is acknowledged, the store holds what
//   it promises (checkDurable);
// - the harness's invariants (Harness.violations);
// - after a flush, the store holds exactly what the pair serves;
// - nothing is logged at error level and no request fails unexpectedly.

import { checkFinal, type HistoryOp } from '../../src/checker/index.js';
import { Role } from '../../src/protocol/messages.js';
import type { PageStore } from '../../src/store/page-store.js';
import type { PageLocation } from '../../src/store/types.js';
import type { NbdVolume } from '../../src/transport/nbd-backend.js';
import { decodeCell, layCells, readCells, writeBytes, type Cell } from './cells.js';
import { checkCopies, describeMismatches } from './copies-checker.js';
import { Harness, type NodeName } from './harness.js';
import { shownViolations } from './history-text.js';
import { RETRYABLE, chaosRounds, codeOf, drawPairOptions, drawTiming, simNote, traceOf } from './workload-common.js';
import { NbdEndpoint, nbdConnIds, type NbdEndpointOptions } from './nbd-endpoint.js';
import { Prng } from './prng.js';
import { injectFault } from './faults.js';
import type { AllocationInfo, SimClient } from './sim-client.js';

export type NbdFault = 'cut' | 'drop' | 'kill' | 'pause';
export const NBD_FAULTS: readonly NbdFault[] = ['cut', 'drop', 'kill', 'pause'];

export interface NbdWorkloadOptions {
  /** Inject faults while the clients work. */
  chaos?: boolean;
  /** The faults chaos picks from (default: all). */
  faults?: readonly NbdFault[];
  opsPerActor?: number;
  /** The test file that replays a seed of this mode (for the failure message). */
  replayFile?: string;
}

export interface NbdWorkloadStats {
  writesAcked: number;
  writesMaybe: number;
  zeroesAcked: number;
  reads: number;
  flushes: number;
  faults: number;
  virtualMs: number;
  historyOps: number;
  pagesCompared: number;
}

/** The harness of the last run, for a debugging session to inspect. */
export let lastNbdHarness: Harness | undefined;

export const NBD_REPLAY_FILE_DEFAULT = 'test/sim/sim-nbd-random.test.ts';

export function nbdReplayLine(seed: number, file = NBD_REPLAY_FILE_DEFAULT): string {
  return `SEED=${seed} npx vitest run ${file}`;
}

/** A write value no write wrote: a read of garbage records it, and the checker calls it a phantom. */
const GARBAGE_BASE = 0x7fff_0000;

export async function runNbdSeed(seed: number, opts: NbdWorkloadOptions = {}): Promise<NbdWorkloadStats> {
  const chaos = opts.chaos ?? false;
  const faults = opts.faults ?? NBD_FAULTS;
  const rng = new Prng(seed ^ 0x4e42_4400);
  const timing = drawTiming(rng);
  const pageBytes = rng.pick([512, 1024]);
  const policy = pageBytes === 512 ? 'tiny' : 'small';
  const pagesPerAlloc = rng.pick([3, 6, 10]);
  const allocCount = rng.pick([1, 2]);
  const h = await Harness.createPair({
    seed,
    ...drawPairOptions(rng, { frameDelayMaxMs: 4, dirtyAgesMs: [30, 300, 3_600_000], cachePages: [16, 64], pageBytes }),
    ...timing,
  });
  lastNbdHarness = h;
  const mode = chaos ? `NBD chaos${faults.length === NBD_FAULTS.length ? '' : ` [${faults.join(',')}]`}` : 'NBD, no faults';
  const trace = (): string => traceOf(h);
  const tracing = process.env.PAGEPAIR_SIM_TRACE !== undefined;
  /** With tracing, a line in the harness log: what a client asked and heard, among the cores' records. */
  const note = (name: NodeName, msg: string): void => {
    if (tracing) simNote(h, name, msg);
  };
  const where = (): string => `seed ${seed}, ${mode}; ${h.describe()}; ${h.incarnations()}; replay: ${nbdReplayLine(seed, opts.replayFile)}`;

  const epOpts: NbdEndpointOptions = {
    socketDelayMaxMs: rng.int(3),
    // Small pieces, so that a request of a few pages is several pieces in the core at once.
    pieceBytes: pageBytes * rng.pick([1, 2, 4]),
    readPieceBytes: pageBytes * rng.pick([1, 2, 8]),
    piecesInFlight: rng.pick([1, 2, 4]),
    trace: tracing,
  };
  const epRng = rng.fork();
  const nextConnId = nbdConnIds();
  const endpoints: Partial<Record<NodeName, NbdEndpoint>> = {};
  /** The NBD backend of a controller's running incarnation; null when it is dead. */
  const endpointOn = (name: NodeName): NbdEndpoint | null => {
    const n = h.node(name);
    if (!n.alive) return null;
    let ep = endpoints[name];
    if (ep === undefined || ep.closed || ep.node !== n) {
      ep = new NbdEndpoint(h, n, nextConnId(), epRng, epOpts);
      endpoints[name] = ep;
    }
    return ep;
  };

  // Volumes, made through either controller, and exported by both.
  const admin = h.client(rng.pick(['A', 'B'] as const));
  const allocs: AllocationInfo[] = [];
  for (let i = 0; i < allocCount; i++) allocs.push(await h.run(admin.allocate(`vol${i}`, pagesPerAlloc * pageBytes, policy), 'allocate'));
  const volumes: NbdVolume[] = [];
  const failures: string[] = [];
  for (const [i, al] of allocs.entries()) {
    const viaA = endpointOn('A')!.findVolume(`vol${i}`);
    const viaB = endpointOn('B')!.findVolume(`vol${i}`);
    if (viaA === undefined || viaB === undefined || viaA.guid !== al.guid || viaB.guid !== al.guid || viaA.sizeBytes !== viaB.sizeBytes) {
      throw new Error(`volume vol${i} is not exported alike by both controllers: A ${JSON.stringify(viaA)}, B ${JSON.stringify(viaB)} (${where()})`);
    }
    volumes.push(viaA);
  }
  const cells = layCells(rng, allocCount, pagesPerAlloc, pageBytes);

  const history: HistoryOp[] = [];
  // Virtual ms, with the step count as a fraction: order within one ms is the real order of events.
  const clock = (): number => h.nowMs + h.sched.steps / 1e7;
  let nextValue = 1;
  const errors: string[] = [];
  /** Cell key -> the value of the one write-zeroes or trim that covered it. */
  const zeroedBy = new Map<string, number>();
  const stats: NbdWorkloadStats = { writesAcked: 0, writesMaybe: 0, zeroesAcked: 0, reads: 0, flushes: 0, faults: 0, virtualMs: 0, historyOps: 0, pagesCompared: 0 };

  /** Cell key -> its acknowledged writes so far: what a flush or FUA promises is in the store. */
  const acked = new Map<string, { value: number; startMs: number; endMs: number }[]>();
  const recordWrites = (process: number, run: readonly Cell[], value: number, startMs: number, outcome: HistoryOp['outcome']): void => {
    const endMs = outcome === 'unknown' ? null : clock();
    for (const c of run) {
      history.push({ id: history.length + 1, process, kind: 'write', key: c.key, value, startMs, endMs, outcome });
      if (outcome !== 'ok') continue;
      let list = acked.get(c.key);
      if (list === undefined) acked.set(c.key, (list = []));
      list.push({ value, startMs, endMs: endMs! });
    }
  };
  /** A cell's value as read: zeros are its zeroing, if it had one; garbage is a value no write wrote. */
  const valueOf = (c: Cell, decoded: number | null): number => {
    if (decoded === null) return GARBAGE_BASE + c.index;
    if (decoded === 0) return zeroedBy.get(c.key) ?? 0;
    return decoded;
  };
  const recordReads = (process: number, run: readonly Cell[], offset: number, data: Buffer, startMs: number, what: string): void => {
    const endMs = clock();
    const { values, dirtyGapAt } = readCells(run, offset, data);
    if (dirtyGapAt !== null) errors.push(`${what}: byte ${dirtyGapAt}, which no write covers, is not zero`);
    for (const [i, c] of run.entries()) history.push({ id: history.length + 1, process, kind: 'read', key: c.key, value: valueOf(c, values[i]!), startMs, endMs, outcome: 'ok' });
  };

  /** A view of the store as a third party (a restarted controller) reads it, and where each volume's pages lie. */
  let store: { view: PageStore; locs: PageLocation[] } | null = null;
  /**
   * Once a flush (every cell of a volume, `self` null) or a write with FUA
   * (its cells, `self` its value) is acknowledged, the store holds for each
   * cell the newest of the writes acknowledged before the request began (and
   * the FUA write itself), or something newer: never one of them that another
   * of them overwrote, and never the zeros before the prefill.
   */
  const checkDurable = async (what: string, run: readonly Cell[], sinceMs: number, self: number | null): Promise<void> => {
    if (store === null) {
      const view = await h.openStoreView();
      const table = await view.readTable();
      const locs: PageLocation[] = [];
      for (const al of allocs) {
        const rec = table.records.find((r) => r.guid === al.guid);
        if (rec === undefined) {
          errors.push(`${what}: allocation ${al.guid} is not in the stored table`);
          return;
        }
        locs.push({ guid: rec.guid, dataOffset: rec.dataOffset, pageSizeBytes: pageBytes });
      }
      store = { view, locs };
    }
    const pages = new Map<string, Buffer>();
    for (const c of run) {
      const page = Math.floor(c.offset / pageBytes);
      let data = pages.get(`${c.alloc}:${page}`);
      if (data === undefined) {
        data = (await store.view.readPage(store.locs[c.alloc]!, page)).data;
        pages.set(`${c.alloc}:${page}`, data);
      }
      const at = c.offset - page * pageBytes;
      const stored = valueOf(c, decodeCell(c, data.subarray(at, at + c.length)));
      const before = (acked.get(c.key) ?? []).filter((w) => w.endMs < sinceMs);
      const newer = self === null ? before : [...before, { value: self, startMs: sinceMs, endMs: sinceMs }];
      let bad: string | null = null;
      if (stored >= GARBAGE_BASE) bad = 'bytes no write wrote';
      else if (stored === 0 && newer.length > 0) bad = 'the zeros from before the prefill';
      else {
        const old = before.find((w) => w.value === stored && newer.some((n) => n.startMs > w.endMs));
        if (old !== undefined) {
          const by = newer.find((n) => n.startMs > old.endMs)!;
          bad = `value ${stored} (acknowledged at ${old.endMs.toFixed(3)}), which value ${by.value} (from ${by.startMs.toFixed(3)}) overwrote`;
        }
      }
      if (bad !== null) errors.push(`${what}: acknowledged, but the store holds ${bad} in cell ${c.key} (page ${page}) at ${clock().toFixed(3)}`);
    }
  };

  // The prefill: every cell holds a write before anyone starts, through both controllers
  // (one value per allocation, in writes of up to pieceBytes: an NBD write is one request into the core).
  for (const [i, vol] of volumes.entries()) {
    const mine = cells.filter((c) => c.alloc === i);
    if (mine.length === 0) continue;
    const value = nextValue++;
    const ep = endpointOn(i % 2 === 0 ? 'A' : 'B')!;
    for (let at = 0; at < mine.length; ) {
      const part = withinBytes(mine.slice(at), epOpts.pieceBytes);
      const { offset, data } = writeBytes(part, value);
      const startMs = clock();
      await h.run(
        ep.call('prefill', (v) => v.write(vol, offset, data, false)),
        'prefill',
      );
      recordWrites(900 + i, part, value, startMs, 'ok');
      at += part.length;
    }
  }

  const mirrored = (): boolean => h.linkUp && h.nodes.every((n) => n.alive && !n.paused && n.core.currentRole === Role.MIRRORED);
  const settled = (): boolean => mirrored() && h.nodes.every((n) => (n.core.status().partner?.lastHeardMsAgo ?? Infinity) <= 2 * timing.heartbeatIntervalMs);

  // Actors keep to a home stretch of cells most of the time; small stretches make them fight over a page or two.
  const nbdActors = 3 + rng.int(4);
  const endpointActors = rng.int(3);
  const actorCount = nbdActors + endpointActors;
  const spread = rng.pick([3, 8, 20]);
  const hotStart = rng.int(cells.length);
  const thinkMs = rng.pick([0, 0, 5]);
  const opsPerActor = opts.opsPerActor ?? 10;
  let actorsLeft = actorCount;

  /** A run of cells of one allocation from near the hot stretch; `fits` filters the cells it may hold. */
  const pickRun = (my: Prng, fits: (c: Cell) => boolean = () => true): Cell[] | null => {
    for (let tries = 0; tries < 4; tries++) {
      const start = my.chance(0.7) ? (hotStart + my.int(spread)) % cells.length : my.int(cells.length);
      if (!fits(cells[start]!)) continue;
      // Mostly a few cells (one page or two), sometimes several pages.
      const want = my.chance(0.75) ? 1 + my.int(4) : 5 + my.int(26);
      let last = start;
      while (last + 1 < cells.length && last - start + 1 < want && cells[last + 1]!.alloc === cells[start]!.alloc && fits(cells[last + 1]!)) last++;
      return cells.slice(start, last + 1);
    }
    return null;
  };
  const span = (run: readonly Cell[]): { offset: number; length: number } => {
    const first = run[0]!;
    const last = run[run.length - 1]!;
    return { offset: first.offset, length: last.offset + last.length - first.offset };
  };

  type Outcome = { ok: true } | { ok: false; outcome: 'fail' | 'unknown' };
  /** What a failed NBD request means: in chaos a maybe-happened request; without faults, an error. */
  const nbdFailure = (what: string, ep: NbdEndpoint, err: unknown): Outcome => {
    const code = codeOf(err);
    if (chaos && (code === 'CONNECTION_LOST' || code === 'SHUTTING_DOWN')) return { ok: false, outcome: 'unknown' };
    if (chaos && RETRYABLE.has(code)) return { ok: false, outcome: 'fail' };
    errors.push(`${what} through ${ep.name}: ${code} ${String(err)} at ${h.nowMs} ms`);
    return { ok: false, outcome: 'fail' };
  };

  /** An NBD client: a connection to its home controller (the other one, while chaos has its home down). */
  const nbdActor = async (idx: number): Promise<void> => {
    const my = new Prng(seed * 31 + idx);
    let side: NodeName = idx % 2 === 0 ? 'A' : 'B';
    for (let op = 0; op < opsPerActor; op++) {
      if (thinkMs > 0) await h.sleep(my.int(thinkMs + 1));
      let ep = endpointOn(side);
      if (ep === null && chaos) {
        side = side === 'A' ? 'B' : 'A';
        ep = endpointOn(side);
        for (let waited = 0; ep === null && waited < 30_000; waited += 20) {
          await h.sleep(20);
          ep = endpointOn(side) ?? endpointOn((side = side === 'A' ? 'B' : 'A'));
        }
      }
      if (ep === null) {
        errors.push(`actor ${idx} op ${op}: no controller to connect to at ${h.nowMs} ms`);
        break;
      }
      const what = `NBD actor ${idx} op ${op}`;
      const r = my.next();
      const startMs = clock();
      if (r < 0.72 && r >= 0.38) {
        const run = pickRun(my)!;
        const { offset, length } = span(run);
        const vol = volumes[run[0]!.alloc]!;
        note(ep.name, `${what}: read of ${length} bytes at ${offset} of ${vol.name}`);
        try {
          const data = await ep.call('read', (v) => v.read(vol, offset, length));
          stats.reads++;
          note(ep.name, `${what}: read answered`);
          recordReads(idx, run, offset, data, startMs, `${what}: read of ${length} bytes at ${offset}`);
        } catch (err) {
          const o = nbdFailure(`${what}: read`, ep, err);
          if (!o.ok && chaos) side = side === 'A' ? 'B' : 'A';
        }
        continue;
      }
      if (r >= 0.72 && r < 0.8) {
        const vol = my.pick(volumes);
        try {
          await ep.call('flush', (v) => v.flush(vol));
          stats.flushes++;
          await checkDurable(`${what}: flush of ${vol.name} through ${ep.name}`, cells.filter((c) => c.alloc === volumes.indexOf(vol)), startMs, null);
        } catch (err) {
          const o = nbdFailure(`${what}: flush`, ep, err);
          if (!o.ok && chaos) side = side === 'A' ? 'B' : 'A';
        }
        continue;
      }
      const zeroRun = r >= 0.8 && r < 0.92 ? pickRun(my, (c) => !zeroedBy.has(c.key)) : null;
      if (zeroRun !== null) {
        // Write-zeroes or trim (the same zeroing in the backend), sometimes with FUA.
        const value = nextValue++;
        for (const c of zeroRun) zeroedBy.set(c.key, value);
        const { offset, length } = span(zeroRun);
        const vol = volumes[zeroRun[0]!.alloc]!;
        const fua = my.chance(0.25);
        const kind = my.chance(0.5) ? 'write-zeroes' : 'trim';
        let o: Outcome = { ok: true };
        note(ep.name, `${what}: ${kind} ${value} of ${length} bytes at ${offset} of ${vol.name}${fua ? ' (FUA)' : ''}`);
        try {
          await ep.call(kind, (v) => v.writeZeroes(vol, offset, length, fua));
          stats.zeroesAcked++;
        } catch (err) {
          o = nbdFailure(`${what}: ${kind}${fua ? ' (FUA)' : ''} of ${length} bytes at ${offset}`, ep, err);
          if (chaos) side = side === 'A' ? 'B' : 'A';
        }
        recordWrites(idx, zeroRun, value, startMs, o.ok ? 'ok' : o.outcome);
        if (o.ok && fua) await checkDurable(`${what}: ${kind} ${value} (FUA) through ${ep.name}`, zeroRun, startMs, value);
        continue;
      }
      // An NBD write is one request into the core: no longer than pieceBytes (the server advertises no more).
      const run = withinBytes(pickRun(my)!, epOpts.pieceBytes);
      const value = nextValue++;
      const { offset, data } = writeBytes(run, value);
      const vol = volumes[run[0]!.alloc]!;
      const fua = my.chance(0.15);
      let o: Outcome = { ok: true };
      note(ep.name, `${what}: write ${value} of ${data.length} bytes at ${offset} of ${vol.name}${fua ? ' (FUA)' : ''}`);
      try {
        await ep.call('write', (v) => v.write(vol, offset, data, fua));
        stats.writesAcked++;
        note(ep.name, `${what}: write ${value} acknowledged`);
      } catch (err) {
        note(ep.name, `${what}: write ${value} failed: ${String(err)}`);
        o = nbdFailure(`${what}: write${fua ? ' (FUA)' : ''} of ${data.length} bytes at ${offset}`, ep, err);
        stats.writesMaybe++;
        if (chaos) side = side === 'A' ? 'B' : 'A';
      }
      recordWrites(idx, run, value, startMs, o.ok ? 'ok' : o.outcome);
      if (o.ok && fua) await checkDurable(`${what}: write ${value} (FUA) through ${ep.name}`, run, startMs, value);
    }
    actorsLeft--;
  };

  /** A client of the client endpoint (like PairClient): tagged writes, a retry on the other controller in chaos. */
  const endpointActor = async (idx: number): Promise<void> => {
    const my = new Prng(seed * 37 + idx);
    const conns: Partial<Record<NodeName, SimClient>> = {};
    const on = (name: NodeName): SimClient => {
      let c = conns[name];
      if (c === undefined || c.closed) {
        c = h.client(name);
        c.timeoutMs = chaos ? 1_000 : 0;
        conns[name] = c;
      }
      return c;
    };
    const clientId = 5000 + idx;
    let clientSeq = 0;
    const attempt = async <T>(what: string, fn: (c: SimClient) => Promise<T>): Promise<{ ok: true; value: T } | { ok: false }> => {
      let target: NodeName = my.chance(0.5) ? 'A' : 'B';
      const deadline = h.nowMs + 30_000;
      for (;;) {
        const c = on(target);
        note(c.controller, `${what}`);
        try {
          const value = await fn(c);
          note(c.controller, `${what}: ok`);
          return { ok: true, value };
        } catch (err) {
          const code = codeOf(err);
          note(c.controller, `${what}: ${code}`);
          if (!chaos || !RETRYABLE.has(code)) {
            errors.push(`${what} through ${c.controller}: ${code} ${String(err)} at ${h.nowMs} ms`);
            return { ok: false };
          }
          if (h.nowMs >= deadline) return { ok: false };
          target = target === 'A' ? 'B' : 'A';
          await h.sleep(5 + my.int(25));
        }
      }
    };
    for (let op = 0; op < opsPerActor; op++) {
      if (thinkMs > 0) await h.sleep(my.int(thinkMs + 1));
      const run = pickRun(my)!;
      const guid = allocs[run[0]!.alloc]!.guid;
      const what = `endpoint actor ${idx} op ${op}`;
      const startMs = clock();
      if (my.chance(0.5)) {
        const value = nextValue++;
        const { offset, data } = writeBytes(run, value);
        const tag = { clientId, clientSeq: ++clientSeq };
        const r = await attempt(`${what}: write ${value} of ${data.length} bytes at ${offset} of vol${run[0]!.alloc}`, (c) => c.write(guid, offset, data, 0, tag));
        if (r.ok) stats.writesAcked++;
        else stats.writesMaybe++;
        recordWrites(idx, run, value, startMs, r.ok ? 'ok' : 'unknown');
      } else {
        const { offset, length } = span(run);
        const r = await attempt(`${what}: read of ${length} bytes at ${offset} of vol${run[0]!.alloc}`, (c) => c.read(guid, offset, length));
        if (!r.ok) continue;
        stats.reads++;
        recordReads(idx, run, offset, r.value, startMs, `${what}: read of ${length} bytes at ${offset}`);
      }
    }
    actorsLeft--;
  };

  /** Restart whatever is dead, end the partition, and wait until both are mirrored and hear each other. */
  const recover = async (my: Prng, what: string): Promise<void> => {
    for (let waited = 0; !settled(); waited += 5) {
      if (waited > 60_000) throw new Error(`${what}: not mirrored after 60 s (${where()})${trace()}`);
      for (const n of h.nodes) {
        if (n.alive) continue;
        await h.sleep(my.int(40));
        await h.beginRestart(n.name);
      }
      if (h.nodes.every((n) => n.alive)) h.heal();
      await h.sleep(5);
    }
  };

  const chaosActor = async (): Promise<void> => {
    const my = new Prng(seed * 7 + 5);
    const timeout = timing.partnerTimeoutMs;
    await chaosRounds(h, my, faults, 60, () => actorsLeft > 0, async (fault, name) => {
      stats.faults++;
      await injectFault(h, my, fault, name, timeout, () => my.pick([my.int(50), my.int(timeout), timeout + my.int(2 * timeout)]));
      await recover(my, `after ${fault} of ${name}`);
    });
  };

  const work: Promise<void>[] = [];
  for (let i = 0; i < nbdActors; i++) work.push(nbdActor(i));
  for (let i = 0; i < endpointActors; i++) work.push(endpointActor(nbdActors + i));
  if (chaos) work.push(chaosActor());
  await h.run(Promise.all(work), 'NBD workload', 3_000_000);
  await h.runUntilQuiet();
  if (!mirrored()) throw new Error(`not mirrored at the end (${where()})${trace()}`);
  if (errors.length > 0) failures.push(`client errors:\n  ${errors.slice(0, 10).join('\n  ')}`);

  // Both copies of every page, before anything else reads or flushes.
  const copies = await checkCopies(h);
  stats.pagesCompared = copies.pagesCompared;
  if (copies.mismatches.length > 0) failures.push(`copies differ: ${describeMismatches(copies)}`);

  // The final contents through NBD on both controllers: a last read of every cell for the checker.
  const finals = new Map<string, number>();
  const served: Buffer[] = [];
  for (const [i, vol] of volumes.entries()) {
    const viaA = await h.run(endpointOn('A')!.call('final read', (v) => v.read(vol, 0, vol.sizeBytes)), 'final read through A');
    const viaB = await h.run(endpointOn('B')!.call('final read', (v) => v.read(vol, 0, vol.sizeBytes)), 'final read through B');
    if (!viaA.equals(viaB)) failures.push(`volume ${vol.name}: A and B serve different bytes over NBD`);
    const mine = cells.filter((c) => c.alloc === i);
    const { values, dirtyGapAt } = readCells(mine, 0, viaA);
    const end = mine.length === 0 ? 0 : mine[mine.length - 1]!.offset + mine[mine.length - 1]!.length;
    if (dirtyGapAt !== null || !viaA.subarray(end).every((x) => x === 0)) failures.push(`volume ${vol.name}: bytes no write covers changed (at ${dirtyGapAt ?? 'the tail'})`);
    for (const [k, c] of mine.entries()) finals.set(c.key, valueOf(c, values[k]!));
    served.push(viaA);
  }

  if (h.violations.length > 0) failures.push(`invariants:\n  ${h.violations.join('\n  ')}`);
  const result = checkFinal(history, finals);
  if (result.verdict !== 'linearizable') {
    const shown = shownViolations(result, history, finals, '  ');
    failures.push(`history check: ${result.verdict}, ${result.violations.length} violations ${JSON.stringify(result.byKind)}\n${shown}`);
  }

  // A flush through NBD: the store then holds exactly what the pair serves.
  await h.run(endpointOn('B')!.call('flush', (v) => Promise.all(volumes.map((vol) => v.flush(vol)))), 'final flush');
  await h.runUntilQuiet();
  const dirty = h.nodes.map((n) => n.core.status().dirtyPages);
  if (dirty.some((d) => d !== 0)) failures.push(`dirty pages after the flush: ${dirty.join(', ')}`);
  const view = await h.openStoreView();
  const table = await view.readTable();
  for (const [i, al] of allocs.entries()) {
    const rec = table.records.find((r) => r.guid === al.guid);
    if (rec === undefined) {
      failures.push(`allocation ${i} is not in the stored table`);
      continue;
    }
    for (let p = 0; p < pagesPerAlloc; p++) {
      const sp = await view.readPage({ guid: rec.guid, dataOffset: rec.dataOffset, pageSizeBytes: pageBytes }, p);
      if (!sp.data.equals(served[i]!.subarray(p * pageBytes, (p + 1) * pageBytes))) failures.push(`stored page ${p} of vol${i} is not what the pair served`);
    }
  }
  const errorLogs = h.errorLogs();
  if (errorLogs.length > 0) failures.push(`error logs:\n  ${errorLogs.slice(0, 5).map((l) => `${l.atMs} ${l.node}${l.incarnation} ${l.msg} ${JSON.stringify(l.obj)}`).join('\n  ')}`);

  if (failures.length > 0) throw new Error(`${failures.join('\n')}\n(${where()})${trace()}`);
  stats.virtualMs = h.nowMs;
  stats.historyOps = history.length;
  return stats;
}

/** The run's first cells, as many as one write of `bytes` covers (a cell is never over a page, and a piece at least one). */
function withinBytes(run: readonly Cell[], bytes: number): Cell[] {
  let last = run.length - 1;
  while (last > 0 && run[last]!.offset + run[last]!.length - run[0]!.offset > bytes) last--;
  return run.slice(0, last + 1);
}
