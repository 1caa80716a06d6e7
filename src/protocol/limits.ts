// Every size and count on the wire has a named limit. The codec refuses what
// exceeds them before it allocates anything; the controller's configuration
// may tighten them (never loosen past the hard maxima).

export interface Limits {
  /** Largest whole frame, header included. */
  frameBytesMax: number;
  /** Most pages in one WRITE_PAGE frame. */
  pagesPerMessageMax: number;
  /** Most headers asked for or returned in one READ_HEADER. */
  headersPerMessageMax: number;
  /** Largest page; policies may not exceed it. */
  pageSizeBytesMax: number;
  /** Largest data payload in one client read or write. */
  requestBytesMax: number;
  /** Longest string field (names, policies, messages), in bytes of UTF-8. */
  stringBytesMax: number;
  /** Longest device name (a path or an nbd:// URI) in a C_POOL_JOB, in bytes of UTF-8. */
  deviceNameBytesMax: number;
  /** Longest JSON field (status), in bytes. */
  jsonBytesMax: number;
  /** Most allocations listed in one C_LIST reply. */
  listEntriesMax: number;
}

/** Hard maxima: no configuration can go past these. */
export const HARD_LIMITS: Readonly<Limits> = Object.freeze({
  frameBytesMax: 64 * 1024 * 1024,
  pagesPerMessageMax: 4096,
  headersPerMessageMax: 65536,
  pageSizeBytesMax: 1024 * 1024,
  requestBytesMax: 32 * 1024 * 1024,
  stringBytesMax: 1024,
  deviceNameBytesMax: 1024,
  jsonBytesMax: 4 * 1024 * 1024,
  listEntriesMax: 65536,
});

export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  frameBytesMax: 8 * 1024 * 1024 + 4096,
  pagesPerMessageMax: 256,
  headersPerMessageMax: 4096,
  pageSizeBytesMax: 1024 * 1024,
  requestBytesMax: 8 * 1024 * 1024,
  stringBytesMax: 256,
  deviceNameBytesMax: 1024,
  jsonBytesMax: 1024 * 1024,
  listEntriesMax: 16384,
});
