// A client that knows both controllers of a pair and carries on when one
// goes away: on a lost connection, or an answer that says "not here"
// (FENCED, NOT_ACTIVE, SHUTTING_DOWN), it retries on the other controller.
//
// Every write carries this client's id and a sequence number. A controller
// remembers the ids of writes it applied (and the partner learns them with
// the mirrored pages), so a write retried after the original may have landed
// is applied once, not twice.

import { randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { PagepairError, isPagepairError, type ErrorCodeName } from '../protocol/errors.js';
import { accessKeyBytes, PagepairClient, type AllocateOptions, type AllocationInfo, type ControllerAddress } from './client.js';
import type { CListReply } from '../protocol/messages.js';

/** Answers after which the same request may succeed elsewhere or a moment later. */
const RETRYABLE: ReadonlySet<ErrorCodeName> = new Set<ErrorCodeName>([
  'NOT_ACTIVE',
  'FENCED',
  'NOT_MIRRORED',
  'PARTNER_LOST',
  'SHUTTING_DOWN',
  'TIMEOUT',
  'BUSY',
  'STALE_EPOCH',
]);

export interface PairClientOptions {
  controllers: readonly ControllerAddress[];
  name?: string;
  /** Per request, on one controller. */
  timeoutMs?: number;
  /** How long one call keeps trying across controllers before it gives up. */
  retryForMs?: number;
  /** Pause between rounds of attempts when no controller answers. */
  retryIntervalMs?: number;
  /** Told about every switch of controller, for logs and charts. */
  onSwitch?: (info: { from: string | null; to: string; reason: string }) => void;
}

export class PairClient {
  readonly clientId: number;
  private seq = 0;
  private readonly conns: (PagepairClient | null)[];
  private readonly connecting: Record<number, Promise<PagepairClient>> = {};
  private current = 0;
  private closed = false;
  /** Keys of the keyed allocations this client made or unlocked: a new connection (a failover) unlocks them again. */
  private readonly keys = new Map<string, Buffer>();

  private constructor(private readonly opts: Required<Omit<PairClientOptions, 'onSwitch' | 'name'>> & Pick<PairClientOptions, 'onSwitch' | 'name'>) {
    this.clientId = randomInt(1, 0xffff_ffff);
    this.conns = opts.controllers.map(() => null);
  }

  static async connect(opts: PairClientOptions): Promise<PairClient> {
    if (opts.controllers.length < 1 || opts.controllers.length > 2) {
      throw new PagepairError('BAD_FIELD', 'a pair client needs one or two controllers', 'controllers');
    }
    const c = new PairClient({ timeoutMs: 5000, retryForMs: 15_000, retryIntervalMs: 50, ...opts });
    await c.attempt('connect', async () => undefined);
    return c;
  }

  /** The id of the controller requests go to now. */
  get currentController(): string {
    return this.opts.controllers[this.current]!.id;
  }

  allocate(name: string, sizeBytes: number, policy = 'default', opts: AllocateOptions = {}): Promise<AllocationInfo> {
    let tried = false;
    return this.attempt('allocate', async (c) => {
      try {
        const made = await c.allocate(name, sizeBytes, policy, opts);
        if (made.key !== undefined) this.keys.set(made.guid, accessKeyBytes(made.key));
        return made;
      } catch (err) {
        // A retried allocation that landed the first time finds its own name.
        if (tried && isPagepairError(err, 'DUPLICATE')) {
          const found = (await c.list()).find((a) => a.name === name);
          if (found !== undefined) {
            // The key was in the reply that was lost; no controller knows it.
            if (found.keyed === true) throw new PagepairError('DUPLICATE', `keyed allocation "${name}" was made but its key was lost with the reply; release it and allocate again`, 'name');
            return { guid: found.guid, pageSizeBytes: found.pageSizeBytes, pageCount: found.pageCount };
          }
        }
        throw err;
      } finally {
        tried = true;
      }
    });
  }

  /** Presents a keyed allocation's key, now and on every connection this client makes later. */
  async unlock(guid: string, key: string | Uint8Array): Promise<void> {
    const bytes = accessKeyBytes(key);
    await this.attempt('unlock', (c) => c.unlock(guid, bytes));
    this.keys.set(guid, bytes);
  }

  write(guid: string, offset: number, data: Buffer): Promise<void> {
    const seq = this.nextSeq();
    return this.attempt('write', (c) => c.write(guid, offset, data, 0, { clientId: this.clientId, clientSeq: seq }));
  }

  read(guid: string, offset: number, length: number): Promise<Buffer> {
    return this.attempt('read', (c) => c.read(guid, offset, length));
  }

  flush(guid?: string): Promise<number> {
    return this.attempt('flush', (c) => c.flush(guid));
  }

  release(guid: string): Promise<void> {
    return this.attempt('release', async (c) => {
      try {
        await c.release(guid);
      } catch (err) {
        if (!isPagepairError(err, 'UNKNOWN_GUID')) throw err;
      }
      this.keys.delete(guid);
    });
  }

  status(): Promise<unknown> {
    return this.attempt('status', (c) => c.status());
  }

  list(): Promise<CListReply['allocations']> {
    return this.attempt('list', (c) => c.list());
  }

  /** PagepairClient.snapshotRollback, on whichever controller answers (a rollback run again writes back only what still differs). */
  snapshotRollback(guid: string): Promise<number> {
    return this.attempt('snapshot rollback', (c) => c.snapshotRollback(guid));
  }

  /** PagepairClient.snapshotCommit, on whichever controller answers. A retry after an attempt that dropped the snapshot but did not take it again finds no snapshot (UNKNOWN_GUID): take it again with snapshot(). */
  snapshotCommit(guid: string): Promise<AllocationInfo> {
    return this.attempt('snapshot commit', (c) => c.snapshotCommit(guid));
  }

  /** A snapshot of the volume `guid` (PagepairClient.snapshot); a retry that finds the one its first attempt made returns it. */
  snapshot(guid: string, name: string): Promise<AllocationInfo> {
    let tried = false;
    return this.attempt('snapshot', async (c) => {
      try {
        return await c.snapshot(guid, name);
      } catch (err) {
        if (tried && isPagepairError(err, 'DUPLICATE')) {
          const all = await c.list();
          const origin = all.find((a) => a.guid === guid);
          const found = origin === undefined ? undefined : all.find((a) => a.origin === guid && a.name === `${origin.name}@${name}`);
          if (found !== undefined) return { guid: found.guid, pageSizeBytes: found.pageSizeBytes, pageCount: found.pageCount };
        }
        throw err;
      } finally {
        tried = true;
      }
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(Object.values(this.connecting).map((p) => p.catch(() => undefined)));
    await Promise.all(this.conns.map((c) => c?.close().catch(() => undefined)));
  }

  private nextSeq(): number {
    this.seq = this.seq >= 0xffff_fffe ? 1 : this.seq + 1;
    return this.seq;
  }

  /** Run fn on the current controller; on a retryable failure move on, until retryForMs. */
  private async attempt<T>(what: string, fn: (c: PagepairClient) => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.opts.retryForMs;
    let lastErr: unknown = null;
    for (let round = 0; ; round++) {
      if (this.closed) throw new PagepairError('NOT_ACTIVE', 'pair client closed');
      for (let i = 0; i < this.conns.length; i++) {
        const idx = (this.current + i) % this.conns.length;
        let c: PagepairClient;
        try {
          c = await this.connection(idx);
        } catch (err) {
          lastErr = err;
          continue;
        }
        try {
          const result = await fn(c);
          if (idx !== this.current) {
            const reason = lastErr instanceof Error ? lastErr.message : 'unreachable';
            this.opts.onSwitch?.({ from: this.opts.controllers[this.current]!.id, to: this.opts.controllers[idx]!.id, reason });
            this.current = idx;
          }
          return result;
        } catch (err) {
          if (!isPagepairError(err) || !RETRYABLE.has(err.code)) throw err;
          lastErr = err;
          if (err.code === 'NOT_ACTIVE' && !c.isOpen) this.conns[idx] = null;
        }
      }
      if (Date.now() >= deadline) {
        const why = lastErr instanceof Error ? lastErr.message : String(lastErr);
        throw lastErr instanceof PagepairError ? lastErr : new PagepairError('NOT_ACTIVE', `${what}: no controller answered: ${why}`);
      }
      await sleep(Math.min(this.opts.retryIntervalMs * (1 + Math.min(round, 10)), 500));
    }
  }

  private connection(idx: number): Promise<PagepairClient> {
    const have = this.conns[idx];
    if (have !== null && have !== undefined && have.isOpen) return Promise.resolve(have);
    // Requests failing over together share one connect, not one each.
    const pending = this.connecting[idx];
    if (pending !== undefined) return pending;
    const addr = this.opts.controllers[idx]!;
    const attempt = PagepairClient.connect({
      host: addr.host,
      port: addr.port,
      token: addr.token,
      ...(addr.tls === true ? { tls: true } : {}),
      name: this.opts.name ?? 'pagepair-pair-client',
      timeoutMs: this.opts.timeoutMs,
    })
      .then(async (c) => {
        if (this.closed) {
          await c.close().catch(() => undefined);
          throw new PagepairError('NOT_ACTIVE', 'pair client closed');
        }
        // Unlocks are per connection: a new one presents every key this client holds.
        for (const [guid, key] of this.keys) {
          try {
            await c.unlock(guid, key);
          } catch (err) {
            if (!isPagepairError(err, 'ACCESS_DENIED')) {
              await c.close().catch(() => undefined);
              throw err;
            }
            this.keys.delete(guid); // released since
          }
        }
        this.conns[idx] = c;
        return c;
      })
      .finally(() => {
        delete this.connecting[idx];
      });
    this.connecting[idx] = attempt;
    return attempt;
  }
}
