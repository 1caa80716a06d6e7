// Every page of every allocation read back through the store, whose CRCs
// tell a damaged page (CHECKSUM_MISMATCH: both slots bad) from a torn slot
// beside a good one (what a crash in a page write leaves, harmless): the
// second half of a scrub, run by `pagepair scrub` on a stopped pair and by
// a controller's pool job while the pair serves. Under a serving pair a
// page may be written while it is read: its other slot then answers, and it
// counts as torn, not as lost.

import { setTimeout as sleep } from 'node:timers/promises';
import { isPagepairError } from '../protocol/errors.js';
import type { PageStore } from '../store/page-store.js';

export interface PageCheckReport {
  allocations: number;
  pagesChecked: number;
  bytesChecked: number;
  /** Pages neither of whose slots is valid: their data is lost (CHECKSUM_MISMATCH). */
  checksumMismatches: number;
  /** Pages read from one slot because the other was damaged (a torn write, most likely): not an error. */
  tornSlots: number;
  /** Pages whose read failed otherwise (an I/O error through the pool). */
  unreadablePages: number;
  /** The first few bad pages, in words. */
  badPages: string[];
}

export interface PageCheckOptions {
  /** At most this many bytes a second (0: no limit). */
  rateBytesPerSec: number;
  onProgress?(doneBytes: number, totalBytes: number): void;
  signal?: AbortSignal;
}

const BAD_PAGES_SHOWN = 20;
const PAGE_READS_IN_FLIGHT = 8;

/** Bytes the page check of `store` will read: every page of every allocation. */
export async function pageCheckBytes(store: PageStore): Promise<number> {
  const table = await store.readTable();
  return table.records.reduce((sum, rec) => sum + rec.pageCount * rec.pageSizeBytes, 0);
}

/** Read every page of every allocation through the store (readPage checks the CRCs), rateBytesPerSec at most. */
export async function checkPages(store: PageStore, opts: PageCheckOptions): Promise<PageCheckReport> {
  const table = await store.readTable();
  const r: PageCheckReport = { allocations: table.records.length, pagesChecked: 0, bytesChecked: 0, checksumMismatches: 0, tornSlots: 0, unreadablePages: 0, badPages: [] };
  const jobs = table.records.flatMap((rec) => Array.from({ length: rec.pageCount }, (_, page) => ({ rec, page })));
  const totalBytes = table.records.reduce((sum, rec) => sum + rec.pageCount * rec.pageSizeBytes, 0);
  const started = Date.now();
  let next = 0;
  const bad = (what: string): void => {
    if (r.badPages.length < BAD_PAGES_SHOWN) r.badPages.push(what);
  };
  const worker = async (): Promise<void> => {
    while (next < jobs.length) {
      opts.signal?.throwIfAborted();
      const { rec, page } = jobs[next++]!;
      try {
        const got = await store.readPage({ guid: rec.guid, dataOffset: rec.dataOffset, pageSizeBytes: rec.pageSizeBytes }, page);
        if (got.tornSlot !== undefined) r.tornSlots++;
      } catch (err) {
        if (isPagepairError(err, 'CHECKSUM_MISMATCH')) {
          r.checksumMismatches++;
          bad(`${rec.name || rec.guid} page ${page}: ${err.message}`);
        } else {
          r.unreadablePages++;
          bad(`${rec.name || rec.guid} page ${page}: unreadable: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
      r.pagesChecked++;
      r.bytesChecked += rec.pageSizeBytes;
      opts.onProgress?.(r.bytesChecked, totalBytes);
      if (opts.rateBytesPerSec > 0) {
        const aheadMs = (r.bytesChecked * 1000) / opts.rateBytesPerSec - (Date.now() - started);
        if (aheadMs > 0) await sleep(aheadMs);
      }
    }
  };
  await Promise.all(Array.from({ length: PAGE_READS_IN_FLIGHT }, worker));
  return r;
}
