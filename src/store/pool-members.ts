// What every pool layout does with its members' labels (issue 14): read a
// member's newest label, judge the members from every label (poolView), and
// write the pool's next generation to the members left after one failed
// (moveGeneration).
//
// Two pool objects (one per controller) write the labels of the same
// members, and one's label writes may land on some members after the other
// has read them. So a label names the slots out of the pool at its
// generation, and the members are judged by the newest labels' sets: a
// member the newest labels do not name is in the pool even when its own
// label is older (its write is merely late). A generation move first reads
// the labels and keeps every slot that labels newer than what this object
// knew name; after writing, it reads them again and moves on once more
// while the newest labels miss a slot it knows is out (another object wrote
// a newer generation from labels read before this one's landed).

import type { PoolLabel } from './pool-label.js';
import { POOL_LABEL_READ_BYTES, labelCopyFor, newestPoolLabel } from './pool-label.js';
import type { MemberState, PoolMember } from './pool.js';
import type { Device } from './types.js';

/** A member as a pool keeps it: its slot and whether it may be used. */
export interface SlotMember extends PoolMember {
  slot: number;
  state: MemberState;
  /** Why it is not healthy. */
  reason: string | null;
}

/** A device's label: the valid copy with the higher generation, or why neither is. */
export async function readPoolLabel(device: Device): Promise<PoolLabel | string> {
  const [c0, c1] = await Promise.all([device.read(0, POOL_LABEL_READ_BYTES), device.read(4096, POOL_LABEL_READ_BYTES)]);
  return newestPoolLabel(Buffer.from(c0), Buffer.from(c1));
}

/** Write one label (to the copy its generation goes to) and make it durable. */
export async function writePoolLabel(device: Device, generation: number, label: Buffer): Promise<void> {
  await device.write(labelCopyFor(generation) * 4096, label);
  await device.sync();
}

/** Every member's label, or why it could not be read. */
export async function readPoolLabels(members: readonly PoolMember[]): Promise<(PoolLabel | string)[]> {
  return Promise.all(members.map((m) => readPoolLabel(m.device).catch((err: unknown) => `label read failed: ${err instanceof Error ? err.message : String(err)}`)));
}

/** What the labels of a pool's members say together. */
export interface PoolView {
  /** The newest generation any label of the pool holds (0: none). */
  generation: number;
  /**
   * The slots the labels of that generation name as out (their union).
   * Null when one of them was written before labels named the slots out: then
   * every member with an older label is stale, as before.
   */
  out: Set<number> | null;
  /** A label older than this is of a device that left the pool (its slot was filled anew since). */
  since: number;
  /** The rebuild a label of that generation records (pool-rebuild.ts), or null. */
  rebuilding: { slot: number; name: string } | null;
}

/** The newest generation among the labels of pool `poolId`, and which slots its labels name as out. */
export function poolView(labels: readonly (PoolLabel | string | { unreadable: string })[], poolId: string): PoolView {
  let generation = 0;
  for (const l of labels) if (isLabelOf(l, poolId)) generation = Math.max(generation, l.generation);
  let out: Set<number> | null = new Set<number>();
  let since = 0;
  let rebuilding: { slot: number; name: string } | null = null;
  for (const l of labels) {
    if (!isLabelOf(l, poolId) || l.generation !== generation) continue;
    if (l.failedSlotsRecorded === false) out = null;
    if (out !== null) for (const s of l.failedSlots ?? []) out.add(s);
    since = Math.max(since, l.currentSince ?? l.generation);
    if (rebuilding === null && l.rebuilding !== undefined && l.rebuilding !== null) rebuilding = l.rebuilding;
  }
  return { generation, out, since, rebuilding };
}

/**
 * Why a member whose label is `l` is not current in a pool `view` describes
 * (a stale reason), or null when it is: named out by the newest labels, or
 * (labels that name no slots) older than them, or labelled as being rebuilt.
 */
export function staleness(l: PoolLabel, view: PoolView): string | null {
  if (l.generation === 0) return 'stale: a rebuild onto it did not finish';
  if (view.out === null) return l.generation < view.generation ? `stale: pool generation ${l.generation}, the others are at ${view.generation}` : null;
  if (!view.out.has(l.slot) && l.generation >= view.since) return null;
  return l.generation < view.generation
    ? `stale: pool generation ${l.generation}, the others are at ${view.generation}`
    : `stale: named out of the pool at generation ${view.generation} by another pool object`;
}

function sameSlots(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((s) => b.includes(s));
}

function isLabelOf(l: PoolLabel | string | { unreadable: string }, poolId: string): l is PoolLabel {
  return typeof l !== 'string' && !('unreadable' in l) && l.poolId === poolId;
}

export interface MoveGenerationOptions {
  poolId: string;
  /** The generation this object holds: labels newer than it were written by another object. */
  base: number;
  /**
   * Slots made whole by this move (a replace done): out in the labels read,
   * in from now on. The join is called off (the members turn stale, and the
   * move names them out) when labels show the pool moved meanwhile under
   * another writer: newer than `base` before this object writes, or, after,
   * newer than what it wrote or at that generation naming other slots out.
   * A member left, or the other pool object stopped writing the one joining:
   * the rebuild may have copied from bytes that missed writes.
   */
  joining?: ReadonlySet<number>;
  /**
   * The label of member `m` at `generation`, naming `failedSlots` as out, the
   * members current since `currentSince`; `seen` is the rebuild record of the
   * newest labels read (another object's rebuild, which the label should
   * keep unless this object stopped writing its device).
   */
  labelFor(m: SlotMember, generation: number, failedSlots: readonly number[], currentSince: number, seen: { slot: number; name: string } | null): Buffer;
  /** Told what each round's labels say together, before the members are judged by them. */
  onView?(view: PoolView): void;
}

/** Tries at most this many generations in one move before settling for the last written. */
const MOVE_ROUNDS_MAX = 16;

/**
 * Move the pool past its members that are not healthy: read the labels, mark
 * stale every healthy member that labels newer than `base` (or the newest)
 * name as out, and write the next generation, naming every member not
 * healthy as out, to the healthy ones, synced. A member that cannot take it
 * is marked failed and the move goes on. Then read the labels again: while
 * the newest ones miss a slot out here (another object wrote a newer
 * generation from labels read before these landed), move on again.
 * Resolves with the newest generation seen or written.
 */
export async function moveGeneration(members: readonly SlotMember[], opts: MoveGenerationOptions): Promise<number> {
  let joining: ReadonlySet<number> = opts.joining ?? new Set<number>();
  let writtenOut: number[] = [];
  let written = 0;
  let newest = opts.base;
  let since = 0;
  for (let round = 0; ; round++) {
    // Failed members are not read: their reads may hang or fail, and they take no labels.
    // Nor joining ones: their labels are this object's own (being rebuilt, then this move's).
    const readFrom = members.filter((m) => (m.state === 'healthy' || m.state === 'stale') && !joining.has(m.slot));
    const read = await readPoolLabels(readFrom);
    const labels = read.filter((l): l is PoolLabel => isLabelOf(l, opts.poolId) && l.slot < members.length);
    const view = poolView(labels, opts.poolId);
    opts.onView?.(view);
    if (joining.size > 0 && labels.some((l) => (written === 0 ? l.generation > opts.base : l.generation > written || (l.generation === written && !sameSlots(l.failedSlots ?? [], writtenOut))))) {
      for (const s of joining) {
        const m = members[s];
        if (m === undefined) continue;
        m.state = 'stale';
        m.reason = `stale: the pool moved to generation ${view.generation} under another writer as its rebuild finished; rebuild it again`;
      }
      joining = new Set<number>();
    }
    newest = Math.max(newest, view.generation);
    const named = new Set<number>();
    for (const l of labels) {
      if (l.generation <= opts.base && l.generation !== view.generation) continue;
      for (const s of l.failedSlots ?? []) if (!joining.has(s)) named.add(s);
      since = Math.max(since, l.currentSince ?? l.generation);
    }
    for (const s of named) {
      const m = members[s];
      if (m === undefined || m.state !== 'healthy') continue;
      m.state = 'stale';
      m.reason = `stale: named out of the pool by another pool object's labels (generation ${view.generation})`;
    }
    const out = members.filter((m) => m.state !== 'healthy').map((m) => m.slot);
    const left = members.filter((m) => m.state === 'healthy');
    if (written > 0) {
      // Done when the newest labels name every slot out here (and none that is in, but joining).
      const newestOut = view.out ?? new Set<number>();
      const settled = view.generation >= written && view.out !== null && out.every((s) => newestOut.has(s)) && [...joining].every((s) => !newestOut.has(s));
      if (settled || round >= MOVE_ROUNDS_MAX || left.length === 0) return newest;
    }
    if (left.length === 0) return newest;
    const generation = Math.max(newest, written) + 1;
    // A slot filled anew: a label older than the one before this names the device it replaced.
    if (joining.size > 0) since = Math.max(since, generation - 1);
    const results = await Promise.allSettled(left.map((m) => writePoolLabel(m.device, generation, opts.labelFor(m, generation, out, Math.min(since, generation), view.rebuilding))));
    written = generation;
    writtenOut = out;
    newest = Math.max(newest, generation);
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') return;
      const m = left[i]!;
      // Marked failed meanwhile (by an operation of its own): whoever marked it moves the generation on.
      if (m.state !== 'healthy') return;
      m.state = 'failed';
      m.reason = `label write failed: ${String(r.reason)}`;
    });
  }
}
