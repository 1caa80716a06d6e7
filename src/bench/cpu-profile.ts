// Where a process spent its time, from the .cpuprofile file `node
// --cpu-prof` writes at exit: self time per function and per source file,
// so the hot path shows without opening a profiler.

import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber?: number };
  hitCount?: number;
}

export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface SelfTime {
  /** "name (file:line)", or "(garbage collector)", "(idle)", "(program)". */
  name: string;
  selfMs: number;
  /** Share of the time the process was not idle. */
  selfPct: number;
}

export interface ProfileSummary {
  totalMs: number;
  idleMs: number;
  busyMs: number;
  functions: SelfTime[];
  files: SelfTime[];
}

/** The last two path parts of a script URL: enough to tell dist/core/controller.js from node:internal/... */
export function shortUrl(url: string): string {
  if (url === '') return '';
  const clean = url.replace(/^file:\/\//, '');
  const parts = clean.split('/');
  return parts.slice(-2).join('/');
}

/**
 * `windows`: when given, only samples taken inside one of these [start, end]
 * spans (µs, the profile's own monotonic clock) count, so that start-up and
 * set-up work stays out of the figures.
 */
export function summarizeProfile(p: CpuProfile, top = 25, windows?: readonly (readonly [number, number])[]): ProfileSummary {
  const byId = new Map<number, ProfileNode>();
  for (const n of p.nodes) byId.set(n.id, n);
  const selfUs = new Map<number, number>();
  const samples = p.samples ?? [];
  const deltas = p.timeDeltas ?? [];
  const inWindow = (atUs: number): boolean => windows === undefined || windows.some(([a, b]) => atUs >= a && atUs <= b);
  if (samples.length > 0 && deltas.length === samples.length) {
    // Each delta is the time from the previous sample to this one; the span
    // after a sample is charged to it, as Chrome's profiler does.
    let atUs = p.startTime;
    for (let i = 0; i < samples.length; i++) {
      atUs += deltas[i]!;
      if (!inWindow(atUs)) continue;
      const next = i + 1 < deltas.length ? deltas[i + 1]! : 0;
      selfUs.set(samples[i]!, (selfUs.get(samples[i]!) ?? 0) + Math.max(0, next));
    }
  } else {
    const total = p.endTime - p.startTime;
    const hits = p.nodes.reduce((sum, n) => sum + (n.hitCount ?? 0), 0);
    for (const n of p.nodes) selfUs.set(n.id, hits > 0 ? ((n.hitCount ?? 0) / hits) * total : 0);
  }
  const fnUs = new Map<string, number>();
  const fileUs = new Map<string, number>();
  let idleUs = 0;
  let totalUs = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (node === undefined) continue;
    totalUs += us;
    const f = node.callFrame;
    if (f.functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    const file = shortUrl(f.url);
    const name = file === '' ? f.functionName || '(anonymous)' : `${f.functionName || '(anonymous)'} (${file}:${f.lineNumber + 1})`;
    fnUs.set(name, (fnUs.get(name) ?? 0) + us);
    const fileKey = file === '' ? (f.functionName.startsWith('(') ? f.functionName : '(native)') : file;
    fileUs.set(fileKey, (fileUs.get(fileKey) ?? 0) + us);
  }
  const busyUs = totalUs - idleUs;
  const rank = (m: Map<string, number>): SelfTime[] =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, selfMs: Math.round(us / 100) / 10, selfPct: busyUs > 0 ? Math.round((1000 * us) / busyUs) / 10 : 0 }));
  return {
    totalMs: Math.round(totalUs / 1000),
    idleMs: Math.round(idleUs / 1000),
    busyMs: Math.round(busyUs / 1000),
    functions: rank(fnUs),
    files: rank(fileUs),
  };
}

export function readProfile(path: string): CpuProfile {
  return JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
}

export function formatProfile(title: string, s: ProfileSummary, top = 20): string {
  const lines = [`${title}: ${s.busyMs} ms busy of ${s.totalMs} ms profiled (${s.idleMs} ms idle)`];
  lines.push('  self time by function:');
  for (const f of s.functions.slice(0, top)) lines.push(`    ${f.selfPct.toFixed(1).padStart(5)}%  ${String(f.selfMs).padStart(8)} ms  ${f.name}`);
  lines.push('  self time by file:');
  for (const f of s.files.slice(0, Math.min(top, 12))) lines.push(`    ${f.selfPct.toFixed(1).padStart(5)}%  ${String(f.selfMs).padStart(8)} ms  ${f.name}`);
  return lines.join('\n');
}
