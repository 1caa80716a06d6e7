// The run's time series: every engine's sample of an interval merged into
// one record, handed on in order as soon as every engine has reported it.

import type { Histogram } from 'hdr-histogram-js';
import { mergeInto, newHistogram, type IntervalSample } from './stats.js';

export interface IntervalRecord {
  index: number;
  /** Seconds from the run's start (warm-up included) to the interval's start. */
  startS: number;
  durationS: number;
  /** The interval starts inside the warm-up: not part of the results. */
  warmup: boolean;
  ops: number;
  readOps: number;
  writeOps: number;
  opsPerSec: number;
  bytesPerSec: number;
  /** Latency of the operations completed in the interval; null when none did. */
  p50Us: number | null;
  p99Us: number | null;
  maxUs: number | null;
  readP99Us: number | null;
  writeP99Us: number | null;
  errors: number;
  verifyErrors: number;
  failovers: number;
}

interface Pending {
  reports: number;
  durationMs: number;
  readOps: number;
  writeOps: number;
  bytes: number;
  errors: number;
  verifyErrors: number;
  failovers: number;
  readHist: Histogram;
  writeHist: Histogram;
}

export class TimeSeries {
  readonly records: IntervalRecord[] = [];
  private readonly pending = new Map<number, Pending>();
  private next = 0;
  /** The two intervals closed last, kept to fold a short last one into its predecessor. */
  private lastTwo: [Pending | null, Pending | null] = [null, null];

  constructor(
    private readonly engines: number,
    private readonly intervalMs: number,
    private readonly warmupMs: number,
    private readonly onRecord: (r: IntervalRecord) => void = () => undefined,
  ) {}

  add(s: IntervalSample): void {
    let p = this.pending.get(s.index);
    if (p === undefined) {
      p = { reports: 0, durationMs: 0, readOps: 0, writeOps: 0, bytes: 0, errors: 0, verifyErrors: 0, failovers: 0, readHist: newHistogram(), writeHist: newHistogram() };
      this.pending.set(s.index, p);
    }
    p.reports++;
    p.durationMs = Math.max(p.durationMs, s.durationMs);
    p.readOps += s.readOps;
    p.writeOps += s.writeOps;
    p.bytes += s.readBytes + s.writeBytes;
    p.errors += s.errors;
    p.verifyErrors += s.verifyErrors;
    p.failovers += s.failovers;
    mergeInto(p.readHist, s.readHist);
    mergeInto(p.writeHist, s.writeHist);
    while (this.pending.get(this.next)?.reports === this.engines) this.close(this.next);
  }

  /**
   * At the end: hands on what is left, intervals some engine never reached
   * included. The records are returned; a last fragment shorter than half an
   * interval (the drain of the operations in flight) is folded into the
   * interval before it there, since a rate over a few milliseconds says
   * nothing.
   */
  finish(): IntervalRecord[] {
    const last = Math.max(-1, ...this.pending.keys());
    while (this.next <= last) this.close(this.next);
    const n = this.records.length;
    const tail = this.records[n - 1];
    if (n >= 2 && tail !== undefined && tail.durationS * 1000 < this.intervalMs / 2 && this.lastTwo[0] !== null && this.lastTwo[1] !== null) {
      const [prev, cur] = this.lastTwo;
      const merged: Pending = {
        reports: 0,
        durationMs: prev.durationMs + cur.durationMs,
        readOps: prev.readOps + cur.readOps,
        writeOps: prev.writeOps + cur.writeOps,
        bytes: prev.bytes + cur.bytes,
        errors: prev.errors + cur.errors,
        verifyErrors: prev.verifyErrors + cur.verifyErrors,
        failovers: prev.failovers + cur.failovers,
        readHist: newHistogram(),
        writeHist: newHistogram(),
      };
      for (const p of [prev, cur]) {
        mergeInto(merged.readHist, p.readHist);
        mergeInto(merged.writeHist, p.writeHist);
      }
      this.records.splice(n - 2, 2, this.record(this.records[n - 2]!.index, merged));
    }
    return this.records;
  }

  private close(index: number): void {
    const p = this.pending.get(index);
    this.pending.delete(index);
    this.next = index + 1;
    const r = this.record(index, p);
    this.lastTwo = [this.lastTwo[1], p ?? null];
    this.records.push(r);
    this.onRecord(r);
  }

  private record(index: number, p: Pending | undefined): IntervalRecord {
    const durationMs = p === undefined || p.durationMs <= 0 ? this.intervalMs : p.durationMs;
    const all = newHistogram();
    if (p !== undefined) {
      mergeInto(all, p.readHist);
      mergeInto(all, p.writeHist);
    }
    const ops = p === undefined ? 0 : p.readOps + p.writeOps;
    const pct = (h: Histogram | undefined, q: number): number | null => (h === undefined || h.totalCount === 0 ? null : h.getValueAtPercentile(q));
    return {
      index,
      startS: (index * this.intervalMs) / 1000,
      durationS: durationMs / 1000,
      warmup: index * this.intervalMs < this.warmupMs,
      ops,
      readOps: p?.readOps ?? 0,
      writeOps: p?.writeOps ?? 0,
      opsPerSec: Math.round((ops * 1000) / durationMs),
      bytesPerSec: Math.round(((p?.bytes ?? 0) * 1000) / durationMs),
      p50Us: pct(all, 50),
      p99Us: pct(all, 99),
      maxUs: all.totalCount === 0 ? null : all.maxValue,
      readP99Us: pct(p?.readHist, 99),
      writeP99Us: pct(p?.writeHist, 99),
      errors: p?.errors ?? 0,
      verifyErrors: p?.verifyErrors ?? 0,
      failovers: p?.failovers ?? 0,
    };
  }
}
