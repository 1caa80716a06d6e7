// `pagepair nbd-kill-test`: a real block client survives a controller being
// killed. fio's nbd engine writes random 4 KiB blocks, each carrying a crc32c
// of itself, through one controller of a pair of our own; that controller is
// SIGKILLed in the middle of the run; fio has saved which writes it had
// completed (verify_state_save), and once the survivor serves alone a second
// fio reads back through the survivor every write the first one saw
// acknowledged. Any block that does not carry its checksum is a lost
// acknowledged write. A control run then verifies the same state against a
// fresh, zeroed volume, where every block must fail: proof that the verify
// would see a loss.

import { Command, Option } from 'commander';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { PagepairError } from '../protocol/errors.js';
import { abortOnSignals, addPairTimingOptions, addRunDirOptions, linePrinter, printVerdict, runDirAndTimings } from './fault-run-options.js';
import { fioNbdWriteArgs, fioVerifyStatePath, killAllFio, readFioVerifyState, runFio, spawnFio, type FioEnd, type FioJobReport, type FioProcess, type FioVerifyState } from '../runtime/fio.js';
import { NbdPair, storeBytesFor, type Letter } from '../runtime/nbd-pair.js';
import { formatBytes, parsePositiveInt, parseSize } from '../workload/units.js';

const JOB = 'nbdkill';
const BLOCK_BYTES = 4096;
/** After the kill fio gets graceMs to notice the dead server and end by itself, then SIGTERM and termMs more before SIGKILL. */
const FIO_STOP = { graceMs: 2000, termMs: 3000 } as const;
const POLL_MS = 20;
/** The survivor's takeover, the victim's rejoin after its restart, a verify run of fio. */
const TIMEOUT_MS = { takeover: 20_000, rejoin: 60_000, verify: 120_000 } as const;
/** A write run that is never killed still ends: fio's runtime limit (not time_based). */
const WRITE_RUNTIME_S_MAX = 120;
/** fio errno of a verify failure (EILSEQ), as its JSON report gives it. */
const EILSEQ = 84;

export interface NbdKillTestOptions {
  /** Which controller is killed, in order. Default A then B. */
  victims?: readonly Letter[];
  /** Bytes of the volume fio writes over (its --size). Default 64 MiB. */
  sizeBytes?: number;
  /** fio --iodepth. Default 32. */
  iodepth?: number;
  /** The victim is killed once it has acknowledged this many writes. Default a quarter of the volume's blocks. */
  killAfterWrites?: number;
  /** If that many writes have not come by then, kill anyway (ms after fio starts). Default 30 s. */
  killDeadlineMs?: number;
  /** fio --randseed of the first victim's run (the next one adds 1). Default 1. */
  seed?: number;
  /** Run the control (verify against a fresh volume, where every block must fail). Default true. */
  control?: boolean;
  /** Working directory (configurations, store, logs, fio's state). Default: a new temporary directory. */
  dir?: string;
  /** Keep the working directory (it is kept anyway when the run fails). */
  keep?: boolean;
  heartbeatIntervalMs?: number;
  partnerTimeoutMs?: number;
  /** fio on PATH by default. */
  fioPath?: string;
  print?: (line: string) => void;
  signal?: AbortSignal;
}

export interface NbdKillControl {
  verified: number;
  failures: number;
}

export interface NbdKillCycle {
  victim: Letter;
  survivor: Letter;
  volume: string;
  seed: number;
  blocks: number;
  /** Writes the victim had acknowledged (its counter) at the moment it was killed. */
  victimWritesAtKill: number;
  /** ms from fio's start to the kill. */
  killAtMs: number;
  /** Writes fio saw completed without error, and issued (completed, failed or in flight at the kill). */
  writesCompleted: number;
  writesIssued: number;
  /** errno that stopped fio's write job (0: it was not stopped: the kill came too late). */
  writeError: number;
  /** How fio ended after the kill, and when. */
  fioEnd: FioEnd;
  fioEndAfterKillMs: number;
  /** Bytes fio wrote to standard error (only a tail is kept). */
  fioStderrBytes: number;
  /** From fio's verify state: writes issued, iodepth. */
  state: Pick<FioVerifyState, 'writesIssued' | 'depth'> | null;
  /** ms from the kill until the survivor reported role alone, and its epoch then. */
  takeoverMs: number;
  survivorEpoch: number;
  /** Blocks the verify run read back through the survivor, and how many did not carry their checksum. */
  verified: number;
  verifyFailures: number;
  verifyMs: number;
  control: NbdKillControl | null;
  /** ms from the victim's restart until both were mirrored again. */
  rejoinMs: number;
  problems: string[];
}

export interface NbdKillTestResult {
  ok: boolean;
  cycles: NbdKillCycle[];
  problems: string[];
  elapsedMs: number;
  /** The working directory when kept, else null. */
  dir: string | null;
}

function fioJobArgs(url: string, sizeBytes: number, iodepth: number, seed: number): string[] {
  return fioNbdWriteArgs({ name: JOB, uri: url, blockBytes: BLOCK_BYTES, iodepth, sizeBytes, seed });
}

function checkAbort(signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw new PagepairError('SHUTTING_DOWN', 'nbd-kill-test interrupted');
}

export async function runNbdKillTest(o: NbdKillTestOptions = {}): Promise<NbdKillTestResult> {
  const t0 = performance.now();
  const victims = o.victims ?? ['A', 'B'];
  const sizeBytes = o.sizeBytes ?? 64 * 1024 * 1024;
  const iodepth = o.iodepth ?? 32;
  const blocks = Math.floor(sizeBytes / BLOCK_BYTES);
  const killAfterWrites = o.killAfterWrites ?? Math.max(1, Math.floor(blocks / 4));
  const print = o.print ?? ((line: string) => console.log(line));
  if (sizeBytes % BLOCK_BYTES !== 0 || blocks < 2 * iodepth) {
    throw new PagepairError('BAD_FIELD', `size must be a multiple of ${BLOCK_BYTES} bytes and hold at least ${2 * iodepth} blocks, got ${sizeBytes}`, 'size');
  }
  if (killAfterWrites >= blocks) throw new PagepairError('BAD_FIELD', `kill-after must be below the volume's ${blocks} blocks, got ${killAfterWrites}`, 'kill-after');
  const dir = o.dir !== undefined ? resolve(o.dir) : mkdtempSync(join(tmpdir(), 'pagepair-nbd-kill-'));
  mkdirSync(dir, { recursive: true });

  const cycles: NbdKillCycle[] = [];
  const problems: string[] = [];
  let pair: NbdPair | null = null;
  try {
    print(`nbd-kill-test: pair in ${dir}; fio randwrite ${BLOCK_BYTES} B blocks, iodepth ${iodepth}, ${formatBytes(sizeBytes)} volume, kill after ${killAfterWrites} acknowledged writes`);
    pair = await NbdPair.start({
      dir,
      storeBytes: Math.max(256 * 1024 * 1024, storeBytesFor(Array.from({ length: victims.length + 1 }, () => sizeBytes))),
      cacheBytesMax: 64 * 1024 * 1024,
      ...(o.heartbeatIntervalMs !== undefined ? { heartbeatIntervalMs: o.heartbeatIntervalMs } : {}),
      ...(o.partnerTimeoutMs !== undefined ? { partnerTimeoutMs: o.partnerTimeoutMs } : {}),
    });
    print(`nbd-kill-test: A (pid ${pair.a.pid}) and B (pid ${pair.b.pid}) mirrored; NBD at ${pair.a.nbdUrl('')} and ${pair.b.nbdUrl('')}`);
    for (const [i, victim] of victims.entries()) {
      checkAbort(o.signal);
      const c = await killCycle(pair, victim, { ...o, sizeBytes, iodepth, blocks, killAfterWrites, seed: (o.seed ?? 1) + i, dir });
      cycles.push(c);
      print(formatNbdKillCycle(c));
    }
  } catch (err) {
    problems.push(err instanceof Error ? err.message : String(err));
  } finally {
    killAllFio();
    await pair?.stop();
  }
  for (const c of cycles) problems.push(...c.problems.map((p) => `kill ${c.victim}: ${p}`));
  const ok = problems.length === 0 && cycles.length === victims.length;
  const kept = !ok || o.keep === true;
  if (!kept) rmSync(dir, { recursive: true, force: true });
  return { ok, cycles, problems, elapsedMs: performance.now() - t0, dir: kept ? dir : null };
}

interface CycleSettings extends NbdKillTestOptions {
  sizeBytes: number;
  iodepth: number;
  blocks: number;
  killAfterWrites: number;
  seed: number;
  dir: string;
}

/** One kill: the volume fio writes, fio's directory, and the problems the steps find. */
interface Cycle {
  pair: NbdPair;
  victim: Letter;
  survivor: Letter;
  volume: string;
  fioDir: string;
  s: CycleSettings;
  problems: string[];
}

/** The writes until the kill, the kill, and the survivor's takeover. */
interface KillSeen {
  writer: FioProcess;
  fioEnd: FioEnd;
  victimWritesAtKill: number;
  killAtMs: number;
  fioEndAfterKillMs: number;
  takeoverMs: number;
  survivorEpoch: number;
}

async function killCycle(pair: NbdPair, victim: Letter, s: CycleSettings): Promise<NbdKillCycle> {
  const survivor: Letter = victim === 'A' ? 'B' : 'A';
  const volume = `kill-${victim.toLowerCase()}`;
  const c: Cycle = { pair, victim, survivor, volume, fioDir: join(s.dir, `fio-${victim.toLowerCase()}`), s, problems: [] };
  mkdirSync(c.fioDir, { recursive: true });
  await pair.createVolume(survivor, volume, s.sizeBytes);

  const k = await writeAndKill(c);
  const { written, state } = readWriteRun(c, k);
  const writesCompleted = written === null ? 0 : Math.floor(written.write.ioBytes / BLOCK_BYTES);
  const v = state === null ? { verified: 0, verifyFailures: 0, verifyMs: 0 } : await verifyThroughSurvivor(c, state, writesCompleted);
  const control = s.control !== false && state !== null && v.verified > 0 ? await controlRun(c) : null;
  // The victim comes back and joins; the pair must be mirrored again.
  const rejoinMs = await pair.restart(victim, TIMEOUT_MS.rejoin);

  return {
    victim,
    survivor,
    volume,
    seed: s.seed,
    blocks: s.blocks,
    victimWritesAtKill: k.victimWritesAtKill,
    killAtMs: k.killAtMs,
    writesCompleted,
    writesIssued: written?.write.totalIos ?? 0,
    writeError: written?.error ?? 0,
    fioEnd: k.fioEnd,
    fioEndAfterKillMs: k.fioEndAfterKillMs,
    fioStderrBytes: k.writer.stderrBytes,
    state: state === null ? null : { writesIssued: state.writesIssued, depth: state.depth },
    takeoverMs: k.takeoverMs,
    survivorEpoch: k.survivorEpoch,
    verified: v.verified,
    verifyFailures: v.verifyFailures,
    verifyMs: v.verifyMs,
    control,
    rejoinMs,
    problems: c.problems,
  };
}

function fioPathOf(s: CycleSettings): { fioPath?: string } {
  return s.fioPath !== undefined ? { fioPath: s.fioPath } : {};
}

/** fio writes through the victim, saving which writes it saw complete; SIGKILL once the victim counted enough; the survivor takes over. */
async function writeAndKill(c: Cycle): Promise<KillSeen> {
  const { pair, victim, survivor, s, problems } = c;
  // The victim's write counter says when enough writes went through it.
  const poller = pair.of(victim).poller();
  const base = (await poller.get())?.counters.clientWrites ?? 0;
  const job = fioJobArgs(pair.of(victim).nbdUrl(c.volume), s.sizeBytes, s.iodepth, s.seed);
  const writer = spawnFio([...job, '--do_verify=0', '--verify_state_save=1', `--runtime=${WRITE_RUNTIME_S_MAX}`], { cwd: c.fioDir, ...fioPathOf(s) });
  let victimWritesAtKill = 0;
  const deadlineMs = s.killDeadlineMs ?? 30_000;
  try {
    for (;;) {
      checkAbort(s.signal);
      const st = await poller.get();
      if (st !== null) victimWritesAtKill = st.counters.clientWrites - base;
      if (victimWritesAtKill >= s.killAfterWrites) break;
      if (!writer.running) {
        problems.push(`fio ended before the kill (after ${victimWritesAtKill} writes): make the volume larger or --kill-after smaller`);
        break;
      }
      if (performance.now() - writer.startedMs > deadlineMs) {
        problems.push(`only ${victimWritesAtKill} of ${s.killAfterWrites} writes came within ${deadlineMs} ms; killed anyway`);
        break;
      }
      await sleep(POLL_MS);
    }
  } finally {
    await poller.close();
  }
  const killAtMs = performance.now() - writer.startedMs;
  const killedAt = performance.now();
  await pair.of(victim).kill();

  // The survivor takes over while fio notices that its server is gone.
  const [fioEnd, takeoverMs] = await Promise.all([
    writer.stop(FIO_STOP.graceMs, FIO_STOP.termMs),
    pair.waitRole(survivor, ['alone'], TIMEOUT_MS.takeover).then(() => performance.now() - killedAt),
  ]);
  const fioEndAfterKillMs = Math.max(0, (writer.endedMs ?? performance.now()) - killedAt);
  const survivorStatus = await pair.of(survivor).status();
  if (survivorStatus?.role !== 'alone') problems.push(`${survivor} is not serving alone before the verify (role ${survivorStatus?.role ?? 'unknown'})`);
  return { writer, fioEnd, victimWritesAtKill, killAtMs, fioEndAfterKillMs, takeoverMs, survivorEpoch: survivorStatus?.epoch ?? 0 };
}

/** fio's report of the write run and the verify state it saved. */
function readWriteRun(c: Cycle, k: KillSeen): { written: FioJobReport | null; state: FioVerifyState | null } {
  let written: FioJobReport | null = null;
  try {
    written = k.writer.job(JOB);
  } catch (err) {
    c.problems.push(`the write run: ${err instanceof Error ? err.message : String(err)}`);
  }
  writeFileSync(join(c.fioDir, 'write.stderr.txt'), k.writer.stderrTailText);
  const state = readFioVerifyState(fioVerifyStatePath(c.fioDir, JOB));
  if (state === null) c.problems.push(`fio left no verify state (${fioVerifyStatePath(c.fioDir, JOB)}); it ended by ${k.fioEnd}`);
  if (written !== null && written.error === 0) c.problems.push('fio saw no error: the kill came after its last write');
  return { written, state };
}

/**
 * The same job, reading instead of writing, as far as the saved state says
 * writes had completed. The state must not be saved again (a verify-only run
 * would overwrite it with its own count). One read in flight: fio decides at
 * each read's issue whether it still lies among the writes known complete,
 * by counting the reads completed so far; with more in flight it counts too
 * few and reads on into the writes that were in flight at the kill, which
 * were never acknowledged.
 */
function verifyArgs(url: string, s: CycleSettings): string[] {
  return [...fioJobArgs(url, s.sizeBytes, 1, s.seed), '--verify_only', '--do_verify=1', '--verify_state_load=1', '--verify_state_save=0', '--continue_on_error=verify'];
}

/** Every write fio saw completed, read back through the survivor: each must carry its checksum. */
async function verifyThroughSurvivor(c: Cycle, state: FioVerifyState, writesCompleted: number): Promise<{ verified: number; verifyFailures: number; verifyMs: number }> {
  const { pair, survivor, s, problems } = c;
  const verifyT0 = performance.now();
  let verified = 0;
  let verifyFailures = 0;
  const v = await runFio(verifyArgs(pair.of(survivor).nbdUrl(c.volume), s), { cwd: c.fioDir, timeoutMs: TIMEOUT_MS.verify, ...fioPathOf(s) });
  const lastWords = (): string => v.stderrTailText.trim().split('\n').slice(-3).join(' | ');
  try {
    const r = v.job(JOB);
    verified = r.read.totalIos;
    verifyFailures = r.totalErrors + (r.error !== 0 && r.error !== EILSEQ ? 1 : 0);
    if (r.error !== 0 && r.error !== EILSEQ) problems.push(`the verify run stopped on errno ${r.error}: ${lastWords()}`);
  } catch (err) {
    problems.push(`the verify run: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (verifyFailures > 0) problems.push(`${verifyFailures} acknowledged writes did not read back through ${survivor}: ${lastWords()}`);
  // fio verifies every write it issued before the last `depth`, and of those the ones recorded as completed.
  if (verified < Math.max(1, writesCompleted - s.iodepth)) problems.push(`the verify read ${verified} blocks; fio had completed ${writesCompleted} writes`);
  if (verified > state.writesIssued) problems.push(`the verify read ${verified} blocks, more than the ${state.writesIssued} writes fio had issued`);
  writeFileSync(join(c.fioDir, 'verify.stderr.txt'), v.stderrTailText);
  return { verified, verifyFailures, verifyMs: performance.now() - verifyT0 };
}

/** The same verify against a fresh, zeroed volume, where every block must fail: proof that the verify would see a loss. */
async function controlRun(c: Cycle): Promise<NbdKillControl | null> {
  const { pair, survivor, s, problems } = c;
  const ctl = `${c.volume}-control`;
  let control: NbdKillControl | null = null;
  await pair.createVolume(survivor, ctl, s.sizeBytes);
  const v = await runFio(verifyArgs(pair.of(survivor).nbdUrl(ctl), s), { cwd: c.fioDir, timeoutMs: TIMEOUT_MS.verify, ...fioPathOf(s) });
  try {
    const r = v.job(JOB);
    control = { verified: r.read.totalIos, failures: r.totalErrors };
    if (control.failures < control.verified || control.verified === 0) {
      problems.push(`control: only ${control.failures} of ${control.verified} blocks failed on a zeroed volume; the verify cannot see losses`);
    }
  } catch (err) {
    problems.push(`the control run: ${err instanceof Error ? err.message : String(err)}`);
  }
  await pair.deleteVolume(survivor, ctl);
  return control;
}

function n(x: number): string {
  return Math.round(x).toLocaleString('en-US');
}

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}

export function formatNbdKillCycle(c: NbdKillCycle): string {
  const lines = [
    `kill ${c.victim}: SIGKILL at ${secs(c.killAtMs)} into the fio run, after ${n(c.victimWritesAtKill)} writes acknowledged by ${c.victim}; ` +
      `fio saw ${n(c.writesCompleted)} of ${n(c.blocks)} writes complete (${n(c.writesIssued)} issued) and ended ${c.fioEnd === 'exited' ? 'by itself' : `by ${c.fioEnd}`} ${secs(c.fioEndAfterKillMs)} after the kill`,
    `  ${c.survivor} alone after ${n(c.takeoverMs)} ms (epoch ${c.survivorEpoch}); verify through ${c.survivor}: ${n(c.verified)} blocks read, ${n(c.verifyFailures)} failures (${secs(c.verifyMs)})` +
      (c.control !== null ? `; control on a zeroed volume: ${n(c.control.failures)} of ${n(c.control.verified)} failed, as they must` : ''),
    `  ${c.victim} restarted, both mirrored again after ${secs(c.rejoinMs)}${c.problems.length > 0 ? `\n  PROBLEMS: ${c.problems.join('; ')}` : ''}`,
  ];
  return lines.join('\n');
}

export function formatNbdKillResult(r: NbdKillTestResult): string {
  const head = r.ok ? 'nbd-kill-test: PASS' : 'nbd-kill-test: FAIL';
  const per = r.cycles.map((c) => `kill ${c.victim}: ${n(c.writesCompleted)} writes completed before the kill, ${n(c.verifyFailures)} verify failures, takeover ${n(c.takeoverMs)} ms`);
  return [
    `${head} in ${secs(r.elapsedMs)}`,
    ...per.map((l) => `  ${l}`),
    ...r.problems.map((p) => `  problem: ${p}`),
    ...(r.dir !== null ? [`  working directory kept: ${r.dir}`] : []),
  ].join('\n');
}

/** The `nbd-kill-test` command, ready for program.addCommand(nbdKillTestCommand()). */
export function nbdKillTestCommand(): Command {
  const cmd = new Command('nbd-kill-test')
    .description('fio writes crc32c-checked blocks over NBD through one controller, which is SIGKILLed mid-run; every write fio saw completed is verified through the survivor')
    .addOption(new Option('--victim <which>', 'the controller to kill: A, B, or both one after the other').choices(['A', 'B', 'both']).default('both'))
    .option('--size <size>', "the volume fio writes over (fio's --size)", '64MiB')
    .option('--iodepth <n>', 'fio requests in flight', '32')
    .option('--kill-after <writes>', "kill once the victim acknowledged this many writes (default: a quarter of the volume's 4 KiB blocks)")
    .option('--no-control', 'skip the control run (verify against a zeroed volume, where every block must fail)');
  addRunDirOptions(cmd, { help: "fio's --randseed for the first victim (the next adds 1)", default: '1' }, 'configurations, store, logs, fio state');
  addPairTimingOptions(cmd);
  return cmd.option('--json', 'print the result as JSON (progress lines go to standard error)').action(async (raw: Record<string, string | boolean | undefined>) => {
    const json = raw.json === true;
    const signal = abortOnSignals();
    const victim = String(raw.victim);
    const r = await runNbdKillTest({
      victims: victim === 'both' ? ['A', 'B'] : [victim as Letter],
      sizeBytes: parseSize(String(raw.size), 'size'),
      iodepth: parsePositiveInt(String(raw.iodepth), 'iodepth', 1024),
      ...(typeof raw.killAfter === 'string' ? { killAfterWrites: parsePositiveInt(raw.killAfter, 'kill-after') } : {}),
      seed: parsePositiveInt(String(raw.seed), 'seed', 0xffff_ffff),
      control: raw.control !== false,
      ...runDirAndTimings(raw),
      print: linePrinter(json),
      signal,
    });
    printVerdict(r, json, formatNbdKillResult);
  });
}
