import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { formatBench } from '../../src/bench/format.js';
import { RedisClient } from '../../src/bench/redis-client.js';
import { encodeCommand, encodeSetAndWait, parseValue, RespError, RespParser, RespProtocolError, type RespValue } from '../../src/bench/redis-resp.js';
import { findRedisServer, REDIS_MISSING_NOTE, redisArgs } from '../../src/bench/redis-rig.js';
import { runBench } from '../../src/bench/run.js';
import { checkTargets, medianOfRuns, medianServerCpu } from '../../src/bench/stats.js';
import type { BenchConfigName, CellResult, RunResult } from '../../src/bench/types.js';

describe('RESP encoder', () => {
  it('writes a command as an array of bulk strings, bytes kept as they are', () => {
    expect(encodeCommand(['SET', 'k', 'v']).toString('latin1')).toBe('*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n');
    const value = Buffer.from([0x0d, 0x0a, 0x00, 0xff]);
    const cmd = encodeCommand(['SET', 'key:1', value]);
    expect(cmd.toString('latin1', 0, 28)).toBe('*3\r\n$3\r\nSET\r\n$5\r\nkey:1\r\n$4\r\n');
    expect(cmd.subarray(28, 32)).toEqual(value);
    expect(cmd.subarray(32).toString('latin1')).toBe('\r\n');
    expect(encodeCommand(['PING']).toString('latin1')).toBe('*1\r\n$4\r\nPING\r\n');
  });

  it('writes SET then WAIT 1 0 in one buffer, the same bytes as the two commands', () => {
    const value = Buffer.alloc(4096, 0x0d);
    expect(encodeSetAndWait('bench:42', value)).toEqual(Buffer.concat([encodeCommand(['SET', 'bench:42', value]), encodeCommand(['WAIT', '1', '0'])]));
    expect(encodeSetAndWait('é', Buffer.alloc(0))).toEqual(Buffer.concat([encodeCommand(['SET', 'é', Buffer.alloc(0)]), encodeCommand(['WAIT', '1', '0'])]));
  });

  it('counts bytes, not characters', () => {
    expect(encodeCommand(['é']).toString('latin1')).toContain('$2\r\n');
  });
});

describe('RESP parser', () => {
  const replies = '+OK\r\n:1\r\n-ERR wrong\r\n$5\r\nhe\r\no\r\n$-1\r\n*2\r\n:7\r\n*1\r\n+PONG\r\n*0\r\n$0\r\n\r\n:-3\r\n';
  const expected: RespValue[] = ['OK', 1, new RespError('ERR wrong'), Buffer.from('he\r\no'), null, [7, ['PONG']], [], Buffer.alloc(0), -3];

  it('reads every kind of reply', () => {
    expect(new RespParser().push(Buffer.from(replies, 'latin1'))).toEqual(expected);
  });

  it('gives the same replies however the bytes are split', () => {
    const bytes = Buffer.from(replies, 'latin1');
    for (let cut = 0; cut <= bytes.length; cut++) {
      const p = new RespParser();
      const got = [...p.push(bytes.subarray(0, cut)), ...p.push(bytes.subarray(cut))];
      expect(got).toEqual(expected);
      expect(p.pendingBytes).toBe(0);
    }
    const p = new RespParser();
    const got: RespValue[] = [];
    for (const b of bytes) got.push(...p.push(Buffer.from([b])));
    expect(got).toEqual(expected);
  });

  it('waits for the rest of a bulk string and its CRLF', () => {
    expect(parseValue(Buffer.from('$5\r\nhello'), 0)).toBeNull();
    expect(parseValue(Buffer.from('$5\r\nhello\r'), 0)).toBeNull();
    expect(parseValue(Buffer.from('*2\r\n:1\r\n'), 0)).toBeNull();
    expect(parseValue(Buffer.from(':12'), 0)).toBeNull();
  });

  it('refuses what is not RESP', () => {
    expect(() => parseValue(Buffer.from('?what\r\n'), 0)).toThrow(RespProtocolError);
    expect(() => parseValue(Buffer.from(':1x\r\n'), 0)).toThrow(RespProtocolError);
    expect(() => parseValue(Buffer.from('$3\r\nabcd\r\n'), 0)).toThrow(RespProtocolError);
    expect(() => parseValue(Buffer.from('$-2\r\n'), 0)).toThrow(RespProtocolError);
    expect(() => parseValue(Buffer.from(':-\r\n'), 0)).toThrow(RespProtocolError);
    expect(() => parseValue(Buffer.from(':99999999999999999999\r\n'), 0)).toThrow(RespProtocolError);
    expect(parseValue(Buffer.from(':9007199254740991\r\n'), 0)?.value).toBe(Number.MAX_SAFE_INTEGER);
  });
});

describe('Redis client', () => {
  let server: Server | undefined;
  afterEach(() => {
    server?.close();
    server = undefined;
  });

  it('pipelines SET and WAIT 1 0, resolving once WAIT says the replica has it', async () => {
    const seen: RespValue[] = [];
    server = createServer((sock) => {
      const p = new RespParser();
      sock.on('data', (chunk: Buffer) => {
        for (const cmd of p.push(chunk)) {
          seen.push(cmd);
          const name = ((cmd as Buffer[])[0] ?? Buffer.alloc(0)).toString();
          sock.write(name === 'SET' ? '+OK\r\n' : name === 'WAIT' ? (seen.length > 4 ? ':0\r\n' : ':1\r\n') : '-ERR unknown\r\n');
        }
      });
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    const c = await RedisClient.connect(port);
    try {
      const value = Buffer.alloc(4096, 7);
      await Promise.all([c.setAndWait('bench:1', value), c.setAndWait('bench:2', value)]);
      expect(seen.map((cmd) => (cmd as Buffer[]).map((b) => (b.length > 16 ? `<${b.length} bytes>` : b.toString())))).toEqual([
        ['SET', 'bench:1', '<4096 bytes>'],
        ['WAIT', '1', '0'],
        ['SET', 'bench:2', '<4096 bytes>'],
        ['WAIT', '1', '0'],
      ]);
      // A WAIT that counts no replica is a failed write, not a slow one.
      await expect(c.setAndWait('bench:3', value)).rejects.toMatchObject({ code: 'NOT_MIRRORED' });
      await expect(c.command(['NOPE'])).rejects.toThrow('redis: ERR unknown');
    } finally {
      await c.close();
    }
  });
});

describe('the Redis row', () => {
  it('starts servers with nothing written to disk, the replica following the primary', () => {
    const args = redisArgs(7001, '/tmp/x', 7000);
    expect(args.join(' ')).toContain('--save  --appendonly no');
    expect(args.slice(-3)).toEqual(['--replicaof', '127.0.0.1', '7000']);
    expect(redisArgs(7000, '/tmp/x')).not.toContain('--replicaof');
  });

  it('finds redis-server on PATH, or says it is not there', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pagepair-redis-path-'));
    try {
      expect(findRedisServer(dir)).toBeNull();
      writeFileSync(join(dir, 'redis-server'), '#!/bin/sh\n');
      chmodSync(join(dir, 'redis-server'), 0o644);
      expect(findRedisServer(`/nonexistent:${dir}`)).toBeNull();
      chmodSync(join(dir, 'redis-server'), 0o755);
      expect(findRedisServer(`/nonexistent:${dir}`)).toBe(join(dir, 'redis-server'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('is skipped with one line naming redis-server and its install script when it is not installed', async () => {
    const path = process.env.PATH;
    const dir = mkdtempSync(join(tmpdir(), 'pagepair-redis-path-'));
    process.env.PATH = dir;
    const lines: string[] = [];
    try {
      const report = await runBench({ configs: ['redis'], runs: 1, seconds: 0.1, warmupSeconds: 0, progress: (l) => lines.push(l) });
      expect(report.cells).toEqual([]);
      expect(report.notes).toEqual([{ row: 'Redis SET + WAIT 1', note: REDIS_MISSING_NOTE }]);
      expect(lines.filter((l) => l.includes('redis-server'))).toEqual([`Redis SET + WAIT 1: ${REDIS_MISSING_NOTE}`]);
      const text = formatBench(report).split('\n');
      const row = text.filter((l) => l.startsWith('Redis'));
      expect(row).toEqual([`${'Redis SET + WAIT 1'.padEnd(26)} | ${REDIS_MISSING_NOTE}`]);
      expect(REDIS_MISSING_NOTE).toMatch(/redis-server.*scripts\/install-redis\.sh/);
    } finally {
      process.env.PATH = path;
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('stands beside the mirrored pair with a ratio and a target', () => {
    const run = (opsPerSec: number, p50Us: number): RunResult => ({
      ops: opsPerSec, errors: 0, firstError: null, seconds: 1, opsPerSec, p50Us, p90Us: p50Us, p99Us: p50Us * 2, p999Us: p50Us, maxUs: p50Us, meanUs: p50Us,
      machineBusyPct: 50, othersBusyPct: 0, cpuUsPerOp: { 'bench client': 10, 'redis primary': 30, 'redis replica': 10 }, windowMonotonicUs: [0, 0], loadAvg1: 0,
    });
    const cell = (config: BenchConfigName, inflight: number, opsPerSec: number, p50Us: number): CellResult => {
      const runs = [run(opsPerSec, p50Us)];
      return { config, op: 'write', inflight, connections: 1, target: 'A', requestBytes: 1, replyBytes: 1, pagesStaged: 0, runs, median: medianOfRuns(runs), medianServerCpuUsPerOp: medianServerCpu(runs) };
    };
    const cells = [cell('mirrored', 1, 6_000, 160), cell('redis', 1, 8_000, 120), cell('mirrored', 32, 30_000, 1000), cell('redis', 32, 12_000, 2500)];
    const targets = checkTargets(cells);
    expect(targets.at(-1)).toMatchObject({ name: 'mirrored writes @1 vs Redis', verdict: 'MISS', value: 0.75 });
    expect(checkTargets(cells.filter((c) => c.config !== 'redis')).some((t) => t.name.includes('Redis'))).toBe(false);
  });
});
