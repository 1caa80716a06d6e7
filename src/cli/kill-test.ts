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

import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { checkHistory, type CheckResult } from '../checker/linearizability.js';
import { PagepairClient, type ControllerAddress } from '../client/client.js';
import { resolveNbdTls, type NbdTlsChoice } from '../client/nbd-client.js';
import { Prng } from '../core/prng.js';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import type { ControllerStatus } from '../runtime/controller-process.js';
import { FileDevice } from '../store/file-device.js';
import { PageStore } from '../store/page-store.js';
import { runVerify, type VerifyResult } from './verify-run.js';
import { clientsTarget } from './verify.js';
import type { MailboxSlot } from '../store/types.js';
import { TcpProxy } from '../testing/tcp-proxy.js';
import { validateJob, type JobInput, type JobSpec, type Transport } from '../workload/job.js';
import { progressPrinter } from '../workload/progress.js';
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
import { spawnController } from '../runtime/spawn-controller.js';
import { freePort } from '../testing/free-port.js';

const HOST = '127.0.0.1';
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
// Processes and probes

class ControllerProcess {
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  starts = 0;

  constructor(
    readonly letter: Letter,
    private readonly configPath: string,
    private readonly logPath: string,
    private readonly pidPath: string,
  ) {}

  start(): void {
    const child = spawnController(this.configPath, this.logPath);
    this.child = child;
    this.starts++;
    this.exited = new Promise((done) => child.once('exit', () => done()));
    if (child.pid !== undefined) writeFileSync(this.pidPath, `${child.pid}\n`);
  }

  get pid(): number {
    return this.child?.pid ?? 0;
  }

  logTail(lines: number): string {
    try {
      const text = readFileSync(this.logPath, 'utf8');
      return text.trimEnd().split('\n').slice(-lines).map((l) => `    ${l.slice(0, 300)}`).join('\n');
    } catch {
      return '    (no log)';
    }
  }

  get alive(): boolean {
    const c = this.child;
    return c !== null && c.exitCode === null && c.signalCode === null;
  }

  /** How it ended, once it did. */
  get exitText(): string {
    const c = this.child;
    if (c === null) return 'never started';
    if (c.signalCode !== null) return `killed by ${c.signalCode}`;
    if (c.exitCode !== null) return `exited with ${c.exitCode}`;
    return 'running';
  }

  signal(sig: NodeJS.Signals): void {
    if (this.alive) this.child!.kill(sig);
  }

  /** True when it exited within ms. */
  async waitExit(ms: number): Promise<boolean> {
    if (!this.alive) return true;
    // The timer is cancelled once the process is gone, or it alone would keep this process alive for `ms`.
    const cancel = new AbortController();
    const timer = sleep(ms, false, { signal: cancel.signal }).catch(() => false);
    try {
      return await Promise.race([this.exited.then(() => true), timer]);
    } finally {
      cancel.abort();
    }
  }

  /** SIGTERM, then SIGKILL after STOP_WAIT_MS. Never leaves the process behind. */
  async stop(): Promise<void> {
    if (!this.alive) return;
    this.signal('SIGCONT');
    this.signal('SIGTERM');
    if (!(await this.waitExit(STOP_WAIT_MS))) {
      this.signal('SIGKILL');
      await this.waitExit(STOP_WAIT_MS);
    }
  }
}

/** Asks one controller for its status over a connection kept between polls. */
class StatusProbe {
  private client: PagepairClient | null = null;

  constructor(private readonly addr: ControllerAddress) {}

  /** null when the controller does not answer within timeoutMs. */
  async get(timeoutMs = 1000): Promise<ControllerStatus | null> {
    try {
      if (this.client === null || !this.client.isOpen) {
        this.client = null;
        this.client = await PagepairClient.connect({ host: this.addr.host, port: this.addr.port, token: this.addr.token, tls: this.addr.tls === true, name: 'pagepair-kill-test', timeoutMs });
      }
      return (await this.client.status()) as ControllerStatus;
    } catch {
      this.drop();
      return null;
    }
  }

  drop(): void {
    const c = this.client;
    this.client = null;
    void c?.close().catch(() => undefined);
  }

  async close(): Promise<void> {
    const c = this.client;
    this.client = null;
    await c?.close().catch(() => undefined);
  }
}

function median(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

class RecoveryTimeout extends Error {}

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

export async function runKillTest(opts: KillTestOptions): Promise<KillTestResult> {
  const heartbeatIntervalMs = opts.heartbeatIntervalMs ?? 100;
  const partnerTimeoutMs = opts.partnerTimeoutMs ?? 500;
  const recoverTimeoutMs = opts.recoverTimeoutMs ?? 30_000;
  const print = opts.print ?? ((line: string) => console.log(line));
  const note = opts.note ?? (() => undefined);
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

  const madeDir = opts.dir === undefined;
  const dir = opts.dir !== undefined ? resolve(opts.dir) : mkdtempSync(join(tmpdir(), 'pagepair-kill-'));
  mkdirSync(dir, { recursive: true });
  const eventsPath = join(dir, 'events.log');
  const event = (text: string): void => appendFileSync(eventsPath, `${new Date().toISOString()} ${text}\n`);
  const signal = opts.signal;
  // Set when the load stopped under the cycles (the runner failed): they stop too.
  let loadGone: unknown = null;
  const checkAbort = (): void => {
    if (signal?.aborted === true) throw new PagepairError('SHUTTING_DOWN', 'kill test interrupted');
    if (loadGone !== null) throw new PagepairError('INTERNAL', 'the load stopped', 'workload');
  };
  const pause = async (waitMs: number): Promise<void> => {
    checkAbort();
    await sleep(waitMs, undefined, signal !== undefined ? { signal } : {}).catch(() => undefined);
    checkAbort();
  };

  // ---- configuration
  const ports = { aClient: await freePort(), aPeer: await freePort(), bClient: await freePort(), bPeer: await freePort(), proxy: await freePort() };
  if (opts.tls === true && job.transport === 'nbd') {
    throw new PagepairError('BAD_FIELD', '--tls runs the WebSocket load over TLS; with --transport nbd NBD would need its own keys (tls.pskFile)', 'tls');
  }
  const nbd = job.transport === 'nbd' ? { A: await freePort(), B: await freePort() } : null;
  if (opts.nbdTls !== undefined && (nbd === null || opts.nbdTls.pskFile === undefined)) {
    throw new PagepairError('BAD_FIELD', 'a TLS key file for NBD (--tls-psk-file) needs --transport nbd', 'tlsPskFile');
  }
  // Read now: a bad key file stops the run before anything starts.
  const nbdTls = opts.nbdTls !== undefined ? resolveNbdTls(opts.nbdTls) : undefined;
  const nbdTlsFile = opts.nbdTls?.pskFile !== undefined ? resolve(opts.nbdTls.pskFile) : undefined;
  const nbdTlsPart = nbdTls !== undefined ? { tls: nbdTls } : {};
  const pairId = randomUUID();
  const token = `kill-test-${randomUUID().slice(0, 8)}`;
  const fenceAction = opts.fenceAction ?? (mode === 'partition' ? 'none' : 'kill');
  const configOf = (id: Letter): Record<string, unknown> => {
    const self = id === 'A' ? { client: ports.aClient, peer: ports.aPeer } : { client: ports.bClient, peer: ports.bPeer };
    const other = id === 'A' ? { client: ports.bClient, peer: ports.bPeer } : { client: ports.aClient, peer: ports.aPeer };
    // A dials B: in partition mode A's way to B runs through the proxy, so cutting it cuts the peer link only.
    const partnerPeer = id === 'A' && mode === 'partition' ? ports.proxy : other.peer;
    return {
      id,
      pairId,
      secret: `kill-test-peer-secret-${pairId}`,
      clientToken: token,
      listen: { client: { host: HOST, port: self.client }, peer: { host: HOST, port: self.peer }, ...(nbd !== null ? { nbd: { host: HOST, port: nbd[id] } } : {}) },
      partner: { id: id === 'A' ? 'B' : 'A', client: { host: HOST, port: other.client }, peer: { host: HOST, port: partnerPeer } },
      store: { path: join(dir, 'pair.store'), sizeBytes: 256 * 1024 * 1024 },
      cache: { cacheBytesMax: 64 * 1024 * 1024, dirtyAgeMaxMs: 1000 },
      heartbeatIntervalMs,
      partnerTimeoutMs,
      arbitration: { preferred: 'A', fenceAction },
      ...(opts.tls === true || nbdTlsFile !== undefined
        ? { tls: { mode: opts.tls === true ? 'require' : 'on', ...(nbdTlsFile !== undefined ? { pskFile: nbdTlsFile } : {}) } }
        : {}),
      log: { level: 'info' },
    };
  };
  const paths = { A: join(dir, 'a.json'), B: join(dir, 'b.json') };
  writeFileSync(paths.A, JSON.stringify(configOf('A'), null, 2));
  writeFileSync(paths.B, JSON.stringify(configOf('B'), null, 2));
  const addr: Record<Letter, ControllerAddress> = {
    A: { id: 'A', host: HOST, port: ports.aClient, token, tls: opts.tls === true },
    B: { id: 'B', host: HOST, port: ports.bClient, token, tls: opts.tls === true },
  };
  const idOf: Record<Letter, 1 | 2> = { A: 1, B: 2 };
  const other = (l: Letter): Letter => (l === 'A' ? 'B' : 'A');

  const procs: Record<Letter, ControllerProcess> = {
    A: new ControllerProcess('A', paths.A, join(dir, 'a.log'), join(dir, 'A.pid')),
    B: new ControllerProcess('B', paths.B, join(dir, 'b.log'), join(dir, 'B.pid')),
  };
  const probes: Record<Letter, StatusProbe> = { A: new StatusProbe(addr.A), B: new StatusProbe(addr.B) };
  const proxy = mode === 'partition' ? new TcpProxy({ host: HOST, port: ports.bPeer }, { host: HOST, port: ports.proxy }) : null;
  const recording = new Recording({ seed: opts.seed, killTest: mode, cycles: opts.cycles, blocks, blockBytes, transport: job.transport, contend: job.contend });
  let store: PageStore | null = null;
  let report: WorkloadReport | null = null;
  let check: CheckResult | null = null;
  /** Both controllers' copies of every page compared at the end (null: not reached). */
  let copies: VerifyResult | null = null;
  const cycles: CycleResult[] = [];
  const problems: string[] = [];
  let historyPath: string | null = null;

  const status = (l: Letter, timeoutMs = 1000): Promise<ControllerStatus | null> => probes[l].get(timeoutMs);

  /** Polls until probe returns a value; RecoveryTimeout after timeoutMs. */
  const waitUntil = async <T>(what: string, timeoutMs: number, probe: () => Promise<T | null>): Promise<T> => {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      checkAbort();
      const v = await probe();
      if (v !== null) return v;
      if (performance.now() > deadline) throw new RecoveryTimeout(`${what}: not within ${timeoutMs} ms`);
      await pause(POLL_MS);
    }
  };

  /** A controller that died on the way (a crash at start, say) will not come back by waiting. */
  const mustLive = (l: Letter): void => {
    if (!procs[l].alive) throw new RecoveryTimeout(`${l} ${procs[l].exitText} while it should be serving; its log ends:\n${procs[l].logTail(8)}`);
  };

  const bothMirrored = async (): Promise<[ControllerStatus, ControllerStatus] | null> => {
    mustLive('A');
    mustLive('B');
    const [a, b] = await Promise.all([status('A'), status('B')]);
    return a?.role === 'mirrored' && b?.role === 'mirrored' ? [a, b] : null;
  };

  /** The store's epoch record must name the survivor and its epoch. */
  const checkStoreEpoch = async (survivor: Letter, epoch: number): Promise<string | null> => {
    if (store === null) return 'store not open';
    let seen = 'nothing';
    for (let i = 0; i < 10; i++) {
      const mb = await store.readMailbox();
      const rec = mb.epoch;
      if (rec !== null && rec.epoch === epoch && rec.activeId === idOf[survivor]) return null;
      seen = rec === null ? 'no epoch record' : `epoch ${rec.epoch}, active ${rec.activeId}`;
      await pause(POLL_MS);
    }
    return `store's epoch record shows ${seen}; survivor ${survivor} serves in epoch ${epoch}`;
  };

  const slotOf = async (l: Letter): Promise<MailboxSlot | null> => (store === null ? null : ((await store.readMailbox()).slots[idOf[l] - 1] ?? null));

  const startBoth = (): void => {
    for (const l of ['A', 'B'] as const) {
      procs[l].start();
      event(`start ${l} pid ${procs[l].pid}`);
    }
  };

  const directClient = async (l: Letter): Promise<PagepairClient | null> =>
    PagepairClient.connect({ ...addr[l], name: 'pagepair-kill-test-probe', timeoutMs: PROBE_READ_TIMEOUT_MS }).catch(() => null);

  /**
   * A paused controller that outlived the takeover (fenceAction "none") is
   * resumed. Reads of blocks the survivor wrote alone are sent to it while
   * it still sleeps: it must not answer them from its old cache (the
   * history records them, so the checker judges whatever it answers). Then
   * its roles are watched: never 'alone', and back to 'mirrored' only in the
   * survivor's epoch or later. Resolves to the time of the SIGCONT.
   */
  const resume = async (run: RunHandle, victim: Letter, epoch: number, res: CycleResult, sinceMs: number, reader: PagepairClient | null): Promise<number> => {
    // The survivor must have acknowledged writes alone, or the reads would prove nothing.
    const settleUntil = performance.now() + PROBE_SETTLE_MS_MAX;
    let chunks = recording.chunksWrittenSince(sinceMs);
    while (chunks.length < PROBE_READS && performance.now() < settleUntil) {
      await pause(POLL_MS);
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
    await pause(POLL_MS);
    event(`cycle ${res.cycle}: SIGCONT ${victim} (${reads.length} reads waiting for it)`);
    run.mark('resume', `SIGCONT ${victim}: resumed, ${reads.length} reads waiting for it`, victim);
    const resumedAt = recording.now();
    procs[victim].signal('SIGCONT');
    const answered = (await Promise.all(reads)).filter((v) => v !== null).length;
    const roles: string[] = [];
    const deadline = performance.now() + RESUMED_WATCH_MS;
    while (performance.now() < deadline && procs[victim].alive) {
      const s = await status(victim, 500);
      if (s !== null) {
        const seen = `${s.role}@${s.epoch}`;
        if (roles[roles.length - 1] !== seen) roles.push(seen);
        if (s.role === 'alone') res.problems.push(`resumed ${victim} reports 'alone' in epoch ${s.epoch} while its partner serves in epoch ${epoch}`);
        if (s.role === 'mirrored' && s.epoch >= epoch) break;
      }
      await pause(POLL_MS);
    }
    res.victimFate =
      `resumed; ${answered} of ${reads.length} reads sent while paused were answered` +
      `${Object.keys(refusals).length > 0 ? ` (refused: ${Object.entries(refusals).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}; roles ${roles.join(' > ') || 'none seen'}` +
      (procs[victim].alive ? '' : `; then ${procs[victim].exitText}`);
    return resumedAt;
  };

  const runCycle = async (run: RunHandle, cycle: number, victim: Letter, rng: Prng): Promise<CycleResult> => {
    const survivor = other(victim);
    const res: CycleResult = { cycle, mode, victim, survivor, stallMs: 0, takeoverMs: null, resyncMs: null, epoch: null, ops: 0, errors: 0, problems: [] };
    await pause(500 + rng.below(1501));
    // In pause mode a connection to the victim made beforehand carries reads sent while it sleeps.
    const victimReader: PagepairClient | null = mode === 'pause' ? await directClient(victim) : null;
    const t0 = recording.now();
    let resumedAt: number | null = null;
    try {
      let resyncFrom: number;
      if (mode === 'kill' || mode === 'pause') {
        const sig = mode === 'kill' ? 'SIGKILL' : 'SIGSTOP';
        event(`cycle ${cycle}: ${sig} ${victim} pid ${procs[victim].pid}`);
        run.mark(mode, `cycle ${cycle}: ${sig} ${victim} (pid ${procs[victim].pid})`, victim);
        procs[victim].signal(sig);
        const st = await waitUntil(`cycle ${cycle}: ${survivor} taking over`, recoverTimeoutMs, async () => {
          mustLive(survivor);
          const s = await status(survivor);
          return s?.role === 'alone' ? s : null;
        });
        const tTakeover = recording.now();
        res.takeoverMs = tTakeover - t0;
        res.epoch = st.epoch;
        event(`cycle ${cycle}: ${survivor} alone in epoch ${st.epoch} after ${Math.round(res.takeoverMs)} ms`);
        run.markRole(survivor, 'alone', 'takeover', `${survivor} serves alone, epoch ${st.epoch} (${Math.round(res.takeoverMs)} ms after the ${sig})`);
        const bad = await checkStoreEpoch(survivor, st.epoch);
        if (bad !== null) res.problems.push(bad);
        const slotAtTakeover = await slotOf(victim);
        if (slotAtTakeover !== null && slotAtTakeover.epoch >= st.epoch) {
          res.problems.push(`${victim}'s mailbox slot is in epoch ${slotAtTakeover.epoch}, not older than the survivor's ${st.epoch}`);
        }

        if (mode === 'pause') {
          // With fenceAction "kill" the survivor ends the paused process; give the exit a moment to be seen.
          await procs[victim].waitExit(300);
          if (!procs[victim].alive) {
            res.victimFate = `fenced: ${procs[victim].exitText}`;
          } else {
            resumedAt = await resume(run, victim, st.epoch, res, tTakeover, victimReader);
          }
        }

        // Nothing the victim writes may land after the takeover: its slot must not move either.
        if (slotAtTakeover !== null && !procs[victim].alive) {
          const later = await slotOf(victim);
          if (later !== null && later.counter !== slotAtTakeover.counter) {
            res.problems.push(`${victim}'s mailbox slot moved after takeover (counter ${slotAtTakeover.counter} -> ${later.counter})`);
          }
        }

        if (!procs[victim].alive) {
          await procs[victim].waitExit(STOP_WAIT_MS);
          procs[victim].start();
          event(`cycle ${cycle}: restarted ${victim} pid ${procs[victim].pid}`);
          run.mark('restart', `cycle ${cycle}: restarted ${victim} (pid ${procs[victim].pid})`, victim);
        }
        resyncFrom = resumedAt ?? recording.now();
      } else {
        event(`cycle ${cycle}: cut the peer link`);
        run.mark('partition', `cycle ${cycle}: peer link cut (A to B)`);
        proxy!.cut();
        let sawBothAlone = false;
        const [a] = await waitUntil(`cycle ${cycle}: one alone, the other fenced`, recoverTimeoutMs, async () => {
          mustLive('A');
          mustLive('B');
          const [sa, sb] = await Promise.all([status('A'), status('B')]);
          if (sa?.role === 'alone' && sb?.role === 'alone') sawBothAlone = true;
          if (sb?.role === 'alone' && !res.problems.includes(NOT_PREFERRED_ALONE)) res.problems.push(NOT_PREFERRED_ALONE);
          return sa?.role === 'alone' && sb?.role === 'fenced' ? ([sa, sb] as const) : null;
        });
        res.takeoverMs = recording.now() - t0;
        res.epoch = a.epoch;
        if (sawBothAlone) res.problems.push('both controllers reported alone at once');
        event(`cycle ${cycle}: A alone in epoch ${a.epoch}, B fenced, after ${Math.round(res.takeoverMs)} ms`);
        run.markRole('B', 'fenced', 'fenced', `B fenced itself (${Math.round(res.takeoverMs)} ms after the cut)`);
        run.markRole('A', 'alone', 'takeover', `A serves alone, epoch ${a.epoch} (${Math.round(res.takeoverMs)} ms after the cut)`);
        const bad = await checkStoreEpoch('A', a.epoch);
        if (bad !== null) res.problems.push(bad);
        const fencedSlot = await slotOf('B');
        await pause(PARTITION_HOLD_MS);
        const later = await slotOf('B');
        if (fencedSlot !== null && later !== null && later.counter !== fencedSlot.counter) {
          res.problems.push(`fenced B wrote its mailbox slot (counter ${fencedSlot.counter} -> ${later.counter})`);
        }
        const sb = await status('B');
        if (sb !== null && sb.role !== 'fenced') res.problems.push(`B left 'fenced' (${sb.role}) while the link was still cut`);
        event(`cycle ${cycle}: heal the peer link`);
        run.mark('heal', `cycle ${cycle}: peer link healed`);
        proxy!.heal();
        resyncFrom = recording.now();
      }
      const [ma] = await waitUntil(`cycle ${cycle}: both mirrored again`, recoverTimeoutMs, bothMirrored);
      res.resyncMs = recording.now() - resyncFrom;
      event(`cycle ${cycle}: mirrored again after ${Math.round(res.resyncMs)} ms`);
      for (const l of [victim, survivor]) run.markRole(l, 'mirrored', 'mirrored', `${l} mirrored again, epoch ${ma.epoch} (${Math.round(res.resyncMs)} ms after the ${mode === 'partition' ? 'heal' : mode === 'pause' && resumedAt !== null ? 'SIGCONT' : 'restart'})`);
    } catch (err) {
      if (!(err instanceof RecoveryTimeout)) throw err;
      res.problems.push(err.message);
      event(err.message);
      run.mark('note', `cycle ${cycle}: ${err.message.split('\n')[0]!}`);
    } finally {
      await victimReader?.close().catch(() => undefined);
    }
    const t1 = recording.now();
    res.stallMs = recording.stallMs(t0, t1);
    res.ops = recording.completedBetween(t0, t1);
    res.errors = recording.errorsBetween(t0, t1);
    return res;
  };

  let failedHard = false;
  const runCycles = async (run: RunHandle): Promise<void> => {
    const rng = new Prng(opts.seed ^ 0x6b696c6c);
    for (let cycle = 1; cycle <= opts.cycles; cycle++) {
      // Partitions always leave B fenced (A is preferred); kills and pauses alternate.
      const victim: Letter = mode === 'partition' ? 'B' : cycle % 2 === 1 ? 'A' : 'B';
      const c = await runCycle(run, cycle, victim, rng);
      cycles.push(c);
      print(formatCycle(c));
      if (c.resyncMs === null) {
        failedHard = true;
        problems.push(`cycle ${cycle} did not recover; stopping`);
        break;
      }
    }
    // A moment of mirrored service after the last recovery, on the chart too.
    await pause(300);
  };

  let reportFiles: { jsonPath: string; svgPath: string } | null = null;
  try {
    if (proxy !== null) await proxy.start();
    note(`working directory ${dir}`);
    startBoth();
    try {
      await waitUntil('both controllers mirrored at start', recoverTimeoutMs, bothMirrored);
    } catch (err) {
      if (err instanceof RecoveryTimeout) throw new PagepairError('TIMEOUT', `${err.message} (logs in ${dir})`);
      throw err;
    }
    store = await PageStore.open(await FileDevice.open(join(dir, 'pair.store')), { pairId, name: 'pair.store' });

    // Settles to the cycles' error (or null), never rejects: nothing waits on it until the run is over.
    let cyclesDone: Promise<unknown> | null = null;
    try {
      report = await runWorkloadJob([addr.A, addr.B], job, {
        record: recording,
        // A request stuck on a paused controller is retried on the other after this; a cycle that does not recover ends the run anyway.
        client: { requestTimeoutMs: Math.max(1000, 2 * partnerTimeoutMs), retryForMs: recoverTimeoutMs, retryIntervalMs: 10 },
        monitorPollMs: MONITOR_POLL_MS,
        ...(nbd !== null ? { nbd: [{ id: 'A', host: HOST, port: nbd.A, ...nbdTlsPart }, { id: 'B', host: HOST, port: nbd.B, ...nbdTlsPart }] } : {}),
        onProgress: progressPrinter(opts.progress ?? print),
        ...(signal !== undefined ? { signal } : {}),
        onStart: (run) => {
          cyclesDone = runCycles(run)
            .then(
              () => null,
              (err: unknown) => err,
            )
            .finally(() => run.stop());
        },
      });
    } catch (err) {
      loadGone = err;
      throw err;
    } finally {
      // The cycles end with the run (and stop when it failed under them).
      const cyclesErr = cyclesDone === null ? null : await (cyclesDone as Promise<unknown>);
      if (cyclesErr !== null && loadGone === null) {
        // Interrupted, the report still tells what ran; anything else is the run's error.
        if (!isPagepairError(cyclesErr, 'SHUTTING_DOWN')) throw cyclesErr;
        failedHard = true;
        problems.push('interrupted before the last cycle');
      }
    }

    historyPath = join(dir, 'history.jsonl');
    await recording.writeTo(historyPath);
    check = checkHistory(recording.ops());
    const rb = report.readBack;
    if (rb !== null && rb.errors > 0) problems.push(`${rb.errors} reads of the final read-back got no answer`);
    if (recording.probes.verifyErrors > 0) problems.push(`${recording.probes.verifyErrors} reads sent to a paused controller returned corrupt data`);

    if (!failedHard) {
      // Quiet and mirrored, the two must hold the same table and the same dirty pages.
      let last = '';
      try {
        await waitUntil('equal digests when quiet', QUIET_WAIT_MS, async () => {
          const m = await bothMirrored();
          if (m === null) {
            last = 'not both mirrored';
            return null;
          }
          const [a, b] = m;
          last = `table ${a.digests.table} / ${b.digests.table}, dirty ${a.digests.dirty} / ${b.digests.dirty}`;
          return a.digests.table === b.digests.table && a.digests.dirty === b.digests.dirty ? true : null;
        });
      } catch (err) {
        if (!(err instanceof RecoveryTimeout)) throw err;
        problems.push(`${err.message} (${last})`);
      }
      // Equal digests say nothing of clean pages: compare both copies of every page, as `pagepair verify` does.
      copies = await verifyCopies(addr);
      if (copies.remaining > 0) {
        problems.push(`verify: ${copies.remaining} pages read differently through A and B (first: ${copies.mismatches.slice(0, 3).map((m) => `${m.volume} page ${m.page}`).join(', ')})`);
      }
      print(`-- verify: ${copies.pagesChecked} pages compared through A and B, ${copies.remaining} differ${copies.unsettled.length > 0 ? `, ${copies.unsettled.length} busy` : ''}`);
    }
  } finally {
    await Promise.all([probes.A.close(), probes.B.close()]);
    await store?.close().catch(() => undefined);
    await Promise.all([procs.A.stop(), procs.B.stop()]);
    await proxy?.close();
  }

  for (const c of cycles) for (const p of c.problems) problems.push(`cycle ${c.cycle}: ${p}`);
  const stalls = cycles.map((c) => c.stallMs);
  const takeovers = cycles.flatMap((c) => (c.takeoverMs === null ? [] : [c.takeoverMs]));
  const resyncs = cycles.flatMap((c) => (c.resyncMs === null ? [] : [c.resyncMs]));
  const t = report?.totals ?? null;
  const verifyErrors = (t?.verifyErrors ?? 0) + (report?.readBack?.verifyErrors ?? 0) + recording.probes.verifyErrors;
  const totals: KillTestTotals = {
    cycles: cycles.length,
    stallMedianMs: median(stalls),
    stallMaxMs: Math.max(0, ...stalls),
    takeoverMedianMs: median(takeovers),
    takeoverMaxMs: Math.max(0, ...takeovers),
    resyncMedianMs: median(resyncs),
    resyncMaxMs: Math.max(0, ...resyncs),
    ops: t?.ops ?? 0,
    errors: t?.errors ?? 0,
    writesMaybe: recording.writesMaybe,
    lostWrites: check?.byKind['lost-write'] ?? 0,
    staleReads: check?.byKind['stale-read'] ?? 0,
    violations: check?.violations.length ?? 0,
    verifyErrors,
    inconclusiveKeys: check?.inconclusive.length ?? 0,
  };
  if (check !== null && check.verdict === 'inconclusive') problems.push(`the checker could not decide ${check.inconclusive.length} keys`);
  const ok = check !== null && check.verdict === 'linearizable' && totals.verifyErrors === 0 && problems.length === 0 && cycles.length === opts.cycles;
  const keep = opts.keep === true || !ok || !madeDir;
  const checkReport = check === null ? null : summarizeCheck(check, keep ? historyPath : null);

  if (report !== null) {
    if (checkReport !== null) attachCheck(report, checkReport);
    const faults: FaultsReport = {
      mode,
      seed: opts.seed,
      cycles,
      totals: {
        cycles: totals.cycles,
        stallMedianMs: totals.stallMedianMs,
        stallMaxMs: totals.stallMaxMs,
        takeoverMedianMs: totals.takeoverMedianMs,
        takeoverMaxMs: totals.takeoverMaxMs,
        resyncMedianMs: totals.resyncMedianMs,
        resyncMaxMs: totals.resyncMaxMs,
      },
      problems,
    };
    attachFaults(report, faults);
    // Operations that failed after every retry are maybe-happened writes here, judged by the checker: the verdict is the kill test's.
    report.ok = ok;
    const base = resolveReportBase(opts.out, `workload-reports/kill-test-${mode}-${reportStamp(new Date(report.startedAt))}`);
    reportFiles = writeReportFiles(report, base);
  }
  if (!keep) rmSync(dir, { recursive: true, force: true });
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
    dir: keep ? dir : null,
    historyPath: keep ? historyPath : null,
    reportPath: reportFiles?.jsonPath ?? null,
    chartPath: reportFiles?.svgPath ?? null,
  };
}
