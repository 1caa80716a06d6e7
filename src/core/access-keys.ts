// Access keys: a keyed allocation is served only to client connections that
// presented its key (C_UNLOCK), the InfiniBand R_Key idea. The key is 16
// random bytes made at C_ALLOCATE and told to the client once; what is kept
// is a digest of it, in the allocation record (so in ALLOCATE to the
// partner, a join's replay, and the table the record is written to), never
// the key itself, so the partner refuses the same connections this side does.
//
// Which connections unlocked what is this controller's own memory: a client
// that fails over unlocks again at the other controller.

import { createHash, timingSafeEqual } from 'node:crypto';
import { PagepairError } from '../protocol/errors.js';
import { ACCESS_KEY_BYTES, KEY_DIGEST_BYTES, type AllocationRecord, type ClientRequest, type CUnlock } from '../protocol/messages.js';
import type { AllocState } from './allocation.js';
import type { Core } from './context.js';

/** Keyed allocations one connection may hold unlocked at once; past it C_UNLOCK is LIMIT_EXCEEDED. */
export const UNLOCKS_PER_CONNECTION_MAX = 1024;

/** Connections that may hold unlocks at once (each network client and NBD has one); past it C_UNLOCK is LIMIT_EXCEEDED. */
export const UNLOCKED_CONNECTIONS_MAX = 65_536;

const DIGEST_CONTEXT = 'pagepair access key v1\0';

/**
 * The digest the table keeps of an allocation's key: SHA-256 over a context
 * string, the guid and the key, cut to KEY_DIGEST_BYTES. The key is 128
 * random bits, so the digest needs no salt; the guid in it keeps one key's
 * digest from matching another allocation's.
 */
export function keyDigest(guid: string, key: Uint8Array): Buffer {
  return createHash('sha256').update(DIGEST_CONTEXT).update(guid).update(key).digest().subarray(0, KEY_DIGEST_BYTES);
}

/**
 * The guid a client request names, or null ('' for C_FLUSH of everything).
 * Every kind is listed, so a new request that names an allocation cannot
 * slip past the check unnoticed: the compiler asks where it goes.
 */
export function guidOfRequest(msg: ClientRequest): string | null {
  switch (msg.kind) {
    case 'C_READ':
    case 'C_WRITE':
    case 'C_RELEASE':
    case 'C_OPEN_POINTER':
    case 'C_VERIFY':
    case 'C_TEST_CORRUPT':
    case 'C_REWRITE':
    case 'C_FLUSH':
    case 'C_SNAPSHOT':
      return msg.guid;
    // C_CLOSE_POINTER names a pointer of this connection (checked in pointers.ts);
    // C_UNLOCK is how a guid is opened; the others name no allocation.
    case 'C_CLOSE_POINTER':
    case 'C_UNLOCK':
    case 'C_ALLOCATE':
    case 'C_STATUS':
    case 'C_LIST':
    case 'C_VERIFY_REPORT':
    case 'C_POOL_JOB':
      return null;
    default: {
      const unhandled: never = msg;
      return unhandled;
    }
  }
}

export class AccessKeys {
  /** connId -> guids of keyed allocations it unlocked. */
  private readonly unlocked = new Map<number, Set<string>>();

  constructor(private readonly c: Core) {}

  /** A fresh key for a new keyed allocation, and the digest to record. */
  newKey(guid: string): { key: Buffer; digest: Buffer } {
    const key = Buffer.from(this.c.env.randomBytes(ACCESS_KEY_BYTES));
    if (key.length !== ACCESS_KEY_BYTES) throw new PagepairError('INTERNAL', `randomBytes gave ${key.length} bytes, not ${ACCESS_KEY_BYTES}`);
    return { key, digest: keyDigest(guid, key) };
  }

  /**
   * Throws ACCESS_DENIED when `alloc` is keyed and connId has not unlocked
   * it. The message names the guid only: whether a key was ever tried is
   * nobody's business.
   */
  check(connId: number, alloc: AllocState): void {
    if (alloc.record.keyDigest === undefined) return;
    if (this.unlocked.get(connId)?.has(alloc.record.guid) === true) return;
    this.c.counters.accessDenied++;
    throw denied(alloc.record.guid);
  }

  /**
   * Before a request is routed: a request that names a keyed allocation this
   * connection has not unlocked is refused here, on every path (hot or not).
   * Unknown guids pass: the room that handles the request says UNKNOWN_GUID.
   */
  checkRequest(connId: number, msg: ClientRequest): void {
    const guid = guidOfRequest(msg);
    if (guid === null || guid === '') return;
    const alloc = this.c.allocator.allocs.get(guid);
    if (alloc !== undefined) this.check(connId, alloc);
  }

  /** C_UNLOCK: the key is compared with the digest in constant time; wrong key or unknown guid: ACCESS_DENIED. */
  unlock(connId: number, msg: CUnlock): void {
    const alloc = this.c.allocator.allocs.get(msg.guid);
    const digest = alloc?.record.keyDigest;
    const key = msg.key as Uint8Array | undefined;
    // An unkeyed allocation needs no unlocking; unlocking it is harmless and says nothing.
    if (alloc !== undefined && digest === undefined) return;
    const ok =
      alloc !== undefined &&
      digest !== undefined &&
      key instanceof Uint8Array &&
      key.length === ACCESS_KEY_BYTES &&
      digest.length === KEY_DIGEST_BYTES &&
      timingSafeEqual(keyDigest(msg.guid, key), digest);
    if (!ok) {
      this.c.counters.accessDenied++;
      this.c.env.log.warn({ connId, guid: msg.guid }, 'C_UNLOCK refused: unknown allocation or wrong key');
      throw denied(msg.guid);
    }
    let set = this.unlocked.get(connId);
    if (set?.has(msg.guid) === true) return;
    if (set === undefined) {
      if (this.unlocked.size >= UNLOCKED_CONNECTIONS_MAX) {
        throw new PagepairError('LIMIT_EXCEEDED', `more than ${UNLOCKED_CONNECTIONS_MAX} connections hold unlocked allocations`, 'guid');
      }
      set = new Set();
      this.unlocked.set(connId, set);
    }
    const max = this.c.cfg.unlocksPerConnectionMax ?? UNLOCKS_PER_CONNECTION_MAX;
    if (set.size >= max) {
      // Allocations released since they were unlocked do not count.
      for (const g of set) if (!this.c.allocator.allocs.has(g)) set.delete(g);
      if (set.size >= max) throw new PagepairError('LIMIT_EXCEEDED', `a connection may hold at most ${max} keyed allocations unlocked`, 'guid');
    }
    set.add(msg.guid);
    this.c.env.log.info({ connId, guid: msg.guid }, 'keyed allocation unlocked by a connection');
  }

  clientGone(connId: number): void {
    this.unlocked.delete(connId);
  }

  /** Keyed allocations unlocked, summed over connections (for status). */
  get unlockedCount(): number {
    let n = 0;
    for (const s of this.unlocked.values()) n += s.size;
    return n;
  }
}

function denied(guid: string): PagepairError {
  return new PagepairError('ACCESS_DENIED', `allocation ${guid} is keyed and this connection has not unlocked it`, 'guid');
}

const NO_DIGEST = Buffer.alloc(KEY_DIGEST_BYTES);

/** What ALLOCATE carries of a record's key: the flag and the digest (zeros when not keyed). */
export function keyFieldsOf(record: AllocationRecord): { keyed: boolean; keyDigest: Buffer } {
  return record.keyDigest === undefined ? { keyed: false, keyDigest: NO_DIGEST } : { keyed: true, keyDigest: record.keyDigest };
}

/**
 * The record's keyDigest from an ALLOCATE's fields (a copy: decoded fields
 * alias the frame), or undefined when not keyed. A digest without the flag,
 * or a flag without a 16-byte digest, is BAD_FIELD: the two sides must not
 * disagree on whether an allocation is keyed.
 */
export function keyDigestOfAllocate(req: { keyed?: unknown; keyDigest?: unknown }): Buffer | undefined {
  const digest = req.keyDigest;
  // A frame always has both fields; a message built in process may leave out both (not keyed).
  if (req.keyed === undefined && digest === undefined) return undefined;
  if (!(digest instanceof Uint8Array) || digest.length !== KEY_DIGEST_BYTES) {
    throw new PagepairError('BAD_FIELD', `ALLOCATE keyDigest must be ${KEY_DIGEST_BYTES} bytes`, 'keyDigest');
  }
  if (req.keyed === true) return Buffer.from(digest);
  if (req.keyed === false && digest.every((b) => b === 0)) return undefined;
  throw new PagepairError('BAD_FIELD', req.keyed === false ? 'ALLOCATE carries a key digest but is not keyed' : 'ALLOCATE keyed must be a boolean', 'keyDigest');
}
