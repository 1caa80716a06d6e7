// An allocation as the core keeps it: the table record, its cached pages,
// which controller may write each page, and the pointers open on it.

import type { AllocationRecord } from '../protocol/messages.js';
import type { PointerModeCode } from '../protocol/messages.js';
import type { CachePage } from './page-cache.js';
import type { Future } from './tasks.js';
import { guidToBytes } from './digest.js';

export interface PointerState {
  readonly id: number;
  readonly mode: PointerModeCode;
  readonly alloc: AllocState;
  readonly firstPage: number;
  readonly pageCount: number;
  /** Controller that handed it out. */
  readonly holderId: number;
  /** Client connection that holds it (only on the holder). */
  readonly connId: number;
  lastUsedMs: number;
  /** Write pointers: page -> contents to install on commit. */
  readonly shadows: Map<number, { version: number; crc: number; data: Buffer }>;
  /** Read pointers: the pages pinned in our cache. */
  readonly pinned: CachePage[];
  /** The partner knows of it (it was opened while mirrored). */
  readonly mirrored: boolean;
}

export interface AllocState {
  readonly record: AllocationRecord;
  readonly guidBytes: Buffer;
  readonly sizeBytes: number;
  readonly pages: Map<number, CachePage>;
  /** Per page: the controller id that owns (may write and destage) it. */
  readonly owner: Uint8Array;
  /**
   * Per page: how many times its ownership moved since the pair last joined.
   * Both sides agree on it once the frame that moved it is handled; a grant,
   * GIVE or WRITE_PAGE that carries another generation is stale.
   */
  readonly ownerGen: Uint32Array;
  readonly pointers: Set<PointerState>;
  /** Store reads in flight; superseded when a newer version arrives meanwhile. */
  readonly staging: Map<number, { future: Future<CachePage>; superseded: boolean }>;
  destagesInFlight: number;
  released: boolean;
  /** Released because this controller reset itself, not by a client: it lives on at the partner. */
  lostInReset: boolean;
  /**
   * Versions of pages not in the cache, where known (NaN where not): all 0
   * for an allocation created since start (its extent was zeroed), and the
   * version of every clean page the cache evicted since. A page overwritten
   * whole needs only its version, so it is not read from the store.
   */
  knownVersions: Float64Array | null;
  /** Snapshots of this allocation (src/core/snapshots.ts), replaced whole on every change (so a write can tell the set moved). */
  snapshots: readonly AllocState[];
  /** A snapshot: the allocation it is a snapshot of (null until that is installed). Null for an ordinary allocation. */
  origin: AllocState | null;
  /**
   * Closed at the partner of the controller making a snapshot of it, from
   * the snapshot's install until the answer is sent: its writes wait before
   * they apply (snapshots.ts).
   */
  gate: Future<void> | null;
  /** Snapshots of it this controller is making (asked the partner, not installed yet). */
  snapshotsPending: number;
}

const NO_SNAPSHOTS: readonly AllocState[] = [];

export function newAllocState(record: AllocationRecord, initialOwner: number): AllocState {
  return {
    record,
    guidBytes: guidToBytes(record.guid),
    sizeBytes: record.pageSizeBytes * record.pageCount,
    pages: new Map(),
    owner: new Uint8Array(record.pageCount).fill(initialOwner),
    ownerGen: new Uint32Array(record.pageCount),
    pointers: new Set(),
    staging: new Map(),
    destagesInFlight: 0,
    released: false,
    lostInReset: false,
    knownVersions: null,
    snapshots: NO_SNAPSHOTS,
    origin: null,
    gate: null,
    snapshotsPending: 0,
  };
}

/** The open pointer overlapping [first, first+count), if any. */
export function overlappingPointer(alloc: AllocState, first: number, count: number, except?: PointerState): PointerState | undefined {
  for (const p of alloc.pointers) {
    if (p === except) continue;
    if (p.firstPage < first + count && first < p.firstPage + p.pageCount) return p;
  }
  return undefined;
}

/** Record fields in a fixed order, for the table digest and comparisons. */
export function recordFields(r: AllocationRecord): (string | number)[] {
  // A keyed allocation's digest counts: the two sides must agree on who may use it.
  const fields: (string | number)[] = [r.guid, r.name, r.policy, r.pageSizeBytes, r.pageCount, r.dataOffset, r.createdEpoch];
  if (r.keyDigest !== undefined) fields.push(`key:${r.keyDigest.toString('hex')}`);
  if (r.snapshot === true) fields.push('snapshot');
  return fields;
}
