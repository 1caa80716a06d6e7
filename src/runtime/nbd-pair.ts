// A pair of its own for the tools that drive real NBD clients against real
// controllers (the NBD and attach kill tests, the NBD benchmark, the host
// failover demo): temporary configurations on free 127.0.0.1 ports in a
// working directory, both `pagepair start` processes supervised with their
// output in log files, status probes, SIGKILL and restart of one controller,
// volumes, and a stop that leaves nothing behind.

import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { PagepairClient, type AllocationInfo, type ControllerAddress } from '../client/client.js';
import { PagepairError } from '../protocol/errors.js';
import { extentBytes } from '../store/layout.js';
import type { ControllerStatus } from './controller-process.js';
import { freePairPorts, LOCAL_HOST, pairPlacement, type PairLetter } from './local-pair.js';
import { controllerSpec } from './spawn-controller.js';
import { StatusProbe } from './status-probe.js';
import { killAllSupervised, Supervised, waitUntil, WaitFailed } from './supervisor.js';

const HOST = LOCAL_HOST;
const TOKEN = 'nbd-pair-client-token';
const STATUS_TIMEOUT_MS = 1000;
const STOP_WAIT_MS = 15_000;
const VOLUME_TIMEOUT_MS = 30_000;

export type Letter = PairLetter;

/** Room in a store beside its volumes' extents: the superblock, table, mailbox and some slack. */
const STORE_METADATA_SLACK_BYTES = 64 * 1024 * 1024;

/**
 * A store size that holds volumes of these sizes (4 KiB pages), each page's
 * two slots and headers included (docs/formats.md), with room to spare.
 */
export function storeBytesFor(volumeBytes: readonly number[], pageSizeBytes = 4096): number {
  return volumeBytes.reduce((sum, v) => sum + extentBytes(pageSizeBytes, Math.ceil(v / pageSizeBytes)), STORE_METADATA_SLACK_BYTES);
}

/** SIGKILLs every controller this process started and that still runs (cleanup after a test that timed out). */
export function killAllPairControllers(): void {
  killAllSupervised();
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
export class PairController extends Supervised {
  constructor(
    readonly letter: Letter,
    readonly configPath: string,
    readonly clientPort: number,
    readonly nbdPort: number,
    readonly logPath: string,
  ) {
    super(controllerSpec(letter, configPath, { file: logPath }));
  }

  /** How a client reaches it. */
  get address(): ControllerAddress {
    return { id: this.letter, host: HOST, port: this.clientPort, token: TOKEN };
  }

  nbdUrl(volume: string): string {
    return `nbd://${HOST}:${this.nbdPort}/${volume}`;
  }

  /** One status request on a fresh connection; null when it does not answer. */
  async status(): Promise<ControllerStatus | null> {
    const probe = new StatusProbe(this.address, 'pagepair-nbd-pair');
    try {
      return await probe.get(STATUS_TIMEOUT_MS);
    } finally {
      await probe.close();
    }
  }

  /** Its status polled over a connection kept open between polls (cheap enough for every 20 ms); close() it when done. */
  poller(): StatusProbe {
    return new StatusProbe(this.address, 'pagepair-nbd-poller');
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
    const ports = await freePairPorts({ nbd: true });
    const controllers = (['A', 'B'] as const).map((letter) => {
      const cfg = {
        ...pairPlacement(letter, ports),
        pairId,
        secret: `nbd-pair-peer-secret-${pairId}`,
        clientToken: TOKEN,
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
      return new PairController(letter, configPath, ports[letter].client, ports[letter].nbd!, join(o.dir, `${letter.toLowerCase()}.log`));
    });
    const pair = new NbdPair(o.dir, controllers[0]!, controllers[1]!);
    pair.a.start();
    pair.b.start();
    try {
      await pair.waitMirrored(readyTimeoutMs);
    } catch (err) {
      await pair.stop();
      throw err;
    }
    return pair;
  }

  of(letter: Letter): PairController {
    return letter === 'A' ? this.a : this.b;
  }

  /** Resolves with the ms waited once `letter` reports one of `roles`; WaitFailed naming the last role seen, or how it ended. */
  async waitRole(letter: Letter, roles: readonly string[], timeoutMs: number): Promise<number> {
    const c = this.of(letter);
    const t0 = performance.now();
    let last = 'no answer';
    try {
      await waitUntil(
        async () => {
          const s = await c.status();
          if (s !== null) last = `role ${s.role}`;
          return s !== null && roles.includes(s.role) ? s : null;
        },
        { what: `controller ${letter} becoming ${roles.join(' or ')}`, timeoutMs, watch: [c] },
      );
    } catch (err) {
      if (!(err instanceof WaitFailed) || err.reason !== 'timeout') throw err;
      throw new WaitFailed(`${err.message} (${last}):\n${c.logTail()}`, 'timeout');
    }
    return performance.now() - t0;
  }

  /** Until both report mirrored. */
  async waitMirrored(timeoutMs: number): Promise<void> {
    await Promise.all([this.waitRole('A', ['mirrored'], timeoutMs), this.waitRole('B', ['mirrored'], timeoutMs)]);
  }

  /** Starts `letter` again (after a kill) and resolves with the ms until both are mirrored. */
  async restart(letter: Letter, timeoutMs: number): Promise<number> {
    const t0 = performance.now();
    this.of(letter).start();
    await this.waitMirrored(timeoutMs);
    return performance.now() - t0;
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
    await Promise.all([this.a.stop(STOP_WAIT_MS).catch(() => undefined), this.b.stop(STOP_WAIT_MS).catch(() => undefined)]);
  }
}
