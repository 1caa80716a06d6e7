// What every pool layout (mirror, parity, parity2) offers beyond a Device
// (issue 14). A pool is a Device over N member devices; a PageStore is
// formatted over it like over a file. Both controllers open their own Pool
// object over the same members, so:
//
// - Rows: in a parity layout a row holds one chunk of every member, and
//   its parity covers all of them; two controllers writing different bytes
//   of one row at once would each compute the parity from the other's old
//   bytes. The store lays allocations out so that the pages sharing a row
//   have one owner at a time (rowBytes; the core moves ownership in groups
//   of those pages), and the pool keeps its first mirroredPrefixBytes as
//   plain copies on every member: the superblock, mailbox and allocation
//   table, which both controllers write at once, are never in a parity row.
// - A member one controller marks failed is written in its labels (the
//   pool's generation grows); the other controller learns it through
//   refresh(), which re-reads every label.
// - A writer that dies in the middle of a row (or a mirror write) leaves
//   the copies or the parity disagreeing with the data: repairRange makes
//   them agree again from the data as it stands. The survivor calls it for
//   what the dead partner may have been writing before it writes there.

import type { Device } from './types.js';

export type PoolLayout = 'mirror' | 'parity' | 'parity2';

/** A member device as given: a name for messages (a path or URI) and its bytes. */
export interface PoolMember {
  name: string;
  device: Device;
}

export type MemberState = 'healthy' | 'failed' | 'stale' | 'rebuilding';

export interface MemberStatus {
  slot: number;
  name: string;
  state: MemberState;
  /** Why it is not healthy. */
  reason: string | null;
}

export interface PoolStatus {
  poolId: string;
  layout: PoolLayout;
  generation: number;
  /** Bytes of one chunk (parity layouts); 0 for a mirror. */
  chunkBytes: number;
  /** Bytes the pool serves. */
  sizeBytes: number;
  members: MemberStatus[];
  /** Some member is not healthy. */
  degraded: boolean;
  /** How many more members may fail before data is lost. */
  failuresTolerated: number;
  /** A rebuild onto a member in progress, if any. */
  rebuild: { slot: number; doneBytes: number; totalBytes: number } | null;
}

export interface ProgressOptions {
  /** At most this many bytes a second read from the members (0: no limit). */
  rateBytesPerSec?: number;
  /** Called as the work goes, with bytes done of bytes in all. */
  onProgress?(doneBytes: number, totalBytes: number): void;
  signal?: AbortSignal;
}

/**
 * Opens a member device by the name a label records (a path or an nbd://
 * URI): how a pool object takes up a member that another pool object over
 * the same members (the partner controller's) is rebuilding.
 */
export type MemberOpener = (name: string) => Promise<Device>;

/**
 * Work that rewrites members while other pool objects over them (the
 * partner controller's) read and write: replace, and scrub's repairs. It is
 * announced in the labels first (the pool's next generation names the member
 * being rebuilt, and its device); every pool object that reads those labels
 * writes that member last, after the healthy ones, and never reads it. The
 * work waits on barrier before it writes anything.
 */
export interface MaintenanceOptions extends ProgressOptions {
  /**
   * Resolves once every other pool object over these members has read labels
   * at `generation` or newer. Default: at once (the pair is stopped, or this
   * is the only pool object).
   */
  barrier?(generation: number): Promise<void>;
  /** How the work waits a little for writes under way to land (default: a timer; the simulator passes its own clock). */
  pause?(ms: number): Promise<void>;
}

export interface ScrubReport {
  bytesChecked: number;
  /** Rows (parity) or ranges (mirror) whose redundancy disagreed with the data. */
  mismatches: number;
  /** Of those, how many were rewritten (only with repair). */
  repaired: number;
  /** Ranges no member could read. */
  unreadable: number;
  /** Mismatches found but left as they were: repair was not asked, or the pool had no redundancy to spare while one was rebuilt. */
  unrepaired: number;
}

export interface Pool extends Device {
  readonly poolId: string;
  readonly layout: PoolLayout;
  /** Bytes of one parity row (chunk × data members); 0 when any bytes may be written independently (mirror). */
  readonly rowBytes: number;
  /** The first bytes of the pool, kept as plain copies on every member whatever the layout. A multiple of rowBytes. */
  readonly mirroredPrefixBytes: number;
  readonly generation: number;
  readonly degraded: boolean;
  status(): PoolStatus;
  /**
   * Read every member's label again: a member whose label is missing or of
   * another pool, or whose slot the newest labels name as out, is not used
   * from now on (one they do not name is used even when its own label is
   * older: a label write still under way). Resolves with the pool's generation.
   */
  refresh(): Promise<number>;
  /**
   * Make the redundancy of [offset, offset + length) agree with its data
   * again: a mirror copies one healthy member's bytes to the others; a
   * parity layout recomputes P (and Q) of every row touched from its data
   * chunks. For after a writer died in the middle of a write there.
   */
  repairRange(offset: number, length: number): Promise<void>;
  /** Read everything and check the redundancy; with repair, rewrite what disagrees. */
  scrub(opts: MaintenanceOptions & { repair: boolean }): Promise<ScrubReport>;
  /**
   * Put `member` in slot `slot` (failed or stale, or healthy when asked
   * to move off it) and fill it from the others, rateBytesPerSec at most;
   * writes go on meanwhile and go to it too. It serves reads, and the pool's
   * generation grows, once it is whole.
   */
  replace(slot: number, member: PoolMember, opts?: MaintenanceOptions): Promise<void>;
}
