// Latency histograms (HDR, microseconds) and the per-interval samples an
// engine hands to the runner. Samples from worker processes travel as the
// histograms' compressed encoding and are merged by the runner.

import { build, decodeFromCompressedBase64, encodeIntoCompressedBase64, type Histogram } from 'hdr-histogram-js';

/** Tracked exactly up to this; the histogram grows past it if it must. */
const HIGHEST_TRACKABLE_US = 60_000_000;

export function newHistogram(): Histogram {
  return build({ lowestDiscernibleValue: 1, highestTrackableValue: HIGHEST_TRACKABLE_US, numberOfSignificantValueDigits: 3 });
}

export function encodeHistogram(h: Histogram): string {
  return encodeIntoCompressedBase64(h);
}

export function decodeHistogram(text: string): Histogram {
  return decodeFromCompressedBase64(text);
}

export function mergeInto(into: Histogram, from: Histogram): void {
  if (from.totalCount > 0) into.add(from);
}

export interface LatencySummary {
  count: number;
  meanUs: number;
  minUs: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  p999Us: number;
  maxUs: number;
}

export function summarizeHistogram(h: Histogram): LatencySummary {
  if (h.totalCount === 0) return { count: 0, meanUs: 0, minUs: 0, p50Us: 0, p90Us: 0, p99Us: 0, p999Us: 0, maxUs: 0 };
  return {
    count: h.totalCount,
    meanUs: Math.round(h.mean * 10) / 10,
    minUs: h.minNonZeroValue,
    p50Us: h.getValueAtPercentile(50),
    p90Us: h.getValueAtPercentile(90),
    p99Us: h.getValueAtPercentile(99),
    p999Us: h.getValueAtPercentile(99.9),
    maxUs: h.maxValue,
  };
}

/** What one engine did in one interval of the run. */
export interface IntervalSample<H = Histogram> {
  index: number;
  /** Shorter than the interval for the last one. */
  durationMs: number;
  readOps: number;
  writeOps: number;
  readBytes: number;
  writeBytes: number;
  errors: number;
  verifyErrors: number;
  failovers: number;
  readHist: H;
  writeHist: H;
}

export type EncodedSample = IntervalSample<string>;

export function encodeSample(s: IntervalSample): EncodedSample {
  return { ...s, readHist: encodeHistogram(s.readHist), writeHist: encodeHistogram(s.writeHist) };
}

export function decodeSample(s: EncodedSample): IntervalSample {
  return { ...s, readHist: decodeHistogram(s.readHist), writeHist: decodeHistogram(s.writeHist) };
}

/** What went wrong: failed operations, by error code, and reads whose bytes were not what was written. */
export interface ErrorCounts {
  errors: number;
  errorCodes: Record<string, number>;
  verifyErrors: number;
  verifyFailures: string[];
}

/** The ErrorCounts of c alone, for a record that lists them in its own place. */
export function errorCounts(c: ErrorCounts): ErrorCounts {
  return { errors: c.errors, errorCodes: c.errorCodes, verifyErrors: c.verifyErrors, verifyFailures: c.verifyFailures };
}

/**
 * An engine's totals at the end of its run. Its ErrorCounts cover the whole
 * run, warm-up included: they are about correctness, not speed.
 */
export interface EngineTotals<H = Histogram> extends ErrorCounts {
  /** Completed in the measured window (after the warm-up). */
  readOps: number;
  writeOps: number;
  readBytes: number;
  writeBytes: number;
  /** Reads whose bytes were checked. */
  readsVerified: number;
  failovers: number;
  /** When the last operation completed, ms after the run's start. */
  endMs: number;
  readHist: H;
  writeHist: H;
}

export function encodeTotals(t: EngineTotals): EngineTotals<string> {
  return { ...t, readHist: encodeHistogram(t.readHist), writeHist: encodeHistogram(t.writeHist) };
}

export function decodeTotals(t: EngineTotals<string>): EngineTotals {
  return { ...t, readHist: decodeHistogram(t.readHist), writeHist: decodeHistogram(t.writeHist) };
}

export interface PrefillStats {
  bytes: number;
  ops: number;
  errors: number;
  elapsedMs: number;
}

/** The read of the whole working set after a recorded run (see Engine.readBack). */
export interface ReadBackStats extends ErrorCounts {
  bytes: number;
  reads: number;
  elapsedMs: number;
}
