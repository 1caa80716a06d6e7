// Client writes through a real mirrored pair whose store is one file or a
// pool (issue 14's benchmark, client level): each layout's pair is started
// over fresh sparse member files, written at a fixed number in flight with a
// small cache and a short dirty age (so destaging to the pool is part of the
// steady state), stopped; then one member file is removed and the same pool
// is started again, opening degraded, and written again.

import { mkdirSync, unlinkSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { PagepairError } from '../protocol/errors.js';
import { driveRun } from './driver.js';
import { ChildGroup } from './processes.js';
import { startPagepairRig, type RigSettings } from './rigs.js';
import type { RunResult } from './types.js';

export const POOL_BENCH_LAYOUTS = ['one', 'mirror-2', 'parity-4', 'parity2-5'] as const;
export type PoolBenchLayout = (typeof POOL_BENCH_LAYOUTS)[number];

const LAYOUT_POOLS: Record<PoolBenchLayout, { layout: 'mirror' | 'parity' | 'parity2'; devices: number } | null> = {
  one: null,
  'mirror-2': { layout: 'mirror', devices: 2 },
  'parity-4': { layout: 'parity', devices: 4 },
  'parity2-5': { layout: 'parity2', devices: 5 },
};

/** `--layouts one,parity-4`: known names, each once, in the table's order. */
export function parsePoolLayouts(text: string): PoolBenchLayout[] {
  const asked = text.split(',').map((t) => t.trim()).filter((t) => t !== '');
  if (asked.length === 0) throw new PagepairError('BAD_FIELD', 'no layouts given', 'layouts');
  for (const a of asked) {
    if (!(POOL_BENCH_LAYOUTS as readonly string[]).includes(a)) {
      throw new PagepairError('BAD_FIELD', `unknown layout "${a}": one of ${POOL_BENCH_LAYOUTS.join(', ')}`, 'layouts');
    }
  }
  return POOL_BENCH_LAYOUTS.filter((l) => asked.includes(l));
}

export interface PoolClientSettings {
  /** Where member files, configurations and logs go (one directory per layout under it). */
  dir: string;
  layouts: readonly PoolBenchLayout[];
  runs: number;
  warmupSeconds: number;
  seconds: number;
  inflight: number;
  connections: number;
  /** Each member file (sparse), and the one-device row's store file. */
  deviceBytes: number;
  /** Parity layouts' chunk. */
  chunkBytes: number;
  workingSetBytes: number;
  cacheBytesMax: number;
  dirtyAgeMaxMs: number;
  seed: number;
  progress(line: string): void;
}

export interface PoolClientRow {
  layout: PoolBenchLayout;
  healthy: RunResult[];
  /** null for one device (nothing to fail). */
  degraded: RunResult[] | null;
}

/** The store section of a controller's configuration for `layout`, members under `dir`. */
export function poolStoreSection(layout: PoolBenchLayout, dir: string, deviceBytes: number, chunkBytes: number): { section: Record<string, unknown>; memberPaths: string[] } {
  const pool = LAYOUT_POOLS[layout];
  if (pool === null) {
    const path = join(dir, 'one.img');
    return { section: { path, sizeBytes: deviceBytes }, memberPaths: [path] };
  }
  const memberPaths = Array.from({ length: pool.devices }, (_, i) => join(dir, `d${i}.img`));
  const section = { pool: { layout: pool.layout, devices: memberPaths, deviceBytes, ...(pool.layout === 'mirror' ? {} : { chunkBytes }) } };
  return { section: { ...section }, memberPaths };
}

const STOP_GRACE_MS = 15_000;
const PARTNER_TIMEOUT_MS = 5_000;

async function measure(s: PoolClientSettings, rig: RigSettings, what: string, degraded: boolean): Promise<RunResult[]> {
  const group = new ChildGroup();
  try {
    const r = await startPagepairRig(group, 'mirrored', rig);
    // The figure must be of the state it is labelled with.
    for (const { controller, status } of await r.statuses()) {
      const seen = status.pool?.degraded ?? false;
      if (seen !== degraded) throw new PagepairError('INTERNAL', `${what}: controller ${controller}'s pool is ${seen ? '' : 'not '}degraded`);
    }
    const results: RunResult[] = [];
    for (let i = 0; i < s.runs; i++) {
      const c = await r.connect(s.connections, 'write');
      try {
        const res = await driveRun(c.conns, {
          op: 'write',
          inflight: s.inflight,
          warmupMs: s.warmupSeconds * 1000,
          measureMs: s.seconds * 1000,
          seed: s.seed + i,
          // The controllers' CPU is the row's, not someone else's.
          ourPids: [process.pid, ...r.processes.map((p) => p.pid)],
          rowProcesses: new Map(r.processes.map((p) => [p.pid, p.name])),
        });
        const cpu = Object.entries(res.cpuUsPerOp).map(([name, us]) => `${name} ${Math.round(us)}`).join(', ');
        s.progress(
          `${what}: ${res.opsPerSec} writes/s (p50 ${Math.round(res.p50Us)} µs, p99 ${Math.round(res.p99Us)} µs, ${res.errors} errors; CPU µs/write: ${cpu}; others ${res.othersBusyPct === null ? '?' : Math.round(res.othersBusyPct)}% busy)`,
        );
        if (res.errors > 0) s.progress(`${what}: first error ${res.firstError ?? '?'}`);
        results.push(res);
      } finally {
        await c.close();
      }
      await r.settle();
    }
    return results;
  } finally {
    await group.stopAll(STOP_GRACE_MS);
  }
}

/** Every layout healthy, then (pools) with member 1's file removed. */
export async function runPoolClientBench(s: PoolClientSettings): Promise<PoolClientRow[]> {
  const rows: PoolClientRow[] = [];
  for (const layout of s.layouts) {
    const dir = join(s.dir, layout);
    mkdirSync(dir, { recursive: true });
    const { section, memberPaths } = poolStoreSection(layout, dir, s.deviceBytes, s.chunkBytes);
    const rig: RigSettings = {
      blockBytes: 4096,
      workingSetBytes: s.workingSetBytes,
      cacheBytesMax: s.cacheBytesMax,
      mirroredTarget: 'both',
      controllerNodeFlags: [],
      dir,
      progress: (line) => s.progress(`${layout}: ${line}`),
      store: section,
      cache: { dirtyAgeMaxMs: s.dirtyAgeMaxMs },
      pairId: randomUUID(),
      areaPrefix: 'healthy',
      // With the bench's 500 ms, A fenced (SIGKILLed) B while B opened a new pool on a loaded machine.
      partnerTimeoutMs: PARTNER_TIMEOUT_MS,
    };
    const healthy = await measure(s, rig, `${layout} healthy`, false);
    let degraded: RunResult[] | null = null;
    if (memberPaths.length > 1) {
      // A member whose file is gone opens as failed: the pool serves degraded.
      unlinkSync(memberPaths[1]!);
      degraded = await measure(s, { ...rig, areaPrefix: 'degraded' }, `${layout} degraded`, true);
    }
    rows.push({ layout, healthy, degraded });
  }
  return rows;
}

export function medianOf(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function cell(x: number | null, digits = 0): string {
  return x === null || Number.isNaN(x) ? '-' : x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function ratio(x: number | null, base: number | null): string {
  return x === null || base === null || Number.isNaN(x) || Number.isNaN(base) || base === 0 ? '-' : (x / base).toFixed(2);
}

/** The client-level table: median writes/s healthy and degraded, each with its ratio to one device healthy. */
export function formatPoolClientTable(rows: readonly PoolClientRow[]): string {
  const med = (rs: RunResult[] | null): number | null => (rs === null ? null : medianOf(rs.map((r) => r.opsPerSec)));
  const base = med(rows.find((r) => r.layout === 'one')?.healthy ?? null);
  const head = ['layout', 'writes/s', 'ratio', 'degraded', 'ratio', 'errors'];
  const body = rows.map((r) => {
    const h = med(r.healthy);
    const d = med(r.degraded);
    const errors = [...r.healthy, ...(r.degraded ?? [])].reduce((n, x) => n + x.errors, 0);
    return [r.layout, cell(h), ratio(h, base), cell(d), ratio(d, base), String(errors)];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(head), ...body.map(line)].join('\n');
}
