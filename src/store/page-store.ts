// The block store over one Device: superblock, mailbox, allocation table and
// page slots, as laid out in layout.ts and docs/formats.md.
//
// Durability: writeTable and writeEpochRecord sync before they resolve (a
// table or an epoch that is lost after being acted on would be a lie to the
// partner). writePage and writeMailboxSlot do not: page writes are made
// durable in batches by the caller's sync(), and a heartbeat only has to be
// seen by the partner, which reads the same file through the same page cache.
//
// Pages: two slots each (layout.ts, docs/formats.md "Pages"). A write goes to
// the slot not holding the page's newest valid copy, found by reading both
// slots first, unless this store wrote a slot of that page since its last
// completed sync: then it writes that slot again, because the other one holds
// the last synced copy. So the newest synced copy of a page is never the one
// being overwritten, and a torn write costs at most what was not synced yet.
// That needs every other writer's page writes to be synced before this store
// reads them to choose a slot: the core syncs before it gives a page away, a
// takeover syncs (the epoch record), and open() syncs what an earlier
// incarnation of this controller left behind.
//
// The read can be spared: this store remembers, per page, the slot its last
// write went to once a sync after it completed (that slot then holds the
// newest synced copy, as long as nobody else wrote the page since). Only the
// caller knows that nobody did (the core: the page stayed ours since our last
// write of it), so a write uses the memory only when told it may
// (`slotsOurs`); otherwise it reads, as above.

import { PagepairError, invariant } from '../protocol/errors.js';
import { crc32c } from '../protocol/crc32c.js';
import {
  CONTROLLER_IDS,
  EPOCH_RECORD_BYTES,
  FORMAT_VERSION,
  MAILBOX_SLOT_BYTES,
  TABLE_ENTRY_BYTES,
  TABLE_HEADER_BYTES,
  bytesToUuid,
  computeGeometry,
  copyForSeq,
  decodeEpochRecord,
  decodeMailboxSlot,
  chooseWriteSlot,
  decodePageSlot,
  decodeSuperblock,
  decodeTable,
  decodeTableHeader,
  encodeEpochRecord,
  encodeMailboxSlot,
  encodePageHeader,
  encodeSuperblock,
  encodeTable,
  epochCopyOffset,
  extentBytes,
  isUuid,
  mailboxSlotOffset,
  newestOf,
  newestPageSlot,
  pageSlotBytes,
  pageSlotOffset,
  superblockCopyOffset,
  superblockFormatVersion,
  tableCopyOffset,
  tableWriteBytes,
  uuidToBytes,
} from './layout.js';
import { PAGE_HEADER_BYTES } from './types.js';
import type { PageSlotRead } from './layout.js';
import type { Pool } from './pool.js';
import { stripeShape } from './layout.js';
import { RowCoalescer } from './row-coalescer.js';
import type {
  AllocationRecord,
  BlockStore,
  Device,
  EpochRecord,
  Geometry,
  Mailbox,
  MailboxSlot,
  PageLocation,
  PageRange,
  StoredPage,
  StoredPageHeader,
  Superblock,
} from './types.js';

export interface FormatOptions {
  pairId: string;
  tableEntriesMax?: number;
  mailboxBytes?: number;
  nowMs: number;
  /** Names the store in error messages (a file path). */
  name?: string;
  /** See GeometryOptions.alignBytes. On a parity pool it defaults to the pool's row. */
  alignBytes?: number;
}

export interface OpenOptions {
  /** When given, the store must belong to this pair (else STORE_MISMATCH). */
  pairId?: string;
  name?: string;
}

/** A device that can write several buffers back to back without joining them first (FileDevice). */
interface PartsDevice extends Device {
  writeParts(offset: number, parts: readonly Buffer[]): Promise<void>;
}

function slotReason(s: PageSlotRead): string {
  return s.kind === 'invalid' ? s.reason : s.kind;
}

function slotPage(s: PageSlotRead): StoredPage {
  invariant(s.kind === 'valid', 'a valid slot');
  // A copy: the cache keeps the page, and the slot may be a view of a larger read (Device.read).
  const data = Buffer.allocUnsafeSlow(s.data.length);
  s.data.copy(data);
  return { header: s.header, data };
}

/** The parity row of a pool device (bytes whose writers must be one), 0 for anything else. */
function poolRowBytes(device: Device): number {
  const rowBytes = (device as Partial<Pool>).rowBytes;
  return typeof rowBytes === 'number' ? rowBytes : 0;
}

/**
 * On a parity pool, the metadata both controllers write at once must lie in
 * the pool's mirrored prefix, and every stripe on whole rows; a store laid
 * out otherwise would let the two controllers write one row at once.
 */
function checkPoolFit(device: Device, g: Geometry, name: string): void {
  const rowBytes = poolRowBytes(device);
  if (rowBytes === 0) return;
  const prefix = (device as Pool).mirroredPrefixBytes;
  if (g.alignBytes % rowBytes !== 0) {
    throw new PagepairError('STORE_MISMATCH', `${name}: the store is aligned to ${g.alignBytes} bytes, not to the pool's ${rowBytes}-byte rows`);
  }
  if (g.dataOffset > prefix) {
    throw new PagepairError('STORE_MISMATCH', `${name}: the store's metadata takes ${g.dataOffset} bytes, more than the pool's ${prefix}-byte mirrored prefix (create the pool with a larger prefix)`);
  }
}

function hasWriteParts(device: Device): device is PartsDevice {
  return typeof (device as Partial<PartsDevice>).writeParts === 'function';
}

/** A table as read from the store, with how far allocations ever reached (null: an older store that did not record it). */
interface StoredTable {
  seq: number;
  records: AllocationRecord[];
  dataUsedBytes: number | null;
}

type CopyRead<T> = { kind: 'valid'; value: T } | { kind: 'blank' } | { kind: 'invalid'; reason: string };

const ZERO_CHUNK_BYTES = 1024 * 1024;

/** What a store counts about its page slots (status may show them). */
export interface PageStoreCounters {
  /** Reads that found one slot of a page damaged and used the other (or "never written"). */
  tornSlotsFound: number;
  /** Page writes that had to read the slots first to choose one. */
  slotReadsBeforeWrite: number;
}

/** A slot this store wrote and has not yet seen a sync complete after. */
interface UnsyncedSlot {
  slot: 0 | 1;
  /** Order in which the write settled; null while it is under way. */
  settledSeq: number | null;
  /** The write landed whole (a failed one may have landed in part). */
  ok: boolean;
}

/** Pages whose last synced slot is remembered, at most; past it the memory starts again (reads choose). */
const SYNCED_SLOTS_MAX = 1 << 20;

export class PageStore implements BlockStore {
  readonly pageCounters: PageStoreCounters = { tornSlotsFound: 0, slotReadsBeforeWrite: 0 };
  private readonly zeroPageCrcs = new Map<number, number>();
  private readonly partsDevice: PartsDevice | null;
  /** On a parity pool: page writes gathered per row (row-coalescer.ts), so a destage run is a row update, not one per page. */
  private readonly rowWrites: RowCoalescer | null;
  /** By device offset of a page's slots: the slot written since the last completed sync. */
  private readonly unsyncedSlots = new Map<number, UnsyncedSlot>();
  private writesSettled = 0;
  /** By device offset of a page's slots: the slot this store's last write went to, synced since. */
  private readonly syncedSlots = new Map<number, 0 | 1>();
  /** By device offset of a page's slots: the last write of it under way here (writes of a page go one at a time). */
  private readonly pageWriteChains = new Map<number, Promise<void>>();

  private constructor(
    readonly device: Device,
    readonly superblock: Superblock,
    /** Which superblock copies were valid at open; a status page may report a bad one. */
    readonly superblockCopiesValid: readonly [boolean, boolean],
    private readonly name: string,
  ) {
    this.partsDevice = hasWriteParts(device) ? device : null;
    const rowBytes = poolRowBytes(device);
    this.rowWrites = rowBytes > 0 && this.partsDevice !== null ? new RowCoalescer(this.partsDevice, rowBytes) : null;
  }

  /** Page writes gathered per parity row so far (null: not a parity pool). */
  get rowWriteCounters(): RowCoalescer['counters'] | null {
    return this.rowWrites?.counters ?? null;
  }

  get geometry(): Geometry {
    return this.superblock.geometry;
  }

  /**
   * Lays a new, empty store over the whole device. Metadata is written before
   * the superblocks and synced in between, so anyone who sees a valid
   * superblock also sees an initialized mailbox and table.
   */
  static async format(device: Device, opts: FormatOptions): Promise<PageStore> {
    const name = opts.name ?? 'store';
    if (!isUuid(opts.pairId)) {
      throw new PagepairError('BAD_CONFIG', `${name}: pairId must be a uuid, got ${JSON.stringify(opts.pairId)}`, 'pairId');
    }
    const geometryOpts: Parameters<typeof computeGeometry>[0] = { deviceBytes: device.sizeBytes };
    if (opts.tableEntriesMax !== undefined) geometryOpts.tableEntriesMax = opts.tableEntriesMax;
    if (opts.mailboxBytes !== undefined) geometryOpts.mailboxBytes = opts.mailboxBytes;
    const rowBytes = poolRowBytes(device);
    const alignBytes = opts.alignBytes ?? (rowBytes > 0 ? rowBytes : undefined);
    if (alignBytes !== undefined) geometryOpts.alignBytes = alignBytes;
    const geometry = computeGeometry(geometryOpts);
    checkPoolFit(device, geometry, name);
    const superblock: Superblock = {
      formatVersion: FORMAT_VERSION,
      pairId: bytesToUuid(uuidToBytes(opts.pairId, 'pairId')),
      geometry,
      createdAtMs: opts.nowMs,
    };
    // Old superblocks go first, so that a format cut short is never taken for
    // the store that was there before.
    await device.write(0, Buffer.alloc(2 * geometry.superblockCopyBytes));
    await device.write(geometry.mailboxOffset, Buffer.alloc(geometry.mailboxBytes));
    await device.write(tableCopyOffset(geometry, 0), encodeTable(0, [], geometry.tableEntriesMax, 0));
    await device.write(tableCopyOffset(geometry, 1), Buffer.alloc(tableWriteBytes(0)));
    await device.sync();
    const sbBlock = Buffer.alloc(geometry.superblockCopyBytes);
    encodeSuperblock(superblock).copy(sbBlock);
    await device.write(superblockCopyOffset(geometry, 0), sbBlock);
    await device.write(superblockCopyOffset(geometry, 1), sbBlock);
    await device.sync();
    return new PageStore(device, superblock, [true, true], name);
  }

  /** Opens a formatted store: STORE_CORRUPT when neither superblock copy is
   *  valid or the device is smaller than the superblock says; STORE_MISMATCH
   *  when it belongs to another pair. */
  static async open(device: Device, opts: OpenOptions = {}): Promise<PageStore> {
    const name = opts.name ?? 'store';
    const copyBytes = superblockCopyOffset(undefined, 1);
    const head = await device.read(0, Math.min(2 * copyBytes, device.sizeBytes));
    const reads = [0, 1].map((c) => {
      const part = head.subarray(c * copyBytes, (c + 1) * copyBytes);
      return part.length === 0 ? 'device too small' : decodeSuperblock(part);
    });
    const valid = reads.map((r) => typeof r !== 'string') as [boolean, boolean];
    const sb = reads.find((r): r is Superblock => typeof r !== 'string');
    const otherVersion = [0, 1]
      .map((c) => superblockFormatVersion(head.subarray(c * copyBytes, (c + 1) * copyBytes)))
      .find((v) => v !== null && v !== FORMAT_VERSION);
    if (sb === undefined && otherVersion !== undefined) {
      throw new PagepairError(
        'STORE_MISMATCH',
        `${name}: the store is format version ${otherVersion}; this pagepair reads and writes format version ${FORMAT_VERSION} only ` +
          `(version 2 gave every page two slots); copy what it holds elsewhere and create a new store`,
      );
    }
    if (sb === undefined) {
      throw new PagepairError('STORE_CORRUPT', `${name}: no valid superblock (copy 0: ${String(reads[0])}; copy 1: ${String(reads[1])})`);
    }
    if (opts.pairId !== undefined && sb.pairId !== opts.pairId.toLowerCase()) {
      throw new PagepairError('STORE_MISMATCH', `${name}: store belongs to pair ${sb.pairId}, not ${opts.pairId}`, 'pairId');
    }
    const end = sb.geometry.dataOffset + sb.geometry.dataBytes;
    if (device.sizeBytes < end) {
      throw new PagepairError('STORE_CORRUPT', `${name}: device is ${device.sizeBytes} bytes but the superblock needs ${end}`);
    }
    // Page writes an earlier incarnation of this controller left unsynced
    // become durable now, before any slot is chosen by reading them (see the
    // top of this file). A store opened only to be read pays one cheap sync.
    await device.sync();
    checkPoolFit(device, sb.geometry, name);
    return new PageStore(device, sb, valid, name);
  }

  // ------------------------------------------------------------ pages

  async readPage(loc: PageLocation, page: number): Promise<StoredPage> {
    const at = this.slotsDeviceOffset(loc, page);
    const guid = loc.guid.toLowerCase();
    const slots = await this.readSlots(loc, page, at, guid);
    const newest = newestPageSlot(slots);
    const damaged = slots.find((s): s is Extract<PageSlotRead, { kind: 'invalid' }> => s.kind === 'invalid');
    if (newest === null && slots.every((s) => s.kind === 'invalid')) {
      throw new PagepairError('CHECKSUM_MISMATCH', `${this.name}: page ${page} of ${guid}: slot 0: ${slotReason(slots[0])}; slot 1: ${slotReason(slots[1])}`, guid);
    }
    const got = newest === null ? this.neverWritten(guid, page, loc.pageSizeBytes) : slotPage(slots[newest]);
    if (damaged === undefined) return got;
    // One slot damaged, the other valid or never written: a write torn by a
    // crash or a power cut (the other slot is then what was there before it),
    // or a damaged copy beside a good one. Either way the good one is used.
    this.pageCounters.tornSlotsFound++;
    return { ...got, tornSlot: damaged.reason };
  }

  /** Writes header and data as one device write, into the slot the rule
   *  chooses (the top of this file). crc, when given, is trusted to be the
   *  CRC32C of data (the cache already knows it). Not synced. */
  async writePage(loc: PageLocation, page: number, version: number, epoch: number, data: Buffer, crc?: number, slotsOurs = false): Promise<void> {
    if (data.length !== loc.pageSizeBytes) {
      throw new PagepairError('BAD_FIELD', `page ${page} of ${loc.guid}: ${data.length} data bytes for a ${loc.pageSizeBytes}-byte page`, 'data');
    }
    if (!Number.isSafeInteger(version) || version < 1) {
      throw new PagepairError('BAD_FIELD', `page ${page} of ${loc.guid}: version must be >= 1, got ${version}`, 'version');
    }
    const at = this.slotsDeviceOffset(loc, page);
    const header = { guid: loc.guid, page, version, epoch, crc: crc ?? crc32c(data) };
    // Choosing a slot and writing it is one step per page: a second write of
    // the page waits, so that it sees the slot this one took.
    const prev = this.pageWriteChains.get(at) ?? Promise.resolve();
    const run = prev.then(() => this.writeSlot(loc, page, at, header, data, slotsOurs));
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.pageWriteChains.set(at, settled);
    void settled.then(() => {
      if (this.pageWriteChains.get(at) === settled) this.pageWriteChains.delete(at);
    });
    return run;
  }

  private async writeSlot(loc: PageLocation, page: number, at: number, header: StoredPageHeader, data: Buffer, slotsOurs: boolean): Promise<void> {
    let slot = this.unsyncedSlots.get(at)?.slot;
    if (slot === undefined && slotsOurs) {
      // Nobody wrote the page since our last synced write: that slot holds the newest synced copy.
      const synced = this.syncedSlots.get(at);
      if (synced !== undefined) slot = synced === 0 ? 1 : 0;
    }
    if (slot === undefined) {
      this.pageCounters.slotReadsBeforeWrite++;
      slot = chooseWriteSlot(await this.readSlots(loc, page, at, loc.guid.toLowerCase()));
    }
    // From the moment the write is issued until a sync that began after it
    // settled, this slot holds nothing anyone may count on: the next write of
    // the page goes here again, whatever it reads.
    const entry: UnsyncedSlot = { slot, settledSeq: null, ok: false };
    this.unsyncedSlots.set(at, entry);
    const slotAt = this.slotDeviceOffset(loc, page, at, slot);
    try {
      if (this.partsDevice !== null) {
        // Header and data go out side by side: no copy of the page. The caller
        // does not change data in place while the write is under way.
        await (this.rowWrites ?? this.partsDevice).writeParts(slotAt, [encodePageHeader(header, data.length, Buffer.allocUnsafe(PAGE_HEADER_BYTES)), data]);
      } else {
        const buf = Buffer.allocUnsafe(pageSlotBytes(loc.pageSizeBytes));
        encodePageHeader(header, data.length, buf);
        data.copy(buf, PAGE_HEADER_BYTES);
        await this.device.write(slotAt, buf);
      }
      entry.ok = true;
    } finally {
      // Failed writes too: part of one may have landed.
      entry.settledSeq = ++this.writesSettled;
    }
  }

  /**
   * Both slots of a page: two reads of one slot each, asked for together
   * (the device gathers those that touch, as the slots of neighbouring pages
   * destaged together do). One read spanning both slots would carry up to a
   * whole stripe between them (65 KiB for 4 KiB pages) for every page read
   * or written alone, which cost more than the second read call.
   */
  private async readSlots(loc: PageLocation, page: number, at: number, guid: string): Promise<[PageSlotRead, PageSlotRead]> {
    const slotBytes = pageSlotBytes(loc.pageSizeBytes);
    const [b0, b1] = await Promise.all([this.device.read(at, slotBytes), this.device.read(this.slotDeviceOffset(loc, page, at, 1), slotBytes)]);
    return [decodePageSlot(b0, guid, page, loc.pageSizeBytes), decodePageSlot(b1, guid, page, loc.pageSizeBytes)];
  }

  /** Device offset of a page's slot, given that of its slot 0. */
  private slotDeviceOffset(loc: PageLocation, page: number, slot0At: number, slot: 0 | 1): number {
    const align = this.geometry.alignBytes;
    return slot0At + pageSlotOffset(0, loc.pageSizeBytes, page, slot, align) - pageSlotOffset(0, loc.pageSizeBytes, page, 0, align);
  }

  /**
   * Makes an extent read as never written (offsets relative to the data area,
   * block-aligned). An extent reused with another page size has old page bytes
   * where the new slots' headers go, which read as CHECKSUM_MISMATCH; so the
   * part of it any allocation ever used is zeroed, before the table that
   * publishes the allocation is written. The part past the table's
   * dataUsedBytes was never written and needs nothing, which keeps creating a
   * large volume on a fresh store quick and the store file sparse.
   */
  async clearExtent(dataOffset: number, bytes: number): Promise<void> {
    const g = this.geometry;
    if (dataOffset < 0 || bytes < 0 || dataOffset % g.alignBytes !== 0 || dataOffset + bytes > g.dataBytes) {
      throw new PagepairError('OUT_OF_RANGE', `${this.name}: extent ${dataOffset}+${bytes} is not an aligned range of the data area`);
    }
    // Zeroed slots are no slot's newest copy any more.
    this.syncedSlots.clear();
    const used = (await this.readTable()).dataUsedBytes ?? g.dataBytes;
    const end = Math.min(dataOffset + bytes, used);
    if (end <= dataOffset) return;
    const zeros = Buffer.alloc(Math.min(ZERO_CHUNK_BYTES, end - dataOffset));
    for (let at = dataOffset; at < end; at += zeros.length) {
      const n = Math.min(zeros.length, end - at);
      await this.device.write(g.dataOffset + at, n === zeros.length ? zeros : zeros.subarray(0, n));
    }
  }

  /** Device offset of a page's slot 0 (its slot 1 lies further into the stripe). */
  private slotsDeviceOffset(loc: PageLocation, page: number): number {
    const g = this.geometry;
    const slot = pageSlotOffset(loc.dataOffset, loc.pageSizeBytes, page, 0, g.alignBytes);
    if (
      !Number.isSafeInteger(page) ||
      page < 0 ||
      loc.dataOffset < 0 ||
      loc.dataOffset % g.alignBytes !== 0 ||
      pageSlotOffset(loc.dataOffset, loc.pageSizeBytes, page, 1, g.alignBytes) + pageSlotBytes(loc.pageSizeBytes) > g.dataBytes
    ) {
      throw new PagepairError('OUT_OF_RANGE', `${this.name}: page ${page} of ${loc.guid} at data offset ${loc.dataOffset} lies outside the data area`);
    }
    return g.dataOffset + slot;
  }

  private neverWritten(guid: string, page: number, pageSizeBytes: number): StoredPage {
    let crc = this.zeroPageCrcs.get(pageSizeBytes);
    if (crc === undefined) {
      crc = crc32c(Buffer.alloc(pageSizeBytes));
      this.zeroPageCrcs.set(pageSizeBytes, crc);
    }
    return { header: { guid, page, version: 0, epoch: 0, crc }, data: Buffer.alloc(pageSizeBytes) };
  }

  get pooled(): boolean {
    return typeof (this.device as Partial<Pool>).repairRange === 'function';
  }

  /** The pool's generation (issue 14): grows when a member fails or comes back. 0 when the device is not a pool. */
  poolGeneration(): number {
    const pool = this.device as Partial<Pool>;
    return typeof pool.refresh === 'function' && typeof pool.generation === 'number' ? pool.generation : 0;
  }

  /** Read the pool's labels again (Pool.refresh): a member another pool object failed is not used here either. Its generation; 0 when not a pool. */
  refreshPool(): Promise<number> {
    const pool = this.device as Partial<Pool>;
    return typeof pool.refresh === 'function' ? pool.refresh() : Promise.resolve(0);
  }

  async repairAfterWriter(pages: readonly PageRange[]): Promise<number> {
    const pool = this.device as Partial<Pool>;
    if (typeof pool.repairRange !== 'function') return 0;
    const g = this.geometry;
    // The superblock, mailbox and table: the dead writer's heartbeat slot,
    // epoch record or table write may have reached some members only.
    await pool.repairRange(0, g.dataOffset);
    let bytes = g.dataOffset;
    // Then every stripe holding one of the pages (its rows hold no other
    // pages), each once.
    const stripes = new Map<number, number>();
    for (const r of pages) {
      const { perStripe, pitchBytes } = stripeShape(r.loc.pageSizeBytes, g.alignBytes);
      for (let s = Math.floor(r.first / perStripe); s <= Math.floor((r.first + r.count - 1) / perStripe); s++) {
        const at = r.loc.dataOffset + s * pitchBytes;
        if (at < g.dataBytes) stripes.set(at, Math.min(pitchBytes, g.dataBytes - at));
      }
    }
    for (const [at, length] of stripes) {
      await pool.repairRange(g.dataOffset + at, length);
      bytes += length;
    }
    await this.syncDevice();
    return bytes;
  }

  // ------------------------------------------------------------ allocation table

  async readTable(): Promise<StoredTable> {
    const copies = [await this.readTableCopy(0), await this.readTableCopy(1)];
    let newest: StoredTable | null = null;
    for (const c of copies) if (c.kind === 'valid') newest = newestOf(newest, c.value);
    if (newest !== null) return newest;
    if (copies.every((c) => c.kind === 'blank')) return { seq: 0, records: [], dataUsedBytes: null };
    const why = copies.map((c, i) => `copy ${i}: ${c.kind === 'invalid' ? c.reason : c.kind}`).join('; ');
    throw new PagepairError('STORE_CORRUPT', `${this.name}: no valid allocation table (${why})`);
  }

  /** Writes records as the next table into the copy not holding the newest,
   *  syncs, and returns the new seq. */
  async writeTable(records: AllocationRecord[]): Promise<number> {
    // Read afresh rather than trusting a cached seq: the partner may have
    // written the table since, and the copy holding the newest valid table
    // must never be the one overwritten.
    const { seq: current, dataUsedBytes } = await this.readTable();
    const seq = current + 1;
    // Only grows: a released extent's bytes stay behind in the store.
    let used = dataUsedBytes ?? this.geometry.dataBytes;
    for (const r of records) used = Math.max(used, r.dataOffset + extentBytes(r.pageSizeBytes, r.pageCount, this.geometry.alignBytes));
    const buf = encodeTable(seq, records, this.geometry.tableEntriesMax, used);
    invariant(buf.length <= this.geometry.tableCopyBytes, 'table fits its copy');
    await this.device.write(tableCopyOffset(this.geometry, copyForSeq(seq)), buf);
    await this.syncDevice();
    return seq;
  }

  private async readTableCopy(copy: 0 | 1): Promise<CopyRead<StoredTable>> {
    const g = this.geometry;
    const at = tableCopyOffset(g, copy);
    const first = await this.device.read(at, Math.min(tableWriteBytes(0), g.tableCopyBytes));
    const h = decodeTableHeader(first, g.tableEntriesMax);
    if (h === 'blank') return { kind: 'blank' };
    if (typeof h === 'string') return { kind: 'invalid', reason: h };
    // Each seq has its copy; a copy holding the other parity was not written by writeTable.
    if (copyForSeq(h.seq) !== copy) return { kind: 'invalid', reason: `seq ${h.seq} in copy ${copy}` };
    const need = TABLE_HEADER_BYTES + h.entryCount * TABLE_ENTRY_BYTES;
    const whole = need <= first.length ? first : await this.device.read(at, tableWriteBytes(h.entryCount));
    const t = decodeTable(whole, g.tableEntriesMax);
    return typeof t === 'string' ? { kind: 'invalid', reason: t } : { kind: 'valid', value: t };
  }

  // ------------------------------------------------------------ mailbox

  async readMailbox(): Promise<Mailbox> {
    const g = this.geometry;
    // Slots and epoch copies are the mailbox's first four blocks: one read.
    const buf = await this.device.read(g.mailboxOffset, 4 * g.blockBytes);
    const block = (offset: number): Buffer => buf.subarray(offset - g.mailboxOffset, offset - g.mailboxOffset + g.blockBytes);
    const slots = CONTROLLER_IDS.map((id) => {
      const s = decodeMailboxSlot(block(mailboxSlotOffset(g, id)));
      return s !== null && s.controllerId === id ? s : null;
    });
    return { slots, epoch: this.newestEpoch(block(epochCopyOffset(g, 0)), block(epochCopyOffset(g, 1))) };
  }

  /** Not synced: see the note at the top of this file. */
  async writeMailboxSlot(slot: MailboxSlot): Promise<void> {
    if (slot.controllerId !== 1 && slot.controllerId !== 2) {
      throw new PagepairError('BAD_FIELD', `controllerId must be 1 or 2, got ${slot.controllerId}`, 'controllerId');
    }
    const buf = Buffer.alloc(MAILBOX_SLOT_BYTES);
    encodeMailboxSlot(slot).copy(buf);
    await this.device.write(mailboxSlotOffset(this.geometry, slot.controllerId), buf);
  }

  /** Writes the next epoch record into the older copy and syncs. Two
   *  controllers writing at once both succeed, and the later write wins;
   *  arbitration has to read back and compare (the core's job). */
  async writeEpochRecord(rec: Omit<EpochRecord, 'seq'>): Promise<EpochRecord> {
    const g = this.geometry;
    const c0 = await this.device.read(epochCopyOffset(g, 0), EPOCH_RECORD_BYTES);
    const c1 = await this.device.read(epochCopyOffset(g, 1), EPOCH_RECORD_BYTES);
    const seq = (this.newestEpoch(c0, c1)?.seq ?? 0) + 1;
    const full: EpochRecord = { epoch: rec.epoch, activeId: rec.activeId, timeMs: rec.timeMs, seq };
    await this.device.write(epochCopyOffset(g, copyForSeq(seq)), encodeEpochRecord(full));
    await this.syncDevice();
    return full;
  }

  private newestEpoch(copy0: Buffer, copy1: Buffer): EpochRecord | null {
    const fits = (r: EpochRecord | null, copy: 0 | 1): EpochRecord | null => (r !== null && copyForSeq(r.seq) === copy ? r : null);
    return newestOf(fits(decodeEpochRecord(copy0), 0), fits(decodeEpochRecord(copy1), 1));
  }

  // ------------------------------------------------------------ lifecycle

  sync(): Promise<void> {
    return this.syncDevice();
  }

  /** Syncs the device; the page slots written before it began are durable now. */
  private async syncDevice(): Promise<void> {
    const upTo = this.writesSettled;
    await this.device.sync();
    if (this.syncedSlots.size >= SYNCED_SLOTS_MAX) this.syncedSlots.clear();
    for (const [at, e] of this.unsyncedSlots) {
      if (e.settledSeq === null || e.settledSeq > upTo) continue;
      this.unsyncedSlots.delete(at);
      // A failed write may have torn its slot: the next write reads both.
      if (e.ok) this.syncedSlots.set(at, e.slot);
      else this.syncedSlots.delete(at);
    }
  }

  async close(): Promise<void> {
    // Page writes still gathering reach the pool before it closes, as they would have without the gathering.
    await this.rowWrites?.drain();
    return this.device.close();
  }
}
