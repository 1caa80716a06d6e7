// The host side of a pair: `pagepair attach` serves volumes to local NBD
// clients and forwards each request to controller A or B, as a multipath
// host drives two paths to a dual-controller array. This file holds the
// paths and the rule for each request; attach.ts puts an NBD server in
// front of it.
//
// A request goes to the volume's path in use (its preferred controller while
// that is up; with `spread`, to both in turn once both are up). When the
// connection breaks, the controller does not answer in time, or it answers
// that it is fenced or not serving (ESHUTDOWN), that controller's path is
// marked down, every request that was in flight on it is sent again to the
// other, and the down path is re-dialled in the background until it answers
// again. A write sent twice to the same place with the same bytes is
// harmless, and NBD leaves overlapping writes in flight unordered, so a
// resend never breaks what the local client may rely on.
//
// Nothing is acknowledged to the local client that no controller
// acknowledged: a request resolves only with a controller's answer. With
// both paths down a request is held for holdMs (multipath's no_path_retry),
// then fails with IO_ERROR (EIO to the local client).
//
// A flush answered by either controller covers every write acknowledged
// before it through either one: that is the pair's promise (the partner
// holds every acknowledged write, or it went through to the store while a
// controller served alone), so one flush on one path suffices.

import { setTimeout as sleep } from 'node:timers/promises';
import type pino from 'pino';
import { PagepairError, isPagepairError, type ErrorCodeName } from '../protocol/errors.js';
import { formatNbdUrl, type NbdAddress, type NbdExportInfo } from '../client/nbd-client.js';
import { endpointAddress, type NbdEndpoint } from '../client/nbd-pair-client.js';

export type PathId = 'A' | 'B';

/** What attach needs of one NBD connection to a controller (NbdClient has it all). */
export interface Upstream {
  readonly info: NbdExportInfo;
  readonly isOpen: boolean;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void>;
  writeZeroes(offset: number, length: number, opts?: { fua?: boolean; noHole?: boolean }): Promise<void>;
  flush(): Promise<void>;
  onClosed(listener: (err: PagepairError | null) => void): void;
  close(): Promise<void>;
  destroy(): void;
}

export type Connect = (address: NbdAddress) => Promise<Upstream>;

/** Failures of a path, after which the request may succeed on the other controller. */
const PATH_FAILURES: ReadonlySet<ErrorCodeName> = new Set<ErrorCodeName>(['NOT_ACTIVE', 'SHUTTING_DOWN', 'TIMEOUT', 'FENCED', 'STALE_EPOCH']);

export function isPathFailure(err: unknown): boolean {
  return isPagepairError(err) && PATH_FAILURES.has(err.code);
}

export interface PathsOptions {
  /** Controller A's and B's NBD endpoints (ids "A" and "B"). */
  controllers: readonly [NbdEndpoint, NbdEndpoint];
  /** Volumes (export names) and the controller each prefers (ALUA's optimized path). */
  volumes: readonly { name: string; preferred: PathId }[];
  /** Send each volume's requests to both controllers in turn while both are up (the export's CAN_MULTI_CONN allows it). */
  spread: boolean;
  /** With no controller reachable, a request waits this long, then fails with IO_ERROR. */
  holdMs: number;
  /** A down path is dialled again this often. */
  reconnectMs: number;
  connect: Connect;
  log: pino.Logger;
}

type PathState = 'up' | 'down';

/** One controller: its connections, one per volume, and whether requests go to it. */
class Path {
  state: PathState = 'down';
  /** ms (performance.now) of the last change of state. */
  sinceMs: number;
  lastError: string | null = null;
  /** Requests answered through this path. */
  answered = 0;
  /** Times this path went down while in use. */
  failures = 0;
  /** Whether a re-dial loop is running. */
  redialing = false;
  readonly conns = new Map<string, Promise<Upstream>>();

  constructor(
    readonly id: PathId,
    readonly endpoint: NbdEndpoint,
  ) {
    this.sinceMs = performance.now();
  }

  get url(): string {
    return formatNbdUrl(endpointAddress(this.endpoint, ''));
  }
}

export interface PathStatus {
  id: PathId;
  url: string;
  state: PathState;
  forMs: number;
  answered: number;
  failures: number;
  lastError: string | null;
}

export interface AttachStatus {
  paths: PathStatus[];
  /** current: where its requests went last ("A+B" when spread over both). */
  volumes: { name: string; preferred: PathId; current: PathId | 'A+B' | null; sizeBytes: number }[];
  spread: boolean;
  holdMs: number;
  /** Requests sent again on the other path after their first path failed. */
  resent: number;
  /** Times a path in use went down, so that its requests went to the other controller (or waited for one). */
  failovers: number;
  /** Requests that failed with EIO after holdMs without any path. */
  failedNoPath: number;
  /** Requests held now for want of a path. */
  held: number;
  /**
   * The stall of each failover (ms): from the moment its path failed until
   * the first request caught in it was answered through a controller. The
   * last, the longest, and each one so far (the most recent 1,000).
   */
  lastStallMs: number | null;
  longestStallMs: number | null;
  stallsMs: number[];
  /** The longest any one request waited between its first path failing and its answer (ms). */
  longestRequestStallMs: number | null;
}

const STALLS_KEPT = 1000;

export class Paths {
  private readonly paths: readonly [Path, Path];
  private readonly volumes = new Map<string, { name: string; preferred: PathId; current: PathId | null; info: NbdExportInfo | null; turn: number }>();
  private readonly waiters = new Set<() => void>();
  private closed = false;
  resent = 0;
  failovers = 0;
  failedNoPath = 0;
  held = 0;
  private readonly stalls: number[] = [];
  private longestStall: number | null = null;
  private longestRequestStall: number | null = null;
  /** When the failover now under way began (a path in use failed), until a request caught in it is answered. */
  private openStallFrom: number | null = null;

  constructor(private readonly opts: PathsOptions) {
    if (opts.holdMs < 0 || !Number.isFinite(opts.holdMs)) throw new PagepairError('BAD_FIELD', `holdMs must be 0 or more, got ${opts.holdMs}`, 'holdMs');
    if (opts.volumes.length === 0) throw new PagepairError('BAD_FIELD', 'attach needs at least one volume', 'volumes');
    this.paths = [new Path('A', opts.controllers[0]), new Path('B', opts.controllers[1])];
    for (const v of opts.volumes) {
      if (this.volumes.has(v.name)) throw new PagepairError('BAD_FIELD', `volume ${JSON.stringify(v.name)} is given twice`, 'volumes');
      this.volumes.set(v.name, { name: v.name, preferred: v.preferred, current: null, info: null, turn: 0 });
    }
  }

  /**
   * Dials both controllers and learns each volume's size from whichever
   * answers. Resolves once every volume is known through at least one path;
   * rejects (after holdMs) if none could be reached, or at once if a
   * controller says a volume does not exist.
   */
  async start(): Promise<void> {
    await Promise.all(this.paths.map((p) => this.dial(p)));
    const deadline = performance.now() + this.opts.holdMs;
    for (;;) {
      const unknown = [...this.volumes.values()].filter((v) => v.info === null).map((v) => v.name);
      if (unknown.length === 0) break;
      if (performance.now() >= deadline) {
        const why = this.paths.map((p) => `${p.id} (${p.url}): ${p.lastError ?? 'no answer'}`).join('; ');
        throw new PagepairError('NOT_ACTIVE', `no controller serves ${unknown.join(', ')}: ${why}`);
      }
      await this.waitForPath(Math.max(1, deadline - performance.now()));
    }
  }

  /** What each volume is, as the controllers describe it (size, block sizes). */
  info(name: string): NbdExportInfo | undefined {
    return this.volumes.get(name)?.info ?? undefined;
  }

  volumeNames(): string[] {
    return [...this.volumes.keys()];
  }

  read(name: string, offset: number, length: number): Promise<Buffer> {
    return this.run(name, (u) => u.read(offset, length));
  }

  write(name: string, offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.run(name, (u) => u.write(offset, data, { fua }));
  }

  writeZeroes(name: string, offset: number, length: number, fua: boolean): Promise<void> {
    return this.run(name, (u) => u.writeZeroes(offset, length, { fua }));
  }

  flush(name: string): Promise<void> {
    return this.run(name, (u) => u.flush());
  }

  status(): AttachStatus {
    const now = performance.now();
    return {
      paths: this.paths.map((p) => ({
        id: p.id,
        url: p.url,
        state: p.state,
        forMs: Math.round(now - p.sinceMs),
        answered: p.answered,
        failures: p.failures,
        lastError: p.lastError,
      })),
      volumes: [...this.volumes.values()].map((v) => ({
        name: v.name,
        preferred: v.preferred,
        current: this.opts.spread && this.paths.every((p) => p.state === 'up') ? 'A+B' : v.current,
        sizeBytes: v.info?.sizeBytes ?? 0,
      })),
      spread: this.opts.spread,
      holdMs: this.opts.holdMs,
      resent: this.resent,
      failovers: this.failovers,
      failedNoPath: this.failedNoPath,
      held: this.held,
      lastStallMs: this.stalls.length === 0 ? null : this.stalls[this.stalls.length - 1]!,
      longestStallMs: this.longestStall,
      stallsMs: [...this.stalls],
      longestRequestStallMs: this.longestRequestStall,
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.wake();
    const all = this.paths.flatMap((p) => [...p.conns.values()]);
    for (const p of this.paths) p.conns.clear();
    await Promise.all(all.map((c) => c.then((u) => u.close(), () => undefined).catch(() => undefined)));
  }

  // ------------------------------------------------------------ one request

  private async run<T>(name: string, op: (u: Upstream) => Promise<T>): Promise<T> {
    const vol = this.volumes.get(name);
    if (vol === undefined) throw new PagepairError('UNKNOWN_GUID', `attach does not serve volume ${JSON.stringify(name)}`);
    /** When this request first found its path failing: the start of its stall. */
    let stallFrom: number | null = null;
    let lastErr: unknown = null;
    for (let tries = 0; ; tries++) {
      if (this.closed) throw new PagepairError('SHUTTING_DOWN', 'attach is closing');
      const path = this.pick(vol);
      if (path === undefined) {
        stallFrom = this.stallStarts(stallFrom);
        const left = this.opts.holdMs - (performance.now() - stallFrom);
        if (left <= 0) {
          this.failedNoPath++;
          const why = lastErr instanceof Error ? `; last error: ${lastErr.message}` : '';
          throw new PagepairError('IO_ERROR', `no controller answered for ${this.opts.holdMs} ms (attach hold time)${why}`);
        }
        this.held++;
        try {
          await this.waitForPath(left);
        } finally {
          this.held--;
        }
        continue;
      }
      let u: Upstream;
      try {
        u = await this.connection(path, name);
      } catch (err) {
        if (!isPathFailure(err)) throw err;
        lastErr = err;
        stallFrom = this.stallStarts(stallFrom);
        this.pathFailed(path, err);
        continue;
      }
      try {
        if (tries > 0) this.resent++;
        const result = await op(u);
        path.answered++;
        if (vol.current !== path.id) {
          if (vol.current !== null && !this.opts.spread) this.opts.log.warn({ volume: name, from: vol.current, to: path.id }, 'attach: volume served through the other controller');
          vol.current = path.id;
        }
        if (stallFrom !== null) this.stallOver(performance.now() - stallFrom);
        return result;
      } catch (err) {
        if (!isPathFailure(err)) throw err;
        lastErr = err;
        stallFrom = this.stallStarts(stallFrom);
        this.pathFailed(path, err);
      }
    }
  }

  /** The path this request goes to: the volume's current or preferred one while up; with spread, both in turn. */
  private pick(vol: { preferred: PathId; current: PathId | null; turn: number }): Path | undefined {
    const up = this.paths.filter((p) => p.state === 'up');
    if (up.length === 0) return undefined;
    if (up.length === 1) return up[0];
    if (this.opts.spread) return up[vol.turn++ % up.length];
    // Both up: stay where the volume is (a failback only when its path there fails, as ALUA
    // hosts do not bounce back on their own); a volume not placed yet goes to its preferred one.
    const want = vol.current ?? vol.preferred;
    return up.find((p) => p.id === want) ?? up[0];
  }

  private connection(path: Path, name: string): Promise<Upstream> {
    const have = path.conns.get(name);
    if (have !== undefined) return have;
    const made = this.opts.connect(endpointAddress(path.endpoint, name)).then((u) => {
      if (this.closed) {
        u.destroy();
        throw new PagepairError('SHUTTING_DOWN', 'attach is closing');
      }
      const vol = this.volumes.get(name)!;
      vol.info ??= u.info;
      u.onClosed((err) => {
        if (path.conns.get(name) === made) path.conns.delete(name);
        if (err !== null && !this.closed) this.pathFailed(path, err);
      });
      return u;
    });
    // A failed dial is forgotten so the next request dials again.
    made.catch(() => {
      if (path.conns.get(name) === made) path.conns.delete(name);
    });
    path.conns.set(name, made);
    return made;
  }

  /** The path failed a request or lost a connection: every connection on it is cut (its requests go to the other), and it is dialled again in the background. */
  private pathFailed(path: Path, err: unknown): void {
    const reason = err instanceof Error ? err.message : String(err);
    if (path.state === 'up') {
      path.state = 'down';
      path.sinceMs = performance.now();
      path.failures++;
      this.failovers++;
      path.lastError = reason;
      this.opts.log.warn({ path: path.id, url: path.url, reason }, 'attach: path down; requests go to the other controller');
      const conns = [...path.conns.values()];
      path.conns.clear();
      for (const c of conns) c.then((u) => u.destroy(), () => undefined).catch(() => undefined);
    }
    void this.redial(path);
  }

  /** Dials a down path every reconnectMs until it answers for every volume it is asked about. */
  private async redial(path: Path): Promise<void> {
    if (path.redialing || this.closed) return;
    path.redialing = true;
    try {
      while (!this.closed && path.state === 'down') {
        await sleep(this.opts.reconnectMs);
        if (this.closed) break;
        await this.dial(path);
      }
    } finally {
      path.redialing = false;
    }
  }

  /** One try: connects to every volume on the path; up if all answer. */
  private async dial(path: Path): Promise<void> {
    try {
      for (const name of this.volumes.keys()) await this.connection(path, name);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      // A volume the controller says does not exist is a configuration error:
      // logged once, not at every re-dial (every reconnectMs, for as long as it lasts).
      if (isPagepairError(err) && err.code === 'UNKNOWN_GUID' && message !== path.lastError) {
        this.opts.log.error({ path: path.id, err: message }, 'attach: controller does not serve a volume');
      }
      path.lastError = message;
      if (path.state === 'up') this.pathFailed(path, err);
      else void this.redial(path);
      return;
    }
    if (path.state === 'down') {
      path.state = 'up';
      path.sinceMs = performance.now();
      this.opts.log.info({ path: path.id, url: path.url }, 'attach: path up');
      this.wake();
    }
  }

  /** A request saw its path fail (or found none): its stall, and the failover's, start now unless they had. */
  private stallStarts(from: number | null): number {
    const at = from ?? performance.now();
    this.openStallFrom ??= at;
    return at;
  }

  /** A request caught in a failover was answered after waiting `ms`; the first such answer ends the failover's stall. */
  private stallOver(ms: number): void {
    if (this.longestRequestStall === null || ms > this.longestRequestStall) this.longestRequestStall = Math.round(ms * 10) / 10;
    if (this.openStallFrom === null) return;
    const stall = Math.round((performance.now() - this.openStallFrom) * 10) / 10;
    this.openStallFrom = null;
    this.stalls.push(stall);
    if (this.stalls.length > STALLS_KEPT) this.stalls.shift();
    if (this.longestStall === null || stall > this.longestStall) this.longestStall = stall;
  }

  private waitForPath(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.add(done);
    });
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }
}
