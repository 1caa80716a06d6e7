// NBD to a pair: one NBD connection per volume to the controller in use, and
// on a lost connection, a timeout, or an ESHUTDOWN answer (the controller is
// fenced or stopping: the NBD spec tells the client to go away) the request
// is sent again to the other controller, with the requests that were in
// flight on the lost connection. Unlike the WebSocket client, an NBD write
// carries no retry tag: a resent write may land twice (once through the
// controller that went away, once through the other). That is harmless when
// nobody else writes the block meanwhile; when others may (resendWrites
// false), a write that may have reached a controller is not sent again but
// fails with the error that left its fate unknown.

import { setTimeout as sleep } from 'node:timers/promises';
import { PagepairError, isPagepairError, type ErrorCodeName } from '../protocol/errors.js';
import { NbdClient, type NbdAddress, type NbdTlsCredentials } from './nbd-client.js';

/** Where one controller serves NBD: TCP or a unix socket (the export name is given per request); with `tls`, over TLS-PSK. */
export type NbdEndpoint = ({ id: string; host: string; port: number } | { id: string; socketPath: string }) & { tls?: NbdTlsCredentials };

/** Failures after which the request may succeed on the other controller. */
const RETRYABLE: ReadonlySet<ErrorCodeName> = new Set<ErrorCodeName>(['NOT_ACTIVE', 'SHUTTING_DOWN', 'TIMEOUT', 'FENCED', 'STALE_EPOCH']);

export interface NbdPairClientOptions {
  /** The controllers in the order to try them; the first is used until it fails. */
  endpoints: readonly NbdEndpoint[];
  /** One request on one controller; a controller that does not answer in time is left for the other. Default 5 s. */
  timeoutMs?: number;
  /** How long one request keeps trying across the controllers. 0: one try on each. Default 15 s. */
  retryForMs?: number;
  retryIntervalMs?: number;
  /** Requests in flight per connection. Default 64. */
  inflightMax?: number;
  /** Send a write again after a failure that leaves open whether it landed. Default true. */
  resendWrites?: boolean;
  onSwitch?: (info: { from: string; to: string; reason: string }) => void;
}

export function endpointAddress(e: NbdEndpoint, exportName: string): NbdAddress {
  const tls = e.tls !== undefined ? { tls: e.tls } : {};
  return 'socketPath' in e ? { socketPath: e.socketPath, exportName, ...tls } : { host: e.host, port: e.port, exportName, ...tls };
}

export class NbdPairClient {
  /** Requests sent again after a failure on one controller (writes among them may have landed twice). */
  resent = 0;
  private current = 0;
  private closed = false;
  private readonly conns: Map<string, Promise<NbdClient>>[];
  private readonly opts: Required<Omit<NbdPairClientOptions, 'onSwitch'>> & Pick<NbdPairClientOptions, 'onSwitch'>;

  constructor(opts: NbdPairClientOptions) {
    if (opts.endpoints.length < 1 || opts.endpoints.length > 2) throw new PagepairError('BAD_FIELD', 'an NBD pair client needs one or two controllers', 'endpoints');
    this.opts = { timeoutMs: 5000, retryForMs: 15_000, retryIntervalMs: 50, inflightMax: 64, resendWrites: true, ...opts };
    this.conns = opts.endpoints.map(() => new Map());
  }

  get currentController(): string {
    return this.opts.endpoints[this.current]!.id;
  }

  /** Connects to `exportName` on the current controller (or the other), so the first request does not pay for it. */
  async open(exportName: string): Promise<void> {
    await this.attempt(exportName, async () => undefined);
  }

  read(exportName: string, offset: number, length: number): Promise<Buffer> {
    return this.attempt(exportName, (c) => c.read(offset, length));
  }

  write(exportName: string, offset: number, data: Buffer, opts: { fua?: boolean } = {}): Promise<void> {
    return this.attempt(exportName, (c) => c.write(offset, data, opts), this.opts.resendWrites);
  }

  flush(exportName: string): Promise<void> {
    return this.attempt(exportName, (c) => c.flush());
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = this.conns.flatMap((m) => [...m.values()]);
    await Promise.all(all.map((p) => p.then((c) => c.close(), () => undefined).catch(() => undefined)));
  }

  private connection(idx: number, exportName: string): Promise<NbdClient> {
    const m = this.conns[idx]!;
    const have = m.get(exportName);
    if (have !== undefined) return have;
    const made = NbdClient.connect(endpointAddress(this.opts.endpoints[idx]!, exportName), {
      connectTimeoutMs: this.opts.timeoutMs,
      requestTimeoutMs: this.opts.timeoutMs,
      inflightMax: this.opts.inflightMax,
    }).then(
      (c) => {
        if (this.closed) {
          c.destroy();
          throw new PagepairError('NOT_ACTIVE', 'NBD pair client closed');
        }
        c.onClosed(() => {
          if (m.get(exportName) === made) m.delete(exportName);
        });
        return c;
      },
      (err: unknown) => {
        if (m.get(exportName) === made) m.delete(exportName);
        throw err;
      },
    );
    m.set(exportName, made);
    return made;
  }

  /** `resend` false: once the request may have reached a controller, a failure is final. */
  private async attempt<T>(exportName: string, fn: (c: NbdClient) => Promise<T>, resend = true): Promise<T> {
    const deadline = Date.now() + this.opts.retryForMs;
    let lastErr: unknown = null;
    let tries = 0;
    for (let round = 0; ; round++) {
      if (this.closed) throw new PagepairError('NOT_ACTIVE', 'NBD pair client closed');
      const n = this.conns.length;
      for (let i = 0; i < n; i++) {
        const idx = (this.current + i) % n;
        let c: NbdClient;
        try {
          c = await this.connection(idx, exportName);
        } catch (err) {
          // A refused export (it does not exist there) is final; a refused or lost connection is not.
          if (!isPagepairError(err) || !RETRYABLE.has(err.code)) throw err;
          lastErr = err;
          continue;
        }
        try {
          if (tries++ > 0) this.resent++;
          const result = await fn(c);
          if (idx !== this.current) {
            const from = this.opts.endpoints[this.current]!.id;
            this.current = idx;
            this.opts.onSwitch?.({ from, to: this.opts.endpoints[idx]!.id, reason: lastErr instanceof Error ? lastErr.message : 'unreachable' });
          }
          return result;
        } catch (err) {
          if (!isPagepairError(err) || !RETRYABLE.has(err.code)) throw err;
          if (!resend) {
            if (c.isOpen && err.code === 'SHUTTING_DOWN') c.destroy();
            throw err;
          }
          lastErr = err;
          // ESHUTDOWN: the spec says disconnect; a lost or timed-out connection is gone already.
          if (c.isOpen) c.destroy();
        }
      }
      if (Date.now() >= deadline) {
        if (lastErr instanceof PagepairError) throw lastErr;
        throw new PagepairError('NOT_ACTIVE', `no controller answered over NBD: ${lastErr instanceof Error ? lastErr.message : String(lastErr)}`);
      }
      await sleep(Math.min(this.opts.retryIntervalMs * (1 + Math.min(round, 10)), 500));
    }
  }
}
