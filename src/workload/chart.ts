// A run's chart as one self-contained SVG (no scripts, no external files):
// throughput over time on top, p99 latency (log scale) below, on the same
// time axis, with the pair's events drawn as labelled vertical markers
// through both panels and the stretches where the pair was not mirrored
// shaded, so the dip around a kill and the recovery after it read at a
// glance.

import type { PairEvent, PairEventKind } from './pair-monitor.js';
import type { WorkloadReport } from './report.js';
import type { IntervalRecord } from './timeseries.js';

const W = 1100;
const H = 750;
const M = { left: 84, right: 84 };
const PLOT_W = W - M.left - M.right;
const LANE = { top: 108, rowH: 13, rows: 5 };
const P1 = { top: 176, height: 230 };
const P2 = { top: 448, height: 200 };
/** Width of one character of a marker label (bold, 11 px), to keep labels from overlapping. */
const LABEL_CHAR_W = 7;
/** A controller that was just killed or paused does not answer: saying so again ("down") only clutters. */
const DOWN_AFTER_FAULT_MS = 2000;
/** Events of one kind this close together (both controllers mirrored again) share one marker. */
const SAME_MARKER_MS = 60;
const FONT = "font-family=\"'DejaVu Sans', 'Segoe UI', Helvetica, Arial, sans-serif\"";

const COLORS = {
  ops: '#1f6fb4',
  opsFill: '#1f6fb41f',
  mbps: '#6a3d9a',
  p99: '#d6604d',
  p50: '#4d9221',
  grid: '#e4e4e4',
  axis: '#555555',
  text: '#222222',
  muted: '#666666',
  warmup: '#00000010',
  degraded: '#f4a58233',
  error: '#c00000',
};

/** The events drawn as markers, their colour and their short label. */
const MARKERS: Partial<Record<PairEventKind, { color: string; label: string }>> = {
  kill: { color: '#b2182b', label: 'kill' },
  pause: { color: '#b2182b', label: 'pause' },
  partition: { color: '#b2182b', label: 'partition' },
  restart: { color: '#4d4d4d', label: 'restart' },
  resume: { color: '#4d4d4d', label: 'resume' },
  heal: { color: '#4d4d4d', label: 'heal' },
  down: { color: '#e08214', label: 'down' },
  takeover: { color: '#d6604d', label: 'takeover' },
  fenced: { color: '#762a83', label: 'fenced' },
  up: { color: '#878787', label: 'up' },
  resync: { color: '#2166ac', label: 'resync' },
  'resync-done': { color: '#4393c3', label: 'resync done' },
  mirrored: { color: '#1b7837', label: 'mirrored' },
  note: { color: '#333333', label: 'note' },
};

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

function n(v: number): string {
  return (Math.round(v * 10) / 10).toString();
}

/** About `count` round tick values covering [0, max]. */
export function niceTicks(max: number, count: number): number[] {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  for (let v = 0; v <= max + step * 1e-9; v += step) ticks.push(Math.round(v * 1e9) / 1e9);
  if (ticks[ticks.length - 1]! < max) ticks.push(ticks[ticks.length - 1]! + step);
  return ticks;
}

function shortNumber(v: number): string {
  if (v >= 1e6) return `${n(v / 1e6)}M`;
  if (v >= 1e3) return `${n(v / 1e3)}k`;
  return n(v);
}

function latencyLabel(us: number): string {
  if (us >= 1e6) return `${us / 1e6} s`;
  if (us >= 1e3) return `${us / 1e3} ms`;
  return `${us} µs`;
}

function text(x: number, y: number, s: string, attrs = ''): string {
  return `<text x="${n(x)}" y="${n(y)}" ${attrs}>${esc(s)}</text>`;
}

/** Stretches of the run when not every controller that answers is mirrored. */
export function degradedSpans(r: WorkloadReport, endS: number): [number, number][] {
  const roles = new Map<string, string | null>(Object.entries(r.pair.before));
  // Unwatched controllers (no monitor) count as healthy until an event says otherwise.
  const healthy = (): boolean => [...roles.values()].every((v) => v === 'mirrored' || v === 'single');
  const spans: [number, number][] = [];
  let from: number | null = healthy() ? null : 0;
  const sorted = [...r.events].sort((a, b) => a.tMs - b.tMs);
  for (const e of sorted) {
    if (e.controller === null) continue;
    // A controller killed, paused or cut off serves nothing mirrored from that instant on.
    if (e.kind === 'down' || e.kind === 'kill' || e.kind === 'pause' || e.kind === 'partition') roles.set(e.controller, null);
    else if (e.role !== null) roles.set(e.controller, e.role);
    else continue;
    const t = Math.max(0, e.tMs / 1000);
    if (from === null && !healthy()) from = t;
    else if (from !== null && healthy()) {
      if (t > from) spans.push([from, t]);
      from = null;
    }
  }
  if (from !== null && endS > from) spans.push([from, endS]);
  return spans;
}

interface Marker {
  tS: number;
  kind: PairEventKind;
  label: string;
  controllers: string[];
  detail: string;
  color: string;
}

function markersOf(events: readonly PairEvent[], endS: number): Marker[] {
  const out: Marker[] = [];
  const faults = events.filter((e) => e.kind === 'kill' || e.kind === 'pause');
  for (const e of events) {
    const m = MARKERS[e.kind];
    if (m === undefined) continue;
    if (e.kind === 'down' && faults.some((f) => f.controller === e.controller && f.tMs <= e.tMs && e.tMs - f.tMs <= DOWN_AFTER_FAULT_MS)) continue;
    const tS = e.tMs / 1000;
    if (tS < 0 || tS > endS) continue;
    out.push({ tS, kind: e.kind, label: m.label, controllers: e.controller !== null ? [e.controller] : [], detail: e.detail, color: m.color });
  }
  out.sort((a, b) => a.tS - b.tS);
  const merged: Marker[] = [];
  const lastOfKind = new Map<PairEventKind, Marker>();
  for (const mk of out) {
    const prev = lastOfKind.get(mk.kind);
    if (prev !== undefined && (mk.tS - prev.tS) * 1000 <= SAME_MARKER_MS) {
      for (const c of mk.controllers) if (!prev.controllers.includes(c)) prev.controllers.push(c);
      prev.detail = `${prev.detail}; ${mk.detail}`;
      continue;
    }
    merged.push(mk);
    lastOfKind.set(mk.kind, mk);
  }
  for (const mk of merged) if (mk.controllers.length > 0) mk.label = `${mk.label} ${mk.controllers.join('+')}`;
  return merged;
}

export function renderChart(r: WorkloadReport): string {
  const iv: IntervalRecord[] = r.intervals;
  const endS = Math.max(1, ...iv.map((i) => i.startS + i.durationS), ...r.events.map((e) => e.tMs / 1000).filter((t) => t >= 0));
  const xTicks = niceTicks(endS, 12);
  const xMax = xTicks[xTicks.length - 1]!;
  const x = (s: number): number => M.left + (Math.min(s, xMax) / xMax) * PLOT_W;

  const singleSize = r.job.blockSizes.length === 1 ? r.job.blockSizes[0]!.bytes : null;
  const MiB = 1024 * 1024;
  const opsMax = Math.max(1, ...iv.map((i) => i.opsPerSec));
  const opsTicks = niceTicks(opsMax, 5);
  const opsTop = opsTicks[opsTicks.length - 1]!;
  const y1 = (v: number): number => P1.top + P1.height - (v / opsTop) * P1.height;
  const mbMax = Math.max(0.001, ...iv.map((i) => i.bytesPerSec / MiB));
  // One block size: MiB/s is ops/s times the size, so the right axis just relabels the same line.
  const mbTop = singleSize === null ? niceTicks(mbMax, 5).at(-1)! : (opsTop * singleSize) / MiB;
  const mbTicks = niceTicks(mbTop, 5).filter((v) => v <= mbTop * (1 + 1e-9));
  const yMb = (v: number): number => P1.top + P1.height - (v / mbTop) * P1.height;

  const lat = iv.flatMap((i) => [i.p50Us, i.p99Us]).filter((v): v is number => v !== null && v > 0);
  const latLo = 10 ** Math.floor(Math.log10(Math.max(1, Math.min(...(lat.length > 0 ? lat : [100])))));
  const latHi = 10 ** Math.ceil(Math.log10(Math.max(latLo * 10, ...(lat.length > 0 ? lat : [1000]))));
  const y2 = (us: number): number =>
    P2.top + P2.height - ((Math.log10(Math.max(us, latLo)) - Math.log10(latLo)) / (Math.log10(latHi) - Math.log10(latLo))) * P2.height;

  const out: string[] = [];
  out.push(`<?xml version="1.0" encoding="UTF-8"?>`);
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ${FONT} font-size="12" fill="${COLORS.text}">`);
  out.push(`<title>${esc(`pagepair workload ${r.job.name}: throughput and p99 latency over time`)}</title>`);
  out.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="#ffffff"/>`);

  // Title and the run in one line (two for a kill test or a checked history).
  const t = r.totals;
  const f = r.faults;
  const title = f !== null ? `pagepair kill-test · ${f.totals.cycles} × ${f.mode} (seed ${f.seed})` : `pagepair workload · ${r.job.name}`;
  out.push(text(M.left, 28, title, 'font-size="18" font-weight="bold"'));
  out.push(text(M.left, 48, r.summary, `fill="${COLORS.muted}"`));
  out.push(
    text(
      M.left,
      66,
      `${Math.round(t.opsPerSec).toLocaleString('en-US')} ops/s · ${(t.bytesPerSec / MiB).toFixed(1)} MiB/s · p50 ${latencyShort(r.latency.all.p50Us)} · p99 ${latencyShort(r.latency.all.p99Us)} · ` +
        `errors ${t.errors} · verification errors ${t.verifyErrors} · failovers ${t.failovers} · ${r.startedAt.replace('T', ' ').replace(/\.\d+Z$/, ' UTC')} · ` +
        `${r.machine.cpuCount} CPU, node ${r.machine.node}`,
      `fill="${COLORS.muted}"`,
    ),
  );
  const verdict = verdictLine(r);
  if (verdict !== null) out.push(text(M.left, 86, verdict.text, `fill="${verdict.ok ? COLORS.text : COLORS.error}" font-weight="bold"`));

  // Shading behind both panels: warm-up and the stretches without mirroring.
  const bandTop = LANE.top - 4;
  const bandBottom = P2.top + P2.height;
  if (r.job.warmupS > 0) {
    const w = x(r.job.warmupS) - x(0);
    out.push(`<rect x="${n(x(0))}" y="${bandTop}" width="${n(w)}" height="${bandBottom - bandTop}" fill="${COLORS.warmup}"/>`);
    out.push(text(x(0) + 4, P1.top + 14, 'warm-up (not counted)', `fill="${COLORS.muted}" font-size="11"`));
  }
  const spans = degradedSpans(r, endS);
  for (const [from, to] of spans) {
    out.push(
      `<rect x="${n(x(from))}" y="${P1.top}" width="${n(Math.max(1, x(to) - x(from)))}" height="${bandBottom - P1.top}" fill="${COLORS.degraded}"><title>${esc(`not mirrored ${from.toFixed(2)}–${to.toFixed(2)} s`)}</title></rect>`,
    );
  }

  // Panel frames, grids and axes.
  for (const p of [P1, P2]) {
    for (const v of xTicks) out.push(`<line x1="${n(x(v))}" x2="${n(x(v))}" y1="${p.top}" y2="${p.top + p.height}" stroke="${COLORS.grid}"/>`);
  }
  for (const v of opsTicks) {
    out.push(`<line x1="${M.left}" x2="${M.left + PLOT_W}" y1="${n(y1(v))}" y2="${n(y1(v))}" stroke="${COLORS.grid}"/>`);
    out.push(text(M.left - 8, y1(v) + 4, shortNumber(v), `text-anchor="end" fill="${COLORS.ops}"`));
  }
  for (const v of mbTicks) {
    out.push(`<line x1="${M.left + PLOT_W}" x2="${M.left + PLOT_W + 4}" y1="${n(yMb(v))}" y2="${n(yMb(v))}" stroke="${COLORS.mbps}"/>`);
    out.push(text(M.left + PLOT_W + 8, yMb(v) + 4, n(v), `fill="${COLORS.mbps}"`));
  }
  out.push(text(18, P1.top + P1.height / 2, 'throughput (ops/s)', `transform="rotate(-90 18 ${P1.top + P1.height / 2})" text-anchor="middle" fill="${COLORS.ops}"`));
  out.push(text(W - 18, P1.top + P1.height / 2, 'MiB/s', `transform="rotate(90 ${W - 18} ${P1.top + P1.height / 2})" text-anchor="middle" fill="${COLORS.mbps}"`));

  for (let d = latLo; d <= latHi; d *= 10) {
    out.push(`<line x1="${M.left}" x2="${M.left + PLOT_W}" y1="${n(y2(d))}" y2="${n(y2(d))}" stroke="${COLORS.grid}"/>`);
    out.push(text(M.left - 8, y2(d) + 4, latencyLabel(d), 'text-anchor="end"'));
    for (const f of [2, 5]) if (d * f < latHi) out.push(`<line x1="${M.left}" x2="${M.left + PLOT_W}" y1="${n(y2(d * f))}" y2="${n(y2(d * f))}" stroke="${COLORS.grid}" stroke-dasharray="2 4"/>`);
  }
  out.push(text(18, P2.top + P2.height / 2, 'latency (log scale)', `transform="rotate(-90 18 ${P2.top + P2.height / 2})" text-anchor="middle"`));
  for (const p of [P1, P2]) out.push(`<rect x="${M.left}" y="${p.top}" width="${PLOT_W}" height="${p.height}" fill="none" stroke="${COLORS.axis}"/>`);
  for (const v of xTicks) {
    out.push(`<line x1="${n(x(v))}" x2="${n(x(v))}" y1="${P2.top + P2.height}" y2="${P2.top + P2.height + 5}" stroke="${COLORS.axis}"/>`);
    out.push(text(x(v), P2.top + P2.height + 18, n(v), 'text-anchor="middle"'));
    out.push(`<line x1="${n(x(v))}" x2="${n(x(v))}" y1="${P1.top + P1.height}" y2="${P1.top + P1.height + 4}" stroke="${COLORS.axis}"/>`);
    out.push(text(x(v), P1.top + P1.height + 16, n(v), `text-anchor="middle" fill="${COLORS.muted}" font-size="10"`));
  }
  out.push(text(M.left + PLOT_W / 2, P2.top + P2.height + 36, 'time since start (s)', 'text-anchor="middle"'));
  out.push(text(M.left + 6, P1.top - 6, 'throughput per interval', `fill="${COLORS.muted}" font-size="11"`));
  out.push(text(M.left + 6, P2.top - 6, 'latency per interval (p99 and p50 of the operations answered in it)', `fill="${COLORS.muted}" font-size="11"`));

  // Throughput as steps: a stall is a flat zero for exactly as long as it lasted.
  if (iv.length > 0) {
    const pts: string[] = [`${n(x(iv[0]!.startS))},${n(y1(0))}`];
    for (const i of iv) pts.push(`${n(x(i.startS))},${n(y1(i.opsPerSec))}`, `${n(x(i.startS + i.durationS))},${n(y1(i.opsPerSec))}`);
    const last = iv[iv.length - 1]!;
    out.push(`<polygon points="${pts.join(' ')} ${n(x(last.startS + last.durationS))},${n(y1(0))}" fill="${COLORS.opsFill}" stroke="none"/>`);
    out.push(`<polyline points="${pts.slice(1).join(' ')}" fill="none" stroke="${COLORS.ops}" stroke-width="2"/>`);
    if (singleSize === null) {
      const mb = iv.flatMap((i) => [`${n(x(i.startS))},${n(yMb(i.bytesPerSec / MiB))}`, `${n(x(i.startS + i.durationS))},${n(yMb(i.bytesPerSec / MiB))}`]);
      out.push(`<polyline points="${mb.join(' ')}" fill="none" stroke="${COLORS.mbps}" stroke-width="1.5" stroke-dasharray="6 3"/>`);
    }
    // Intervals with errors: a red tick under the throughput.
    for (const i of iv) {
      if (i.errors === 0 && i.verifyErrors === 0) continue;
      const cx = x(i.startS + i.durationS / 2);
      const yb = P1.top + P1.height;
      out.push(
        `<path d="M${n(cx)},${n(yb - 10)} l-5,9 l10,0 z" fill="${COLORS.error}"><title>${esc(`${i.errors} error(s)${i.verifyErrors > 0 ? `, ${i.verifyErrors} verification error(s)` : ''} at ${i.startS}–${(i.startS + i.durationS).toFixed(1)} s`)}</title></path>`,
      );
    }
  }

  // Latency lines, broken where an interval answered nothing.
  for (const [key, color, width] of [
    ['p50Us', COLORS.p50, 1.5],
    ['p99Us', COLORS.p99, 2],
  ] as const) {
    let seg: string[] = [];
    const flush = (): void => {
      if (seg.length > 1) out.push(`<polyline points="${seg.join(' ')}" fill="none" stroke="${color}" stroke-width="${width}"/>`);
      seg = [];
    };
    for (const i of iv) {
      const v = i[key];
      if (v === null) {
        flush();
        continue;
      }
      seg.push(`${n(x(i.startS))},${n(y2(v))}`, `${n(x(i.startS + i.durationS))},${n(y2(v))}`);
    }
    flush();
  }

  // Event markers through both panels, labels staggered in rows above.
  const markers = markersOf(r.events, endS);
  const rowEnds = Array.from({ length: LANE.rows }, () => -Infinity);
  for (const m of markers) {
    const mx = x(m.tS);
    const labelW = m.label.length * LABEL_CHAR_W + 8;
    let row = rowEnds.findIndex((end) => end < mx - 2);
    if (row < 0) row = rowEnds.indexOf(Math.min(...rowEnds));
    rowEnds[row] = mx + labelW;
    const ly = LANE.top + row * LANE.rowH;
    out.push(
      `<g><title>${esc(`${m.tS.toFixed(2)} s  ${m.kind}: ${m.detail}`)}</title>` +
        `<line x1="${n(mx)}" x2="${n(mx)}" y1="${ly + 3}" y2="${bandBottom}" stroke="${m.color}" stroke-width="1.5" stroke-dasharray="4 3"/>` +
        `<circle cx="${n(mx)}" cy="${ly - 4}" r="3" fill="${m.color}"/>` +
        text(mx + 5, ly, m.label, `fill="${m.color}" font-size="11" font-weight="bold"`) +
        `</g>`,
    );
  }
  if (markers.length === 0) out.push(text(M.left, LANE.top + 10, 'no pair events during the run', `fill="${COLORS.muted}" font-size="11"`));

  // Legend, wrapping onto a second row when it must.
  let ly = H - 34;
  let lx = M.left;
  const room = (w: number): void => {
    if (lx + w > W - 16) {
      lx = M.left;
      ly += 18;
    }
  };
  const swatch = (color: string, label: string, dash = ''): void => {
    const w = 27 + label.length * 6.6;
    room(w);
    out.push(`<line x1="${lx}" x2="${lx + 22}" y1="${ly - 4}" y2="${ly - 4}" stroke="${color}" stroke-width="2.5"${dash !== '' ? ` stroke-dasharray="${dash}"` : ''}/>`);
    out.push(text(lx + 27, ly, label));
    lx += w + 16;
  };
  const box = (fill: string, label: string): void => {
    const w = 21 + label.length * 6.6;
    room(w);
    out.push(`<rect x="${lx}" y="${ly - 10}" width="16" height="12" fill="${fill}" stroke="#cccccc"/>`);
    out.push(text(lx + 21, ly, label));
    lx += w + 16;
  };
  swatch(COLORS.ops, 'ops/s');
  if (singleSize === null) swatch(COLORS.mbps, 'MiB/s', '6 3');
  swatch(COLORS.p99, 'p99');
  swatch(COLORS.p50, 'p50');
  if (spans.length > 0) box(COLORS.degraded, 'not mirrored');
  if (r.job.warmupS > 0) box('#00000018', 'warm-up');
  const kinds = [...new Set(markers.map((m) => m.kind))];
  for (const k of kinds) swatch(MARKERS[k]!.color, MARKERS[k]!.label, '4 3');
  if (iv.some((i) => i.errors > 0 || i.verifyErrors > 0)) {
    room(60);
    out.push(`<path d="M${lx + 8},${ly - 10} l-5,9 l10,0 z" fill="${COLORS.error}"/>`);
    out.push(text(lx + 18, ly, 'errors'));
  }

  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

/** What a kill test measured and what the checker said, in one line; null for a plain run. */
function verdictLine(r: WorkloadReport): { text: string; ok: boolean } | null {
  const parts: string[] = [];
  const f = r.faults;
  if (f !== null) {
    const ms = (v: number): string => `${Math.round(v)} ms`;
    parts.push(
      `median (max): stall ${ms(f.totals.stallMedianMs)} (${ms(f.totals.stallMaxMs)})`,
      `takeover ${ms(f.totals.takeoverMedianMs)} (${ms(f.totals.takeoverMaxMs)})`,
      `resync ${ms(f.totals.resyncMedianMs)} (${ms(f.totals.resyncMaxMs)})`,
    );
  }
  const c = r.check;
  if (c !== null) {
    const ops = `history of ${c.ops.toLocaleString('en-US')} ops`;
    const kinds = Object.entries(c.byKind).filter(([, v]) => v > 0);
    const violations = kinds.reduce((sum, [, v]) => sum + v, 0);
    if (c.verdict === 'linearizable') parts.push(`${ops} linearizable, 0 violations`);
    else if (c.verdict === 'violations') parts.push(`${ops} NOT linearizable: ${violations} violations (${kinds.map(([k, v]) => `${k} ${v}`).join(', ')})`);
    else parts.push(`${ops} undecided: ${c.inconclusiveKeys} keys`);
  }
  if (r.readBack !== null && (r.readBack.verifyErrors > 0 || r.readBack.errors > 0)) parts.push(`read back: ${r.readBack.verifyErrors} verification errors, ${r.readBack.errors} errors`);
  if (parts.length === 0) return null;
  return { text: `${parts.join(' · ')}${r.ok ? '' : ' · FAILED'}`, ok: r.ok };
}

function latencyShort(us: number): string {
  if (us >= 1e6) return `${(us / 1e6).toFixed(2)} s`;
  if (us >= 1e3) return `${(us / 1e3).toFixed(2)} ms`;
  return `${us} µs`;
}
