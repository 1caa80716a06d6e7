// A BlockStore whose operations complete on the simulator's clock. The real
// operation runs at once against the shared device (so bytes land in call
// order); its completion is delivered by a scheduler event after a seeded
// delay, so completions of concurrent operations arrive in a seeded order.
//
// The harness hooks in here to watch what lands (which controller, which
// incarnation, which epoch wrote every page, table and epoch record), to
// deliver completions to a paused controller only when it resumes, and to
// crash a controller in the middle of one of its writes, tearing it.

import type { MemoryDevice } from '../../src/store/memory-device.js';
import type { PageStore } from '../../src/store/page-store.js';
import type {
  Device,
  AllocationRecord,
  BlockStore,
  EpochRecord,
  Mailbox,
  MailboxSlot,
  PageLocation,
  PageRange,
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

/** The store writes a crash can interrupt. */
export type StoreWriteKind = 'page' | 'table' | 'slot' | 'epoch' | 'clear';

/** One store operation as it lands on the device. */
export interface Landing {
  kind: StoreWriteKind | 'read' | 'sync' | 'close';
  /** The controller's epoch when it issued the operation (page writes: the epoch written in the header). */
  writerEpoch: number;
  /** Epoch records: what the record says. */
  record?: { epoch: number; activeId: number };
  page?: { guid: string; page: number; version: number };
  /** Set when a crash tore this write: only a prefix of its bytes landed. */
  torn?: { keepFraction: number };
  what: string;
}

export interface SimStoreHooks {
  /** The controller's epoch now (for writes that do not carry one). */
  epochNow(): number;
  /** Called as each operation lands, before it runs against the device. */
  onLand(l: Landing): void;
  /** Run a completion for the controller: at once, or when it resumes if paused. */
  deliver(fn: () => void): void;
  /** The controller is paused now: an operation landing now may wait for it (seeded). */
  paused(): boolean;
}

/** What a crash armed on this store does to the next write of a kind it names. */
export interface ArmedCrash {
  kinds: ReadonlySet<StoreWriteKind>;
  /** Bytes of the write that land, as a fraction of its length: 0 <= f < 1. */
  keepFraction: number;
  /** Decides at landing whether this write may be torn (false: it lands whole, then the crash). */
  mayTear(kind: StoreWriteKind): boolean;
  /** Kill the controller: called right after the torn write landed. */
  crash(l: Landing): void;
}

export class SimStore implements BlockStore {
  readonly counters: SimStoreCounters = { pageReads: 0, pageWrites: 0, tableWrites: 0, syncs: 0 };
  /** False once the controller using it is killed: completions are never delivered. */
  alive = true;
  /** Set by the harness. */
  hooks: SimStoreHooks | null = null;
  /**
   * When set, a paused controller's operation that has not landed yet waits
   * for the resume before it lands (it sat in the thread pool, which a
   * SIGSTOP stops too) instead of landing in the kernel during the pause.
   */
  deferLandingWhilePaused = false;
  private armed: ArmedCrash | null = null;
  private stalled: (() => void)[] | null = null;
  private stallWhat: 'all' | 'pageWrites' | 'clears' | 'syncs' = 'all';
  private syncFailures = 0;
  private waitingForResume: (() => void)[] = [];

  constructor(
    private readonly inner: PageStore,
    private readonly sched: Scheduler,
    private readonly rng: Prng,
    private readonly delayMaxMs: number,
    private readonly label: string,
    /** The device under `inner`, when writes to it can be torn. */
    private readonly device: TearableDevice | null = null,
  ) {}

  get superblock(): Superblock {
    return this.inner.superblock;
  }

  get pooled(): boolean {
    return this.inner.pooled;
  }

  /** The next write of one of `crash.kinds` crashes the controller as it lands. */
  armCrash(crash: ArmedCrash): void {
    this.armed = crash;
  }

  disarmCrash(): void {
    this.armed = null;
  }

  get crashArmed(): boolean {
    return this.armed !== null;
  }

  /** Operations held while the controller was paused land now, in issue order. */
  resumed(): void {
    const w = this.waitingForResume;
    this.waitingForResume = [];
    for (const f of w) this.sched.after(0, `${this.label} store op after resume`, f);
  }

  readPage(loc: PageLocation, page: number): Promise<StoredPage> {
    this.counters.pageReads++;
    return this.complete('read', `readPage ${page}`, () => this.inner.readPage(loc, page));
  }

  writePage(loc: PageLocation, page: number, version: number, epoch: number, data: Buffer, crc?: number, slotsOurs?: boolean): Promise<void> {
    this.counters.pageWrites++;
    return this.complete('page', `writePage ${page} v${version}`, () => this.inner.writePage(loc, page, version, epoch, data, crc, slotsOurs), {
      writerEpoch: epoch,
      page: { guid: loc.guid, page, version },
    });
  }

  clearExtent(dataOffset: number, bytes: number): Promise<void> {
    return this.complete('clear', 'clearExtent', () => this.inner.clearExtent(dataOffset, bytes));
  }

  repairAfterWriter(pages: readonly PageRange[]): Promise<number> {
    return this.complete('read', 'repairAfterWriter', () => this.inner.repairAfterWriter(pages));
  }

  /** The pool's generation as it is now (read when an outcome is delivered). */
  poolGeneration(): number {
    return this.inner.poolGeneration();
  }

  refreshPool(): Promise<number> {
    return this.complete('read', 'refreshPool', () => this.inner.refreshPool());
  }

  readTable(): Promise<{ seq: number; records: AllocationRecord[] }> {
    return this.complete('read', 'readTable', () => this.inner.readTable());
  }

  writeTable(records: AllocationRecord[]): Promise<number> {
    this.counters.tableWrites++;
    return this.complete('table', 'writeTable', () => this.inner.writeTable(records));
  }

  readMailbox(): Promise<Mailbox> {
    return this.complete('read', 'readMailbox', () => this.inner.readMailbox());
  }

  writeMailboxSlot(slot: MailboxSlot): Promise<void> {
    return this.complete('slot', 'writeMailboxSlot', () => this.inner.writeMailboxSlot(slot));
  }

  writeEpochRecord(rec: Omit<EpochRecord, 'seq'>): Promise<EpochRecord> {
    return this.complete('epoch', `writeEpochRecord e${rec.epoch}/${rec.activeId}`, () => this.inner.writeEpochRecord(rec), {
      record: { epoch: rec.epoch, activeId: rec.activeId },
    });
  }

  sync(): Promise<void> {
    this.counters.syncs++;
    if (this.syncFailures > 0) {
      this.syncFailures--;
      return this.complete('sync', 'sync (failing)', () => Promise.reject(new Error('simulated fsync failure: EIO')));
    }
    return this.complete('sync', 'sync', () => this.inner.sync());
  }

  /** The next n syncs fail with EIO (the device lost writes it had taken). */
  failNextSyncs(n: number): void {
    this.syncFailures = n;
  }

  close(): Promise<void> {
    return this.complete('close', 'close', () => this.inner.close());
  }

  /**
   * Hold operations issued from now on (neither landing nor completing) until
   * unstall(); 'pageWrites' holds only writePage (destages), so reads go on;
   * 'clears' holds only clearExtent (a new extent being zeroed); 'syncs'
   * only sync.
   */
  stall(what: 'all' | 'pageWrites' | 'clears' | 'syncs' = 'all'): void {
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
  private complete<T>(kind: Landing['kind'], what: string, op: () => Promise<T>, extra: Partial<Landing> = {}): Promise<T> {
    const writerEpoch = extra.writerEpoch ?? this.hooks?.epochNow() ?? 0;
    return new Promise<T>((resolve, reject) => {
      const start = (): void => {
        const delayMs = this.rng.int(this.delayMaxMs + 1);
        const landMs = this.rng.int(delayMs + 1);
        let real: Promise<T> | null = null;
        let landed = false;
        /** The completion came due before the operation landed (it waits for a resume). */
        let finishWhenLanded = false;
        const deliver = (): void => {
          if (!this.alive || real === null) return;
          const r = real;
          if (this.hooks === null) r.then(resolve, reject);
          else this.hooks.deliver(() => r.then(resolve, reject));
        };
        const land = (): void => {
          if (!this.alive) return;
          landed = true;
          const l: Landing = { kind, writerEpoch, what, ...extra };
          const crash = this.armed;
          if (crash !== null && kind !== 'read' && kind !== 'sync' && kind !== 'close' && crash.kinds.has(kind)) {
            this.armed = null;
            if (crash.mayTear(kind) && this.device !== null) {
              // The process dies inside this write: a prefix of its bytes reaches the device.
              l.torn = { keepFraction: crash.keepFraction };
              this.device.tearNext(crash.keepFraction);
            }
            this.hooks?.onLand(l);
            op().catch(() => undefined);
            crash.crash(l);
            return;
          }
          this.hooks?.onLand(l);
          real = op();
          // Keep an unobserved rejection from escaping before completion delivers it.
          real.catch(() => undefined);
          if (finishWhenLanded) deliver();
        };
        this.sched.after(landMs, `${this.label} store ${what} lands`, () => {
          if (this.deferLandingWhilePaused && this.hooks?.paused() === true) this.waitingForResume.push(land);
          else land();
        });
        const finish = (): void => {
          if (landed) deliver();
          else finishWhenLanded = true;
        };
        this.sched.after(delayMs, `${this.label} store ${what} done`, finish);
      };
      if (this.stalled !== null && (this.stallWhat === 'all' || kind === STALL_KIND[this.stallWhat])) this.stalled.push(start);
      else start();
    });
  }
}

/** The operation kind each stall mode holds. */
const STALL_KIND = { pageWrites: 'page', clears: 'clear', syncs: 'sync' } as const;

/**
 * A Device over a MemoryDevice whose next write can be torn at a fraction of
 * its length (MemoryDevice.tearNextWrite takes bytes; a crash does not know
 * how long the write it interrupts is).
 */
export class TearableDevice implements Device {
  private tearFraction: number | null = null;

  constructor(readonly inner: MemoryDevice) {}

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }

  /** The next write keeps floor(fraction * length) bytes, then rejects. */
  tearNext(fraction: number): void {
    this.tearFraction = fraction;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.inner.read(offset, length);
  }

  write(offset: number, data: Buffer): Promise<void> {
    const f = this.tearFraction;
    if (f !== null) {
      this.tearFraction = null;
      this.inner.tearNextWrite(Math.floor(f * data.length));
    }
    return this.inner.write(offset, data);
  }

  sync(): Promise<void> {
    return this.inner.sync();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
