// What the interop tests share: running a client program to its end, qemu-io
// with its pattern checks, a real pair serving volumes over NBD, the URLs of
// its exports, and the export flags every client should see.

import { execFile, type ExecFileOptions } from 'node:child_process';
import { expect } from 'vitest';
import { makePairFiles, runCli, startMirroredPair, type PairFiles, type Proc } from '../integration/helpers.js';

const OUTPUT_BYTES_MAX = 4 * 1024 * 1024;

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** One client run to its end, bounded in time and in output; never throws, the caller judges. */
export function run(cmd: string, args: string[], timeoutMs: number, extra: ExecFileOptions = {}): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: OUTPUT_BYTES_MAX, encoding: 'utf8', ...extra }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1;
      const why = err !== null && code === -1 ? `\n(${err.message})` : '';
      resolve({ code, stdout: String(stdout), stderr: String(stderr) + why });
    });
  });
}

/** A client run that must succeed: its stdout and stderr together, or a throw with both. */
export async function runOk(cmd: string, args: string[], timeoutMs = 15_000): Promise<string> {
  const r = await run(cmd, args, timeoutMs);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}:\n${r.stdout}${r.stderr}`);
  return r.stdout + r.stderr;
}

/** qemu-io on `target` (a URL and the options before it); a failed pattern check or any error fails the test with the whole output. */
export async function qemuIo(target: string[], commands: string[], timeoutMs = 30_000): Promise<string> {
  const args = [...target, ...commands.flatMap((c) => ['-c', c])];
  const r = await run('qemu-io', args, timeoutMs);
  const out = r.stdout + r.stderr;
  if (r.code !== 0 || /Pattern verification failed|failed:|error/i.test(out)) throw new Error(`qemu-io ${args.join(' ')} exited ${r.code}:\n${out}`);
  return out;
}

/** What nbdinfo --json shows of every writable pagepair export with 4 KiB pages. */
export const WRITABLE_EXPORT = {
  is_read_only: false,
  can_flush: true,
  can_fua: true,
  can_trim: true,
  can_zero: true,
  can_multi_conn: true,
  block_size_minimum: 1,
  block_size_preferred: 4096,
} as const;

export interface ServingPair {
  files: PairFiles;
  a: Proc;
  b: Proc;
}

/** A mirrored pair serving NBD (with `extra` in both configurations), and `volumes` created through the CLI. */
export async function startServingPair(extra: Record<string, unknown>, volumes: readonly { name: string; sizeBytes: number }[]): Promise<ServingPair> {
  const files = await makePairFiles(extra, { nbd: true });
  const [a, b] = await startMirroredPair(files);
  for (const v of volumes) {
    const r = await runCli(['volume', 'create', '--name', v.name, '--size', String(v.sizeBytes), '--config', files.a]);
    expect(r.code, r.stderr).toBe(0);
  }
  return { files, a, b };
}

/** nbd://127.0.0.1:port/volume of one controller of the pair. */
export function tcpUrl(files: PairFiles, id: 'A' | 'B', volume: string): string {
  return `nbd://127.0.0.1:${id === 'A' ? files.ports.aNbd : files.ports.bNbd}/${volume}`;
}

/** nbd+unix:///volume?socket=… of one controller of the pair. */
export function unixUrl(files: PairFiles, id: 'A' | 'B', volume: string): string {
  return `nbd+unix:///${volume}?socket=${id === 'A' ? files.nbdSockets!.a : files.nbdSockets!.b}`;
}
