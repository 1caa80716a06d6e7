// `pagepair scrub [--repair]` (issue 14, part 4): read the whole pool and check its redundancy (every parity row against its data,
// every mirror copy against the first healthy member's), rewriting what
// disagrees with --repair; then read every page of every allocation through
// the store, whose CRCs tell a damaged page (CHECKSUM_MISMATCH: both slots
// bad) from a torn slot beside a good one (what a crash in a page write
// leaves, harmless). While the pair serves, a controller that answers runs
// the scrub itself (C_POOL_JOB) and the command follows it (online-job.ts);
// with the pair stopped it runs here, and refuses when a controller that did
// not answer still looks alive, naming it.

import { Command } from 'commander';
import type { PageStore } from '../store/page-store.js';
import { checkPages, type PageCheckReport } from '../runtime/page-check.js';
import type { PoolStatus, ScrubReport } from '../store/pool.js';
import { formatBytes, formatDuration } from '../workload/units.js';
import { PagepairError } from '../protocol/errors.js';
import { configuredPool, openOfflineStore } from './offline-store.js';
import { followOnlineJob, startOnlineJob } from './online-job.js';
import { loadConfigs, parseRate, refuseWhileServing, sinkFor, warnIfStartedMeanwhile, withInterrupt, type OfflineJobIo } from './offline-job.js';
import { poolLines } from './pool.js';

export type { PageCheckReport };

export interface ScrubOptions {
  config?: string;
  partnerConfig?: string;
  repair?: boolean;
  rate?: string;
  force?: boolean;
  json?: boolean;
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
  /** The pair served: a controller ran the scrub (C_POOL_JOB). */
  online?: boolean;
  /** Online: the controller that ran it (A or B), and its job id. */
  controller?: string;
  jobId?: number;
}

export function scrubCommand(): Command {
  return new Command('scrub')
    .description(
      "check the pair's pool: read every parity row or mirror copy and compare it with the data (--repair rewrites what disagrees: parity from the data; " +
        "a mirror's copies from the first healthy member in slot order, as its copies carry nothing to tell the right one by), " +
        'then read every page of every allocation and check its CRC (a page with both slots bad is reported, a torn slot beside a good one counted). ' +
        'While the pair serves, the controller of --config (or its partner, when that one does not answer) runs the scrub and the command follows it in its status; Ctrl-C then stops following only. ' +
        'With the pair stopped the command scrubs itself, and refuses when a controller that did not answer still looks alive. ' +
        'Exits 1 when mismatches are left unrepaired, a range or page cannot be read, or a page fails its CRC.',
    )
    .requiredOption('-c, --config <file>', "a controller's configuration (its store.pool names the pool)")
    .option('--repair', 'rewrite the redundancy that disagrees with the data')
    .option('--rate <size>', 'read at most this many bytes a second: 100MiB/s, ... (default: no limit)')
    .option('--partner-config <file>', "the partner's configuration, for its addresses (default: <partner id>.json beside --config)")
    .option('--force', 'with no controller answering, go on even when one looks alive (with a loud warning): only when you know nothing serves this store')
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
  configuredPool(pair.cfg);
  // A controller that serves runs the scrub itself.
  const online = await startOnlineJob(pair, { kind: 'scrub', repair, rateBytesPerSec }, io);
  if (online !== null) {
    const end = await followOnlineJob(online, pair, io);
    if (end.report.kind !== 'scrub') throw new PagepairError('INTERNAL', `controller ${online.controller} answered a scrub with a ${end.report.kind} report`);
    return {
      repair,
      pool: end.report.pool,
      pages: end.report.pages,
      status: end.pool,
      elapsedMs: (end.job.endedAtMs ?? end.job.startedAtMs) - end.job.startedAtMs,
      forcedPast: [],
      problems: scrubProblems(end.report.pool, end.report.pages, repair),
      online: true,
      controller: online.controller,
      jobId: online.jobId,
    };
  }
  // The pair is stopped. Look with the pool read-only (a mirror opened to be written moves its generation on at once past a member it cannot open).
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
    const pages = await checkPagesShown(store, rateBytesPerSec, io);
    await warnIfStartedMeanwhile(store, seen, 'scrub', io);
    const problems = scrubProblems(report, pages, repair);
    return { repair, pool: report, pages, status: pool.status(), elapsedMs: Date.now() - started, forcedPast: seen.alive.map((s) => s.controller), problems };
  } finally {
    await store.close();
  }
}

/** What a scrub found wrong and left so, in words (the exit status is 1 when any). */
function scrubProblems(report: ScrubReport, pages: PageCheckReport, repair: boolean): string[] {
  const problems: string[] = [];
  const left = report.mismatches - report.repaired;
  if (left > 0) problems.push(`${left} mismatch${left === 1 ? '' : 'es'} left${repair ? ' unrepaired' : ' (run with --repair)'}`);
  if (report.unreadable > 0) problems.push(`${report.unreadable} range${report.unreadable === 1 ? '' : 's'} of the pool could not be read`);
  if (pages.checksumMismatches > 0) problems.push(`${pages.checksumMismatches} page${pages.checksumMismatches === 1 ? '' : 's'} with both slots failing their CRC (data lost)`);
  if (pages.unreadablePages > 0) problems.push(`${pages.unreadablePages} page${pages.unreadablePages === 1 ? '' : 's'} could not be read`);
  return problems;
}

/** Every page's CRC checked through the store, with a progress sink. */
async function checkPagesShown(store: PageStore, rateBytesPerSec: number, io: OfflineJobIo): Promise<PageCheckReport> {
  const sink = sinkFor(io, 'checking page CRCs');
  try {
    return await checkPages(store, { rateBytesPerSec, onProgress: (d, t) => sink.update(d, t), ...(io.signal !== undefined ? { signal: io.signal } : {}) });
  } finally {
    sink.stop();
  }
}

function formatScrub(r: ScrubResult): string {
  const { bytesChecked, mismatches, repaired, unreadable } = r.pool;
  const p = r.pages;
  const rows: [string, string][] = [
    ['redundancy', `${formatBytes(bytesChecked)} checked: ${mismatches} mismatch${mismatches === 1 ? '' : 'es'}, ${repaired} repaired, ${unreadable} unreadable`],
    ['pages', `${p.pagesChecked} pages (${formatBytes(p.bytesChecked)}) of ${p.allocations} allocation${p.allocations === 1 ? '' : 's'}: ${p.checksumMismatches} failing their CRC, ${p.unreadablePages} unreadable, ${p.tornSlots} torn slot${p.tornSlots === 1 ? '' : 's'} beside a good one`],
    ['took', `${formatDuration(r.elapsedMs)}${r.online === true ? `, by controller ${r.controller ?? '?'} while the pair served (pool job ${r.jobId ?? '?'})` : ''}`],
    ...poolLines(r.status),
  ];
  const lines = rows.map(([k, v]) => `${k.padEnd(13)} ${v}`);
  for (const b of p.badPages) lines.push(`  bad page: ${b}`);
  lines.push(r.problems.length === 0 ? 'scrub: clean' : `scrub: ${r.problems.join('; ')}`);
  return lines.join('\n');
}
