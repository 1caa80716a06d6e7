// The core's store operations carried out on a block store: the runtime's
// (and the simulator's) side of CoreEnv.startIo. Each operation's outcome
// goes back to the core as an event, core.onIoDone(id, outcome), after the
// call that asked for it has returned.

import type { IoOp, IoOutcome, StoreLayout } from '../core/env.js';
import type { BlockStore } from '../store/types.js';
import { extentBytes, lockGroupPages } from '../store/layout.js';
import { findExtent } from '../store/extents.js';

/** What a fence action does (the configured one, or nothing). */
export interface FenceActions {
  /** Stop the partner from outside: true when it is known stopped. */
  fencePartner(pid: number): Promise<boolean>;
  /** True only when the partner's process is known to be gone. */
  partnerGone(pid: number): Promise<boolean>;
}

/** Per store: the pool generation its last outcome reported (pool-sync.ts in the core). */
const reportedPoolGeneration = new WeakMap<BlockStore, number>();

/**
 * Carry out op on store (or a fence action); the outcome, never a throw.
 * Over a pool, the first outcome after the pool's generation grew (a member
 * failed, on this operation's path or another's) carries it, success or
 * failure, so the core tells the partner before it acts on it.
 */
export function runIo(store: BlockStore, fence: FenceActions, op: IoOp): Promise<IoOutcome> {
  let run: Promise<unknown>;
  try {
    run = start(store, fence, op);
  } catch (err) {
    run = Promise.reject(err);
  }
  return run.then(
    (value): IoOutcome => withPoolGeneration(store, { ok: true, value }),
    (err: unknown): IoOutcome => withPoolGeneration(store, { ok: false, error: err instanceof Error ? err : new Error(String(err)) }),
  );
}

function withPoolGeneration(store: BlockStore, outcome: IoOutcome): IoOutcome {
  const generation = store.poolGeneration?.() ?? 0;
  if (generation === 0) return outcome;
  if (generation > (reportedPoolGeneration.get(store) ?? 0)) {
    reportedPoolGeneration.set(store, generation);
    outcome.poolGeneration = generation;
  }
  return outcome;
}

function start(store: BlockStore, fence: FenceActions, op: IoOp): Promise<unknown> {
  switch (op.kind) {
    case 'readPage': return store.readPage(op.loc, op.page);
    case 'writePage': return store.writePage(op.loc, op.page, op.version, op.epoch, op.data, op.crc, op.slotsOurs);
    case 'clearExtent': return store.clearExtent(op.dataOffset, op.bytes);
    case 'repairAfterWriter': return store.repairAfterWriter(op.pages);
    case 'readTable': return store.readTable();
    case 'writeTable': return store.writeTable(op.records);
    case 'readMailbox': return readMailbox(store);
    case 'writeMailboxSlot': return store.writeMailboxSlot(op.slot);
    case 'writeEpochRecord': return store.writeEpochRecord(op.rec);
    case 'sync': return store.sync();
    case 'fencePartner': return fence.fencePartner(op.pid);
    case 'partnerGone': return fence.partnerGone(op.pid);
    case 'refreshPool': return store.refreshPool?.() ?? Promise.resolve(0);
    case 'poolBarrier': return Promise.resolve(store.poolGeneration?.() ?? 0);
  }
}

/**
 * Arbitration reads the partner's heartbeat and the epoch record here: over
 * a pool, the labels are read again first, so not from a member the
 * partner gave up on (even with the link down, when no SENSE can say so).
 */
function readMailbox(store: BlockStore): Promise<unknown> {
  if ((store.poolGeneration?.() ?? 0) === 0 || store.refreshPool === undefined) return store.readMailbox();
  return store.refreshPool().then(() => store.readMailbox());
}

/** The layout facts the core places allocations by, from a store's superblock. */
export function storeLayout(store: BlockStore): StoreLayout {
  const { dataBytes, alignBytes } = store.superblock.geometry;
  return {
    dataBytes,
    extentBytes: (pageSizeBytes, pageCount) => extentBytes(pageSizeBytes, pageCount, alignBytes),
    findExtent: (used, bytes) => findExtent(used, bytes, dataBytes, alignBytes),
    lockGroupPages: (pageSizeBytes) => lockGroupPages(pageSizeBytes, alignBytes),
    repairsAfterWriter: store.pooled,
  };
}
