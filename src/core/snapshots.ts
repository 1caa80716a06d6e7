// Copy-on-write snapshots of an allocation (a volume), served by the pair.
//
// A snapshot is an allocation of its own: same page size and page count as
// its origin, its record flagged `snapshot`, its name the origin's name, '@'
// and the snapshot's name. Its extent starts zeroed, every page at version 0.
// A page of the snapshot at version 0 has not been preserved: the snapshot's
// bytes for it are the origin's. The first write to an origin page after the
// snapshot first copies the page's current bytes into the snapshot's page
// (version 1 from then on), in the same apply as the write and sent to the
// partner before it, then writes the origin's page (write-path.ts). Each
// snapshot keeps its own copies: deleting one (C_RELEASE) frees its extent
// and touches no other. The page-version test works after a restart too: a
// page's version is in its store header.
//
// Where the snapshot falls: every write is applied by one controller in one
// event, all its pages at once (it owns them all then), and every frame to
// the partner leaves through one ordered outbox. The controller asked to
// make a snapshot (the requester) sends ALLOCATE; the partner installs the
// snapshot in one event and, until its answer is sent, applies no write of
// the origin (the origin's gate). So the partner's pages copied into the
// snapshot reach the requester after the answer, when it has installed the
// snapshot too (it does so in the event that handles the answer); the
// requester's writes applied before then copy nothing and are in the
// snapshot at both sides, since their pages reach the partner before any
// later write of those pages there (a page changes hands through the same
// outbox). Writes in the snapshot: those applied before the partner's
// install there and before the requester's install at the requester; a
// write not in it ends after both. A write is never split.

// Not built yet (said in README and docs/snapshots.md): write pointers on a
// volume with snapshots.

import { PagepairError } from '../protocol/errors.js';
import { PointerMode, SnapshotOp, type AllocationRecord, type CSnapshot } from '../protocol/messages.js';
import type { AllocState } from './allocation.js';
import type { Core } from './context.js';
import type { Task } from './tasks.js';
import { knownVersion, runs } from './shared.js';

/** Snapshots one allocation may have at once. */
export const SNAPSHOTS_PER_ORIGIN_MAX = 32;

/** Pages a rollback writes back in one run at most. */
export const ROLLBACK_RUN_PAGES = 64;

/** The origin's name in a snapshot's name (up to its last '@'), or null when there is none. */
export function originNameOf(name: string): string | null {
  const at = name.lastIndexOf('@');
  return at <= 0 ? null : name.slice(0, at);
}

/** A snapshot's own name must be plain: no '@' (the last one separates it from the origin's name), no '/'. */
export function checkSnapshotName(name: string): void {
  if (name.length === 0 || /[@/\s]/.test(name) || Buffer.byteLength(name) > 32) {
    throw new PagepairError('BAD_FIELD', `a snapshot name is 1 to 32 bytes without '@', '/' or spaces, got ${JSON.stringify(name)}`, 'name');
  }
}

export class Snapshots {
  /** Snapshots installed before their origin (a join replays the table in its own order). */
  private unlinked = 0;

  constructor(private readonly c: Core) {}

  /** An allocation was installed: link a snapshot to its origin, an origin to its snapshots installed before it. */
  installed(a: AllocState): void {
    if (a.record.snapshot === true) {
      const originName = originNameOf(a.record.name);
      let found = false;
      for (const o of this.c.allocator.allocs.values()) {
        if (o !== a && o.record.name === originName) {
          this.link(a, o);
          found = true;
          break;
        }
      }
      if (!found) this.unlinked++;
    }
    if (this.unlinked > 0) {
      for (const s of this.c.allocator.allocs.values()) {
        if (s !== a && s.record.snapshot === true && s.origin === null && originNameOf(s.record.name) === a.record.name) {
          this.link(s, a);
          this.unlinked--;
        }
      }
    }
  }

  private link(snap: AllocState, origin: AllocState): void {
    snap.origin = origin;
    origin.snapshots = [...origin.snapshots, snap];
  }

  /** An allocation was dropped (released, or replaced in a join). */
  dropped(a: AllocState): void {
    if (a.origin !== null) {
      const origin = a.origin;
      origin.snapshots = origin.snapshots.filter((s) => s !== a);
    } else if (a.record.snapshot === true) {
      this.unlinked--;
    }
    for (const s of a.snapshots) {
      s.origin = null;
      this.unlinked++;
    }
    a.snapshots = [];
    if (a.gate !== null) this.openGate(a);
  }

  /** C_SNAPSHOT: the record of the snapshot made (CREATE, COMMIT) or rolled back to (ROLLBACK), with the pages written back. */
  *clientSnapshot(msg: CSnapshot): Task<{ record: AllocationRecord; pages: number }> {
    if (msg.op === SnapshotOp.ROLLBACK || msg.op === SnapshotOp.COMMIT) {
      const snap = this.c.allocator.lookup(msg.guid);
      if (snap.record.snapshot !== true) throw new PagepairError('BAD_FIELD', `${snap.record.name} is not a snapshot; name the snapshot to ${msg.op === SnapshotOp.ROLLBACK ? 'roll back to' : 'commit'}`, 'guid');
      if (msg.op === SnapshotOp.ROLLBACK) return { record: snap.record, pages: yield* this.rollback(snap) };
      return { record: yield* this.commit(snap), pages: 0 };
    }
    return { record: yield* this.create(msg), pages: 0 };
  }

  private *create(msg: CSnapshot): Task<AllocationRecord> {
    this.c.membership.requireWritable();
    checkSnapshotName(msg.name);
    const origin = this.c.allocator.lookup(msg.guid);
    if (origin.record.snapshot === true) throw new PagepairError('READ_ONLY', `${msg.guid} is a snapshot; take a snapshot of its volume instead`, 'guid');
    if (origin.snapshots.length >= SNAPSHOTS_PER_ORIGIN_MAX) {
      throw new PagepairError('LIMIT_EXCEEDED', `${origin.record.name} has ${origin.snapshots.length} snapshots, the most one allocation may have`, 'guid');
    }
    const name = `${origin.record.name}@${msg.name}`;
    if (Buffer.byteLength(name) > 64) throw new PagepairError('BAD_FIELD', `the snapshot's full name ${JSON.stringify(name)} is over 64 bytes`, 'name');
    return (yield* this.c.allocator.allocate({ name, policyName: origin.record.policy, pageCount: origin.record.pageCount, keyed: false, origin })).record;
  }

  /**
   * ROLLBACK: the volume's pages that differ from the snapshot (those the
   * snapshot holds a copy of) are written back with the snapshot's bytes, run
   * by run, through the ordinary write path: mirrored, copied first into the
   * volume's other snapshots, each run whole. Writes the volume takes
   * meanwhile interleave run by run (a page written after its run is
   * written back keeps that write). Pages written back, answered.
   */
  *rollback(snap: AllocState): Task<number> {
    this.c.membership.requireWritable();
    const origin = snap.origin;
    if (snap.record.snapshot !== true || origin === null) throw new PagepairError('BAD_FIELD', `${snap.record.name} is not a snapshot here`, 'guid');
    const ps = snap.record.pageSizeBytes;
    let written = 0;
    for (let first = 0; first < snap.record.pageCount; ) {
      // A run's pages, with its copies into the volume's other snapshots, fit a quarter of the cache.
      const runMax = Math.max(1, Math.min(ROLLBACK_RUN_PAGES, Math.floor(this.c.cfg.cacheBytesMax / 4 / (ps * (1 + origin.snapshots.length)))));
      const count = Math.min(runMax, snap.record.pageCount - first);
      const own = new Map<number, Buffer>();
      for (let p = first; p < first + count; p++) {
        const v = snap.pages.get(p)?.version ?? knownVersion(snap, p);
        if (v === 0) continue;
        const cp = yield* this.c.reads.readablePage(snap, p);
        if (cp.version > 0) own.set(p, Buffer.from(cp.data));
      }
      for (const [runFirst, runCount] of runs(first, count, (p) => own.has(p))) {
        if (snap.released || origin.released) throw this.c.allocator.goneError(snap.released ? snap : origin);
        yield* this.c.writes.writeWholePages(origin, runFirst, runCount, (p) => own.get(p)!);
        written += runCount;
      }
      first += count;
    }
    this.c.env.log.info({ snapshot: snap.record.name, pages: written }, 'volume rolled back to its snapshot');
    return written;
  }

  /**
   * COMMIT: the volume's changes since the snapshot are folded into it, and
   * a fresh one takes the writes from now on: the snapshot is dropped and
   * taken again under its name, in one request (a new guid). The volume is
   * untouched and serves throughout.
   */
  *commit(snap: AllocState): Task<AllocationRecord> {
    this.c.membership.requireWritable();
    const origin = snap.origin;
    if (snap.record.snapshot !== true || origin === null) throw new PagepairError('BAD_FIELD', `${snap.record.name} is not a snapshot here`, 'guid');
    const name = snap.record.name;
    yield* this.c.allocator.clientRelease({ kind: 'C_RELEASE', requestId: 0, epoch: 0, sender: 0, flags: 0, guid: snap.record.guid });
    return (yield* this.c.allocator.allocate({ name, policyName: origin.record.policy, pageCount: origin.record.pageCount, keyed: false, origin })).record;
  }

  /** Write pointers are not built for volumes with snapshots: refused while one is being made or exists. */
  refuseWritePointer(alloc: AllocState): void {
    if (alloc.origin !== null || alloc.record.snapshot === true) throw new PagepairError('READ_ONLY', `${alloc.record.name} is a snapshot: it is read only, and pointers on it are not supported (read it with C_READ)`, 'guid');
    if (alloc.snapshots.length > 0 || alloc.gate !== null || alloc.snapshotsPending > 0) {
      throw new PagepairError('BUSY', `${alloc.record.name} has snapshots; write pointers on a volume with snapshots are not supported yet`, 'mode');
    }
  }

  /** A snapshot is about to be made on this side too: the origin must have no write pointer open (their commits would not copy). */
  checkNoWritePointers(origin: AllocState): void {
    for (const p of origin.pointers) {
      if (p.mode === PointerMode.WRITE) throw new PagepairError('BUSY', `${origin.record.name} has write pointer ${p.id} open; a snapshot waits until it is given back`, 'guid');
    }
  }

  /** The gate at the partner of the controller making a snapshot: closed from the install until the answer is sent. */
  closeGate(origin: AllocState): void {
    if (origin.gate !== null) throw new PagepairError('BUSY', `a snapshot of ${origin.record.name} is being made; try again`, 'guid');
    origin.gate = this.c.tasks.future<void>();
  }

  openGate(origin: AllocState): void {
    const g = origin.gate;
    origin.gate = null;
    g?.resolve();
  }
}
