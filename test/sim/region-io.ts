// The simulator's client as a RegionIo (src/client/region.ts), so regions
// run over two simulated controllers: SimRegionIo on one connection (as
// PagepairClient does, a keyed allocation made here is unlocked on it at
// once), SimPairIo failing over and retrying as PairClient does.

import { accessKeyBytes } from '../../src/client/client.js';
import type { RegionIo } from '../../src/client/region.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import type { Harness, NodeName } from './harness.js';
import type { SimClient } from './sim-client.js';

export class SimRegionIo implements RegionIo {
  constructor(readonly client: SimClient) {}

  async allocate(name: string, sizeBytes: number, policy = '', opts: { keyed?: boolean } = {}): Promise<{ guid: string; pageSizeBytes: number; pageCount: number; key?: string }> {
    if (opts.keyed !== true) return this.client.allocate(name, sizeBytes, policy);
    const made = await this.client.allocateKeyed(name, sizeBytes, policy);
    await this.client.unlock(made.guid, made.key);
    return { guid: made.guid, pageSizeBytes: made.pageSizeBytes, pageCount: made.pageCount, key: made.key.toString('base64url') };
  }

  unlock(guid: string, key: string | Uint8Array): Promise<void> {
    return this.client.unlock(guid, accessKeyBytes(key));
  }

  write(guid: string, offset: number, data: Buffer): Promise<void> {
    return this.client.write(guid, offset, data);
  }

  read(guid: string, offset: number, length: number): Promise<Buffer> {
    return this.client.read(guid, offset, length);
  }

  flush(guid: string): Promise<number> {
    return this.client.flush(guid);
  }

  release(guid: string): Promise<void> {
    return this.client.release(guid);
  }

  list(): Promise<{ guid: string; name: string; pageSizeBytes: number; pageCount: number; keyed?: boolean }[]> {
    return this.client.list();
  }
}

/** Answers after which PairClient tries again (src/client/pair-client.ts): the same request may succeed elsewhere or a moment later. */
const RETRYABLE = new Set(['NOT_ACTIVE', 'FENCED', 'NOT_MIRRORED', 'PARTNER_LOST', 'SHUTTING_DOWN', 'TIMEOUT', 'BUSY', 'STALE_EPOCH']);

/**
 * A RegionIo that behaves as PairClient does, in the simulator: a request
 * answered "not now" (NOT_MIRRORED, PARTNER_LOST, ...) is sent again, on the
 * other controller when the connection is gone, after unlocking there every
 * key it holds; each write carries this client's id and a sequence number,
 * so one retried after it may have landed is applied once.
 */
export class SimPairIo implements RegionIo {
  private readonly conns = new Map<NodeName, SimClient>();
  private readonly keys = new Map<string, Buffer>();
  /** Connections that were given every key in `keys` (unlocks are per connection). */
  private readonly unlockedOn = new WeakSet<SimClient>();
  private seq = 0;
  /** Requests that needed another attempt, and switches of controller. */
  retries = 0;
  switches = 0;

  constructor(
    private readonly h: Harness,
    private current: NodeName,
    private readonly clientId: number,
    private readonly retryForMs = 10_000,
  ) {}

  get controller(): NodeName {
    return this.current;
  }

  /** Requests sent and not answered, on every connection. */
  get outstanding(): number {
    let n = 0;
    for (const c of this.conns.values()) n += c.outstanding;
    return n;
  }

  async allocate(name: string, sizeBytes: number, policy = '', opts: { keyed?: boolean } = {}): Promise<{ guid: string; pageSizeBytes: number; pageCount: number; key?: string }> {
    // Not retried: a retried allocation would lose the key of the first (PairClient says DUPLICATE then).
    const c = this.conn(this.current);
    const made = await new SimRegionIo(c).allocate(name, sizeBytes, policy, opts);
    if (made.key !== undefined) this.keys.set(made.guid, accessKeyBytes(made.key));
    return made;
  }

  async unlock(guid: string, key: string | Uint8Array): Promise<void> {
    const bytes = accessKeyBytes(key);
    await this.attempt((c) => c.unlock(guid, bytes));
    this.keys.set(guid, bytes);
  }

  write(guid: string, offset: number, data: Buffer): Promise<void> {
    const tag = { clientId: this.clientId, clientSeq: ++this.seq };
    return this.attempt((c) => c.write(guid, offset, data, 0, tag));
  }

  read(guid: string, offset: number, length: number): Promise<Buffer> {
    return this.attempt((c) => c.read(guid, offset, length));
  }

  flush(guid: string): Promise<number> {
    return this.attempt((c) => c.flush(guid));
  }

  async release(guid: string): Promise<void> {
    await this.attempt((c) => c.release(guid));
    this.keys.delete(guid);
  }

  list(): Promise<{ guid: string; name: string; pageSizeBytes: number; pageCount: number; keyed?: boolean }[]> {
    return this.attempt((c) => c.list());
  }

  private conn(node: NodeName): SimClient {
    let c = this.conns.get(node);
    if (c === undefined || c.closed) {
      c = this.h.client(node);
      this.conns.set(node, c);
    }
    return c;
  }

  private async attempt<T>(fn: (c: SimClient) => Promise<T>): Promise<T> {
    const deadline = this.h.nowMs + this.retryForMs;
    for (let round = 0; ; round++) {
      const c = this.conn(this.current);
      const fresh = !this.unlockedOn.has(c);
      try {
        if (fresh) {
          for (const [guid, key] of this.keys) {
            try {
              await c.unlock(guid, key);
            } catch (err) {
              // Released since (by another client): as PairClient, forget the key.
              if (!isPagepairError(err, 'ACCESS_DENIED')) throw err;
              this.keys.delete(guid);
            }
          }
          this.unlockedOn.add(c);
        }
        return await fn(c);
      } catch (err) {
        // A connection gone (its controller killed) is not a PagepairError: try the other controller.
        const gone = c.closed;
        if (!gone && !(isPagepairError(err) && RETRYABLE.has(err.code))) throw err;
        if (this.h.nowMs >= deadline) throw err;
        this.retries++;
        if (gone) {
          this.current = this.current === 'A' ? 'B' : 'A';
          this.switches++;
        }
        await this.h.sleep(Math.min(10 * (1 + round), 100));
      }
    }
  }
}
