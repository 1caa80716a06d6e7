// One seeded random workload on a simulated pair: several clients, each
// owning a byte range that shares pages with its neighbours, write and read
// through either controller at random while frames and store completions
// arrive with random delays; with chaos, the link also drops and comes back
// and either controller is killed and restarted. Checked:
// - every read returns the last acknowledged bytes of its range (a write that
//   failed in a way that leaves it undecided, such as PARTNER_LOST, may or
//   may not have happened; a later read while mirrored decides it);
// - when quiet and mirrored both sides agree (digests, contents);
// - after a flush the store holds exactly what the pair serves;
// - nothing is logged at error level and no request fails unexpectedly.
// Assertions name the seed, which replays the run.

import { expect } from 'vitest';
import { isPagepairError } from '../../src/errors.js';
import { Role } from '../../src/protocol/messages.js';
import { Harness, tagged, type NodeName } from './harness.js';
import { Prng } from './prng.js';
import type { SimClient } from './sim-client.js';

const PAGE = 512;
const PAGES_PER_ALLOC = 12;

interface Region {
  alloc: number;
  offset: number;
  length: number;
  /** What the region may hold now: one buffer unless a write is undecided. */
  candidates: Buffer[];
}

export interface WorkloadOptions {
  /** Cut the link and kill/restart controllers while the clients work. */
  chaos?: boolean;
  /** One controller with mirroring off: every client talks to A. */
  single?: boolean;
  opsPerActor?: number;
}

/** The harness of the last run, for a debugging session to inspect. */
export let lastHarness: Harness | undefined;

/** Refused before anything was applied. */
const NOT_APPLIED = new Set(['NOT_MIRRORED', 'NOT_ACTIVE', 'SHUTTING_DOWN']);
/** The write may or may not have been applied. */
// FENCED can come after a write was applied here (its store write refused by the lease).
const UNDECIDED = new Set(['PARTNER_LOST', 'TIMEOUT', 'FENCED']);

function codeOf(err: unknown): string {
  if (isPagepairError(err)) return err.code;
  const text = String(err);
  return /connection to [AB] (lost|is closed)/.test(text) ? 'CONNECTION_LOST' : `untyped: ${text}`;
}

function addCandidate(list: Buffer[], b: Buffer): void {
  if (!list.some((x) => x.equals(b))) list.push(b);
}

export interface WorkloadStats {
  disruptions: number;
  writesAcked: number;
  writesRefused: number;
  writesUndecided: number;
  reads: number;
  virtualMs: number;
}

export async function runSeed(seed: number, opts: WorkloadOptions = {}): Promise<WorkloadStats> {
  const chaos = opts.chaos ?? false;
  const single = opts.single ?? false;
  if (chaos && single) throw new Error('chaos needs a pair');
  const rng = new Prng(seed ^ 0x5eed);
  const h = await Harness.createPair({
    seed,
    frameDelayMaxMs: rng.int(5),
    storeDelayMaxMs: rng.int(5),
    clientDelayMaxMs: rng.int(3),
    dirtyAgeMaxMs: rng.pick([50, 400, 3_600_000]),
    destageConcurrency: rng.pick([1, 4, 8]),
    cacheBytesMax: rng.pick([64, 256]) * PAGE,
    mirroring: !single,
  });
  lastHarness = h;
  // PAGEPAIR_SIM_TRACE=1 adds the last log records of both cores to a failure.
  const trace = (): string =>
    process.env.PAGEPAIR_SIM_TRACE
      ? `\n${h.logs
          .slice(-120)
          .map((l) => `${l.atMs} ${l.node}${l.incarnation} ${l.level} ${l.msg} ${JSON.stringify(l.obj)}`)
          .join('\n')}`
      : '';
  const fail = (what: string): string => `${what} (${chaos ? 'chaos, ' : ''}${h.describe()})${trace()}`;
  const admin = h.client('A');
  const allocs = [
    await h.run(admin.allocate('r0', PAGES_PER_ALLOC * PAGE, 'tiny')),
    await h.run(admin.allocate('r1', PAGES_PER_ALLOC * PAGE, 'tiny')),
  ];

  // Regions of 300..1500 bytes laid end to end: neighbours share pages.
  const regions: Region[] = [];
  for (let i = 0; i < allocs.length; i++) {
    let at = rng.int(200);
    while (at < PAGES_PER_ALLOC * PAGE - 300 && regions.length < 4 * (i + 1)) {
      const length = Math.min(300 + rng.int(1200), PAGES_PER_ALLOC * PAGE - at);
      regions.push({ alloc: i, offset: at, length, candidates: [Buffer.alloc(length)] });
      at += length + rng.int(3) * 100;
    }
  }

  const pools: Record<NodeName, SimClient[]> = { A: [], B: [] };
  const clientOn = (wanted: NodeName, pick: Prng): SimClient => {
    const name: NodeName = single ? 'A' : wanted;
    const pool = pools[name].filter((c) => !c.closed);
    while (pool.length < 2) pool.push(h.client(name));
    pools[name] = pool;
    return pick.pick(pool);
  };
  const mirrored = (): boolean =>
    single ? h.a.core.currentRole === Role.SINGLE : h.linkUp && h.nodes.every((n) => n.alive && n.core.currentRole === Role.MIRRORED);
  // Grows at every cut or kill: a read narrows an undecided write only if it
  // ran entirely while the pair was mirrored.
  let disruptions = 0;
  const stats: WorkloadStats = { disruptions: 0, writesAcked: 0, writesRefused: 0, writesUndecided: 0, reads: 0, virtualMs: 0 };
  const errors: string[] = [];
  let actorsLeft = regions.length;

  const actor = async (idx: number, r: Region): Promise<void> => {
    const my = new Prng(seed * 31 + idx);
    const guid = allocs[r.alloc]!.guid;
    for (let op = 0; op < (opts.opsPerActor ?? 10); op++) {
      const c = clientOn(my.chance(0.5) ? 'A' : 'B', my);
      const from = my.int(r.length);
      const len = 1 + my.int(r.length - from);
      if (my.chance(0.55)) {
        const data = tagged(len, `s${seed}a${idx}o${op}${c.controller}`);
        const applied = r.candidates.map((b) => {
          const n = Buffer.from(b);
          data.copy(n, from);
          return n;
        });
        try {
          await c.write(guid, r.offset + from, data);
          stats.writesAcked++;
          r.candidates = [];
          for (const b of applied) addCandidate(r.candidates, b);
        } catch (err) {
          const code = codeOf(err);
          if (UNDECIDED.has(code) || code === 'CONNECTION_LOST') {
            // Decided later, by a read while mirrored.
            stats.writesUndecided++;
            for (const b of applied) addCandidate(r.candidates, b);
          } else if (NOT_APPLIED.has(code) && chaos) {
            stats.writesRefused++;
          } else {
            errors.push(`actor ${idx} op ${op}: write through ${c.controller}: ${code} ${String(err)}`);
          }
          await h.sleep(5 + my.int(20));
        }
      } else {
        const before = disruptions;
        const stable = mirrored();
        try {
          const got = await c.read(guid, r.offset + from, len);
          stats.reads++;
          const matching = r.candidates.filter((b) => b.subarray(from, from + len).equals(got));
          if (matching.length === 0) errors.push(`actor ${idx} op ${op}: read through ${c.controller} of ${from}+${len} returned bytes never written there (or stale)`);
          else if (stable && before === disruptions && mirrored()) r.candidates = matching;
        } catch (err) {
          const code = codeOf(err);
          // Arbitrating (NOT_MIRRORED), fenced, or not joined yet: no read is served.
          if (!chaos || !['NOT_ACTIVE', 'CONNECTION_LOST', 'NOT_MIRRORED', 'FENCED'].includes(code)) errors.push(`actor ${idx} op ${op}: read through ${c.controller}: ${code} ${String(err)}`);
          await h.sleep(5 + my.int(20));
        }
      }
    }
    actorsLeft--;
  };

  const flusher = async (): Promise<void> => {
    const my = new Prng(seed * 97);
    for (let k = 0; k < 3; k++) {
      await h.sleep(my.int(40));
      const c = clientOn(my.chance(0.5) ? 'A' : 'B', my);
      try {
        await c.flush(my.chance(0.5) ? '' : my.pick(allocs).guid);
      } catch (err) {
        const code = codeOf(err);
        if (!chaos || !['NOT_MIRRORED', 'PARTNER_LOST', 'CONNECTION_LOST', 'FENCED', 'NOT_ACTIVE', 'TIMEOUT'].includes(code)) errors.push(`flush through ${c.controller}: ${code} ${String(err)}`);
      }
    }
  };

  const waitMirrored = async (what: string): Promise<void> => {
    for (let waited = 0; !mirrored(); waited += 5) {
      if (waited > 30_000) throw new Error(fail(`${what}: not mirrored after 30 s`));
      await h.sleep(5);
    }
  };

  const chaosActor = async (): Promise<void> => {
    const my = new Prng(seed * 7 + 3);
    while (actorsLeft > 0) {
      await h.sleep(10 + my.int(80));
      if (actorsLeft === 0) break;
      const what = my.pick(['cut', 'cut', 'kill-A', 'kill-B'] as const);
      disruptions++;
      if (what === 'cut') {
        h.cut('chaos');
        await h.sleep(my.int(40));
      } else {
        const name: NodeName = what === 'kill-A' ? 'A' : 'B';
        h.kill(name);
        await h.sleep(my.int(40));
        await h.beginRestart(name);
      }
      h.heal();
      await waitMirrored(`after ${what}`);
    }
  };

  const work = [...regions.map((r, i) => actor(i, r)), flusher()];
  if (chaos) work.push(chaosActor());
  await h.run(Promise.all(work), 'workload', 1_000_000);
  expect(errors, fail('client errors')).toEqual([]);

  await h.runUntilQuiet();
  expect(mirrored(), fail('mirrored at the end')).toBe(true);
  if (!single) expect(h.status('B').digests, fail('digests when quiet')).toEqual(h.status('A').digests);
  const served: Buffer[] = [];
  for (const [i, al] of allocs.entries()) {
    const viaA = await h.run(clientOn('A', rng).read(al.guid, 0, PAGES_PER_ALLOC * PAGE));
    const viaB = await h.run(clientOn('B', rng).read(al.guid, 0, PAGES_PER_ALLOC * PAGE));
    expect(viaB.equals(viaA), fail(`allocation ${i}: A and B serve different bytes`)).toBe(true);
    const outside = Buffer.from(viaA);
    for (const [k, r] of regions.entries()) {
      if (r.alloc !== i) continue;
      const got = viaA.subarray(r.offset, r.offset + r.length);
      expect(r.candidates.some((c) => c.equals(got)), fail(`region ${k} holds bytes never acknowledged or lost`)).toBe(true);
      outside.fill(0, r.offset, r.offset + r.length);
    }
    expect(outside.equals(Buffer.alloc(outside.length)), fail(`allocation ${i}: bytes outside every region changed`)).toBe(true);
    served.push(viaA);
  }
  await h.run(clientOn('B', rng).flush());
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
  stats.disruptions = disruptions;
  stats.virtualMs = h.nowMs;
  return stats;
}
