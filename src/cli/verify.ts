// `pagepair verify`: do both controllers' copies of every page read the same,
// while I/O goes on? Connects to A and to B, runs verify-run.ts over every
// allocation (or one volume), prints progress, the pages that differ and a
// summary, optionally repairs them, and tells both controllers what it found
// so their status shows when the copies were last verified.

import { Command } from 'commander';
import { PagepairClient, controllerAddresses } from '../client/index.js';
import { PagepairError } from '../protocol/errors.js';
import { PageState, type VerifiedPage } from '../protocol/messages.js';
import { loadConfig, type ControllerConfig } from '../runtime/config.js';
import { CLIENT_TLS_HELP, clientView } from './status.js';
import { parsePositiveInt } from '../workload/units.js';
import { runVerify, type PageFinding, type VerifyAllocation, type VerifyProgress, type VerifyResult, type VerifyTarget } from './verify-run.js';

interface VerifyCliOptions {
  config: string;
  volume?: string;
  repair?: boolean;
  json?: boolean;
  rechecks: string;
  pauseMs: string;
  range?: string;
  timeout: string;
  tls?: boolean;
}

/** The `verify` command, ready for program.addCommand(verifyCommand()). */
export function verifyCommand(): Command {
  return new Command('verify')
    .description(
      "compare both controllers' copies of every page while I/O goes on (headers first, then the bytes of pages that differ); " +
        'lists the pages that read differently through A and B and exits non-zero when any remain',
    )
    .option('-c, --config <file>', "a controller's configuration (JSON); both controllers are reached from it", 'controllers/a.json')
    .option('--volume <name>', 'verify this volume (allocation) only')
    .option(
      '--repair',
      'make each differing page equal from the copy holding the later acknowledged write (higher version; on a tie the owner\'s copy, or the store\'s where a clean cached copy faces it): ' +
        'read through that controller, written back through it as a normal mirrored write; then verified again',
    )
    .option('--json', 'print the result as JSON (progress goes to standard error)')
    .option('--rechecks <n>', 'times a busy or differing page is asked about again, after a pause, before it is judged', '3')
    .option('--pause-ms <ms>', 'the pause before each re-check', '200')
    .option('--range <pages>', 'pages compared per request (default: limits.headersPerMessageMax of the configuration)')
    .option('--timeout <ms>', 'how long to wait for a controller', '10000')
    .option('--tls', CLIENT_TLS_HELP)
    .action(async (opts: VerifyCliOptions) => {
      const result = await verifyPair(opts);
      process.exitCode = result.remaining > 0 ? 1 : 0;
    });
}

/** What runVerify needs, over client connections to A and B: C_VERIFY through A, reads and rewrites through either. */
export function clientsTarget(a: PagepairClient, b: PagepairClient): VerifyTarget {
  const via = (id: 1 | 2): PagepairClient => (id === 1 ? a : b);
  return {
    verify: (guid, first, count) => a.verify(guid, first, count),
    read: (id, guid, offset, length) => via(id).read(guid, offset, length),
    rewrite: (id, guid, page) => via(id).rewrite(guid, page),
    sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
    nowMs: () => performance.now(),
  };
}

async function verifyPair(opts: VerifyCliOptions): Promise<VerifyResult> {
  const cfg = clientView(loadConfig(opts.config), opts.tls);
  if (cfg.partner === null) throw new PagepairError('BAD_CONFIG', `${cfg.sourceName} names no partner: verify compares the copies of a mirrored pair`);
  const timeoutMs = parsePositiveInt(opts.timeout, 'timeout', 600_000);
  const rangePages = opts.range === undefined ? cfg.limits.headersPerMessageMax : parsePositiveInt(opts.range, 'range', cfg.limits.headersPerMessageMax);
  const rechecks = parsePositiveInt(opts.rechecks, 'rechecks', 100);
  const recheckPauseMs = parsePositiveInt(opts.pauseMs, 'pause-ms', 60_000);
  const json = opts.json === true;
  const print = json ? (line: string) => console.error(line) : (line: string) => console.log(line);

  const clients = await connectBoth(cfg, timeoutMs);
  try {
    const [a, b] = clients;
    const all = await a.list();
    let allocs: VerifyAllocation[] = all.map((x) => ({ guid: x.guid, name: x.name, pageSizeBytes: x.pageSizeBytes, pageCount: x.pageCount }));
    if (opts.volume !== undefined) {
      allocs = allocs.filter((x) => x.name === opts.volume);
      if (allocs.length === 0) throw new PagepairError('BAD_FIELD', `no volume named "${opts.volume}" (see pagepair volume list)`, 'volume');
    }
    const total = allocs.reduce((n, x) => n + x.pageCount, 0);
    print(`verify: ${allocs.length} allocation${allocs.length === 1 ? '' : 's'}, ${total} pages, ${rangePages} pages per request${opts.repair === true ? ', repairing' : ''}`);
    let lastPrintMs = 0;
    const progress = (p: VerifyProgress): void => {
      const now = Date.now();
      if (now - lastPrintMs < 1000 && p.pagesChecked < p.pagesTotal) return;
      lastPrintMs = now;
      const pct = p.pagesTotal === 0 ? 100 : Math.floor((p.pagesChecked * 100) / p.pagesTotal);
      print(`  ${p.pagesChecked} / ${p.pagesTotal} pages checked (${pct}%), ${p.pagesPerSec} pages/s, ${p.suspects} to look at again`);
    };
    const result = await runVerify(clientsTarget(a, b), allocs, { repair: opts.repair === true, rangePages, rechecks, recheckPauseMs, progress });
    const report = { pagesChecked: result.pagesChecked, mismatches: result.mismatches.length, repaired: result.repaired, unsettled: result.unsettled.length };
    await Promise.all(clients.map((c) => c.reportVerify(report).catch((err: unknown) => print(`note: could not record the result at a controller: ${String(err)}`))));
    if (json) console.log(JSON.stringify(result, null, 2));
    else console.log(formatResult(result, opts.repair === true));
    return result;
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
  }
}

async function connectBoth(cfg: ControllerConfig, timeoutMs: number): Promise<[PagepairClient, PagepairClient]> {
  const addrs = controllerAddresses({
    id: cfg.idLetter,
    clientToken: cfg.clientToken,
    listen: cfg.listen,
    partner: { id: cfg.partner!.idLetter, client: cfg.partner!.client },
    tls: cfg.tls,
  }).all;
  // A first: C_VERIFY goes to A, and reads "through A" and "through B" go to the right one.
  const byLetter = [...addrs].sort((x, y) => x.id.localeCompare(y.id));
  const connected = await Promise.allSettled(byLetter.map((ad) => PagepairClient.connect({ host: ad.host, port: ad.port, token: ad.token, tls: ad.tls === true, name: 'pagepair-verify', timeoutMs })));
  const ok = connected.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = connected.findIndex((r) => r.status === 'rejected');
  if (failed >= 0) {
    await Promise.all(ok.map((c) => c.close().catch(() => undefined)));
    const r = connected[failed] as PromiseRejectedResult;
    const ad = byLetter[failed]!;
    throw new PagepairError('NOT_ACTIVE', `controller ${ad.id} at ws://${ad.host}:${ad.port} did not answer: ${r.reason instanceof Error ? r.reason.message : String(r.reason)}; verify needs both`);
  }
  return [ok[0]!, ok[1]!];
}

const STATE_NAMES: Record<number, string> = {
  [PageState.CLEAN]: 'clean',
  [PageState.DIRTY]: 'dirty',
  [PageState.STAGING]: 'staging',
  [PageState.DESTAGING]: 'destaging',
  [PageState.ABSENT]: 'not cached',
};

function copyText(version: number, crc: number, state: number): string {
  if (state === PageState.ABSENT) return 'not cached';
  return `v${version} crc ${(crc >>> 0).toString(16).padStart(8, '0')} ${STATE_NAMES[state] ?? `state-${state}`}`;
}

/** One line per differing page: both copies, the store's where it was read, the owner, the first differing byte. */
export function formatFinding(f: PageFinding): string {
  const h: VerifiedPage = f.header;
  const store = h.storeVersion < 0 ? '' : `; store v${h.storeVersion} crc ${(h.storeCrc >>> 0).toString(16).padStart(8, '0')}`;
  let line = `  ${f.volume} page ${f.page}: A ${copyText(h.aVersion, h.aCrc, h.aState)}; B ${copyText(h.bVersion, h.bCrc, h.bState)}${store}; owner ${h.owner === 1 ? 'A' : 'B'}; first differing byte ${f.firstDifferentByte}`;
  if (f.good !== undefined) {
    line += `\n    repair: kept ${f.good.from === 1 ? 'A' : 'B'}'s copy (${f.good.why}): ${f.repaired === true ? 'repaired' : `NOT repaired${f.repairError !== undefined ? ` (${f.repairError})` : ''}`}`;
  }
  return line;
}

export function formatResult(r: VerifyResult, repair: boolean): string {
  const lines: string[] = [];
  if (r.mismatches.length > 0) {
    lines.push(`pages whose copies differ (${r.mismatches.length}):`);
    for (const f of r.mismatches) lines.push(formatFinding(f));
  }
  if (r.unsettled.length > 0) {
    lines.push(`pages busy at every look, not judged (${r.unsettled.length}): ${r.unsettled.map((u) => `${u.volume}:${u.page}`).join(', ')}`);
  }
  if (r.released.length > 0) lines.push(`released while verified, skipped: ${r.released.join(', ')}`);
  const secs = (r.elapsedMs / 1000).toFixed(1);
  let summary = `summary: ${r.pagesChecked} pages checked in ${secs} s; ${r.mismatches.length} differ`;
  if (repair) summary += `, ${r.repaired} repaired, ${r.remaining} remain`;
  if (r.unsettled.length > 0) summary += `; ${r.unsettled.length} busy, not judged`;
  lines.push(summary);
  return lines.join('\n');
}
