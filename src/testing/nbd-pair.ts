// A pair of its own for the tools that drive real NBD clients against real
// controllers (the NBD kill test, the NBD benchmark): temporary configurations
// on free 127.0.0.1 ports in a working directory, both `pagepair start`
// processes with their output in log files, status probes, SIGKILL and
// restart of one controller, volumes, and a stop that leaves nothing behind.

import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { PagepairClient, type AllocationInfo } from '../client/client.js';
import { PagepairError } from '../protocol/errors.js';
import type { ControllerStatus } from '../runtime/controller-process.js';
import { spawnController } from '../runtime/spawn-controller.js';
import { extentBytes } from '../store/layout.js';
import { freePort } from './free-port.js';

const HOST = '127.0.0.1';
const TOKEN = 'nbd-pair-client-token';
const STATUS_TIMEOUT_MS = 1000;
const STOP_WAIT_MS = 15_000;
const VOLUME_TIMEOUT_MS = 30_000;

export type Letter = 'A' | 'B';

/** Room in a store beside its volumes' extents: the superblock, table, mailbox and some slack. */
const STORE_METADATA_SLACK_BYTES = 64 * 1024 * 1024;

/**
 * A store size that holds volumes of these sizes (4 KiB pages), each page's
 * two slots and headers included (docs/formats.md), with room to spare.
 */
export function storeBytesFor(volumeBytes: readonly number[], pageSizeBytes = 4096): number {
  return volumeBytes.reduce((sum, v) => sum + extentBytes(pageSizeBytes, Math.ceil(v / pageSizeBytes)), STORE_METADATA_SLACK_BYTES);
}

/** Every controller process started here and not yet seen exiting: SIGKILLed by killAllPairControllers(). */
const live = new Set<ChildProcess>();

/** SIGKILLs every controller this process started and that still runs (cleanup after a test that timed out). */
export function killAllPairControllers(): void {
  for (const c of [...live]) c.kill('SIGKILL');
}

export interface NbdPairOptions {
  /** Where configurations, the store and logs go (it must exist). */
  dir: string;
  storeBytes: number;
  cacheBytesMax: number;
  heartbeatIntervalMs?: number;
  partnerTimeoutMs?: number;
  logLevel?: 'info' | 'warn' | 'error';
  /** The controllers' tls section (tls.mode and, for NBD, an absolute pskFile); absent: plain. */
  tls?: { mode: 'off' | 'on' | 'require'; pskFile?: string };
}

/** One `pagepair start` process, restartable, its output appended to a log file. */
export class PairController {
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();

  constructor(
    readonly letter: Letter,
    readonly configPath: string,
    readonly clientPort: number,
    readonly nbdPort: number,
    readonly logPath: string,
  ) {}

  start(): void {
    const child = spawnController(this.configPath, this.logPath);
    this.child = child;
    live.add(child);
    this.exited = new Promise((done) =>
      child.once('exit', () => {
        live.delete(child);
        done();
      }),
    );
  }

  get pid(): number {
    return this.child?.pid ?? 0;
  }

  get alive(): boolean {
    const c = this.child;
    return c !== null && c.exitCode === null && c.signalCode === null;
  }

  nbdUrl(volume: string): string {
    return `nbd://${HOST}:${this.nbdPort}/${volume}`;
  }

  /** The last lines of its log, for error messages. */
  logTail(lines = 12): string {
    try {
      return readFileSync(this.logPath, 'utf8').trimEnd().split('\n').slice(-lines).map((l) => `    ${l.slice(0, 300)}`).join('\n');
    } catch {
      return '    (no log)';
    }
  }

  /** SIGKILL now; resolves once the process is gone. */
  async kill(): Promise<void> {
    if (!this.alive) return;
    this.child!.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM (it destages and leaves), SIGKILL if it takes longer than STOP_WAIT_MS. */
  async stop(): Promise<void> {
    if (!this.alive) return;
    this.child!.kill('SIGTERM');
    const t = setTimeout(() => this.child?.kill('SIGKILL'), STOP_WAIT_MS);
    await this.exited;
    clearTimeout(t);
  }

  /** One status request on a fresh connection; null when it does not answer. */
  async status(): Promise<ControllerStatus | null> {
    let c: PagepairClient | null = null;
    try {
      c = await PagepairClient.connect({ host: HOST, port: this.clientPort, token: TOKEN, name: 'pagepair-nbd-pair', timeoutMs: STATUS_TIMEOUT_MS });
      return (await c.status()) as ControllerStatus;
    } catch {
      return null;
    } finally {
      await c?.close().catch(() => undefined);
    }
  }
}

/** Polls one controller's status over a connection kept open between polls (cheap enough for every 20 ms). */
export class StatusPoller {
  private client: PagepairClient | null = null;

  constructor(private readonly controller: PairController) {}

  async get(): Promise<ControllerStatus | null> {
    try {
      if (this.client === null || !this.client.isOpen) {
        this.client = null;
        this.client = await PagepairClient.connect({ host: HOST, port: this.controller.clientPort, token: TOKEN, name: 'pagepair-nbd-poller', timeoutMs: STATUS_TIMEOUT_MS });
      }
      return (await this.client.status()) as ControllerStatus;
    } catch {
      await this.close();
      return null;
    }
  }

  async close(): Promise<void> {
    const c = this.client;
    this.client = null;
    await c?.close().catch(() => undefined);
  }
}

export class NbdPair {
  private constructor(
    readonly dir: string,
    readonly a: PairController,
    readonly b: PairController,
  ) {}

  /** Writes the configurations and starts both controllers; resolves once both are mirrored. */
  static async start(o: NbdPairOptions, readyTimeoutMs = 60_000): Promise<NbdPair> {
    const pairId = randomUUID();
    const ports = {
      A: { client: await freePort(), peer: await freePort(), nbd: await freePort() },
      B: { client: await freePort(), peer: await freePort(), nbd: await freePort() },
    };
    const controllers = (['A', 'B'] as const).map((letter) => {
      const other: Letter = letter === 'A' ? 'B' : 'A';
      const cfg = {
        id: letter,
        pairId,
        secret: `nbd-pair-peer-secret-${pairId}`,
        clientToken: TOKEN,
        listen: {
          client: { host: HOST, port: ports[letter].client },
          peer: { host: HOST, port: ports[letter].peer },
          nbd: { host: HOST, port: ports[letter].nbd },
        },
        partner: { id: other, client: { host: HOST, port: ports[other].client }, peer: { host: HOST, port: ports[other].peer } },
        store: { path: join(o.dir, 'pair.store'), sizeBytes: o.storeBytes },
        cache: { cacheBytesMax: o.cacheBytesMax },
        heartbeatIntervalMs: o.heartbeatIntervalMs ?? 100,
        partnerTimeoutMs: o.partnerTimeoutMs ?? 500,
        arbitration: { preferred: 'A', fenceAction: 'kill' },
        log: { level: o.logLevel ?? 'info' },
        ...(o.tls !== undefined ? { tls: o.tls } : {}),
      };
      const configPath = join(o.dir, `${letter.toLowerCase()}.json`);
      writeFileSync(configPath, JSON.stringify(cfg, null, 2));
      return new PairController(letter, configPath, ports[letter].client, ports[letter].nbd, join(o.dir, `${letter.toLowerCase()}.log`));
    });
    const pair = new NbdPair(o.dir, controllers[0]!, controllers[1]!);
    pair.a.start();
    pair.b.start();
    try {
      await Promise.all([pair.waitRole('A', ['mirrored'], readyTimeoutMs), pair.waitRole('B', ['mirrored'], readyTimeoutMs)]);
    } catch (err) {
      await pair.stop();
      throw err;
    }
    return pair;
  }

  of(letter: Letter): PairController {
    return letter === 'A' ? this.a : this.b;
  }

  /** Resolves with the ms waited once `letter` reports one of `roles`; throws naming the last role seen. */
  async waitRole(letter: Letter, roles: readonly string[], timeoutMs: number): Promise<number> {
    const c = this.of(letter);
    const t0 = performance.now();
    let last = 'no answer';
    for (;;) {
      if (!c.alive) throw new PagepairError('INTERNAL', `controller ${letter} is not running (waiting for role ${roles.join(' or ')}):\n${c.logTail()}`);
      const s = await c.status();
      if (s !== null && roles.includes(s.role)) return performance.now() - t0;
      if (s !== null) last = `role ${s.role}`;
      if (performance.now() - t0 > timeoutMs) {
        throw new PagepairError('TIMEOUT', `controller ${letter} did not become ${roles.join(' or ')} within ${timeoutMs} ms (${last}):\n${c.logTail()}`);
      }
      await sleep(20);
    }
  }

  /** Creates a volume (a named allocation, exported over NBD by both) through `via`. */
  async createVolume(via: Letter, name: string, sizeBytes: number): Promise<AllocationInfo> {
    return this.withClient(via, (c) => c.allocate(name, sizeBytes, 'default'));
  }

  async deleteVolume(via: Letter, name: string): Promise<void> {
    await this.withClient(via, async (c) => {
      const found = (await c.list()).find((x) => x.name === name);
      if (found === undefined) throw new PagepairError('UNKNOWN_GUID', `no volume named "${name}"`, 'name');
      await c.release(found.guid);
    });
  }

  private async withClient<T>(via: Letter, fn: (c: PagepairClient) => Promise<T>): Promise<T> {
    const c = await PagepairClient.connect({ host: HOST, port: this.of(via).clientPort, token: TOKEN, name: 'pagepair-nbd-pair', timeoutMs: VOLUME_TIMEOUT_MS });
    try {
      return await fn(c);
    } finally {
      await c.close().catch(() => undefined);
    }
  }

  /** Stops both (SIGTERM, then SIGKILL); never throws. */
  async stop(): Promise<void> {
    await Promise.all([this.a.stop().catch(() => undefined), this.b.stop().catch(() => undefined)]);
  }
}
