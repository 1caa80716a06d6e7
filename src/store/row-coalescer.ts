// Page writes to a parity pool, gathered per row. On a parity layout every
// write of part of a row is a reconstruct-write under the row's lock (read
// the row's other data chunks over the range, compute P and Q, write), so the
// pages of one destage run, written one call each, were as many row updates
// one after the other. Here the writes asked for in one turn of the event
// loop, and those asked for while the row's previous batch is being written,
// leave as one batch per row: writes that touch or overlap become one
// writeParts call (one row update), and the others of the row go out beside
// it (the pool orders them under its lock).
//
// What a caller can count on, as with the pool itself:
// - a write resolves only once the pool has it on its members (the batch's
//   writeParts calls all resolved);
// - writes to the same bytes land in the order they were asked for: a row
//   has one batch under way at a time, and within a batch overlapping writes
//   are laid over each other in arrival order;
// - when any pool write of a batch fails, every write in that batch fails
//   with that error (a write spanning rows fails when any of its rows' batches
//   does). A write reported failed may have landed, in whole or in part, as a
//   failed pool write may have.
//
// Gaps between writes in one row are never filled by reading the bytes
// between: the mirrored prefix, where both controllers write, is divided into
// the same units, and bytes in a gap may be being written by someone else.
// It serialises only this process's writes through it; two controllers never
// write one row (the store's layout and the core's lock groups, pool.ts).

import { invariant } from '../protocol/errors.js';

/** Where the gathered writes go (a ParityDevice). */
export interface PartsWriter {
  writeParts(offset: number, parts: readonly Buffer[]): Promise<void>;
}

/** Writes taken into one batch of a row, at most; the rest wait for the next. */
export const ROW_BATCH_WRITES_MAX = 1024;

export interface RowCoalescerCounters {
  /** Writes asked for. */
  writes: number;
  /** Batches sent (a row's writes gathered at once). */
  batches: number;
  /** writeParts calls made to the pool. */
  poolWrites: number;
}

/** One caller's write, which settles when all its segments' batches have. */
interface Write {
  segmentsLeft: number;
  error: { err: unknown } | null;
  resolve(): void;
  reject(err: unknown): void;
}

/** The part of a write that lies in one row. */
interface Segment {
  offset: number;
  end: number;
  parts: Buffer[];
  write: Write;
}

interface RowQueue {
  waiting: Segment[];
  busy: boolean;
}

/** A run of touching or overlapping segments of one batch: one pool write. */
interface Run {
  offset: number;
  end: number;
  /** In arrival order. */
  segments: Segment[];
  overlaps: boolean;
}

export class RowCoalescer {
  readonly counters: RowCoalescerCounters = { writes: 0, batches: 0, poolWrites: 0 };
  private readonly rows = new Map<number, RowQueue>();
  /** Rows with writes waiting and no batch under way, to be sent at the end of the turn. */
  private readonly due = new Set<number>();
  private flushScheduled = false;
  private readonly idleWaiters: (() => void)[] = [];

  /**
   * rowBytes: the pool's row; the prefix before its rows is a multiple of
   * it, so row k covers bytes [k × rowBytes, (k + 1) × rowBytes) whether it
   * is a parity row or a unit of the prefix. schedule: how the end of the
   * turn is waited for (setImmediate; tests may pass their own).
   */
  constructor(
    private readonly pool: PartsWriter,
    private readonly rowBytes: number,
    private readonly schedule: (fn: () => void) => void = setImmediate,
  ) {
    invariant(Number.isSafeInteger(rowBytes) && rowBytes > 0, 'a row of at least one byte');
  }

  /** Writes the parts back to back from offset, as one write of their concatenation (see the top of this file). */
  writeParts(offset: number, parts: readonly Buffer[]): Promise<void> {
    this.counters.writes++;
    let bytes = 0;
    for (const p of parts) bytes += p.length;
    // Nothing to gather: the pool says what it thinks of it (a range it refuses, an empty write).
    if (bytes === 0 || !Number.isSafeInteger(offset) || offset < 0) return this.send(offset, [...parts]);
    return new Promise<void>((resolve, reject) => {
      const end = offset + bytes;
      const firstRow = Math.floor(offset / this.rowBytes);
      const lastRow = Math.floor((end - 1) / this.rowBytes);
      const write: Write = { segmentsLeft: lastRow - firstRow + 1, error: null, resolve, reject };
      for (let r = firstRow; r <= lastRow; r++) {
        const a = Math.max(offset, r * this.rowBytes);
        const b = Math.min(end, (r + 1) * this.rowBytes);
        this.enqueue(r, { offset: a, end: b, parts: sliceParts(parts, a - offset, b - offset), write });
      }
    });
  }

  /** Resolves once every write asked for so far has settled (close waits for this). */
  drain(): Promise<void> {
    if (this.rows.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private enqueue(row: number, seg: Segment): void {
    let q = this.rows.get(row);
    if (q === undefined) this.rows.set(row, (q = { waiting: [], busy: false }));
    q.waiting.push(seg);
    // A row being written sends what gathered meanwhile when that batch is done.
    if (q.busy) return;
    this.due.add(row);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      this.schedule(() => this.flushDue());
    }
  }

  private flushDue(): void {
    this.flushScheduled = false;
    const rows = [...this.due];
    this.due.clear();
    for (const r of rows) this.sendBatch(r);
  }

  private sendBatch(row: number): void {
    const q = this.rows.get(row);
    invariant(q !== undefined && !q.busy, 'a batch is sent from an idle row');
    const batch = q.waiting.length <= ROW_BATCH_WRITES_MAX ? q.waiting : q.waiting.slice(0, ROW_BATCH_WRITES_MAX);
    q.waiting = batch === q.waiting ? [] : q.waiting.slice(ROW_BATCH_WRITES_MAX);
    q.busy = true;
    this.counters.batches++;
    const sends = runsOf(batch).map((run) => this.send(run.offset, runParts(run)));
    void Promise.allSettled(sends).then((results) => {
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      for (const seg of batch) this.segmentDone(seg, failed);
      q.busy = false;
      if (q.waiting.length > 0) {
        // Gathered while this batch was written: they go at once, together.
        this.sendBatch(row);
        return;
      }
      this.rows.delete(row);
      if (this.rows.size === 0) for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  private send(offset: number, parts: Buffer[]): Promise<void> {
    this.counters.poolWrites++;
    try {
      return this.pool.writeParts(offset, parts);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  private segmentDone(seg: Segment, failed: PromiseRejectedResult | undefined): void {
    const w = seg.write;
    if (failed !== undefined && w.error === null) w.error = { err: failed.reason };
    if (--w.segmentsLeft > 0) return;
    if (w.error === null) w.resolve();
    else w.reject(w.error.err);
  }
}

/** Bytes [from, to) of the parts laid end to end, as views. */
function sliceParts(parts: readonly Buffer[], from: number, to: number): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const p of parts) {
    const a = Math.max(from, at);
    const b = Math.min(to, at + p.length);
    if (a < b) out.push(a === at && b === at + p.length ? p : p.subarray(a - at, b - at));
    at += p.length;
    if (at >= to) break;
  }
  return out;
}

/** A batch's segments as runs of touching or overlapping ones, by offset; each run's segments in arrival order. */
function runsOf(batch: readonly Segment[]): Run[] {
  const byOffset = batch.map((seg, order) => ({ seg, order })).sort((x, y) => x.seg.offset - y.seg.offset || x.order - y.order);
  const runs: { run: Run; orders: number[] }[] = [];
  for (const { seg, order } of byOffset) {
    const last = runs[runs.length - 1];
    if (last !== undefined && seg.offset <= last.run.end) {
      if (seg.offset < last.run.end) last.run.overlaps = true;
      last.run.end = Math.max(last.run.end, seg.end);
      last.run.segments.push(seg);
      last.orders.push(order);
    } else {
      runs.push({ run: { offset: seg.offset, end: seg.end, segments: [seg], overlaps: false }, orders: [order] });
    }
  }
  for (const { run, orders } of runs) {
    if (!run.overlaps) continue;
    // Laid over each other in the order they were asked for: the last one asked wins.
    const ranked = run.segments.map((seg, k) => ({ seg, order: orders[k]! })).sort((x, y) => x.order - y.order);
    run.segments = ranked.map((x) => x.seg);
  }
  return runs.map((x) => x.run);
}

/** The bytes of a run: its segments' parts side by side, or, where they overlap, one buffer they are copied into in arrival order. */
function runParts(run: Run): Buffer[] {
  if (!run.overlaps) return run.segments.flatMap((s) => s.parts);
  const out = Buffer.allocUnsafe(run.end - run.offset);
  for (const seg of run.segments) {
    let at = seg.offset - run.offset;
    for (const p of seg.parts) {
      p.copy(out, at);
      at += p.length;
    }
  }
  return [out];
}
