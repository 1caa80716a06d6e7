// A BlockStore whose operations complete on the simulator's clock. The real
// operation runs at once against the shared device (so bytes land in call
// order); its completion is delivered by a scheduler event after a seeded
// delay, so completions of concurrent operations arrive in a seeded order.

import type { PageStore } from '../../src/store/page-store.js';
import type {
  AllocationRecord,
  BlockStore,
  EpochRecord,
  Mailbox,
  MailboxSlot,
  PageLocation,
  StoredPage,
  Superblock,
} from '../../src/store/types.js';
import type { Prng } from './prng.js';
import type { Scheduler } from './scheduler.js';

export interface SimStoreCounters {
  pageReads: number;
  pageWrites: number;
  tableWrites: number;
  syncs: number;
}

export class SimStore implements BlockStore {
  readonly counters: SimStoreCounters = { pageReads: 0, pageWrites: 0, tableWrites: 0, syncs: 0 };
  /** False once the controller using it is killed: completions are never delivered. */
  alive = true;
  private stalled: (() => void)[] | null = null;
  private stallWhat: 'all' | 'pageWrites' = 'all';

  constructor(
    private readonly inner: PageStore,
    private readonly sched: Scheduler,
    private readonly rng: Prng,
    private readonly delayMaxMs: number,
    private readonly label: string,
  ) {}

  get superblock(): Superblock {
    return this.inner.superblock;
  }

  readPage(loc: PageLocation, page: number): Promise<StoredPage> {
    this.counters.pageReads++;
    return this.complete(`readPage ${page}`, () => this.inner.readPage(loc, page));
  }

  writePage(loc: PageLocation, page: number, version: number, epoch: number, data: Buffer, crc?: number): Promise<void> {
    this.counters.pageWrites++;
    return this.complete(`writePage ${page} v${version}`, () => this.inner.writePage(loc, page, version, epoch, data, crc));
  }

  clearExtent(dataOffset: number, bytes: number): Promise<void> {
    return this.complete('clearExtent', () => this.inner.clearExtent(dataOffset, bytes));
  }

  readTable(): Promise<{ seq: number; records: AllocationRecord[] }> {
    return this.complete('readTable', () => this.inner.readTable());
  }

  writeTable(records: AllocationRecord[]): Promise<number> {
    this.counters.tableWrites++;
    return this.complete('writeTable', () => this.inner.writeTable(records));
  }

  readMailbox(): Promise<Mailbox> {
    return this.complete('readMailbox', () => this.inner.readMailbox());
  }

  writeMailboxSlot(slot: MailboxSlot): Promise<void> {
    return this.complete('writeMailboxSlot', () => this.inner.writeMailboxSlot(slot));
  }

  writeEpochRecord(rec: Omit<EpochRecord, 'seq'>): Promise<EpochRecord> {
    return this.complete('writeEpochRecord', () => this.inner.writeEpochRecord(rec));
  }

  sync(): Promise<void> {
    this.counters.syncs++;
    return this.complete('sync', () => this.inner.sync());
  }

  close(): Promise<void> {
    return this.complete('close', () => this.inner.close());
  }

  /**
   * Hold operations issued from now on (neither landing nor completing) until
   * unstall(); 'pageWrites' holds only writePage (destages), so reads go on.
   */
  stall(what: 'all' | 'pageWrites' = 'all'): void {
    this.stalled ??= [];
    this.stallWhat = what;
  }

  /** Let held operations go, in the order they were issued. */
  unstall(): void {
    const held = this.stalled ?? [];
    this.stalled = null;
    for (const start of held) start();
  }

  /**
   * The operation lands (runs against the device) at a seeded moment between
   * the call and its completion, so writes from the two controllers may land
   * in an order other than the one they were issued in.
   */
  private complete<T>(what: string, op: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const start = (): void => {
        const delayMs = this.rng.int(this.delayMaxMs + 1);
        const landMs = this.rng.int(delayMs + 1);
        let real: Promise<T> | null = null;
        this.sched.after(landMs, `${this.label} store ${what} lands`, () => {
          if (!this.alive) return;
          real = op();
          // Keep an unobserved rejection from escaping before completion delivers it.
          real.catch(() => undefined);
        });
        this.sched.after(delayMs, `${this.label} store ${what} done`, () => {
          if (this.alive && real !== null) real.then(resolve, reject);
        });
      };
      if (this.stalled !== null && (this.stallWhat === 'all' || what.startsWith('writePage'))) this.stalled.push(start);
      else start();
    });
  }
}
