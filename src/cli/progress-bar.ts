// Progress of a long offline job (a rebuild, a scrub) on stderr: a bar on a
// terminal; elsewhere (a log, CI, a pipe) a plain line every few seconds
// and one at the end, so a log shows it moving without filling up.

import cliProgress from 'cli-progress';
import { formatBytes, formatDuration } from '../workload/units.js';

export interface ProgressSink {
  /** (done, total) in the unit the sink was made for. */
  update(done: number, total: number): void;
  /** The job ended (whole or not): the bar is closed, the line ends. */
  stop(): void;
}

export interface ProgressSinkOptions {
  /** Draw a bar (a terminal). Default: whether stderr is one. */
  tty?: boolean;
  /** Where plain lines go (default stderr). */
  write?: (line: string) => void;
  /** At most one plain line this often (default 5 s). */
  lineIntervalMs?: number;
  /** The unit: bytes (sizes and a rate shown) or a count of things. */
  unit?: 'bytes' | { name: string };
  nowMs?: () => number;
}

const LINE_INTERVAL_MS_DEFAULT = 5000;

export function progressSink(what: string, opts: ProgressSinkOptions = {}): ProgressSink {
  const tty = opts.tty ?? process.stderr.isTTY === true;
  const unit = opts.unit ?? 'bytes';
  const show = (n: number): string => (unit === 'bytes' ? formatBytes(n) : `${n} ${unit.name}`);
  const now = opts.nowMs ?? Date.now;
  const startMs = now();
  const rate = (done: number): string => {
    const s = (now() - startMs) / 1000;
    if (s <= 0) return '';
    return unit === 'bytes' ? `, ${formatBytes(done / s)}/s` : `, ${Math.round(done / s)} ${unit.name}/s`;
  };
  if (tty) {
    const bar = new cliProgress.SingleBar(
      {
        format: `${what} [{bar}] {percentage}% | {doneText} of {totalText}{rateText} | ETA {eta_formatted}`,
        stream: process.stderr,
        hideCursor: true,
        barsize: 30,
        fps: 5,
      },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update(done, total) {
        const payload = { doneText: show(done), totalText: show(total), rateText: rate(done) };
        if (!started) {
          started = true;
          bar.start(total, done, payload);
        } else {
          bar.setTotal(total);
          bar.update(done, payload);
        }
      },
      stop() {
        if (started) bar.stop();
      },
    };
  }
  const write = opts.write ?? ((line: string) => process.stderr.write(line));
  const intervalMs = opts.lineIntervalMs ?? LINE_INTERVAL_MS_DEFAULT;
  let lastLineMs = -Infinity;
  let lastDone = -1;
  let finished = false;
  return {
    update(done, total) {
      const t = now();
      const whole = done >= total;
      if (finished || (!whole && t - lastLineMs < intervalMs) || done === lastDone) return;
      lastLineMs = t;
      lastDone = done;
      finished = whole;
      const pct = total === 0 ? 100 : Math.floor((100 * done) / total);
      write(`${what}: ${pct}% (${show(done)} of ${show(total)}${rate(done)}, ${formatDuration(t - startMs)})\n`);
    },
    stop() {},
  };
}
