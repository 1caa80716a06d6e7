// One run of `pagepair verify`, apart from how it reaches the pair: walk each
// allocation in ranges asking a controller to compare both copies by header
// (C_VERIFY), ask again after a pause about pages that were busy or differed
// (a write in flight settles), then read the pages still differing through A
// and through B and compare the bytes. With repair, each differing page is
// read through the controller holding the good copy and written back through
// it: a normal mirrored write, which gives both copies the same new version.
//
// The run talks to the pair only through VerifyTarget, so the simulator can
// drive it on virtual time and the command on real sockets.

import type { VerifiedPage } from '../protocol/messages.js';
import { VerifyVerdict } from '../protocol/messages.js';
import { chooseGoodCopy, type GoodCopy } from '../core/verify.js';
import { isPagepairError } from '../protocol/errors.js';

export interface VerifyTarget {
  /** C_VERIFY of pages [firstPage, firstPage+pageCount) through either controller. */
  verify(guid: string, firstPage: number, pageCount: number): Promise<{ pagesChecked: number; pages: VerifiedPage[] }>;
  /** A client read through controller `via` (1 = A, 2 = B). */
  read(via: 1 | 2, guid: string, offset: number, length: number): Promise<Buffer>;
  /** C_REWRITE through controller `via`: its copy of the page written again as a new version, mirrored. */
  rewrite(via: 1 | 2, guid: string, page: number): Promise<unknown>;
  sleep(ms: number): Promise<void>;
  nowMs(): number;
}

export interface VerifyAllocation {
  guid: string;
  name: string;
  pageSizeBytes: number;
  pageCount: number;
}

export interface VerifyProgress {
  pagesChecked: number;
  pagesTotal: number;
  pagesPerSec: number;
  /** Pages listed as differing or busy so far, before re-checks. */
  suspects: number;
}

export interface VerifyOptions {
  repair: boolean;
  /** Pages per C_VERIFY (at most the controllers' headersPerMessageMax). */
  rangePages: number;
  /** Times a busy or differing page is asked about again before it is judged. */
  rechecks: number;
  recheckPauseMs: number;
  progress?: (p: VerifyProgress) => void;
}

/** A page whose copies read differently through A and B. */
export interface PageFinding {
  volume: string;
  guid: string;
  page: number;
  /** Both controllers' headers (and the store's) as the last C_VERIFY gave them. */
  header: VerifiedPage;
  /** The first byte of the page at which the reads through A and B differ. */
  firstDifferentByte: number;
  /** With repair: the copy kept, and whether the page reads the same through both afterwards. */
  good?: GoodCopy;
  repaired?: boolean;
  repairError?: string;
}

/** A page still busy after every re-check: writes kept landing on it, so it was not judged. */
export interface UnsettledPage {
  volume: string;
  guid: string;
  page: number;
}

export interface VerifyResult {
  volumes: number;
  /** Allocations released while the run walked them (skipped). */
  released: string[];
  pagesTotal: number;
  pagesChecked: number;
  elapsedMs: number;
  /** Differing pages, confirmed byte by byte. */
  mismatches: PageFinding[];
  unsettled: UnsettledPage[];
  /** With repair: pages made equal. */
  repaired: number;
  /** Differing pages left (not repaired, or a repair that did not take). */
  remaining: number;
}

type Suspect = { alloc: VerifyAllocation; header: VerifiedPage };

export async function runVerify(target: VerifyTarget, allocs: readonly VerifyAllocation[], opts: VerifyOptions): Promise<VerifyResult> {
  const startMs = target.nowMs();
  const pagesTotal = allocs.reduce((n, a) => n + a.pageCount, 0);
  let pagesChecked = 0;
  let suspects: Suspect[] = [];
  const report = (): void => {
    const secs = Math.max(target.nowMs() - startMs, 1) / 1000;
    opts.progress?.({ pagesChecked, pagesTotal, pagesPerSec: Math.round(pagesChecked / secs), suspects: suspects.length });
  };
  const released: VerifyAllocation[] = [];
  for (const alloc of allocs) {
    for (let first = 0; first < alloc.pageCount; first += opts.rangePages) {
      const count = Math.min(opts.rangePages, alloc.pageCount - first);
      let r: { pagesChecked: number; pages: VerifiedPage[] };
      try {
        r = await target.verify(alloc.guid, first, count);
      } catch (err) {
        // Released while we walked it: nothing of it is left to differ.
        if (!isPagepairError(err, 'UNKNOWN_GUID')) throw err;
        released.push(alloc);
        suspects = suspects.filter((s) => s.alloc !== alloc);
        break;
      }
      pagesChecked += r.pagesChecked;
      for (const header of r.pages) suspects.push({ alloc, header });
      report();
    }
  }

  suspects = await recheck(target, suspects, opts);
  const unsettled: UnsettledPage[] = [];
  const mismatches: PageFinding[] = [];
  for (const s of suspects) {
    if (s.header.verdict === VerifyVerdict.BUSY) {
      unsettled.push({ volume: s.alloc.name, guid: s.alloc.guid, page: s.header.page });
      continue;
    }
    const diff = await firstDifference(target, s.alloc, s.header.page).catch((err: unknown) => {
      if (isPagepairError(err, 'UNKNOWN_GUID')) return -1;
      throw err;
    });
    // Equal bytes: a write settled between the last look and the reads.
    if (diff >= 0) mismatches.push({ volume: s.alloc.name, guid: s.alloc.guid, page: s.header.page, header: s.header, firstDifferentByte: diff });
  }

  let repaired = 0;
  if (opts.repair && mismatches.length > 0) {
    for (const m of mismatches) {
      const good = chooseGoodCopy(m.header);
      m.good = good;
      try {
        // The controller holding the good copy writes it again as a new
        // version, taking the bytes as the write is applied: a client write
        // that landed since the last look is what both keep, not undone by
        // bytes read before it.
        await target.rewrite(good.from, m.guid, m.page);
      } catch (err) {
        m.repairError = err instanceof Error ? err.message : String(err);
        m.repaired = false;
      }
    }
    // Verify the repaired pages again, headers then bytes.
    const again = await recheck(
      target,
      mismatches.filter((m) => m.repaired === undefined).map((m) => ({ alloc: allocOf(allocs, m.guid), header: { ...m.header, verdict: VerifyVerdict.BUSY } })),
      opts,
    );
    const still = new Set(again.map((s) => `${s.alloc.guid}:${s.header.page}`));
    for (const m of mismatches) {
      if (m.repaired !== undefined) continue;
      m.repaired = !still.has(`${m.guid}:${m.page}`) && (await firstDifference(target, allocOf(allocs, m.guid), m.page)) < 0;
      if (m.repaired) repaired++;
    }
  }
  return {
    volumes: allocs.length,
    released: released.map((a) => a.name),
    pagesTotal,
    pagesChecked,
    elapsedMs: target.nowMs() - startMs,
    mismatches,
    unsettled,
    repaired,
    remaining: mismatches.length - repaired,
  };
}

function allocOf(allocs: readonly VerifyAllocation[], guid: string): VerifyAllocation {
  const a = allocs.find((x) => x.guid === guid);
  if (a === undefined) throw new Error(`verify: no allocation ${guid}`);
  return a;
}

/**
 * Asks about each suspect page again, up to opts.rechecks times (at least once) after a
 * pause, keeping the ones still listed (with their newest headers). A page
 * a recheck no longer lists matched.
 */
async function recheck(target: VerifyTarget, suspects: Suspect[], opts: VerifyOptions): Promise<Suspect[]> {
  let left = suspects;
  for (let round = 0; round < Math.max(1, opts.rechecks) && left.length > 0; round++) {
    await target.sleep(opts.recheckPauseMs);
    const next: Suspect[] = [];
    for (const [alloc, first, count] of pageRuns(left, opts.rangePages)) {
      const wanted = new Set(left.filter((s) => s.alloc === alloc).map((s) => s.header.page));
      const r = await target.verify(alloc.guid, first, count).catch((err: unknown) => {
        if (isPagepairError(err, 'UNKNOWN_GUID')) return { pagesChecked: 0, pages: [] };
        throw err;
      });
      for (const header of r.pages) if (wanted.has(header.page)) next.push({ alloc, header });
    }
    left = next;
  }
  return left;
}

/** Runs of consecutive suspect pages per allocation, each at most maxRun pages. */
function pageRuns(suspects: Suspect[], maxRun: number): [VerifyAllocation, number, number][] {
  const sorted = [...suspects].sort((x, y) => (x.alloc.guid === y.alloc.guid ? x.header.page - y.header.page : x.alloc.guid < y.alloc.guid ? -1 : 1));
  const out: [VerifyAllocation, number, number][] = [];
  for (const s of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && last[0] === s.alloc && last[1] + last[2] === s.header.page && last[2] < maxRun) last[2]++;
    else out.push([s.alloc, s.header.page, 1]);
  }
  return out;
}

/** The first offset at which the page reads differently through A and through B; -1 when the reads are equal. */
async function firstDifference(target: VerifyTarget, alloc: VerifyAllocation, page: number): Promise<number> {
  const offset = page * alloc.pageSizeBytes;
  const [a, b] = await Promise.all([target.read(1, alloc.guid, offset, alloc.pageSizeBytes), target.read(2, alloc.guid, offset, alloc.pageSizeBytes)]);
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}
