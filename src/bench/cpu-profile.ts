// Where a process spent its time, from the .cpuprofile file `node
// --cpu-prof` writes at exit: self time per function and per source file,
// so the hot path shows without opening a profiler.

import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber?: number };
  hitCount?: number;
  children?: number[];
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

// ---------------------------------------------------------------------------
// Where an operation's CPU goes, by kind of work

/**
 * The kinds of work a controller does per request, in the words the issue
 * asks about. A sample goes to its innermost frame's kind; a call into
 * native code (a syscall, a copy) goes to the kind of the JavaScript that
 * made it, so "socket writes" and "store I/O" are the calls and not their
 * callers' code.
 */
export const WORK_KINDS = [
  'core',
  'codec (encode/decode)',
  'crc32c',
  'ws framing',
  'transport (ours)',
  'node streams/net',
  'socket syscalls',
  'buffer copies/allocation',
  'promise hops/timers',
  'store (js)',
  'store I/O (fs calls)',
  'runtime',
  'garbage collector',
  'V8/libuv outside JS',
  'other',
] as const;
export type WorkKind = (typeof WORK_KINDS)[number];

interface Frame {
  functionName: string;
  url: string;
}

function kindOfUrl(url: string): WorkKind | null {
  if (url === '') return null;
  if (/\/protocol\/crc32c/.test(url)) return 'crc32c';
  if (/\/protocol\//.test(url)) return 'codec (encode/decode)';
  if (/\/core\//.test(url)) return 'core';
  if (/\/store\//.test(url)) return 'store (js)';
  if (/\/transport\//.test(url)) return 'transport (ours)';
  if (/\/runtime\//.test(url)) return 'runtime';
  if (/node_modules\/ws\//.test(url)) return 'ws framing';
  if (/^node:buffer|internal\/buffer/.test(url)) return 'buffer copies/allocation';
  if (/internal\/streams|^node:net|stream_base_commons|internal\/net/.test(url)) return 'node streams/net';
  if (/timers|task_queues|async_hooks/.test(url)) return 'promise hops/timers';
  if (/internal\/fs|^node:fs/.test(url)) return 'store I/O (fs calls)';
  return null;
}

/** The kind of work of one sample, from its stack, innermost frame first. */
export function workKindOf(stack: readonly Frame[]): WorkKind | 'idle' {
  const leaf = stack[0];
  if (leaf === undefined) return 'other';
  if (leaf.functionName === '(idle)') return 'idle';
  if (leaf.functionName === '(garbage collector)') return 'garbage collector';
  if (leaf.functionName === '(program)') return 'V8/libuv outside JS';
  if (leaf.url === '') {
    // Native code: the fs bindings and socket writes by who called them.
    if (stack.some((f) => /\/store\/|internal\/fs/.test(f.url))) return 'store I/O (fs calls)';
    if (stack.some((f) => /internal\/streams|^node:net|stream_base_commons/.test(f.url))) return 'socket syscalls';
    if (leaf.functionName === 'runMicrotasks') return 'promise hops/timers';
  }
  // Native code and node's own helpers (validators, events) go to the first caller of a known kind.
  for (const f of stack) {
    const k = kindOfUrl(f.url);
    if (k !== null) return k;
  }
  return 'other';
}

/** CPU µs of each kind of work inside each window (µs on the profile's clock); idle left out. */
export function workByWindow(p: CpuProfile, windows: readonly (readonly [number, number])[]): Map<WorkKind, number>[] {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const kindOfNode = new Map<number, WorkKind | 'idle'>();
  const kindOf = (id: number): WorkKind | 'idle' => {
    let k = kindOfNode.get(id);
    if (k !== undefined) return k;
    const stack: Frame[] = [];
    for (let x: number | undefined = id; x !== undefined; x = parent.get(x)) {
      const node = byId.get(x);
      if (node !== undefined) stack.push(node.callFrame);
    }
    k = workKindOf(stack);
    kindOfNode.set(id, k);
    return k;
  };
  const out = windows.map(() => new Map<WorkKind, number>());
  const samples = p.samples ?? [];
  const deltas = p.timeDeltas ?? [];
  let atUs = p.startTime;
  for (let i = 0; i < samples.length; i++) {
    atUs += deltas[i] ?? 0;
    const w = windows.findIndex(([a, b]) => atUs >= a && atUs <= b);
    if (w < 0) continue;
    const k = kindOf(samples[i]!);
    if (k === 'idle') continue;
    const us = Math.max(0, deltas[i + 1] ?? 0);
    out[w]!.set(k, (out[w]!.get(k) ?? 0) + us);
  }
  return out;
}
