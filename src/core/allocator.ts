// Allocations: creating one (SPACE_REQUEST reserves an extent at both, the
// coordinator zeroes it, ALLOCATE installs it at both), releasing one once
// no store write of it can still land, the allocation table kept in the
// store, and the checks every request makes of a guid and a range.

import { Role, type Allocate, type CAllocate, type CRelease, type Release, type SpaceRequest } from '../protocol/messages.js';
import { PagepairError, invariant } from '../protocol/errors.js';
import type { AllocationRecord } from '../protocol/messages.js';
import type { PageLocation } from '../protocol/store-records.js';
import { newAllocState, recordFields, type AllocState } from './allocation.js';
import { SetDigest, tableMember } from './digest.js';
import { keyDigestOfAllocate, keyFieldsOf } from './access-keys.js';
import { unknownGuid } from './shared.js';
import { originNameOf } from './snapshots.js';
import type { Core } from './context.js';
import { settle, wait, type Future, type Task } from './tasks.js';

/** ALLOCATE with this reservation id replays a table entry during a join. */
export const SYNC_RESERVATION = 0xffff_ffff;

/** How long a reservation waits for its ALLOCATE, on top of the time the coordinator may take to zero the extent. */
export const RESERVATION_TTL_MS = 10_000;

/**
 * A slow disk's zeroing rate (32 MiB/s), as bytes per ms: the coordinator
 * zeroes a new extent (store.clearExtent) between SPACE_REQUEST and ALLOCATE,
 * or while it handles ALLOCATE, which for a volume of some GiB takes longer
 * than RESERVATION_TTL_MS or a peer request's timeout.
 */
export const ZEROING_BYTES_PER_MS = (32 * 1024 * 1024) / 1000;

/** The time zeroing an extent of `bytes` may take, at the slow disk's rate. */
export function zeroingAllowanceMs(bytes: number): number {
  return Math.ceil(bytes / ZEROING_BYTES_PER_MS);
}

/** An extent held for an allocation being made: ours (held until it is installed) or the partner's (until its ALLOCATE, or a timeout). */
export interface Reservation {
  id: number;
  dataOffset: number;
  bytes: number;
  /** Reserved for the partner's SPACE_REQUEST: it lapses at expiresMs, or when the link goes. */
  forPartner: boolean;
  expiresMs: number;
}

export function checkName(name: string): void {
  if (name.length === 0 || Buffer.byteLength(name) > 64) {
    throw new PagepairError('BAD_FIELD', 'name must be 1 to 64 bytes of UTF-8', 'name');
  }
}

export class Allocator {
  readonly allocs = new Map<string, AllocState>();
  readonly names = new Set<string>();
  tableDigestText: string | null = null;
  /** The last table write asked for; each waits for the one before. */
  private tableChain: Future<void> | null = null;
  private readonly reservations = new Map<number, Reservation>();
  private nextReservationId = 1;
  private releaseWaiters: Future<void>[] = [];
  /** Allocations released whose extents may still receive a store write. */
  readonly draining = new Set<AllocState>();

  constructor(private readonly c: Core) {}

  /** The link is gone: reservations made for the partner's requests go with it. */
  linkDown(): void {
    for (const [id, r] of this.reservations) if (r.forPartner) this.reservations.delete(id);
  }

  /** The partner's reservations whose ALLOCATE never came. Ours last until their allocation is installed or fails. */
  expireReservations(now: number): void {
    for (const [id, r] of this.reservations) if (r.forPartner && r.expiresMs < now) this.reservations.delete(id);
  }

  /** What C_LIST answers: at most `max` allocations. A keyed one is listed as keyed, never with its key's digest. */
  list(max: number): { guid: string; name: string; policy: string; pageSizeBytes: number; pageCount: number; keyed: boolean; origin: string }[] {
    return [...this.allocs.values()].slice(0, max).map((a) => ({
      guid: a.record.guid,
      name: a.record.name,
      policy: a.record.policy,
      pageSizeBytes: a.record.pageSizeBytes,
      pageCount: a.record.pageCount,
      keyed: a.record.keyDigest !== undefined,
      origin: a.origin?.record.guid ?? '',
    }));
  }

  private extentBytes(pageSizeBytes: number, pageCount: number): number {
    return this.c.cfg.store.extentBytes(pageSizeBytes, pageCount);
  }

  /** Controller 1 places extents and writes the table while mirrored; so no two allocations overlap. */
  /** Alone we own everything; mirrored, a new allocation starts owned by controller 1. */
  private defaultOwner(): number {
    return !this.c.cfg.mirroring || this.c.membership.role === Role.ALONE ? this.c.selfId : 1;
  }

  /** Who places extents and writes the table: alone, ourselves; joining, the side whose state wins; mirrored, controller 1. */
  isCoordinator(): boolean {
    if (!this.c.cfg.mirroring || this.c.membership.role === Role.ALONE) return true;
    if (this.c.joining.current !== null) return this.c.joining.current.authoritative === true;
    return this.c.selfId === 1 && this.c.membership.role === Role.MIRRORED;
  }

  /** The allocation made, and its access key when keyed (16 zero bytes when not: the reply always carries 16 bytes). */
  *clientAllocate(msg: CAllocate): Task<{ record: AllocationRecord; key: Buffer }> {
    this.c.membership.requireWritable();
    const policy = this.c.cfg.policies.get(msg.policy === '' ? 'default' : msg.policy);
    if (policy === undefined) {
      throw new PagepairError('POLICY_UNKNOWN', `no policy named "${msg.policy}" (known: ${[...this.c.cfg.policies.keys()].join(', ')})`, 'policy');
    }
    checkName(msg.name);
    if (!Number.isSafeInteger(msg.sizeBytes) || msg.sizeBytes <= 0) {
      throw new PagepairError('BAD_FIELD', `sizeBytes must be a positive integer, got ${msg.sizeBytes}`, 'sizeBytes');
    }
    const pageCount = Math.ceil(msg.sizeBytes / policy.pageSizeBytes);
    if (pageCount > 0xffff_ffff) throw new PagepairError('TOO_LARGE', `${msg.sizeBytes} bytes is more than 2^32 pages`, 'sizeBytes');
    return yield* this.allocate({ name: msg.name, policyName: policy.name, pageCount, keyed: msg.keyed === true, origin: null });
  }

  /**
   * Makes an allocation at both sides. `origin`: a copy-on-write snapshot of
   * it (snapshots.ts), with its origin's key digest; the partner installs it
   * first, with the origin's gate closed there until it has answered.
   */
  *allocate(spec: { name: string; policyName: string; pageCount: number; keyed: boolean; origin: AllocState | null }): Task<{ record: AllocationRecord; key: Buffer }> {
    this.c.membership.requireWritable();
    this.refuseDuringResync('allocate');
    const policy = this.c.cfg.policies.get(spec.policyName);
    if (policy === undefined) throw new PagepairError('POLICY_UNKNOWN', `no policy named "${spec.policyName}"`, 'policy');
    const name = spec.name;
    if (this.names.has(name)) throw new PagepairError('DUPLICATE', `an allocation named "${name}" exists`, 'name');
    const pageCount = spec.pageCount;
    const origin = spec.origin;
    const bytes = this.extentBytes(policy.pageSizeBytes, pageCount);
    const guid = this.c.env.newGuid();
    // The key leaves only in the reply; the record, the partner and the table get its digest.
    const keyed = spec.keyed ? this.c.access.newKey(guid) : null;
    const keyDigest = keyed?.digest ?? origin?.record.keyDigest;
    const base = {
      guid,
      name,
      policy: policy.name,
      pageSizeBytes: policy.pageSizeBytes,
      pageCount,
      createdEpoch: this.c.membership.epoch,
      ...(keyDigest === undefined ? {} : { keyDigest }),
      ...(origin === null ? {} : { snapshot: true }),
    };
    this.names.add(name); // held while we ask, so a second request for the name fails fast
    let installed = false;
    // A snapshot being made holds its origin: no release, no write pointer, until it is installed here.
    if (origin !== null) origin.snapshotsPending++;
    // Where we place the extent ourselves, it is held until the allocation is
    // installed: another allocation made meanwhile must not be placed over it.
    let local: Reservation | null = null;
    try {
      let record: AllocationRecord;
      if (!this.c.cfg.mirroring || this.c.membership.role === Role.ALONE) {
        local = this.reserve(this.placeExtent(bytes), bytes, false);
        record = { ...base, dataOffset: local.dataOffset };
      } else if (this.isCoordinator()) {
        local = this.reserve(this.placeExtent(bytes), bytes, false);
        const space = yield* wait(this.c.requests.request({ kind: 'SPACE_REQUEST', policy: policy.name, pageSizeBytes: policy.pageSizeBytes, pageCount, reserve: true, dataOffset: local.dataOffset }));
        invariant(space.kind === 'SPACE_REQUEST_REPLY', 'space reply');
        record = { ...base, dataOffset: local.dataOffset };
        // Zeroed before the partner can learn of it (and a client write there).
        yield* wait(this.c.io.run({ kind: 'clearExtent', dataOffset: record.dataOffset, bytes }));
        if (origin !== null) this.checkOrigin(origin);
        yield* wait(this.c.requests.request({ kind: 'ALLOCATE', ...record, ...keyFieldsOf(record), snapshot: record.snapshot === true, reservationId: space.reservationId }));
      } else {
        const space = yield* wait(this.c.requests.request({ kind: 'SPACE_REQUEST', policy: policy.name, pageSizeBytes: policy.pageSizeBytes, pageCount, reserve: true, dataOffset: -1 }));
        invariant(space.kind === 'SPACE_REQUEST_REPLY', 'space reply');
        record = { ...base, dataOffset: space.dataOffset };
        // The coordinator zeroes the extent before it answers.
        if (origin !== null) this.checkOrigin(origin);
        yield* wait(this.c.requests.request({ kind: 'ALLOCATE', ...record, ...keyFieldsOf(record), snapshot: record.snapshot === true, reservationId: space.reservationId }, zeroingAllowanceMs(bytes)));
      }
      if (!this.c.cfg.mirroring || this.c.membership.role === Role.ALONE) yield* wait(this.c.io.run({ kind: 'clearExtent', dataOffset: record.dataOffset, bytes }));
      // Its extent is zeroed: every page is at version 0, known without reading.
      this.installAllocation(record, this.defaultOwner(), true);
      installed = true;
      if (this.isCoordinator()) yield* wait(this.persistTable());
      this.c.env.log.info({ guid: record.guid, name: record.name, policy: record.policy, pageCount, pageSizeBytes: record.pageSizeBytes, keyed: keyed !== null, snapshotOf: origin?.record.guid }, origin === null ? 'allocation created' : 'snapshot created');
      return { record, key: keyed?.key ?? Buffer.alloc(16) };
    } finally {
      if (origin !== null) origin.snapshotsPending--;
      if (local !== null) this.reservations.delete(local.id);
      if (!installed) this.names.delete(name);
    }
  }

  /** Before the partner hears of a snapshot: its origin is still here, with no write pointer open. */
  private checkOrigin(origin: AllocState): void {
    if (origin.released) throw this.goneError(origin);
    this.c.snapshots.checkNoWritePointers(origin);
  }

  /** Extents in use: allocations, reservations, and released ones a store write may still reach. */
  private usedExtents(): { dataOffset: number; bytes: number }[] {
    const used = [...this.allocs.values(), ...this.draining].map((a) => ({ dataOffset: a.record.dataOffset, bytes: this.extentBytes(a.record.pageSizeBytes, a.record.pageCount) }));
    for (const r of this.reservations.values()) used.push({ dataOffset: r.dataOffset, bytes: r.bytes });
    return used;
  }

  private placeExtent(bytes: number): number {
    const used = this.usedExtents();
    const at = this.c.cfg.store.findExtent(used, bytes);
    if (at < 0) throw new PagepairError('NO_SPACE', `no free extent of ${bytes} bytes in the store`);
    return at;
  }

  private reserve(dataOffset: number, bytes: number, forPartner: boolean): Reservation {
    const expiresMs = forPartner ? this.c.env.nowMs() + RESERVATION_TTL_MS + zeroingAllowanceMs(bytes) : Number.POSITIVE_INFINITY;
    const r: Reservation = { id: this.nextReservationId++, dataOffset, bytes, forPartner, expiresMs };
    if (this.nextReservationId >= SYNC_RESERVATION) this.nextReservationId = 1;
    this.reservations.set(r.id, r);
    return r;
  }

  onSpaceRequest(req: SpaceRequest): void {
    const policy = this.c.cfg.policies.get(req.policy);
    if (policy === undefined) throw new PagepairError('POLICY_UNKNOWN', `no policy named "${req.policy}" here`, 'policy');
    const bytes = this.extentBytes(req.pageSizeBytes, req.pageCount);
    const free = {
      cacheBytesFree: Math.max(0, this.c.cfg.cacheBytesMax - this.c.cache.bytesDirty),
      storeBytesFree: this.storeBytesFree(),
    };
    if (!req.reserve) {
      this.c.requests.replyPeer(req, { kind: 'SPACE_REQUEST_REPLY', reservationId: 0, dataOffset: -1, ...free });
      return;
    }
    this.c.membership.requireWritable();
    let at = req.dataOffset;
    if (this.isCoordinator()) {
      if (at !== -1) throw new PagepairError('BAD_FIELD', 'the coordinator places extents; dataOffset must be -1', 'dataOffset');
      at = this.placeExtent(bytes);
    } else {
      if (at < 0) throw new PagepairError('BAD_FIELD', 'dataOffset must be given by the coordinator', 'dataOffset');
      for (const u of this.usedExtents()) {
        if (u.dataOffset < at + bytes && at < u.dataOffset + u.bytes) {
          throw new PagepairError('NO_SPACE', `extent at ${at} overlaps one in use here`, 'dataOffset');
        }
      }
    }
    const r = this.reserve(at, bytes, true);
    this.c.requests.replyPeer(req, { kind: 'SPACE_REQUEST_REPLY', reservationId: r.id, dataOffset: at, ...free });
  }

  private storeBytesFree(): number {
    let used = 0;
    for (const a of this.allocs.values()) used += this.extentBytes(a.record.pageSizeBytes, a.record.pageCount);
    return Math.max(0, this.c.cfg.store.dataBytes - used);
  }

  *onAllocate(req: Allocate): Task<void> {
    const keyDigest = keyDigestOfAllocate(req);
    const record: AllocationRecord = {
      guid: req.guid,
      name: req.name,
      policy: req.policy,
      pageSizeBytes: req.pageSizeBytes,
      pageCount: req.pageCount,
      dataOffset: req.dataOffset,
      createdEpoch: req.createdEpoch,
      ...(keyDigest === undefined ? {} : { keyDigest }),
      ...(req.snapshot ? { snapshot: true } : {}),
    };
    if (req.reservationId === SYNC_RESERVATION) {
      // A join replays the authoritative table.
      this.c.joining.current?.seenGuids.add(req.guid);
      const have = this.allocs.get(req.guid);
      if (have === undefined) {
        if (this.names.has(req.name)) this.dropByName(req.name);
        this.installAllocation(record, this.c.partnerId);
        this.c.env.log.info({ guid: req.guid, name: req.name, keyed: keyDigest !== undefined }, 'allocation received in join');
        // The coordinator may have died before writing it to the table; the
        // pair serves it from now on, so it must survive a restart of both.
        if (this.isCoordinator()) yield* wait(this.persistTable());
      } else if (!sameKey(have.record.keyDigest, keyDigest)) {
        // The side whose state wins the join says who may use it: a copy
        // read from an older table must not serve a keyed allocation openly.
        have.record.keyDigest = keyDigest;
        this.tableDigestText = null;
        this.c.env.log.warn({ guid: req.guid, keyed: keyDigest !== undefined }, 'join: the allocation\'s access key differed here; the partner\'s record was taken');
        if (this.isCoordinator()) yield* wait(this.persistTable());
      }
      this.c.requests.replyPeer(req, { kind: 'ALLOCATE_REPLY' });
      return;
    }
    this.c.membership.requireWritable();
    const r = this.reservations.get(req.reservationId);
    if (r === undefined || !r.forPartner || r.dataOffset !== req.dataOffset) {
      throw new PagepairError('BAD_FIELD', `no reservation ${req.reservationId} at offset ${req.dataOffset}`, 'reservationId');
    }
    if (this.allocs.has(req.guid)) throw new PagepairError('DUPLICATE', `allocation ${req.guid} exists`, 'guid');
    if (this.names.has(req.name)) throw new PagepairError('DUPLICATE', `an allocation named "${req.name}" exists`, 'name');
    if (!this.c.cfg.policies.has(req.policy)) throw new PagepairError('POLICY_UNKNOWN', `no policy named "${req.policy}" here`, 'policy');
    try {
      if (this.isCoordinator()) yield* wait(this.c.io.run({ kind: 'clearExtent', dataOffset: record.dataOffset, bytes: this.extentBytes(record.pageSizeBytes, record.pageCount) }));
    } finally {
      // Held while the extent is zeroed, so that no other allocation is placed over it meanwhile.
      this.reservations.delete(r.id);
    }
    if (this.allocs.has(req.guid) || this.names.has(req.name)) throw new PagepairError('DUPLICATE', `allocation ${req.guid} or its name exists`, 'name');
    // A snapshot's install is the instant it is taken (snapshots.ts). Our
    // writes of its origin wait from then until the answer is sent, so that
    // the pages they copy into it reach the partner after the answer, once
    // it has the snapshot too.
    const gated = req.snapshot ? this.snapshotOrigin(record) : null;
    if (gated !== null) this.c.snapshots.closeGate(gated);
    try {
      this.installAllocation(record, this.defaultOwner(), true);
      if (this.isCoordinator()) yield* wait(this.persistTable());
      this.c.env.log.info({ guid: record.guid, name: record.name, by: this.c.partnerId, keyed: keyDigest !== undefined, snapshot: req.snapshot }, req.snapshot ? 'snapshot created by partner' : 'allocation created by partner');
      this.c.requests.replyPeer(req, { kind: 'ALLOCATE_REPLY' });
    } finally {
      if (gated !== null) this.c.snapshots.openGate(gated);
    }
  }

  /** The origin of the partner's snapshot: here, of the same shape, with no write pointer open. */
  private snapshotOrigin(record: AllocationRecord): AllocState {
    const originName = originNameOf(record.name);
    let origin: AllocState | undefined;
    for (const a of this.allocs.values()) if (a.record.name === originName) origin = a;
    if (origin === undefined || origin.record.snapshot === true || origin.record.pageCount !== record.pageCount || origin.record.pageSizeBytes !== record.pageSizeBytes) {
      throw new PagepairError('BAD_FIELD', `snapshot ${JSON.stringify(record.name)}: no allocation of its shape named ${JSON.stringify(originName)} here`, 'name');
    }
    this.c.snapshots.checkNoWritePointers(origin);
    return origin;
  }

  /** `owner`: who owns its pages at first; both sides must pick the same. */
  /** `fresh`: a new, zeroed extent, so every page's version (0) is known. */
  installAllocation(record: AllocationRecord, owner: number = this.defaultOwner(), fresh = false): AllocState {
    const alloc = newAllocState(record, owner);
    if (fresh) alloc.knownVersions = new Float64Array(record.pageCount);
    this.allocs.set(record.guid, alloc);
    this.names.add(record.name);
    this.tableDigestText = null;
    this.c.snapshots.installed(alloc);
    return alloc;
  }

  *clientRelease(msg: CRelease): Task<void> {
    this.c.membership.requireWritable();
    this.refuseDuringResync('release');
    const alloc = this.lookup(msg.guid);
    if (alloc.snapshots.length > 0 || alloc.snapshotsPending > 0) {
      throw new PagepairError('BUSY', `${alloc.record.name} has ${alloc.snapshots.length + alloc.snapshotsPending} snapshots (${alloc.snapshots.map((s) => s.record.name).join(', ')}); delete them first`, 'guid');
    }
    // Our own store writes to the extent land first; the partner's before it
    // answers. Only then may the extent go to another allocation.
    yield* this.dropAllocation(alloc);
    try {
      if (this.c.membership.role === Role.MIRRORED) yield* wait(this.c.requests.request({ kind: 'RELEASE', guid: msg.guid }));
    } finally {
      this.draining.delete(alloc);
    }
    if (this.isCoordinator()) yield* wait(this.persistTable());
    this.c.env.log.info({ guid: msg.guid, name: alloc.record.name }, 'allocation released');
  }

  *onRelease(req: Release): Task<void> {
    const alloc = this.allocs.get(req.guid);
    if (alloc !== undefined) {
      yield* this.dropAllocation(alloc);
      this.draining.delete(alloc);
      if (this.isCoordinator()) yield* wait(this.persistTable());
      this.c.env.log.info({ guid: req.guid, by: this.c.partnerId }, 'allocation released by partner');
    }
    this.c.requests.replyPeer(req, { kind: 'RELEASE_REPLY' });
  }

  /** The table is being sent to a rejoining partner: changing it now would lose the change on that side. */
  private refuseDuringResync(what: string): void {
    if (this.c.joining.current !== null) throw new PagepairError('BUSY', `cannot ${what} while the partner is resyncing; try again shortly`);
  }

  private dropByName(name: string): void {
    for (const a of this.allocs.values()) {
      if (a.record.name === name) this.c.tasks.spawn(this.dropAllocation(a)).onDone(() => this.draining.delete(a));
    }
  }

  /** Forget an allocation; done once no destage of it can still land in the store. */
  *dropAllocation(alloc: AllocState): Task<void> {
    if (!alloc.released) {
      alloc.released = true;
      this.draining.add(alloc);
      this.allocs.delete(alloc.record.guid);
      this.names.delete(alloc.record.name);
      this.tableDigestText = null;
      this.c.snapshots.dropped(alloc);
      for (const p of [...alloc.pointers]) this.c.pointers.dropPointer(p);
      this.c.cache.dropAlloc(alloc);
      for (const cp of alloc.pages.values()) cp.waiters?.forEach((w) => w());
      this.c.waits.wakeProgress();
    }
    while (alloc.destagesInFlight > 0) {
      const landed = this.c.tasks.future<void>();
      this.releaseWaiters.push(landed);
      yield* wait(landed);
    }
  }

  wakeReleases(): void {
    const w = this.releaseWaiters;
    this.releaseWaiters = [];
    for (const f of w) f.resolve();
  }

  /** Write the table as it is when the write before has ended. */
  persistTable(): Future<void> {
    const run = this.c.tasks.spawn(this.writeTable(this.tableChain));
    this.tableChain = run;
    return run;
  }

  /** Settles when the last table write asked for has ended. */
  tableWritten(): Future<void> {
    return this.tableChain ?? this.c.tasks.resolved(undefined);
  }

  private *writeTable(before: Future<void> | null): Task<void> {
    if (before !== null) yield* settle(before);
    yield* wait(this.c.membership.ensureLease());
    yield* wait(this.c.io.run({ kind: 'writeTable', records: [...this.allocs.values()].map((a) => a.record) }));
  }

  tableDigest(): string {
    if (this.tableDigestText === null) {
      const d = new SetDigest();
      for (const a of this.allocs.values()) d.add(tableMember(recordFields(a.record)));
      this.tableDigestText = d.toString();
    }
    return this.tableDigestText;
  }

  /**
   * The error for a request whose allocation went away while it waited: a
   * release is final (UNKNOWN_GUID), but a reset of this controller is not:
   * the allocation lives on at the partner, so the client retries (NOT_ACTIVE).
   */
  goneError(alloc: AllocState): PagepairError {
    if (alloc.lostInReset) return new PagepairError('NOT_ACTIVE', `controller ${this.c.selfId === 1 ? 'A' : 'B'} was reset while the request waited; retry`);
    return unknownGuid(alloc.record.guid);
  }

  lookup(guid: string): AllocState {
    const a = this.allocs.get(guid);
    if (a === undefined) throw unknownGuid(guid);
    return a;
  }

  checkRange(alloc: AllocState, offset: number, length: number, lengthField: string): void {
    if (!Number.isSafeInteger(offset) || offset < 0) throw new PagepairError('BAD_FIELD', `offset must be a non-negative integer, got ${offset}`, 'offset');
    if (!Number.isSafeInteger(length) || length <= 0) throw new PagepairError('BAD_FIELD', `${lengthField} must be at least 1 byte`, lengthField);
    if (length > this.c.cfg.limits.requestBytesMax) {
      throw new PagepairError('TOO_LARGE', `${length} bytes is over requestBytesMax ${this.c.cfg.limits.requestBytesMax}`, lengthField);
    }
    if (offset + length > alloc.sizeBytes) {
      throw new PagepairError('OUT_OF_RANGE', `bytes ${offset}..${offset + length - 1} are past the end of ${alloc.record.guid} (${alloc.sizeBytes} bytes)`, 'offset');
    }
  }

  checkPageRange(alloc: AllocState, first: number, count: number): void {
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || first < 0 || count < 1 || first + count > alloc.record.pageCount) {
      throw new PagepairError('OUT_OF_RANGE', `pages ${first}+${count} are outside ${alloc.record.guid} (${alloc.record.pageCount} pages)`, 'firstPage');
    }
  }

  location(alloc: AllocState): PageLocation {
    return { guid: alloc.record.guid, dataOffset: alloc.record.dataOffset, pageSizeBytes: alloc.record.pageSizeBytes };
  }
}

function sameKey(a: Buffer | undefined, b: Buffer | undefined): boolean {
  return a === undefined || b === undefined ? a === b : a.equals(b);
}
