// The Redis row: what a user might run instead of a mirrored pair. A primary
// and a replica of Redis on 127.0.0.1, no persistence, each write a SET then
// WAIT 1 0 (acknowledged once the replica holds it), 4 KiB values over the
// same working set as the pagepair rows. Started by the bench when
// redis-server is installed; skipped with one line when it is not.

import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PagepairError } from '../protocol/errors.js';
import type { BenchConnection } from './driver.js';
import type { BenchChild, ChildGroup } from './processes.js';
import { RedisClient } from './redis-client.js';
import type { Rig, RigSettings } from './rigs.js';

export const REDIS_MISSING_NOTE = 'skipped: redis-server is not installed (scripts/install-redis.sh, or apt-get install redis-server)';

const START_TIMEOUT_MS = 10_000;
const SYNC_TIMEOUT_MS = 30_000;
const BIND_ATTEMPTS = 5;
const PREWRITE_BATCH = 256;

/** redis-server's path on PATH, or null when it is not installed. */
export function findRedisServer(pathEnv: string = process.env.PATH ?? ''): string | null {
  for (const dir of pathEnv.split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, 'redis-server');
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** The arguments of one server: loopback only, nothing written to disk. */
export function redisArgs(port: number, dir: string, primaryPort?: number): string[] {
  const args = [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--save', '',
    '--appendonly', 'no',
    '--dir', dir,
    '--dbfilename', `redis-${port}.rdb`,
    '--logfile', '',
    '--loglevel', 'warning',
    // The replica's first sync starts at once, not after diskless sync's 5 s wait.
    '--repl-diskless-sync', 'yes',
    '--repl-diskless-sync-delay', '0',
  ];
  if (primaryPort !== undefined) args.push('--replicaof', '127.0.0.1', String(primaryPort));
  return args;
}

function randomPort(): number {
  return 20_000 + Math.floor(Math.random() * 40_000);
}

/**
 * Starts one server on a random port, another when the port is taken (the
 * server itself says so and exits: no window between choosing a port and
 * binding it); resolves once it answers PING.
 */
async function startServer(group: ChildGroup, name: string, bin: string, dir: string, primaryPort?: number): Promise<{ proc: BenchChild; port: number }> {
  let last = '';
  for (let attempt = 0; attempt < BIND_ATTEMPTS; attempt++) {
    const port = randomPort();
    const proc = group.spawnProgram(name, bin, redisArgs(port, dir, primaryPort));
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (proc.child.exitCode !== null || proc.child.signalCode !== null) {
        last = proc.lastLines().join(' | ');
        break;
      }
      const pong = await ping(port);
      if (pong) return { proc, port };
      if (Date.now() > deadline) {
        await proc.stop(1000);
        throw new PagepairError('TIMEOUT', `${name} did not answer PING within ${START_TIMEOUT_MS} ms: ${proc.lastLines().join(' | ')}`);
      }
      await sleep(20);
    }
    await proc.stop(0);
    if (!/in use/i.test(last)) break;
  }
  throw new PagepairError('INTERNAL', `${name} exited while starting: ${last}`);
}

async function ping(port: number): Promise<boolean> {
  let c: RedisClient | undefined;
  try {
    c = await RedisClient.connect(port, '127.0.0.1', 1000);
    return (await c.command(['PING'])) === 'PONG';
  } catch {
    return false;
  } finally {
    await c?.close();
  }
}

/** Until a write on the primary is acknowledged by the replica (its first sync done). */
async function waitForReplica(c: RedisClient): Promise<void> {
  const deadline = Date.now() + SYNC_TIMEOUT_MS;
  for (;;) {
    await c.command(['SET', 'bench:ready', '1']);
    const acked = await c.command(['WAIT', '1', '200']);
    if (typeof acked === 'number' && acked >= 1) return;
    if (Date.now() > deadline) throw new PagepairError('TIMEOUT', `the Redis replica did not sync within ${SYNC_TIMEOUT_MS} ms`);
  }
}

export function redisKey(page: number): string {
  return `bench:${page}`;
}

export async function startRedisRig(group: ChildGroup, s: RigSettings, bin: string): Promise<Rig> {
  const primary = await startServer(group, 'redis primary', bin, s.dir);
  const replica = await startServer(group, 'redis replica', bin, s.dir, primary.port);
  const pages = Math.max(1, Math.floor(s.workingSetBytes / s.blockBytes));
  const setup = await RedisClient.connect(primary.port);
  try {
    await waitForReplica(setup);
    // Every key written once, as the pagepair rows pre-write every page, so
    // measured writes overwrite.
    const t0 = Date.now();
    const data = Buffer.alloc(s.blockBytes, 0x5a);
    for (let from = 0; from < pages; from += PREWRITE_BATCH) {
      const batch: Promise<unknown>[] = [];
      for (let page = from; page < Math.min(pages, from + PREWRITE_BATCH); page++) batch.push(setup.command(['SET', redisKey(page), data]));
      await Promise.all(batch);
    }
    await setup.command(['WAIT', '1', '0']);
    s.progress(`redis: primary (pid ${primary.proc.pid}, port ${primary.port}) and replica (pid ${replica.proc.pid}) in sync; pre-wrote ${pages} keys in ${Date.now() - t0} ms`);
  } finally {
    await setup.close();
  }

  const data = Buffer.alloc(s.blockBytes, 0x3c);
  return {
    config: 'redis',
    processes: [primary.proc, replica.proc].map((p) => ({ name: p.name, pid: p.pid })),
    async connect(count) {
      const clients = await Promise.all(Array.from({ length: count }, () => RedisClient.connect(primary.port)));
      const conns: BenchConnection[] = clients.map((c) => ({
        pages,
        write: (page) => c.setAndWait(redisKey(page), data),
        read: () => Promise.reject(new PagepairError('BAD_FIELD', 'the Redis row measures writes only', 'ops')),
      }));
      return {
        conns,
        target: 'primary',
        close: async () => {
          await Promise.all(clients.map((c) => c.close()));
        },
      };
    },
    // WAIT already waited for the replica: nothing runs on after a cell.
    settle: () => Promise.resolve(),
    pagesStaged: () => Promise.resolve(0),
    statuses: () => Promise.resolve([]),
  };
}
