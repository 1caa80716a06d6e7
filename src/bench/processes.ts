// Every process the benchmark starts, in one place, so that one call stops
// them all whatever happened: floors are forked scripts that tell their port
// over IPC; controllers are `pagepair start` processes; other programs
// (redis-server) go under the same stop-all. Each is a supervised process.

import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { PagepairError } from '../protocol/errors.js';
import { CONTROLLER_NODE_FLAGS } from '../runtime/node-flags.js';
import { pagepairSpec } from '../runtime/spawn-controller.js';
import { Supervised, type ProcessSpec } from '../runtime/supervisor.js';

export { CONTROLLER_NODE_FLAGS };
const LINES_KEPT = 40;
const FLOOR_START_TIMEOUT_MS = 10_000;

export interface BenchChild {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** The process under the supervisor, to wait on while it must stay up. */
  readonly supervised: Supervised;
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
    const proc = this.start({ name, args: [...CONTROLLER_NODE_FLAGS, path, ...args], log: { keepLines: LINES_KEPT }, ipc: true });
    const child = proc.child;
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new PagepairError('TIMEOUT', `${name} did not start within ${FLOOR_START_TIMEOUT_MS} ms: ${proc.lastLines().join(' | ')}`)), FLOOR_START_TIMEOUT_MS);
      child.once('message', (m: unknown) => {
        clearTimeout(timer);
        const port = (m as { port?: unknown }).port;
        if (typeof port === 'number' && port > 0) resolve(port);
        else reject(new PagepairError('INTERNAL', `${name} sent no port`));
      });
      void proc.supervised.exited.then(() => {
        clearTimeout(timer);
        reject(new PagepairError('INTERNAL', `${name} ${proc.supervised.exitText} before listening: ${proc.lastLines().join(' | ')}`));
      });
    });
    return { proc, port };
  }

  /** Starts `pagepair start --config <path>`; nodeFlags go before the script (e.g. --cpu-prof). */
  spawnController(name: string, configPath: string, nodeFlags: string[]): BenchChild {
    return this.start(pagepairSpec(name, ['start', '--config', configPath], { keepLines: LINES_KEPT }, { nodeFlags }));
  }

  /** Starts another program (redis-server for the Redis row) under the same stop-all. */
  spawnProgram(name: string, command: string, args: string[]): BenchChild {
    return this.start({ name, command, args, log: { keepLines: LINES_KEPT } });
  }

  /** Stops every process still running; controllers get graceMs to destage and exit. */
  async stopAll(graceMs: number): Promise<void> {
    await Promise.all([...this.children].map((c) => c.stop(graceMs)));
    this.children.clear();
  }

  /** For a signal handler: no waiting. */
  killAllNow(): void {
    for (const c of this.children) c.supervised.signal('SIGKILL');
  }

  private start(spec: ProcessSpec): BenchChild {
    const p = new Supervised(spec);
    p.start();
    const proc: BenchChild = {
      name: spec.name,
      child: p.process!,
      pid: p.pid,
      supervised: p,
      lastLines: () => [...p.logLines()],
      stop: async (graceMs) => {
        await p.stop(graceMs);
        this.children.delete(proc);
      },
    };
    this.children.add(proc);
    return proc;
  }
}
