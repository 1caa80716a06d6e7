// `pagepair kill-test`: a real pair on 127.0.0.1 under the workload
// generator's load, hurt again and again, then the whole history judged by
// the checker, and the run left as a workload report and chart.
//
// Each cycle kills (SIGKILL), pauses (SIGSTOP past the partner timeout) or
// cuts the peer link of the pair (a TcpProxy on A's way to B), waits for
// the survivor to take over, brings the pair back and waits until both are
// mirrored again. Per cycle it measures the service stall (longest time in
// which no operation completed), the time to takeover and the time to
// resync. The load is the generator's engine in this process: clients that
// fail over between A and B, every read checked against the last
// acknowledged write, every operation recorded for the checker, and the
// whole working set read back at the end. The faults are marked on the
// run's time series, so the chart shows each dip and recovery. Any
// violation, corrupt read or a pair that does not recover fails the run.

import { Command, Option } from 'commander';
import { randomUUID } from 'node:crypto';
import { appendFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { median } from '../bench/stats.js';
import { checkHistory, type CheckResult } from '../checker/linearizability.js';
import { PagepairClient, type ControllerAddress } from '../client/client.js';
import { resolveNbdTls, type NbdTlsChoice, type NbdTlsCredentials } from '../client/nbd-client.js';
import { Prng } from '../core/prng.js';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import type { ControllerStatus } from '../runtime/controller-process.js';
import { freePort } from '../runtime/free-port.js';
import { freePairPorts, LOCAL_HOST, pairPlacement } from '../runtime/local-pair.js';
import { superviseController } from '../runtime/spawn-controller.js';
import { StatusProbe } from '../runtime/status-probe.js';
import { Supervised, waitUntil, WaitFailed } from '../runtime/supervisor.js';
import { TcpProxy } from '../runtime/tcp-proxy.js';
import { FileDevice } from '../store/file-device.js';
import { PageStore } from '../store/page-store.js';
import { abortOnSignals, addPairTimingOptions, addRunDirOptions, linePrinter, printVerdict, runDirAndTimings } from './fault-run-options.js';
import { NBD_TLS_IDENTITY_HELP, nbdTlsChoice } from './nbd-tls.js';
import { runVerify, type VerifyResult } from './verify-run.js';
import { clientsTarget } from './verify.js';
import type { MailboxSlot } from '../store/types.js';
import { validateJob, type JobInput, type JobSpec, type Transport } from '../workload/job.js';
import { progressPrinter } from '../workload/progress.js';
import { parseNumberInRange, parsePositiveInt, parseSize } from '../workload/units.js';
import { Recording, summarizeCheck } from '../workload/recording.js';
import {
  attachCheck,
  attachFaults,
  resolveReportBase,
  writeReportFiles,
  type FaultCycle,
  type FaultTotals,
  type FaultsReport,
  type HistoryCheckReport,
  type ReportTotals,
  type WorkloadReport,
} from '../workload/report.js';
import { runWorkloadJob, type RunHandle } from '../workload/runner.js';

const HOST = LOCAL_HOST;
const POLL_MS = 20;
const STOP_WAIT_MS = 10_000;
/** How long a resumed (SIGCONT) controller is watched before it is restarted anyway. */
const RESUMED_WATCH_MS = 3000;
/** How long a partition is held after takeover, so the survivor serves alone for a while. */
const PARTITION_HOLD_MS = 500;
const QUIET_WAIT_MS = 20_000;
/** Reads sent to a paused controller just before it is resumed. */
const PROBE_READS = 64;
const PROBE_READ_TIMEOUT_MS = 2000;
/** Longest the survivor is left serving alone, for blocks to probe, before the paused one is resumed. */
const PROBE_SETTLE_MS_MAX = 3000;
/** The pair's status is polled this often for the chart's events (the cycles measure with their own, faster polls). */
const MONITOR_POLL_MS = 100;
const NOT_PREFERRED_ALONE = 'B (not preferred) reported alone during a partition';

export type KillMode = 'kill' | 'pause' | 'partition';
type Letter = 'A' | 'B';

export interface KillTestOptions {
  cycles: number;
  mode: KillMode;
  seed: number;
  /** Working directory (configs, store, logs, history). Default: a new temp dir. */
  dir?: string;
  /** Keep the working directory afterwards (it is always kept when the run fails). */
  keep?: boolean;
  /**
   * Where the report and the chart go: <out>.json and <out>.svg, or into
   * <out> when it is a directory. Default workload-reports/kill-test-<mode>-<time>.
   */
  out?: string;
  heartbeatIntervalMs?: number;
  partnerTimeoutMs?: number;
  /** arbitration.fenceAction of both; default "kill", but "none" for partitions (both stay alive there). */
  fenceAction?: 'kill' | 'none';
  /** Client connections of the load (half start on A, half on B; each fails over). Default 4. */
  clients?: number;
  /**
   * How the load reaches the pair: pagepair's WebSocket client (default) or
   * NBD, each controller then serving NBD on a free port of 127.0.0.1 (a
   * request lost with a controller is sent again to the other one).
   */
  transport?: Transport;
  /**
   * NBD over TLS: both controllers get this key file (tls.pskFile, with
   * tls.mode "on", or "require" with `tls`), and the NBD load connects with
   * STARTTLS and a key of it (the identity given, else the file's first).
   * Needs transport "nbd".
   */
  nbdTls?: NbdTlsChoice;
  /**
   * Clients may hit the same block at the same moment (through A and B at
   * once); reads are then judged by the checker alone. Over NBD a write in
   * flight at a fault is then not sent again (it carries no retry tag, and
   * landing twice around another client's write would be a lost write the
   * pair did not cause): it counts as an error and a maybe-happened write.
   */
  contend?: boolean;
  /** Operations in flight per client. Default 4. */
  inflight?: number;
  /** Both controllers with tls.mode "require": the peer link and the load's WebSocket clients over TLS-PSK (WebSocket transport only). */
  tls?: boolean;
  /** The working set: blocks of blockBytes each (4 KiB random reads and writes over 1024 blocks by default). */
  blocks?: number;
  blockBytes?: number;
  readPct?: number;
  /** One step of the time series, the chart and the progress lines. Default 500 ms. */
  intervalMs?: number;
  /** A cycle that does not take over or resync within this fails the run. */
  recoverTimeoutMs?: number;
  /** Per-cycle lines and the totals. */
  print?: (line: string) => void;
  /** Live progress of the load: one line per interval, the pair's events as they happen. Default: print. */
  progress?: (line: string) => void;
  /** Notes (setup, kept directory, ...). */
  note?: (line: string) => void;
  signal?: AbortSignal;
}

export interface CycleResult extends FaultCycle {
  mode: KillMode;
  victim: Letter;
  survivor: Letter;
}

export interface KillTestTotals extends FaultTotals {
  ops: number;
  errors: number;
  writesMaybe: number;
  lostWrites: number;
  staleReads: number;
  violations: number;
  /** Reads whose bytes were not what the last acknowledged write left (the run's reads, the read-back, the probes). */
  verifyErrors: number;
  inconclusiveKeys: number;
}

export interface KillTestResult {
  ok: boolean;
  mode: KillMode;
  seed: number;
  cycles: CycleResult[];
  totals: KillTestTotals;
  check: HistoryCheckReport | null;
  /** The load as the workload report sums it up. */
  workload:
    | (Pick<ReportTotals, 'ops' | 'opsPerSec' | 'errors' | 'errorCodes' | 'verifyErrors' | 'verifyFailures' | 'readsVerified' | 'failovers'> & {
        summary: string;
        readBack: WorkloadReport['readBack'];
      })
    | null;
  /** Both controllers' copies of every page compared once the pair was quiet (`pagepair verify`); null when the run did not get that far. */
  copies: { pagesChecked: number; differ: number; busy: number } | null;
  problems: string[];
  /** The working directory when it was kept, else null. */
  dir: string | null;
  historyPath: string | null;
  /** The workload report (JSON) and its chart (SVG); null when the run failed before the load ran. */
  reportPath: string | null;
  chartPath: string | null;
}

// ---------------------------------------------------------------------------
// Helpers

/** The median, 0 for none. */
function medianOr0(xs: readonly number[]): number {
  return xs.length === 0 ? 0 : median(xs);
}

/** `pagepair verify` over the pair at the end of the run, with its own connections to A and B. */
async function verifyCopies(addr: Record<Letter, ControllerAddress>): Promise<VerifyResult> {
  const connect = (l: Letter): Promise<PagepairClient> =>
    PagepairClient.connect({ host: addr[l].host, port: addr[l].port, token: addr[l].token, tls: addr[l].tls === true, name: 'pagepair-kill-test-verify', timeoutMs: 5000 });
  const [a, b] = await Promise.all([connect('A'), connect('B')]);
  try {
    const allocs = (await a.list()).map((x) => ({ guid: x.guid, name: x.name, pageSizeBytes: x.pageSizeBytes, pageCount: x.pageCount }));
    return await runVerify(clientsTarget(a, b), allocs, { repair: false, rangePages: 1024, rechecks: 3, recheckPauseMs: 100 });
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
}
// ---------------------------------------------------------------------------
// Formatting

function ms(v: number | null): string {
  return v === null ? '     -' : `${Math.round(v)}`.padStart(6);
}

export function formatCycle(c: CycleResult): string {
  const fate = c.victimFate !== undefined ? `  (${c.victimFate})` : '';
  const problems = c.problems.length > 0 ? `  PROBLEMS: ${c.problems.join('; ')}` : '';
  return (
    `cycle ${String(c.cycle).padStart(3)}  ${c.mode.padEnd(9)} victim ${c.victim}  stall ${ms(c.stallMs)} ms  takeover ${ms(c.takeoverMs)} ms  ` +
    `resync ${ms(c.resyncMs)} ms  ops ${String(c.ops).padStart(7)}  errors ${c.errors}${fate}${problems}`
  );
}

export function formatTotals(r: KillTestResult): string {
  const t = r.totals;
  const w = r.workload;
  const lines = [
    `totals: ${t.cycles} ${r.mode} cycles (seed ${r.seed}): stall median ${Math.round(t.stallMedianMs)} ms, max ${Math.round(t.stallMaxMs)} ms; ` +
      `takeover median ${Math.round(t.takeoverMedianMs)} ms, max ${Math.round(t.takeoverMaxMs)} ms; resync median ${Math.round(t.resyncMedianMs)} ms, max ${Math.round(t.resyncMaxMs)} ms`,
    `        ops ${t.ops}${w !== null ? ` (${Math.round(w.opsPerSec)} ops/s, failovers ${w.failovers})` : ''}, errors ${t.errors}, maybe-happened writes ${t.writesMaybe}; ` +
      `lost writes ${t.lostWrites}, stale reads ${t.staleReads}, violations ${t.violations}, verification errors ${t.verifyErrors}` +
      `${t.inconclusiveKeys > 0 ? `, undecided keys ${t.inconclusiveKeys}` : ''}`,
  ];
  if (r.copies !== null) lines.push(`        copies: ${r.copies.pagesChecked} pages compared through A and B (pagepair verify), ${r.copies.differ} differ`);
  for (const v of r.check?.violations ?? []) lines.push(`  ! ${v}`);
  for (const v of w?.verifyFailures ?? []) lines.push(`  ! ${v}`);
  for (const p of r.problems) lines.push(`  ! ${p}`);
  if (r.reportPath !== null) lines.push(`report ${r.reportPath}`, `chart  ${r.chartPath}`);
  if (r.historyPath !== null) lines.push(`history ${r.historyPath}`);
  if (r.dir !== null) lines.push(`working directory kept: ${r.dir}`);
  lines.push(r.ok ? 'kill test passed' : 'KILL TEST FAILED');
  return lines.join('\n');
}

/** The kill test's options as the job fields they set, to name an option a job check refused. */
const OPTION_OF_FIELD: Record<string, string> = { blockSize: '--block', size: '--blocks', readPct: '--read-pct', clients: '--clients', inflight: '--inflight', interval: '--interval', seed: '--seed' };

function checkedLoad(input: JobInput, name: string): JobSpec {
  try {
    return validateJob(input, { name });
  } catch (err) {
    const option = err instanceof PagepairError && err.code === 'BAD_FIELD' && err.field !== undefined ? OPTION_OF_FIELD[err.field] : undefined;
    if (option === undefined) throw err;
    throw new PagepairError('BAD_FIELD', `${option}: ${(err as PagepairError).message}`, option.slice(2));
  }
}

function reportStamp(d: Date): string {
  return d.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z').replace('T', '-');
}

// ---------------------------------------------------------------------------
// The run, step by step: plan it, set up the pair, start it, run the load
// with the cycles under it, judge the history, compare the quiet pair's
// copies, tear down, sum up.

/** What the options ask for, checked before anything starts. */
interface Plan {
  opts: KillTestOptions;
  mode: KillMode;
  job: JobSpec;
  blocks: number;
  blockBytes: number;
  heartbeatIntervalMs: number;
  partnerTimeoutMs: number;
  recoverTimeoutMs: number;
  print: (line: string) => void;
  note: (line: string) => void;
  /** The NBD load's TLS credentials (as runWorkloadJob's nbd entries take them), and the key file both controllers get. */
  nbdTlsPart: { tls?: NbdTlsCredentials };
  nbdTlsFile: string | undefined;
}

function planRun(opts: KillTestOptions): Plan {
  const mode = opts.mode;
  if (!['kill', 'pause', 'partition'].includes(mode)) throw new PagepairError('BAD_FIELD', `mode must be kill, pause or partition, got ${String(mode)}`, 'mode');
  if (!Number.isSafeInteger(opts.cycles) || opts.cycles < 1) throw new PagepairError('BAD_FIELD', 'cycles must be at least 1', 'cycles');
  const blocks = opts.blocks ?? 1024;
  const blockBytes = opts.blockBytes ?? 4096;
  if (!Number.isSafeInteger(blocks) || blocks < 1) throw new PagepairError('BAD_FIELD', `blocks must be at least 1, got ${blocks}`, 'blocks');
  // The load, checked like any job before anything starts: a bad value is refused by the name of its option.
  const checked = checkedLoad(
    {
      description: `kill test: ${opts.cycles} ${mode} cycles`,
      pattern: 'randrw',
      readPct: opts.readPct ?? 50,
      blockSize: blockBytes,
      size: blocks * blockBytes,
      clients: opts.clients ?? 4,
      inflight: opts.inflight ?? 4,
      seed: opts.seed,
      target: 'both',
      failover: true,
      transport: opts.transport ?? 'ws',
      contend: opts.contend === true,
      interval: (opts.intervalMs ?? 500) / 1000,
      // Kept: the controllers are compared when quiet, allocation and dirty pages included.
      keep: true,
    },
    `kill-test-${mode}`,
  );
  // Neither a time nor a count: the run lasts until the last cycle is done.
  const job: JobSpec = { ...checked, durationS: 0, ops: 0 };
  if (opts.tls === true && job.transport === 'nbd') {
    throw new PagepairError('BAD_FIELD', '--tls runs the WebSocket load over TLS; with --transport nbd NBD would need its own keys (tls.pskFile)', 'tls');
  }
  if (opts.nbdTls !== undefined && (job.transport !== 'nbd' || opts.nbdTls.pskFile === undefined)) {
    throw new PagepairError('BAD_FIELD', 'a TLS key file for NBD (--tls-psk-file) needs --transport nbd', 'tlsPskFile');
  }
  // Read now: a bad key file stops the run before anything starts.
  const nbdTls = opts.nbdTls !== undefined ? resolveNbdTls(opts.nbdTls) : undefined;
  return {
    opts,
    mode,
    job,
    blocks,
    blockBytes,
    heartbeatIntervalMs: opts.heartbeatIntervalMs ?? 100,
    partnerTimeoutMs: opts.partnerTimeoutMs ?? 500,
    recoverTimeoutMs: opts.recoverTimeoutMs ?? 30_000,
    print: opts.print ?? ((line: string) => console.log(line)),
    note: opts.note ?? (() => undefined),
    nbdTlsPart: nbdTls !== undefined ? { tls: nbdTls } : {},
    nbdTlsFile: opts.nbdTls?.pskFile !== undefined ? resolve(opts.nbdTls.pskFile) : undefined,
  };
}

/** The pair on disk, not started: configurations on free ports, the processes, their probes, the proxy of a partition run. */
interface KillPair {
  dir: string;
  /** The directory was made for this run (it is removed after a pass unless kept). */
  madeDir: boolean;
  pairId: string;
  addr: Record<Letter, ControllerAddress>;
  /** Each controller's NBD port, when the load goes over NBD. */
  nbd: Record<Letter, number> | null;
  procs: Record<Letter, Supervised>;
  probes: Record<Letter, StatusProbe>;
  /** On A's way to B in partition mode, so cutting it cuts the peer link only. */
  proxy: TcpProxy | null;
}

async function setUpPair(plan: Plan): Promise<KillPair> {
  const { opts, mode } = plan;
  const madeDir = opts.dir === undefined;
  const dir = opts.dir !== undefined ? resolve(opts.dir) : mkdtempSync(join(tmpdir(), 'pagepair-kill-'));
  mkdirSync(dir, { recursive: true });
  const ports = await freePairPorts({ nbd: plan.job.transport === 'nbd' });
  const proxyPort = await freePort();
  const nbd = plan.job.transport === 'nbd' ? { A: ports.A.nbd!, B: ports.B.nbd! } : null;
  const pairId = randomUUID();
  const token = `kill-test-${randomUUID().slice(0, 8)}`;
  const fenceAction = opts.fenceAction ?? (mode === 'partition' ? 'none' : 'kill');
  const configOf = (id: Letter): Record<string, unknown> => ({
    // A dials B: in partition mode A's way to B runs through the proxy, so cutting it cuts the peer link only.
    ...pairPlacement(id, ports, id === 'A' && mode === 'partition' ? { partnerPeerPort: proxyPort } : {}),
    pairId,
    secret: `kill-test-peer-secret-${pairId}`,
    clientToken: token,
    store: { path: join(dir, 'pair.store'), sizeBytes: 256 * 1024 * 1024 },
    cache: { cacheBytesMax: 64 * 1024 * 1024, dirtyAgeMaxMs: 1000 },
    heartbeatIntervalMs: plan.heartbeatIntervalMs,
    partnerTimeoutMs: plan.partnerTimeoutMs,
    arbitration: { preferred: 'A', fenceAction },
    ...(opts.tls === true || plan.nbdTlsFile !== undefined
      ? { tls: { mode: opts.tls === true ? 'require' : 'on', ...(plan.nbdTlsFile !== undefined ? { pskFile: plan.nbdTlsFile } : {}) } }
      : {}),
    log: { level: 'info' },
  });
  const controller = (l: Letter): Supervised => {
    const configPath = join(dir, `${l.toLowerCase()}.json`);
    writeFileSync(configPath, JSON.stringify(configOf(l), null, 2));
    return superviseController(l, configPath, { file: join(dir, `${l.toLowerCase()}.log`) }, join(dir, `${l}.pid`));
  };
  const procs = { A: controller('A'), B: controller('B') };
  const addr: Record<Letter, ControllerAddress> = {
    A: { id: 'A', host: HOST, port: ports.A.client, token, tls: opts.tls === true },
    B: { id: 'B', host: HOST, port: ports.B.client, token, tls: opts.tls === true },
  };
  return {
    dir,
    madeDir,
    pairId,
    addr,
    nbd,
    procs,
    probes: { A: new StatusProbe(addr.A, 'pagepair-kill-test'), B: new StatusProbe(addr.B, 'pagepair-kill-test') },
    proxy: mode === 'partition' ? new TcpProxy({ host: HOST, port: ports.B.peer }, { host: HOST, port: proxyPort }) : null,
  };
}

const ID_OF: Record<Letter, 1 | 2> = { A: 1, B: 2 };
const otherOf = (l: Letter): Letter => (l === 'A' ? 'B' : 'A');

/** One run of the kill test: the pair, the load's recording, and what the steps found. */
class KillTestRun {
  readonly recording: Recording;
  private readonly mode: KillMode;
  private readonly eventsPath: string;
  private store: PageStore | null = null;
  private report: WorkloadReport | null = null;
  private check: CheckResult | null = null;
  /** Both controllers' copies of every page compared at the end (null: not reached). */
  private copies: VerifyResult | null = null;
  private historyPath: string | null = null;
  private readonly cycles: CycleResult[] = [];
  private readonly problems: string[] = [];
  /** Set when the load stopped under the cycles (the runner failed): they stop too. */
  private loadGone: unknown = null;
  /** A cycle did not recover, or the run was interrupted: the pair is not compared at the end. */
  failedHard = false;

  constructor(
    private readonly plan: Plan,
    private readonly pair: KillPair,
  ) {
    const { opts, mode, job } = plan;
    this.mode = mode;
    this.eventsPath = join(pair.dir, 'events.log');
    this.recording = new Recording({ seed: opts.seed, killTest: mode, cycles: opts.cycles, blocks: plan.blocks, blockBytes: plan.blockBytes, transport: job.transport, contend: job.contend });
  }

  // ---- helpers of the steps

  private event(text: string): void {
    appendFileSync(this.eventsPath, `${new Date().toISOString()} ${text}\n`);
  }

  private checkAbort(): void {
    if (this.plan.opts.signal?.aborted === true) throw new PagepairError('SHUTTING_DOWN', 'kill test interrupted');
    if (this.loadGone !== null) throw new PagepairError('INTERNAL', 'the load stopped', 'workload');
  }

  private readonly pause = async (waitMs: number): Promise<void> => {
    const signal = this.plan.opts.signal;
    this.checkAbort();
    await sleep(waitMs, undefined, signal !== undefined ? { signal } : {}).catch(() => undefined);
    this.checkAbort();
  };

  private status(l: Letter, timeoutMs = 1000): Promise<ControllerStatus | null> {
    return this.pair.probes[l].get(timeoutMs);
  }

  /** Polls until probe returns a value, while `watch` stay up; WaitFailed after timeoutMs. */
  private waitFor<T>(what: string, timeoutMs: number, watch: readonly Letter[], probe: () => Promise<T | null>): Promise<T> {
    return waitUntil(
      async () => {
        this.checkAbort();
        return probe();
      },
      { what, timeoutMs, pollMs: POLL_MS, watch: watch.map((l) => this.pair.procs[l]), sleep: this.pause },
    );
  }

  private readonly bothMirrored = async (): Promise<[ControllerStatus, ControllerStatus] | null> => {
    const [a, b] = await Promise.all([this.status('A'), this.status('B')]);
    return a?.role === 'mirrored' && b?.role === 'mirrored' ? [a, b] : null;
  };

  private waitBothMirrored(what: string, timeoutMs: number): Promise<[ControllerStatus, ControllerStatus]> {
    return this.waitFor(what, timeoutMs, ['A', 'B'], this.bothMirrored);
  }

  /** The store's epoch record must name the survivor and its epoch. */
  private async checkStoreEpoch(survivor: Letter, epoch: number): Promise<string | null> {
    const store = this.store;
    if (store === null) return 'store not open';
    let seen = 'nothing';
    for (let i = 0; i < 10; i++) {
      const mb = await store.readMailbox();
      const rec = mb.epoch;
      if (rec !== null && rec.epoch === epoch && rec.activeId === ID_OF[survivor]) return null;
      seen = rec === null ? 'no epoch record' : `epoch ${rec.epoch}, active ${rec.activeId}`;
      await this.pause(POLL_MS);
    }
    return `store's epoch record shows ${seen}; survivor ${survivor} serves in epoch ${epoch}`;
  }

  private async slotOf(l: Letter): Promise<MailboxSlot | null> {
    return this.store === null ? null : ((await this.store.readMailbox()).slots[ID_OF[l] - 1] ?? null);
  }

  private async directClient(l: Letter): Promise<PagepairClient | null> {
    return PagepairClient.connect({ ...this.pair.addr[l], name: 'pagepair-kill-test-probe', timeoutMs: PROBE_READ_TIMEOUT_MS }).catch(() => null);
  }

  // ---- step: start the pair

  /** Starts both controllers (and the proxy) and waits until they are mirrored; opens the shared store to read its mailbox. */
  async startPair(): Promise<void> {
    const { dir, procs, proxy } = this.pair;
    if (proxy !== null) await proxy.start();
    this.plan.note(`working directory ${dir}`);
    for (const l of ['A', 'B'] as const) {
      procs[l].start();
      this.event(`start ${l} pid ${procs[l].pid}`);
    }
    try {
      await this.waitBothMirrored('both controllers mirrored at start', this.plan.recoverTimeoutMs);
    } catch (err) {
      if (err instanceof WaitFailed) throw new PagepairError('TIMEOUT', `${err.message} (logs in ${dir})`);
      throw err;
    }
    this.store = await PageStore.open(await FileDevice.open(join(dir, 'pair.store')), { pairId: this.pair.pairId, name: 'pair.store' });
  }

  // ---- step: the load, with the cycles under it

  async runLoad(): Promise<void> {
    const { opts, job, partnerTimeoutMs, recoverTimeoutMs, nbdTlsPart } = this.plan;
    const { addr, nbd } = this.pair;
    const signal = opts.signal;
    // Settles to the cycles' error (or null), never rejects: nothing waits on it until the run is over.
    let cyclesDone: Promise<unknown> | null = null;
    try {
      this.report = await runWorkloadJob([addr.A, addr.B], job, {
        record: this.recording,
        // A request stuck on a paused controller is retried on the other after this; a cycle that does not recover ends the run anyway.
        client: { requestTimeoutMs: Math.max(1000, 2 * partnerTimeoutMs), retryForMs: recoverTimeoutMs, retryIntervalMs: 10 },
        monitorPollMs: MONITOR_POLL_MS,
        ...(nbd !== null ? { nbd: [{ id: 'A', host: HOST, port: nbd.A, ...nbdTlsPart }, { id: 'B', host: HOST, port: nbd.B, ...nbdTlsPart }] } : {}),
        onProgress: progressPrinter(opts.progress ?? this.plan.print),
        ...(signal !== undefined ? { signal } : {}),
        onStart: (run) => {
          cyclesDone = this.runCycles(run)
            .then(
              () => null,
              (err: unknown) => err,
            )
            .finally(() => run.stop());
        },
      });
    } catch (err) {
      this.loadGone = err;
      throw err;
    } finally {
      // The cycles end with the run (and stop when it failed under them).
      const cyclesErr = cyclesDone === null ? null : await (cyclesDone as Promise<unknown>);
      if (cyclesErr !== null && this.loadGone === null) {
        // Interrupted, the report still tells what ran; anything else is the run's error.
        if (!isPagepairError(cyclesErr, 'SHUTTING_DOWN')) throw cyclesErr;
        this.failedHard = true;
        this.problems.push('interrupted before the last cycle');
      }
    }
  }

  private async runCycles(run: RunHandle): Promise<void> {
    const { opts, mode, print } = this.plan;
    const rng = new Prng(opts.seed ^ 0x6b696c6c);
    for (let cycle = 1; cycle <= opts.cycles; cycle++) {
      // Partitions always leave B fenced (A is preferred); kills and pauses alternate.
      const victim: Letter = mode === 'partition' ? 'B' : cycle % 2 === 1 ? 'A' : 'B';
      const c = await this.runCycle(run, cycle, victim, rng);
      this.cycles.push(c);
      print(formatCycle(c));
      if (c.resyncMs === null) {
        this.failedHard = true;
        this.problems.push(`cycle ${cycle} did not recover; stopping`);
        break;
      }
    }
    // A moment of mirrored service after the last recovery, on the chart too.
    await this.pause(300);
  }

  /** One fault, the takeover, the recovery and the resync, measured. */
  private async runCycle(run: RunHandle, cycle: number, victim: Letter, rng: Prng): Promise<CycleResult> {
    const { mode } = this;
    const recording = this.recording;
    const survivor = otherOf(victim);
    const res: CycleResult = { cycle, mode, victim, survivor, stallMs: 0, takeoverMs: null, resyncMs: null, epoch: null, ops: 0, errors: 0, problems: [] };
    await this.pause(500 + rng.below(1501));
    // In pause mode a connection to the victim made beforehand carries reads sent while it sleeps.
    const victimReader: PagepairClient | null = mode === 'pause' ? await this.directClient(victim) : null;
    const t0 = recording.now();
    try {
      const recovered = mode === 'partition' ? await this.cutPeerLink(run, res, t0) : await this.hurtVictim(run, res, t0, victimReader);
      const [ma] = await this.waitBothMirrored(`cycle ${cycle}: both mirrored again`, this.plan.recoverTimeoutMs);
      res.resyncMs = recording.now() - recovered.from;
      this.event(`cycle ${cycle}: mirrored again after ${Math.round(res.resyncMs)} ms`);
      for (const l of [victim, survivor]) run.markRole(l, 'mirrored', 'mirrored', `${l} mirrored again, epoch ${ma.epoch} (${Math.round(res.resyncMs)} ms after the ${recovered.after})`);
    } catch (err) {
      if (!(err instanceof WaitFailed)) throw err;
      res.problems.push(err.message);
      this.event(err.message);
      run.mark('note', `cycle ${cycle}: ${err.message.split('\n')[0]!}`);
    } finally {
      await victimReader?.close().catch(() => undefined);
    }
    const t1 = recording.now();
    res.stallMs = recording.stallMs(t0, t1);
    res.ops = recording.completedBetween(t0, t1);
    res.errors = recording.errorsBetween(t0, t1);
    return res;
  }

  /**
   * Kill or pause mode: SIGKILL or SIGSTOP to the victim, the survivor's
   * takeover, a paused victim resumed (or found fenced), a dead one
   * restarted. Resolves with when the resync starts and what it follows.
   */
  private async hurtVictim(run: RunHandle, res: CycleResult, t0: number, victimReader: PagepairClient | null): Promise<{ from: number; after: string }> {
    const { cycle, victim, survivor } = res;
    const mode = this.mode;
    const proc = this.pair.procs[victim];
    const sig = mode === 'kill' ? 'SIGKILL' : 'SIGSTOP';
    this.event(`cycle ${cycle}: ${sig} ${victim} pid ${proc.pid}`);
    run.mark(mode, `cycle ${cycle}: ${sig} ${victim} (pid ${proc.pid})`, victim);
    if (mode === 'kill') await proc.kill();
    else proc.pause();
    const st = await this.waitFor(`cycle ${cycle}: ${survivor} taking over`, this.plan.recoverTimeoutMs, [survivor], async () => {
      const s = await this.status(survivor);
      return s?.role === 'alone' ? s : null;
    });
    const tTakeover = this.recording.now();
    res.takeoverMs = tTakeover - t0;
    res.epoch = st.epoch;
    this.event(`cycle ${cycle}: ${survivor} alone in epoch ${st.epoch} after ${Math.round(res.takeoverMs)} ms`);
    run.markRole(survivor, 'alone', 'takeover', `${survivor} serves alone, epoch ${st.epoch} (${Math.round(res.takeoverMs)} ms after the ${sig})`);
    const bad = await this.checkStoreEpoch(survivor, st.epoch);
    if (bad !== null) res.problems.push(bad);
    const slotAtTakeover = await this.slotOf(victim);
    if (slotAtTakeover !== null && slotAtTakeover.epoch >= st.epoch) {
      res.problems.push(`${victim}'s mailbox slot is in epoch ${slotAtTakeover.epoch}, not older than the survivor's ${st.epoch}`);
    }

    let resumedAt: number | null = null;
    if (mode === 'pause') {
      // With fenceAction "kill" the survivor ends the paused process; give the exit a moment to be seen.
      await proc.waitExit(300);
      if (!proc.alive) {
        res.victimFate = `fenced: ${proc.exitText}`;
      } else {
        resumedAt = await this.resume(run, st.epoch, res, tTakeover, victimReader);
      }
    }

    // Nothing the victim writes may land after the takeover: its slot must not move either.
    if (slotAtTakeover !== null && !proc.alive) {
      const later = await this.slotOf(victim);
      if (later !== null && later.counter !== slotAtTakeover.counter) {
        res.problems.push(`${victim}'s mailbox slot moved after takeover (counter ${slotAtTakeover.counter} -> ${later.counter})`);
      }
    }

    if (!proc.alive) {
      await proc.waitExit(STOP_WAIT_MS);
      proc.start();
      this.event(`cycle ${cycle}: restarted ${victim} pid ${proc.pid}`);
      run.mark('restart', `cycle ${cycle}: restarted ${victim} (pid ${proc.pid})`, victim);
    }
    return resumedAt !== null ? { from: resumedAt, after: 'SIGCONT' } : { from: this.recording.now(), after: 'restart' };
  }

  /**
   * A paused controller that outlived the takeover (fenceAction "none") is
   * resumed. Reads of blocks the survivor wrote alone are sent to it while
   * it still sleeps: it must not answer them from its old cache (the
   * history records them, so the checker judges whatever it answers). Then
   * its roles are watched: never 'alone', and back to 'mirrored' only in the
   * survivor's epoch or later. Resolves to the time of the SIGCONT.
   */
  private async resume(run: RunHandle, epoch: number, res: CycleResult, sinceMs: number, reader: PagepairClient | null): Promise<number> {
    const { victim } = res;
    const recording = this.recording;
    const proc = this.pair.procs[victim];
    // The survivor must have acknowledged writes alone, or the reads would prove nothing.
    const settleUntil = performance.now() + PROBE_SETTLE_MS_MAX;
    let chunks = recording.chunksWrittenSince(sinceMs);
    while (chunks.length < PROBE_READS && performance.now() < settleUntil) {
      await this.pause(POLL_MS);
      chunks = recording.chunksWrittenSince(sinceMs);
    }
    chunks = chunks.slice(0, PROBE_READS);
    const refusals: Record<string, number> = {};
    const readVia = (r: PagepairClient) => (guid: string, offset: number, length: number) =>
      r.read(guid, offset, length).catch((err: unknown) => {
        const code = isPagepairError(err) ? err.code : 'INTERNAL';
        refusals[code] = (refusals[code] ?? 0) + 1;
        throw err;
      });
    const reads = reader === null ? [] : chunks.map((chunk) => recording.probeRead(chunk, readVia(reader), `paused ${victim}`));
    // Let the requests leave this process before the victim wakes.
    await this.pause(POLL_MS);
    this.event(`cycle ${res.cycle}: SIGCONT ${victim} (${reads.length} reads waiting for it)`);
    run.mark('resume', `SIGCONT ${victim}: resumed, ${reads.length} reads waiting for it`, victim);
    const resumedAt = recording.now();
    proc.resume();
    const answered = (await Promise.all(reads)).filter((v) => v !== null).length;
    const roles: string[] = [];
    const deadline = performance.now() + RESUMED_WATCH_MS;
    while (performance.now() < deadline && proc.alive) {
      const s = await this.status(victim, 500);
      if (s !== null) {
        const seen = `${s.role}@${s.epoch}`;
        if (roles[roles.length - 1] !== seen) roles.push(seen);
        if (s.role === 'alone') res.problems.push(`resumed ${victim} reports 'alone' in epoch ${s.epoch} while its partner serves in epoch ${epoch}`);
        if (s.role === 'mirrored' && s.epoch >= epoch) break;
      }
      await this.pause(POLL_MS);
    }
    res.victimFate =
      `resumed; ${answered} of ${reads.length} reads sent while paused were answered` +
      `${Object.keys(refusals).length > 0 ? ` (refused: ${Object.entries(refusals).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}; roles ${roles.join(' > ') || 'none seen'}` +
      (proc.alive ? '' : `; then ${proc.exitText}`);
    return resumedAt;
  }

  /** Partition mode: the peer link cut, A alone and B fenced (never both alone), held, then healed. Resolves with when the resync starts. */
  private async cutPeerLink(run: RunHandle, res: CycleResult, t0: number): Promise<{ from: number; after: string }> {
    const { cycle } = res;
    const proxy = this.pair.proxy!;
    this.event(`cycle ${cycle}: cut the peer link`);
    run.mark('partition', `cycle ${cycle}: peer link cut (A to B)`);
    proxy.cut();
    let sawBothAlone = false;
    const [a] = await this.waitFor(`cycle ${cycle}: one alone, the other fenced`, this.plan.recoverTimeoutMs, ['A', 'B'], async () => {
      const [sa, sb] = await Promise.all([this.status('A'), this.status('B')]);
      if (sa?.role === 'alone' && sb?.role === 'alone') sawBothAlone = true;
      if (sb?.role === 'alone' && !res.problems.includes(NOT_PREFERRED_ALONE)) res.problems.push(NOT_PREFERRED_ALONE);
      return sa?.role === 'alone' && sb?.role === 'fenced' ? ([sa, sb] as const) : null;
    });
    res.takeoverMs = this.recording.now() - t0;
    res.epoch = a.epoch;
    if (sawBothAlone) res.problems.push('both controllers reported alone at once');
    this.event(`cycle ${cycle}: A alone in epoch ${a.epoch}, B fenced, after ${Math.round(res.takeoverMs)} ms`);
    run.markRole('B', 'fenced', 'fenced', `B fenced itself (${Math.round(res.takeoverMs)} ms after the cut)`);
    run.markRole('A', 'alone', 'takeover', `A serves alone, epoch ${a.epoch} (${Math.round(res.takeoverMs)} ms after the cut)`);
    const bad = await this.checkStoreEpoch('A', a.epoch);
    if (bad !== null) res.problems.push(bad);
    const fencedSlot = await this.slotOf('B');
    await this.pause(PARTITION_HOLD_MS);
    const later = await this.slotOf('B');
    if (fencedSlot !== null && later !== null && later.counter !== fencedSlot.counter) {
      res.problems.push(`fenced B wrote its mailbox slot (counter ${fencedSlot.counter} -> ${later.counter})`);
    }
    const sb = await this.status('B');
    if (sb !== null && sb.role !== 'fenced') res.problems.push(`B left 'fenced' (${sb.role}) while the link was still cut`);
    this.event(`cycle ${cycle}: heal the peer link`);
    run.mark('heal', `cycle ${cycle}: peer link healed`);
    proxy.heal();
    return { from: this.recording.now(), after: 'heal' };
  }

  // ---- step: judge the history

  /** The history written beside the run and checked; reads that got no answer or corrupt data are problems. */
  async judgeHistory(): Promise<void> {
    this.historyPath = join(this.pair.dir, 'history.jsonl');
    await this.recording.writeTo(this.historyPath);
    this.check = checkHistory(this.recording.ops());
    const rb = this.report!.readBack;
    if (rb !== null && rb.errors > 0) this.problems.push(`${rb.errors} reads of the final read-back got no answer`);
    if (this.recording.probes.verifyErrors > 0) this.problems.push(`${this.recording.probes.verifyErrors} reads sent to a paused controller returned corrupt data`);
  }

  // ---- step: compare the quiet pair

  /** Quiet and mirrored, the two must hold the same table and dirty pages, and the same bytes in every page. */
  async compareCopies(): Promise<void> {
    let last = '';
    try {
      await this.waitFor('equal digests when quiet', QUIET_WAIT_MS, ['A', 'B'], async () => {
        const m = await this.bothMirrored();
        if (m === null) {
          last = 'not both mirrored';
          return null;
        }
        const [a, b] = m;
        last = `table ${a.digests.table} / ${b.digests.table}, dirty ${a.digests.dirty} / ${b.digests.dirty}`;
        return a.digests.table === b.digests.table && a.digests.dirty === b.digests.dirty ? true : null;
      });
    } catch (err) {
      if (!(err instanceof WaitFailed)) throw err;
      this.problems.push(`${err.message} (${last})`);
    }
    // Equal digests say nothing of clean pages: compare both copies of every page, as `pagepair verify` does.
    const copies = await verifyCopies(this.pair.addr);
    this.copies = copies;
    if (copies.remaining > 0) {
      this.problems.push(`verify: ${copies.remaining} pages read differently through A and B (first: ${copies.mismatches.slice(0, 3).map((m) => `${m.volume} page ${m.page}`).join(', ')})`);
    }
    this.plan.print(`-- verify: ${copies.pagesChecked} pages compared through A and B, ${copies.remaining} differ${copies.unsettled.length > 0 ? `, ${copies.unsettled.length} busy` : ''}`);
  }

  // ---- step: tear down

  /** Closes the probes and the store, stops both controllers and the proxy; nothing is left running. */
  async tearDown(): Promise<void> {
    const { probes, procs, proxy } = this.pair;
    await Promise.all([probes.A.close(), probes.B.close()]);
    await this.store?.close().catch(() => undefined);
    await Promise.all([procs.A.stop(STOP_WAIT_MS), procs.B.stop(STOP_WAIT_MS)]);
    await proxy?.close();
  }

  // ---- step: sum up

  /** The totals and the verdict; the report and chart written; the working directory removed after a pass unless kept. */
  finish(): KillTestResult {
    const { opts, mode } = this.plan;
    const { cycles, problems, recording, report, check } = this;
    for (const c of cycles) for (const p of c.problems) problems.push(`cycle ${c.cycle}: ${p}`);
    const totals = this.totals();
    if (check !== null && check.verdict === 'inconclusive') problems.push(`the checker could not decide ${check.inconclusive.length} keys`);
    const ok = check !== null && check.verdict === 'linearizable' && totals.verifyErrors === 0 && problems.length === 0 && cycles.length === opts.cycles;
    const keep = opts.keep === true || !ok || !this.pair.madeDir;
    const checkReport = check === null ? null : summarizeCheck(check, keep ? this.historyPath : null);
    const reportFiles = report === null ? null : this.writeReport(report, checkReport, totals, ok);
    if (!keep) rmSync(this.pair.dir, { recursive: true, force: true });
    const copies = this.copies;
    return {
      ok,
      mode,
      seed: opts.seed,
      cycles,
      totals,
      check: checkReport,
      workload:
        report === null
          ? null
          : {
              summary: report.summary,
              ops: report.totals.ops,
              opsPerSec: report.totals.opsPerSec,
              errors: report.totals.errors,
              errorCodes: report.totals.errorCodes,
              verifyErrors: report.totals.verifyErrors,
              verifyFailures: [...report.totals.verifyFailures, ...(report.readBack?.verifyFailures ?? []), ...recording.probes.verifyFailures].slice(0, 20),
              readsVerified: report.totals.readsVerified,
              failovers: report.totals.failovers,
              readBack: report.readBack,
            },
      copies: copies === null ? null : { pagesChecked: copies.pagesChecked, differ: copies.remaining, busy: copies.unsettled.length },
      problems,
      dir: keep ? this.pair.dir : null,
      historyPath: keep ? this.historyPath : null,
      reportPath: reportFiles?.jsonPath ?? null,
      chartPath: reportFiles?.svgPath ?? null,
    };
  }

  private totals(): KillTestTotals {
    const { cycles, recording, report, check } = this;
    const stalls = cycles.map((c) => c.stallMs);
    const takeovers = cycles.flatMap((c) => (c.takeoverMs === null ? [] : [c.takeoverMs]));
    const resyncs = cycles.flatMap((c) => (c.resyncMs === null ? [] : [c.resyncMs]));
    const t = report?.totals ?? null;
    return {
      cycles: cycles.length,
      stallMedianMs: medianOr0(stalls),
      stallMaxMs: Math.max(0, ...stalls),
      takeoverMedianMs: medianOr0(takeovers),
      takeoverMaxMs: Math.max(0, ...takeovers),
      resyncMedianMs: medianOr0(resyncs),
      resyncMaxMs: Math.max(0, ...resyncs),
      ops: t?.ops ?? 0,
      errors: t?.errors ?? 0,
      writesMaybe: recording.writesMaybe,
      lostWrites: check?.byKind['lost-write'] ?? 0,
      staleReads: check?.byKind['stale-read'] ?? 0,
      violations: check?.violations.length ?? 0,
      verifyErrors: (t?.verifyErrors ?? 0) + (report?.readBack?.verifyErrors ?? 0) + recording.probes.verifyErrors,
      inconclusiveKeys: check?.inconclusive.length ?? 0,
    };
  }

  /** The workload report with the checker's verdict and the faults attached, as <out>.json and its chart. */
  private writeReport(report: WorkloadReport, checkReport: HistoryCheckReport | null, totals: KillTestTotals, ok: boolean): { jsonPath: string; svgPath: string } {
    const { opts, mode } = this.plan;
    if (checkReport !== null) attachCheck(report, checkReport);
    const faults: FaultsReport = {
      mode,
      seed: opts.seed,
      cycles: this.cycles,
      totals: {
        cycles: totals.cycles,
        stallMedianMs: totals.stallMedianMs,
        stallMaxMs: totals.stallMaxMs,
        takeoverMedianMs: totals.takeoverMedianMs,
        takeoverMaxMs: totals.takeoverMaxMs,
        resyncMedianMs: totals.resyncMedianMs,
        resyncMaxMs: totals.resyncMaxMs,
      },
      problems: this.problems,
    };
    attachFaults(report, faults);
    // Operations that failed after every retry are maybe-happened writes here, judged by the checker: the verdict is the kill test's.
    report.ok = ok;
    const base = resolveReportBase(opts.out, `workload-reports/kill-test-${mode}-${reportStamp(new Date(report.startedAt))}`);
    return writeReportFiles(report, base);
  }
}

export async function runKillTest(opts: KillTestOptions): Promise<KillTestResult> {
  const plan = planRun(opts);
  const run = new KillTestRun(plan, await setUpPair(plan));
  try {
    await run.startPair();
    await run.runLoad();
    await run.judgeHistory();
    if (!run.failedHard) await run.compareCopies();
  } finally {
    await run.tearDown();
  }
  return run.finish();
}

/** The `kill-test` command, ready for program.addCommand(killTestCommand()). */
export function killTestCommand(): Command {
  const cmd = new Command('kill-test')
    .description('run a real pair under the workload generator, kill, pause or partition it again and again, check the history, and write a workload report and chart')
    .option('-n, --cycles <n>', 'how many faults', '5')
    .addOption(new Option('-m, --mode <mode>', 'the fault: SIGKILL, SIGSTOP past the timeout, or a cut peer link').choices(['kill', 'pause', 'partition']).default('kill'));
  addRunDirOptions(cmd, { help: 'seed of the waits and the workload', default: '1' }, 'configurations, store, logs, history');
  cmd
    .option('--out <base|dir>', 'write the report to <base>.json and the chart to <base>.svg, or both into a directory (default workload-reports/kill-test-<mode>-<time>)')
    .option('--clients <n>', 'client connections of the load, half starting on each controller', '4')
    .addOption(new Option('--transport <ws|nbd>', "how the load reaches the pair: pagepair's client protocol, or NBD (each controller serves NBD; requests lost with a controller go to the other)").choices(['ws', 'nbd']).default('ws'))
    .option('--tls-psk-file <path>', 'with --transport nbd: NBD over TLS; both controllers run with tls.mode "on" and this psktool key file (tls.pskFile; identity:hexkey lines, mode 0600), and the NBD load connects with STARTTLS and a key of it')
    .option('--tls-identity <name>', NBD_TLS_IDENTITY_HELP)
    .option('--contend', 'let clients on A and B hit the same block at the same moment (reads then judged by the checker alone)')
    .option('-i, --inflight <n>', 'operations in flight per client', '4')
    .option('--blocks <n>', 'blocks of the working set', '1024')
    .option('--block <bytes>', 'bytes per block (random reads and writes of one block)', '4KiB')
    .option('-r, --read-pct <percent>', 'share of reads', '50')
    .option('--interval <ms>', 'one step of the progress lines, the time series and the chart, in ms', '500');
  addPairTimingOptions(cmd);
  return cmd
    .option('--tls', 'run both controllers with tls.mode "require": the peer link and the load over TLS-PSK (--transport ws only)')
    .addOption(new Option('--fence-action <action>', 'arbitration.fenceAction of both (default: kill, none for partitions)').choices(['kill', 'none']))
    .option('--json', 'print the result as JSON (per-cycle lines go to standard error)')
    .action(async (opts: Record<string, string | boolean | undefined>) => {
      const json = opts.json === true;
      const signal = abortOnSignals();
      const nbdTls = nbdTlsChoice(opts);
      const r = await runKillTest({
        cycles: parsePositiveInt(String(opts.cycles), 'cycles', 100_000),
        mode: opts.mode as KillMode,
        seed: parsePositiveInt(String(opts.seed), 'seed', 0xffff_ffff),
        ...runDirAndTimings(opts),
        ...(typeof opts.out === 'string' ? { out: opts.out } : {}),
        clients: parsePositiveInt(String(opts.clients), 'clients', 1024),
        transport: opts.transport as 'ws' | 'nbd',
        ...(nbdTls !== undefined ? { nbdTls } : {}),
        contend: opts.contend === true,
        inflight: parsePositiveInt(String(opts.inflight), 'inflight', 4096),
        blocks: parsePositiveInt(String(opts.blocks), 'blocks', 1 << 20),
        blockBytes: parseSize(String(opts.block), 'block'),
        readPct: parseNumberInRange(String(opts.readPct), 'read-pct', 0, 100),
        intervalMs: parseNumberInRange(String(opts.interval), 'interval', 100, 60_000),
        tls: opts.tls === true,
        ...(typeof opts.fenceAction === 'string' ? { fenceAction: opts.fenceAction as 'kill' | 'none' } : {}),
        print: linePrinter(json),
        note: (line) => console.error(line),
        signal,
      });
      printVerdict(r, json, formatTotals);
    });
}
