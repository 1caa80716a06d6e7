// Is a recorded history linearizable, page by page? Pure: ops in, verdict out.
//
// Each key is a register whose writes all write distinct values, checked on
// its own (linearizability is compositional, so the whole history is
// linearizable exactly when every key's part is). Per key, in order:
//
// 1. Named checks. Each is a short proof that no linearization exists, and
//    each names the kind of failure an operator cares about: phantom read,
//    future read, stale read (or lost write, when the newer value never comes
//    back), a value going back in time between two reads. A flagged read is
//    set aside so the steps below look for further, independent problems.
// 2. An exhaustive search over the rest (Wing & Gong's backtracking, with
//    Lowe's memo of (set of linearized ops, register value)), bounded per
//    key; hitting the bound makes the key inconclusive, never "ok".
// 3. The zone conditions for registers with unique writes (Gibbons & Korach;
//    Golab, Li & Shah): a value's "zone" runs from the earliest end to the
//    latest start among its write and reads; the key is linearizable iff no
//    two forward zones overlap and no backward zone lies inside a forward
//    one. O(n log n). It explains a failure in terms of times, cross-checks
//    the search, and still finds violations on keys where the search gave up.
//
// Maybe-happened writes (outcome not 'ok') may take effect at any time after
// their start, or never. One that no read observed is left out: dropping an
// unobserved write never turns a legal order illegal. One that a read
// observed did happen, and before that read ended, so it is treated as a
// definite write ending at its earliest observer's end. Both are exact, and
// they leave every op with a finite end, which keeps the search small.
// Reads that did not succeed say nothing and are dropped.

import { PagepairError, invariant } from '../protocol/errors.js';
import { validateOp, type HistoryOp } from './history.js';

export type ViolationKind = 'lost-write' | 'stale-read' | 'future-read' | 'phantom-read' | 'not-linearizable';

export const VIOLATION_KINDS: readonly ViolationKind[] = ['lost-write', 'stale-read', 'future-read', 'phantom-read', 'not-linearizable'];

export interface Violation {
  kind: ViolationKind;
  key: string;
  /** The ops involved, by start time. */
  ops: HistoryOp[];
  /** Times in it are ms since the history's earliest start (CheckResult.originMs). */
  explanation: string;
}

export interface InconclusiveKey {
  key: string;
  /** Ops the search had to order (after the reductions above). */
  ops: number;
  searchStates: number;
}

export interface CheckOptions {
  /**
   * Work bound of the exhaustive search, per key, in states (configurations
   * entered plus backtracks). Default: DEFAULT_SEARCH_STATES_BASE plus
   * DEFAULT_SEARCH_STATES_PER_OP per op of the key, so a long key gets a
   * budget in proportion to its length.
   */
  maxSearchStatesPerKey?: number;
  /**
   * Trust an op with outcome 'fail' to mean the write did not happen (drop it;
   * a read of its value is then a phantom). Off by default: the pair may fail
   * a write the partner already holds.
   */
  failedWritesDidNotHappen?: boolean;
}

export const DEFAULT_SEARCH_STATES_BASE = 100_000;
export const DEFAULT_SEARCH_STATES_PER_OP = 20;

export interface CheckResult {
  /** True only when every key was proven linearizable. */
  ok: boolean;
  verdict: 'linearizable' | 'violations' | 'inconclusive';
  keys: number;
  ops: number;
  counts: { writesOk: number; writesMaybe: number; readsOk: number; readsDropped: number };
  violations: Violation[];
  byKind: Record<ViolationKind, number>;
  /** Keys where the search hit its bound and the zone check found nothing. */
  inconclusive: InconclusiveKey[];
  /** The earliest startMs in the history; explanations count time from it. */
  originMs: number;
}

// ---------------------------------------------------------------------------
// Per-key model

interface KWrite {
  op: HistoryOp;
  start: number;
  /** Acked: its end. Maybe-happened: Infinity until a read shows it happened. */
  end: number;
  maybe: boolean;
}

interface KRead {
  op: HistoryOp;
  value: number;
  start: number;
  end: number;
}

interface Found {
  violation: Violation;
  /** Orders the report: when the failure showed. */
  atMs: number;
}

interface KeyContext {
  originMs: number;
  /** Fixed per-key bound, or undefined for the default that grows with the key. */
  maxStates: number | undefined;
  failedWritesDidNotHappen: boolean;
  /** For phantom reads: which key a value was written to, if any (built on first need). */
  keyOfValue: () => Map<number, string>;
}

function ms(ctx: KeyContext, t: number): string {
  if (t === Infinity) return 'never';
  if (t === -Infinity) return 'the beginning';
  return `${(t - ctx.originMs).toFixed(3)} ms`;
}

function span(ctx: KeyContext, op: HistoryOp): string {
  return `${ms(ctx, op.startMs)}–${op.endMs === null ? 'no answer' : ms(ctx, op.endMs)}`;
}

function valueText(v: number): string {
  return v === 0 ? '0 (the initial value)' : String(v);
}

function opsOf(...ops: (HistoryOp | undefined)[]): HistoryOp[] {
  const seen = new Set<number>();
  const out: HistoryOp[] = [];
  for (const op of ops) {
    if (op === undefined || seen.has(op.id)) continue;
    seen.add(op.id);
    out.push(op);
  }
  return out.sort((a, b) => a.startMs - b.startMs || a.id - b.id);
}

/** How many entries of the ascending array `a` are < x. */
function countBelow(a: Float64Array | number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** How many entries of the ascending array `a` are <= x. */
function countAtMost(a: Float64Array | number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// ---------------------------------------------------------------------------
// Exhaustive search

/** An op the search orders: every one has a finite end by now. */
interface SOp {
  isWrite: boolean;
  value: number;
  start: number;
  end: number;
  src: HistoryOp;
}

/** states: configurations entered plus backtracks, the unit of the work bound. */
type SearchResult = { kind: 'ok'; states: number } | { kind: 'fail'; states: number; deepest: number; stuck: SOp | null } | { kind: 'gave-up'; states: number };

/**
 * Wing & Gong's search with Lowe's memo. Events (calls and returns) sit in a
 * time-ordered list; walking it, an op whose call comes before the first
 * pending return may go next if the register allows it; reaching a return
 * whose op is not yet placed means the choice so far was wrong, so undo the
 * last placement and try the next candidate. A (placed set, value) pair seen
 * before is not explored twice.
 *
 * The placed set is keyed compactly: every op before the first unplaced one
 * (in call order) is placed, and beyond it only ops called before that op's
 * return can be placed, so the key is that op's index plus a short list.
 */
function searchLinearization(ops: readonly SOp[], maxStates: number): SearchResult {
  const n = ops.length;
  if (n === 0) return { kind: 'ok', states: 0 };
  // Events: 2i = call of op i, 2i+1 = its return. At equal times calls sort
  // first: an op that ends exactly when another starts does not precede it.
  const events = Array.from({ length: 2 * n }, (_, e) => e);
  const timeOf = (e: number): number => (e & 1 ? ops[e >> 1]!.end : ops[e >> 1]!.start);
  events.sort((a, b) => timeOf(a) - timeOf(b) || (a & 1) - (b & 1) || a - b);
  // Renumber ops by call order, so "every op before index k is placed" holds.
  const opAtRank = new Int32Array(n);
  const rankOf = new Int32Array(n);
  let r = 0;
  for (const e of events) {
    if ((e & 1) === 0) {
      opAtRank[r] = e >> 1;
      rankOf[e >> 1] = r++;
    }
  }
  const callPos = new Int32Array(n);
  const retPos = new Int32Array(n);
  events.forEach((e, pos) => {
    if (e & 1) retPos[rankOf[e >> 1]!] = pos;
    else callPos[rankOf[e >> 1]!] = pos;
  });
  // Values by index (0 = the initial value), and how many reads of each are
  // still to be placed.
  const isWrite = new Uint8Array(n);
  const valueIdx = new Int32Array(n);
  const indexOfValue = new Map<number, number>([[0, 0]]);
  for (let k = 0; k < n; k++) {
    const op = ops[opAtRank[k]!]!;
    isWrite[k] = op.isWrite ? 1 : 0;
    let vi = indexOfValue.get(op.value);
    if (vi === undefined) indexOfValue.set(op.value, (vi = indexOfValue.size));
    valueIdx[k] = vi;
  }
  const readersLeft = new Int32Array(indexOfValue.size);
  for (let k = 0; k < n; k++) if (isWrite[k] === 0) readersLeft[valueIdx[k]!]!++;
  // The list: node p (0..2n-1) is the event at position p; HEAD is a sentinel.
  const HEAD = 2 * n;
  const next = new Int32Array(2 * n + 1);
  const prev = new Int32Array(2 * n + 1);
  for (let p = 0; p < 2 * n; p++) {
    next[p] = p + 1 < 2 * n ? p + 1 : -1;
    prev[p] = p === 0 ? HEAD : p - 1;
  }
  next[HEAD] = 0;
  const isCallNode = new Uint8Array(2 * n);
  const rankOfNode = new Int32Array(2 * n);
  events.forEach((e, pos) => {
    isCallNode[pos] = (e & 1) === 0 ? 1 : 0;
    rankOfNode[pos] = rankOf[e >> 1]!;
  });
  const unlink = (p: number): void => {
    next[prev[p]!] = next[p]!;
    if (next[p]! !== -1) prev[next[p]!] = prev[p]!;
  };
  const relink = (p: number): void => {
    next[prev[p]!] = p;
    if (next[p]! !== -1) prev[next[p]!] = p;
  };
  const lift = (k: number): void => {
    unlink(callPos[k]!);
    unlink(retPos[k]!);
  };
  const unlift = (k: number): void => {
    relink(retPos[k]!);
    relink(callPos[k]!);
  };

  const placed = new Uint8Array(n);
  const seen = new Set<string>();
  const memoKey = (state: number): string => {
    const k = rankOfNode[next[HEAD]!]!;
    // A value with no reads left only lets writes follow, whichever value it
    // is, so such states are one state: this folds the orders in which
    // unread writes can go.
    let key = `${k}:${readersLeft[state] === 0 ? -1 : state}`;
    const until = retPos[k]!;
    for (let j = k + 1; j < n && callPos[j]! < until; j++) if (placed[j] === 1) key += `,${j}`;
    return key;
  };

  // Two prunings keep the search near linear on real histories, both exact
  // because every write writes a distinct value:
  // - a read of the current value that may go now goes now, and is not a
  //   choice: moving it earlier breaks neither the register (reads change
  //   nothing) nor real time (every op still unplaced ends after it starts);
  // - no write may go while reads of the current value are still unplaced,
  //   since that value can never come back for them.
  // So the only choices are which write goes next once a value has had all
  // its reads.
  const stackRank = new Int32Array(n);
  const stackState = new Int32Array(n);
  const stackForced = new Uint8Array(n);
  let sp = 0;
  let state = 0;
  let remaining = n;
  let states = 0;
  let deepest = -1;
  let stuck: SOp | null = null;
  let node = next[HEAD]!;
  for (;;) {
    if (node === -1 || isCallNode[node] === 0) {
      // A pending op's return came first: a placement so far was wrong.
      if (sp > deepest) {
        deepest = sp;
        stuck = node === -1 ? null : ops[opAtRank[rankOfNode[node]!]!]!;
      }
      if (++states > maxStates) return { kind: 'gave-up', states };
      let k: number;
      do {
        if (sp === 0) return { kind: 'fail', states, deepest, stuck };
        sp--;
        k = stackRank[sp]!;
        state = stackState[sp]!;
        placed[k] = 0;
        remaining++;
        if (isWrite[k] === 0) readersLeft[valueIdx[k]!]!++;
        unlift(k);
      } while (stackForced[sp] === 1);
      node = next[callPos[k]!]!;
      continue;
    }
    const k = rankOfNode[node]!;
    const read = isWrite[k] === 0;
    if (read ? valueIdx[k] === state : readersLeft[state] === 0) {
      const newState = valueIdx[k]!;
      placed[k] = 1;
      lift(k);
      remaining--;
      if (read) readersLeft[newState]!--;
      if (remaining === 0) return { kind: 'ok', states };
      const key = memoKey(newState);
      if (!seen.has(key)) {
        if (++states > maxStates) return { kind: 'gave-up', states };
        seen.add(key);
        stackRank[sp] = k;
        stackState[sp] = state;
        stackForced[sp] = read ? 1 : 0;
        sp++;
        state = newState;
        node = next[HEAD]!;
        continue;
      }
      placed[k] = 0;
      remaining++;
      if (read) readersLeft[newState]!++;
      unlift(k);
      if (read) {
        // This configuration was explored before and failed; the forced
        // read had no alternative, so the failure is the parent's.
        node = -1;
        continue;
      }
    }
    node = next[node]!;
  }
}

// ---------------------------------------------------------------------------
// Zones

interface Zone {
  value: number;
  /** Earliest end among the value's write and reads, and the op that has it. */
  f: number;
  fOp: HistoryOp | undefined;
  /** Latest start among them, and the op that has it. */
  s: number;
  sOp: HistoryOp | undefined;
  write: HistoryOp | undefined;
}

/** The zone conditions; null when they hold, else what breaks them. */
function zoneCheck(ops: readonly SOp[], ctx: KeyContext): { explanation: string; ops: HistoryOp[] } | null {
  const zones = new Map<number, Zone>();
  const zoneOf = (v: number): Zone => {
    let z = zones.get(v);
    if (z === undefined) {
      // The initial value behaves as a write that ended before anything began.
      z = { value: v, f: v === 0 ? -Infinity : Infinity, fOp: undefined, s: -Infinity, sOp: undefined, write: undefined };
      zones.set(v, z);
    }
    return z;
  };
  for (const op of ops) {
    const z = zoneOf(op.value);
    if (op.isWrite) z.write = op.src;
    if (op.end < z.f) {
      z.f = op.end;
      z.fOp = op.src;
    }
    if (op.start > z.s) {
      z.s = op.start;
      z.sOp = op.src;
    }
  }
  const forward: Zone[] = [];
  const backward: Zone[] = [];
  for (const z of zones.values()) (z.f < z.s ? forward : backward).push(z);
  forward.sort((a, b) => a.f - b.f);

  const describeForward = (z: Zone): string =>
    `value ${valueText(z.value)} had to be the register's value from ${ms(ctx, z.f)}` +
    (z.fOp !== undefined ? ` (when #${z.fOp.id} ended)` : '') +
    ` until ${ms(ctx, z.s)} (when #${z.sOp!.id} started)`;

  let widest: Zone | undefined;
  for (const z of forward) {
    if (widest !== undefined && z.f < widest.s) {
      return {
        explanation: `${describeForward(widest)}, and ${describeForward(z)}; the two spans overlap, so no order of the operations satisfies both`,
        ops: opsOf(widest.write, widest.fOp, widest.sOp, z.write, z.fOp, z.sOp),
      };
    }
    if (widest === undefined || z.s > widest.s) widest = z;
  }
  if (forward.length > 0) {
    const fs = forward.map((z) => z.f);
    const maxS: Zone[] = [];
    for (const z of forward) maxS.push(maxS.length === 0 || z.s > maxS[maxS.length - 1]!.s ? z : maxS[maxS.length - 1]!);
    for (const b of backward) {
      const i = countBelow(fs, b.s);
      const cover = i > 0 ? maxS[i - 1]! : undefined;
      if (cover !== undefined && b.f < cover.s) {
        return {
          explanation:
            `value ${valueText(b.value)} had to take effect and be read at one instant between ${ms(ctx, b.s)} and ${ms(ctx, b.f)}, ` +
            `but all that time ${describeForward(cover)}`,
          ops: opsOf(b.write, b.fOp, b.sOp, cover.write, cover.fOp, cover.sOp),
        };
      }
    }
  }
  return null;
}

// ---------------------------------------------------------------------------
// One key

function checkKey(key: string, ops: readonly HistoryOp[], ctx: KeyContext, found: Found[], inconclusive: InconclusiveKey[]): void {
  const writes = new Map<number, KWrite>();
  const reads: KRead[] = [];
  for (const op of ops) {
    if (op.kind === 'write') {
      if (op.outcome === 'fail' && ctx.failedWritesDidNotHappen) continue;
      const maybe = op.outcome !== 'ok';
      writes.set(op.value, { op, start: op.startMs, end: maybe ? Infinity : op.endMs!, maybe });
    } else if (op.outcome === 'ok') {
      reads.push({ op, value: op.value, start: op.startMs, end: op.endMs! });
    }
  }
  const report = (kind: ViolationKind, atMs: number, explanation: string, ...involved: (HistoryOp | undefined)[]): void => {
    found.push({ violation: { kind, key, ops: opsOf(...involved), explanation }, atMs });
  };

  // 1a. Phantom and future reads.
  const live: KRead[] = [];
  for (const r of reads) {
    if (r.value === 0) {
      live.push(r);
      continue;
    }
    const w = writes.get(r.value);
    if (w === undefined) {
      const elsewhere = ctx.keyOfValue().get(r.value);
      const hint =
        elsewhere === undefined ? '' : elsewhere !== key ? `; that value was written to ${elsewhere}` : '; only a write reported as failed wrote it, and failed writes are trusted';
      report('phantom-read', r.start, `read #${r.op.id} (${span(ctx, r.op)}) returned ${r.value}, which no write to ${key} wrote${hint}`, r.op);
    } else if (w.start > r.end) {
      report(
        'future-read',
        r.start,
        `read #${r.op.id} (${span(ctx, r.op)}) returned ${r.value}, but write #${w.op.id} of that value only started at ${ms(ctx, w.start)}`,
        w.op,
        r.op,
      );
    } else {
      live.push(r);
    }
  }

  // A read of a value proves its write took effect before the read ended:
  // a maybe-happened write that was read ends at its earliest reader's end.
  const observedMaybeEnds = (observers: readonly KRead[]): Map<number, number> => {
    const ends = new Map<number, number>();
    for (const r of observers) {
      if (r.value === 0 || !writes.get(r.value)!.maybe) continue;
      const cur = ends.get(r.value);
      if (cur === undefined || r.end < cur) ends.set(r.value, r.end);
    }
    return ends;
  };
  const maybeEnds = observedMaybeEnds(live);
  const endOf = (v: number): number => (v === 0 ? -Infinity : writes.get(v)!.maybe ? (maybeEnds.get(v) ?? Infinity) : writes.get(v)!.end);
  const startOf = (v: number): number => (v === 0 ? -Infinity : writes.get(v)!.start);

  // 1b. Stale reads: an acknowledged write lies wholly between the read's
  // value's write and the read. Witness: of the acked writes ending before
  // the read starts, the one that started last.
  const acked = [...writes.values()].filter((w) => !w.maybe).sort((a, b) => a.end - b.end);
  const ackedEnds = acked.map((w) => w.end);
  const lastStarted: KWrite[] = [];
  for (const w of acked) lastStarted.push(lastStarted.length === 0 || w.start > lastStarted[lastStarted.length - 1]!.start ? w : lastStarted[lastStarted.length - 1]!);
  // Did any read after r see w' or something not older than it? Then the
  // newer state came back (a stale read); otherwise it was lost for good.
  const byStart = [...live].sort((a, b) => a.start - b.start);
  const startsAsc = byStart.map((r) => r.start);
  const newestLater = new Float64Array(byStart.length + 1).fill(-Infinity);
  for (let i = byStart.length - 1; i >= 0; i--) newestLater[i] = Math.max(newestLater[i + 1]!, endOf(byStart[i]!.value));

  const flagged = new Set<KRead>();
  for (const r of live) {
    const i = countBelow(ackedEnds, r.start);
    if (i === 0) continue;
    const wNew = lastStarted[i - 1]!;
    const vEnd = endOf(r.value);
    if (!(wNew.start > vEnd)) continue;
    flagged.add(r);
    const wOld = r.value === 0 ? undefined : writes.get(r.value)!.op;
    const came = newestLater[countAtMost(startsAsc, r.end)]! >= wNew.start;
    const what =
      `read #${r.op.id} (${span(ctx, r.op)}) returned ${valueText(r.value)}` +
      (wOld !== undefined ? ` (write #${wOld.id}, ${span(ctx, wOld)})` : '') +
      `, but write #${wNew.op.id} of ${wNew.op.value} started after that and was acknowledged at ${ms(ctx, wNew.end)}, before the read began`;
    if (came) report('stale-read', r.start, `${what}; a later read saw it or a newer value again`, wOld, wNew.op, r.op);
    else report('lost-write', r.start, `${what}; no later read saw it or anything newer: the acknowledged write is lost`, wOld, wNew.op, r.op);
  }

  // 1c. A value going back in time: r1 precedes r2, yet r2's value was
  // written entirely before r1's value was written.
  const rest = live.filter((r) => !flagged.has(r));
  const byEnd = [...rest].sort((a, b) => a.end - b.end);
  const endsAsc = byEnd.map((r) => r.end);
  const newestBefore: KRead[] = [];
  for (const r of byEnd) {
    const top = newestBefore[newestBefore.length - 1];
    newestBefore.push(top === undefined || startOf(r.value) > startOf(top.value) ? r : top);
  }
  const backInTime = new Set<KRead>();
  for (const r2 of rest) {
    const i = countBelow(endsAsc, r2.start);
    if (i === 0) continue;
    const r1 = newestBefore[i - 1]!;
    if (!(startOf(r1.value) > endOf(r2.value))) continue;
    backInTime.add(r2);
    const w1 = writes.get(r1.value)!;
    const w2 = r2.value === 0 ? undefined : writes.get(r2.value)!;
    report(
      'not-linearizable',
      r2.start,
      `read #${r1.op.id} (${span(ctx, r1.op)}) returned ${r1.value}, then read #${r2.op.id} (${span(ctx, r2.op)}) returned ${valueText(r2.value)}` +
        (w2 !== undefined ? `, whose write #${w2.op.id} had taken effect by ${ms(ctx, endOf(r2.value))}` : '') +
        `, before write #${w1.op.id} of ${r1.value}${w1.maybe ? ' (maybe-happened)' : ''} started at ${ms(ctx, w1.start)}: the value went back in time`,
      w2?.op,
      w1.op,
      r1.op,
      r2.op,
    );
  }

  // 2 and 3. The exact checks on what no named check flagged.
  const remainingReads = rest.filter((r) => !backInTime.has(r));
  const observedEnds = observedMaybeEnds(remainingReads);
  const sops: SOp[] = [];
  for (const w of writes.values()) {
    if (!w.maybe) sops.push({ isWrite: true, value: w.op.value, start: w.start, end: w.end, src: w.op });
    else {
      const end = observedEnds.get(w.op.value);
      if (end !== undefined) sops.push({ isWrite: true, value: w.op.value, start: w.start, end, src: w.op });
    }
  }
  for (const r of remainingReads) sops.push({ isWrite: false, value: r.value, start: r.start, end: r.end, src: r.op });
  if (!sops.some((o) => !o.isWrite)) return; // writes alone always linearize
  const search = searchLinearization(sops, ctx.maxStates ?? DEFAULT_SEARCH_STATES_BASE + DEFAULT_SEARCH_STATES_PER_OP * sops.length);
  const zones = zoneCheck(sops, ctx);
  if (search.kind !== 'gave-up') {
    invariant((search.kind === 'ok') === (zones === null), `search and zone check disagree on key ${key}`);
  }
  if (zones !== null) {
    const searchNote =
      search.kind === 'fail'
        ? ` (the exhaustive search agrees: it placed at most ${search.deepest} of ${sops.length} operations${search.stuck !== null ? `, and could not place op #${search.stuck.src.id} before it returned` : ''})`
        : search.kind === 'gave-up'
          ? ` (found by the zone check; the exhaustive search gave up after ${search.states} states)`
          : '';
    const atMs = Math.max(...zones.ops.map((o) => o.startMs));
    found.push({ violation: { kind: 'not-linearizable', key, ops: zones.ops, explanation: zones.explanation + searchNote }, atMs });
  } else if (search.kind === 'gave-up') {
    inconclusive.push({ key, ops: sops.length, searchStates: search.states });
  }
}

// ---------------------------------------------------------------------------
// Whole history

/** Checks op fields and history-wide uniqueness. Throws PagepairError BAD_FIELD. */
export function validateHistory(ops: readonly HistoryOp[]): void {
  const ids = new Set<number>();
  const writes = new Set<string>();
  for (const op of ops) {
    const where = `op #${String(op.id)}`;
    validateOp(op as unknown as Record<string, unknown>, where);
    if (ids.has(op.id)) throw new PagepairError('BAD_FIELD', `${where}: id used twice`, 'id');
    ids.add(op.id);
    if (op.kind === 'write') {
      const wkey = `${op.key}\u0000${op.value}`;
      if (writes.has(wkey)) throw new PagepairError('BAD_FIELD', `${where}: value ${op.value} written to ${op.key} more than once; write values must be unique per key`, 'value');
      writes.add(wkey);
    }
  }
}

export function checkHistory(ops: readonly HistoryOp[], opts: CheckOptions = {}): CheckResult {
  validateHistory(ops);
  const maxStates = opts.maxSearchStatesPerKey;
  if (maxStates !== undefined && !(maxStates > 0)) throw new PagepairError('BAD_FIELD', 'maxSearchStatesPerKey must be > 0', 'maxSearchStatesPerKey');
  let originMs = Infinity;
  const byKey = new Map<string, HistoryOp[]>();
  const counts = { writesOk: 0, writesMaybe: 0, readsOk: 0, readsDropped: 0 };
  for (const op of ops) {
    if (op.startMs < originMs) originMs = op.startMs;
    let list = byKey.get(op.key);
    if (list === undefined) byKey.set(op.key, (list = []));
    list.push(op);
    if (op.kind === 'write') {
      if (op.outcome === 'ok') counts.writesOk++;
      else counts.writesMaybe++;
    } else if (op.outcome === 'ok') counts.readsOk++;
    else counts.readsDropped++;
  }
  if (originMs === Infinity) originMs = 0;

  let keyOfValue: Map<number, string> | undefined;
  const ctx: KeyContext = {
    originMs,
    maxStates,
    failedWritesDidNotHappen: opts.failedWritesDidNotHappen === true,
    keyOfValue: () => {
      if (keyOfValue === undefined) {
        keyOfValue = new Map();
        for (const op of ops) if (op.kind === 'write' && !keyOfValue.has(op.value)) keyOfValue.set(op.value, op.key);
      }
      return keyOfValue;
    },
  };
  const found: Found[] = [];
  const inconclusive: InconclusiveKey[] = [];
  for (const [key, keyOps] of byKey) checkKey(key, keyOps, ctx, found, inconclusive);

  found.sort((a, b) => a.atMs - b.atMs);
  const violations = found.map((f) => f.violation);
  const byKind = Object.fromEntries(VIOLATION_KINDS.map((k) => [k, 0])) as Record<ViolationKind, number>;
  for (const v of violations) byKind[v.kind]++;
  const verdict = violations.length > 0 ? 'violations' : inconclusive.length > 0 ? 'inconclusive' : 'linearizable';
  return { ok: verdict === 'linearizable', verdict, keys: byKey.size, ops: ops.length, counts, violations, byKind, inconclusive, originMs };
}

/**
 * Checks a history against the state found at its end (for example, every
 * page read back after the run): each key's final value becomes a read that
 * starts after everything else ended, by a process numbered -1. A final value
 * older than an acknowledged write is reported as a lost write.
 */
export function checkFinal(ops: readonly HistoryOp[], finalValues: ReadonlyMap<string, number>, opts: CheckOptions = {}): CheckResult {
  let lastMs = 0;
  let maxId = 0;
  for (const op of ops) {
    lastMs = Math.max(lastMs, op.startMs, op.endMs ?? op.startMs);
    maxId = Math.max(maxId, op.id);
  }
  const all = [...ops];
  for (const [key, value] of finalValues) {
    all.push({ id: ++maxId, process: -1, kind: 'read', key, value, startMs: lastMs + 1, endMs: lastMs + 2, outcome: 'ok' });
  }
  return checkHistory(all, opts);
}
