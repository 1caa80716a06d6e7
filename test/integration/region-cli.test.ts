// `pagepair region` against a real pair, through the built CLI: create
// prints the key once, write commits a file as a generation, open shows it,
// read gives the bytes back, list shows the space held, a wrong or missing
// key and bad options fail with a message naming the field, delete frees it.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killAllPairControllers, NbdPair } from '../../src/runtime/nbd-pair.js';
import { runCli } from './helpers.js';

let dir: string;
let pair: NbdPair;
let cfg: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'pagepair-it-region-cli-'));
  pair = await NbdPair.start({ dir, storeBytes: 128 * 1024 * 1024, cacheBytesMax: 32 * 1024 * 1024 });
  cfg = pair.a.configPath;
}, 60_000);

afterAll(async () => {
  await pair?.stop();
  killAllPairControllers();
  rmSync(dir, { recursive: true, force: true });
}, 60_000);

function fileOf(name: string, bytes: number, seed: number): { path: string; data: Buffer } {
  const data = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) data[i] = (seed * 29 + i * 13 + (i >> 9)) & 0xff;
  const path = join(dir, name);
  writeFileSync(path, data);
  return { path, data };
}

describe('pagepair region', () => {
  it('creates, writes, opens, reads, lists and deletes a region; refuses wrong keys and bad options', async () => {
    const created = await runCli(['region', 'create', 'cli-ckpt', '--size', '256K', '--mode', 'overwrite', '--generations', '3', '--config', cfg]);
    expect(created.stderr).toBe('');
    expect(created.code).toBe(0);
    const key = /^key\s+([A-Za-z0-9_-]{22})$/m.exec(created.stdout)?.[1];
    expect(key, created.stdout).toBeDefined();
    expect(created.stdout).toMatch(/no controller keeps it/);
    expect(created.stdout).toMatch(/ring of 3 generations/);

    const one = fileOf('one.bin', 100_000, 1);
    const two = fileOf('two.bin', 3 * 65536 + 17, 2);
    const w1 = await runCli(['region', 'write', 'cli-ckpt', '--key', key!, '--from', one.path, '--config', cfg]);
    expect(w1.code, w1.stderr).toBe(0);
    expect(w1.stdout).toMatch(/generation \d+ committed, 100000 bytes/);
    // The key from a file, the second generation.
    const keyFile = join(dir, 'key.txt');
    writeFileSync(keyFile, `${key}\n`, { mode: 0o600 });
    const w2 = await runCli(['region', 'write', 'cli-ckpt', '--key-file', keyFile, '--from', two.path, '--config', cfg, '--json']);
    expect(w2.code, w2.stderr).toBe(0);
    const g2 = JSON.parse(w2.stdout) as { generation: number; lengthBytes: number };
    expect(g2.lengthBytes).toBe(two.data.length);

    const opened = await runCli(['region', 'open', 'cli-ckpt', '--key', key!, '--config', cfg, '--json']);
    expect(opened.code, opened.stderr).toBe(0);
    const view = JSON.parse(opened.stdout) as { mode: string; ringSize: number; generations: { generation: number; lengthBytes: number }[] };
    expect(view.mode).toBe('overwrite');
    expect(view.ringSize).toBe(3);
    expect(view.generations.map((g) => g.lengthBytes)).toEqual([two.data.length, one.data.length]); // latest first
    expect(view.generations[0]!.generation).toBe(g2.generation);
    const openText = await runCli(['region', 'open', 'cli-ckpt', '--key', key!, '--config', cfg]);
    expect(openText.stdout).toMatch(/^committed\s+2 generations, latest first:/m);

    const latestOut = join(dir, 'latest.out');
    const r1 = await runCli(['region', 'read', 'cli-ckpt', '--key', key!, '--out', latestOut, '--config', cfg]);
    expect(r1.code, r1.stderr).toBe(0);
    expect(readFileSync(latestOut).equals(two.data)).toBe(true);
    const olderOut = join(dir, 'older.out');
    const r2 = await runCli(['region', 'read', 'cli-ckpt', '--key', key!, '--generation', String(view.generations[1]!.generation), '--out', olderOut, '--config', cfg]);
    expect(r2.code, r2.stderr).toBe(0);
    expect(readFileSync(olderOut).equals(one.data)).toBe(true);

    const listed = await runCli(['region', 'list', '--config', cfg, '--json']);
    expect(listed.code, listed.stderr).toBe(0);
    const regions = JSON.parse(listed.stdout) as { name: string; allocatedBytes: number }[];
    const mine = regions.find((r) => r.name === 'cli-ckpt');
    expect(mine?.allocatedBytes).toBeGreaterThanOrEqual(3 * 256 * 1024);
    expect((await runCli(['region', 'list', '--config', cfg])).stdout).toMatch(/^cli-ckpt\s/m);

    // A wrong key, a malformed one, a missing one, a file too large for a generation, a bad mode.
    const wrong = Buffer.from(key!, 'base64url');
    wrong[0] = wrong[0]! ^ 1;
    const denied = await runCli(['region', 'open', 'cli-ckpt', '--key', wrong.toString('base64url'), '--config', cfg]);
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toMatch(/ACCESS_DENIED/);
    const malformed = await runCli(['region', 'read', 'cli-ckpt', '--key', 'not-a-key', '--out', latestOut, '--config', cfg]);
    expect(malformed.code).toBe(2);
    expect(malformed.stderr).toMatch(/BAD_FIELD: --key: an access key is 16 bytes/);
    const missing = await runCli(['region', 'delete', 'cli-ckpt', '--config', cfg], 60_000);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/the region's key is needed/);
    const big = fileOf('big.bin', 256 * 1024 + 1, 3);
    const tooBig = await runCli(['region', 'write', 'cli-ckpt', '--key', key!, '--from', big.path, '--config', cfg]);
    expect(tooBig.code).not.toBe(0);
    expect(tooBig.stderr).toMatch(/--from .*does not fit a generation/);
    const badMode = await runCli(['region', 'create', 'cli-x', '--size', '1M', '--mode', 'ring', '--config', cfg]);
    expect(badMode.code).toBe(2);
    expect(badMode.stderr).toMatch(/--mode must be overwrite .* or append/);
    const badSize = await runCli(['region', 'create', 'cli-x', '--size', 'lots', '--mode', 'append', '--config', cfg]);
    expect(badSize.code).toBe(2);
    expect(badSize.stderr).toMatch(/size must be a size such as/);
    const help = await runCli(['region', 'write', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--from <file>/);

    const deleted = await runCli(['region', 'delete', 'cli-ckpt', '--key', key!, '--config', cfg]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(deleted.stdout).toMatch(/region "cli-ckpt" deleted/);
    const after = await runCli(['region', 'list', '--config', cfg, '--json']);
    expect((JSON.parse(after.stdout) as { name: string }[]).some((r) => r.name === 'cli-ckpt')).toBe(false);
  }, 120_000);
});
