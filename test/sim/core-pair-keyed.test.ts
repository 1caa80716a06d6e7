// Keyed allocations served by a pair (src/core/access-keys.ts): made through
// A, refused through either controller to every connection without its key
// (a wrong key, another connection, a connection that unlocked and went),
// served through both to the connections with it, with writers on both
// sides on the same cells judged by the history checker; then A is killed
// and B carries on with the same rules, and A restarted learns them again.

import { describe, expect, it } from 'vitest';
import { checkFinal, type HistoryOp } from '../../src/checker/index.js';
import { layCells, readCells, writeBytes, type Cell } from './cells.js';
import { Harness, type NodeName } from './harness.js';
import { shownViolations } from './history-text.js';
import { codeOf } from './pair-steps.js';
import { Prng } from './prng.js';
import type { SimClient } from './sim-client.js';

const PAGE = 512; // the simulator's 'tiny' policy
const PAGES = 6;

async function code<T>(h: Harness, p: Promise<T>): Promise<string> {
  return codeOf(await h.settle(p));
}

/** A client on `via` that presented the key. */
async function unlocked(h: Harness, via: NodeName, guid: string, key: Buffer): Promise<SimClient> {
  const c = h.client(via);
  await h.run(c.unlock(guid, key));
  return c;
}

async function expectRefusedEverywhere(h: Harness, guid: string, key: Buffer, vias: readonly NodeName[], what: string): Promise<void> {
  const wrong = Buffer.from(key);
  wrong[7] = wrong[7]! ^ 0x10;
  for (const via of vias) {
    const c = h.client(via);
    expect(await code(h, c.read(guid, 0, PAGE)), `${what}: read through ${via} without the key`).toBe('ACCESS_DENIED');
    expect(await code(h, c.write(guid, 0, Buffer.alloc(PAGE, 0xee))), `${what}: write through ${via} without the key`).toBe('ACCESS_DENIED');
    expect(await code(h, c.unlock(guid, wrong)), `${what}: a wrong key through ${via}`).toBe('ACCESS_DENIED');
    expect(await code(h, c.unlock(guid, Buffer.alloc(16))), `${what}: a zero key through ${via}`).toBe('ACCESS_DENIED');
    expect(await code(h, c.read(guid, 0, PAGE)), `${what}: read through ${via} after wrong keys`).toBe('ACCESS_DENIED');
    expect(await code(h, c.flush(guid)), `${what}: flush through ${via} without the key`).toBe('ACCESS_DENIED');
    expect(await code(h, c.release(guid)), `${what}: release through ${via} without the key`).toBe('ACCESS_DENIED');
  }
}

for (const seed of [1501, 1502, 1503]) {
  describe(`keyed allocation served by a pair (seed ${seed})`, () => {
    it('refused without the key through both, served with it through both under concurrent writes, through a takeover and a restart', async () => {
      const rng = new Prng(seed);
      const h = await Harness.createPair({ seed, frameDelayMaxMs: 3 });
      const fail = (what: string): string => `${what} (seed ${seed}; ${h.describe()}; ${h.incarnations()})`;
      const maker = h.client('A');
      const made = await h.run(maker.allocateKeyed('ckpt', PAGES * PAGE, 'tiny'));
      const { guid, key } = made;
      expect(key.length).toBe(16);
      expect(key.equals(Buffer.alloc(16))).toBe(false);
      // Even the connection that made it must unlock it.
      expect(await code(h, maker.read(guid, 0, PAGE))).toBe('ACCESS_DENIED');
      await expectRefusedEverywhere(h, guid, key, ['A', 'B'], 'mirrored');
      expect(await code(h, h.client('B').unlock('00000000-0000-4000-8000-00000000beef', key))).toBe('ACCESS_DENIED');
      // Both list it as keyed.
      for (const via of ['A', 'B'] as const) {
        expect((await h.run(h.client(via).list())).find((e) => e.guid === guid)?.keyed, fail(`C_LIST through ${via}`)).toBe(true);
      }

      // Writers on both controllers, on the same cells, each on its own unlocked connection;
      // intruders on both controllers without the key, writing values that must never be read.
      const cells = layCells(rng, 1, PAGES, PAGE);
      const history: HistoryOp[] = [];
      const clock = (): number => h.nowMs + h.sched.steps / 1e7;
      let nextValue = 1;
      const errors: string[] = [];
      const actor = async (idx: number, c: SimClient): Promise<void> => {
        const my = new Prng(seed * 31 + idx);
        for (let op = 0; op < 12; op++) {
          if (my.chance(0.5)) await h.sleep(my.int(4));
          const start = my.int(cells.length);
          const run: Cell[] = cells.slice(start, Math.min(cells.length, start + 1 + my.int(4)));
          const startMs = clock();
          if (my.chance(0.6)) {
            const value = nextValue++;
            const { offset, data } = writeBytes(run, value);
            const r = await h.settle(c.write(guid, offset, data, 0, { clientId: 100 + idx, clientSeq: op + 1 }));
            const endMs = clock();
            if (!r.ok) errors.push(`actor ${idx} (${c.controller}) write ${value}: ${codeOf(r)}`);
            for (const cell of run) history.push({ id: history.length + 1, process: idx, kind: 'write', key: cell.key, value, startMs, endMs: r.ok ? endMs : null, outcome: r.ok ? 'ok' : 'unknown' });
          } else {
            const offset = run[0]!.offset;
            const last = run[run.length - 1]!;
            const r = await h.settle(c.read(guid, offset, last.offset + last.length - offset));
            const endMs = clock();
            if (!r.ok) {
              errors.push(`actor ${idx} (${c.controller}) read: ${codeOf(r)}`);
              continue;
            }
            const { values, dirtyGapAt } = readCells(run, offset, r.value);
            if (dirtyGapAt !== null) errors.push(`actor ${idx}: byte ${dirtyGapAt}, which no write covers, is not zero`);
            for (const [i, cell] of run.entries()) {
              history.push({ id: history.length + 1, process: idx, kind: 'read', key: cell.key, value: values[i] ?? 0x7fff_0000 + cell.index, startMs, endMs, outcome: 'ok' });
            }
          }
        }
      };
      let refusals = 0;
      const intruder = async (idx: number, c: SimClient): Promise<void> => {
        const my = new Prng(seed * 77 + idx);
        for (let op = 0; op < 8; op++) {
          if (my.chance(0.5)) await h.sleep(my.int(4));
          const start = my.int(cells.length);
          // A value no writer uses: if it were ever read, the checker would call it a phantom.
          const { offset, data } = writeBytes(cells.slice(start, start + 1), 0x4000_0000 + idx * 1000 + op);
          const attempts: (() => Promise<unknown>)[] = [() => c.write(guid, offset, data), () => c.read(guid, offset, data.length), () => c.unlock(guid, Buffer.alloc(16, op + 1))];
          for (const a of attempts) {
            const got = codeOf(await h.settle(a()));
            if (got === 'ACCESS_DENIED') refusals++;
            else errors.push(`intruder ${idx} (${c.controller}): ${got}, not ACCESS_DENIED`);
          }
        }
      };
      const writers = await Promise.all(
        (['A', 'B', 'A', 'B'] as const).map((via) => unlocked(h, via, guid, key)),
      );
      const intruders = [h.client('A'), h.client('B')];
      await h.run(Promise.all([...writers.map((c, i) => actor(i, c)), ...intruders.map((c, i) => intruder(i, c))]), 'keyed workload');
      expect(errors, fail('workload errors')).toEqual([]);
      // The writers ran side by side, through both controllers, on the same cells.
      const writes = history.filter((o) => o.kind === 'write');
      const overlapping = writes.filter((w) => writes.some((v) => v.process !== w.process && v.key === w.key && v.startMs < w.endMs! && w.startMs < v.endMs!));
      expect(new Set(writes.map((w) => writers[w.process]!.controller))).toEqual(new Set(['A', 'B']));
      expect(overlapping.length, fail('concurrent writes to one cell')).toBeGreaterThan(0);
      expect(history.some((o) => o.kind === 'read' && o.value > 0)).toBe(true);
      expect(refusals).toBe(intruders.length * 8 * 3);
      await h.runUntilQuiet();
      expect(h.violations, fail('invariants')).toEqual([]);

      // The final value of every cell, through each side, must agree.
      const finals = new Map<string, number>();
      const wholeA = await h.run(writers[0]!.read(guid, 0, PAGES * PAGE));
      const wholeB = await h.run(writers[1]!.read(guid, 0, PAGES * PAGE));
      expect(wholeA.equals(wholeB), fail('A and B read the same bytes when quiet')).toBe(true);
      const { values } = readCells(cells, 0, wholeA);
      for (const [i, cell] of cells.entries()) finals.set(cell.key, values[i] ?? 0x7fff_0000 + cell.index);
      const result = checkFinal(history, finals);
      expect(result.verdict, fail(`history check ${JSON.stringify(result.byKind)}\n${shownViolations(result, history, finals)}`)).toBe('linearizable');
      expect(h.status('A').digests, fail('digests when quiet')).toEqual(h.status('B').digests);

      // An unlock goes with its connection.
      const leaving = writers[1]!;
      leaving.close();
      h.node('B').core.onClientGone(leaving.connId);
      await h.runUntilQuiet();

      // A dies: B carries on alone, with the same rules.
      h.kill('A');
      await h.runUntil(() => h.status('B').role === 'alone', 'B alone');
      await expectRefusedEverywhere(h, guid, key, ['B'], 'B alone');
      const onB = await unlocked(h, 'B', guid, key);
      expect((await h.run(onB.read(guid, 0, PAGES * PAGE))).equals(wholeB), fail('B serves the last acknowledged bytes to a keyed connection')).toBe(true);
      const after = Buffer.alloc(PAGE, 0x5c);
      await h.run(onB.write(guid, PAGE, after));
      // A connection that had unlocked through B before the kill keeps it.
      expect((await h.run(writers[3]!.read(guid, PAGE, PAGE))).equals(after)).toBe(true);

      // A comes back: its table read and the join give it the key's digest, not an open allocation.
      await h.restart('A');
      h.heal();
      await h.waitMirrored();
      await expectRefusedEverywhere(h, guid, key, ['A', 'B'], 'after A rejoined');
      const onA = await unlocked(h, 'A', guid, key);
      expect((await h.run(onA.read(guid, PAGE, PAGE))).equals(after), fail('A reads what B wrote alone')).toBe(true);
      expect(h.errorLogs()).toEqual([]);
    });
  });
}
