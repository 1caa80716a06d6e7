// How much of the machine a run had: all cores' busy time, split into what
// the benchmark's own processes used and what everyone else did. On a shared
// machine the second figure says whether a run can be trusted.

import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';

/** Linux's USER_HZ: /proc reports process times in these ticks. */
const TICKS_PER_SEC = 100;

export interface CpuSnapshot {
  machineIdleMs: number;
  machineTotalMs: number;
  /** CPU time of the given processes; null where /proc cannot tell (not Linux). */
  oursMs: number | null;
  /** The same, process by process. */
  byPidMs: Map<number, number>;
}

export interface CpuShares {
  /** Share of all cores busy, 0..100. */
  machineBusyPct: number;
  /** Of that, the benchmark's processes; null when unknown. */
  oursPct: number | null;
  /** The rest: other people's work. */
  othersPct: number | null;
}

function processCpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may hold spaces and parentheses; the fields after its last ')' start at field 3.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
    return ((utime + stime) * 1000) / TICKS_PER_SEC;
  } catch {
    return null;
  }
}

export function cpuSnapshot(pids: readonly number[]): CpuSnapshot {
  let idle = 0;
  let total = 0;
  for (const c of cpus()) {
    idle += c.times.idle;
    total += c.times.idle + c.times.user + c.times.nice + c.times.sys + c.times.irq;
  }
  let ours: number | null = 0;
  const byPidMs = new Map<number, number>();
  for (const pid of pids) {
    const ms = processCpuMs(pid);
    if (ms !== null) byPidMs.set(pid, ms);
    // A process that exited in between is simply not counted; an unreadable self means no /proc.
    if (ms === null) {
      if (pid === process.pid) ours = null;
      continue;
    }
    if (ours !== null) ours += ms;
  }
  return { machineIdleMs: idle, machineTotalMs: total, oursMs: ours, byPidMs };
}

function pct(n: number): number {
  return Math.round(n * 1000) / 10;
}

/** CPU microseconds each process spent per operation between two snapshots. */
export function cpuPerOp(a: CpuSnapshot, b: CpuSnapshot, ops: number): Map<number, number> {
  const out = new Map<number, number>();
  if (ops <= 0) return out;
  for (const [pid, msB] of b.byPidMs) {
    const msA = a.byPidMs.get(pid);
    if (msA !== undefined) out.set(pid, Math.round(((msB - msA) * 1000) / ops));
  }
  return out;
}

export function cpuShares(a: CpuSnapshot, b: CpuSnapshot): CpuShares {
  const total = b.machineTotalMs - a.machineTotalMs;
  if (total <= 0) return { machineBusyPct: 0, oursPct: null, othersPct: null };
  const busy = Math.max(0, total - (b.machineIdleMs - a.machineIdleMs)) / total;
  if (a.oursMs === null || b.oursMs === null) return { machineBusyPct: pct(busy), oursPct: null, othersPct: null };
  const ours = Math.min(busy, Math.max(0, b.oursMs - a.oursMs) / total);
  return { machineBusyPct: pct(busy), oursPct: pct(ours), othersPct: pct(Math.max(0, busy - ours)) };
}
