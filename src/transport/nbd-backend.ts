// What the NBD server needs from a controller: the volumes it can export and
// block I/O on them. The server (transport/nbd-server.ts) speaks the NBD
// protocol and knows nothing of pages or the pair; the runtime
// (runtime/nbd-volumes.ts) implements this over the controller core.

/** One exported volume: a named allocation, served as a block device. */
export interface NbdVolume {
  /** The export name clients ask for: the allocation's name. */
  readonly name: string;
  readonly guid: string;
  /** The export size: the allocation's page count times its page size. */
  readonly sizeBytes: number;
  /** Reported to clients as the preferred block size. */
  readonly pageSizeBytes: number;
  /**
   * A read-only export (a snapshot): NBD_FLAG_READ_ONLY is advertised, and
   * writes, write-zeroes and trims are answered NBD_EPERM without reaching
   * the backend. Absent: writable.
   */
  readonly readOnly?: boolean;
}

/**
 * The connection a request came in on. A backend that retries a request
 * stops once its connection is gone: the client has given up on it and may
 * have sent it again elsewhere, and a resend landing after that client's
 * later writes would undo them.
 */
export interface NbdRequester {
  readonly gone: boolean;
}

/**
 * Block I/O on volumes. Offsets and lengths are bytes, already checked by the
 * server to lie inside the volume and under its request limit; they need not
 * be page aligned. Every method rejects with a PagepairError on failure; the
 * server maps its code to an NBD error (errno) and the connection goes on.
 */
export interface NbdBackend {
  /** Every volume, for NBD_OPT_LIST. */
  listVolumes(): readonly NbdVolume[];
  /** The volume with this export name, or undefined. */
  findVolume(name: string): NbdVolume | undefined;
  /** Whether this controller serves I/O now (false when fenced or stopping). */
  serving(): boolean;
  read(volume: NbdVolume, offsetBytes: number, lengthBytes: number, requester?: NbdRequester): Promise<Buffer>;
  /**
   * Resolves once the write is acknowledged (mirrored, or in the store when
   * alone); with fua, once it is in the store too. A backend may take a write
   * whole or not at all (runtime/nbd-volumes.ts: one request to the core, so
   * a snapshot holds all of it or none); the server's payload limit must then
   * be no larger than what it takes.
   */
  write(volume: NbdVolume, offsetBytes: number, data: Buffer, fua: boolean, requester?: NbdRequester): Promise<void>;
  /** Zeroes a range (NBD_CMD_WRITE_ZEROES and NBD_CMD_TRIM), possibly in pieces; with fua, in the store before it resolves. */
  writeZeroes(volume: NbdVolume, offsetBytes: number, lengthBytes: number, fua: boolean, requester?: NbdRequester): Promise<void>;
  /** Every write acknowledged before the call, through either controller, is in the store when this resolves. */
  flush(volume: NbdVolume, requester?: NbdRequester): Promise<void>;
}
