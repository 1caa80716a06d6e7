// What a controller tells about itself: the counters the rooms keep, and the
// status document `pagepair status` and the tests read.

import { Role } from '../protocol/messages.js';
import type { EpochRecord } from '../protocol/store-records.js';
import type { Core } from './context.js';

export interface CoreCounters {
  clientWrites: number;
  clientReads: number;
  bytesWritten: number;
  bytesRead: number;
  pagesMirroredOut: number;
  pagesMirroredIn: number;
  pagesStaged: number;
  /** Pages read from the store with one of their two slots damaged (a torn write): the other copy was used. */
  tornSlotsRecovered: number;
  pagesDestaged: number;
  destageErrors: number;
  lockRequestsSent: number;
  lockGrants: number;
  joins: number;
  /** Attempts of a client write not applied because a retry of it was applied first. */
  retriesSuppressed: number;
  /** Origin pages copied into a snapshot before their first write after it (snapshots.ts). */
  snapshotCopies: number;
  /** TAKEs answered "not granted": the pages were not ours to hand on. */
  lockRefusals: number;
  /** Times the partner broke the ownership rules, or the two copies of a page were seen to differ (never, when all is well). */
  ownershipConflicts: number;
  /** Pages a join's resync found at one version with two contents, settled by the side whose state won. */
  resyncContentConflicts: number;
  /** Takeovers after which the pool was asked to agree again where the partner had been writing. */
  partnerRepairs: number;
  /** Store outcomes held until the partner had refreshed its pool to our generation (pool-sync.ts). */
  poolOutcomesHeld: number;
  /** Refreshes of our pool asked for by the partner's generation. */
  poolRefreshes: number;
  /** Of those, the ones that failed (we fenced ourselves). */
  poolRefreshFailures: number;
  /** Client requests refused ACCESS_DENIED: a keyed allocation not unlocked, or C_UNLOCK with a wrong key or unknown guid. */
  accessDenied: number;
}

export function newCounters(): CoreCounters {
  return {
    clientWrites: 0,
    clientReads: 0,
    bytesWritten: 0,
    bytesRead: 0,
    pagesMirroredOut: 0,
    pagesMirroredIn: 0,
    pagesStaged: 0,
    tornSlotsRecovered: 0,
    pagesDestaged: 0,
    destageErrors: 0,
    lockRequestsSent: 0,
    lockGrants: 0,
    joins: 0,
    retriesSuppressed: 0,
    snapshotCopies: 0,
    lockRefusals: 0,
    ownershipConflicts: 0,
    resyncContentConflicts: 0,
    partnerRepairs: 0,
    poolOutcomesHeld: 0,
    poolRefreshes: 0,
    poolRefreshFailures: 0,
    accessDenied: 0,
  };
}

export interface CoreStatus {
  controller: 'A' | 'B';
  role: string;
  epoch: number;
  mirroring: boolean;
  /** digests: the partner's, as its answer to our last heartbeat gave them. */
  partner: { link: 'up' | 'down'; role: string | null; lastHeardMsAgo: number | null; digests: { table: string; dirty: string } | null } | null;
  allocations: number;
  /** The store space allocations hold, by kind (and what is left). */
  space: SpaceStatus;
  cachedPages: number;
  cachedBytes: number;
  cacheBytesMax: number;
  dirtyPages: number;
  dirtyBytes: number;
  destageInFlight: number;
  destageQueue: number;
  openPointers: number;
  /** While the partner joins: how far sending it our state has come. */
  resync: { authoritative: boolean | null; pagesToSend: number; pagesSent: number; done: boolean; partnerDone: boolean } | null;
  /** The store lease and the epoch record as last read. */
  lease: { valid: boolean; epochRecord: EpochRecord | null } | null;
  digests: { table: string; dirty: string };
  counters: CoreCounters & { evictions: number };
  senseCode: number;
  /** The last `pagepair verify` run reported to us: how long ago, pages compared, pages whose copies differed, of those repaired, and pages left busy. null: never. */
  lastVerify: { msAgo: number; pagesChecked: number; mismatches: number; repaired: number; unsettled: number } | null;
}

/** Bytes of store space the allocations of one kind hold (extents reserved, whatever is written). */
export interface SpaceOfKind {
  count: number;
  bytes: number;
}

/**
 * The store space allocations hold, by kind: volumes (ordinary allocations),
 * snapshots (each reserves its volume's size when made), checkpoint regions
 * (keyed, named region:NAME) and other keyed allocations; and the data area.
 */
export interface SpaceStatus {
  volumes: SpaceOfKind;
  snapshots: SpaceOfKind;
  regions: SpaceOfKind;
  keyed: SpaceOfKind;
  dataBytes: number;
  freeBytes: number;
}

function spaceStatus(core: Core): SpaceStatus {
  const kinds = { volumes: { count: 0, bytes: 0 }, snapshots: { count: 0, bytes: 0 }, regions: { count: 0, bytes: 0 }, keyed: { count: 0, bytes: 0 } };
  let used = 0;
  for (const a of core.allocator.allocs.values()) {
    const bytes = core.cfg.store.extentBytes(a.record.pageSizeBytes, a.record.pageCount);
    used += bytes;
    const kind = a.record.snapshot === true ? kinds.snapshots : a.record.keyDigest !== undefined ? (a.record.name.startsWith('region:') ? kinds.regions : kinds.keyed) : kinds.volumes;
    kind.count++;
    kind.bytes += bytes;
  }
  return { ...kinds, dataBytes: core.cfg.store.dataBytes, freeBytes: Math.max(0, core.cfg.store.dataBytes - used) };
}

export function coreStatus(core: Core): CoreStatus {
  const c = core.cache.counters();
  const now = core.env.nowMs();
  return {
    controller: core.selfId === 1 ? 'A' : 'B',
    role: roleName(core.membership.role),
    epoch: core.membership.epoch,
    mirroring: core.cfg.mirroring,
    partner: core.cfg.mirroring
      ? {
          link: core.membership.linkUp ? 'up' : 'down',
          role: core.membership.partnerSense === null ? null : roleName(core.membership.partnerSense.role),
          lastHeardMsAgo: core.membership.linkUp ? Math.round(now - core.membership.partnerLastHeardMs) : null,
          digests: core.membership.partnerSense === null || !core.membership.linkUp ? null : { table: core.membership.partnerSense.tableDigest, dirty: core.membership.partnerSense.dirtyDigest },
        }
      : null,
    allocations: core.allocator.allocs.size,
    space: spaceStatus(core),
    cachedPages: c.cachedPages,
    cachedBytes: c.cachedBytes,
    cacheBytesMax: core.cfg.cacheBytesMax,
    dirtyPages: c.dirtyPages,
    dirtyBytes: c.dirtyBytes,
    destageInFlight: core.destager.destagesInFlight,
    destageQueue: core.destager.destageQueueLength(),
    openPointers: core.pointers.open.size,
    resync:
      core.joining.current === null
        ? null
        : {
            authoritative: core.joining.current.authoritative ?? null,
            pagesToSend: core.joining.current.pagesToSend,
            pagesSent: core.joining.current.pagesSent,
            done: core.joining.current.pushDone,
            partnerDone: core.joining.current.partnerDone,
          },
    lease: core.membership.arbiter === null ? null : { valid: core.membership.arbiter.leaseValid(), epochRecord: core.membership.arbiter.epochRecord },
    digests: { table: core.allocator.tableDigest(), dirty: core.cache.dirtyDigest.toString() },
    counters: { ...core.counters, evictions: c.evictions },
    senseCode: core.membership.senseCode,
    lastVerify:
      core.verifier.lastVerify === null
        ? null
        : {
            msAgo: Math.round(now - core.verifier.lastVerify.atMs),
            pagesChecked: core.verifier.lastVerify.pagesChecked,
            mismatches: core.verifier.lastVerify.mismatches,
            repaired: core.verifier.lastVerify.repaired,
            unsettled: core.verifier.lastVerify.unsettled,
          },
  };
}

/** Each role's name: its key in Role, in lower case ("mirrored", "alone", ...). */
const ROLE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Role).map(([key, code]) => [code, key.toLowerCase()]));

export function roleName(role: number): string {
  return ROLE_NAMES[role] ?? `role-${role}`;
}

