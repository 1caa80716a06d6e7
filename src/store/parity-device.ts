// A Device over N devices with parity (issue 14: the `parity` and `parity2`
// pool layouts). Each member starts with a pool label (pool-label.ts); the
// pool's bytes follow in two parts:
//
// - The mirrored prefix, logical [0, mirroredPrefixBytes): plain copies at
//   the same offset on every member, written to all of them and read from
//   any healthy one. The superblock, mailbox and allocation table live
//   there: both controllers write them at once, so they are never in a
//   parity row (see pool.ts).
// - Rows after it. Row r holds one chunk of every member, at member offset
//   label area + mirroredPrefixBytes + r × chunkBytes: N − 1 data chunks and
//   P (`parity`), or N − 2 data chunks, P and Q (`parity2`; Q as parity.ts
//   defines it, with i the data chunk's place in the row). The parity
//   rotates left-symmetrically, as Linux md's default: P of row r is on
//   member N − 1 − (r mod N), Q on the member after it, and data chunk i on
//   member (P + parities + i) mod N, so consecutive data chunks walk the
//   members in turn and every member holds parity for 1 row in N.
//
// Writes are reconstruct-writes: for each row touched the other data
// chunks' bytes under the write's in-chunk range are read (a lost member's
// rebuilt from parity), and P (and Q) over that range are computed afresh
// and written with the data. Parity is never updated from its old bytes, so
// a row whose parity was wrong becomes right when written. Operations on
// one row are serialized within this object (a lock per row; the prefix is
// locked in units of rowBytes); keeping two controllers off one row is the
// store's work (pool.ts).
//
// A member whose read, write or sync fails is marked failed, and the pool's
// next generation, naming the members out, is written (synced) to the
// members left before the operation is answered, as mirror-device.ts does.
// Members are judged by the newest labels (pool-members.ts): one they name
// is stale; one they do not name is current even when its own label is
// older (the other controller's label write has not reached it yet). A member being rebuilt
// (replace) is written to but never read, and carries generation 0 until it
// is whole: a crash during the rebuild leaves it stale.
//
// create leaves the members' bytes as they are: on zeroed members the parity
// already agrees with the data; over used ones, scrub with repair before
// trusting a degraded read of bytes never written through the pool.

import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { PagepairError } from '../protocol/errors.js';
import { parityP, parityQ, recoverStripe } from './parity.js';
import { POOL_LABEL_AREA_BYTES, POOL_MEMBERS_MAX, encodePoolLabel, type PoolLabel } from './pool-label.js';
import { moveGeneration, poolView, readPoolLabel, readPoolLabels, staleness, type SlotMember } from './pool-members.js';
import type { MaintenanceOptions, MemberOpener, Pool, PoolMember, PoolStatus, ProgressOptions, ScrubReport } from './pool.js';
import { SHARED_RECHECKS, copyVerified, followRebuild, rebuildRecordOf, settleRebuilding, WritesUnderWay, type RebuildRecord } from './pool-rebuild.js';
import type { PoolView } from './pool-members.js';

export type ParityLayout = 'parity' | 'parity2';

export interface ParityCreateOptions {
  layout: ParityLayout;
  /** A multiple of 4096. */
  chunkBytes: number;
  /** A multiple of rowBytes: chunkBytes × (members − parities). */
  mirroredPrefixBytes: number;
  poolId?: string;
  /** How to open a device the other controller's pool object is rebuilding a slot onto (pool-rebuild.ts). */
  openMember?: MemberOpener;
}

export interface ParityOpenOptions {
  /** How to open a device the other controller's pool object is rebuilding a slot onto (pool-rebuild.ts). */
  openMember?: MemberOpener;
}

/** What a rebuild copies: every prefix unit and row (null), or these. */
interface RebuildRanges {
  units: number[];
  rows: number[];
}

const CHUNK_ALIGN_BYTES = 4096;

/** What a member holds in a row. */
type Piece = { kind: 'data'; index: number } | { kind: 'p' } | { kind: 'q' };

/** Pieces of one row over one in-chunk range, as read from the healthy members; null where not read. */
interface RowPieces {
  data: (Buffer | null)[];
  p: Buffer | null;
  q: Buffer | null;
}

function paritiesOf(layout: ParityLayout): number {
  return layout === 'parity2' ? 2 : 1;
}

function minMembers(layout: ParityLayout): number {
  return layout === 'parity2' ? 4 : 3;
}

/** Await every promise; then reject with the first error, if any (no operation is left running). */
async function settleAll(ps: Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(ps);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/** Holds work to rateBytesPerSec, counting the bytes read from the members. */
class Pacer {
  private readonly startMs = performance.now();
  private bytes = 0;
  constructor(
    private readonly rateBytesPerSec: number,
    private readonly signal: AbortSignal | undefined,
  ) {}

  async add(bytes: number): Promise<void> {
    this.bytes += bytes;
    if (this.rateBytesPerSec <= 0) return;
    const waitMs = this.startMs + (this.bytes / this.rateBytesPerSec) * 1000 - performance.now();
    if (waitMs > 1) await sleep(waitMs, undefined, this.signal === undefined ? {} : { signal: this.signal });
  }
}

export class ParityDevice implements Pool {
  readonly sizeBytes: number;
  readonly rowBytes: number;
  private readonly n: number;
  private readonly parities: number;
  private readonly dataChunks: number;
  private nextRead = 0;
  /** Label writes after a member failed or joined, one at a time. */
  private labelChain: Promise<void> = Promise.resolve();
  /** The tail of each busy row's queue; prefix unit k is key −(k + 1). Deleted when idle. */
  private readonly locks = new Map<number, Promise<void>>();
  private rebuild: { slot: number; doneBytes: number; totalBytes: number } | null = null;
  /** The generation that announced our rebuild in the labels (0: not yet). */
  private rebuildAnnounced = 0;
  /** Refreshes, one after the other. */
  private refreshChain: Promise<unknown> = Promise.resolve();
  /** The slot our rebuild is naming in right now (−1: none): its own label lags that move, a refresh meanwhile must not judge it by it. */
  private joiningSlot = -1;
  /** A rebuild whose device we stopped writing (or could not open): our labels no longer record it. */
  private dropped: { slot: number; name: string } | null = null;
  private openMember: MemberOpener | undefined;
  private readonly writes = new WritesUnderWay();

  private constructor(
    private readonly members: SlotMember[],
    readonly poolId: string,
    readonly layout: ParityLayout,
    readonly chunkBytes: number,
    readonly mirroredPrefixBytes: number,
    private readonly rows: number,
    private gen: number,
  ) {
    this.n = members.length;
    this.parities = paritiesOf(layout);
    this.dataChunks = this.n - this.parities;
    this.rowBytes = chunkBytes * this.dataChunks;
    this.sizeBytes = mirroredPrefixBytes + rows * this.rowBytes;
  }

  /**
   * Label `members` (in slot order) as a new parity pool at generation 1 and
   * open it. Whatever they held is the pool's now.
   */
  static async create(members: readonly PoolMember[], opts: ParityCreateOptions): Promise<ParityDevice> {
    const { layout, chunkBytes, mirroredPrefixBytes } = opts;
    if (layout !== 'parity' && layout !== 'parity2') throw new PagepairError('BAD_CONFIG', `a parity pool's layout is parity or parity2, got ${String(layout)}`, 'layout');
    const n = members.length;
    if (n < minMembers(layout) || n > POOL_MEMBERS_MAX) throw new PagepairError('BAD_CONFIG', `a ${layout} pool needs ${minMembers(layout)} to ${POOL_MEMBERS_MAX} devices, got ${n}`, 'devices');
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes <= 0 || chunkBytes % CHUNK_ALIGN_BYTES !== 0 || chunkBytes > 0xffff_f000) {
      throw new PagepairError('BAD_CONFIG', `chunkBytes must be a positive multiple of ${CHUNK_ALIGN_BYTES} below 4 GiB, got ${chunkBytes}`, 'chunkBytes');
    }
    const rowBytes = chunkBytes * (n - paritiesOf(layout));
    if (!Number.isSafeInteger(mirroredPrefixBytes) || mirroredPrefixBytes < 0 || mirroredPrefixBytes % rowBytes !== 0) {
      throw new PagepairError('BAD_CONFIG', `mirroredPrefixBytes must be a multiple of the row (${rowBytes} bytes), got ${mirroredPrefixBytes}`, 'mirroredPrefixBytes');
    }
    const smallest = Math.min(...members.map((m) => m.device.sizeBytes));
    const rows = Math.floor((smallest - POOL_LABEL_AREA_BYTES - mirroredPrefixBytes) / chunkBytes);
    if (rows < 1) throw new PagepairError('BAD_CONFIG', `the smallest device (${smallest} bytes) has no room for one row after the labels and the ${mirroredPrefixBytes}-byte mirrored prefix`, 'devices');
    const poolId = opts.poolId ?? randomUUID();
    const dataBytes = mirroredPrefixBytes + rows * chunkBytes;
    await Promise.all(
      members.map(async (m, slot) => {
        const label = encodePoolLabel({ poolId, layout, slot, devices: n, generation: 1, dataBytes, chunkBytes, mirroredPrefixBytes });
        // Copy 1 takes generation 1; copy 0 is cleared so no older label there outranks it.
        await m.device.write(0, Buffer.alloc(label.length));
        await m.device.write(4096, label);
        await m.device.sync();
      }),
    );
    return ParityDevice.open(members, opts.openMember !== undefined ? { openMember: opts.openMember } : {});
  }

  /** Open a parity pool from its devices, in slot order. A device whose label cannot be read opens as failed. */
  static async open(members: readonly PoolMember[], opts: ParityOpenOptions = {}): Promise<ParityDevice> {
    const labels = await Promise.all(members.map((m) => readPoolLabel(m.device).catch((err: unknown) => ({ unreadable: `label read failed: ${String(err)}` }))));
    const first = labels.find((l): l is PoolLabel => typeof l !== 'string' && !('unreadable' in l));
    if (first === undefined) throw new PagepairError('STORE_MISMATCH', `no device holds a pool label: ${members.map((m, i) => `${m.name}: ${describe(labels[i]!)}`).join('; ')}`, 'devices');
    const firstName = members[labels.indexOf(first)]!.name;
    if (first.layout !== 'parity' && first.layout !== 'parity2') {
      throw new PagepairError('STORE_MISMATCH', `device ${firstName} is labelled for a ${first.layout} pool, not a parity one`, 'devices');
    }
    const layout = first.layout;
    const chunkBytes = first.chunkBytes ?? 0;
    const prefixBytes = first.mirroredPrefixBytes ?? 0;
    if (first.devices < minMembers(layout)) throw new PagepairError('STORE_MISMATCH', `the label of device ${firstName} names a ${layout} pool of ${first.devices} devices, fewer than it needs`, 'devices');
    const rowBytes = chunkBytes * (first.devices - paritiesOf(layout));
    const rows = chunkBytes > 0 ? (first.dataBytes - prefixBytes) / chunkBytes : 0;
    if (chunkBytes % CHUNK_ALIGN_BYTES !== 0 || chunkBytes === 0 || prefixBytes % rowBytes !== 0 || !Number.isInteger(rows) || rows < 1) {
      throw new PagepairError('STORE_MISMATCH', `the label of device ${firstName} has no sound geometry (chunk ${chunkBytes}, prefix ${prefixBytes}, data ${first.dataBytes} bytes)`, 'devices');
    }
    const view = poolView(labels, first.poolId);
    const generation = view.generation;
    const slots: SlotMember[] = members.map((m, slot) => {
      const l = labels[slot]!;
      if (typeof l !== 'string' && 'unreadable' in l) return { ...m, slot, state: 'failed', reason: l.unreadable };
      if (typeof l === 'string') throw new PagepairError('STORE_MISMATCH', `device ${m.name}: ${l}`, 'devices');
      const wrong = labelMismatch(m.name, l, first, slot, members.length);
      if (wrong !== null) throw new PagepairError('STORE_MISMATCH', wrong, 'devices');
      if (m.device.sizeBytes < POOL_LABEL_AREA_BYTES + first.dataBytes) {
        throw new PagepairError('STORE_MISMATCH', `device ${m.name} holds ${m.device.sizeBytes} bytes, the pool keeps ${POOL_LABEL_AREA_BYTES + first.dataBytes} on each`, 'devices');
      }
      // Named out by the newest labels: it missed writes. Not named, with an older label: its label write is late, it is current.
      const stale = staleness(l, view);
      if (stale !== null) return { ...m, slot, state: 'stale', reason: stale };
      return { ...m, slot, state: 'healthy', reason: null };
    });
    const device = new ParityDevice(slots, first.poolId, layout, chunkBytes, prefixBytes, rows, generation);
    device.openMember = opts.openMember;
    // A rebuild the other controller runs: we write its device too, or say in the labels we cannot.
    if (view.rebuilding !== null) await device.followRebuild(view);
    device.checkServing('open');
    return device;
  }

  get generation(): number {
    return this.gen;
  }

  /** Serving with fewer devices than it has (or one being rebuilt). */
  get degraded(): boolean {
    return this.members.some((m) => m.state !== 'healthy');
  }

  status(): PoolStatus {
    const notHealthy = this.members.filter((m) => m.state !== 'healthy').length;
    return {
      poolId: this.poolId,
      layout: this.layout,
      generation: this.gen,
      chunkBytes: this.chunkBytes,
      sizeBytes: this.sizeBytes,
      members: this.members.map((m) => ({ slot: m.slot, name: m.name, state: m.state, reason: m.reason })),
      degraded: notHealthy > 0,
      failuresTolerated: Math.max(0, this.parities - notHealthy),
      rebuild: this.rebuild === null ? null : { ...this.rebuild },
    };
  }

  // ---- placement

  /** Left-symmetric: P of row r on member N − 1 − (r mod N). */
  private pSlot(r: number): number {
    return this.n - 1 - (r % this.n);
  }

  private qSlot(r: number): number {
    return (this.pSlot(r) + 1) % this.n;
  }

  private dataSlot(r: number, i: number): number {
    return (this.pSlot(r) + this.parities + i) % this.n;
  }

  private pieceOf(r: number, slot: number): Piece {
    const k = (slot - this.pSlot(r) + this.n) % this.n;
    if (k === 0) return { kind: 'p' };
    if (k === 1 && this.parities === 2) return { kind: 'q' };
    return { kind: 'data', index: k - this.parities };
  }

  /** Where row r's chunk starts on every member. */
  private rowOffset(r: number): number {
    return POOL_LABEL_AREA_BYTES + this.mirroredPrefixBytes + r * this.chunkBytes;
  }

  // ---- Device

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    this.checkServing('read');
    const end = offset + length;
    const prefix = this.mirroredPrefixBytes;
    if (end <= prefix) return this.readPrefix(offset, length);
    const firstRow = Math.floor((Math.max(offset, prefix) - prefix) / this.rowBytes);
    const lastRow = Math.floor((end - 1 - prefix) / this.rowBytes);
    if (offset >= prefix && firstRow === lastRow) {
      const start = prefix + firstRow * this.rowBytes;
      return this.readRow(firstRow, offset - start, end - start);
    }
    const out = Buffer.allocUnsafe(length);
    const tasks: Promise<void>[] = [];
    if (offset < prefix) tasks.push(this.readPrefix(offset, prefix - offset).then((b) => void b.copy(out, 0)));
    for (let r = firstRow; r <= lastRow; r++) {
      const start = prefix + r * this.rowBytes;
      const a = Math.max(offset, start);
      const b = Math.min(end, start + this.rowBytes);
      tasks.push(this.readRow(r, a - start, b - start).then((buf) => void buf.copy(out, a - offset)));
    }
    await settleAll(tasks);
    return out;
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.writeParts(offset, [data]);
  }

  writeParts(offset: number, parts: readonly Buffer[]): Promise<void> {
    return this.writes.track(this.writePartsNow(offset, parts));
  }

  private async writePartsNow(offset: number, parts: readonly Buffer[]): Promise<void> {
    const data = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    this.checkRange(offset, data.length);
    this.checkServing('write');
    if (data.length === 0) return;
    const end = offset + data.length;
    const prefix = this.mirroredPrefixBytes;
    const tasks: Promise<void>[] = [];
    if (offset < prefix) tasks.push(this.writePrefix(offset, data.subarray(0, Math.min(end, prefix) - offset)));
    if (end > prefix) {
      const firstRow = Math.floor((Math.max(offset, prefix) - prefix) / this.rowBytes);
      const lastRow = Math.floor((end - 1 - prefix) / this.rowBytes);
      for (let r = firstRow; r <= lastRow; r++) {
        const start = prefix + r * this.rowBytes;
        const a = Math.max(offset, start);
        const b = Math.min(end, start + this.rowBytes);
        tasks.push(this.withLock(r, () => this.writeRow(r, a - start, b - start, data.subarray(a - offset, b - offset))));
      }
    }
    await settleAll(tasks);
  }

  async sync(): Promise<void> {
    this.checkServing('sync');
    await this.onMembers('sync', this.writable().map((m) => ({ m, run: () => m.device.sync() })));
  }

  async close(): Promise<void> {
    await this.labelChain;
    await Promise.all(this.members.map((m) => m.device.close().catch(() => undefined)));
  }

  // ---- the mirrored prefix

  private async readPrefix(offset: number, length: number): Promise<Buffer> {
    // Members in turn from where the last read began: each read tries every member once.
    const start = this.nextRead++;
    for (let i = 0; i < this.n; i++) {
      const m = this.members[(start + i) % this.n]!;
      if (m.state !== 'healthy') continue;
      try {
        return await m.device.read(POOL_LABEL_AREA_BYTES + offset, length);
      } catch (err) {
        await this.fail(m, `read failed: ${String(err)}`);
      }
    }
    throw this.lostError('read');
  }

  /** Each prefix unit (rowBytes) under its lock, so concurrent writes land in one order on every member. */
  private async writePrefix(offset: number, data: Buffer): Promise<void> {
    const tasks: Promise<void>[] = [];
    for (let at = offset; at < offset + data.length; ) {
      const unit = Math.floor(at / this.rowBytes);
      const to = Math.min(offset + data.length, (unit + 1) * this.rowBytes);
      const piece = data.subarray(at - offset, to - offset);
      const pos = at;
      tasks.push(this.withLock(-(unit + 1), () => this.onMembers('write', this.writable().map((m) => ({ m, run: () => m.device.write(POOL_LABEL_AREA_BYTES + pos, piece) })))));
      at = to;
    }
    await settleAll(tasks);
  }

  // ---- rows

  /** Bytes [a, b) of row r: straight from the data chunks, a lost member's part rebuilt under the row's lock. */
  private async readRow(r: number, a: number, b: number): Promise<Buffer> {
    const C = this.chunkBytes;
    const i0 = Math.floor(a / C);
    const i1 = Math.floor((b - 1) / C);
    if (i0 === i1) {
      const m = this.members[this.dataSlot(r, i0)]!;
      if (m.state === 'healthy') {
        try {
          return await m.device.read(this.rowOffset(r) + a - i0 * C, b - a);
        } catch (err) {
          await this.fail(m, `read failed: ${String(err)}`);
        }
      }
      return this.withLock(r, async () => (await this.rowData(r, a - i0 * C, b - i0 * C, [i0]))[i0]!);
    }
    const out = Buffer.allocUnsafe(b - a);
    const tasks: Promise<void>[] = [];
    for (let i = i0; i <= i1; i++) {
      const from = Math.max(a, i * C);
      const to = Math.min(b, (i + 1) * C);
      tasks.push(this.readRow(r, from, to).then((buf) => void buf.copy(out, from - a)));
    }
    await settleAll(tasks);
    return out;
  }

  /**
   * Row r's pieces over in-chunk [lo, hi) from the healthy members: the data
   * chunks, and P and Q too when a data chunk's member is not healthy (or
   * when asked). A member whose read fails is marked failed and the read is
   * made again without it.
   */
  private async readPieces(r: number, lo: number, hi: number, withParity: boolean): Promise<RowPieces> {
    for (;;) {
      this.checkServing('read');
      const lostData = Array.from({ length: this.dataChunks }, (_, i) => this.members[this.dataSlot(r, i)]!.state !== 'healthy').some((x) => x);
      const from = this.members.filter((m) => m.state === 'healthy' && (withParity || lostData || this.pieceOf(r, m.slot).kind === 'data'));
      const bufs = await this.readEach(from, this.rowOffset(r) + lo, hi - lo);
      if (bufs === null) continue;
      const got: RowPieces = { data: new Array<Buffer | null>(this.dataChunks).fill(null), p: null, q: null };
      for (let k = 0; k < from.length; k++) {
        const buf = bufs[k]!;
        const piece = this.pieceOf(r, from[k]!.slot);
        if (piece.kind === 'data') got.data[piece.index] = buf;
        else if (piece.kind === 'p') got.p = buf;
        else got.q = buf;
      }
      return got;
    }
  }

  /** Row r's data chunks over in-chunk [lo, hi); those in `want` at least are filled in (rebuilt where lost). Call under the row's lock when any may be lost. */
  private async rowData(r: number, lo: number, hi: number, want: readonly number[]): Promise<(Buffer | null)[]> {
    for (;;) {
      const direct = want.map((i) => this.members[this.dataSlot(r, i)]!);
      if (direct.every((m) => m.state === 'healthy')) {
        const bufs = await this.readEach(direct, this.rowOffset(r) + lo, hi - lo);
        if (bufs === null) continue;
        const out = new Array<Buffer | null>(this.dataChunks).fill(null);
        want.forEach((i, k) => (out[i] = bufs[k]!));
        return out;
      }
      const got = await this.readPieces(r, lo, hi, false);
      return recoverStripe(got.data, got.p, got.q);
    }
  }

  /** Write `src` over bytes [a, b) of row r: reconstruct-write of the in-chunk range the write covers. Under the row's lock. */
  private async writeRow(r: number, a: number, b: number, src: Buffer): Promise<void> {
    const C = this.chunkBytes;
    const i0 = Math.floor(a / C);
    const i1 = Math.floor((b - 1) / C);
    const lo = i0 === i1 ? a - i0 * C : 0;
    const hi = i0 === i1 ? b - i0 * C : C;
    const chunks = new Array<Buffer>(this.dataChunks);
    const need: number[] = [];
    for (let i = 0; i < this.dataChunks; i++) {
      const cs = i * C + lo;
      const ce = i * C + hi;
      if (a <= cs && b >= ce) chunks[i] = src.subarray(cs - a, ce - a);
      else need.push(i);
    }
    if (need.length > 0) {
      const old = await this.rowData(r, lo, hi, need);
      for (const i of need) {
        // A copy: a device's read may be a view shared with other reads.
        const buf = Buffer.from(old[i]!);
        const ws = Math.max(a, i * C + lo);
        const we = Math.min(b, i * C + hi);
        if (ws < we) src.copy(buf, ws - (i * C + lo), ws - a, we - a);
        chunks[i] = buf;
      }
    }
    const base = this.rowOffset(r);
    const ops: { m: SlotMember; run: () => Promise<void> }[] = [];
    const put = (slot: number, offset: number, data: Buffer): void => {
      const m = this.members[slot]!;
      if (m.state === 'healthy' || m.state === 'rebuilding') ops.push({ m, run: () => m.device.write(offset, data) });
    };
    // A member being rebuilt that holds a data chunk gets that chunk's bytes over the whole in-chunk
    // range, written or not: a rebuild reconstructing the chunk from the others while this write's
    // data and parity have landed on some members only may have copied bytes that are neither the old
    // nor the new; this write, reaching it last, puts them right (pool-rebuild.ts).
    const rebuilding = this.members.find((m) => m.state === 'rebuilding');
    const rebuiltPiece = rebuilding === undefined ? null : this.pieceOf(r, rebuilding.slot);
    for (let i = i0; i <= i1; i++) {
      if (rebuiltPiece?.kind === 'data' && rebuiltPiece.index === i) continue;
      const ws = Math.max(a, i * C);
      const we = Math.min(b, (i + 1) * C);
      put(this.dataSlot(r, i), base + ws - i * C, src.subarray(ws - a, we - a));
    }
    if (rebuiltPiece?.kind === 'data') put(rebuilding!.slot, base + lo, chunks[rebuiltPiece.index]!);
    put(this.pSlot(r), base + lo, parityP(chunks));
    if (this.parities === 2) put(this.qSlot(r), base + lo, parityQ(chunks));
    await this.onMembers('write', ops);
  }

  /** Recompute row r's P (and Q) from its data chunks as they stand and write them. Under the row's lock. */
  private async rewriteParity(r: number, data: Buffer[]): Promise<void> {
    const ops: { m: SlotMember; run: () => Promise<void> }[] = [];
    const base = this.rowOffset(r);
    const p = this.members[this.pSlot(r)]!;
    if (p.state === 'healthy' || p.state === 'rebuilding') {
      const buf = parityP(data);
      ops.push({ m: p, run: () => p.device.write(base, buf) });
    }
    if (this.parities === 2) {
      const q = this.members[this.qSlot(r)]!;
      if (q.state === 'healthy' || q.state === 'rebuilding') {
        const buf = parityQ(data);
        ops.push({ m: q, run: () => q.device.write(base, buf) });
      }
    }
    await this.onMembers('write', ops);
  }

  // ---- Pool

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
    const labels = await readPoolLabels(this.members);
    const view = poolView(labels, this.poolId);
    const before = this.gen;
    this.gen = Math.max(this.gen, view.generation);
    // Members being rebuilt are judged by the labels' rebuild record alone (their own label may lag the move that names them in).
    const wasRebuilding = new Set(this.members.filter((m) => m.state === 'rebuilding').map((m) => m.slot));
    if (view.generation >= before) await this.followRebuild(view);
    const reference = this.labelFields(0, this.gen);
    // Failed after the loop: failing one moves the generation on, and the labels read before
    // that would then make every other member look stale.
    const failing: { m: SlotMember; reason: string }[] = [];
    for (const m of this.members) {
      if (m.state === 'rebuilding' || wasRebuilding.has(m.slot) || m.slot === this.joiningSlot) continue;
      const l = labels[m.slot]!;
      const wrong = typeof l === 'string' ? `device ${m.name}: ${l}` : labelMismatch(m.name, l, reference, m.slot, this.n);
      if (wrong !== null) {
        if (m.state === 'healthy') failing.push({ m, reason: wrong });
        continue;
      }
      const label = l as PoolLabel;
      // Judged by the newest labels: named out there, it missed writes; not named, an older
      // label of its own is one whose write has not landed yet (another object's move under way).
      const stale = view.generation < this.gen ? null : staleness(label, view);
      if (stale !== null) {
        if (m.state === 'healthy' || m.state === 'stale') {
          m.state = 'stale';
          m.reason = stale;
        }
      } else if (m.state === 'stale' && label.generation >= view.generation && view.generation >= this.gen) {
        // Made whole and current by another pool object (a replace there).
        m.state = 'healthy';
        m.reason = null;
      }
    }
    for (const { m, reason } of failing) await this.fail(m, reason);
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
        moveOn: () => this.bumpGeneration(),
        drain: () => this.writes.drain(),
      },
      view,
    );
  }

  repairRange(offset: number, length: number): Promise<void> {
    return this.writes.track(this.repairRangeNow(offset, length));
  }

  private async repairRangeNow(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
    this.checkServing('repair');
    if (length === 0) return;
    const end = offset + length;
    const prefix = this.mirroredPrefixBytes;
    for (let unit = Math.floor(offset / this.rowBytes); unit * this.rowBytes < Math.min(end, prefix); unit++) {
      const from = Math.max(offset, unit * this.rowBytes);
      const to = Math.min(end, (unit + 1) * this.rowBytes, prefix);
      await this.withLock(-(unit + 1), async () => {
        const [source, bytes] = await this.readPrefixFrom(from, to - from);
        await this.onMembers('repair', this.writable().filter((m) => m !== source).map((m) => ({ m, run: () => m.device.write(POOL_LABEL_AREA_BYTES + from, bytes) })));
      });
    }
    if (end <= prefix) return;
    const firstRow = Math.floor((Math.max(offset, prefix) - prefix) / this.rowBytes);
    const lastRow = Math.floor((end - 1 - prefix) / this.rowBytes);
    for (let r = firstRow; r <= lastRow; r++) {
      await this.withLock(r, async () => {
        const data = (await this.rowData(r, 0, this.chunkBytes, this.allData())) as Buffer[];
        await this.rewriteParity(r, data);
      });
    }
  }

  /**
   * Check every prefix unit's copies and every row's parity; with repair, make
   * them agree (a row's P and Q are recomputed from its data; a prefix copy
   * that differs from the first healthy member's is overwritten). While
   * another pool object writes (opts.barrier given), a difference is counted
   * only when reading again finds it still there, and the repairs are made
   * afterwards as rebuilds of the members' bytes found wrong (pool-rebuild.ts),
   * one member at a time, while the pool has redundancy to spare.
   */
  async scrub(opts: MaintenanceOptions & { repair: boolean }): Promise<ScrubReport> {
    const report: ScrubReport = { bytesChecked: 0, mismatches: 0, repaired: 0, unreadable: 0, unrepaired: 0 };
    const shared = opts.barrier !== undefined;
    const pacer = new Pacer(opts.rateBytesPerSec ?? 0, opts.signal);
    /** Shared: the ranges each member holds wrong, repaired after the pass. */
    const wrong = new Map<number, RebuildRanges>();
    const note = (slot: number, kind: 'units' | 'rows', at: number): void => {
      let r = wrong.get(slot);
      if (r === undefined) wrong.set(slot, (r = { units: [], rows: [] }));
      if (!r[kind].includes(at)) r[kind].push(at);
    };
    let done = 0;
    const step = async (bytes: number, readBytes: number): Promise<void> => {
      done += bytes;
      opts.onProgress?.(done, this.sizeBytes);
      await pacer.add(readBytes);
    };
    for (let unit = 0; unit * this.rowBytes < this.mirroredPrefixBytes; unit++) {
      opts.signal?.throwIfAborted();
      const from = unit * this.rowBytes;
      let readBytes = 0;
      try {
        await this.withLock(-(unit + 1), async () => {
          const differing = async (): Promise<{ first: Buffer; differ: { m: SlotMember; bytes: Buffer }[] }> => {
            const copies = await this.readPrefixCopies(from, this.rowBytes);
            readBytes += copies.length * this.rowBytes;
            const [first, ...rest] = copies;
            return { first: first!.bytes, differ: rest.filter((c) => !c.bytes.equals(first!.bytes)) };
          };
          let seen = await differing();
          report.bytesChecked += this.rowBytes;
          for (let again = 0; shared && again < SHARED_RECHECKS && seen.differ.length > 0; again++) {
            await (opts.pause ?? sleep)(2 ** (again + 1));
            seen = await differing();
          }
          if (seen.differ.length === 0) return;
          report.mismatches++;
          if (!opts.repair) return;
          if (shared) {
            for (const c of seen.differ) note(c.m.slot, 'units', unit);
            return;
          }
          await this.onMembers('repair', seen.differ.map((c) => ({ m: c.m, run: () => c.m.device.write(POOL_LABEL_AREA_BYTES + from, seen.first) })));
          report.repaired++;
        });
      } catch (err) {
        if (!isIoError(err)) throw err;
        report.unreadable++;
      }
      await step(this.rowBytes, readBytes);
    }
    for (let r = 0; r < this.rows; r++) {
      opts.signal?.throwIfAborted();
      let readBytes = 0;
      try {
        await this.withLock(r, async () => {
          const check = async (): Promise<{ verdict: RowVerdict | null }> => {
            const got = await this.readPieces(r, 0, this.chunkBytes, true);
            readBytes += this.chunkBytes * (got.data.filter((d) => d !== null).length + (got.p === null ? 0 : 1) + (got.q === null ? 0 : 1));
            return { verdict: this.checkRow(got) };
          };
          let { verdict } = await check();
          if (verdict === null) return; // too little left to check anything
          report.bytesChecked += this.rowBytes;
          for (let again = 0; shared && again < SHARED_RECHECKS && verdict !== null && !verdict.ok; again++) {
            await (opts.pause ?? sleep)(2 ** (again + 1));
            ({ verdict } = await check());
          }
          if (verdict === null || verdict.ok) return;
          report.mismatches++;
          if (!opts.repair) return;
          if (shared) {
            if (!verdict.pOk) note(this.pSlot(r), 'rows', r);
            if (!verdict.qOk) note(this.qSlot(r), 'rows', r);
            return;
          }
          await this.rewriteParity(r, verdict.data);
          report.repaired++;
        });
      } catch (err) {
        if (!isIoError(err)) throw err;
        report.unreadable++;
      }
      await step(this.rowBytes, readBytes);
    }
    if (shared && wrong.size > 0) {
      // Each member's wrong bytes rebuilt in turn; a range wrong on two members counts once, when both are done.
      const left = new Map<string, number>();
      for (const r of wrong.values()) {
        for (const u of r.units) left.set(`u${u}`, (left.get(`u${u}`) ?? 0) + 1);
        for (const x of r.rows) left.set(`r${x}`, (left.get(`r${x}`) ?? 0) + 1);
      }
      for (const [slot, ranges] of wrong) {
        opts.signal?.throwIfAborted();
        const m = this.members[slot]!;
        const out = this.members.filter((x) => x.state !== 'healthy').length;
        if (m.state !== 'healthy' || out + 1 > this.parities) continue;
        try {
          await this.rebuildSlot(slot, { name: m.name, device: m.device }, ranges, opts);
        } catch (err) {
          if (!(err instanceof PagepairError) || (err.code !== 'IO_ERROR' && err.code !== 'BUSY')) throw err;
          continue;
        }
        for (const u of ranges.units) left.set(`u${u}`, left.get(`u${u}`)! - 1);
        for (const x of ranges.rows) left.set(`r${x}`, left.get(`r${x}`)! - 1);
      }
      report.repaired = [...left.values()].filter((n) => n === 0).length;
    }
    report.unrepaired = report.mismatches - report.repaired;
    return report;
  }

  async replace(slot: number, member: PoolMember, opts: MaintenanceOptions = {}): Promise<void> {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.n) throw new PagepairError('BAD_CONFIG', `pool ${this.poolId} has slots 0 to ${this.n - 1}, not ${slot}`, 'slot');
    this.checkNoRebuild();
    const needBytes = POOL_LABEL_AREA_BYTES + this.mirroredPrefixBytes + this.rows * this.chunkBytes;
    if (member.device.sizeBytes < needBytes) throw new PagepairError('BAD_CONFIG', `device ${member.name} holds ${member.device.sizeBytes} bytes, the pool needs ${needBytes} on each`, 'devices');
    const othersDown = this.members.filter((m) => m.slot !== slot && m.state !== 'healthy').length;
    if (othersDown >= this.parities) {
      throw new PagepairError('IO_ERROR', `pool ${this.poolId}: slot ${slot} cannot be rebuilt while ${othersDown} other devices are not healthy (${this.describeMembers()})`);
    }
    await this.rebuildSlot(slot, member, null, opts);
  }

  // ---- rebuild and scrub helpers

  private checkNoRebuild(): void {
    if (this.rebuild !== null) throw new PagepairError('BUSY', `pool ${this.poolId}: a rebuild onto slot ${this.rebuild.slot} is under way`);
  }

  /**
   * Rebuild slot `slot` onto `member` (every prefix unit and row, or those
   * `ranges` names), announced in the labels first so that another pool
   * object over the members writes it too (pool-rebuild.ts). On any failure
   * the member is left out of the pool (stale) and the labels say so.
   */
  private async rebuildSlot(slot: number, member: PoolMember, ranges: RebuildRanges | null, opts: MaintenanceOptions): Promise<void> {
    this.checkNoRebuild();
    const totalBytes = ranges === null ? this.sizeBytes : (ranges.units.length + ranges.rows.length) * this.rowBytes;
    this.rebuild = { slot, doneBytes: 0, totalBytes };
    const old = this.members[slot]!;
    const m: SlotMember = { name: member.name, device: member.device, slot, state: 'rebuilding', reason: 'being rebuilt' };
    try {
      // Generation 0 in both copies: older than the pool, whatever the device held, until the rebuild is whole.
      const blank = this.label(slot, 0);
      await member.device.write(0, blank);
      await member.device.write(4096, blank);
      await member.device.sync();
      // A rebuild the other controller announced (or one left by a controller that died) is ours now:
      // the record becomes ours, and the other stops writing its device when it reads it.
      for (const x of this.members) {
        if (x.state !== 'rebuilding') continue;
        x.state = 'stale';
        x.reason = `stale: its rebuild was taken over by a rebuild onto ${member.name}`;
        this.dropped = { slot: x.slot, name: x.name };
      }
      this.members[slot] = m;
      if (old.device !== member.device) await old.device.close().catch(() => undefined);
      // The announcement: the slot named out, the device recorded; then every other pool object must have read it.
      await this.bumpGeneration();
      this.rebuildAnnounced = this.gen;
      this.checkRebuilding(m);
      await opts.barrier?.(this.gen);
      const startGen = this.gen;
      await this.rebuildOnto(m, ranges, startGen, opts.barrier !== undefined, opts);
      await m.device.sync();
      // Anyone's move since the start (a member failing on either side) may mean bytes copied from a member that missed writes.
      await this.refresh();
      this.checkRebuilding(m);
      this.checkUnmoved(startGen);
      m.state = 'healthy';
      m.reason = null;
      // The generation that names it in again (called off when another writer moved the pool meanwhile).
      this.joiningSlot = slot;
      try {
        await this.bumpGeneration(new Set([slot]));
      } finally {
        this.joiningSlot = -1;
      }
      if (m.state !== 'healthy') throw new PagepairError('IO_ERROR', `pool ${this.poolId}: slot ${slot} (${m.name}) not brought in: ${m.reason ?? m.state}`);
    } catch (err) {
      if (this.members[slot] === m && (m.state === 'rebuilding' || m.state === 'healthy')) {
        this.dropped = { slot, name: m.name };
        m.state = 'stale';
        m.reason = `stale: rebuild stopped: ${err instanceof Error ? err.message : String(err)}`;
        // The record goes from the labels: the other pool object stops writing it.
        await this.bumpGeneration().catch(() => undefined);
      }
      throw err;
    } finally {
      this.rebuild = null;
      this.rebuildAnnounced = 0;
    }
  }

  private checkRebuilding(m: SlotMember): void {
    if (m.state !== 'rebuilding') throw new PagepairError('IO_ERROR', `pool ${this.poolId}: device ${m.name} failed during its rebuild: ${m.reason ?? m.state}`);
  }

  private checkUnmoved(startGen: number): void {
    if (this.gen !== startGen) {
      throw new PagepairError('IO_ERROR', `pool ${this.poolId}: the pool moved from generation ${startGen} to ${this.gen} during the rebuild (a device failed on one controller's path): rebuild again`);
    }
  }

  private async rebuildOnto(m: SlotMember, ranges: RebuildRanges | null, startGen: number, shared: boolean, opts: MaintenanceOptions): Promise<void> {
    const pause = opts.pause;
    const pacer = new Pacer(opts.rateBytesPerSec ?? 0, opts.signal);
    const progress = this.rebuild!;
    const writeTo = async (offset: number, data: Buffer): Promise<void> => {
      this.checkRebuilding(m);
      try {
        await m.device.write(offset, data);
      } catch (err) {
        await this.fail(m, `write failed: ${String(err)}`);
        throw new PagepairError('IO_ERROR', `pool ${this.poolId}: device ${m.name} failed during its rebuild: ${String(err)}`);
      }
    };
    const advance = async (bytes: number, readBytes: number): Promise<void> => {
      progress.doneBytes += bytes;
      opts.onProgress?.(progress.doneBytes, progress.totalBytes);
      await pacer.add(readBytes);
    };
    const units = ranges?.units ?? Array.from({ length: this.mirroredPrefixBytes / this.rowBytes }, (_, k) => k);
    for (const unit of units) {
      opts.signal?.throwIfAborted();
      this.checkUnmoved(startGen);
      const from = unit * this.rowBytes;
      const at = POOL_LABEL_AREA_BYTES + from;
      const readBytes = await this.withLock(-(unit + 1), () =>
        copyVerified(`prefix bytes ${from}..${from + this.rowBytes}`, shared, {
          expected: async () => ({ bytes: await this.readPrefix(from, this.rowBytes), readBytes: this.rowBytes }),
          write: (off, bytes) => writeTo(at + off, bytes),
          readBack: () => m.device.read(at, this.rowBytes),
          ...(pause !== undefined ? { pause } : {}),
        }),
      );
      await advance(this.rowBytes, readBytes);
    }
    const rows = ranges?.rows;
    for (let k = 0; k < (rows === undefined ? this.rows : rows.length); k++) {
      const r = rows === undefined ? k : rows[k]!;
      opts.signal?.throwIfAborted();
      this.checkUnmoved(startGen);
      const readBytes = await this.withLock(r, () => {
        this.checkServing('rebuild');
        const piece = this.pieceOf(r, m.slot);
        return copyVerified(`row ${r}`, shared, {
          expected: async () => {
            const data = (await this.rowData(r, 0, this.chunkBytes, this.allData())) as Buffer[];
            const bytes = piece.kind === 'data' ? data[piece.index]! : piece.kind === 'p' ? parityP(data) : parityQ(data);
            return { bytes, readBytes: this.rowBytes };
          },
          write: (off, bytes) => writeTo(this.rowOffset(r) + off, bytes),
          readBack: () => m.device.read(this.rowOffset(r), this.chunkBytes),
          ...(pause !== undefined ? { pause } : {}),
        });
      });
      await advance(this.rowBytes, readBytes);
    }
  }

  /** Whether a row's parity agrees with its data, and the data it was checked against; null when too little is left to check. */
  private checkRow(got: RowPieces): RowVerdict | null {
    const lost = got.data.filter((d) => d === null).length;
    if (lost === 0) {
      const data = got.data as Buffer[];
      const pOk = got.p === null || parityP(data).equals(got.p);
      const qOk = got.q === null || parityQ(data).equals(got.q);
      return { ok: pOk && qOk, pOk, qOk, data };
    }
    // One data chunk lost with both parities left: rebuilt through P, it is checked against Q.
    if (lost === 1 && got.p !== null && got.q !== null) {
      const data = recoverStripe(got.data, got.p, null);
      const qOk = parityQ(data).equals(got.q);
      return { ok: qOk, pOk: true, qOk, data };
    }
    return null;
  }

  /** Prefix bytes from one healthy member, and which. */
  private async readPrefixFrom(offset: number, length: number): Promise<[SlotMember, Buffer]> {
    for (const m of this.members) {
      if (m.state !== 'healthy') continue;
      try {
        return [m, await m.device.read(POOL_LABEL_AREA_BYTES + offset, length)];
      } catch (err) {
        await this.fail(m, `read failed: ${String(err)}`);
      }
    }
    throw this.lostError('read');
  }

  /**
   * The same bytes [at, at + length) of each of `from`, in order; null when
   * any read failed (those members are marked failed first: read again).
   */
  private async readEach(from: readonly SlotMember[], at: number, length: number): Promise<Buffer[] | null> {
    const results = await Promise.allSettled(from.map((m) => m.device.read(at, length)));
    let failed = false;
    for (let k = 0; k < from.length; k++) {
      const res = results[k]!;
      if (res.status === 'rejected') {
        failed = true;
        await this.fail(from[k]!, `read failed: ${String(res.reason)}`);
      }
    }
    return failed ? null : results.map((res) => (res as PromiseFulfilledResult<Buffer>).value);
  }

  /** Every healthy member's copy of prefix bytes, in slot order. */
  private async readPrefixCopies(offset: number, length: number): Promise<{ m: SlotMember; bytes: Buffer }[]> {
    for (;;) {
      this.checkServing('read');
      const from = this.members.filter((m) => m.state === 'healthy');
      const bufs = await this.readEach(from, POOL_LABEL_AREA_BYTES + offset, length);
      if (bufs !== null) return from.map((m, k) => ({ m, bytes: bufs[k]! }));
    }
  }

  // ---- members, labels, locks

  private allData(): number[] {
    return Array.from({ length: this.dataChunks }, (_, i) => i);
  }

  private writable(): SlotMember[] {
    return this.members.filter((m) => m.state === 'healthy' || m.state === 'rebuilding');
  }

  /** Run each op; the members it fails on are marked failed (durably) before this settles. Throws when the pool is past what it survives. */
  private async onMembers(what: string, ops: readonly { m: SlotMember; run: () => Promise<void> }[]): Promise<void> {
    // A member being rebuilt is written last, after the healthy ones are done (pool-rebuild.ts).
    const first = ops.filter((o) => o.m.state !== 'rebuilding');
    const last = ops.filter((o) => o.m.state === 'rebuilding');
    for (const phase of last.length === 0 ? [ops] : [first, last]) {
      const results = await Promise.allSettled(phase.map((o) => o.run()));
      for (let k = 0; k < phase.length; k++) {
        const r = results[k]!;
        if (r.status === 'rejected') await this.fail(phase[k]!.m, `${what} failed: ${String(r.reason)}`);
      }
    }
    // A member that left just before this began was not among its targets, and the generation
    // that says it left may not be durable yet: this reached only the members left, so it is
    // answered after that generation, as the operation that failed the member is.
    if (this.degraded) await this.labelChain;
    this.checkServing(what);
  }

  /** Mark a member failed; a healthy one's leaving is written as the next generation to the members left (synced) before going on. */
  private fail(m: SlotMember, reason: string): Promise<void> {
    if (m.state === 'rebuilding') {
      // It was never current, but the labels record its rebuild: the next generation drops the
      // record, so the other pool object stops writing it too and a rebuild under way there stops.
      m.state = 'failed';
      m.reason = reason;
      this.dropped = { slot: m.slot, name: m.name };
      return this.bumpGeneration();
    }
    if (m.state !== 'healthy') return this.labelChain;
    m.state = 'failed';
    m.reason = reason;
    return this.bumpGeneration();
  }

  /** Write the next generation, naming every member not healthy as out (joining: slots made whole, named no more). */
  private bumpGeneration(joining?: ReadonlySet<number>): Promise<void> {
    const run = this.labelChain.then(async () => {
      const moved = await moveGeneration(this.members, {
        poolId: this.poolId,
        base: this.gen,
        ...(joining === undefined ? {} : { joining }),
        labelFor: (m, generation, failedSlots, currentSince, seen) => this.label(m.slot, generation, failedSlots, currentSince, this.rebuildRecord(seen)),
        onView: (view) => this.onLabelsRead(view),
      });
      this.gen = Math.max(this.gen, moved);
    });
    this.labelChain = run.catch(() => undefined);
    return run;
  }

  private label(slot: number, generation: number, failedSlots: readonly number[] = [], currentSince = generation, rebuilding: { slot: number; name: string } | null = null): Buffer {
    return encodePoolLabel({ ...this.labelFields(slot, generation), failedSlots, currentSince, rebuilding });
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

  private labelFields(slot: number, generation: number): PoolLabel {
    return {
      poolId: this.poolId,
      layout: this.layout,
      slot,
      devices: this.n,
      generation,
      dataBytes: this.mirroredPrefixBytes + this.rows * this.chunkBytes,
      chunkBytes: this.chunkBytes,
      mirroredPrefixBytes: this.mirroredPrefixBytes,
    };
  }

  /** Run fn when every earlier holder of `key` is done. */
  private async withLock<T>(key: number, fn: () => Promise<T>): Promise<T> {
    const before = this.locks.get(key);
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    this.locks.set(key, mine);
    if (before !== undefined) await before;
    try {
      return await fn();
    } finally {
      if (this.locks.get(key) === mine) this.locks.delete(key);
      release();
    }
  }

  /** Throws IO_ERROR when more members are out than the layout survives. */
  private checkServing(what: string): void {
    const out = this.members.filter((m) => m.state !== 'healthy').length;
    if (out > this.parities) throw this.lostError(what);
  }

  private lostError(what: string): PagepairError {
    return new PagepairError('IO_ERROR', `pool ${this.poolId}: ${what} impossible: ${this.layout} survives ${this.parities} lost device${this.parities === 1 ? '' : 's'} (${this.describeMembers()})`);
  }

  private describeMembers(): string {
    return this.members.map((m) => `${m.name}: ${m.reason ?? m.state}`).join('; ');
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || offset + length > this.sizeBytes) {
      throw new PagepairError('OUT_OF_RANGE', `pool ${this.poolId}: ${length} bytes at ${offset} are outside its ${this.sizeBytes} bytes`);
    }
  }
}

/** A row's parity checked against its data: which parity disagrees. */
interface RowVerdict {
  ok: boolean;
  pOk: boolean;
  qOk: boolean;
  data: Buffer[];
}

function isIoError(err: unknown): boolean {
  return err instanceof PagepairError && err.code === 'IO_ERROR';
}

function describe(l: PoolLabel | string | { unreadable: string }): string {
  if (typeof l === 'string') return l;
  if ('unreadable' in l) return l.unreadable;
  return `pool ${l.poolId}`;
}

/** Why label `l`, read from device `name` given as `slot` of `devices`, does not belong with `ref`; null when it does. */
function labelMismatch(name: string, l: PoolLabel, ref: PoolLabel, slot: number, devices: number): string | null {
  if (l.poolId !== ref.poolId) return `device ${name} belongs to pool ${l.poolId}, not ${ref.poolId}`;
  if (l.layout !== ref.layout) return `device ${name} is labelled for a ${l.layout} pool, the others for ${ref.layout}`;
  if (l.devices !== devices) return `device ${name} is one of a pool of ${l.devices} devices, ${devices} were given`;
  if (l.slot !== slot) return `device ${name} fills slot ${l.slot} of the pool, it was given as slot ${slot}: list the devices in slot order`;
  if (l.chunkBytes !== ref.chunkBytes || l.mirroredPrefixBytes !== ref.mirroredPrefixBytes || l.dataBytes !== ref.dataBytes) {
    return `device ${name} is labelled with chunk ${l.chunkBytes}, prefix ${l.mirroredPrefixBytes} and ${l.dataBytes} data bytes; the pool has chunk ${ref.chunkBytes}, prefix ${ref.mirroredPrefixBytes} and ${ref.dataBytes}`;
  }
  return null;
}
