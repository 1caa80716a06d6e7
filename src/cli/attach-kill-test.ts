// `pagepair attach-kill-test`: a host keeps running while its controllers die.
// fio's nbd engine writes crc32c-checked 4 KiB blocks through `pagepair
// attach` (in this process) to a pair of our own; meanwhile A and then B are
// SIGKILLed and restarted, cycle after cycle, each kill waiting until the pair
// is mirrored again. fio writes every block of the volume once, then reads
// every block back through attach and checks its checksum. fio must see no
// I/O error and no verify failure; attach's stall at each failover (from the
// path failing to the first request caught in it answered by the other
// controller) is printed, with the median and the longest. Afterwards both
// controllers' copies of the volume are read directly and compared.

import { Command } from 'commander';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import pino from 'pino';
import { Attach } from '../attach/attach.js';
import { median } from '../bench/stats.js';
import { NbdClient } from '../client/nbd-client.js';
import { PagepairError } from '../protocol/errors.js';
import { abortOnSignals, addRunDirOptions, linePrinter, printVerdict } from './fault-run-options.js';
import { fioNbdWriteArgs, killAllFio, spawnFio, type FioJobReport, type FioProcess } from '../runtime/fio.js';
import { NbdPair, storeBytesFor, type Letter } from '../runtime/nbd-pair.js';
import { formatBytes, parsePositiveInt, parseSize } from '../workload/units.js';

const JOB = 'attachkill';
const BLOCK_BYTES = 4096;
const VOLUME = 'hostvol';
const STALL_TIMEOUT_MS = 30_000;
const REJOIN_TIMEOUT_MS = 60_000;
const COMPARE_CHUNK_BYTES = 1024 * 1024;

export interface AttachKillTestOptions {
  /** Cycles of "kill A, restart A, kill B, restart B". Default 10. */
  cycles?: number;
  /** The volume fio writes once, block by block, then verifies. Default 2 GiB. */
  sizeBytes?: number;
  iodepth?: number;
  /** fio --rate_iops: keeps fio writing while the kills go on (and leaves CPU for the pair). Default 2000. */
  rateIops?: number;
  /** Pause after the pair is mirrored again before the next kill. Default 500 ms. */
  settleMs?: number;
  /** fio --randseed. Default 1. */
  seed?: number;
  dir?: string;
  keep?: boolean;
  fioPath?: string;
  print?: (line: string) => void;
  signal?: AbortSignal;
}

export interface AttachKill {
  victim: Letter;
  /** ms from the kill to the first request caught in it being answered by the survivor (attach's stall). */
  stallMs: number;
  /** ms from the restart until both were mirrored again. */
  rejoinMs: number;
}

export interface AttachKillTestResult {
  ok: boolean;
  kills: AttachKill[];
  stallMedianMs: number | null;
  stallMaxMs: number | null;
  /** fio's writes and verify reads, and the errors it saw. */
  fio: { writes: number; verified: number; error: number; totalErrors: number; writeIops: number } | null;
  /** Whether A's and B's copies of the volume were byte for byte the same. */
  copiesEqual: boolean | null;
  attach: { failovers: number; resent: number; failedNoPath: number; longestRequestStallMs: number | null };
  problems: string[];
  elapsedMs: number;
  dir: string | null;
}

function checkAbort(signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw new PagepairError('SHUTTING_DOWN', 'attach-kill-test interrupted');
}

async function digestOf(url: string, sizeBytes: number): Promise<string> {
  const c = await NbdClient.connect(url, { requestTimeoutMs: 60_000 });
  try {
    const h = createHash('sha256');
    for (let at = 0; at < sizeBytes; at += COMPARE_CHUNK_BYTES) h.update(await c.read(at, Math.min(COMPARE_CHUNK_BYTES, sizeBytes - at)));
    return h.digest('hex');
  } finally {
    await c.close().catch(() => undefined);
  }
}

/** The settings of a run, defaults filled in. */
interface Settings {
  cycles: number;
  sizeBytes: number;
  iodepth: number;
  rateIops: number;
  settleMs: number;
  print: (line: string) => void;
  o: AttachKillTestOptions;
}

export async function runAttachKillTest(o: AttachKillTestOptions = {}): Promise<AttachKillTestResult> {
  const t0 = performance.now();
  const s: Settings = {
    cycles: o.cycles ?? 10,
    sizeBytes: o.sizeBytes ?? 2 * 1024 * 1024 * 1024,
    iodepth: o.iodepth ?? 32,
    rateIops: o.rateIops ?? 2000,
    settleMs: o.settleMs ?? 500,
    print: o.print ?? ((line: string) => console.log(line)),
    o,
  };
  const { sizeBytes } = s;
  if (sizeBytes % BLOCK_BYTES !== 0 || sizeBytes < 4 * 1024 * 1024) throw new PagepairError('BAD_FIELD', `size must be a multiple of ${BLOCK_BYTES} bytes, at least 4 MiB, got ${sizeBytes}`, 'size');
  const dir = o.dir !== undefined ? resolve(o.dir) : mkdtempSync(join(tmpdir(), 'pagepair-attach-kill-'));
  mkdirSync(dir, { recursive: true });

  const kills: AttachKill[] = [];
  const problems: string[] = [];
  let pair: NbdPair | null = null;
  let attach: Attach | null = null;
  let fioReport: FioJobReport | null = null;
  let copiesEqual: boolean | null = null;
  let attachTotals: AttachKillTestResult['attach'] = { failovers: 0, resent: 0, failedNoPath: 0, longestRequestStallMs: null };
  try {
    pair = await NbdPair.start({ dir, storeBytes: storeBytesFor([sizeBytes]), cacheBytesMax: 64 * 1024 * 1024 });
    await pair.createVolume('A', VOLUME, sizeBytes);
    const socket = join(dir, 'attach.sock');
    attach = await startAttach(pair, dir, socket);
    s.print(
      `attach-kill-test: pair in ${dir}; fio randwrite ${BLOCK_BYTES} B blocks through attach, iodepth ${s.iodepth}, ${s.rateIops} IOPS, ${formatBytes(sizeBytes)} written once then verified; ${s.cycles} cycles of killing A then B`,
    );
    const fio = spawnFio(
      [
        ...fioNbdWriteArgs({ name: JOB, uri: `nbd+unix:///${VOLUME}?socket=${socket}`, blockBytes: BLOCK_BYTES, iodepth: s.iodepth, sizeBytes, seed: o.seed ?? 1 }),
        `--rate_iops=${s.rateIops}`,
        '--do_verify=1',
      ],
      { cwd: dir, ...(o.fioPath !== undefined ? { fioPath: o.fioPath } : {}) },
    );
    const a = attach;
    const answered = (): number => a.status().paths.reduce((n, p) => n + p.answered, 0);
    while (answered() < 1000 && fio.running) await sleep(20);

    await killCycles(pair, a, fio, s, kills, problems);
    fioReport = await fioToItsEnd(fio, s, problems);
    const st = a.status();
    attachTotals = { failovers: st.failovers, resent: st.resent, failedNoPath: st.failedNoPath, longestRequestStallMs: st.longestRequestStallMs };
    if (st.failedNoPath > 0) problems.push(`${st.failedNoPath} requests failed for want of a controller`);
    copiesEqual = await copiesAreEqual(pair, sizeBytes, problems);
  } catch (err) {
    problems.push(err instanceof Error ? err.message : String(err));
  } finally {
    killAllFio();
    await attach?.close().catch(() => undefined);
    await pair?.stop();
  }
  const stalls = kills.map((k) => k.stallMs).filter((ms) => ms >= 0);
  const stallMedianMs = stalls.length === 0 ? null : median(stalls);
  const stallMaxMs = stalls.length === 0 ? null : Math.max(...stalls);
  if (stallMedianMs !== null && stallMedianMs >= 1000) problems.push(`the median stall is ${stallMedianMs.toFixed(0)} ms, 1 s or more`);
  if (kills.length < 2 * s.cycles && problems.length === 0) problems.push(`only ${kills.length} of ${2 * s.cycles} kills were made`);
  const ok = problems.length === 0;
  const kept = !ok || o.keep === true;
  if (!kept) rmSync(dir, { recursive: true, force: true });
  return {
    ok,
    kills,
    stallMedianMs,
    stallMaxMs,
    fio:
      fioReport === null
        ? null
        : { writes: fioReport.write.totalIos, verified: fioReport.read.totalIos, error: fioReport.error, totalErrors: fioReport.totalErrors, writeIops: fioReport.write.iops },
    copiesEqual,
    attach: attachTotals,
    problems,
    elapsedMs: performance.now() - t0,
    dir: kept ? dir : null,
  };
}

/** `pagepair attach` in this process, serving the volume on a unix socket, A preferred. */
async function startAttach(pair: NbdPair, dir: string, socket: string): Promise<Attach> {
  const attach = new Attach({
    controllers: [
      { id: 'A', host: '127.0.0.1', port: pair.a.nbdPort },
      { id: 'B', host: '127.0.0.1', port: pair.b.nbdPort },
    ],
    volumes: [{ name: VOLUME, preferred: 'A' }],
    spread: false,
    holdMs: 30_000,
    reconnectMs: 100,
    requestTimeoutMs: 5000,
    upstreamInflightMax: 128,
    listen: { host: '127.0.0.1', port: 0, socket },
    log: pino({ level: 'info' }, pino.destination({ dest: join(dir, 'attach.log'), sync: false, mkdir: true })),
  });
  await attach.start();
  return attach;
}

/** Cycle after cycle, A then B SIGKILLed while fio writes; each kill's stall as attach saw it, then the restart until both are mirrored. */
async function killCycles(pair: NbdPair, attach: Attach, fio: FioProcess, s: Settings, kills: AttachKill[], problems: string[]): Promise<void> {
  for (let cycle = 1; cycle <= s.cycles; cycle++) {
    for (const victim of ['A', 'B'] as const) {
      checkAbort(s.o.signal);
      if (!fio.running) {
        problems.push(`fio ended during cycle ${cycle}, before the kills did: give a larger --size or a lower --rate-iops`);
        return;
      }
      const before = attach.status().stallsMs.length;
      const killedAt = performance.now();
      await pair.of(victim).kill();
      let stallMs = -1;
      while (performance.now() - killedAt < STALL_TIMEOUT_MS) {
        const st = attach.status();
        if (st.stallsMs.length > before) {
          stallMs = st.stallsMs[st.stallsMs.length - 1]!;
          break;
        }
        await sleep(10);
      }
      if (stallMs < 0) problems.push(`cycle ${cycle}, kill ${victim}: no request was answered by the survivor within ${STALL_TIMEOUT_MS} ms`);
      const kill = { victim, stallMs, rejoinMs: await pair.restart(victim, REJOIN_TIMEOUT_MS) };
      kills.push(kill);
      s.print(`  cycle ${cycle}: killed ${victim}; attach stalled ${stallMs.toFixed(0)} ms; ${victim} mirrored again ${kill.rejoinMs.toFixed(0)} ms after its restart`);
      await sleep(s.settleMs);
    }
  }
}

/** fio writes what is left, then reads every block back through attach; its report, with what it saw wrong as problems. */
async function fioToItsEnd(fio: FioProcess, s: Settings, problems: string[]): Promise<FioJobReport | null> {
  const remainingS = Math.ceil(s.sizeBytes / BLOCK_BYTES / s.rateIops) + 300;
  if (!(await fio.waitMs(remainingS * 1000))) {
    problems.push(`fio did not finish within ${remainingS} s of the last kill`);
    await fio.stop(0, 3000);
  }
  let report: FioJobReport;
  try {
    report = fio.job(JOB);
  } catch (err) {
    problems.push(`fio: ${err instanceof Error ? err.message : String(err)}`);
    return null;
  }
  if (report.error !== 0) problems.push(`fio stopped on errno ${report.error}: ${fio.stderrTailText.trim().split('\n').slice(-3).join(' | ')}`);
  if (report.totalErrors !== 0) problems.push(`fio counted ${report.totalErrors} errors`);
  const blocks = s.sizeBytes / BLOCK_BYTES;
  if (report.write.totalIos < blocks) problems.push(`fio wrote ${report.write.totalIos} of ${blocks} blocks`);
  if (report.read.totalIos < blocks) problems.push(`fio verified ${report.read.totalIos} of ${blocks} blocks`);
  return report;
}

/** A's and B's copies of the volume, read directly from each, must be the same bytes. */
async function copiesAreEqual(pair: NbdPair, sizeBytes: number, problems: string[]): Promise<boolean> {
  const [da, db] = await Promise.all([digestOf(pair.a.nbdUrl(VOLUME), sizeBytes), digestOf(pair.b.nbdUrl(VOLUME), sizeBytes)]);
  if (da !== db) problems.push(`A's and B's copies of ${VOLUME} differ (sha256 ${da.slice(0, 16)}… and ${db.slice(0, 16)}…)`);
  return da === db;
}

export function formatAttachKillTest(r: AttachKillTestResult): string {
  const lines: string[] = [];
  const f = r.fio;
  lines.push(
    `attach-kill-test: ${r.kills.length} kills; attach stall median ${r.stallMedianMs?.toFixed(0) ?? '-'} ms, max ${r.stallMaxMs?.toFixed(0) ?? '-'} ms; ` +
      `longest single request ${r.attach.longestRequestStallMs?.toFixed(0) ?? '-'} ms; ${r.attach.resent} requests resent`,
  );
  if (f !== null) lines.push(`fio: ${f.writes} writes (${f.writeIops.toFixed(0)}/s), ${f.verified} blocks verified, I/O errors ${f.error === 0 ? 0 : `errno ${f.error}`}, errors counted ${f.totalErrors}`);
  lines.push(`copies of A and B: ${r.copiesEqual === null ? 'not compared' : r.copiesEqual ? 'the same' : 'DIFFERENT'}`);
  lines.push(r.ok ? `PASS in ${(r.elapsedMs / 1000).toFixed(1)} s` : `FAIL:\n${r.problems.map((p) => `  - ${p}`).join('\n')}${r.dir !== null ? `\n  files kept in ${r.dir}` : ''}`);
  return lines.join('\n');
}

export function attachKillTestCommand(): Command {
  const cmd = new Command('attach-kill-test')
    .description('fio writes crc32c-checked blocks through `pagepair attach` while A and B are killed and restarted in turn; fio must see no error and verify every block')
    .option('--cycles <n>', 'cycles of killing A, then B (each restarted and mirrored again before the next kill)', '10')
    .option('--size <bytes>', 'the volume fio writes once and verifies; with --rate-iops it sets how long fio writes, which must outlast the kills', '2GiB')
    .option('--iodepth <n>', 'fio --iodepth', '32')
    .option('--rate-iops <n>', 'fio --rate_iops: keep fio writing while the kills go on', '2000')
    .option('--settle-ms <ms>', 'pause after the pair is mirrored again before the next kill', '500');
  addRunDirOptions(cmd, { help: 'fio --randseed', default: '1' }, 'configurations, store, logs, fio output');
  return cmd.option('--json', 'print the result as JSON').action(async (opts: Record<string, string | boolean | undefined>) => {
    const json = opts.json === true;
    const signal = abortOnSignals();
    const r = await runAttachKillTest({
      cycles: parsePositiveInt(String(opts.cycles), 'cycles', 1000),
      sizeBytes: parseSize(String(opts.size), 'size'),
      iodepth: parsePositiveInt(String(opts.iodepth), 'iodepth', 1024),
      rateIops: parsePositiveInt(String(opts.rateIops), 'rate-iops'),
      settleMs: parsePositiveInt(String(opts.settleMs), 'settle-ms'),
      seed: parsePositiveInt(String(opts.seed), 'seed'),
      ...(typeof opts.dir === 'string' ? { dir: opts.dir } : {}),
      keep: opts.keep === true,
      print: linePrinter(json),
      signal,
    });
    printVerdict(r, json, formatAttachKillTest);
  });
}
