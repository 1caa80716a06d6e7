// Every process the benchmark starts, in one place, so that one call stops
// them all whatever happened: floors are forked scripts that tell their port
// over IPC; controllers are `pagepair start` processes.

import { fork, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { PagepairError } from '../protocol/errors.js';
import { CONTROLLER_NODE_FLAGS } from '../runtime/node-flags.js';

const BIN = fileURLToPath(new URL('../../bin/pagepair.js', import.meta.url));

export { CONTROLLER_NODE_FLAGS };
const LINES_KEPT = 40;
const FLOOR_START_TIMEOUT_MS = 10_000;

export interface BenchChild {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** The last lines the process wrote, for error messages. */
  lastLines(): string[];
  /** SIGTERM, then SIGKILL after graceMs. */
  stop(graceMs: number): Promise<void>;
}

export class ChildGroup {
  private readonly children = new Set<BenchChild>();

  /** Forks one of the floor scripts next to this file; resolves with its port once it listens. */
  async forkFloor(name: string, script: 'echo-server' | 'relay-server', args: string[]): Promise<{ proc: BenchChild; port: number }> {
    const path = fileURLToPath(new URL(`./${script}.js`, import.meta.url));
    // Not the benchmark's own node flags (a floor never runs under --cpu-prof
    // or a debugger): the controllers' V8 settings, so the rows compare alike.
    const child = fork(path, args, { execArgv: [...CONTROLLER_NODE_FLAGS], stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    const proc = this.track(name, child);
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new PagepairError('TIMEOUT', `${name} did not start within ${FLOOR_START_TIMEOUT_MS} ms: ${proc.lastLines().join(' | ')}`)), FLOOR_START_TIMEOUT_MS);
      child.once('message', (m: unknown) => {
        clearTimeout(timer);
        const port = (m as { port?: unknown }).port;
        if (typeof port === 'number' && port > 0) resolve(port);
        else reject(new PagepairError('INTERNAL', `${name} sent no port`));
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new PagepairError('INTERNAL', `${name} exited (${code}) before listening: ${proc.lastLines().join(' | ')}`));
      });
    });
    return { proc, port };
  }

  /** Starts `pagepair start --config <path>`; nodeFlags go before the script (e.g. --cpu-prof). */
  spawnController(name: string, configPath: string, nodeFlags: string[]): BenchChild {
    const child = spawn(process.execPath, [...CONTROLLER_NODE_FLAGS, ...nodeFlags, BIN, 'start', '--config', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    return this.track(name, child);
  }

  /** Starts another program (redis-server for the Redis row) under the same stop-all. */
  spawnProgram(name: string, command: string, args: string[]): BenchChild {
    return this.track(name, spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  }

  /** Stops every process still running; controllers get graceMs to destage and exit. */
  async stopAll(graceMs: number): Promise<void> {
    await Promise.all([...this.children].map((c) => c.stop(graceMs)));
    this.children.clear();
  }

  /** For a signal handler: no waiting. */
  killAllNow(): void {
    for (const c of this.children) if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill('SIGKILL');
  }

  private track(name: string, child: ChildProcess): BenchChild {
    const lines: string[] = [];
    for (const s of [child.stdout, child.stderr]) {
      if (s === null) continue;
      createInterface({ input: s }).on('line', (line) => {
        lines.push(line);
        if (lines.length > LINES_KEPT) lines.shift();
      });
    }
    const exited = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once('exit', () => resolve());
    });
    const proc: BenchChild = {
      name,
      child,
      pid: child.pid ?? 0,
      lastLines: () => [...lines],
      stop: async (graceMs) => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
        this.children.delete(proc);
      },
    };
    this.children.add(proc);
    return proc;
  }
}
