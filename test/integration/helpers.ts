// Real controller processes on 127.0.0.1 for integration tests: temporary
// configurations on free ports, log lines read back, every process cleaned up.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { freePort } from '../../src/runtime/free-port.js';
import { freePairPorts, pairPlacement } from '../../src/runtime/local-pair.js';
import { PAGEPAIR_BIN, pagepairSpec } from '../../src/runtime/spawn-controller.js';
import { killAllSupervised, STOP_GRACE_MS, Supervised, waitUntil as pollUntil } from '../../src/runtime/supervisor.js';

export { freePort };

export const BIN = PAGEPAIR_BIN;

export interface PairFiles {
  dir: string;
  a: string;
  b: string;
  /** aNbd and bNbd: only with makePairFiles(..., { nbd: true }). */
  ports: { aClient: number; aPeer: number; bClient: number; bPeer: number; aNbd?: number; bNbd?: number };
  /** Each controller's NBD unix socket: only with makePairFiles(..., { nbd: true }). */
  nbdSockets?: { a: string; b: string };
  token: string;
  configOf(id: 'A' | 'B', overrides?: Record<string, unknown>): Record<string, unknown>;
  cleanup(): void;
}

/** opts.nbd: each controller serves NBD too, on a free port and a unix socket in the directory. */
export async function makePairFiles(extra: Record<string, unknown> = {}, opts: { nbd?: boolean } = {}): Promise<PairFiles> {
  const dir = mkdtempSync(join(tmpdir(), 'pagepair-it-'));
  const p = await freePairPorts({ nbd: opts.nbd === true });
  const ports: PairFiles['ports'] = { aClient: p.A.client, aPeer: p.A.peer, bClient: p.B.client, bPeer: p.B.peer };
  const nbdSockets = opts.nbd === true ? { a: join(dir, 'a.nbd.sock'), b: join(dir, 'b.nbd.sock') } : undefined;
  if (opts.nbd === true) {
    ports.aNbd = p.A.nbd!;
    ports.bNbd = p.B.nbd!;
  }
  const pairId = randomUUID();
  const token = 'integration-client-token';
  const configOf = (id: 'A' | 'B', overrides: Record<string, unknown> = {}): Record<string, unknown> => ({
    ...pairPlacement(id, p, nbdSockets !== undefined ? { nbdSocket: id === 'A' ? nbdSockets.a : nbdSockets.b } : {}),
    pairId,
    secret: 'integration-peer-secret-0123456789',
    clientToken: token,
    store: { path: join(dir, 'pair.store'), sizeBytes: 256 * 1024 * 1024 },
    cache: { cacheBytesMax: 32 * 1024 * 1024, dirtyAgeMaxMs: 500 },
    heartbeatIntervalMs: 100,
    partnerTimeoutMs: 600,
    log: { level: 'info' },
    ...extra,
    ...overrides,
  });
  const a = join(dir, 'a.json');
  const b = join(dir, 'b.json');
  writeFileSync(a, JSON.stringify(configOf('A')));
  writeFileSync(b, JSON.stringify(configOf('B')));
  return { dir, a, b, ports, ...(nbdSockets !== undefined ? { nbdSockets } : {}), token, configOf, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface Proc {
  child: ChildProcess;
  /** Every line it wrote so far (standard output and error). */
  lines: readonly string[];
  /** Parsed JSON log records. */
  records(): Record<string, unknown>[];
  waitForLog(pred: (rec: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Processes of runCli and runKillTestCli (those of startProcess are the supervisor's). */
const running = new Set<ChildProcess>();

/** `pagepair <args>` started, every line it writes kept. */
export function startProcess(args: string[]): Proc {
  const p = new Supervised(pagepairSpec(`pagepair ${args.join(' ')}`, args, { keepLines: Number.POSITIVE_INFINITY }));
  p.start();
  return {
    child: p.process!,
    lines: p.logLines(),
    records: () => p.records(),
    waitForLog: (pred, timeoutMs = 20_000) => p.waitForRecord(pred, timeoutMs),
    exited: p.exited.then(() => p.exitCode),
    async stop(signal = 'SIGTERM') {
      await p.stop(STOP_GRACE_MS, signal);
      return p.exitCode;
    },
  };
}

/** Kill whatever a test file left running. */
export function killAll(): void {
  killAllSupervised();
  for (const c of running) c.kill('SIGKILL');
  running.clear();
}

/** Both controllers of `files` started; resolves once each says it is mirrored with the other. */
export async function startMirroredPair(files: PairFiles): Promise<[Proc, Proc]> {
  const pair: [Proc, Proc] = [startProcess(['start', '--config', files.a]), startProcess(['start', '--config', files.b])];
  await Promise.all(pair.map((p) => p.waitForLog((r) => r.msg === 'mirrored with partner', 20_000)));
  return pair;
}

/** Stops what startMirroredPair started (either may be gone already), anything else left running, and removes the files. */
export async function stopPair(procs: (Proc | undefined)[] | undefined, files: PairFiles | undefined): Promise<void> {
  // procs is undefined when the set-up failed before the pair started: still kill what runs.
  await Promise.all((procs ?? []).map((p) => p?.stop()));
  killAll();
  files?.cleanup();
}

/** Run the CLI to completion; resolves with its exit code and output. */
export async function runCli(args: string[], timeoutMs = 60_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runToEnd(args, { killAfterMs: timeoutMs });
}

/** `pagepair <args>` to its end, SIGTERM after termAfterMs (when given), SIGKILL after killAfterMs. */
async function runToEnd(args: readonly string[], o: { termAfterMs?: number; killAfterMs: number }): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [PAGEPAIR_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const term = o.termAfterMs !== undefined ? setTimeout(() => child.kill('SIGTERM'), o.termAfterMs) : undefined;
  const kill = setTimeout(() => child.kill('SIGKILL'), o.killAfterMs);
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  clearTimeout(term);
  clearTimeout(kill);
  running.delete(child);
  return { code, stdout, stderr };
}

/** Polls pred every 100 ms until it holds; throws naming `what` after timeoutMs. */
export async function waitUntil(pred: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  await pollUntil(async () => ((await pred()) ? true : null), { what, timeoutMs, pollMs: 100 });
}

/** Bytes that say which round and which writer they come from (the two-writer tests). */
export function roundValue(length: number, round: number, writer: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (round * 131 + writer * 71 + i) & 0xff;
  if (length >= 8) {
    b.writeUInt32LE(round, 0);
    b.writeUInt32LE(writer, 4);
  }
  return b;
}

/** A fixed-seed generator of integers below n (xorshift32), so a failing round can be found again. */
export function seededInts(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

/** Any controller a kill test left behind in `dir` (it should leave none) is killed by the pid it recorded; returns those found. */
export function killTestLeftovers(dir: string): string[] {
  const left: string[] = [];
  for (const l of ['A', 'B']) {
    const pidPath = join(dir, `${l}.pid`);
    if (!existsSync(pidPath)) continue;
    const pid = Number(readFileSync(pidPath, 'utf8').trim());
    let cmdline = '';
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue; // gone
    }
    if (!cmdline.includes(dir)) continue; // the pid was reused
    left.push(`${l} pid ${pid}`);
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
  return left;
}

/** `pagepair kill-test <args> --dir <new dir> --out <dir>/report --json` as a child process; the dir is pushed on `dirs` for cleanup. */
export async function runKillTestCli(
  label: string,
  args: readonly string[],
  dirs: string[],
): Promise<{ code: number | null; stdout: string; stderr: string; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), `pagepair-kt-${label}-`));
  dirs.push(dir);
  // SIGTERM lets the kill test stop its controllers; SIGKILL only if it does not.
  const r = await runToEnd(['kill-test', ...args, '--dir', dir, '--out', join(dir, 'report'), '--json'], { termAfterMs: 80_000, killAfterMs: 100_000 });
  return { ...r, dir };
}
