// A pool over N devices holding the same bytes (issue 14, the mirror
// layout). Each member starts with a pool label (pool-label.ts); the pool's
// bytes follow. It is a Pool (pool.ts) with no rows: any bytes may be
// written independently, and nothing needs a mirrored prefix (rowBytes and
// mirroredPrefixBytes are 0; everything is copies anyway).
//
// - A write goes to every healthy member (and to one being rebuilt) and
//   succeeds when one healthy member took it. A member that fails is marked
//   failed, and the pool's generation is written (and synced) to the members
//   left before that write is answered: a failed member that comes back
//   later is seen to be stale and is not trusted, however long it was away.
// - A read goes to the healthy members in turn; one that fails is marked
//   failed and the next is tried. A member being rebuilt serves no reads.
// - A sync syncs every healthy member; members that fail it are marked failed.
// - Opening checks every label: another pool, another layout, a member in
//   another slot or a pool of another size is refused with a message naming
//   the device; a member the newest labels name as out (it missed writes),
//   or a device its slot was filled anew since, opens as stale (unused). A
//   member they do not name whose label is older is current: the other
//   controller's label write has not reached it yet (pool-members.ts).
// - refresh() reads every label again, so a member the partner's object
//   failed is not used by this one either.
// - repairRange and scrub copy "the first healthy member" over the others:
//   a mirror has no way to tell which copy is right (unlike a page, whose
//   CRC says), so slot order decides.
// - replace() labels the new device as being rebuilt (generation 0, older
//   than any pool: a crash leaves it stale), sends writes to it, copies
//   every chunk from a healthy member, then writes the next generation to
//   every member including it. Each chunk's copy holds its range exclusive
//   against this object's writes (range-lock.ts); the partner's object
//   learns of the rebuild from the labels, writes the new device too (last),
//   and each chunk is checked after its copy (pool-rebuild.ts).

import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { PagepairError } from '../protocol/errors.js';
import { POOL_LABEL_AREA_BYTES, POOL_LABEL_READ_BYTES, POOL_MEMBERS_MAX, encodePoolLabel, labelCopyFor, newestPoolLabel, type PoolLabel } from './pool-label.js';
import { moveGeneration, poolView, staleness, type PoolView } from './pool-members.js';
import type { MaintenanceOptions, MemberOpener, MemberState, MemberStatus, Pool, PoolMember, PoolStatus, ProgressOptions, ScrubReport } from './pool.js';
import { SHARED_RECHECKS, copyVerified, followRebuild, rebuildRecordOf, settleRebuilding, WritesUnderWay, type RebuildRecord } from './pool-rebuild.js';
import { RangeLock } from './range-lock.js';
import type { Device } from './types.js';

export type { MemberState, MemberStatus } from './pool.js';
/** The name this file used before pool.ts: a member device as given. */
export type PoolDevice = PoolMember;

/** Bytes one step of a rebuild, scrub or repair copies or compares. */
export const MIRROR_COPY_CHUNK_BYTES_DEFAULT = 1024 * 1024;

export interface MirrorOptions {
  /** Bytes one step of a rebuild, scrub or repair handles (a multiple of 4096). */
  copyChunkBytes?: number;
  /** How to open a device the other controller's pool object is rebuilding a slot onto (pool-rebuild.ts). */
  openMember?: MemberOpener;
}

interface Member extends PoolMember {
  slot: number;
  state: MemberState;
  reason: string | null;
}

interface PartsCapable {
  writeParts(offset: number, parts: readonly Buffer[]): Promise<void>;
}

function hasWriteParts(d: Device): d is Device & PartsCapable {
  return typeof (d as Partial<PartsCapable>).writeParts === 'function';
}

async function readLabel(d: Device): Promise<PoolLabel | string> {
  const [c0, c1] = await Promise.all([d.read(0, POOL_LABEL_READ_BYTES), d.read(4096, POOL_LABEL_READ_BYTES)]);
  return newestPoolLabel(Buffer.from(c0), Buffer.from(c1));
}

function staleReason(labelGeneration: number, generation: number): string {
  return labelGeneration === 0 ? 'stale: a rebuild onto it did not finish' : `stale: pool generation ${labelGeneration}, the others are at ${generation}`;
}

export class MirrorDevice implements Pool {
  readonly sizeBytes: number;
  readonly layout = 'mirror' as const;
  readonly rowBytes = 0;
  readonly mirroredPrefixBytes = 0;
  private gen: number;
  private nextRead = 0;
  /** Label writes after a member failed, one at a time. */
  private labelChain: Promise<void> = Promise.resolve();
  private readonly locks = new RangeLock();
  private rebuild: { slot: number; doneBytes: number; totalBytes: number; run: Promise<void> } | null = null;
  private closing = false;
  private readonly copyChunkBytes: number;
  /** The generation that announced our rebuild in the labels (0: not yet). */
  private rebuildAnnounced = 0;
  /** Refreshes, one after the other. */
  private refreshChain: Promise<unknown> = Promise.resolve();
  /** The slot our rebuild is naming in right now (−1: none): its own label lags that move, a refresh meanwhile must not judge it by it. */
  private joiningSlot = -1;
  /** A rebuild whose device we stopped writing (or could not open): our labels no longer record it. */
  private dropped: { slot: number; name: string } | null = null;
  private readonly openMember: MemberOpener | undefined;
  private readonly writes = new WritesUnderWay();

  private constructor(
    private readonly members: Member[],
    readonly poolId: string,
    generation: number,
    dataBytes: number,
    opts: MirrorOptions,
  ) {
    this.gen = generation;
    this.sizeBytes = dataBytes;
    const chunk = opts.copyChunkBytes ?? MIRROR_COPY_CHUNK_BYTES_DEFAULT;
    if (!Number.isSafeInteger(chunk) || chunk < 4096 || chunk % 4096 !== 0) {
      throw new PagepairError('BAD_CONFIG', `copyChunkBytes must be a multiple of 4096, got ${chunk}`, 'copyChunkBytes');
    }
    this.copyChunkBytes = chunk;
    this.openMember = opts.openMember;
  }

  /** Label `devices` as a new mirror pool (generation 1) and open it. Whatever they held is the pool's now. */
  static async create(devices: readonly PoolMember[], poolId: string = randomUUID(), opts: MirrorOptions = {}): Promise<MirrorDevice> {
    if (devices.length < 2 || devices.length > POOL_MEMBERS_MAX) throw new PagepairError('BAD_CONFIG', `a mirror pool needs 2 to ${POOL_MEMBERS_MAX} devices, got ${devices.length}`, 'devices');
    const dataBytes = Math.min(...devices.map((d) => d.device.sizeBytes)) - POOL_LABEL_AREA_BYTES;
    if (dataBytes <= 0) throw new PagepairError('BAD_CONFIG', `the smallest device (${Math.min(...devices.map((d) => d.device.sizeBytes))} bytes) has no room after the pool labels`, 'devices');
    await Promise.all(
      devices.map(async (d, slot) => {
        // Both copies: an older label of this pool left in the other copy must not outrank this one.
        const label = encodePoolLabel({ poolId, layout: 'mirror', slot, devices: devices.length, generation: 1, dataBytes });
        await d.device.write(labelCopyFor(1) * 4096, label);
        await d.device.write(labelCopyFor(0) * 4096, Buffer.alloc(4096));
        await d.device.sync();
      }),
    );
    return MirrorDevice.open(devices, opts);
  }

  /**
   * Open a mirror pool from its devices, in slot order. A device whose label
   * cannot be read (its server is gone, the read fails) opens as failed,
   * and unless readOnly the next generation is written to the others at
   * once: it misses every write from now on, so when it comes back it must
   * be seen to be stale.
   */
  static async open(devices: readonly PoolMember[], opts: MirrorOptions & { readOnly?: boolean } = {}): Promise<MirrorDevice> {
    const labels = await Promise.all(
      devices.map((d) => readLabel(d.device).catch((err: unknown) => ({ unreadable: `label read failed: ${err instanceof Error ? err.message : String(err)}` }))),
    );
    const first = labels.find((l): l is PoolLabel => typeof l !== 'string' && !('unreadable' in l));
    const describe = (l: PoolLabel | string | { unreadable: string }): string => (typeof l === 'string' ? l : 'unreadable' in l ? l.unreadable : `generation ${l.generation}`);
    if (first === undefined) throw new PagepairError('STORE_MISMATCH', `no device holds a pool label: ${devices.map((d, i) => `${d.name}: ${describe(labels[i]!)}`).join('; ')}`, 'devices');
    // Judged by the newest labels (pool-members.ts): a member they name as out missed writes; one
    // they do not name, with an older label, is current (its label write is late).
    const view = poolView(labels, first.poolId);
    const generation = Math.max(...labels.map((l) => (typeof l === 'string' || 'unreadable' in l ? 0 : l.generation)));
    const members: Member[] = devices.map((d, slot) => {
      const l = labels[slot]!;
      if (typeof l !== 'string' && 'unreadable' in l) return { ...d, slot, state: 'failed', reason: l.unreadable };
      if (typeof l === 'string') throw new PagepairError('STORE_MISMATCH', `device ${d.name}: ${l}`, 'devices');
      if (l.poolId !== first.poolId) throw new PagepairError('STORE_MISMATCH', `device ${d.name} belongs to pool ${l.poolId}, not ${first.poolId}`, 'devices');
      if (l.layout !== 'mirror') throw new PagepairError('STORE_MISMATCH', `device ${d.name} is labelled for a ${l.layout} pool`, 'devices');
      if (l.devices !== devices.length) throw new PagepairError('STORE_MISMATCH', `device ${d.name} is one of a pool of ${l.devices} devices, ${devices.length} were given`, 'devices');
      if (l.slot !== slot) throw new PagepairError('STORE_MISMATCH', `device ${d.name} fills slot ${l.slot} of the pool, it was given as slot ${slot}: list the devices in slot order`, 'devices');
      if (d.device.sizeBytes < POOL_LABEL_AREA_BYTES + first.dataBytes) {
        throw new PagepairError('STORE_MISMATCH', `device ${d.name} holds ${d.device.sizeBytes} bytes, the pool keeps ${POOL_LABEL_AREA_BYTES + first.dataBytes} on each`, 'devices');
      }
      const stale = staleness(l, view);
      return { ...d, slot, state: stale !== null ? 'stale' : 'healthy', reason: stale };
    });
    if (!members.some((m) => m.state === 'healthy')) throw new PagepairError('IO_ERROR', `no device of the pool is current: ${members.map((m) => `${m.name}: ${m.reason ?? m.state}`).join('; ')}`, 'devices');
    const pool = new MirrorDevice(members, first.poolId, generation, first.dataBytes, opts);
    if (opts.readOnly !== true && members.some((m) => m.state === 'failed')) await pool.moveGenerationOn();
    // A rebuild the other controller runs: we write its device too, or say in the labels we cannot.
    if (opts.readOnly !== true && view.rebuilding !== null) await pool.followRebuild(view);
    return pool;
  }

  get generation(): number {
    return this.gen;
  }

  /** The name this class used before it was a Pool. */
  get poolGeneration(): number {
    return this.gen;
  }

  /** Serving with fewer devices than it has. */
  get degraded(): boolean {
    return this.members.some((m) => m.state !== 'healthy');
  }

  status(): PoolStatus {
    const healthy = this.members.filter((m) => m.state === 'healthy').length;
    return {
      poolId: this.poolId,
      layout: 'mirror',
      generation: this.gen,
      chunkBytes: 0,
      sizeBytes: this.sizeBytes,
      members: this.members.map((m): MemberStatus => ({ slot: m.slot, name: m.name, state: m.state, reason: m.reason })),
      degraded: this.degraded,
      failuresTolerated: Math.max(0, healthy - 1),
      rebuild: this.rebuild === null ? null : { slot: this.rebuild.slot, doneBytes: this.rebuild.doneBytes, totalBytes: this.rebuild.totalBytes },
    };
  }

  /**
   * Read every label again and act on them; resolves with the generation of
   * the labels acted on. A label move of our own during it (a member failing)
   * may learn of newer labels without taking up what they record, so the
   * labels are read again until none is newer than what was acted on.
   */
  refresh(): Promise<number> {
    // One at a time: a refresh whose label reads began before another's landed newer labels
    // would judge the members by older labels than this object knows.
    const run = this.refreshChain.then(async () => {
      let followed = 0;
      for (let round = 0; round < 8; round++) {
        followed = await this.refreshOnce();
        if (this.gen <= followed) break;
      }
      return followed;
    });
    this.refreshChain = run.catch(() => undefined);
    return run;
  }

  private async refreshOnce(): Promise<number> {
    await this.labelChain;
    const labels = await Promise.all(
      this.members.map(async (m) => {
        try {
          return await readLabel(m.device);
        } catch (err) {
          return `label read failed: ${String(err)}`;
        }
      }),
    );
    const before = this.gen;
    const newest = Math.max(this.gen, ...labels.map((l) => (typeof l === 'string' || l.poolId !== this.poolId ? 0 : l.generation)));
    const movedOn = newest > this.gen;
    const view = poolView(labels, this.poolId);
    // Members being rebuilt are judged by the labels' rebuild record alone (their own label may lag the move that names them in).
    const wasRebuilding = new Set(this.members.filter((m) => m.state === 'rebuilding').map((m) => m.slot));
    if (view.generation >= this.gen) await this.followRebuild(view);
    const failing: { m: Member; reason: string }[] = [];
    this.members.forEach((m, i) => {
      const l = labels[i]!;
      // Being rebuilt (or just settled by the rebuild record): judged by the record, not its own label.
      if (m.state === 'rebuilding' || wasRebuilding.has(m.slot) || m.slot === this.joiningSlot) return;
      const wrong =
        typeof l === 'string'
          ? l
          : l.poolId !== this.poolId
            ? `now labelled for pool ${l.poolId}`
            : l.layout !== 'mirror' || l.slot !== m.slot || l.devices !== this.members.length
              ? `now labelled as slot ${l.slot} of a ${l.devices}-device ${l.layout} pool`
              : null;
      if (wrong !== null) {
        if (m.state === 'healthy') failing.push({ m, reason: wrong });
        return;
      }
      const label = l as PoolLabel;
      // Named out by the newest labels: it missed writes. Not named, an older label of its own
      // is one whose write has not landed yet (another pool object moving the generation on).
      // Labels older than a generation this object knows (read before a move landed) judge nothing.
      const stale = view.generation < newest ? null : staleness(label, view);
      if (stale !== null) {
        if (m.state === 'healthy') {
          m.state = 'stale';
          m.reason = stale;
        }
      } else if (movedOn && m.state !== 'healthy' && label.generation >= newest) {
        // Someone else moved the pool on with this member in it (a rebuild finished elsewhere): it is current again.
        m.state = 'healthy';
        m.reason = null;
      }
    });
    this.gen = newest;
    // A member we cannot read the label of (on our path only, maybe) misses our writes from now on:
    // like any member failing, it leaves by the next generation, or the partner's pool object would go on reading it.
    for (const { m, reason } of failing) await this.fail(m, reason);
    if (!this.members.some((m) => m.state === 'healthy')) throw this.noneLeft('refresh');
    // The generation whose labels this refresh acted on: not one a label move learned meanwhile
    // (it does not take up a rebuild those labels record), which the partner must not be told.
    return Math.max(view.generation, before);
  }

  /**
   * Bring the member being rebuilt in line with the labels' rebuild record
   * (pool-rebuild.ts): take up the device another pool object rebuilds onto
   * (then wait for our writes under way, which did not go to it); stop
   * writing one whose rebuild ended without it being named in; make one named
   * in a healthy member. A device we cannot open is said in the labels (the
   * next generation, with no record), which stops the rebuild there.
   */
  private async followRebuild(view: PoolView): Promise<void> {
    await followRebuild(
      {
        members: this.members,
        openMember: this.openMember,
        ours: this.ourRebuild(),
        drop: (r) => (this.dropped = r),
        fail: (m, reason) => this.fail(m, reason),
        moveOn: () => this.moveGenerationOn(),
        drain: () => this.writes.drain(),
      },
      view,
    );
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    // Members in turn from where the last read began: each read tries every member once.
    const start = this.nextRead++;
    for (let i = 0; i < this.members.length; i++) {
      const m = this.members[(start + i) % this.members.length]!;
      if (m.state !== 'healthy') continue;
      try {
        return await m.device.read(POOL_LABEL_AREA_BYTES + offset, length);
      } catch (err) {
        await this.fail(m, `read failed: ${String(err)}`);
      }
    }
    throw this.noneLeft('read');
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.writeParts(offset, [data]);
  }

  writeParts(offset: number, parts: readonly Buffer[]): Promise<void> {
    return this.writes.track(this.writePartsNow(offset, parts));
  }

  private async writePartsNow(offset: number, parts: readonly Buffer[]): Promise<void> {
    const length = parts.reduce((n, p) => n + p.length, 0);
    this.checkRange(offset, length);
    const release = await this.locks.acquire(offset, length, false);
    try {
      await this.onEach('write', (m) => (hasWriteParts(m.device) ? m.device.writeParts(POOL_LABEL_AREA_BYTES + offset, parts) : m.device.write(POOL_LABEL_AREA_BYTES + offset, Buffer.concat(parts))), true);
    } finally {
      release();
    }
  }

  sync(): Promise<void> {
    return this.onEach('sync', (m) => m.device.sync(), true);
  }

  repairRange(offset: number, length: number): Promise<void> {
    return this.writes.track(this.repairRangeNow(offset, length));
  }

  private async repairRangeNow(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
    for (let at = offset; at < offset + length; at += this.copyChunkBytes) {
      const n = Math.min(this.copyChunkBytes, offset + length - at);
      await this.compareChunk(at, n, true);
    }
  }

  /**
   * Compare every chunk's copies; with repair, write the first healthy
   * member's copy over the others'. While another pool object writes
   * (opts.barrier given), a difference is counted only when reading again
   * finds it still there, and the repairs are made afterwards as rebuilds of
   * the chunks found wrong on each member (pool-rebuild.ts), one member at a
   * time, while another healthy member is left.
   */
  async scrub(opts: MaintenanceOptions & { repair: boolean }): Promise<ScrubReport> {
    const report: ScrubReport = { bytesChecked: 0, mismatches: 0, repaired: 0, unreadable: 0, unrepaired: 0 };
    const shared = opts.barrier !== undefined;
    const pace = new Pacer(opts.rateBytesPerSec ?? 0);
    /** Shared: the chunks each member holds wrong, repaired after the pass. */
    const wrong = new Map<number, number[]>();
    for (let at = 0; at < this.sizeBytes; at += this.copyChunkBytes) {
      opts.signal?.throwIfAborted();
      this.checkOpen('scrub');
      const n = Math.min(this.copyChunkBytes, this.sizeBytes - at);
      if (!shared) {
        const outcome = await this.compareChunk(at, n, opts.repair);
        if (outcome === 'unreadable') report.unreadable++;
        else if (outcome !== 'same') {
          report.mismatches++;
          if (outcome === 'repaired') report.repaired++;
        }
      } else {
        let seen = await this.differingCopies(at, n);
        for (let again = 0; again < SHARED_RECHECKS && seen !== null && seen.differ.length > 0; again++) {
          await (opts.pause ?? sleep)(2 ** (again + 1));
          seen = await this.differingCopies(at, n);
        }
        if (seen === null) report.unreadable++;
        else if (seen.differ.length > 0) {
          report.mismatches++;
          if (opts.repair) for (const m of seen.differ) wrong.set(m.slot, [...(wrong.get(m.slot) ?? []), at]);
        }
      }
      report.bytesChecked += n;
      opts.onProgress?.(report.bytesChecked, this.sizeBytes);
      await pace.after(n, opts.signal);
    }
    if (wrong.size > 0) {
      // Each member's wrong chunks rebuilt in turn; a chunk wrong on two members counts once, when both are done.
      const left = new Map<number, number>();
      for (const ats of wrong.values()) for (const at of ats) left.set(at, (left.get(at) ?? 0) + 1);
      for (const [slot, ats] of wrong) {
        opts.signal?.throwIfAborted();
        const m = this.members[slot]!;
        if (m.state !== 'healthy' || this.members.filter((x) => x.state === 'healthy').length < 2) continue;
        try {
          await this.rebuildSlot(slot, { name: m.name, device: m.device }, ats, opts);
        } catch (err) {
          if (!(err instanceof PagepairError) || (err.code !== 'IO_ERROR' && err.code !== 'BUSY')) throw err;
          continue;
        }
        for (const at of ats) left.set(at, left.get(at)! - 1);
      }
      report.repaired = [...left.values()].filter((x) => x === 0).length;
    }
    report.unrepaired = report.mismatches - report.repaired;
    return report;
  }

  async replace(slot: number, member: PoolMember, opts: MaintenanceOptions = {}): Promise<void> {
    this.checkOpen('replace');
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.members.length) {
      throw new PagepairError('BAD_FIELD', `pool ${this.poolId} has slots 0..${this.members.length - 1}, not ${slot}`, 'slot');
    }
    this.checkNoRebuild();
    if (member.device.sizeBytes < POOL_LABEL_AREA_BYTES + this.sizeBytes) {
      throw new PagepairError('BAD_CONFIG', `device ${member.name} has ${member.device.sizeBytes} bytes; the pool needs ${POOL_LABEL_AREA_BYTES + this.sizeBytes}`, 'devices');
    }
    const old = this.members[slot]!;
    const others = this.members.filter((m) => m !== old && m.state === 'healthy');
    if (others.length === 0) throw new PagepairError('IO_ERROR', `pool ${this.poolId}: no other member is healthy to rebuild slot ${slot} from`, 'slot');
    await this.rebuildSlot(slot, member, null, opts);
  }

  private checkNoRebuild(): void {
    if (this.rebuild !== null) throw new PagepairError('BUSY', `pool ${this.poolId}: slot ${this.rebuild.slot} is being rebuilt; one rebuild at a time`, 'slot');
  }

  /**
   * Rebuild slot `slot` onto `member` (every chunk, or the chunks at `ats`),
   * announced in the labels first so that another pool object over the
   * members writes it too (pool-rebuild.ts). On any failure the member is
   * left out of the pool (stale) and the labels say so.
   */
  private async rebuildSlot(slot: number, member: PoolMember, ats: number[] | null, opts: MaintenanceOptions): Promise<void> {
    this.checkNoRebuild();
    const totalBytes = ats === null ? this.sizeBytes : ats.reduce((t, at) => t + Math.min(this.copyChunkBytes, this.sizeBytes - at), 0);
    // Taken before the first await: a second replace meanwhile is refused.
    const rebuild = { slot, doneBytes: 0, totalBytes, run: Promise.resolve() };
    this.rebuild = rebuild;
    const old = this.members[slot]!;
    const fresh: Member = { name: member.name, device: member.device, slot, state: 'rebuilding', reason: 'being rebuilt' };
    const run = (async () => {
      // Being rebuilt: generation 0 in both copies, older than any pool, so a crash leaves it stale.
      const label = encodePoolLabel({ poolId: this.poolId, layout: 'mirror', slot, devices: this.members.length, generation: 0, dataBytes: this.sizeBytes });
      await member.device.write(0, label);
      await member.device.write(4096, label);
      await member.device.sync();
      this.checkOpen('replace');
      // A rebuild the other controller announced (or one left by a controller that died) is ours now:
      // the record becomes ours, and the other stops writing its device when it reads it.
      for (const x of this.members) {
        if (x.state !== 'rebuilding') continue;
        x.state = 'stale';
        x.reason = `stale: its rebuild was taken over by a rebuild onto ${member.name}`;
        this.dropped = { slot: x.slot, name: x.name };
      }
      this.members[slot] = fresh;
      if (old.device !== member.device) await old.device.close().catch(() => undefined);
      // The announcement: the slot named out, the device recorded; then every other pool object must have read it.
      await this.moveGenerationOn();
      this.rebuildAnnounced = this.gen;
      this.checkRebuilding(fresh);
      await opts.barrier?.(this.gen);
      const startGen = this.gen;
      await this.fill(fresh, ats, startGen, opts.barrier !== undefined, rebuild, opts);
      await fresh.device.sync();
      // Anyone's move since the start (a member failing on either side) may mean bytes copied from a member that missed writes.
      await this.refresh();
      this.checkRebuilding(fresh);
      this.checkUnmoved(startGen);
      this.checkOpen('rebuild');
      // Whole and durable: it serves reads from now on, and the next generation names it current
      // (called off when another writer moved the pool meanwhile).
      fresh.state = 'healthy';
      fresh.reason = null;
      this.joiningSlot = slot;
      const join = this.labelChain.then(() => this.writeGeneration(new Set([slot])));
      this.labelChain = join.catch(() => undefined);
      try {
        await join;
      } finally {
        this.joiningSlot = -1;
      }
      if (fresh.state !== 'healthy') throw new PagepairError('IO_ERROR', `pool ${this.poolId}: slot ${slot} (${fresh.name}) not brought in: ${fresh.reason ?? fresh.state}`);
    })();
    rebuild.run = run.catch(() => undefined);
    try {
      await run;
    } catch (err) {
      if (this.members[slot] === fresh && (fresh.state === 'rebuilding' || fresh.state === 'healthy')) {
        this.dropped = { slot, name: fresh.name };
        fresh.state = 'stale';
        fresh.reason = `rebuild stopped at ${rebuild.doneBytes} of ${rebuild.totalBytes} bytes: ${err instanceof Error ? err.message : String(err)}`;
        // The record goes from the labels: the other pool object stops writing it.
        await this.moveGenerationOn().catch(() => undefined);
      }
      throw err;
    } finally {
      this.rebuild = null;
      this.rebuildAnnounced = 0;
    }
  }

  private checkRebuilding(m: Member): void {
    if (m.state !== 'rebuilding') throw new PagepairError('IO_ERROR', `pool ${this.poolId}: ${m.name} failed during its rebuild: ${m.reason ?? m.state}`);
  }

  private checkUnmoved(startGen: number): void {
    if (this.gen !== startGen) {
      throw new PagepairError('IO_ERROR', `pool ${this.poolId}: the pool moved from generation ${startGen} to ${this.gen} during the rebuild (a device failed on one controller's path): rebuild again`);
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    // A rebuild under way stops at its next chunk and leaves its device labelled as unfinished.
    await this.rebuild?.run;
    await this.labelChain;
    await Promise.all(this.members.map((m) => m.device.close().catch(() => undefined)));
  }

  /** Copy every chunk (or those at `ats`) onto `fresh` from a healthy member, each checked after the copy when shared. */
  private async fill(fresh: Member, ats: number[] | null, startGen: number, shared: boolean, progress: { doneBytes: number; totalBytes: number }, opts: MaintenanceOptions): Promise<void> {
    const pace = new Pacer(opts.rateBytesPerSec ?? 0);
    const offsets = ats ?? Array.from({ length: Math.ceil(this.sizeBytes / this.copyChunkBytes) }, (_, k) => k * this.copyChunkBytes);
    for (const at of offsets) {
      opts.signal?.throwIfAborted();
      this.checkOpen('rebuild');
      this.checkUnmoved(startGen);
      const n = Math.min(this.copyChunkBytes, this.sizeBytes - at);
      const release = await this.locks.acquire(at, n, true);
      try {
        await copyVerified(`bytes ${at}..${at + n}`, shared, {
          expected: async () => {
            const data = await this.readChunk(at, n);
            if (data === null) throw this.noneLeft('read');
            return { bytes: data, readBytes: n };
          },
          write: async (off, bytes) => {
            this.checkRebuilding(fresh);
            try {
              await fresh.device.write(POOL_LABEL_AREA_BYTES + at + off, bytes);
            } catch (err) {
              await this.fail(fresh, `write failed: ${String(err)}`);
              throw new PagepairError('IO_ERROR', `pool ${this.poolId}: ${fresh.name} failed during its rebuild: ${String(err)}`);
            }
          },
          readBack: async () => Buffer.from(await fresh.device.read(POOL_LABEL_AREA_BYTES + at, n)),
          ...(opts.pause !== undefined ? { pause: opts.pause } : {}),
        });
      } finally {
        release();
      }
      // A write to it that failed meanwhile stops the rebuild too.
      this.checkRebuilding(fresh);
      progress.doneBytes += n;
      opts.onProgress?.(progress.doneBytes, progress.totalBytes);
      await pace.after(n, opts.signal);
    }
  }

  /** The chunk as the first healthy member that can read it has it, or null. */
  private async readChunk(at: number, n: number): Promise<Buffer | null> {
    for (const m of this.members) {
      if (m.state !== 'healthy') continue;
      try {
        return Buffer.from(await m.device.read(POOL_LABEL_AREA_BYTES + at, n));
      } catch (err) {
        await this.fail(m, `read failed: ${String(err)}`);
      }
    }
    return null;
  }

  /** Every healthy member's copy of a chunk, in slot order (a member whose read fails is marked failed). Call under the chunk's lock. */
  private async readCopies(at: number, n: number): Promise<{ m: Member; data: Buffer }[]> {
    const copies: { m: Member; data: Buffer }[] = [];
    for (const m of this.members) {
      if (m.state !== 'healthy') continue;
      try {
        copies.push({ m, data: Buffer.from(await m.device.read(POOL_LABEL_AREA_BYTES + at, n)) });
      } catch (err) {
        await this.fail(m, `read failed: ${String(err)}`);
      }
    }
    return copies;
  }

  /** The first healthy member's copy of a chunk, and the members whose copy differs from it; null when none could be read. */
  private async differingCopies(at: number, n: number): Promise<{ first: Buffer; differ: Member[] } | null> {
    const release = await this.locks.acquire(at, n, true);
    try {
      const [first, ...rest] = await this.readCopies(at, n);
      if (first === undefined) return null;
      return { first: first.data, differ: rest.filter((c) => !c.data.equals(first.data)).map((c) => c.m) };
    } finally {
      release();
    }
  }

  /** Compare a chunk on every healthy member with the first's copy; with repair, write that copy over the others' (nobody else writing). */
  private async compareChunk(at: number, n: number, repair: boolean): Promise<'same' | 'differs' | 'repaired' | 'unreadable'> {
    const release = await this.locks.acquire(at, n, true);
    try {
      const [first, ...rest] = await this.readCopies(at, n);
      if (first === undefined) return 'unreadable';
      const differing = rest.filter((c) => !c.data.equals(first.data));
      if (differing.length === 0) return 'same';
      if (!repair) return 'differs';
      const results = await Promise.allSettled(differing.map((c) => c.m.device.write(POOL_LABEL_AREA_BYTES + at, first.data)));
      for (let i = 0; i < differing.length; i++) {
        const r = results[i]!;
        if (r.status === 'rejected') await this.fail(differing[i]!.m, `repair write failed: ${String(r.reason)}`);
      }
      return 'repaired';
    } finally {
      release();
    }
  }

  /**
   * Run op on every healthy member (and, with toRebuilding, on one being
   * rebuilt); the members it fails on are marked failed (durably) before
   * this settles. It succeeds when a healthy member took it.
   */
  private async onEach(what: string, op: (m: Member) => Promise<void>, toRebuilding: boolean): Promise<void> {
    const healthy = this.members.filter((m) => m.state === 'healthy');
    const rebuilding = toRebuilding ? this.members.filter((m) => m.state === 'rebuilding') : [];
    let ok = 0;
    // A member being rebuilt is written last, after the healthy ones are done (pool-rebuild.ts).
    for (const targets of rebuilding.length === 0 ? [healthy] : [healthy, rebuilding]) {
      const results = await Promise.allSettled(targets.map(op));
      for (let i = 0; i < targets.length; i++) {
        const r = results[i]!;
        const m = targets[i]!;
        if (r.status === 'fulfilled') {
          if (m.state === 'healthy') ok++;
        } else {
          await this.fail(m, `${what} failed: ${String(r.reason)}`);
        }
      }
    }
    // A member that left just before this began was not among its targets, and the generation
    // that says it left may not be durable yet: this reached only the members left, so it is
    // answered after that generation, as the operation that failed the member is.
    if (this.degraded) await this.labelChain;
    if (ok === 0) throw this.noneLeft(what);
  }

  /** Mark a member failed; a healthy one's leaving writes the next generation to the members left (synced) before going on. */
  private fail(m: Member, reason: string): Promise<void> {
    if (m.state === 'rebuilding') {
      // It was never current, but the labels record its rebuild: the next generation drops the
      // record, so the other pool object stops writing it too and a rebuild under way there stops.
      m.state = 'failed';
      m.reason = reason;
      this.dropped = { slot: m.slot, name: m.name };
      return this.moveGenerationOn();
    }
    if (m.state !== 'healthy') return this.labelChain;
    m.state = 'failed';
    m.reason = reason;
    const run = this.labelChain.then(() => this.writeGeneration());
    this.labelChain = run.catch(() => undefined);
    return run;
  }

  /** Write the next generation to the healthy members (after members left without fail(): at open). */
  private moveGenerationOn(): Promise<void> {
    const run = this.labelChain.then(() => this.writeGeneration());
    this.labelChain = run.catch(() => undefined);
    return run;
  }

  /**
   * Write the next generation to the healthy members, naming the others as
   * out (joining: slots made whole, named no more); see moveGeneration.
   */
  private async writeGeneration(joining?: ReadonlySet<number>): Promise<void> {
    const moved = await moveGeneration(this.members, {
      poolId: this.poolId,
      base: this.gen,
      ...(joining === undefined ? {} : { joining }),
      labelFor: (m, generation, failedSlots, currentSince, seen) =>
        encodePoolLabel({ poolId: this.poolId, layout: 'mirror', slot: m.slot, devices: this.members.length, generation, dataBytes: this.sizeBytes, failedSlots, currentSince, rebuilding: this.rebuildRecord(seen) }),
      onView: (view) => this.onLabelsRead(view),
    });
    this.gen = Math.max(this.gen, moved);
  }

  /** Our rebuild under way, and the generation that announced it (0: not yet). */
  private ourRebuild(): { slot: number; announced: number } | null {
    return this.rebuild === null ? null : { slot: this.rebuild.slot, announced: this.rebuildAnnounced };
  }

  /** A label move read the labels: members being rebuilt follow what they say (the device is taken up by refresh). */
  private onLabelsRead(view: PoolView): void {
    if (view.generation < this.gen) return;
    const dropped = settleRebuilding(this.members, view, this.ourRebuild());
    if (dropped !== null) this.dropped = dropped;
  }

  /** The rebuild our labels record (rebuildRecordOf). */
  private rebuildRecord(seen: RebuildRecord | null = null): RebuildRecord | null {
    return rebuildRecordOf(this.members, this.dropped, seen);
  }

  private noneLeft(what: string): PagepairError {
    return new PagepairError('IO_ERROR', `pool ${this.poolId}: ${what} failed on every device (${this.members.map((m) => `${m.name}: ${m.reason ?? m.state}`).join('; ')})`);
  }

  private checkOpen(what: string): void {
    if (this.closing) throw new PagepairError('SHUTTING_DOWN', `pool ${this.poolId}: closed during ${what}`);
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || offset + length > this.sizeBytes) {
      throw new PagepairError('OUT_OF_RANGE', `pool ${this.poolId}: ${length} bytes at ${offset} are outside its ${this.sizeBytes} bytes`);
    }
  }
}

/** Holds a copy to rateBytesPerSec by sleeping when it runs ahead (0: no limit). */
class Pacer {
  private readonly startMs = performance.now();
  private bytes = 0;

  constructor(private readonly rateBytesPerSec: number) {}

  async after(bytes: number, signal: AbortSignal | undefined): Promise<void> {
    if (this.rateBytesPerSec <= 0) return;
    this.bytes += bytes;
    const dueMs = (this.bytes / this.rateBytesPerSec) * 1000;
    const aheadMs = dueMs - (performance.now() - this.startMs);
    if (aheadMs > 1) await sleep(aheadMs, undefined, signal === undefined ? {} : { signal });
  }
}
