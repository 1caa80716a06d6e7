// What the two controllers keep in their shared store and read back, as the
// core sees it: a page with its header, the mailbox (heartbeat slots and the
// epoch record) and where an allocation's pages lie. The store encodes them
// (src/store); the core asks for them as effects (src/core/io.ts).

/** What a page slot's header says; version 0 means never written. */
export interface StoredPageHeader {
  guid: string;
  page: number;
  version: number;
  epoch: number;
  crc: number; // CRC32C of the page data
}

export interface StoredPage {
  header: StoredPageHeader;
  data: Buffer;
  /**
   * Set when the page's other slot is damaged (a write torn by a crash or a
   * power cut, most likely) and this copy, the older one or "never written",
   * was used instead: why the other slot was refused.
   */
  tornSlot?: string;
}

/** A controller's heartbeat slot in the mailbox area. */
export interface MailboxSlot {
  controllerId: number;
  epoch: number;
  /** Grows by one at every heartbeat write. */
  counter: number;
  timeMs: number;
  pid: number;
  role: number; // Role code
}

/** The epoch record: who may write in which epoch. */
export interface EpochRecord {
  epoch: number;
  /** Controller that wrote the record; 0 when both serve (mirrored). */
  activeId: number;
  seq: number;
  timeMs: number;
}

export interface Mailbox {
  slots: (MailboxSlot | null)[]; // index controllerId - 1
  epoch: EpochRecord | null;
}

/** The location facts of an allocation that page I/O needs. */
export interface PageLocation {
  guid: string;
  dataOffset: number;
  pageSizeBytes: number;
}
