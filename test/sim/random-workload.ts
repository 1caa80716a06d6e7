// One seeded random workload on a simulated pair. Actors (clients that know
// both controllers, like PairClient) write and read runs of cells (cells.ts)
// through either controller, and several actors touch the same cells, while
// frames and store completions arrive with seeded delays. With chaos, a fault
// actor also partitions and drops the link, kills and restarts controllers,
// pauses them (longer than the partner timeout, sometimes), crashes them in
// the middle of a store write that may land torn, and kills a survivor too
// once it has written through everything it took over (the "double" fault);
// one fault at a time, plus the odd second fault on the side that is
// catching up. A torn page write only happens while mirrored: alone, it would
// destroy the only copy of the acknowledged version under it, which is a
// second failure (the partner is gone already) and not promised.
//
// Torn pages: when a crash tears a page, the survivor still holds that page
// dirty and writes it again, so no read ever meets a torn page; a
// CHECKSUM_MISMATCH read fails the run like any unexpected error.
//
// An actor retries a failed request on the other controller (or the same one
// a moment later) as PairClient does; a retried write carries the same
// (clientId, clientSeq) tag, so a write that landed before its answer was
// lost must not be applied again: that is the duplicate the link cannot make
// (it is an ordered WebSocket) but clients do.
//
// Checked at the end of the run:
// - the history of every cell (each actor op, from its first attempt to its
//   final answer) is linearizable, with the final contents as a last read
//   (src/checker): no acknowledged write lost, no stale or garbage read;
// - the invariants the harness watches (Harness.violations): no store write
//   from a superseded controller, no two controllers alone in an epoch, at
//   most one acknowledging alone in an epoch, no acknowledgement from a
//   controller that does not serve;
// - when quiet and mirrored both sides agree (digests, and every page's
//   bytes, version and CRC and owner: copies-checker.ts), and after a flush
//   the store holds exactly what the pair serves;
// - a crash, torn write or not, leaves a store that opens with its table and
//   mailbox readable;
// - nothing is logged at error level and no request fails unexpectedly.
// Every assertion names the seed, the mode and the line that replays it.

import { expect } from 'vitest';
import { checkFinal, type HistoryOp } from '../../src/checker/index.js';
import { Role } from '../../src/protocol/messages.js';
import { PageStore } from '../../src/store/page-store.js';
import { layCells, readCells, writeBytes, type Cell } from './cells.js';
import { checkCopies, describeMismatches } from './copies-checker.js';
import { Harness, type NodeName } from './harness.js';
import { shownViolations } from './history-text.js';
import { RETRYABLE, chaosRounds, codeOf, drawPairOptions, drawTiming, simNote, traceOf } from './workload-common.js';
import { Prng } from './prng.js';
import { injectFault } from './faults.js';
import type { AllocationInfo, SimClient } from './sim-client.js';
import type { StoreWriteKind } from './sim-store.js';

const PAGE = 512;
const PAGES_PER_ALLOC = 12;
const ALLOCS = 2;

export type FaultKind = 'cut' | 'drop' | 'kill' | 'pause' | 'crash' | 'double';
export const ALL_FAULTS: readonly FaultKind[] = ['cut', 'drop', 'kill', 'pause', 'crash', 'double'];

export interface WorkloadOptions {
  /** Inject faults while the clients work. */
  chaos?: boolean;
  /** The faults chaos picks from (default: all). */
  faults?: readonly FaultKind[];
  /** The survivor's fence action kills a silent partner (default true); false: the paused one must fence itself. */
  fenceKills?: boolean;
  /** One controller with mirroring off: every client talks to A. */
  single?: boolean;
  opsPerActor?: number;
  /**
   * Keep retrying a write across a moment when both controllers were down
   * (the "double" fault). The controllers remember tags in memory only, so
   * a restarted pair would apply such a retry again (not promised:
   * docs/failure-model.md); by default the client
   * gives up on it instead, and the write counts as maybe-happened.
   */
  retryAcrossPairRestart?: boolean;
  /** Plant a bad read in the history before it is checked, to show the check can fail. */
  plant?: 'stale-read';
}

/** The harness of the last run, for a debugging session to inspect. */
export let lastHarness: Harness | undefined;

/** Answers after which "not here" is the likely reason: try the other one (RETRYABLE ones may also succeed a moment later). */
const SWITCH = new Set(['NOT_ACTIVE', 'FENCED', 'SHUTTING_DOWN', 'CONNECTION_LOST', 'TIMEOUT']);

export interface WorkloadStats {
  disruptions: Partial<Record<FaultKind | 'second', number>>;
  writesAcked: number;
  writesUnknown: number;
  reads: number;
  retries: number;
  tornWrites: number;
  virtualMs: number;
  historyOps: number;
}

/** The line that replays one seed with every mode. */
export function replayLine(seed: number): string {
  return `SEED=${seed} npx vitest run test/sim/core-pair-random.test.ts`;
}

export function modeName(opts: WorkloadOptions): string {
  if (opts.single === true) return 'single';
  if (opts.chaos !== true) return 'mirrored';
  const faults = opts.faults === undefined || opts.faults.length === ALL_FAULTS.length ? '' : ` [${opts.faults.join(',')}]`;
  return `chaos${opts.fenceKills === false ? ', no fence kills' : ''}${faults}`;
}

export async function runSeed(seed: number, opts: WorkloadOptions = {}): Promise<WorkloadStats> {
  const chaos = opts.chaos ?? false;
  const single = opts.single ?? false;
  const fenceKills = opts.fenceKills ?? true;
  const faults = opts.faults ?? ALL_FAULTS;
  if (chaos && single) throw new Error('chaos needs a pair');
  const rng = new Prng(seed ^ 0x5eed);
  const timing = drawTiming(rng);
  const h = await Harness.createPair({
    seed,
    ...drawPairOptions(rng, { frameDelayMaxMs: 5, dirtyAgesMs: [50, 400, 3_600_000], cachePages: [64, 256], pageBytes: PAGE }),
    mirroring: !single,
    fenceKills,
    ...timing,
    // Only a fence action that kills a paused controller stops the writes it had queued in its thread pool.
    deferLandingWhilePaused: chaos && fenceKills && rng.chance(0.5),
  });
  lastHarness = h;
  const mode = modeName(opts);
  // PAGEPAIR_SIM_TRACE=1 adds the last log records of both cores to a failure.
  const trace = (): string => traceOf(h);
  const tracing = process.env.PAGEPAIR_SIM_TRACE !== undefined;
  const fail = (what: string): string => `${what} (seed ${seed}, ${mode}; ${h.describe()}; ${h.incarnations()}; replay: ${replayLine(seed)})${trace()}`;

  const admin = h.client('A');
  const allocs: AllocationInfo[] = [];
  for (let i = 0; i < ALLOCS; i++) allocs.push(await h.run(admin.allocate(`r${i}`, PAGES_PER_ALLOC * PAGE, 'tiny')));
  const cells = layCells(rng, ALLOCS, PAGES_PER_ALLOC, PAGE);

  const history: HistoryOp[] = [];
  // Virtual ms, with the step count as a fraction: order within one ms is the real order of events.
  const clock = (): number => h.nowMs + h.sched.steps / 1e7;
  let nextValue = 1;
  const errors: string[] = [];
  const stats: WorkloadStats = { disruptions: {}, writesAcked: 0, writesUnknown: 0, reads: 0, retries: 0, tornWrites: 0, virtualMs: 0, historyOps: 0 };
  const count = (k: FaultKind | 'second'): void => {
    stats.disruptions[k] = (stats.disruptions[k] ?? 0) + 1;
  };

  const mirrored = (): boolean =>
    single ? h.a.core.currentRole === Role.SINGLE : h.linkUp && h.nodes.every((n) => n.alive && !n.paused && n.core.currentRole === Role.MIRRORED);
  // Mirrored, and each side has heard from the other lately: right after a
  // resume both still say "mirrored" until one of them notices the silence.
  const settled = (): boolean =>
    mirrored() && (single || h.nodes.every((n) => (n.core.status().partner?.lastHeardMsAgo ?? Infinity) <= 2 * timing.heartbeatIntervalMs));
  const clientTimeoutMs = chaos ? rng.pick([400, 1000, 2500]) : 0;
  const retryForMs = 30_000;

  /** One actor's connections, one per controller, remade when a controller dies. */
  const connections = (): { on(name: NodeName): SimClient } => {
    const conns: Partial<Record<NodeName, SimClient>> = {};
    return {
      on(name: NodeName): SimClient {
        const target: NodeName = single ? 'A' : name;
        let c = conns[target];
        if (c === undefined || c.closed) {
          c = h.client(target);
          c.timeoutMs = clientTimeoutMs;
          conns[target] = c;
        }
        return c;
      },
    };
  };

  /** Grows each time both controllers have been down at once. */
  let pairRestarts = 0;
  type Attempt<T> = { ok: true; value: T } | { ok: false; code: string };
  /** Runs fn on a controller, moving on like PairClient on a retryable failure, for up to retryForMs. */
  const attempt = async <T>(
    my: Prng,
    conns: { on(name: NodeName): SimClient },
    start: NodeName,
    what: string,
    fn: (c: SimClient) => Promise<T>,
    isWrite = false,
  ): Promise<Attempt<T>> => {
    let target = start;
    const deadline = h.nowMs + retryForMs;
    const restartsAtStart = pairRestarts;
    for (;;) {
      if (isWrite && pairRestarts !== restartsAtStart && opts.retryAcrossPairRestart !== true) return { ok: false, code: 'PAIR_RESTARTED' };
      const c = conns.on(target);
      const sentMs = h.nowMs;
      try {
        const value = await fn(c);
        if (tracing) h.logs.push({ node: c.controller, incarnation: h.node(c.controller).incarnation, atMs: h.nowMs, level: 'info', msg: `sim: ${what}: ok`, obj: { sentMs } });
        return { ok: true, value };
      } catch (err) {
        const code = codeOf(err);
        if (tracing) h.logs.push({ node: c.controller, incarnation: h.node(c.controller).incarnation, atMs: h.nowMs, level: 'info', msg: `sim: ${what}: ${code}`, obj: { sentMs } });
        if (!chaos || !RETRYABLE.has(code)) {
          errors.push(`${what} through ${c.controller}: ${code} ${String(err)} at ${h.nowMs} ms`);
          return { ok: false, code };
        }
        if (h.nowMs >= deadline) return { ok: false, code };
        stats.retries++;
        if (!single && (SWITCH.has(code) || my.chance(0.5))) target = target === 'A' ? 'B' : 'A';
        await h.sleep(my.chance(0.8) ? 5 + my.int(25) : 50 + my.int(150));
      }
    }
  };

  let actorsLeft = 0;
  const actorCount = 4 + rng.int(5);
  // Pauses between an actor's ops: with them a run lasts long enough for several faults.
  // How far an actor strays from its home cells: small spreads make actors fight over a few cells.
  const spread = rng.pick([4, 12, 24]);
  const thinkMs = chaos ? rng.pick([0, 10, 30]) : rng.pick([0, 0, 10]);
  const actor = async (idx: number): Promise<void> => {
    const my = new Prng(seed * 31 + idx);
    const conns = connections();
    const clientId = 1000 + idx;
    let clientSeq = 0;
    // Each actor keeps to a home stretch of cells most of the time, shared with its neighbours.
    const home = Math.floor((idx * cells.length) / actorCount);
    for (let op = 0; op < (opts.opsPerActor ?? 10); op++) {
      if (thinkMs > 0) await h.sleep(my.int(thinkMs + 1));
      const startCell = my.chance(0.6) ? Math.min(cells.length - 1, home + my.int(spread)) : my.int(cells.length);
      const first = cells[startCell]!;
      let last = startCell;
      const want = 1 + my.int(my.chance(0.8) ? 4 : 14);
      while (last + 1 < cells.length && last - startCell + 1 < want && cells[last + 1]!.alloc === first.alloc) last++;
      const run: Cell[] = cells.slice(startCell, last + 1);
      const guid = allocs[first.alloc]!.guid;
      const via: NodeName = my.chance(0.5) ? 'A' : 'B';
      const startMs = clock();
      if (my.chance(0.5)) {
        const value = nextValue++;
        const { offset, data } = writeBytes(run, value);
        const tag = { clientId, clientSeq: ++clientSeq };
        const r = await attempt(my, conns, via, `actor ${idx} op ${op}: write ${value}`, (c) => c.write(guid, offset, data, 0, tag), true);
        const endMs = clock();
        if (r.ok) stats.writesAcked++;
        else stats.writesUnknown++;
        for (const c of run) {
          history.push({ id: history.length + 1, process: idx, kind: 'write', key: c.key, value, startMs, endMs: r.ok ? endMs : null, outcome: r.ok ? 'ok' : 'unknown' });
        }
      } else {
        const offset = run[0]!.offset;
        const last = run[run.length - 1]!;
        const length = last.offset + last.length - offset;
        const r = await attempt(my, conns, via, `actor ${idx} op ${op}: read`, (c) => c.read(guid, offset, length));
        const endMs = clock();
        if (!r.ok) continue;
        stats.reads++;
        const { values, dirtyGapAt } = readCells(run, offset, r.value);
        if (dirtyGapAt !== null) errors.push(`actor ${idx} op ${op}: byte ${dirtyGapAt} of allocation ${first.alloc}, which no write covers, is not zero`);
        for (const [i, c] of run.entries()) {
          // Garbage (no write's pattern) gets a value no write wrote: the checker calls it a phantom read.
          const value = values[i] ?? 0x7fff_0000 + c.index;
          history.push({ id: history.length + 1, process: idx, kind: 'read', key: c.key, value, startMs, endMs, outcome: 'ok' });
        }
      }
    }
    actorsLeft--;
  };

  const flusher = async (): Promise<void> => {
    const my = new Prng(seed * 97);
    const conns = connections();
    for (let k = 0; k < 3; k++) {
      await h.sleep(my.int(40));
      const guid = my.chance(0.5) ? '' : my.pick(allocs).guid;
      await attempt(my, conns, my.chance(0.5) ? 'A' : 'B', 'flush', (c) => c.flush(guid));
    }
  };

  /** A crash must leave a store that opens, with its table and mailbox readable. */
  const checkStoreOpens = async (after: string): Promise<void> => {
    try {
      const view = await PageStore.open(h.device);
      await view.readTable();
      await view.readMailbox();
    } catch (err) {
      errors.push(`after ${after}: the store does not open: ${String(err)}`);
    }
  };

  /** Restart whatever is dead, end the partition, and wait for both to be mirrored. */
  const recover = async (my: Prng, what: string, secondFault: boolean): Promise<void> => {
    let second = secondFault;
    for (let waited = 0; !settled(); ) {
      if (waited > 60_000) throw new Error(fail(`${what}: not mirrored after 60 s`));
      for (const n of h.nodes) {
        if (n.alive) continue;
        await h.sleep(my.int(40));
        await h.beginRestart(n.name);
      }
      // A fence action may have killed one again meanwhile: the next round restarts it.
      if (h.nodes.every((n) => n.alive)) h.heal();
      if (second && my.chance(0.5)) {
        // A second fault while the pair catches up, on the side that holds nothing the other lacks.
        second = false;
        await h.sleep(my.int(30));
        const joining = h.nodes.find((n) => n.alive && n.core.currentRole !== Role.ALONE && h.nodes.some((m) => m !== n && m.core.currentRole === Role.ALONE));
        if (joining !== undefined && !mirrored()) {
          count('second');
          simNote(h, joining.name, `chaos: second fault on ${joining.name}`);
          if (my.chance(0.5)) {
            h.kill(joining.name);
            continue;
          }
          h.cut('second fault');
          await h.sleep(my.int(60));
          if (h.nodes.every((n) => n.alive)) h.heal();
        }
      }
      await h.sleep(5);
      waited += 5;
    }
  };

  const chaosActor = async (): Promise<void> => {
    const my = new Prng(seed * 7 + 3);
    const timeout = timing.partnerTimeoutMs;
    await chaosRounds(h, my, faults, 80, () => actorsLeft > 0, async (fault, name) => {
      count(fault);
      switch (fault) {
        case 'cut':
        case 'drop':
        case 'kill':
        case 'pause':
          await injectFault(h, my, fault, name, timeout, () => my.pick([my.int(50), my.int(timeout), timeout + my.int(timeout), 2 * timeout + my.int(4 * timeout)]));
          break;
        case 'double': {
          // One controller dies; the survivor writes through alone; once it
          // has destaged everything it inherited, it dies too. Every write it
          // acknowledged is in the store, so a restarted pair serves it.
          const other = h.node(name === 'A' ? 'B' : 'A');
          h.kill(name);
          let clean = false;
          for (let t = 0; t < 5_000 && other.alive && !clean; t += 5) {
            await h.sleep(5);
            const st = other.core.status();
            clean = other.core.currentRole === Role.ALONE && st.dirtyPages === 0 && st.destageInFlight === 0;
          }
          if (clean) {
            await h.sleep(my.int(100));
            h.kill(other.name);
            pairRestarts++;
          }
          break;
        }
        case 'crash': {
          const kinds: StoreWriteKind[] = my.pick([['page'], ['table', 'clear'], ['slot'], ['epoch'], ['page', 'table', 'slot', 'epoch', 'clear']]);
          const tear = my.chance(0.7);
          const node = h.node(name);
          h.crashAtNextWrite(name, kinds, {
            ...(tear ? { tearFraction: my.next() } : {}),
            // A torn page destroys the version under it. Mirrored, the partner
            // holds that page dirty and writes it again; alone, it may be the
            // only copy of acknowledged data, and a crash then is a second
            // failure (the partner is already gone), which is not promised.
            mayTear: (kind) => kind !== 'page' || node.core.currentRole === Role.MIRRORED,
          });
          for (let t = 0; t < 400 && node.alive; t += 10) await h.sleep(10);
          if (node.alive) {
            h.disarmCrash(name);
            h.kill(name);
          }
          await checkStoreOpens(`a crash of ${name}`);
          break;
        }
      }
      await recover(my, `after ${fault} of ${name}`, my.chance(0.3));
    });
  };

  const work: Promise<void>[] = [];
  for (let i = 0; i < actorCount; i++) {
    actorsLeft++;
    work.push(actor(i));
  }
  work.push(flusher());
  if (chaos) work.push(chaosActor());
  await h.run(Promise.all(work), 'workload', 3_000_000);
  expect(errors, fail(`client errors:\n${errors.slice(0, 10).join('\n')}\n`)).toEqual([]);

  await h.runUntilQuiet();
  expect(mirrored(), fail('mirrored at the end')).toBe(true);
  if (!single) expect(h.status('B').digests, fail('digests when quiet')).toEqual(h.status('A').digests);
  if (!single) {
    // Every page of both controllers, not only the dirty ones the digests cover.
    const copies = await checkCopies(h);
    expect(copies.mismatches.length, fail(`copies differ: ${describeMismatches(copies)}`)).toBe(0);
  }

  // The final contents, read through both: a last read of every cell for the checker.
  const finals = new Map<string, number>();
  const served: Buffer[] = [];
  const finalConns = connections();
  for (const [i, al] of allocs.entries()) {
    const viaA = await h.run(finalConns.on('A').read(al.guid, 0, PAGES_PER_ALLOC * PAGE));
    const viaB = await h.run(finalConns.on('B').read(al.guid, 0, PAGES_PER_ALLOC * PAGE));
    expect(viaB.equals(viaA), fail(`allocation ${i}: A and B serve different bytes`)).toBe(true);
    const mine = cells.filter((c) => c.alloc === i);
    const { values, dirtyGapAt } = readCells(mine, 0, viaA);
    const end = mine[mine.length - 1]!.offset + mine[mine.length - 1]!.length;
    const tailClean = viaA.subarray(end).every((x) => x === 0) && viaA.subarray(0, mine[0]!.offset).every((x) => x === 0);
    expect(dirtyGapAt === null && tailClean, fail(`allocation ${i}: bytes no write covers changed (at ${dirtyGapAt})`)).toBe(true);
    for (const [k, c] of mine.entries()) finals.set(c.key, values[k] ?? 0x7fff_0000 + c.index);
    served.push(viaA);
  }
  // The invariants first: a broken one usually explains a history that fails.
  expect(h.violations, fail(`invariants:\n${h.violations.join('\n')}\n`)).toEqual([]);
  if (opts.plant === 'stale-read') plantStaleRead(history);
  const result = checkFinal(history, finals);
  const shown = shownViolations(result, history, finals);
  expect(result.verdict, fail(`history check: ${result.violations.length} violations ${JSON.stringify(result.byKind)}\n${shown}`)).toBe('linearizable');

  await h.run(finalConns.on('B').flush());
  await h.runUntilQuiet();
  expect(h.nodes.map((n) => n.core.status().dirtyPages), fail('dirty pages after flush')).toEqual(h.nodes.map(() => 0));
  const view = await h.openStoreView();
  const table = await view.readTable();
  for (const [i, al] of allocs.entries()) {
    const rec = table.records.find((r) => r.guid === al.guid);
    expect(rec, fail(`allocation ${i} in the stored table`)).toBeDefined();
    for (let p = 0; p < PAGES_PER_ALLOC; p++) {
      const sp = await view.readPage({ guid: rec!.guid, dataOffset: rec!.dataOffset, pageSizeBytes: PAGE }, p);
      expect(sp.data.equals(served[i]!.subarray(p * PAGE, (p + 1) * PAGE)), fail(`stored page ${p} of allocation ${i}`)).toBe(true);
    }
  }
  expect(h.errorLogs().map((r) => r.msg), fail('error logs')).toEqual([]);
  expect(h.violations, fail(`invariants after the flush:\n${h.violations.join('\n')}\n`)).toEqual([]);
  stats.tornWrites = h.tornWrites.length;
  stats.virtualMs = h.nowMs;
  stats.historyOps = history.length;
  return stats;
}

/**
 * Makes one read return the value of an acknowledged write that an
 * acknowledged write overwrote before the read began: a stale read.
 */
function plantStaleRead(history: HistoryOp[]): void {
  for (const r of history) {
    if (r.kind !== 'read' || r.outcome !== 'ok') continue;
    const before = history.filter((w) => w.kind === 'write' && w.key === r.key && w.outcome === 'ok' && w.endMs! < r.startMs);
    const old = before.find((w1) => before.some((w2) => w2.startMs > w1.endMs!));
    if (old === undefined) continue;
    r.value = old.value;
    return;
  }
  throw new Error('plantStaleRead: no read follows two acknowledged writes in order');
}
