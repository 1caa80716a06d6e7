// fio as a child process that can never run away: its output is kept only as
// a bounded tail (fio's nbd engine can print the same line forever once its
// server is gone), it runs in a process group of its own so a stop reaches
// the job processes it forks, and stopping goes SIGTERM first (fio then still
// writes its JSON report and its verify state) and SIGKILL after a grace.
// Used by the NBD kill tests and the NBD benchmark (scripts/bench-nbd.mjs).

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { PagepairError } from '../protocol/errors.js';
import { settlesWithin } from './supervisor.js';

/** Enough for the JSON report of a few jobs with the notes fio prints before it. */
export const FIO_STDOUT_TAIL_BYTES = 1024 * 1024;
export const FIO_STDERR_TAIL_BYTES = 16 * 1024;

/** Every fio process group this process started and has not seen end: stopped by killAllFio(). */
const live = new Set<FioProcess>();

/** How a fio run ended. */
export type FioEnd = 'exited' | 'SIGTERM' | 'SIGKILL';

export interface FioLatency {
  p50Us: number;
  p99Us: number;
  meanUs: number;
}

/** The parts of one job of fio's JSON report this project reads. */
export interface FioJobReport {
  jobname: string;
  /** errno of the error that stopped the job, 0 when none. */
  error: number;
  /** Errors fio counted and went on after (continue_on_error); verify failures with --continue_on_error=verify. */
  totalErrors: number;
  read: FioDirection;
  write: FioDirection;
}

export interface FioDirection {
  /** Requests issued, failed ones included. */
  totalIos: number;
  /** Bytes of requests that completed without error. */
  ioBytes: number;
  iops: number;
  runtimeMs: number;
  /** Completion latency (from the engine's queue call returning to the completion); null when no request of this direction completed. */
  clat: FioLatency | null;
  /**
   * Total latency, submission included; only with --lat_percentiles=1 (null
   * otherwise). The one to quote for the nbd engine, whose queue call
   * already sends the request: its clat leaves that part out.
   */
  lat: FioLatency | null;
}

/** A bounded tail of a stream: the last `max` bytes, and how many bytes came in all. */
class Tail {
  private chunks: Buffer[] = [];
  private held = 0;
  total = 0;

  constructor(private readonly max: number) {}

  push(b: Buffer): void {
    this.total += b.length;
    this.chunks.push(b);
    this.held += b.length;
    while (this.held - this.chunks[0]!.length >= this.max) this.held -= this.chunks.shift()!.length;
  }

  text(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.max)).toString('utf8');
  }
}

export interface FioSpawnOptions {
  /** fio's working directory: its verify state files go there. */
  cwd: string;
  /** fio on PATH by default. */
  fioPath?: string;
}

export class FioProcess {
  readonly child: ChildProcess;
  readonly startedMs = performance.now();
  /** Resolves when the process has ended, with how. */
  readonly ended: Promise<FioEnd>;
  private readonly stdoutTail = new Tail(FIO_STDOUT_TAIL_BYTES);
  private readonly stderrTail = new Tail(FIO_STDERR_TAIL_BYTES);
  private signalled: FioEnd = 'exited';
  private done = false;
  exitCode: number | null = null;
  /** performance.now() when it ended; null while it runs. */
  endedMs: number | null = null;

  constructor(
    readonly args: readonly string[],
    opts: FioSpawnOptions,
  ) {
    this.child = spawn(opts.fioPath ?? 'fio', args, { cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    live.add(this);
    this.child.stdout!.on('data', (b: Buffer) => this.stdoutTail.push(b));
    this.child.stderr!.on('data', (b: Buffer) => this.stderrTail.push(b));
    this.ended = new Promise<FioEnd>((resolve) => {
      const finish = (code: number | null): void => {
        if (this.done) return;
        this.done = true;
        this.endedMs = performance.now();
        live.delete(this);
        this.exitCode = code;
        resolve(this.signalled);
      };
      this.child.once('error', (err) => {
        this.stderrTail.push(Buffer.from(`\ncannot run fio: ${err.message}\n`));
        finish(127);
      });
      // 'close': the pipes are drained too, so the tails hold everything fio wrote.
      this.child.once('close', (code) => finish(code));
    });
  }

  get running(): boolean {
    return !this.done;
  }

  get stdout(): string {
    return this.stdoutTail.text();
  }

  get stderrTailText(): string {
    return this.stderrTail.text();
  }

  /** Bytes fio wrote to standard error in all (only the tail is kept). */
  get stderrBytes(): number {
    return this.stderrTail.total;
  }

  /** True when fio ended within ms. */
  async waitMs(ms: number): Promise<boolean> {
    if (this.done) return true;
    return settlesWithin(this.ended, ms);
  }

  /**
   * Ends fio: it gets graceMs to finish by itself, then SIGTERM (fio stops its
   * jobs and still writes its report and verify state) and termMs more, then
   * SIGKILL of its whole process group.
   */
  async stop(graceMs: number, termMs: number): Promise<FioEnd> {
    if (await this.waitMs(graceMs)) return this.ended;
    this.signalled = 'SIGTERM';
    this.signal('SIGTERM', false);
    if (await this.waitMs(termMs)) return this.ended;
    this.signalled = 'SIGKILL';
    this.signal('SIGKILL', true);
    await this.waitMs(5000);
    return this.ended;
  }

  /** SIGKILL to the group, at once (cleanup). */
  kill(): void {
    if (this.done) return;
    this.signalled = 'SIGKILL';
    this.signal('SIGKILL', true);
  }

  /** SIGTERM goes to fio itself, which tells its jobs; SIGKILL to the whole group. */
  private signal(sig: NodeJS.Signals, group: boolean): void {
    const pid = this.child.pid;
    if (pid === undefined || this.done) return;
    try {
      process.kill(group ? -pid : pid, sig);
    } catch {
      // gone already
    }
  }

  /** The job of the JSON report (--output-format=json) by name; throws with fio's last words when there is none. */
  job(name: string): FioJobReport {
    return parseFioJob(this.stdout, name, this.stderrTailText);
  }
}

/** What the kill tests' fio job writes: random blocks over an NBD export, each carrying a crc32c of itself. */
export interface FioNbdWriteJob {
  name: string;
  /** The export, as fio's nbd engine takes it (nbd://host:port/name or nbd+unix:///name?socket=path). */
  uri: string;
  blockBytes: number;
  iodepth: number;
  sizeBytes: number;
  seed: number;
}

/** fio's arguments for that job, its report as JSON; a caller adds what its run does with the checksums. */
export function fioNbdWriteArgs(j: FioNbdWriteJob): string[] {
  return [
    `--name=${j.name}`,
    '--ioengine=nbd',
    `--uri=${j.uri}`,
    '--rw=randwrite',
    `--bs=${j.blockBytes}`,
    `--iodepth=${j.iodepth}`,
    `--size=${j.sizeBytes}`,
    `--randseed=${j.seed}`,
    '--verify=crc32c',
    '--output-format=json',
  ];
}

/** Starts fio with these arguments. */
export function spawnFio(args: readonly string[], opts: FioSpawnOptions): FioProcess {
  return new FioProcess(args, opts);
}

/** SIGKILLs every fio process group still running that this process started. */
export function killAllFio(): void {
  for (const f of [...live]) f.kill();
}

/** How many fio process groups this process started are still running. */
export function liveFioCount(): number {
  return live.size;
}

/** Runs fio to its end with a time limit (SIGTERM, then SIGKILL). */
export async function runFio(args: readonly string[], opts: FioSpawnOptions & { timeoutMs: number }): Promise<FioProcess> {
  const f = spawnFio(args, opts);
  await f.stop(opts.timeoutMs, 5000);
  return f;
}

/** fio prints notes ("fio: connected to NBD server", verify errors) to stdout before its JSON report. */
export function parseFioJob(stdout: string, name: string, stderr = ''): FioJobReport {
  const at = stdout.lastIndexOf('{\n  "fio version"');
  const why = (what: string): PagepairError =>
    new PagepairError('INTERNAL', `fio: ${what}; its last words:\n${(stderr.trim() || stdout.trim()).split('\n').slice(-12).join('\n')}`);
  if (at < 0) throw why('no JSON report (--output-format=json) in its output');
  let report: { jobs?: unknown[] };
  try {
    report = JSON.parse(stdout.slice(at)) as { jobs?: unknown[] };
  } catch (err) {
    throw why(`its JSON report does not parse (${err instanceof Error ? err.message : String(err)})`);
  }
  const raw = (report.jobs ?? []).find((j) => (j as { jobname?: unknown }).jobname === name) as Record<string, unknown> | undefined;
  if (raw === undefined) throw why(`no job "${name}" in its JSON report`);
  return {
    jobname: name,
    // fio reports an error of -1 as an unsigned 32-bit number.
    error: num(raw.error) | 0,
    totalErrors: num(raw.total_err),
    read: direction(raw.read),
    write: direction(raw.write),
  };
}

function num(x: unknown): number {
  return typeof x === 'number' && Number.isFinite(x) ? x : 0;
}

function direction(x: unknown): FioDirection {
  const d = (x ?? {}) as Record<string, unknown>;
  const completed = num(d.io_bytes) > 0;
  return {
    totalIos: num(d.total_ios),
    ioBytes: num(d.io_bytes),
    iops: num(d.iops),
    runtimeMs: num(d.runtime),
    clat: completed ? latency(d.clat_ns) : null,
    lat: completed ? latency(d.lat_ns) : null,
  };
}

/** p50, p99 and mean in µs of one of fio's latency objects; null without percentiles. */
function latency(x: unknown): FioLatency | null {
  const l = (x ?? {}) as { mean?: unknown; percentile?: Record<string, unknown> };
  const p50 = l.percentile?.['50.000000'];
  if (typeof p50 !== 'number') return null;
  return { p50Us: p50 / 1000, p99Us: num(l.percentile?.['99.000000']) / 1000, meanUs: num(l.mean) / 1000 };
}

/** What fio's verify state file (verify_state_save) says of a write job that ended early. */
export interface FioVerifyState {
  /** Writes the job had issued when it ended: verification replays this many at most. */
  writesIssued: number;
  /** The iodepth: of the last this-many issued writes, only those recorded as completed are verified. */
  depth: number;
  /** Offsets of the last writes that completed (at most depth). */
  completedOffsets: number[];
}

/** Where fio (run in dir) keeps the verify state of job `name`, instance `index`. */
export function fioVerifyStatePath(dir: string, name: string, index = 0): string {
  return join(dir, `local-${name}-${index}-verify.state`);
}

/**
 * Reads a verify state file (fio's verify-state.h, header version 3: three
 * u64 (version, size, crc), then the thread list: u64 no_comps, u32 depth,
 * u32 nofiles, u64 numberio, u64 index, the random state (7 u64), a 64-byte
 * name, then no_comps pairs of u64 (file number, offset); little-endian).
 * null when absent or of another version.
 */
export function readFioVerifyState(path: string): FioVerifyState | null {
  if (!existsSync(path)) return null;
  const b = readFileSync(path);
  const HEADER = 24;
  const COMPS_AT = HEADER + 8 + 4 + 4 + 8 + 8 + 56 + 64;
  if (b.length < COMPS_AT || b.readBigUInt64LE(0) !== 3n) return null;
  const comps = Number(b.readBigUInt64LE(HEADER));
  const depth = b.readUInt32LE(HEADER + 8);
  const writesIssued = Number(b.readBigUInt64LE(HEADER + 16));
  const completedOffsets: number[] = [];
  for (let i = 0; i < comps && COMPS_AT + 16 * (i + 1) <= b.length; i++) completedOffsets.push(Number(b.readBigUInt64LE(COMPS_AT + 16 * i + 8)));
  return { writesIssued, depth, completedOffsets };
}
