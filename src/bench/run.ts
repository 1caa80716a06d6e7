// One benchmark run from start to end: start every row's processes, measure
// every cell `runs` times in rounds (round k measures every cell once, so a
// burst of noise on the machine spreads over all rows instead of spoiling
// one), take medians, check the targets, and stop everything whatever
// happened.

import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, hostname, loadavg, platform, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createRequire } from 'node:module';
import { PagepairError } from '../protocol/errors.js';
import { readProfile, summarizeProfile, workByWindow, type CpuProfile } from './cpu-profile.js';
import { driveRun } from './driver.js';
import { frameSizes } from './frames.js';
import { ChildGroup } from './processes.js';
import { findRedisServer, REDIS_MISSING_NOTE, startRedisRig } from './redis-rig.js';
import { startEchoRig, startPagepairRig, startRelayRig, type Rig, type RigSettings } from './rigs.js';
import { checkTargets, medianOfRuns, medianServerCpu, memoryCheck } from './stats.js';
import {
  BENCH_CONFIGS,
  BENCH_OPS,
  CONFIG_TITLES,
  WRITE_ONLY_CONFIGS,
  type BenchOptions,
  type BenchReport,
  type CellResult,
  type ControllerMemory,
  type MachineInfo,
  type BenchOp,
  type ProfilePerOp,
  type RunResult,
} from './types.js';

const MiB = 1024 * 1024;
export const BENCH_DEFAULTS = Object.freeze({
  runs: 3,
  seconds: 3,
  warmupSeconds: 1,
  inflight: [1, 32],
  blockBytes: 4096,
  workingSetBytes: 64 * MiB,
  cacheBytesMax: 256 * MiB,
  connections: 4,
  mirroredTarget: 'both' as const,
  seed: 1,
  rssOverheadBytesMax: 128 * MiB,
});

/** Controllers get this long to destage and exit (and write a CPU profile) before SIGKILL. */
const STOP_GRACE_MS = 20_000;
export const JOURNAL_NOTE = 'mirrored pair with a journal: not built yet';

type Settings = BenchReport['settings'];

function bad(field: string, what: string, got: unknown): PagepairError {
  return new PagepairError('BAD_FIELD', `${field} must be ${what}, got ${JSON.stringify(got)}`, field);
}

/** Fills defaults and refuses what makes no sense, naming the option. */
export function benchSettings(o: BenchOptions): Settings {
  const runs = o.runs ?? BENCH_DEFAULTS.runs;
  if (!Number.isInteger(runs) || runs < 1 || runs > 100) throw bad('runs', 'a whole number from 1 to 100', runs);
  const seconds = o.seconds ?? BENCH_DEFAULTS.seconds;
  if (typeof seconds !== 'number' || !(seconds > 0) || seconds > 3600) throw bad('seconds', 'a number of seconds above 0 and at most 3600', seconds);
  const warmupSeconds = o.warmupSeconds ?? BENCH_DEFAULTS.warmupSeconds;
  if (typeof warmupSeconds !== 'number' || !(warmupSeconds >= 0) || warmupSeconds > 600) throw bad('warmupSeconds', 'a number of seconds from 0 to 600', warmupSeconds);
  const inflight = o.inflight ?? [...BENCH_DEFAULTS.inflight];
  if (!Array.isArray(inflight) || inflight.length === 0 || inflight.some((n) => !Number.isInteger(n) || n < 1 || n > 4096)) {
    throw bad('inflight', 'a list of whole numbers from 1 to 4096', inflight);
  }
  const ops = o.ops ?? [...BENCH_OPS];
  if (!Array.isArray(ops) || ops.length === 0 || ops.some((op) => !BENCH_OPS.includes(op))) throw bad('ops', `a list of ${BENCH_OPS.join(', ')}`, ops);
  const configs = o.configs ?? [...BENCH_CONFIGS];
  if (!Array.isArray(configs) || configs.length === 0 || configs.some((c) => !BENCH_CONFIGS.includes(c))) {
    throw bad('configs', `a list of ${BENCH_CONFIGS.join(', ')}`, configs);
  }
  const blockBytes = o.blockBytes ?? BENCH_DEFAULTS.blockBytes;
  if (!Number.isInteger(blockBytes) || blockBytes < 512 || blockBytes > MiB || (blockBytes & (blockBytes - 1)) !== 0) {
    throw bad('blockBytes', 'a power of two from 512 to 1 MiB', blockBytes);
  }
  const workingSetBytes = o.workingSetBytes ?? BENCH_DEFAULTS.workingSetBytes;
  if (!Number.isSafeInteger(workingSetBytes) || workingSetBytes < 2 * blockBytes) throw bad('workingSetBytes', `at least two blocks (${2 * blockBytes} bytes)`, workingSetBytes);
  const cacheBytesMax = o.cacheBytesMax ?? Math.max(BENCH_DEFAULTS.cacheBytesMax, 2 * workingSetBytes);
  if (!Number.isSafeInteger(cacheBytesMax) || cacheBytesMax < workingSetBytes) {
    throw bad('cacheBytesMax', `at least the working set (${workingSetBytes} bytes), so that reads hit the cache`, cacheBytesMax);
  }
  const connections = o.connections ?? BENCH_DEFAULTS.connections;
  if (!Number.isInteger(connections) || connections < 1 || connections > 256) throw bad('connections', 'a whole number from 1 to 256', connections);
  const mirroredTarget = o.mirroredTarget ?? BENCH_DEFAULTS.mirroredTarget;
  if (mirroredTarget !== 'A' && mirroredTarget !== 'both') throw bad('mirroredTarget', '"A" or "both"', mirroredTarget);
  const seed = o.seed ?? BENCH_DEFAULTS.seed;
  if (!Number.isSafeInteger(seed)) throw bad('seed', 'a whole number', seed);
  const rssOverheadBytesMax = o.rssOverheadBytesMax ?? BENCH_DEFAULTS.rssOverheadBytesMax;
  if (!Number.isSafeInteger(rssOverheadBytesMax) || rssOverheadBytesMax < 0) throw bad('rssOverheadBytesMax', 'a whole number of bytes, 0 or more', rssOverheadBytesMax);
  const waitQuietSeconds = o.waitQuietSeconds ?? 0;
  if (typeof waitQuietSeconds !== 'number' || !(waitQuietSeconds >= 0) || waitQuietSeconds > 3600) throw bad('waitQuietSeconds', 'a number of seconds from 0 to 3600', waitQuietSeconds);
  return {
    runs,
    seconds,
    warmupSeconds,
    inflight: [...new Set(inflight)],
    ops: BENCH_OPS.filter((op) => ops.includes(op)),
    configs: BENCH_CONFIGS.filter((c) => configs.includes(c)),
    blockBytes,
    workingSetBytes,
    cacheBytesMax,
    connections,
    mirroredTarget,
    seed,
    rssOverheadBytesMax,
    cpuProfDir: o.cpuProfDir === undefined ? null : resolve(o.cpuProfDir),
    waitQuietSeconds,
  };
}

/** Connections for a cell: one for one operation in flight, else up to `connections`. */
export function connectionsFor(inflight: number, connections: number): number {
  return Math.max(1, Math.min(inflight, connections));
}

function wsVersion(): string {
  try {
    const req = createRequire(import.meta.url);
    const path = req.resolve('ws/package.json');
    return (JSON.parse(readFileSync(path, 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

function cpuTimes(): { idle: number; total: number } {
  let idle = 0;
  let total = 0;
  for (const c of cpus()) {
    idle += c.times.idle;
    total += c.times.idle + c.times.user + c.times.nice + c.times.sys + c.times.irq;
  }
  return { idle, total };
}

async function busyPctOver(ms: number): Promise<number> {
  const a = cpuTimes();
  await sleep(ms);
  const b = cpuTimes();
  const total = b.total - a.total;
  return total > 0 ? Math.round(1000 * (1 - (b.idle - a.idle) / total)) / 10 : 0;
}

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}

/** Share of all cores busy under which the machine counts as quiet enough to start. */
const QUIET_BUSY_PCT = 25;
const QUIET_SAMPLE_MS = 2000;

/** Waits until other work on the machine has calmed down, or the time is up; resolves to the seconds waited. */
async function waitForQuiet(seconds: number, progress: (line: string) => void): Promise<number> {
  const startMs = Date.now();
  const deadline = startMs + seconds * 1000;
  while (Date.now() < deadline) {
    const busy = await busyPctOver(QUIET_SAMPLE_MS);
    if (busy < QUIET_BUSY_PCT) break;
    progress(`waiting for a quiet machine: ${busy}% busy, load ${loadavg().map(round2).join(' ')}`);
  }
  return Math.round((Date.now() - startMs) / 1000);
}

async function machineInfo(waitedForQuietSeconds: number): Promise<MachineInfo> {
  const list = cpus();
  return {
    hostname: hostname(),
    platform: platform(),
    cpus: list.length,
    cpuModel: list[0]?.model ?? 'unknown',
    totalMemBytes: totalmem(),
    node: process.version,
    ws: wsVersion(),
    loadAvgStart: loadavg().map(round2),
    loadAvgEnd: [],
    busyBeforeStartPct: await busyPctOver(1000),
    waitedForQuietSeconds,
  };
}

function fmtRunLine(r: RunResult): string {
  const err = r.errors > 0 ? `, ${r.errors} errors (${r.firstError ?? ''})` : '';
  const others = r.othersBusyPct === null ? '' : `, others ${r.othersBusyPct}%`;
  const cpu = Object.entries(r.cpuUsPerOp).map(([name, us]) => `${name} ${us}`).join(', ');
  return `${r.opsPerSec.toLocaleString('en-US')} ops/s, p50 ${r.p50Us} µs, p99 ${r.p99Us} µs, machine ${r.machineBusyPct}% busy${others}${cpu !== '' ? `; CPU µs/op: ${cpu}` : ''}${err}`;
}

/** A process's profiled CPU per operation of each cell of its row, by kind of work. */
function perOpOf(profile: CpuProfile, entries: { cell: { op: BenchOp; inflight: number }; runs: RunResult[] }[]): ProfilePerOp[] {
  const byWindow = workByWindow(profile, entries.flatMap((e) => e.runs.map((r) => r.windowMonotonicUs)));
  let w = 0;
  return entries.map(({ cell, runs }) => {
    const ops = runs.reduce((sum, r) => sum + r.ops, 0);
    const usPerOp: ProfilePerOp['usPerOp'] = {};
    for (let i = 0; i < runs.length; i++, w++) {
      for (const [kind, us] of byWindow[w]!) usPerOp[kind] = (usPerOp[kind] ?? 0) + us;
    }
    for (const kind of Object.keys(usPerOp) as (keyof typeof usPerOp)[]) usPerOp[kind] = ops > 0 ? Math.round((10 * usPerOp[kind]!) / ops) / 10 : 0;
    return { op: cell.op, inflight: cell.inflight, ops, usPerOp };
  });
}

export async function runBench(opts: BenchOptions = {}): Promise<BenchReport> {
  const settings = benchSettings(opts);
  const progress = opts.progress ?? ((): void => undefined);
  const startedAt = new Date().toISOString();
  const waited = settings.waitQuietSeconds > 0 ? await waitForQuiet(settings.waitQuietSeconds, progress) : 0;
  const machine = await machineInfo(waited);
  progress(
    `machine: ${machine.cpus} cpus, load ${machine.loadAvgStart.join(' ')}, ${machine.busyBeforeStartPct}% busy before start; ` +
      `${settings.runs} runs x ${settings.warmupSeconds}+${settings.seconds} s per cell`,
  );
  const notes: BenchReport['notes'] = [];
  if (opts.journal === true) notes.push({ row: 'mirrored + journal', note: JOURNAL_NOTE });

  const dir = mkdtempSync(join(tmpdir(), 'pagepair-bench-'));
  const controllerNodeFlags: string[] = [];
  if (settings.cpuProfDir !== null) {
    mkdirSync(settings.cpuProfDir, { recursive: true });
    controllerNodeFlags.push('--cpu-prof', `--cpu-prof-dir=${settings.cpuProfDir}`);
  }
  const rigSettings: RigSettings = {
    blockBytes: settings.blockBytes,
    workingSetBytes: settings.workingSetBytes,
    cacheBytesMax: settings.cacheBytesMax,
    mirroredTarget: settings.mirroredTarget,
    controllerNodeFlags,
    dir,
    progress,
    tls: opts.tls === true,
  };
  const group = new ChildGroup();
  // Ctrl-C must not leave controllers behind (floors exit with their IPC channel).
  const onSignal = (sig: NodeJS.Signals): void => {
    group.killAllNow();
    rmSync(dir, { recursive: true, force: true });
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const runsOf = new Map<string, { cell: Omit<CellResult, 'median' | 'runs' | 'medianServerCpuUsPerOp'>; runs: RunResult[] }>();
  const memory: ControllerMemory[] = [];
  const rigs: Rig[] = [];
  try {
    for (const config of settings.configs) {
      progress(`starting ${config}`);
      if (config === 'echo') rigs.push(await startEchoRig(group, rigSettings));
      else if (config === 'relay') rigs.push(await startRelayRig(group, rigSettings));
      else if (config === 'redis') {
        const bin = findRedisServer();
        if (bin === null) {
          notes.push({ row: CONFIG_TITLES.redis, note: REDIS_MISSING_NOTE });
          progress(`${CONFIG_TITLES.redis}: ${REDIS_MISSING_NOTE}`);
        } else {
          // Redis is the comparison, not the subject: a server that will not start costs its row only.
          try {
            rigs.push(await startRedisRig(group, rigSettings, bin));
          } catch (err) {
            const note = `skipped: ${bin} did not start (${err instanceof Error ? err.message : String(err)})`;
            notes.push({ row: CONFIG_TITLES.redis, note });
            progress(`${CONFIG_TITLES.redis}: ${note}`);
          }
        }
      } else rigs.push(await startPagepairRig(group, config, rigSettings));
    }
    const opsOf = (rig: Rig): typeof settings.ops => settings.ops.filter((op) => op === 'write' || !WRITE_ONLY_CONFIGS.includes(rig.config));
    const cellsPerRound = rigs.reduce((sum, rig) => sum + opsOf(rig).length, 0) * settings.inflight.length;
    for (let run = 1; run <= settings.runs; run++) {
      let n = 0;
      for (const rig of rigs) {
        for (const op of opsOf(rig)) {
          for (const inflight of settings.inflight) {
            n++;
            const count = connectionsFor(inflight, settings.connections);
            const stagedBefore = op === 'read' ? await rig.pagesStaged() : 0;
            const connected = await rig.connect(count, op);
            let result: RunResult;
            try {
              result = await driveRun(connected.conns, {
                op,
                inflight,
                warmupMs: settings.warmupSeconds * 1000,
                measureMs: settings.seconds * 1000,
                seed: settings.seed + run * 1000 + inflight,
                ourPids: [process.pid, ...rigs.flatMap((r) => r.processes.map((p) => p.pid))],
                rowProcesses: new Map(rig.processes.map((p) => [p.pid, p.name])),
              });
            } finally {
              await connected.close();
            }
            if (op === 'write') await rig.settle();
            const staged = op === 'read' ? (await rig.pagesStaged()) - stagedBefore : 0;
            const key = `${rig.config}/${op}/${inflight}`;
            let entry = runsOf.get(key);
            if (entry === undefined) {
              const sizes = frameSizes(op, settings.blockBytes);
              entry = {
                cell: {
                  config: rig.config,
                  op,
                  inflight,
                  connections: count,
                  target: connected.target,
                  requestBytes: sizes.requestBytes,
                  replyBytes: sizes.replyBytes,
                  pagesStaged: 0,
                },
                runs: [],
              };
              runsOf.set(key, entry);
            }
            entry.runs.push(result);
            entry.cell.pagesStaged += staged;
            progress(`run ${run}/${settings.runs}, cell ${n}/${cellsPerRound}: ${rig.config} ${op} x${inflight} (${count} conn, ${connected.target}): ${fmtRunLine(result)}`);
          }
        }
      }
    }
    for (const rig of rigs) {
      for (const { controller, status } of await rig.statuses()) {
        memory.push(memoryCheck(rig.config, controller, status, settings.rssOverheadBytesMax));
      }
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    progress('stopping every process');
    await group.stopAll(STOP_GRACE_MS);
    rmSync(dir, { recursive: true, force: true });
  }

  const profiles: BenchReport['profiles'] = [];
  if (settings.cpuProfDir !== null) {
    const files = readdirSync(settings.cpuProfDir).filter((f) => f.endsWith('.cpuprofile'));
    // Only controllers run under --cpu-prof; the floors are not ours to tune.
    for (const rig of rigs.filter((r) => r.config === 'single' || r.config === 'mirrored')) {
      for (const p of rig.processes) {
        // node names the file CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile
        const file = files.find((f) => f.split('.')[3] === String(p.pid));
        if (file === undefined) {
          progress(`no CPU profile from ${p.name} (pid ${p.pid})`);
          continue;
        }
        const path = join(settings.cpuProfDir, file);
        // Only while this row was measured: start-up, pre-writes and flushes stay out.
        const entries = [...runsOf.values()].filter((e) => e.cell.config === rig.config);
        const windows = entries.flatMap((e) => e.runs.map((r) => r.windowMonotonicUs));
        const profile = readProfile(path);
        profiles.push({ process: p.name, pid: p.pid, file: path, summary: summarizeProfile(profile, 25, windows), perOp: perOpOf(profile, entries) });
      }
    }
  }

  const cells: CellResult[] = [...runsOf.values()].map(({ cell, runs }) => ({ ...cell, runs, median: medianOfRuns(runs), medianServerCpuUsPerOp: medianServerCpu(runs) }));
  machine.loadAvgEnd = loadavg().map(round2);
  const report: BenchReport = {
    version: 1,
    startedAt,
    finishedAt: new Date().toISOString(),
    settings,
    machine,
    cells,
    targets: checkTargets(cells),
    memory,
    notes,
    profiles,
  };
  if (opts.json !== undefined) {
    writeFileSync(opts.json, `${JSON.stringify(report, null, 2)}\n`);
    progress(`report saved to ${opts.json}`);
  }
  return report;
}
