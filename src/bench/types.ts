// The shapes of a benchmark run: what it is asked to do and what it reports.
// Kept apart from the code that runs it so the statistics and the formatting
// can be tested without starting a process.

import type { ProfileSummary, WorkKind } from './cpu-profile.js';

/** What the benchmark compares, fastest floor first; Redis last, the peer a user might pick instead. */
export type BenchConfigName = 'echo' | 'relay' | 'single' | 'mirrored' | 'redis';
export type BenchOp = 'write' | 'read';

export const BENCH_CONFIGS: readonly BenchConfigName[] = ['echo', 'relay', 'single', 'mirrored', 'redis'];
/** Rows that measure writes only (their read columns stay empty). */
export const WRITE_ONLY_CONFIGS: readonly BenchConfigName[] = ['redis'];
export const BENCH_OPS: readonly BenchOp[] = ['write', 'read'];

export const CONFIG_TITLES: Readonly<Record<BenchConfigName, string>> = {
  echo: 'floor: ws echo',
  relay: 'floor: relay c>A>B>A>c',
  single: 'single, mirroring off',
  mirrored: 'mirrored pair',
  redis: 'Redis SET + WAIT 1',
};

export interface BenchOptions {
  /** Repetitions of every cell; medians are quoted. Default 3. */
  runs?: number;
  /** Measured seconds per run. Default 3. */
  seconds?: number;
  /** Seconds of load before measuring, every run. Default 1. */
  warmupSeconds?: number;
  /** Operations in flight, summed over the connections. Default [1, 32]. */
  inflight?: number[];
  ops?: BenchOp[];
  /** Which rows to measure. Default all five (Redis skipped with a note when redis-server is not installed). */
  configs?: BenchConfigName[];
  /** Adds the "mirrored pair with a journal" row (only a note: the journal is not built). */
  journal?: boolean;
  /** Where to save the JSON report. */
  json?: string;
  /** One line at a time while the benchmark runs. */
  progress?: (line: string) => void;
  /** Bytes per read or write. Default 4096. */
  blockBytes?: number;
  /** Bytes the reads and writes range over. Default 64 MiB. */
  workingSetBytes?: number;
  /** Each controller's cacheBytesMax. Default 256 MiB (the working set must fit for reads to hit). */
  cacheBytesMax?: number;
  /** Connections used when more than one operation is in flight. Default 4. */
  connections?: number;
  /** Which controllers of the mirrored pair the clients talk to. Default "both" (connections alternate). */
  mirroredTarget?: 'A' | 'both';
  /** Seed of the page choices. Default 1. */
  seed?: number;
  /** When set, controllers run under `node --cpu-prof` and write their profiles here. */
  cpuProfDir?: string;
  /** RSS allowed above cacheBytesMax before the memory line says MISS. Default 128 MiB. */
  rssOverheadBytesMax?: number;
  /** Before starting, wait up to this long for the machine to be quiet (under 25% busy over 2 s). Default 0. */
  waitQuietSeconds?: number;
  /** The controllers run with tls.mode "require": clients and the peer link over TLS-PSK (the floors stay plain). */
  tls?: boolean;
}

/** One measured run of one cell. */
export interface RunResult {
  ops: number;
  errors: number;
  firstError: string | null;
  seconds: number;
  opsPerSec: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  p999Us: number;
  maxUs: number;
  meanUs: number;
  /** Share of all cores busy during the run (everyone's work, ours included), 0..100. */
  machineBusyPct: number;
  /** Of that, what processes other than the benchmark's used: the noise (null off Linux). */
  othersBusyPct: number | null;
  /**
   * CPU microseconds per measured operation, by process ("bench client" and
   * the row's own processes; Linux only). What an operation costs, apart from
   * how long it waited; contention on a busy machine inflates it too.
   */
  cpuUsPerOp: Record<string, number>;
  /** When the measurement ran, on the monotonic clock CPU profiles use (µs): profiles are cut to these windows. */
  windowMonotonicUs: [number, number];
  loadAvg1: number;
}

/** One configuration × operation × in-flight count, over all its runs. */
export interface CellResult {
  config: BenchConfigName;
  op: BenchOp;
  inflight: number;
  connections: number;
  /** Where the connections went ("A", "A+B", "echo", ...). */
  target: string;
  requestBytes: number;
  replyBytes: number;
  /** Reads only: pages the controllers read from the store during this cell's runs (0: every read hit the cache). */
  pagesStaged: number;
  runs: RunResult[];
  median: { opsPerSec: number; p50Us: number; p99Us: number };
  /** Median over the runs of the CPU µs per operation of the row's processes together (the bench client left out). */
  medianServerCpuUsPerOp: number | null;
}

export type Verdict = 'PASS' | 'MISS' | 'n/a';

export interface TargetCheck {
  name: string;
  /** How the value is made, e.g. "mirrored write p50 @1 / relay write p50 @1". */
  formula: string;
  value: number | null;
  /** "<= 1.5", ">= 0.7", ">= 40000". */
  target: string;
  verdict: Verdict;
}

export interface ControllerMemory {
  config: BenchConfigName;
  controller: string;
  rssBytes: number;
  cachedBytes: number;
  cacheBytesMax: number;
  /** rssBytes - cacheBytesMax (negative: below the cache size). */
  overCacheBytes: number;
  /** Pages read from the store over the controller's whole life, set-up included. */
  pagesStaged: number;
  /** The controller's counters at the end (writes, pages mirrored, lock requests, destages...). */
  counters: Record<string, number>;
  verdict: Verdict;
}

export interface MachineInfo {
  hostname: string;
  platform: string;
  cpus: number;
  cpuModel: string;
  totalMemBytes: number;
  node: string;
  ws: string;
  loadAvgStart: number[];
  loadAvgEnd: number[];
  /** Share of all cores busy in the second before the benchmark started: other people's work. */
  busyBeforeStartPct: number;
  /** How long the benchmark waited for a quiet machine before starting. */
  waitedForQuietSeconds: number;
}

/** One process's profiled CPU per operation of one cell, by kind of work (µs; idle left out). */
export interface ProfilePerOp {
  op: BenchOp;
  inflight: number;
  /** Operations measured over the cell's runs. */
  ops: number;
  usPerOp: Partial<Record<WorkKind, number>>;
}

export interface BenchReport {
  version: 1;
  startedAt: string;
  finishedAt: string;
  settings: {
    runs: number;
    seconds: number;
    warmupSeconds: number;
    inflight: number[];
    ops: BenchOp[];
    configs: BenchConfigName[];
    blockBytes: number;
    workingSetBytes: number;
    cacheBytesMax: number;
    connections: number;
    mirroredTarget: 'A' | 'both';
    seed: number;
    rssOverheadBytesMax: number;
    cpuProfDir: string | null;
    waitQuietSeconds: number;
  };
  machine: MachineInfo;
  cells: CellResult[];
  targets: TargetCheck[];
  memory: ControllerMemory[];
  /** Rows that were asked for and could not be measured, with why. */
  notes: { row: string; note: string }[];
  /** With cpuProfDir: where each controller process spent its time over the whole run. */
  profiles: { process: string; pid: number; file: string; summary: ProfileSummary; perOp?: ProfilePerOp[] }[];
}
