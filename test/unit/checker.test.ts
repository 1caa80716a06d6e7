// The history checker: hand-made histories with known verdicts, a
// brute-force oracle on tiny random histories, simulated registers that must
// pass, planted stale reads that must fail, and the JSON-lines file format.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { HistoryRecorder, checkFinal, checkHistory, historyToJsonl, parseHistory, readHistory, type HistoryOp, type ViolationKind } from '../../src/checker/index.js';
import { runCheck } from '../../src/cli/check.js';
import { Prng } from '../../src/core/prng.js';
import { isPagepairError } from '../../src/protocol/errors.js';

// ---------------------------------------------------------------------------
// Building histories by hand

let nextId = 1;
function w(value: number, startMs: number, endMs: number | null, outcome: HistoryOp['outcome'] = 'ok', key = 'k'): HistoryOp {
  return { id: nextId++, process: nextId, kind: 'write', key, value, startMs, endMs, outcome };
}
function r(value: number, startMs: number, endMs: number | null, outcome: HistoryOp['outcome'] = 'ok', key = 'k'): HistoryOp {
  return { id: nextId++, process: nextId, kind: 'read', key, value, startMs, endMs, outcome };
}
/** A maybe-happened write: no answer. */
function wm(value: number, startMs: number, key = 'k'): HistoryOp {
  return w(value, startMs, null, 'unknown', key);
}

function expectOk(ops: HistoryOp[]): void {
  const res = checkHistory(ops);
  expect(res.violations.map((v) => `${v.kind}: ${v.explanation}`)).toEqual([]);
  expect(res.verdict).toBe('linearizable');
  expect(res.ok).toBe(true);
}

function expectFlagged(ops: HistoryOp[], kind: ViolationKind, involved: HistoryOp[]): string {
  const res = checkHistory(ops);
  expect(res.ok).toBe(false);
  expect(res.verdict).toBe('violations');
  const hit = res.violations.find((v) => v.kind === kind);
  expect(hit, `expected a ${kind}, got ${JSON.stringify(res.violations.map((v) => v.kind))}`).toBeDefined();
  const ids = hit!.ops.map((o) => o.id);
  for (const op of involved) expect(ids).toContain(op.id);
  return hit!.explanation;
}

describe('checker: histories that are linearizable', () => {
  it('sequential writes and reads, starting from the initial value', () => {
    expectOk([r(0, 0, 1), w(1, 2, 3), r(1, 4, 5), w(2, 6, 7), r(2, 8, 9), r(2, 10, 11)]);
  });

  it('overlapping writes: a read after both may see either', () => {
    expectOk([w(1, 0, 10), w(2, 2, 8), r(1, 11, 12)]);
    expectOk([w(1, 0, 10), w(2, 2, 8), r(2, 11, 12)]);
  });

  it('reads during a write may see the old or the new value, in a consistent order', () => {
    expectOk([w(1, 0, 1), w(2, 2, 10), r(1, 3, 4), r(2, 5, 6), r(2, 7, 12)]);
    // Concurrent reads: the one seeing the new value ends first, yet the other
    // may still see the old one because it is linearized earlier.
    expectOk([w(1, 0, 1), w(2, 2, 10), r(2, 3, 9), r(1, 4, 11)]);
  });

  it('a maybe-happened write may be seen or not, even after later writes', () => {
    expectOk([w(1, 0, 1), wm(2, 2), r(2, 5, 6)]);
    expectOk([w(1, 0, 1), wm(2, 2), r(1, 5, 6)]);
    expectOk([w(1, 0, 1), w(2, 2, 3, 'fail'), r(2, 5, 6)]);
    // It may land after a write acknowledged later (the partner held it).
    expectOk([w(1, 0, 1), wm(2, 2), w(3, 4, 5), r(3, 6, 7), r(2, 8, 9)]);
  });

  it('reads without an answer carry no information and are dropped', () => {
    expectOk([w(1, 0, 1), r(0, 2, null, 'unknown'), r(7, 3, 4, 'fail'), r(1, 5, 6)]);
  });

  it('touching intervals are concurrent: an op ending at t does not precede one starting at t', () => {
    expectOk([w(1, 0, 5), r(0, 5, 6)]);
    expectOk([w(1, 0, 1), w(2, 1, 5), r(1, 5, 6)]);
  });

  it('keys are independent', () => {
    expectOk([w(1, 0, 1, 'ok', 'a'), w(1, 0, 1, 'ok', 'b'), r(1, 2, 3, 'ok', 'a'), r(0, 0, 0.5, 'ok', 'b')]);
  });
});

describe('checker: planted violations are flagged with the right kind', () => {
  it('a lost write: acknowledged, then the register holds the older value for good', () => {
    const old = w(1, 0, 1);
    const acked = w(2, 2, 3);
    const read = r(1, 4, 5);
    const text = expectFlagged([old, acked, read], 'lost-write', [old, acked, read]);
    expect(text).toMatch(/lost/);
  });

  it('a lost write against the final state (checkFinal)', () => {
    const res = checkFinal([w(1, 0, 1), w(2, 2, 3), r(2, 4, 5)], new Map([['k', 1]]));
    expect(res.violations.map((v) => v.kind)).toEqual(['lost-write']);
    expect(checkFinal([w(1, 0, 1), w(2, 2, 3)], new Map([['k', 2]])).ok).toBe(true);
  });

  it('a stale read: the read misses an acknowledged write that a later read sees', () => {
    const acked = w(2, 2, 3);
    const stale = r(1, 4, 5);
    const res = checkHistory([w(1, 0, 1), acked, stale, r(2, 6, 7)]);
    expect(res.violations.map((v) => v.kind)).toEqual(['stale-read']);
    expect(res.violations[0]!.ops.map((o) => o.id)).toEqual(expect.arrayContaining([acked.id, stale.id]));
    // The initial value is stale once any write was acknowledged.
    expectFlagged([w(1, 0, 1), r(0, 2, 3), r(1, 4, 5)], 'stale-read', []);
  });

  it('a future read: the value was read before its write started', () => {
    const read = r(5, 0, 1);
    const write = w(5, 2, 3);
    expectFlagged([read, write], 'future-read', [read, write]);
  });

  it('a phantom read: a value nobody wrote (naming the key it was written to, if any)', () => {
    expectFlagged([w(1, 0, 1), r(9, 2, 3)], 'phantom-read', []);
    const text = expectFlagged([w(4, 0, 1, 'ok', 'other'), r(4, 2, 3, 'ok', 'k')], 'phantom-read', []);
    expect(text).toMatch(/written to other/);
  });

  it('a value going back in time across two reads', () => {
    const r1 = r(2, 3, 4);
    const r2 = r(1, 5, 6);
    const text = expectFlagged([w(1, 0, 1), w(2, 2, 10), r1, r2], 'not-linearizable', [r1, r2]);
    expect(text).toMatch(/back in time/);
  });

  it('a maybe-happened write observed and then un-observed', () => {
    const r1 = r(2, 3, 4);
    const r2 = r(1, 5, 6);
    expectFlagged([w(1, 0, 1), wm(2, 2), r1, r2], 'not-linearizable', [r1, r2]);
    // Overlapping writes: no named check applies, the exact checks catch it.
    const text = expectFlagged([w(1, 0, 3), wm(2, 1), r(2, 4, 5), r(1, 6, 7)], 'not-linearizable', []);
    expect(text).toMatch(/exhaustive search agrees/);
  });

  it('a failed write trusted not to have happened makes a read of it a phantom', () => {
    const ops = [w(1, 0, 1), w(2, 2, 3, 'fail'), r(2, 4, 5)];
    expect(checkHistory(ops).ok).toBe(true);
    expect(checkHistory(ops, { failedWritesDidNotHappen: true }).violations.map((v) => v.kind)).toEqual(['phantom-read']);
  });

  it('a subtle case only the exact checks catch: 1, then 2, then 1 again with overlapping writes', () => {
    const res = checkHistory([w(1, 0, 10), w(2, 0, 10), r(1, 11, 12), r(2, 13, 14), r(1, 15, 16)]);
    expect(res.violations.map((v) => v.kind)).toEqual(['not-linearizable']);
    expect(res.violations[0]!.explanation).toMatch(/overlap/);
  });

  it('a search that hits its bound is inconclusive, never ok', () => {
    const ops = [w(1, 0, 10), w(2, 0, 10), r(1, 1, 11), r(2, 2, 12), r(1, 3, 13)];
    const res = checkHistory(ops, { maxSearchStatesPerKey: 2 });
    expect(res.verdict).toBe('inconclusive');
    expect(res.ok).toBe(false);
    expect(res.inconclusive.map((k) => k.key)).toEqual(['k']);
    // With a violation the zone check still reports it when the search gives up.
    const bad = checkHistory([w(1, 0, 10), w(2, 0, 10), r(1, 11, 12), r(2, 13, 14), r(1, 15, 16)], { maxSearchStatesPerKey: 2 });
    expect(bad.violations[0]!.explanation).toMatch(/gave up/);
  });

  it('rejects malformed ops with typed errors', () => {
    const bad = (ops: HistoryOp[], field: string): void => {
      try {
        checkHistory(ops);
        expect.unreachable();
      } catch (err) {
        expect(isPagepairError(err, 'BAD_FIELD')).toBe(true);
        expect((err as { field: string }).field).toBe(field);
      }
    };
    bad([w(1, 0, 1), w(1, 2, 3)], 'value');
    bad([w(0, 0, 1)], 'value');
    bad([r(0, 5, 4)], 'endMs');
    bad([r(0, 5, null, 'ok')], 'endMs');
    const a = w(1, 0, 1);
    bad([a, { ...a, value: 2 }], 'id');
  });
});

// ---------------------------------------------------------------------------
// A brute-force oracle for tiny histories: try every order.

function bruteLinearizable(ops: HistoryOp[]): boolean {
  const keys = new Set(ops.map((o) => o.key));
  for (const key of keys) {
    const live = ops.filter((o) => o.key === key && !(o.kind === 'read' && o.outcome !== 'ok'));
    const endOf = (o: HistoryOp): number => (o.outcome === 'ok' ? o.endMs! : Infinity);
    const dfs = (remaining: HistoryOp[], state: number): boolean => {
      if (remaining.every((o) => o.kind === 'write' && o.outcome !== 'ok')) return true;
      for (const x of remaining) {
        if (remaining.some((y) => y !== x && endOf(y) < x.startMs)) continue;
        if (x.kind === 'read' && x.value !== state) continue;
        const rest = remaining.filter((y) => y !== x);
        if (dfs(rest, x.kind === 'write' ? x.value : state)) return true;
      }
      return false;
    };
    if (!dfs(live, 0)) return false;
  }
  return true;
}

const tinyHistory = fc
  .array(
    fc.record({
      isWrite: fc.boolean(),
      start: fc.integer({ min: 0, max: 8 }),
      len: fc.integer({ min: 0, max: 5 }),
      readValue: fc.integer({ min: 0, max: 4 }),
      outcome: fc.constantFrom<HistoryOp['outcome']>('ok', 'ok', 'ok', 'ok', 'fail', 'unknown'),
    }),
    { minLength: 1, maxLength: 7 },
  )
  .map((specs) => {
    let value = 0;
    return specs.map((s, i): HistoryOp => {
      const endMs = s.outcome === 'unknown' ? null : s.start + s.len;
      return s.isWrite
        ? { id: i + 1, process: i, kind: 'write', key: 'k', value: ++value, startMs: s.start, endMs, outcome: s.outcome }
        : { id: i + 1, process: i, kind: 'read', key: 'k', value: s.readValue, startMs: s.start, endMs, outcome: s.outcome };
    });
  });

describe('checker: agrees with a brute-force oracle', () => {
  it('on 5000 tiny random histories (integer times, so many ties)', () => {
    let bad = 0;
    fc.assert(
      fc.property(tinyHistory, (ops) => {
        const expected = bruteLinearizable(ops);
        if (!expected) bad++;
        const res = checkHistory(ops);
        expect(res.verdict).not.toBe('inconclusive');
        expect(res.ok).toBe(expected);
      }),
      { seed: 20240601, numRuns: 5000 },
    );
    // The generator must produce both verdicts in earnest.
    expect(bad).toBeGreaterThan(500);
    expect(bad).toBeLessThan(4500);
  });
});

// ---------------------------------------------------------------------------
// Simulated registers: every op takes effect at an instant inside its span.

interface SimOptions {
  processes: number;
  keys: number;
  opsPerProcess: number;
  /** Percent of ops that get no clean answer. */
  maybePct: number;
}

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

/** Makes one successful read stale: it returns a value an acknowledged write had replaced before the read began. */
function plantStaleRead(ops: HistoryOp[], pick: number): HistoryOp | null {
  const reads = ops.filter((o) => o.kind === 'read' && o.outcome === 'ok');
  for (let n = 0; n < reads.length; n++) {
    const read = reads[(pick + n) % reads.length]!;
    const acked = ops.filter((o) => o.kind === 'write' && o.key === read.key && o.outcome === 'ok');
    const before = acked.filter((x) => x.endMs! < read.startMs);
    if (before.length === 0) continue;
    const newest = before.reduce((a, b) => (b.startMs > a.startMs ? b : a));
    const older = [0, ...acked.filter((x) => x.endMs! < newest.startMs).map((x) => x.value)];
    read.value = older[pick % older.length]!;
    return read;
  }
  return null;
}

describe('checker: simulated registers', () => {
  const sim = fc.record({
    seed: fc.integer({ min: 1, max: 0x7fffffff }),
    processes: fc.integer({ min: 1, max: 5 }),
    keys: fc.integer({ min: 1, max: 3 }),
    opsPerProcess: fc.integer({ min: 1, max: 30 }),
    maybePct: fc.constantFrom(0, 5, 20),
  });

  it('linearizable by construction, so they pass', () => {
    fc.assert(
      fc.property(sim, (s) => {
        const res = checkHistory(simulate(s.seed, s));
        expect(res.violations.map((v) => v.explanation)).toEqual([]);
        expect(res.verdict).toBe('linearizable');
      }),
      { seed: 7, numRuns: 400 },
    );
  });

  it('with one read made stale, they fail, naming that read', () => {
    let planted = 0;
    fc.assert(
      fc.property(sim, fc.nat(1000), (s, pick) => {
        const ops = simulate(s.seed, s);
        const read = plantStaleRead(ops, pick);
        fc.pre(read !== null);
        planted++;
        const res = checkHistory(ops);
        expect(res.ok).toBe(false);
        const hit = res.violations.find((v) => (v.kind === 'stale-read' || v.kind === 'lost-write') && v.ops.some((o) => o.id === read!.id));
        expect(hit, JSON.stringify(res.violations.map((v) => v.explanation))).toBeDefined();
      }),
      { seed: 11, numRuns: 400 },
    );
    expect(planted).toBeGreaterThan(300);
  });

  it('100k ops over 10k keys check within the search bound', () => {
    const ops = simulate(99, { processes: 50, keys: 10_000, opsPerProcess: 2_000, maybePct: 2 });
    expect(ops.length).toBe(100_000);
    const t0 = performance.now();
    const res = checkHistory(ops);
    const elapsedMs = performance.now() - t0;
    expect(res.verdict).toBe('linearizable');
    expect(res.keys).toBeGreaterThan(9_900);
    console.log(`checked ${ops.length} ops over ${res.keys} keys in ${elapsedMs.toFixed(0)} ms`);
    // No key needed more than the search's bound (the work, not the time: a test run's time depends on the machine).
    expect(res.inconclusive).toEqual([]);
  });

  it('one long key (20k ops, 8 processes) checks within the search bound', () => {
    const ops = simulate(5, { processes: 8, keys: 1, opsPerProcess: 2_500, maybePct: 2 });
    const t0 = performance.now();
    const res = checkHistory(ops);
    const elapsedMs = performance.now() - t0;
    expect(res.inconclusive).toEqual([]);
    expect(res.verdict).toBe('linearizable');
    console.log(`checked ${ops.length} ops on one key in ${elapsedMs.toFixed(0)} ms`);
  });
});

// ---------------------------------------------------------------------------
// Recording and the file format

describe('history recorder and JSON lines', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pagepair-checker-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function recorded(): HistoryRecorder {
    let now = 100;
    const rec = new HistoryRecorder({ clock: () => (now += 0.5), meta: { seed: 42, startedAt: '2025-01-01T00:00:00.000Z', target: 'both' } });
    const a = rec.invoke(0, 'write', 'g:1', 1);
    const b = rec.invoke(1, 'read', 'g:1');
    rec.complete(a, 'ok');
    rec.complete(b, 'ok', 1);
    const c = rec.invoke(0, 'write', 'g:1', 2);
    rec.complete(c, 'unknown');
    const d = rec.invoke(0, 'write', 'g:2', 3);
    rec.complete(d, 'fail');
    rec.invoke(1, 'read', 'g:2'); // never answered
    return rec;
  }

  it('round-trips through JSONL and through a file', async () => {
    const rec = recorded();
    expect(rec.pendingCount).toBe(1);
    const parsed = parseHistory(rec.toJsonl());
    expect(parsed.header).toEqual({ format: 'pagepair-history', version: 1, seed: 42, startedAt: '2025-01-01T00:00:00.000Z', target: 'both' });
    expect(parsed.ops).toEqual(rec.ops());
    expect(parsed.ops.map((o) => [o.outcome, o.endMs === null])).toEqual([
      ['ok', false],
      ['ok', false],
      ['unknown', true],
      ['fail', false],
      ['unknown', true],
    ]);
    const path = join(dir, 'h.jsonl');
    await rec.writeTo(path);
    const back = await readHistory(path);
    expect(back.ops).toEqual(rec.ops());
    expect(checkHistory(back.ops).ok).toBe(true);
  });

  it('malformed lines give typed errors naming the line and field', () => {
    const header = JSON.stringify({ format: 'pagepair-history', version: 1 });
    const good = JSON.stringify({ id: 1, process: 0, kind: 'write', key: 'k', value: 1, startMs: 0, endMs: 1, outcome: 'ok' });
    const cases: [string, string, string, string][] = [
      [`${header}\n${good}\n{not json`, 'BAD_FIELD', 'line', 'line 3'],
      [`${header}\n\n${good.replace('"endMs":1', '"endMs":null')}`, 'BAD_FIELD', 'endMs', 'line 3'],
      [`${header}\n${good.replace('"write"', '"erase"')}`, 'BAD_FIELD', 'kind', 'line 2'],
      [`${header}\n${good}\n${good}`, 'BAD_FIELD', 'id', 'line 3'],
      [`${header}\n${good}\n${good.replace('"id":1', '"id":2')}`, 'BAD_FIELD', 'value', 'line 3'],
      [`${header}\n${good.replace('"startMs":0', '"startMs":"0"')}`, 'BAD_FIELD', 'startMs', 'line 2'],
      [`${good}`, 'BAD_FIELD', 'format', 'line 1'],
      [``, 'BAD_FIELD', 'format', 'line 1'],
      [`${header.replace('"version":1', '"version":2')}`, 'BAD_VERSION', 'version', 'line 1'],
    ];
    for (const [text, code, field, line] of cases) {
      try {
        parseHistory(text, 'h.jsonl');
        expect.unreachable(`accepted: ${text}`);
      } catch (err) {
        expect(isPagepairError(err), String(err)).toBe(true);
        const e = err as { code: string; field: string; message: string };
        expect([e.code, e.field]).toEqual([code, field]);
        expect(e.message).toContain(`h.jsonl ${line}`);
      }
    }
  });

  it('runCheck reports a good history, a bad one and an unreadable one', async () => {
    const header = { format: 'pagepair-history' as const, version: 1 as const, seed: 3 };
    const goodPath = join(dir, 'good.jsonl');
    writeFileSync(goodPath, historyToJsonl(header, [w(1, 0, 1), r(1, 2, 3)]));
    const good = await runCheck(goodPath, {});
    expect(good.exitCode).toBe(0);
    expect(good.text).toMatch(/history is linearizable/);

    const badPath = join(dir, 'bad.jsonl');
    writeFileSync(badPath, historyToJsonl(header, [w(1, 1000, 1001), w(2, 1002, 1003), r(1, 1004, 1005)]));
    const bad = await runCheck(badPath, {});
    expect(bad.exitCode).toBe(1);
    expect(bad.text).toMatch(/lost-write 1/);
    expect(bad.text).toMatch(/VIOLATIONS FOUND/);
    expect(bad.text).toMatch(/ 4\.000 → +5\.000 ms/); // times relative to the first op
    const json = JSON.parse((await runCheck(badPath, { json: true })).text) as { result: { byKind: Record<string, number> } };
    expect(json.result.byKind['lost-write']).toBe(1);

    const broken = join(dir, 'broken.jsonl');
    writeFileSync(broken, 'hello\n');
    const res = await runCheck(broken, {});
    expect(res.exitCode).toBe(2);
    expect(res.text).toMatch(/line 1/);
    expect((await runCheck(join(dir, 'missing.jsonl'), {})).exitCode).toBe(2);
  });
});
