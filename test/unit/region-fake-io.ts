// An in-memory pair as a RegionIo sees it, for the region tests: keyed
// allocations with per-connection unlocks (ACCESS_DENIED otherwise), writes
// that land page by page, whole, and faults: a request that fails, and a
// crash that stops every request from a given one on (that request itself
// landing or not).

import { randomBytes } from 'node:crypto';
import { accessKeyBytes } from '../../src/client/client.js';
import type { RegionIo } from '../../src/client/region.js';
import { PagepairError } from '../../src/protocol/errors.js';

export const FAKE_POLICIES: Record<string, number> = { tiny: 512, small: 4096, checkpoint: 256 * 1024, default: 4096 };

interface Alloc {
  guid: string;
  name: string;
  pageSizeBytes: number;
  pageCount: number;
  /** What the controllers hold (their caches, the same on both). */
  bytes: Buffer;
  /** What the store holds: pages reach it by a flush, or by a destage when both controllers are lost. */
  stored: Buffer;
  /** Pages written since they last reached the store. */
  dirty: Set<number>;
  key: Buffer;
}

export type RequestKind = 'allocate' | 'unlock' | 'write' | 'read' | 'release' | 'list' | 'flush';

export interface RequestSeen {
  n: number;
  kind: RequestKind;
  guid?: string;
  offset?: number;
  length?: number;
}

/** What the fake does at one request (numbered from 0 over the whole pair). */
export type Fault =
  /** The request fails with IO_ERROR; a write lands nothing. */
  | { kind: 'fail' }
  /** The request fails with NOT_ACTIVE but a write lands whole first (the answer was lost). */
  | { kind: 'fail-after-landing' }
  /** From this request on nothing answers and nothing lands ('crash'), or this one lands and then nothing ('crash-after-landing'). */
  | { kind: 'crash' }
  | { kind: 'crash-after-landing' };

/** The pair's memory, shared by every connection. */
export class FakePair {
  readonly allocs = new Map<string, Alloc>();
  readonly seen: RequestSeen[] = [];
  readonly faults = new Map<number, Fault>();
  crashed = false;
  /** Called as a read's bytes are taken (after they are copied), for tests that act between a reader's requests. */
  onRead: ((r: RequestSeen) => Promise<void> | void) | null = null;
  private nextGuid = 1;

  connect(requestBytesMax?: number): FakeConn {
    return new FakeConn(this, requestBytesMax);
  }

  /**
   * Both controllers lost at once: of the pages not in the store, those
   * `destaged` picks made it there (the destager goes in no set order), the
   * rest are gone; the pair comes back with what the store holds.
   */
  loseBoth(destaged: (guid: string, page: number) => boolean): void {
    for (const a of this.allocs.values()) {
      for (const page of a.dirty) {
        const at = page * a.pageSizeBytes;
        if (destaged(a.guid, page)) a.bytes.copy(a.stored, at, at, at + a.pageSizeBytes);
      }
      a.dirty.clear();
      a.stored.copy(a.bytes);
    }
  }

  /** Brings the pair back after a crash: faults cleared, requests served again. */
  restart(): void {
    this.crashed = false;
    this.faults.clear();
  }

  newGuid(): string {
    return `00000000-0000-4000-8000-${(this.nextGuid++).toString(16).padStart(12, '0')}`;
  }

  /** Runs a request under the fault plan: `land` changes memory, `answer` makes the reply. */
  async serve<T>(r: Omit<RequestSeen, 'n'>, land: () => void, answer: () => T): Promise<T> {
    await Promise.resolve();
    if (this.crashed) throw new PagepairError('NOT_ACTIVE', 'the fake pair crashed');
    const seen = { ...r, n: this.seen.length };
    this.seen.push(seen);
    const fault = this.faults.get(seen.n);
    if (fault?.kind === 'crash' || fault?.kind === 'crash-after-landing') {
      if (fault.kind === 'crash-after-landing') land();
      this.crashed = true;
      throw new PagepairError('NOT_ACTIVE', `the fake pair crashed at request ${seen.n}`);
    }
    if (fault?.kind === 'fail') throw new PagepairError('IO_ERROR', `fault injected at request ${seen.n}`);
    land();
    if (fault?.kind === 'fail-after-landing') throw new PagepairError('NOT_ACTIVE', `answer to request ${seen.n} lost`);
    const out = answer();
    if (r.kind === 'read' && this.onRead !== null) await this.onRead(seen);
    return out;
  }
}

export class FakeConn implements RegionIo {
  private readonly unlocked = new Set<string>();

  constructor(
    readonly pair: FakePair,
    readonly requestBytesMax?: number,
  ) {}

  allocate(name: string, sizeBytes: number, policy = 'default', opts: { keyed?: boolean } = {}): Promise<{ guid: string; pageSizeBytes: number; pageCount: number; key?: string }> {
    const p = this.pair;
    let made: Alloc | null = null;
    return p.serve(
      { kind: 'allocate' },
      () => {
        const pageSizeBytes = FAKE_POLICIES[policy];
        if (pageSizeBytes === undefined) throw new PagepairError('POLICY_UNKNOWN', `no policy ${policy}`, 'policy');
        if ([...p.allocs.values()].some((a) => a.name === name)) throw new PagepairError('DUPLICATE', `${name} exists`, 'name');
        const pageCount = Math.ceil(sizeBytes / pageSizeBytes);
        if (pageCount * pageSizeBytes > 64 * 1024 * 1024) throw new PagepairError('NO_SPACE', 'the fake holds 64 MiB at most', 'sizeBytes');
        made = { guid: p.newGuid(), name, pageSizeBytes, pageCount, bytes: Buffer.alloc(pageCount * pageSizeBytes), stored: Buffer.alloc(pageCount * pageSizeBytes), dirty: new Set(), key: randomBytes(16) };
        if (opts.keyed !== true) throw new PagepairError('BAD_FIELD', 'the fake makes keyed allocations only', 'keyed');
        p.allocs.set(made.guid, made);
        this.unlocked.add(made.guid);
      },
      () => ({ guid: made!.guid, pageSizeBytes: made!.pageSizeBytes, pageCount: made!.pageCount, key: made!.key.toString('base64url') }),
    );
  }

  unlock(guid: string, key: string | Uint8Array): Promise<void> {
    return this.pair.serve(
      { kind: 'unlock', guid },
      () => {
        const a = this.pair.allocs.get(guid);
        if (a === undefined || !a.key.equals(accessKeyBytes(key))) throw new PagepairError('ACCESS_DENIED', 'wrong key', 'guid');
        this.unlocked.add(guid);
      },
      () => undefined,
    );
  }

  write(guid: string, offset: number, data: Buffer): Promise<void> {
    const copy = Buffer.from(data);
    return this.pair.serve(
      { kind: 'write', guid, offset, length: data.length },
      () => {
        const a = this.usable(guid);
        this.limit(data.length);
        if (offset + data.length > a.bytes.length) throw new PagepairError('OUT_OF_RANGE', 'past the allocation', 'offset');
        copy.copy(a.bytes, offset);
        for (let page = Math.floor(offset / a.pageSizeBytes); page * a.pageSizeBytes < offset + copy.length; page++) a.dirty.add(page);
      },
      () => undefined,
    );
  }

  read(guid: string, offset: number, length: number): Promise<Buffer> {
    let out = Buffer.alloc(0);
    return this.pair.serve(
      { kind: 'read', guid, offset, length },
      () => {
        const a = this.usable(guid);
        this.limit(length);
        if (offset + length > a.bytes.length) throw new PagepairError('OUT_OF_RANGE', 'past the allocation', 'offset');
        out = Buffer.from(a.bytes.subarray(offset, offset + length));
      },
      () => out,
    );
  }

  flush(guid: string): Promise<number> {
    let pages = 0;
    return this.pair.serve(
      { kind: 'flush', guid },
      () => {
        const a = this.usable(guid);
        for (const page of a.dirty) {
          const at = page * a.pageSizeBytes;
          a.bytes.copy(a.stored, at, at, at + a.pageSizeBytes);
        }
        pages = a.dirty.size;
        a.dirty.clear();
      },
      () => pages,
    );
  }

  release(guid: string): Promise<void> {
    return this.pair.serve(
      { kind: 'release', guid },
      () => {
        this.usable(guid);
        this.pair.allocs.delete(guid);
      },
      () => undefined,
    );
  }

  list(): Promise<{ guid: string; name: string; pageSizeBytes: number; pageCount: number; keyed?: boolean }[]> {
    return this.pair.serve(
      { kind: 'list' },
      () => undefined,
      () => [...this.pair.allocs.values()].map((a) => ({ guid: a.guid, name: a.name, pageSizeBytes: a.pageSizeBytes, pageCount: a.pageCount, keyed: true })),
    );
  }

  private usable(guid: string): Alloc {
    const a = this.pair.allocs.get(guid);
    if (a === undefined) throw new PagepairError('UNKNOWN_GUID', `no allocation ${guid}`, 'guid');
    if (!this.unlocked.has(guid)) throw new PagepairError('ACCESS_DENIED', `${guid} is keyed and not unlocked here`, 'guid');
    return a;
  }

  private limit(bytes: number): void {
    if (this.requestBytesMax !== undefined && bytes > this.requestBytesMax) throw new PagepairError('TOO_LARGE', `${bytes} bytes over ${this.requestBytesMax}`, 'data');
  }
}
