// The block store's interfaces. A BlockStore is formatted over a Device (a
// range of bytes: a file today, several devices or an NBD export later).
// layout.ts holds the pure encoding and geometry; page-store.ts the logic over
// a Device; file-device.ts and memory-device.ts the byte ranges.

import type { AllocationRecord as Allocation } from '../protocol/messages.js';
import type { StoredPage, MailboxSlot, EpochRecord, Mailbox, PageLocation } from '../protocol/store-records.js';

/** A range of bytes that can be read, written and made durable. */
export interface Device {
  readonly sizeBytes: number;
  /** The bytes at offset. The buffer may be a view of a larger one shared
   *  with other reads (FileDevice gathers neighbouring reads): copy what is
   *  kept for long. */
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  /** Make every completed write durable (fdatasync). */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** Pages first..first+count-1 of the allocation at loc. */
export interface PageRange {
  loc: PageLocation;
  first: number;
  count: number;
}

/** Where each area of the store lives, in bytes from the start of the device. */
export interface Geometry {
  blockBytes: number; // 4096
  /** Two superblock copies: at 0 and at blockBytes. */
  superblockCopyBytes: number;
  mailboxOffset: number;
  mailboxBytes: number;
  /** Two allocation-table copies, each tableCopyBytes long, back to back. */
  tableOffset: number;
  tableCopyBytes: number;
  tableEntriesMax: number;
  dataOffset: number;
  dataBytes: number;
  /** What the data area, extents and stripes are aligned to: BLOCK_BYTES, or a parity pool's row. */
  alignBytes: number;
}

export interface Superblock {
  formatVersion: number;
  pairId: string; // uuid
  geometry: Geometry;
  createdAtMs: number;
}

/** One allocation as kept in the allocation table: the record ALLOCATE carries. */
export type AllocationRecord = Allocation;

/** Bytes in front of every page in the data area. */
export const PAGE_HEADER_BYTES = 64;

export type { StoredPageHeader, StoredPage, MailboxSlot, EpochRecord, Mailbox, PageLocation } from '../protocol/store-records.js';

export interface BlockStore {
  readonly superblock: Superblock;
  /** Over a pool: redundancy a writer dying mid-write can leave disagreeing (repairAfterWriter). */
  readonly pooled: boolean;
  /** Reads a page and checks its checksums: of its two slots, the valid one
   *  with the higher version. A never-written page (or one left by an
   *  allocation since released) reads as version 0, all zeros. */
  readPage(loc: PageLocation, page: number): Promise<StoredPage>;
  /** slotsOurs: nobody else has written the page since this store last did (see page-store.ts): the slot may be chosen without reading. */
  writePage(loc: PageLocation, page: number, version: number, epoch: number, data: Buffer, crc?: number, slotsOurs?: boolean): Promise<void>;
  /** Zero an extent of the data area, so a new allocation there cannot meet
   *  page bytes of a released one where its page headers will sit. Parts no
   *  allocation ever used may be left as they are (never written: zero). */
  clearExtent(dataOffset: number, bytes: number): Promise<void>;
  readTable(): Promise<{ seq: number; records: AllocationRecord[] }>;
  /** Writes the table to the older copy with the next sequence number; returns it. */
  writeTable(records: AllocationRecord[]): Promise<number>;
  readMailbox(): Promise<Mailbox>;
  writeMailboxSlot(slot: MailboxSlot): Promise<void>;
  writeEpochRecord(rec: Omit<EpochRecord, 'seq'>): Promise<EpochRecord>;
  /**
   * A writer died (the partner, taken over): make the redundancy of what it
   * may have been writing agree with the data again, before anyone relies on
   * it. On a pool: the metadata area and the stripes of the pages in
   * `pages`; elsewhere nothing. Resolves with the bytes gone over.
   */
  repairAfterWriter(pages: readonly PageRange[]): Promise<number>;
  /** Over a pool: its generation (0 otherwise, or when left out). */
  poolGeneration?(): number;
  /** Over a pool: read its members' labels again; the generation reached (0 otherwise). */
  refreshPool?(): Promise<number>;
  sync(): Promise<void>;
  close(): Promise<void>;
}
