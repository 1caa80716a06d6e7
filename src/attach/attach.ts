// `pagepair attach`: the host-side process. It serves the pair's volumes to
// local NBD clients (a loopback port and/or a unix socket, the volume name as
// the export) and forwards every request to controller A or B through Paths
// (paths.ts), so a controller dying is a pause to the local client, not an
// error. A status socket answers one JSON object per connection: each path's
// state, where each volume's requests go, failovers and stalls.

import { unlink } from 'node:fs/promises';
import net from 'node:net';
import { PagepairError } from '../protocol/errors.js';
import { NbdFlag } from '../protocol/nbd.js';
import { NbdClient } from '../client/nbd-client.js';
import type { NbdBackend, NbdVolume } from '../transport/nbd-backend.js';
import { NBD_SERVER_DEFAULT_LIMITS, NbdServer, type NbdServerLimits } from '../transport/nbd-server.js';
import { listenPrivateSocket } from '../transport/unix-socket.js';
import { Paths, type AttachStatus, type Connect, type PathsOptions } from './paths.js';

/** The paths' options (paths.ts), with how a controller is dialled made optional, and the local side. */
export interface AttachOptions extends Omit<PathsOptions, 'connect'> {
  /** One controller's answer to one request; past it, that path is failed. */
  requestTimeoutMs: number;
  /** Requests on the wire per connection to a controller. */
  upstreamInflightMax: number;
  /** Where local clients connect: loopback TCP (port 0: any free one) and/or a unix socket. */
  listen: { host: string; port: number; socket?: string };
  /** A unix socket answering status as JSON; absent: none. */
  statusSocket?: string;
  limits?: Partial<NbdServerLimits>;
  /** Tests replace how a controller is dialled. */
  connect?: Connect;
}

/** NbdBackend over Paths: every request goes to a controller, never answered here. */
class AttachBackend implements NbdBackend {
  private readonly vols: NbdVolume[];

  constructor(private readonly paths: Paths) {
    this.vols = paths.volumeNames().map((name) => {
      const info = paths.info(name)!;
      // A snapshot upstream is read only here too.
      const readOnly = (info.transmissionFlags & NbdFlag.READ_ONLY) !== 0;
      return { name, guid: `attached ${name}`, sizeBytes: info.sizeBytes, pageSizeBytes: info.preferredBytes > 0 ? info.preferredBytes : 4096, readOnly };
    });
  }

  listVolumes(): readonly NbdVolume[] {
    return this.vols;
  }

  findVolume(name: string): NbdVolume | undefined {
    return this.vols.find((v) => v.name === name);
  }

  /** attach serves while it runs: with no controller, requests are held, then fail one by one. */
  serving(): boolean {
    return true;
  }

  read(v: NbdVolume, offset: number, length: number): Promise<Buffer> {
    return this.paths.read(v.name, offset, length);
  }

  write(v: NbdVolume, offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.paths.write(v.name, offset, data, fua);
  }

  writeZeroes(v: NbdVolume, offset: number, length: number, fua: boolean): Promise<void> {
    return this.paths.writeZeroes(v.name, offset, length, fua);
  }

  flush(v: NbdVolume): Promise<void> {
    return this.paths.flush(v.name);
  }
}

export class Attach {
  readonly paths: Paths;
  private server: NbdServer | undefined;
  private statusServer: net.Server | undefined;
  port = 0;

  constructor(private readonly opts: AttachOptions) {
    const connect: Connect =
      opts.connect ??
      ((address) =>
        NbdClient.connect(address, {
          connectTimeoutMs: opts.requestTimeoutMs,
          requestTimeoutMs: opts.requestTimeoutMs,
          inflightMax: opts.upstreamInflightMax,
        }));
    this.paths = new Paths({ ...opts, connect });
  }

  /** Reaches the controllers, learns the volumes, then listens. Resolves with the TCP port. */
  async start(): Promise<{ port: number }> {
    await this.paths.start();
    const backend = new AttachBackend(this.paths);
    // No larger a request than every controller takes (their NBD_INFO_BLOCK_SIZE maximum).
    const upstreamMax = Math.min(...this.paths.volumeNames().map((n) => this.paths.info(n)!.maximumPayloadBytes));
    const limits: Partial<NbdServerLimits> = { ...this.opts.limits };
    if (upstreamMax >= 64 * 1024 && upstreamMax < (limits.payloadBytesMax ?? NBD_SERVER_DEFAULT_LIMITS.payloadBytesMax)) limits.payloadBytesMax = upstreamMax;
    const server = new NbdServer(
      {
        host: this.opts.listen.host,
        port: this.opts.listen.port,
        ...(this.opts.listen.socket !== undefined ? { socketPath: this.opts.listen.socket } : {}),
        limits,
        log: this.opts.log.child({ component: 'attach-nbd' }),
      },
      backend,
    );
    this.server = server;
    try {
      this.port = (await server.start()).port;
      if (this.opts.statusSocket !== undefined) await this.startStatus(this.opts.statusSocket);
    } catch (err) {
      await this.close();
      throw err;
    }
    this.opts.log.info(
      { port: this.port, socket: this.opts.listen.socket ?? null, volumes: this.paths.volumeNames(), statusSocket: this.opts.statusSocket ?? null },
      'attach serving',
    );
    return { port: this.port };
  }

  status(): AttachStatus {
    return this.paths.status();
  }

  async close(): Promise<void> {
    const status = this.statusServer;
    this.statusServer = undefined;
    if (status !== undefined) {
      await new Promise<void>((resolve) => status.close(() => resolve()));
      if (this.opts.statusSocket !== undefined) await unlink(this.opts.statusSocket).catch(() => undefined);
    }
    await this.server?.close();
    await this.paths.close();
  }

  private async startStatus(path: string): Promise<void> {
    await unlink(path).catch(() => undefined);
    const server = net.createServer((sock) => {
      sock.on('error', () => undefined);
      sock.end(`${JSON.stringify(this.status())}\n`);
    });
    this.statusServer = server;
    await listenPrivateSocket(server, path);
  }
}

/** Reads the status of a running attach from its status socket. */
export function fetchAttachStatus(path: string, timeoutMs = 5000): Promise<AttachStatus> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ path });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new PagepairError('TIMEOUT', `attach status socket ${path} did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(new PagepairError('NOT_ACTIVE', `attach status socket ${path}: ${err.message} (is pagepair attach running?)`));
    });
    sock.on('end', () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as AttachStatus);
      } catch (err) {
        reject(new PagepairError('BAD_FRAME', `attach status socket ${path} answered something that is not JSON: ${(err as Error).message}`));
      }
    });
  });
}

/** The status as lines for a person. */
export function formatAttachStatus(s: AttachStatus): string {
  const lines: string[] = [];
  for (const p of s.paths) {
    const err = p.state === 'down' && p.lastError !== null ? ` (${p.lastError})` : '';
    lines.push(`path ${p.id}  ${p.url}  ${p.state} for ${(p.forMs / 1000).toFixed(1)} s  answered ${p.answered}  failures ${p.failures}${err}`);
  }
  for (const v of s.volumes) lines.push(`volume ${v.name}  ${v.sizeBytes} bytes  preferred ${v.preferred}  now through ${v.current ?? '-'}`);
  const stall = (ms: number | null): string => (ms === null ? '-' : `${ms} ms`);
  lines.push(`failovers ${s.failovers}  resent ${s.resent}  held now ${s.held}  failed for want of a path ${s.failedNoPath}`);
  lines.push(`stall: last ${stall(s.lastStallMs)}, longest ${stall(s.longestStallMs)}; longest one request waited ${stall(s.longestRequestStallMs)}`);
  lines.push(`hold ${s.holdMs} ms with no path, then EIO; ${s.spread ? 'spread over both controllers' : 'one controller per volume'}`);
  return lines.join('\n');
}
