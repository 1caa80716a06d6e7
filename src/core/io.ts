// Store I/O as effects. The core does not call the store: it asks for an
// operation (IoOp) through CoreEnv.startIo with an id, and hears the outcome
// as an event, ControllerCore.onIoDone(id, outcome), the way it sends frames
// and hears replies. The runtime carries each operation out on the block
// store (src/runtime/store-io.ts); the simulator does too, completing each
// after a delay drawn by seed, failing or tearing some on purpose.

import type { AllocationRecord } from '../protocol/messages.js';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import type { EpochRecord, Mailbox, MailboxSlot, PageLocation, StoredPage } from '../protocol/store-records.js';
import type { Core } from './context.js';
import type { Future } from './tasks.js';

/** Every operation the core asks of the world outside it, with what each gives back. */
export interface IoResults {
  /** Of the page's two slots, the valid one with the higher version (version 0, zeros: never written). */
  readPage: StoredPage;
  writePage: void;
  /** Zero an extent of the data area for a new allocation. */
  clearExtent: void;
  /** Bytes gone over. */
  repairAfterWriter: number;
  readTable: { seq: number; records: AllocationRecord[] };
  /** The table's new sequence number. */
  writeTable: number;
  readMailbox: Mailbox;
  writeMailboxSlot: void;
  writeEpochRecord: EpochRecord;
  /** Make every completed write durable. */
  sync: void;
  /** Stop the partner from outside (the configured fence action): true when it is known stopped. */
  fencePartner: boolean;
  /** True only when the partner's process is known to be gone. */
  partnerGone: boolean;
  /** The pool's generation after its members' labels were read again (0: the store is not a pool). */
  refreshPool: number;
  /** The pool's generation, answered at once; its outcome is held like any other until the partner has caught up (pool-sync.ts). */
  poolBarrier: number;
}

export type IoOp =
  | { kind: 'readPage'; loc: PageLocation; page: number }
  /** slotsOurs: nobody else has written the page to the store since we last did (the store may then skip reading its slots). */
  | { kind: 'writePage'; loc: PageLocation; page: number; version: number; epoch: number; data: Buffer; crc: number; slotsOurs: boolean }
  | { kind: 'clearExtent'; dataOffset: number; bytes: number }
  /** The partner died: its writes in flight to these pages (and the metadata) may have reached only part of the pool. */
  | { kind: 'repairAfterWriter'; pages: { loc: PageLocation; first: number; count: number }[] }
  | { kind: 'readTable' }
  | { kind: 'writeTable'; records: AllocationRecord[] }
  | { kind: 'readMailbox' }
  | { kind: 'writeMailboxSlot'; slot: MailboxSlot }
  | { kind: 'writeEpochRecord'; rec: Omit<EpochRecord, 'seq'> }
  | { kind: 'sync' }
  | { kind: 'fencePartner'; pid: number }
  | { kind: 'partnerGone'; pid: number }
  /** Read the pool members' labels again: a member the partner's pool object failed is not used here either (pool-sync.ts). */
  | { kind: 'refreshPool' }
  /** Nothing to do on the store: its outcome, held until the partner has our pool generation, is the barrier a pool job waits on. */
  | { kind: 'poolBarrier' };

export type IoKind = IoOp['kind'];

/**
 * How an operation ended: its value, or the error it failed with. Over a
 * pool, poolGeneration is set when the pool's generation grew since the
 * store's last outcome (a member failed on our path): see pool-sync.ts.
 */
export type IoOutcome = { ok: true; value: unknown; poolGeneration?: number } | { ok: false; error: Error; poolGeneration?: number };

/** The operations in flight, by id. */
export class StoreIo {
  private nextId = 1;
  private readonly pending = new Map<number, { kind: IoKind; done: Future<unknown> }>();

  constructor(private readonly c: Core) {}

  /** Ask for op; the Future settles when its outcome comes back (onIoDone). */
  run<K extends IoKind>(op: Extract<IoOp, { kind: K }>): Future<IoResults[K]> {
    const id = this.nextId;
    this.nextId = this.nextId >= Number.MAX_SAFE_INTEGER ? 1 : this.nextId + 1;
    const f = this.c.tasks.future<IoResults[K]>();
    this.pending.set(id, { kind: op.kind, done: f as Future<unknown> });
    this.c.env.startIo(id, op);
    return f;
  }

  /**
   * An operation's outcome. An id not in flight (answered twice, or never
   * asked) is ignored. A failure the store did not type is IO_ERROR, naming
   * the operation: that is what a client asking for it hears.
   */
  done(id: number, outcome: IoOutcome): void {
    const p = this.pending.get(id);
    if (p === undefined) {
      this.c.env.log.warn({ id }, 'store outcome for no operation in flight');
      return;
    }
    this.pending.delete(id);
    // The partner may first have to stop reading a pool member we gave up on.
    if (this.c.poolSync.mustHold(p.kind, outcome)) {
      this.c.poolSync.hold(() => this.settle(p, outcome));
      return;
    }
    this.settle(p, outcome);
  }

  private settle(p: { kind: IoKind; done: Future<unknown> }, outcome: IoOutcome): void {
    if (outcome.ok) p.done.resolve(outcome.value);
    else if (isPagepairError(outcome.error)) p.done.reject(outcome.error);
    else p.done.reject(new PagepairError('IO_ERROR', `store ${p.kind} failed: ${outcome.error.message}`));
  }

  /** Operations asked for and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }
}
