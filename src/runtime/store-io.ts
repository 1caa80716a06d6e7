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

/** Carry out op on store (or a fence action); the outcome, never a throw. */
export function runIo(store: BlockStore, fence: FenceActions, op: IoOp): Promise<IoOutcome> {
  let run: Promise<unknown>;
  try {
    run = start(store, fence, op);
  } catch (err) {
    run = Promise.reject(err);
  }
  return run.then(
    (value): IoOutcome => ({ ok: true, value }),
    (err: unknown): IoOutcome => ({ ok: false, error: err instanceof Error ? err : new Error(String(err)) }),
  );
}

function start(store: BlockStore, fence: FenceActions, op: IoOp): Promise<unknown> {
  switch (op.kind) {
    case 'readPage': return store.readPage(op.loc, op.page);
    case 'writePage': return store.writePage(op.loc, op.page, op.version, op.epoch, op.data, op.crc, op.slotsOurs);
    case 'clearExtent': return store.clearExtent(op.dataOffset, op.bytes);
    case 'repairAfterWriter': return store.repairAfterWriter(op.pages);
    case 'readTable': return store.readTable();
    case 'writeTable': return store.writeTable(op.records);
    case 'readMailbox': return store.readMailbox();
    case 'writeMailboxSlot': return store.writeMailboxSlot(op.slot);
    case 'writeEpochRecord': return store.writeEpochRecord(op.rec);
    case 'sync': return store.sync();
    case 'fencePartner': return fence.fencePartner(op.pid);
    case 'partnerGone': return fence.partnerGone(op.pid);
  }
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
