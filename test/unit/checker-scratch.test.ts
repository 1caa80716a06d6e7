import { it } from 'vitest';
import { checkHistory, type HistoryOp } from '../../src/checker/index.js';
import { Prng } from '../../src/core/prng.js';
interface SimOptions { processes: number; keys: number; opsPerProcess: number; maybePct: number }
function simulate(seed: number, o: SimOptions): HistoryOp[] {
  const g = new Prng(seed);
  const planned: { op: HistoryOp; atMs: number; happens: boolean }[] = [];
  let id = 0;
  let value = 0;
  for (let p = 0; p < o.processes; p++) {
    let t = g.below(3);
    for (let i = 0; i < o.opsPerProcess; i++) {
      const key = `g:${g.below(o.keys)}`;
      const isWrite = g.next() < 0.5;
      const lenMs = g.below(6);
      const start = t;
      const end = t + lenMs;
      const roll = g.below(100);
      const outcome: HistoryOp['outcome'] = roll < o.maybePct ? (g.next() < 0.5 ? 'unknown' : 'fail') : 'ok';
      const op: HistoryOp = { id: ++id, process: p, kind: isWrite ? 'write' : 'read', key, value: isWrite ? ++value : 0, startMs: start, endMs: outcome === 'unknown' ? null : end, outcome };
      // A write without a clean answer may land late, or never.
      const atMs = outcome === 'ok' ? start + g.next() * lenMs : start + g.next() * (lenMs + 10);
      planned.push({ op, atMs, happens: outcome === 'ok' || g.next() < 0.5 });
      t = end + g.below(3);
    }
  }
  planned.sort((a, b) => a.atMs - b.atMs);
  const state = new Map<string, number>();
  for (const { op, happens } of planned) {
    if (!happens) continue;
    if (op.kind === 'write') state.set(op.key, op.value);
    else op.value = state.get(op.key) ?? 0;
  }
  return planned.map((p) => p.op).sort((a, b) => a.id - b.id);
}


it('scratch', { timeout: 600_000 }, () => {
  for (const [procs, per] of [[64, 1500], [128, 300]] as const) {
    const ops = simulate(5, { processes: procs, keys: 1, opsPerProcess: per, maybePct: 2 });
    for (const b of [2e5, 4e5, 8e5, 1.6e6, 3.2e6, 6.4e6, 1.28e7]) {
      const t0 = performance.now();
      const res = checkHistory(ops, { maxSearchStepsPerKey: b });
      console.log(procs, per, b, res.verdict, (performance.now() - t0).toFixed(0), 'ms');
      if (res.verdict !== 'inconclusive') break;
    }
  }
});
