// One child process watched from start to end, for whatever runs controllers
// as processes (the kill tests, the NBD pair, the integration tests): started
// (and started again) with its output collected, waited on until it serves,
// hurt on purpose (SIGKILL, SIGSTOP, SIGCONT), stopped (SIGTERM, then SIGKILL
// after a grace) and never left behind: every process started here and not
// yet seen ending is in one set that killAllSupervised() empties, for the
// cleanup of a run that failed half-way.

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

/** How long stop() waits after SIGTERM before SIGKILL, by default: a controller destages its dirty pages first. */
export const STOP_GRACE_MS = 15_000;
/** How often waitUntil() asks, by default. */
export const WAIT_POLL_MS = 20;
/** How long stop() waits at least for a process to end after SIGKILL. */
const KILL_WAIT_MS = 5000;
/** How often waitForRecord() looks again when no new line has come (a log file has no line events). */
const LOG_POLL_MS = 200;

/**
 * Where a process's output goes: appended to a file (it outlives the
 * process and this one), or kept in memory as lines, at most keepLines of
 * them, each also handed to onLine as it comes.
 */
export type LogCollection = { file: string } | { keepLines: number; onLine?: (line: string) => void };

export interface ProcessSpec {
  /** For messages and logs: "A", "controller B", "floor". */
  name: string;
  /** The program; node itself by default. */
  command?: string;
  args: readonly string[];
  log: LogCollection;
  cwd?: string;
  /** Written with the pid at every start, so a run that dies can still be cleaned up from outside. */
  pidFile?: string;
  /** An IPC channel to the child (a node script that sends messages, as fork() gives one). */
  ipc?: boolean;
}

/** Why a wait ended without what it waited for: the time ran out, or a process it needed ended. */
export class WaitFailed extends Error {
  constructor(
    message: string,
    readonly reason: 'timeout' | 'exited',
  ) {
    super(message);
    this.name = 'WaitFailed';
  }
}

const live = new Set<Supervised>();

/** SIGKILLs every supervised process of this process still running (cleanup after a failed or timed-out run). */
export function killAllSupervised(): void {
  for (const p of [...live]) p.signal('SIGKILL');
}

/** How many supervised processes of this process have not been seen ending. */
export function liveSupervisedCount(): number {
  return live.size;
}

/** True when `p` settles within ms, false when the time runs out first; the timer never outlives the wait. */
export async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  const cancel = new AbortController();
  const timer = sleep(ms, false, { signal: cancel.signal }).catch(() => false);
  try {
    return await Promise.race([p.then(() => true), timer]);
  } finally {
    cancel.abort();
  }
}

export interface WaitOptions {
  /** What is waited for, as the timeout message names it. */
  what: string;
  timeoutMs: number;
  pollMs?: number;
  /** Processes that must stay up meanwhile: one that ends fails the wait at once, with the end of its log. */
  watch?: readonly Supervised[];
  /** The pause between polls (a caller's own, which may throw when its run is interrupted). */
  sleep?: (ms: number) => Promise<void>;
}

/** Polls `probe` until it returns a value (not null); WaitFailed when timeoutMs pass first or a watched process ends. */
export async function waitUntil<T>(probe: () => Promise<T | null> | T | null, o: WaitOptions): Promise<T> {
  const deadline = performance.now() + o.timeoutMs;
  const pause = o.sleep ?? ((ms: number) => sleep(ms));
  for (;;) {
    for (const p of o.watch ?? []) {
      if (!p.alive) throw new WaitFailed(`${p.name} ${p.exitText} while it should be serving; its log ends:\n${p.logTail(8)}`, 'exited');
    }
    const v = await probe();
    if (v !== null) return v;
    if (performance.now() > deadline) throw new WaitFailed(`${o.what}: not within ${o.timeoutMs} ms`, 'timeout');
    await pause(o.pollMs ?? WAIT_POLL_MS);
  }
}

/** A supervised process: one at a time, started again after it ended as often as asked. */
export class Supervised {
  private child: ChildProcess | null = null;
  private exitedRun: Promise<void> = Promise.resolve();
  private running = false;
  private exitCodeSeen: number | null = null;
  private exitSignalSeen: NodeJS.Signals | null = null;
  private startError: string | null = null;
  private readonly kept: string[] = [];
  private readonly lineWaiters = new Set<() => void>();
  /** How many times it was started. */
  starts = 0;

  constructor(readonly spec: ProcessSpec) {}

  get name(): string {
    return this.spec.name;
  }

  start(): void {
    if (this.running) throw new Error(`${this.name} is running already (pid ${this.pid})`);
    const child = this.spawnChild();
    this.child = child;
    this.running = true;
    this.exitCodeSeen = null;
    this.exitSignalSeen = null;
    this.startError = null;
    this.starts++;
    live.add(this);
    this.exitedRun = new Promise((done) => {
      const ended = (): void => {
        if (this.child !== child || !this.running) return done();
        this.running = false;
        live.delete(this);
        for (const w of [...this.lineWaiters]) w();
        done();
      };
      const onEnd = (code: number | null, sig: NodeJS.Signals | null): void => {
        this.exitCodeSeen = code;
        this.exitSignalSeen = sig;
        ended();
      };
      // Output kept in memory: 'close' comes once its pipes are drained too, so every line it wrote is in before it counts as ended.
      if ('file' in this.spec.log) child.once('exit', onEnd);
      else child.once('close', onEnd);
      // A program that cannot start emits 'error' and may never emit 'exit'.
      child.once('error', (err) => {
        if (child.pid === undefined) {
          this.startError = err.message;
          ended();
        }
      });
    });
    if (this.spec.pidFile !== undefined && child.pid !== undefined) writeFileSync(this.spec.pidFile, `${child.pid}\n`);
  }

  private spawnChild(): ChildProcess {
    const { log } = this.spec;
    const command = this.spec.command ?? process.execPath;
    const cwd = this.spec.cwd !== undefined ? { cwd: this.spec.cwd } : {};
    const ipc: 'ipc'[] = this.spec.ipc === true ? ['ipc'] : [];
    if ('file' in log) {
      const fd = openSync(log.file, 'a');
      try {
        return spawn(command, this.spec.args, { ...cwd, stdio: ['ignore', fd, fd, ...ipc] });
      } finally {
        closeSync(fd); // the child has its own copy
      }
    }
    const child = spawn(command, this.spec.args, { ...cwd, stdio: ['ignore', 'pipe', 'pipe', ...ipc] });
    for (const stream of [child.stdout!, child.stderr!]) {
      createInterface({ input: stream }).on('line', (line) => {
        this.kept.push(line);
        if (this.kept.length > log.keepLines) this.kept.shift();
        log.onLine?.(line);
        for (const w of [...this.lineWaiters]) w();
      });
    }
    return child;
  }

  /** The child of the latest start (null before the first). */
  get process(): ChildProcess | null {
    return this.child;
  }

  get pid(): number {
    return this.child?.pid ?? 0;
  }

  get alive(): boolean {
    return this.running;
  }

  /** Resolves once the latest start has ended (at once when nothing runs). */
  get exited(): Promise<void> {
    return this.exitedRun;
  }

  /** How the latest start ended: exit code, or null (killed by a signal, or still running). */
  get exitCode(): number | null {
    return this.exitCodeSeen;
  }

  get exitText(): string {
    if (this.child === null) return 'never started';
    if (this.running) return 'running';
    if (this.startError !== null) return `could not start (${this.startError})`;
    if (this.exitSignalSeen !== null) return `killed by ${this.exitSignalSeen}`;
    return `exited with ${this.exitCodeSeen}`;
  }

  /** Sends sig if it runs; false when it does not. */
  signal(sig: NodeJS.Signals): boolean {
    if (!this.running || this.child === null) return false;
    try {
      return this.child.kill(sig);
    } catch {
      return false; // gone meanwhile
    }
  }

  /** SIGKILL now; resolves once it is gone. */
  async kill(): Promise<void> {
    this.signal('SIGKILL');
    await this.exitedRun;
  }

  /** SIGSTOP: it stays, answering nothing, until resume(). */
  pause(): void {
    this.signal('SIGSTOP');
  }

  /** SIGCONT. */
  resume(): void {
    this.signal('SIGCONT');
  }

  /** True when it has ended within ms. */
  async waitExit(ms: number): Promise<boolean> {
    if (!this.running) return true;
    return settlesWithin(this.exitedRun, ms);
  }

  /**
   * Ends it and resolves once it has ended: resumed (in case it was paused),
   * `first` (SIGTERM: a controller destages and leaves), SIGKILL when it
   * takes longer than graceMs. Never leaves it behind.
   */
  async stop(graceMs = STOP_GRACE_MS, first: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (!this.running) return;
    this.resume();
    this.signal(first);
    if (!(await this.waitExit(graceMs))) {
      this.signal('SIGKILL');
      await this.waitExit(Math.max(graceMs, KILL_WAIT_MS));
    }
  }

  /** The lines it wrote, over all its starts: the last keepLines kept in memory, or those of its log file. */
  logLines(): readonly string[] {
    if (!('file' in this.spec.log)) return this.kept;
    try {
      return readFileSync(this.spec.log.file, 'utf8').trimEnd().split('\n');
    } catch {
      return [];
    }
  }

  /** The last lines of its output, indented, for error messages. */
  logTail(lines = 12): string {
    const all = this.logLines();
    if (all.length === 0 || (all.length === 1 && all[0] === '')) return '    (no log)';
    return all
      .slice(-lines)
      .map((l) => `    ${l.slice(0, 300)}`)
      .join('\n');
  }

  /** Its JSON log records (pino's lines), parsed; other lines are passed over. */
  records(): Record<string, unknown>[] {
    return this.logLines().flatMap((l) => {
      if (!l.startsWith('{')) return [];
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
  }

  /** The first record that pred accepts, once it is written; WaitFailed when it ends first or timeoutMs pass. */
  async waitForRecord(pred: (rec: Record<string, unknown>) => boolean, timeoutMs: number): Promise<Record<string, unknown>> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const hit = this.records().find(pred);
      if (hit !== undefined) return hit;
      const last = (): string => this.logLines().slice(-20).join('\n');
      if (!this.running) throw new WaitFailed(`${this.name} ${this.exitText} before the log line came:\n${last()}`, 'exited');
      const left = deadline - performance.now();
      if (left <= 0) throw new WaitFailed(`${this.name}: the log line did not come within ${timeoutMs} ms:\n${last()}`, 'timeout');
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          this.lineWaiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, Math.min(LOG_POLL_MS, left));
        this.lineWaiters.add(wake);
      });
    }
  }
}
