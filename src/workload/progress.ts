// Live progress of a run: the events the runner emits, and a printer that
// turns them into one plain line per interval, with the pair's events on
// lines of their own between them.

import type { PairEvent } from './pair-monitor.js';
import type { IntervalRecord } from './timeseries.js';

export type RunPhase = 'connect' | 'allocate' | 'prefill' | 'run' | 'readback' | 'flush' | 'release' | 'done';

export type ProgressEvent =
  | { type: 'phase'; phase: RunPhase; detail: string }
  | { type: 'interval'; interval: IntervalRecord; errorsSoFar: number; verifyErrorsSoFar: number }
  | { type: 'pair'; event: PairEvent };

export function formatBytes(bytes: number): string {
  if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
  if (bytes >= 1024 ** 2) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${Math.round(bytes)} B`;
}

export function formatBytesPerSec(bps: number): string {
  return `${formatBytes(bps)}/s`;
}

export function formatUs(us: number | null): string {
  if (us === null) return '-';
  if (us < 1000) return `${Math.round(us)} µs`;
  if (us < 1_000_000) return `${(us / 1000).toFixed(us < 10_000 ? 2 : 1)} ms`;
  return `${(us / 1_000_000).toFixed(2)} s`;
}

function seconds(s: number): string {
  return `${s.toFixed(s < 100 ? 1 : 0)}s`.padStart(7);
}

export function formatIntervalLine(ev: Extract<ProgressEvent, { type: 'interval' }>): string {
  const r = ev.interval;
  const end = r.startS + r.durationS;
  return (
    `${seconds(end)}  ${r.opsPerSec.toLocaleString('en-US').padStart(9)} ops/s  ${formatBytesPerSec(r.bytesPerSec).padStart(12)}` +
    `  p50 ${formatUs(r.p50Us).padStart(9)}  p99 ${formatUs(r.p99Us).padStart(9)}` +
    `  errors ${ev.errorsSoFar}${ev.verifyErrorsSoFar > 0 ? `  VERIFY ERRORS ${ev.verifyErrorsSoFar}` : ''}` +
    (r.failovers > 0 ? `  failovers ${r.failovers}` : '') +
    (r.warmup ? '  (warm-up)' : '')
  );
}

export function formatPairEventLine(e: PairEvent): string {
  return `${seconds(e.tMs / 1000)}  >> ${e.kind}: ${e.detail}`;
}

/** A progress handler that prints plain lines (e.g. to standard output). */
export function progressPrinter(write: (line: string) => void): (ev: ProgressEvent) => void {
  return (ev) => {
    switch (ev.type) {
      case 'phase':
        write(`-- ${ev.phase}: ${ev.detail}`);
        return;
      case 'interval':
        write(formatIntervalLine(ev));
        return;
      case 'pair':
        write(formatPairEventLine(ev.event));
        return;
    }
  };
}
