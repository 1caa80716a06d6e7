// Typed errors with stable codes. What can happen at run time (bad input, a
// lost partner, a full cache) is a PagepairError; what cannot happen is an
// assertion (node:assert in the runtime, `invariant` in pure code).

/** Stable error codes. The numeric value travels on the wire; never renumber. */
export const ErrorCode = {
  // framing and protocol
  BAD_FRAME: 1,
  BAD_MAGIC: 2,
  BAD_VERSION: 3,
  CHECKSUM_MISMATCH: 4,
  FRAME_TOO_LARGE: 5,
  UNKNOWN_TYPE: 6,
  TRUNCATED: 7,
  BAD_FIELD: 8,
  LIMIT_EXCEEDED: 9,
  AUTH_FAILED: 10,
  NOT_AUTHENTICATED: 11,
  // requests
  UNKNOWN_GUID: 20,
  OUT_OF_RANGE: 21,
  TOO_LARGE: 22,
  NO_SPACE: 23,
  CACHE_FULL: 24,
  POLICY_UNKNOWN: 25,
  POINTER_UNKNOWN: 26,
  LOCK_CONFLICT: 27,
  NOT_OWNER: 28,
  BUSY: 29,
  DUPLICATE: 30,
  /** The partner broke the ownership rules (wrote a page we own, a stale grant, two contents at one version). */
  OWNERSHIP_CONFLICT: 31,
  /** The request is switched off by this controller's configuration (a test hook without testHooks: true). */
  NOT_ALLOWED: 32,
  /** The allocation is keyed and this connection has not unlocked it (C_UNLOCK), or the key presented is wrong. */
  ACCESS_DENIED: 33,
  /** The allocation is a snapshot: it is read only. */
  READ_ONLY: 34,
  // pair state
  NOT_MIRRORED: 40,
  FENCED: 41,
  NOT_ACTIVE: 42,
  STALE_EPOCH: 43,
  PARTNER_LOST: 44,
  SHUTTING_DOWN: 45,
  // store and I/O
  IO_ERROR: 60,
  STORE_CORRUPT: 61,
  STORE_MISMATCH: 62,
  // everything else
  TIMEOUT: 80,
  BAD_CONFIG: 81,
  INTERNAL: 99,
} as const;

export type ErrorCodeName = keyof typeof ErrorCode;

const namesByNumber = new Map<number, ErrorCodeName>(
  (Object.entries(ErrorCode) as [ErrorCodeName, number][]).map(([name, n]) => [n, name]),
);

export function errorCodeName(code: number): ErrorCodeName | undefined {
  return namesByNumber.get(code);
}

export class PagepairError extends Error {
  readonly code: ErrorCodeName;
  /** The field, frame type or setting the error is about, when there is one. */
  readonly field: string | undefined;

  constructor(code: ErrorCodeName, message: string, field?: string) {
    super(message);
    this.name = 'PagepairError';
    this.code = code;
    this.field = field;
  }

  get codeNumber(): number {
    return ErrorCode[this.code];
  }

  static fromWire(codeNumber: number, message: string): PagepairError {
    return new PagepairError(errorCodeName(codeNumber) ?? 'INTERNAL', message);
  }
}

export function isPagepairError(err: unknown, code?: ErrorCodeName): err is PagepairError {
  return err instanceof PagepairError && (code === undefined || err.code === code);
}

/** An internal invariant. Breaking one is a bug, never bad input: it throws plainly. */
export function invariant(cond: unknown, what: string): asserts cond {
  if (!cond) throw new Error(`invariant broken: ${what}`);
}
