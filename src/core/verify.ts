// Online verify: do both controllers' copies of a page read the same? This
// file holds the pure judgement; the controller gathers the headers (its own,
// the partner's by READ_HEADER, the store's where only one side caches the
// page) and the `pagepair verify` command decides which copy a repair keeps.
//
// A client reading a page through a controller gets that controller's cached
// copy, or the store's copy when the page is not cached there. So two copies
// agree when:
// - both sides cache the page, at the same version with the same CRC;
// - one side caches it, and its copy is the store's (same version and CRC);
// - neither caches it: both read the store.

import { PageState, VerifyVerdict, type PageHeaderInfo, type PageStateCode, type VerifiedPage, type VerifyVerdictCode } from '../protocol/messages.js';
import type { CachePage } from './page-cache.js';

/** What a verify needs of one side's copy of a page. ABSENT: not cached (version and crc 0). */
export interface CopyHeader {
  version: number;
  crc: number;
  state: PageStateCode;
}

export interface StoreHeader {
  version: number;
  crc: number;
}

/** match, mismatch, or: only one side caches the page, so the store's copy decides. */
export type CopyJudgement = 'match' | 'mismatch' | 'needs-store';

/** The header READ_HEADER reports for a page, from its cache entry (undefined: not cached). */
export function pageHeader(cp: CachePage | undefined, page: number): PageHeaderInfo {
  if (cp === undefined) return { page, version: 0, crc: 0, state: PageState.ABSENT, epoch: 0 };
  const state = cp.destagingVersion !== 0 ? PageState.DESTAGING : cp.dirty ? PageState.DIRTY : PageState.CLEAN;
  return { page, version: cp.version, crc: cp.crc, state, epoch: cp.epoch };
}

export function isCached(h: CopyHeader): boolean {
  return h.state !== PageState.ABSENT;
}

/** The same contents: both absent, or both cached at one version with one CRC. A state change alone (dirty to clean) is not a change. */
export function sameCopy(x: CopyHeader, y: CopyHeader): boolean {
  if (isCached(x) !== isCached(y)) return false;
  return !isCached(x) || (x.version === y.version && x.crc === y.crc);
}

/**
 * Whether reads through A and through B return the same bytes, judged from
 * headers. `store` is the store's copy's header, when it was read (only
 * needed where exactly one side caches the page).
 */
export function compareCopies(a: CopyHeader, b: CopyHeader, store: StoreHeader | null): CopyJudgement {
  const aCached = isCached(a);
  const bCached = isCached(b);
  if (!aCached && !bCached) return 'match';
  if (aCached && bCached) return a.version === b.version && a.crc === b.crc ? 'match' : 'mismatch';
  if (store === null) return 'needs-store';
  const cached = aCached ? a : b;
  return cached.version === store.version && cached.crc === store.crc ? 'match' : 'mismatch';
}

/**
 * Whether the store's copy is needed: to judge a page only one side caches,
 * or to tell which of two clean copies at one version is the store's (a
 * clean copy claims to be what the store holds).
 */
export function storeDecides(a: CopyHeader, b: CopyHeader): boolean {
  const judgement = compareCopies(a, b, null);
  if (judgement === 'needs-store') return true;
  return judgement === 'mismatch' && a.state === PageState.CLEAN && b.state === PageState.CLEAN && a.version === b.version;
}

/** What a verify of a range gathered, for listDifferences. Arrays are indexed by page - firstPage. */
export interface GatheredHeaders {
  firstPage: number;
  selfId: 1 | 2;
  ours: readonly PageHeaderInfo[];
  theirs: readonly PageHeaderInfo[];
  /** 1: a write was in flight on the page while it was compared. */
  busy: Uint8Array;
  /** The store's copy where it was read; null: it could not be read. */
  stores: ReadonlyMap<number, StoreHeader | null>;
  /** Owner per page of the allocation. */
  owner: Uint8Array;
}

/** The pages of a range whose copies differ or were busy, with both sides' headers (A first), the store's and the owner. */
export function listDifferences(g: GatheredHeaders): VerifiedPage[] {
  const out: VerifiedPage[] = [];
  for (let i = 0; i < g.ours.length; i++) {
    const store = g.stores.get(i);
    let verdict: VerifyVerdictCode;
    if (g.busy[i] === 1) verdict = VerifyVerdict.BUSY;
    // A store copy that cannot be read is not what the cached copy holds.
    else if (store === null) verdict = VerifyVerdict.MISMATCH;
    else if (compareCopies(g.ours[i]!, g.theirs[i]!, store ?? null) !== 'match') verdict = VerifyVerdict.MISMATCH;
    else continue;
    const [a, b] = g.selfId === 1 ? [g.ours[i]!, g.theirs[i]!] : [g.theirs[i]!, g.ours[i]!];
    out.push({
      page: g.firstPage + i,
      verdict,
      owner: g.owner[g.firstPage + i]!,
      aVersion: a.version,
      aCrc: a.crc,
      aState: a.state,
      bVersion: b.version,
      bCrc: b.crc,
      bState: b.state,
      storeVersion: store === undefined || store === null ? -1 : store.version,
      storeCrc: store === undefined || store === null ? 0 : store.crc,
    });
  }
  return out;
}

/** Which controller to read the good copy through, and why it is the good one. */
export interface GoodCopy {
  /** 1 = A, 2 = B. */
  from: 1 | 2;
  why: string;
}

/**
 * The copy a repair keeps: the one holding the later acknowledged write, as
 * the higher version says. On a tie, the page owner's copy; except where
 * the store can tell: a clean cached copy claims to be what the store holds,
 * so against the store's copy at its own version the store's is kept (read
 * through the controller that does not cache the page), and of two clean
 * copies at one version the one equal to the store's.
 */
export function chooseGoodCopy(p: VerifiedPage): GoodCopy {
  const a: CopyHeader = { version: p.aVersion, crc: p.aCrc, state: p.aState };
  const b: CopyHeader = { version: p.bVersion, crc: p.bCrc, state: p.bState };
  const owner: 1 | 2 = p.owner === 2 ? 2 : 1;
  if (isCached(a) && isCached(b)) {
    if (a.version !== b.version) return a.version > b.version ? { from: 1, why: 'A holds the higher version' } : { from: 2, why: 'B holds the higher version' };
    if (a.state === PageState.CLEAN && b.state === PageState.CLEAN && p.storeVersion === a.version && (a.crc === p.storeCrc) !== (b.crc === p.storeCrc)) {
      return a.crc === p.storeCrc ? { from: 1, why: "both clean at one version; A's copy is the store's" } : { from: 2, why: "both clean at one version; B's copy is the store's" };
    }
    return { from: owner, why: `same version on both; ${owner === 1 ? 'A' : 'B'} owns the page` };
  }
  // One side caches it; the other reads the store's copy.
  const cachedSide: 1 | 2 = isCached(a) ? 1 : 2;
  const storeSide: 1 | 2 = cachedSide === 1 ? 2 : 1;
  const cached = cachedSide === 1 ? a : b;
  const name = (id: 1 | 2): string => (id === 1 ? 'A' : 'B');
  if (p.storeVersion < 0) return { from: owner, why: `the store's copy was not read; ${name(owner)} owns the page` };
  if (cached.version > p.storeVersion) return { from: cachedSide, why: `${name(cachedSide)}'s cached copy is newer than the store's` };
  if (cached.version < p.storeVersion) return { from: storeSide, why: `the store's copy (read through ${name(storeSide)}) is newer than ${name(cachedSide)}'s cached one` };
  if (cached.state === PageState.CLEAN) return { from: storeSide, why: `${name(cachedSide)}'s clean copy should equal the store's at the same version; the store's is kept` };
  return { from: owner, why: `same version as the store's; ${name(owner)} owns the page` };
}
