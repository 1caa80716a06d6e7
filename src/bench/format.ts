// The benchmark's report as text: the table of medians, the ratios to the
// floors and to the unmirrored controller, the targets, memory, and how busy
// the machine was.

import { formatProfile, WORK_KINDS } from './cpu-profile.js';
import { findCell, median, ratio } from './stats.js';
import { CONFIG_TITLES, type BenchReport, type CellResult } from './types.js';

const MiB = 1024 * 1024;

export function formatOps(n: number): string {
  return Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-';
}

export function formatUs(us: number): string {
  if (!Number.isFinite(us)) return '-';
  return us >= 100 ? String(Math.round(us)) : us.toFixed(1);
}

function formatRatio(r: number | null): string {
  return r === null ? '-' : r.toFixed(2);
}

function formatMiB(bytes: number): string {
  return `${(bytes / MiB).toFixed(0)} MiB`;
}

function pad(text: string, width: number, left = false): string {
  return left ? text.padEnd(width) : text.padStart(width);
}

export function formatBench(report: BenchReport): string {
  const s = report.settings;
  const out: string[] = [];
  const columns = s.ops.flatMap((op) => s.inflight.map((inflight) => ({ op, inflight })));
  const label = 26;
  const wOps = 9;
  const wUs = 8;
  const colWidth = wOps + 2 * wUs;

  out.push(
    `pagepair bench: ${s.blockBytes} B ${s.ops.join('/')}s, ${s.runs} run${s.runs === 1 ? '' : 's'} of ${s.warmupSeconds} s warm-up + ${s.seconds} s per cell, medians; ` +
      `working set ${formatMiB(s.workingSetBytes)}, cacheBytesMax ${formatMiB(s.cacheBytesMax)}`,
  );
  out.push('');
  out.push(pad('', label, true) + columns.map((c) => ' | ' + pad(`${c.op} x${c.inflight}`, colWidth, true)).join(''));
  out.push(pad('configuration', label, true) + columns.map(() => ' | ' + pad('ops/s', wOps) + pad('p50 µs', wUs) + pad('p99 µs', wUs)).join(''));
  out.push('-'.repeat(label + columns.length * (colWidth + 3)));
  // A row with a note and no figures (Redis when redis-server is missing) shows as its note only.
  const noted = new Set(report.notes.map((n) => n.row));
  const shown = s.configs.filter((config) => !noted.has(CONFIG_TITLES[config]) || report.cells.some((c) => c.config === config));
  for (const config of shown) {
    const cells = columns.map((c) => findCell(report.cells, config, c.op, c.inflight));
    out.push(
      pad(CONFIG_TITLES[config], label, true) +
        cells
          .map((cell) =>
            cell === undefined
              ? ' | ' + pad('-', colWidth)
              : ' | ' + pad(formatOps(cell.median.opsPerSec), wOps) + pad(formatUs(cell.median.p50Us), wUs) + pad(formatUs(cell.median.p99Us), wUs),
          )
          .join(''),
    );
  }
  for (const n of report.notes) out.push(pad(n.row, label, true) + ' | ' + n.note);

  const conns = [...new Set(report.cells.filter((c) => c.inflight > 1).map((c) => `${c.config} x${c.inflight}: ${c.connections} conn to ${c.target}`))];
  if (conns.length > 0) out.push(`connections: 1 for 1 in flight; ${conns.join('; ')}`);
  const readCells = report.cells.filter((c) => c.op === 'read' && (c.config === 'single' || c.config === 'mirrored'));
  if (readCells.length > 0) {
    const missed = readCells.filter((c) => c.pagesStaged > 0);
    out.push(
      missed.length === 0
        ? 'reads: every measured read hit the cache (no page read from the store)'
        : `reads: pages read from the store while measuring: ${missed.map((c) => `${c.config} x${c.inflight}: ${c.pagesStaged}`).join(', ')}`,
    );
  }
  const errors = report.cells.filter((c) => c.runs.some((r) => r.errors > 0));
  for (const c of errors) {
    const first = c.runs.find((r) => r.errors > 0);
    out.push(`errors in ${c.config} ${c.op} x${c.inflight}: ${c.runs.map((r) => r.errors).join('/')} (first: ${first?.firstError ?? '?'})`);
  }

  const cpuRows = shown.map((config) => {
    const values = columns.map((c) => {
      const cell = findCell(report.cells, config, c.op, c.inflight);
      if (cell === undefined || cell.medianServerCpuUsPerOp === null) return '-';
      const client = cell.runs.flatMap((r) => (r.cpuUsPerOp['bench client'] === undefined ? [] : [r.cpuUsPerOp['bench client']]));
      return `${Math.round(cell.medianServerCpuUsPerOp)}${client.length > 0 ? ` (${Math.round(median(client))})` : ''}`;
    });
    return { config, values };
  });
  if (cpuRows.some((r) => r.values.some((v) => v !== '-'))) {
    out.push('');
    out.push(pad('CPU µs/op: row (client)', label, true) + columns.map((c) => ' | ' + pad(`${c.op} x${c.inflight}`, 11)).join(''));
    for (const r of cpuRows) out.push(pad(CONFIG_TITLES[r.config], label, true) + r.values.map((v) => ' | ' + pad(v, 11)).join(''));
  }

  const ratioRows = ratioLines(report, columns);
  if (ratioRows.length > 0) {
    out.push('');
    out.push(pad('ratios', label, true) + columns.map((c) => ' | ' + pad(`${c.op} x${c.inflight}`, 11)).join(''));
    for (const r of ratioRows) out.push(pad(r.name, label, true) + r.values.map((v) => ' | ' + pad(formatRatio(v), 11)).join(''));
  }

  out.push('');
  out.push('targets');
  for (const t of report.targets) {
    const value = t.value === null ? 'not measured' : t.value >= 100 ? formatOps(t.value) : t.value.toFixed(2);
    out.push(`  ${pad(t.verdict, 4, true)}  ${pad(t.name, 34, true)} ${pad(value, 12)}  (target ${t.target}; ${t.formula})`);
  }

  if (report.memory.length > 0) {
    out.push('');
    out.push(`memory at the end (RSS against cacheBytesMax + ${formatMiB(s.rssOverheadBytesMax)} allowed overhead)`);
    for (const m of report.memory) {
      out.push(
        `  ${pad(m.verdict, 4, true)}  ${pad(`${m.config} ${m.controller}`, 12, true)} RSS ${pad(formatMiB(m.rssBytes), 8)}, ` +
          `cache holds ${formatMiB(m.cachedBytes)} of ${formatMiB(m.cacheBytesMax)}; ${m.pagesStaged} pages read from the store in all`,
      );
    }
  }

  out.push('');
  const busy = report.cells.flatMap((c) => c.runs.map((r) => r.machineBusyPct));
  const others = report.cells.flatMap((c) => c.runs.flatMap((r) => (r.othersBusyPct === null ? [] : [r.othersBusyPct])));
  const m = report.machine;
  out.push(
    `machine: ${m.cpus} x ${m.cpuModel}, node ${m.node}, ws ${m.ws}; load ${m.loadAvgStart.join(' ')} at start, ${m.loadAvgEnd.join(' ')} at the end; ` +
      `${m.busyBeforeStartPct}% busy before start (others)${m.waitedForQuietSeconds > 0 ? ` after waiting ${m.waitedForQuietSeconds} s for quiet` : ''}, ${busy.length > 0 ? `${median(busy).toFixed(0)}% median busy while measuring (all processes)` : 'nothing measured'}`,
  );
  if (others.length > 0) {
    out.push(
      `noise: other processes used ${median(others).toFixed(0)}% of the machine in the median run, ${Math.max(...others).toFixed(0)}% at most` +
        (Math.max(...others) >= 10 ? ' (figures from a shared machine: compare ratios, not absolutes)' : ''),
    );
  }
  out.push(...formatPerOp(report, label));
  for (const p of report.profiles) {
    out.push('');
    out.push(formatProfile(`CPU profile of ${p.process} while measured (pid ${p.pid}, ${p.file})`, p.summary, 15));
  }
  return out.join('\n');
}

/**
 * The profiled CPU of each operation by kind of work, the row's processes
 * added up (both controllers of the pair), one column per cell. V8 samples
 * on the wall clock: time a process waited for a core inside a call counts
 * to that call, so on a busy machine the syscall lines run high.
 */
function formatPerOp(report: BenchReport, label: number): string[] {
  const out: string[] = [];
  const rows = [...new Set(report.profiles.map((p) => p.process.split(' ')[0]!))];
  for (const row of rows) {
    const procs = report.profiles.filter((p) => p.process.split(' ')[0] === row && p.perOp !== undefined);
    if (procs.length === 0) continue;
    const cols = procs[0]!.perOp!.map((c) => ({ op: c.op, inflight: c.inflight, ops: c.ops }));
    const sum = (kind: (typeof WORK_KINDS)[number] | null, col: { op: string; inflight: number }, only?: (typeof procs)[number]): number => {
      let total = 0;
      for (const p of only === undefined ? procs : [only]) {
        const c = p.perOp!.find((x) => x.op === col.op && x.inflight === col.inflight);
        if (c === undefined) continue;
        for (const [k, us] of Object.entries(c.usPerOp)) if (kind === null || k === kind) total += us;
      }
      return total;
    };
    out.push('');
    out.push(`profiled CPU µs per operation, ${procs.map((p) => p.process).join(' + ')} (V8 samples wall time: on a busy machine the syscall lines include waiting for a core)`);
    out.push(pad('kind of work', label, true) + cols.map((c) => ' | ' + pad(`${c.op} x${c.inflight}`, 11)).join(''));
    for (const kind of WORK_KINDS) {
      const values = cols.map((c) => sum(kind, c));
      if (values.every((v) => v < 0.05)) continue;
      out.push(pad(kind, label, true) + values.map((v) => ' | ' + pad(v.toFixed(1), 11)).join(''));
    }
    for (const p of procs) out.push(pad(`all: ${p.process}`, label, true) + cols.map((c) => ' | ' + pad(sum(null, c, p).toFixed(1), 11)).join(''));
    out.push(pad('all', label, true) + cols.map((c) => ' | ' + pad(sum(null, c).toFixed(1), 11)).join(''));
  }
  return out;
}

interface RatioLine {
  name: string;
  values: (number | null)[];
}

function ratioLines(report: BenchReport, columns: { op: CellResult['op']; inflight: number }[]): RatioLine[] {
  const has = (config: CellResult['config']): boolean => report.settings.configs.includes(config);
  const measured = (config: CellResult['config']): boolean => report.cells.some((c) => c.config === config);
  const ops = (config: CellResult['config'], c: { op: CellResult['op']; inflight: number }): number | undefined =>
    findCell(report.cells, config, c.op, c.inflight)?.median.opsPerSec;
  const p50 = (config: CellResult['config'], c: { op: CellResult['op']; inflight: number }): number | undefined =>
    findCell(report.cells, config, c.op, c.inflight)?.median.p50Us;
  const lines: RatioLine[] = [];
  for (const config of ['single', 'mirrored'] as const) {
    if (!has(config)) continue;
    if (has('echo')) lines.push({ name: `${config} ops/s / echo`, values: columns.map((c) => ratio(ops(config, c), ops('echo', c))) });
    if (has('relay')) lines.push({ name: `${config} ops/s / relay`, values: columns.map((c) => ratio(ops(config, c), ops('relay', c))) });
    if (config === 'mirrored' && has('single')) lines.push({ name: `${config} ops/s / single`, values: columns.map((c) => ratio(ops(config, c), ops('single', c))) });
    if (has('relay')) lines.push({ name: `${config} p50 / relay p50`, values: columns.map((c) => ratio(p50(config, c), p50('relay', c))) });
    if (config === 'mirrored' && has('single')) lines.push({ name: `${config} p50 / single p50`, values: columns.map((c) => ratio(p50(config, c), p50('single', c))) });
    if (config === 'mirrored' && measured('redis')) {
      lines.push({ name: `${config} ops/s / redis`, values: columns.map((c) => ratio(ops(config, c), ops('redis', c))) });
      lines.push({ name: `${config} p50 / redis p50`, values: columns.map((c) => ratio(p50(config, c), p50('redis', c))) });
    }
  }
  return lines;
}
