// The messages pagepair sends, as TypeScript values. The codec (codec.ts)
// turns them into frames and back; docs/protocol.md gives the bytes.
//
// Every message carries the common header fields (requestId, epoch, sender,
// flags). A reply repeats the requestId of its request.

/** Frame type codes. A reply's code is its request's code | REPLY_BIT. */
export const MsgType = {
  // the ten paging synchronization messages (controller <-> controller)
  SPACE_REQUEST: 0x01,
  ALLOCATE: 0x02,
  RELEASE: 0x03,
  LOCK_REQUEST: 0x04,
  READ_HEADER: 0x05,
  WRITE_PAGE: 0x06,
  SENSE_REQUEST: 0x07,
  ALLOCATE_READ: 0x08,
  ALLOCATE_WRITE: 0x09,
  RELEASE_POINTER: 0x0a,
  // handshake, peer and client
  HELLO: 0x20,
  AUTH: 0x21,
  CLIENT_HELLO: 0x22,
  // client requests (client -> controller)
  C_ALLOCATE: 0x30,
  C_RELEASE: 0x31,
  C_WRITE: 0x32,
  C_READ: 0x33,
  C_FLUSH: 0x34,
  C_STATUS: 0x35,
  C_LIST: 0x36,
  C_OPEN_POINTER: 0x37,
  C_CLOSE_POINTER: 0x38,
  C_VERIFY: 0x39,
  C_VERIFY_REPORT: 0x3a,
  C_TEST_CORRUPT: 0x3b,
  C_REWRITE: 0x3c,
  C_POOL_JOB: 0x3d,
  C_UNLOCK: 0x3e,
  C_SNAPSHOT: 0x3f,
  // the typed error reply to any request
  ERROR: 0xff,
} as const;

export const REPLY_BIT = 0x80;
export const PROTOCOL_VERSION = 1;
export const FRAME_MAGIC = 0x50475052; // "PGPR"
export const HEADER_BYTES = 32;

/** Controller ids on the wire. Clients send as 0. */
export const SENDER_CLIENT = 0;
export type ControllerId = 1 | 2;

/** Page states, as carried in READ_HEADER replies. */
export const PageState = {
  CLEAN: 0,
  DIRTY: 1,
  STAGING: 2,
  DESTAGING: 3,
  ABSENT: 4,
} as const;
export type PageStateCode = (typeof PageState)[keyof typeof PageState];

/** Controller roles, as carried in SENSE replies and status. */
export const Role = {
  STARTING: 0,
  MIRRORED: 1,
  ALONE: 2,
  FENCED: 3,
  JOINING: 4,
  STOPPING: 5,
  /** Mirroring is switched off by configuration: a single controller. */
  SINGLE: 6,
  /** The partner is lost; deciding through the store who carries on. */
  ARBITRATING: 7,
} as const;
export type RoleCode = (typeof Role)[keyof typeof Role];

export const SenseReason = {
  HEARTBEAT: 0,
  SHUTTING_DOWN: 1,
  CRASHING: 2,
} as const;
export type SenseReasonCode = (typeof SenseReason)[keyof typeof SenseReason];

/** SENSE_REQUEST join flags. A join decision reads only a SENSE with JOINING set. */
export const JoinFlag = {
  /** The sender is joining us now. */
  JOINING: 0x01,
  /** The sender has just started (or was fenced): it holds no state of its own. */
  FRESH: 0x02,
  /** The sender has sent us all its state for this join. */
  PUSH_DONE: 0x04,
} as const;

/** How C_VERIFY_REPLY judges a page it lists (pages that match are not listed). */
export const VerifyVerdict = {
  /** A read through A and a read through B would return different bytes. */
  MISMATCH: 1,
  /** A mirrored write of the page was in flight while it was compared: ask again. */
  BUSY: 2,
} as const;
export type VerifyVerdictCode = (typeof VerifyVerdict)[keyof typeof VerifyVerdict];

/** What a C_POOL_JOB asks the controller to run on its pool. */
export const PoolJobKind = {
  /** Rebuild one slot onto a new device. */
  REPLACE: 1,
  /** Check the pool's redundancy (and, with repair, rewrite what disagrees), then every page's CRC. */
  SCRUB: 2,
} as const;
export type PoolJobKindCode = (typeof PoolJobKind)[keyof typeof PoolJobKind];

/** What a C_SNAPSHOT does. */
export const SnapshotOp = {
  /** Take a copy-on-write snapshot of the volume `guid`, named `name`. */
  CREATE: 1,
  /** Write the snapshot `guid`'s bytes back into its volume, where they differ. */
  ROLLBACK: 2,
  /** Fold the volume's changes since the snapshot `guid` into it: the snapshot is taken again, now, under its name. */
  COMMIT: 3,
} as const;
export type SnapshotOpCode = (typeof SnapshotOp)[keyof typeof SnapshotOp];

export const LockOp = { TAKE: 1, GIVE: 2 } as const;
export type LockOpCode = (typeof LockOp)[keyof typeof LockOp];

export const PointerMode = { READ: 1, WRITE: 2 } as const;
export type PointerModeCode = (typeof PointerMode)[keyof typeof PointerMode];

/** WRITE_PAGE per-page flags. */
export const PageFlag = {
  /** No data: the page is clean at `version` (it was destaged). */
  CLEAN_AT: 0x01,
  /** Data belongs to an open write pointer; committed on RELEASE_POINTER. */
  POINTER_PENDING: 0x02,
  /** No data: the client write (clientId, clientSeq) was already applied to
   *  this page; a retry of it must not apply again. Sent in a join. */
  TAG_ONLY: 0x04,
  /** Sent by a join's resync, outside the ownership rules: the newer version
   *  wins, and on equal versions with different contents the copy of the
   *  side whose state wins the join. */
  RESYNC: 0x08,
} as const;

/** Fields every frame carries in its header. */
export interface Common {
  requestId: number; // u32
  epoch: number; // u32
  sender: number; // u8
  flags: number; // u8, reserved for future use; must be 0 in version 1
}

// ---------------------------------------------------------------------------
// The ten paging synchronization messages and their replies

export interface SpaceRequest extends Common {
  kind: 'SPACE_REQUEST';
  policy: string;
  pageSizeBytes: number;
  pageCount: number;
  /** true: reserve the space; false: only report what is free. */
  reserve: boolean;
  /** Proposed data-area offset, or -1 to let the receiver choose. */
  dataOffset: number;
}
export interface SpaceReply extends Common {
  kind: 'SPACE_REQUEST_REPLY';
  reservationId: number; // 0 when nothing was reserved
  dataOffset: number; // -1 when nothing was reserved
  cacheBytesFree: number;
  storeBytesFree: number;
}

/** One allocation: what ALLOCATE tells the partner, and what the store's allocation table keeps. */
export interface AllocationRecord {
  guid: string;
  name: string;
  policy: string;
  pageSizeBytes: number;
  pageCount: number;
  /** Start of the allocation's extent, relative to the data area. */
  dataOffset: number;
  createdEpoch: number;
  /**
   * A keyed allocation: the KEY_DIGEST_BYTES digest of its access key
   * (src/core/access-keys.ts), never the key. Absent: not keyed, open to
   * every client.
   */
  keyDigest?: Buffer;
  /**
   * A copy-on-write snapshot (src/core/snapshots.ts): read only; its name is
   * the origin's name, '@', the snapshot's own name, and that is how its
   * origin is found. Absent or false: an ordinary allocation.
   */
  snapshot?: boolean;
}

/** Bytes of an allocation's access key, and of the digest of it that the table and ALLOCATE carry. */
export const ACCESS_KEY_BYTES = 16;
export const KEY_DIGEST_BYTES = 16;

export interface Allocate extends Common, AllocationRecord {
  kind: 'ALLOCATE';
  reservationId: number;
  /** The allocation is keyed: keyDigest holds its key's digest. Not keyed: keyDigest is 16 zero bytes. */
  keyed: boolean;
  keyDigest: Buffer;
  /** The allocation is a snapshot of the allocation its name starts with (AllocationRecord.snapshot). */
  snapshot: boolean;
}
export interface AllocateReply extends Common {
  kind: 'ALLOCATE_REPLY';
}

export interface Release extends Common {
  kind: 'RELEASE';
  guid: string;
}
export interface ReleaseReply extends Common {
  kind: 'RELEASE_REPLY';
}

export interface LockRequest extends Common {
  kind: 'LOCK_REQUEST';
  guid: string;
  firstPage: number;
  pageCount: number;
  op: LockOpCode;
  /**
   * GIVE: the ownership generation the pages have from now on (see
   * LockReply.ownerGen). TAKE: 0.
   */
  ownerGen: number;
}
export interface LockReply extends Common {
  kind: 'LOCK_REQUEST_REPLY';
  /** Whether ownership of the whole range moved to the requester. */
  granted: boolean;
  /**
   * When granted: the pages' ownership generation from now on. Every move of
   * a page's ownership gives it a larger generation, so a grant, a GIVE or a
   * WRITE_PAGE from before the last move is recognised as stale. 0 when not
   * granted.
   */
  ownerGen: number;
}

export interface ReadHeader extends Common {
  kind: 'READ_HEADER';
  guid: string;
  firstPage: number;
  pageCount: number;
}
export interface PageHeaderInfo {
  page: number;
  version: number;
  crc: number;
  state: PageStateCode;
  epoch: number;
}
export interface ReadHeaderReply extends Common {
  kind: 'READ_HEADER_REPLY';
  guid: string;
  headers: PageHeaderInfo[];
}

export interface PageWrite {
  guid: string;
  page: number;
  version: number;
  crc: number;
  epoch: number;
  pageFlags: number; // PageFlag bits
  pointerId: number; // 0 when not part of a write pointer
  /** On the last page of a client write: the client's id and sequence number,
   *  so the partner knows the write is whole and can refuse to apply a retry. 0 otherwise. */
  clientId: number;
  clientSeq: number;
  /** The page's ownership generation at the sender when it wrote the page (0 for TAG_ONLY). */
  ownerGen: number;
  data: Buffer; // empty for CLEAN_AT
}
export interface WritePage extends Common {
  kind: 'WRITE_PAGE';
  pages: PageWrite[];
}
export interface WritePageReply extends Common {
  kind: 'WRITE_PAGE_REPLY';
  count: number;
}

export interface SenseRequest extends Common {
  kind: 'SENSE_REQUEST';
  role: RoleCode;
  reason: SenseReasonCode;
  /** JoinFlag bits: where the sender is in joining us. */
  joinFlags: number;
  /**
   * The newest generation of the store's pool the sender's pool object has
   * reached (0: its store is not a pool). A receiver whose own is older
   * refreshes its pool before it answers (src/core/pool-sync.ts).
   */
  poolGeneration: number;
}
export interface SenseReply extends Common {
  kind: 'SENSE_REQUEST_REPLY';
  role: RoleCode;
  senseCode: number; // 0 = no error; otherwise an ErrorCode number
  allocations: number;
  cachedPages: number;
  dirtyPages: number;
  destageQueue: number;
  tableDigest: string; // hex
  dirtyDigest: string; // hex
  /** The pool generation the answering side has reached, after any refresh the request asked for (0: not a pool). */
  poolGeneration: number;
}

export interface AllocateRead extends Common {
  kind: 'ALLOCATE_READ';
  guid: string;
  firstPage: number;
  pageCount: number;
  pointerId: number;
}
export interface AllocateWrite extends Common {
  kind: 'ALLOCATE_WRITE';
  guid: string;
  firstPage: number;
  pageCount: number;
  pointerId: number;
}
export interface AllocatePointerReply extends Common {
  kind: 'ALLOCATE_READ_REPLY' | 'ALLOCATE_WRITE_REPLY';
  pointerId: number;
}
export interface ReleasePointer extends Common {
  kind: 'RELEASE_POINTER';
  pointerId: number;
  /** For a write pointer: true commits its pages, false drops them. */
  commit: boolean;
}
export interface ReleasePointerReply extends Common {
  kind: 'RELEASE_POINTER_REPLY';
  pages: number; // pages committed
}

// ---------------------------------------------------------------------------
// Handshake

/** Peer or client opens with HELLO; the receiver answers with HELLO_REPLY. */
export interface Hello extends Common {
  kind: 'HELLO';
  protocolVersion: number;
  pairId: string; // uuid
  controllerId: number;
  nonce: Buffer; // 32 bytes
  pid: number;
}
export interface HelloReply extends Common {
  kind: 'HELLO_REPLY';
  pairId: string;
  controllerId: number;
  nonce: Buffer; // 32 bytes
  pid: number;
}
export interface Auth extends Common {
  kind: 'AUTH';
  proof: Buffer; // 32 bytes
}
export interface AuthReply extends Common {
  kind: 'AUTH_REPLY';
  role: RoleCode;
  /**
   * HMAC proving the listener knows the secret (see docs/protocol.md). It
   * comes only after the dialer proved itself in AUTH: a stranger who dials
   * gets nothing to guess the secret from.
   */
  proof: Buffer; // 32 bytes
}
export interface ClientHello extends Common {
  kind: 'CLIENT_HELLO';
  protocolVersion: number;
  token: string;
  clientName: string;
}
export interface ClientHelloReply extends Common {
  kind: 'CLIENT_HELLO_REPLY';
  controllerId: number;
  pairId: string;
  role: RoleCode;
  requestBytesMax: number;
  inflightMax: number;
}

// ---------------------------------------------------------------------------
// Client requests

export interface CAllocate extends Common {
  kind: 'C_ALLOCATE';
  name: string;
  policy: string;
  sizeBytes: number;
  /** Make a keyed allocation: only connections that C_UNLOCK it with the key the reply carries may use it. */
  keyed: boolean;
}
export interface CAllocateReply extends Common {
  kind: 'C_ALLOCATE_REPLY';
  guid: string;
  pageSizeBytes: number;
  pageCount: number;
  /** A keyed allocation's access key (ACCESS_KEY_BYTES, told this once and kept nowhere); 16 zero bytes when not keyed. */
  key: Buffer;
}
/**
 * Present a keyed allocation's key: from now on this connection may use the
 * allocation, until the connection goes. A wrong key or an unknown guid is
 * ACCESS_DENIED.
 */
export interface CUnlock extends Common {
  kind: 'C_UNLOCK';
  guid: string;
  key: Buffer;
}
export interface CUnlockReply extends Common {
  kind: 'C_UNLOCK_REPLY';
}
/**
 * Snapshots of a volume (src/core/snapshots.ts). CREATE: a read-only
 * copy-on-write snapshot of the allocation `guid` as it is at one instant,
 * made as a new allocation named `<volume name>@<name>`. A snapshot is
 * deleted with C_RELEASE of its guid.
 */
export interface CSnapshot extends Common {
  kind: 'C_SNAPSHOT';
  op: SnapshotOpCode;
  guid: string;
  name: string;
}
export interface CSnapshotReply extends Common {
  kind: 'C_SNAPSHOT_REPLY';
  guid: string;
  pageSizeBytes: number;
  pageCount: number;
  /** ROLLBACK: pages written back into the volume; 0 otherwise. */
  pages: number;
}
export interface CRelease extends Common {
  kind: 'C_RELEASE';
  guid: string;
}
export interface CReleaseReply extends Common {
  kind: 'C_RELEASE_REPLY';
}
export interface CWrite extends Common {
  kind: 'C_WRITE';
  guid: string;
  offset: number;
  pointerId: number; // 0: a plain write, committed on ack
  /** A client's id and the write's sequence number: a retried write with the
   *  same pair is applied once. 0 and 0: no retry protection. */
  clientId: number;
  clientSeq: number;
  data: Buffer;
}
export interface CWriteReply extends Common {
  kind: 'C_WRITE_REPLY';
}
export interface CRead extends Common {
  kind: 'C_READ';
  guid: string;
  offset: number;
  length: number;
  pointerId: number;
}
export interface CReadReply extends Common {
  kind: 'C_READ_REPLY';
  data: Buffer;
}
export interface CFlush extends Common {
  kind: 'C_FLUSH';
  /** Empty string: every allocation. */
  guid: string;
}
export interface CFlushReply extends Common {
  kind: 'C_FLUSH_REPLY';
  pages: number;
}
export interface CStatus extends Common {
  kind: 'C_STATUS';
}
export interface CStatusReply extends Common {
  kind: 'C_STATUS_REPLY';
  json: string; // status is not on the hot path; JSON keeps it extensible
}
export interface CList extends Common {
  kind: 'C_LIST';
}
export interface CListReply extends Common {
  kind: 'C_LIST_REPLY';
  allocations: {
    guid: string;
    name: string;
    policy: string;
    pageSizeBytes: number;
    pageCount: number;
    /**
     * Keyed: a connection must C_UNLOCK it first. Always on the wire (and
     * set by decode); optional here only so that code which builds an
     * entry for display from an allocate reply need not say.
     */
    keyed?: boolean;
    /** A snapshot: the guid of the allocation it is a snapshot of. Not a snapshot: ''. Optional here as keyed is. */
    origin?: string;
  }[];
}
export interface COpenPointer extends Common {
  kind: 'C_OPEN_POINTER';
  guid: string;
  firstPage: number;
  pageCount: number;
  mode: PointerModeCode;
}
export interface COpenPointerReply extends Common {
  kind: 'C_OPEN_POINTER_REPLY';
  pointerId: number;
}
export interface CClosePointer extends Common {
  kind: 'C_CLOSE_POINTER';
  pointerId: number;
  commit: boolean;
}
export interface CClosePointerReply extends Common {
  kind: 'C_CLOSE_POINTER_REPLY';
  pages: number;
}

/**
 * Compare both controllers' copies of a page range: the controller asked
 * compares its own page headers with the partner's (READ_HEADER) and, for
 * pages only one side caches, with the store's copy.
 */
export interface CVerify extends Common {
  kind: 'C_VERIFY';
  guid: string;
  firstPage: number;
  pageCount: number;
}
/** One listed page of a verify: each controller's header of its copy, the store's when it was read, and the owner. */
export interface VerifiedPage {
  page: number;
  verdict: VerifyVerdictCode;
  /** The page's owner, as the answering controller knows it (1 = A, 2 = B). */
  owner: number;
  aVersion: number;
  aCrc: number;
  aState: PageStateCode;
  bVersion: number;
  bCrc: number;
  bState: PageStateCode;
  /** The store's copy, when only one side caches the page; -1: not read. */
  storeVersion: number;
  storeCrc: number;
}
export interface CVerifyReply extends Common {
  kind: 'C_VERIFY_REPLY';
  pagesChecked: number;
  /** Mismatched and busy pages only. */
  pages: VerifiedPage[];
}
/** What a whole verify run found, for the controller's status to show. */
export interface CVerifyReport extends Common {
  kind: 'C_VERIFY_REPORT';
  pagesChecked: number;
  /** Pages whose copies differed once writes in flight were filtered out. */
  mismatches: number;
  /** Of those, pages made equal by the run. */
  repaired: number;
  /** Pages still busy after every re-check: not judged. */
  unsettled: number;
}
export interface CVerifyReportReply extends Common {
  kind: 'C_VERIFY_REPORT_REPLY';
}
/**
 * Test hook: overwrite one page in the answering controller's cache with
 * `data` at the same version, without mirroring, so the copies differ on
 * purpose. Refused (NOT_ALLOWED) unless the controller's configuration has
 * testHooks: true.
 */
export interface CTestCorrupt extends Common {
  kind: 'C_TEST_CORRUPT';
  guid: string;
  page: number;
  data: Buffer;
}
/**
 * Verify's repair: the answering controller's copy of a page, as a read
 * through it returns it, is written again as a new version (mirrored; alone,
 * through to the store), so both copies end equal to it. Whatever the page
 * holds when the write is applied is what is written: a client write that
 * landed meanwhile is kept, not undone.
 */
export interface CRewrite extends Common {
  kind: 'C_REWRITE';
  guid: string;
  page: number;
}
export interface CRewriteReply extends Common {
  kind: 'C_REWRITE_REPLY';
  /** The page's new version, and the CRC-32C of its contents. */
  version: number;
  crc: number;
}
/**
 * Start a job on the answering controller's pool while the pair serves: a
 * device replace or a scrub (`pagepair device replace`, `pagepair scrub`).
 * Answered as soon as the job runs; its progress and its end are in the
 * controller's status (poolJob).
 */
export interface CPoolJob extends Common {
  kind: 'C_POOL_JOB';
  job: PoolJobKindCode;
  /** REPLACE: the slot to rebuild. SCRUB: 0. */
  slot: number;
  /** REPLACE: the new device, as both controllers can open it (an absolute path or an nbd:// URI). SCRUB: ''. */
  device: string;
  /** At most this many bytes a second (0: no limit). */
  rateBytesPerSec: number;
  /** SCRUB: rewrite the redundancy that disagrees with the data. REPLACE: false. */
  repair: boolean;
}
export interface CPoolJobReply extends Common {
  kind: 'C_POOL_JOB_REPLY';
  /** The job's id, as status.poolJob.id shows it. */
  jobId: number;
}
export interface CTestCorruptReply extends Common {
  kind: 'C_TEST_CORRUPT_REPLY';
  /** The version the page kept, and the CRC-32C of its new contents. */
  version: number;
  crc: number;
}

// ---------------------------------------------------------------------------

export interface ErrorReply extends Common {
  kind: 'ERROR';
  code: number; // ErrorCode number
  requestType: number; // the type code of the request it answers (0 if none)
  message: string;
}

export type PeerRequest =
  | SpaceRequest
  | Allocate
  | Release
  | LockRequest
  | ReadHeader
  | WritePage
  | SenseRequest
  | AllocateRead
  | AllocateWrite
  | ReleasePointer;

export type PeerReply =
  | SpaceReply
  | AllocateReply
  | ReleaseReply
  | LockReply
  | ReadHeaderReply
  | WritePageReply
  | SenseReply
  | AllocatePointerReply
  | ReleasePointerReply;

export type HandshakeMessage = Hello | HelloReply | Auth | AuthReply | ClientHello | ClientHelloReply;

export type ClientRequest =
  | CAllocate
  | CRelease
  | CWrite
  | CRead
  | CFlush
  | CStatus
  | CList
  | COpenPointer
  | CClosePointer
  | CVerify
  | CVerifyReport
  | CTestCorrupt
  | CRewrite
  | CPoolJob
  | CUnlock
  | CSnapshot;

export type ClientReply =
  | CAllocateReply
  | CReleaseReply
  | CWriteReply
  | CReadReply
  | CFlushReply
  | CStatusReply
  | CListReply
  | COpenPointerReply
  | CClosePointerReply
  | CVerifyReply
  | CVerifyReportReply
  | CTestCorruptReply
  | CRewriteReply
  | CPoolJobReply
  | CUnlockReply
  | CSnapshotReply;

export type Message = PeerRequest | PeerReply | HandshakeMessage | ClientRequest | ClientReply | ErrorReply;
export type MessageKind = Message['kind'];

/** Body-only view of a message: what a sender fills in before the header fields. */
export type BodyOf<M extends Message> = Omit<M, keyof Common>;
