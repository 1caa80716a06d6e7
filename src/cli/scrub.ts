// `pagepair scrub [--repair]` (issue 14, part 4), on a stopped pair: read the
// whole pool and check its redundancy (every parity row against its data,
// every mirror copy against the first healthy member's), rewriting what
// disagrees with --repair; then read every page of every allocation through
// the store, whose CRCs tell a damaged page (CHECKSUM_MISMATCH: both slots
// bad) from a torn slot beside a good one (what a crash in a page write
// leaves, harmless). A running pair cannot scrub yet (docs/pools.md): the
// command refuses when a controller looks alive, naming it.

import { Command } from 'commander';
import { setTimeout as sleep } from 'node:timers/promises';
import { isPagepairError } from '../protocol/errors.js';
import type { PageStore } from '../store/page-store.js';
import type { PoolStatus, ScrubReport } from '../store/pool.js';
import { formatBytes, formatDuration } from '../workload/units.js';
import { openOfflineStore } from './offline-store.js';
import { loadConfigs, parseRate, refuseWhileServing, sinkFor, warnIfStartedMeanwhile, withInterrupt, type OfflineJobIo } from './offline-job.js';
import { poolLines } from './pool.js';

export interface ScrubOptions {
  config?: string;
  partnerConfig?: string;
  repair?: boolean;
  rate?: string;
  force?: boolean;
  json?: boolean;
}

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

export interface ScrubResult {
  repair: boolean;
  pool: ScrubReport;
  pages: PageCheckReport;
  status: PoolStatus;
  elapsedMs: number;
  /** Controllers that looked alive, when --force went on anyway. */
  forcedPast: string[];
  /** What is wrong and left so (the exit status is 1 when any). */
  problems: string[];
}

const BAD_PAGES_SHOWN = 20;
const PAGE_READS_IN_FLIGHT = 8;

export function scrubCommand(): Command {
  return new Command('scrub')
    .description(
      "check the pair's pool: read every parity row or mirror copy and compare it with the data (--repair rewrites what disagrees: parity from the data; " +
        "a mirror's copies from the first healthy member in slot order, as its copies carry nothing to tell the right one by), " +
        'then read every page of every allocation and check its CRC (a page with both slots bad is reported, a torn slot beside a good one counted). ' +
        'For now the pair must be stopped: the command refuses when a controller looks alive. ' +
        'Exits 1 when mismatches are left unrepaired, a range or page cannot be read, or a page fails its CRC.',
    )
    .requiredOption('-c, --config <file>', "a controller's configuration (its store.pool names the pool)")
    .option('--repair', 'rewrite the redundancy that disagrees with the data')
    .option('--rate <size>', 'read at most this many bytes a second: 100MiB/s, ... (default: no limit)')
    .option('--partner-config <file>', "the partner's configuration, for its addresses (default: <partner id>.json beside --config)")
    .option('--force', 'go on even when a controller looks alive (with a loud warning): only when you know nothing serves this store')
    .option('--json', 'print the report as JSON')
    .action(async (opts: ScrubOptions) => {
      const r = await withInterrupt((signal) => runScrub(opts, { signal }));
      console.log(opts.json === true ? JSON.stringify(r, null, 2) : formatScrub(r));
      if (r.problems.length > 0) process.exitCode = 1;
    });
}

/** `scrub`: exported for tests. */
export async function runScrub(opts: ScrubOptions, io: OfflineJobIo = {}): Promise<ScrubResult> {
  const pair = loadConfigs(opts.config, opts.partnerConfig);
  const repair = opts.repair === true;
  const rateBytesPerSec = parseRate(opts.rate);
  // Look with the pool read-only (a mirror opened to be written moves its generation on at once past a member it cannot open).
  let { pool, store } = await openOfflineStore(pair.cfg, { readOnly: true });
  const started = Date.now();
  try {
    const seen = await refuseWhileServing(store, pair, opts.force === true, 'scrub', io);
    if (repair) {
      await store.close();
      ({ pool, store } = await openOfflineStore(pair.cfg, { readOnly: false }));
    }
    const sink = sinkFor(io, repair ? 'scrubbing and repairing the pool' : 'scrubbing the pool');
    let report: ScrubReport;
    try {
      report = await pool.scrub({ repair, rateBytesPerSec, onProgress: (d, t) => sink.update(d, t), ...(io.signal !== undefined ? { signal: io.signal } : {}) });
    } finally {
      sink.stop();
    }
    if (repair) await pool.sync();
    const pages = await checkPages(store, rateBytesPerSec, io);
    await warnIfStartedMeanwhile(store, seen, 'scrub', io);
    const problems: string[] = [];
    const left = report.mismatches - report.repaired;
    if (left > 0) problems.push(`${left} mismatch${left === 1 ? '' : 'es'} left${repair ? ' unrepaired' : ' (run with --repair)'}`);
    if (report.unreadable > 0) problems.push(`${report.unreadable} range${report.unreadable === 1 ? '' : 's'} of the pool could not be read`);
    if (pages.checksumMismatches > 0) problems.push(`${pages.checksumMismatches} page${pages.checksumMismatches === 1 ? '' : 's'} with both slots failing their CRC (data lost)`);
    if (pages.unreadablePages > 0) problems.push(`${pages.unreadablePages} page${pages.unreadablePages === 1 ? '' : 's'} could not be read`);
    return { repair, pool: report, pages, status: pool.status(), elapsedMs: Date.now() - started, forcedPast: seen.alive.map((s) => s.controller), problems };
  } finally {
    await store.close();
  }
}

/** Read every page of every allocation through the store (readPage checks the CRCs), rateBytesPerSec at most. */
export async function checkPages(store: PageStore, rateBytesPerSec: number, io: OfflineJobIo = {}): Promise<PageCheckReport> {
  const table = await store.readTable();
  const r: PageCheckReport = { allocations: table.records.length, pagesChecked: 0, bytesChecked: 0, checksumMismatches: 0, tornSlots: 0, unreadablePages: 0, badPages: [] };
  const jobs = table.records.flatMap((rec) => Array.from({ length: rec.pageCount }, (_, page) => ({ rec, page })));
  const totalBytes = table.records.reduce((sum, rec) => sum + rec.pageCount * rec.pageSizeBytes, 0);
  const sink = sinkFor(io, 'checking page CRCs');
  const started = Date.now();
  let next = 0;
  const bad = (what: string): void => {
    if (r.badPages.length < BAD_PAGES_SHOWN) r.badPages.push(what);
  };
  const worker = async (): Promise<void> => {
    while (next < jobs.length) {
      io.signal?.throwIfAborted();
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
      sink.update(r.bytesChecked, totalBytes);
      if (rateBytesPerSec > 0) {
        const aheadMs = (r.bytesChecked * 1000) / rateBytesPerSec - (Date.now() - started);
        if (aheadMs > 0) await sleep(aheadMs);
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: PAGE_READS_IN_FLIGHT }, worker));
  } finally {
    sink.stop();
  }
  return r;
}

function formatScrub(r: ScrubResult): string {
  const { bytesChecked, mismatches, repaired, unreadable } = r.pool;
  const p = r.pages;
  const rows: [string, string][] = [
    ['redundancy', `${formatBytes(bytesChecked)} checked: ${mismatches} mismatch${mismatches === 1 ? '' : 'es'}, ${repaired} repaired, ${unreadable} unreadable`],
    ['pages', `${p.pagesChecked} pages (${formatBytes(p.bytesChecked)}) of ${p.allocations} allocation${p.allocations === 1 ? '' : 's'}: ${p.checksumMismatches} failing their CRC, ${p.unreadablePages} unreadable, ${p.tornSlots} torn slot${p.tornSlots === 1 ? '' : 's'} beside a good one`],
    ['took', formatDuration(r.elapsedMs)],
    ...poolLines(r.status),
  ];
  const lines = rows.map(([k, v]) => `${k.padEnd(13)} ${v}`);
  for (const b of p.badPages) lines.push(`  bad page: ${b}`);
  lines.push(r.problems.length === 0 ? 'scrub: clean' : `scrub: ${r.problems.join('; ')}`);
  return lines.join('\n');
}
