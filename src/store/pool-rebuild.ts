// Rebuilding a member while the pair serves (issue 14): what the mirror and
// parity layouts share.
//
// Both controllers write the members through their own pool objects. A
// rebuild (replace, or a scrub's repair of one member's bytes) runs in one of
// them and copies into the member being rebuilt what the others hold; the
// other object's writes to the rows being copied are not held off by this
// one's locks. So:
//
// 1. The rebuild is announced in the labels: the pool's next generation
//    names the slot out and records the device filling it (pool-label.ts).
//    Every pool object that reads those labels opens that device (a
//    MemberOpener), writes it, never reads it, and writes it LAST: an
//    operation's writes to the healthy members are done (or their failures
//    recorded) before its write to the member being rebuilt starts. Taking
//    up the device, an object waits for its writes already under way (they
//    did not go to it) before it answers: the partner's answer to the SENSE
//    that carried the generation is the rebuild's barrier.
// 2. Each range is copied and then checked (copyVerified), block by block:
//    the bytes the healthy members say the rebuilt member should hold are
//    computed again after the copy and compared with what it holds. A block
//    that agrees at one look after our last write to it is done; one that
//    still differs after a few looks (a write under way there may be about
//    to land) is copied again. Why that is enough: another object's write
//    reaches the rebuilt member after the healthy ones. If it reached it
//    before our copy did, it had reached the healthy ones before too, our
//    check reads it there, and the block is copied again; if after, it
//    wins, and is right. A parity row's write gives the rebuilt member its
//    piece over the whole range written (its data chunk too, written or
//    not): a copy that reconstructed that chunk while the write had landed
//    on some members only holds bytes that are neither old nor new, and
//    that write, landing last, puts them right.
// 3. Any other change of the pool's generation during the rebuild (a member
//    failing on either controller's path) stops it: bytes copied from a
//    member the other controller had stopped writing could be old. The
//    member is left stale, to be rebuilt again.
// 4. Finishing, the generation that names the slot in is called off when the
//    labels show another writer moved the pool meanwhile (moveGeneration's
//    joining), and a pool object that finds the record gone, without the
//    slot named in, stops writing the device (refresh).

import { setTimeout as sleep } from 'node:timers/promises';
import { PagepairError } from '../protocol/errors.js';
import type { PoolView, SlotMember } from './pool-members.js';
import type { MemberOpener } from './pool.js';
import type { Device } from './types.js';

/**
 * A scrub while another object writes reads a range found wrong again this
 * many times (2, 4, 8, ... ms apart) before it counts it: a write under way
 * there has landed on some members only.
 */
export const SHARED_RECHECKS = 5;

/** How many times a range is checked before a rebuild gives up on it. */
const CHECK_TRIES_MAX = 400;
/** Checked in blocks of this many bytes: each block is done once it agrees after our last write to it. */
const CHECK_BLOCK_BYTES = 4096;
/** A block found differing this many checks in a row is copied again (before that, a write under way may be about to land). */
const RECOPY_AFTER_CHECKS = 3;

/**
 * Copy one range onto the member being rebuilt until a check after the copy
 * finds it holding what the healthy members say (see the top of this file).
 * The check goes block by block: a block that agrees at one look after our
 * last write to it is done (a write landing later reaches the rebuilt
 * member last, and is right); one that still differs after a few looks is
 * copied again. (Each byte of the rebuilt member is a function of the same
 * byte offset of the others: a copy of it, or of a row's P or Q.)
 * `shared`: another pool object writes too; without it one copy is enough.
 * Resolves with the bytes read from the members.
 */
export async function copyVerified(
  what: string,
  shared: boolean,
  io: {
    /** What the rebuilt member should hold, from the healthy members now, and bytes read for it. */
    expected(): Promise<{ bytes: Buffer; readBytes: number }>;
    /** Write `bytes` at `at` within the range. */
    write(at: number, bytes: Buffer): Promise<void>;
    /** What the rebuilt member holds now. */
    readBack(): Promise<Buffer>;
    /** Wait a little (default: a timer). */
    pause?(ms: number): Promise<void>;
  },
): Promise<number> {
  const first = await io.expected();
  let readBytes = first.readBytes;
  await io.write(0, first.bytes);
  if (!shared) return readBytes;
  const length = first.bytes.length;
  /** Blocks not yet seen agreeing since our last write to them, with how many looks in a row found them differing. */
  const open = new Map<number, number>();
  for (let at = 0; at < length; at += CHECK_BLOCK_BYTES) open.set(at, 0);
  for (let tries = 1; ; tries++) {
    const [now, held] = await Promise.all([io.expected(), io.readBack()]);
    readBytes += now.readBytes + held.length;
    const again: number[] = [];
    for (const [at, looks] of open) {
      const end = Math.min(length, at + CHECK_BLOCK_BYTES);
      if (held.subarray(at, end).equals(now.bytes.subarray(at, end))) open.delete(at);
      else if (looks + 1 >= RECOPY_AFTER_CHECKS) again.push(at);
      else open.set(at, looks + 1);
    }
    if (open.size === 0) return readBytes;
    if (tries >= CHECK_TRIES_MAX) throw new PagepairError('BUSY', `${what} kept changing while it was copied (${tries} looks): rebuild again when writes there are fewer`);
    for (const at of again) {
      await io.write(at, now.bytes.subarray(at, Math.min(length, at + CHECK_BLOCK_BYTES)));
      open.set(at, 0);
    }
    // A write under way there: give it time to land.
    await (io.pause ?? sleep)(Math.min(20, tries));
  }
}

/** The writes a pool object has under way, so that taking up a member can wait for those that did not go to it. */
export class WritesUnderWay {
  private readonly running = new Set<Promise<unknown>>();

  track<T>(p: Promise<T>): Promise<T> {
    const tracked = p.finally(() => this.running.delete(tracked));
    this.running.add(tracked);
    return tracked;
  }

  /** Resolves when every write under way now has settled (those begun later are not waited for). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.running]);
  }
}

/**
 * Settle the members being rebuilt against labels read (`view`, not older
 * than what this object knew): one whose rebuild the newest labels no longer
 * record is healthy when they name its slot in (the rebuild finished
 * elsewhere), else stale (stopped). Ours (`ours`, once announced) is failed
 * when newer labels dropped its record: the other object stopped writing
 * the device. Returns the rebuild whose device this object stops writing,
 * if any.
 */
export function settleRebuilding(
  members: SlotMember[],
  view: PoolView,
  ours: { slot: number; announced: number } | null,
): { slot: number; name: string } | null {
  const rec = view.rebuilding;
  let dropped: { slot: number; name: string } | null = null;
  for (const m of members) {
    if (m.state !== 'rebuilding' || (rec !== null && rec.slot === m.slot && rec.name === m.name)) continue;
    if (ours !== null && ours.slot === m.slot) {
      if (ours.announced === 0 || view.generation < ours.announced) continue;
      m.state = 'failed';
      m.reason = `the other controller stopped writing it at pool generation ${view.generation}`;
      dropped = { slot: m.slot, name: m.name };
      continue;
    }
    // Named in by the newest labels: current, even when its own label is older (the move that names
    // it in writes there too, and may land there last).
    const current = view.out !== null && !view.out.has(m.slot);
    m.state = current ? 'healthy' : 'stale';
    m.reason = current ? null : `stale: its rebuild stopped (pool generation ${view.generation})`;
    if (!current) dropped = { slot: m.slot, name: m.name };
  }
  return dropped;
}

/** A rebuild as the labels record it. */
export type RebuildRecord = { slot: number; name: string };

/** What a pool object lends the shared rebuild-following code. */
export interface RebuildFollower {
  members: SlotMember[];
  openMember: MemberOpener | undefined;
  /** Our rebuild under way (slot, announcing generation, 0 before), or null. */
  ours: { slot: number; announced: number } | null;
  /** We stop writing this rebuild's device: our labels drop its record from now on. */
  drop(r: RebuildRecord): void;
  /** Mark a member failed, the next generation written (what fail() does). */
  fail(m: SlotMember, reason: string): Promise<void>;
  /** Write the next generation as the members stand. */
  moveOn(): Promise<void>;
  /** Wait for our writes under way. */
  drain(): Promise<void>;
}

/**
 * Follow the labels' rebuild record (`view`, from a refresh or an open):
 * settle our members being rebuilt, then take up the device another pool
 * object rebuilds onto (opened by name, or the member we hold when it is
 * the same device), and wait for our writes under way, which did not go to
 * it. A device we cannot open is said in the labels: the next generation,
 * without the record, stops the rebuild there.
 */
export async function followRebuild(host: RebuildFollower, view: PoolView): Promise<void> {
  const rec = view.rebuilding;
  const dropped = settleRebuilding(host.members, view, host.ours);
  if (dropped !== null) host.drop(dropped);
  if (rec === null || host.ours !== null || rec.slot >= host.members.length) return;
  const cur = host.members[rec.slot]!;
  if (cur.state === 'rebuilding' && cur.name === rec.name) return;
  // The same device (a scrub's repair, or a configuration naming the new device already): no second handle.
  let device: Device | null = cur.name === rec.name && cur.state !== 'failed' ? cur.device : null;
  let why = 'no way to open devices by name here';
  if (device === null && host.openMember !== undefined) {
    try {
      device = await host.openMember(rec.name);
    } catch (err) {
      why = err instanceof Error ? err.message : String(err);
    }
  }
  if (device === null) {
    // We cannot write it: the labels must say so, or the rebuild would finish without our writes.
    host.drop(rec);
    const reason = `being rebuilt onto ${rec.name} by the other controller, which this one cannot open: ${why}`;
    if (cur.state === 'healthy') {
      await host.fail(cur, reason);
    } else {
      cur.reason = reason;
      await host.moveOn();
    }
    return;
  }
  if (device !== cur.device) await cur.device.close().catch(() => undefined);
  host.members[rec.slot] = { name: rec.name, device, slot: rec.slot, state: 'rebuilding', reason: 'being rebuilt by the other controller' };
  await host.drain();
}

/**
 * The rebuild a pool object's labels record: its own member being rebuilt
 * (ours, or one whose device it writes); else the one the labels it read
 * record (`seen`: another object's, not taken up here yet, which a refresh
 * will), unless it stopped writing that device or the device is a healthy
 * member here already (the rebuild finished).
 */
export function rebuildRecordOf(members: readonly SlotMember[], dropped: RebuildRecord | null, seen: RebuildRecord | null): RebuildRecord | null {
  const m = members.find((x) => x.state === 'rebuilding');
  if (m !== undefined) return { slot: m.slot, name: m.name };
  if (seen === null || (dropped !== null && dropped.slot === seen.slot && dropped.name === seen.name)) return null;
  const there = members[seen.slot];
  if (there !== undefined && there.name === seen.name && there.state === 'healthy') return null;
  return seen;
}
