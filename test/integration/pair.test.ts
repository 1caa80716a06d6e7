// Two real controller processes on 127.0.0.1: the wiring of everything the
// core, codec, store and transports do, end to end.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { PagepairClient } from '../../src/client/index.js';
import { decode } from '../../src/protocol/codec.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import { makePairFiles, runCli, startMirroredPair, startProcess, stopPair, waitUntil, type PairFiles, type Proc } from './helpers.js';

let files: PairFiles;
let a: Proc;
let b: Proc;

async function connect(id: 'A' | 'B'): Promise<PagepairClient> {
  return PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? files.ports.aClient : files.ports.bClient, token: files.token });
}

/** Allocation `name` of `bytes` made through `id`, `data` written at its start and flushed; the client stays open. */
async function flushedThrough(id: 'A' | 'B', name: string, bytes: number, data: Buffer): Promise<{ c: PagepairClient; alloc: { guid: string } }> {
  const c = await connect(id);
  const alloc = await c.allocate(name, bytes);
  await c.write(alloc.guid, 0, data);
  await c.flush(alloc.guid);
  return { c, alloc };
}

interface StatusJson {
  role: string;
  dirtyPages: number;
  allocations: number;
  digests: { table: string; dirty: string };
}

async function statusOf(cfg: string): Promise<StatusJson> {
  const r = await runCli(['status', '--config', cfg, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as StatusJson;
}

function pattern(seed: number, bytes: number): Buffer {
  const buf = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) buf[i] = (seed * 31 + i * 7) & 0xff;
  return buf;
}

beforeAll(async () => {
  files = await makePairFiles();
  [a, b] = await startMirroredPair(files);
}, 60_000);

afterAll(() => stopPair([a, b], files), 60_000);

describe('a real pair on 127.0.0.1', () => {
  it('writes through A and reads the same bytes through B', async () => {
    const ca = await connect('A');
    const cb = await connect('B');
    try {
      const alloc = await ca.allocate('it-basic', 1024 * 1024);
      const data = pattern(1, 3 * 4096 + 123);
      await ca.write(alloc.guid, 4096 - 50, data);
      expect((await cb.read(alloc.guid, 4096 - 50, data.length)).equals(data)).toBe(true);
      expect((await cb.list()).map((x) => x.guid)).toContain(alloc.guid);
    } finally {
      await Promise.all([ca.close(), cb.close()]);
    }
  });

  it('ends concurrent writes to the same pages through both controllers with equal contents and equal digests', async () => {
    const ca = await connect('A');
    const cb = await connect('B');
    try {
      const alloc = await ca.allocate('it-contended', 64 * 4096);
      const writes: Promise<void>[] = [];
      for (let round = 0; round < 40; round++) {
        for (let page = 0; page < 8; page++) {
          writes.push(ca.write(alloc.guid, page * 4096, pattern(round * 100 + page, 4096)));
          writes.push(cb.write(alloc.guid, page * 4096, pattern(round * 100 + page + 50, 4096)));
        }
      }
      await Promise.all(writes);
      const viaA = await ca.read(alloc.guid, 0, 8 * 4096);
      const viaB = await cb.read(alloc.guid, 0, 8 * 4096);
      expect(viaA.equals(viaB)).toBe(true);
      await waitUntil(
        async () => {
          const [sa, sb] = await Promise.all([statusOf(files.a), statusOf(files.b)]);
          return sa.digests.table === sb.digests.table && sa.digests.dirty === sb.digests.dirty;
        },
        20_000,
        'equal digests on A and B',
      );
    } finally {
      await Promise.all([ca.close(), cb.close()]);
    }
  });

  it('runs `pagepair workload` with zero verification errors, then A and B show equal digests', async () => {
    const r = await runCli(['workload', '--config', files.a, '--duration', '3', '--size', '8MiB', '--keep', '--out', join(files.dir, 'wl')]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/verification errors 0/);
    await waitUntil(
      async () => {
        const [sa, sb] = await Promise.all([statusOf(files.a), statusOf(files.b)]);
        return sa.role === 'mirrored' && sb.role === 'mirrored' && sa.digests.table === sb.digests.table && sa.digests.dirty === sb.digests.dirty;
      },
      20_000,
      'equal digests after the workload',
    );
  });

  it('answers garbage from a client with an error and keeps serving the others', async () => {
    const good = await connect('B');
    try {
      const alloc = await good.allocate('it-garbage', 4 * 4096);
      const raw = new WebSocket(`ws://127.0.0.1:${files.ports.bClient}`);
      await new Promise<void>((resolve, reject) => {
        raw.on('open', () => resolve());
        raw.on('error', reject);
      });
      const got: Buffer[] = [];
      raw.on('message', (d: Buffer) => got.push(d));
      const closed = new Promise<void>((resolve) => raw.on('close', () => resolve()));
      raw.send(Buffer.from('this is not a pagepair frame, not even close to one'));
      await closed;
      expect(got.length).toBeGreaterThan(0);
      const reply = decode(got[0]!);
      expect(reply.kind).toBe('ERROR');
      // The controller goes on serving the well-behaved client.
      await good.write(alloc.guid, 0, pattern(9, 4096));
      expect((await good.read(alloc.guid, 0, 4096)).equals(pattern(9, 4096))).toBe(true);
    } finally {
      await good.close();
    }
  });

  it('gives typed errors for unknown GUIDs, out-of-range offsets and oversize requests', async () => {
    const c = await connect('A');
    try {
      const alloc = await c.allocate('it-errors', 4 * 4096);
      const codeOf = async (p: Promise<unknown>): Promise<string> => {
        try {
          await p;
          return 'none';
        } catch (err) {
          return isPagepairError(err) ? err.code : String(err);
        }
      };
      expect(await codeOf(c.read('00000000-0000-4000-8000-000000000000', 0, 10))).toBe('UNKNOWN_GUID');
      expect(await codeOf(c.write(alloc.guid, 4 * 4096 - 1, Buffer.alloc(2)))).toBe('OUT_OF_RANGE');
      expect(await codeOf(c.read(alloc.guid, 0, 64 * 1024 * 1024))).toBe('TOO_LARGE');
      expect(await codeOf(c.allocate('it-errors', 4096))).toBe('DUPLICATE');
      expect(await codeOf(c.allocate('it-policy', 4096, 'no-such-policy'))).toBe('POLICY_UNKNOWN');
    } finally {
      await c.close();
    }
  });

  it('refuses a peer that does not know the secret, and the pair stays mirrored', async () => {
    const wrong = join(files.dir, 'wrong-a.json');
    const ports = { client: files.ports.aClient + 1000, peer: files.ports.aPeer + 1000 };
    writeFileSync(
      wrong,
      JSON.stringify(
        files.configOf('A', {
          secret: 'not-the-pair-secret-at-all-0000',
          listen: { client: { host: '127.0.0.1', port: ports.client }, peer: { host: '127.0.0.1', port: ports.peer } },
          store: { path: join(files.dir, 'impostor.store'), sizeBytes: 64 * 1024 * 1024 },
        }),
      ),
    );
    const impostor = startProcess(['start', '--config', wrong]);
    try {
      await b.waitForLog((r) => r.level === 40 && typeof r.msg === 'string' && /refus|auth/i.test(`${r.msg} ${String(r.reason ?? '')}`), 20_000);
      const s = await statusOf(files.b);
      expect(s.role).toBe('mirrored');
    } finally {
      await impostor.stop('SIGKILL');
    }
  });

  it('keeps every allocation and byte across a stop and restart of both controllers', async () => {
    const flushed = pattern(21, 100 * 4096);
    const { c, alloc } = await flushedThrough('A', 'it-restart', 256 * 4096, flushed);
    // Written after the flush: a clean shutdown destages it.
    const later = pattern(22, 10 * 4096 + 17);
    await c.write(alloc.guid, 200 * 4096, later);
    await c.close();
    const before = await statusOf(files.a);

    await Promise.all([a.stop('SIGTERM'), b.stop('SIGTERM')]);
    [a, b] = await startMirroredPair(files);

    const after = await statusOf(files.b);
    expect(after.allocations).toBe(before.allocations);
    expect(after.digests.table).toBe(before.digests.table);
    const cb = await connect('B');
    try {
      const list = await cb.list();
      expect(list.find((x) => x.name === 'it-restart')?.guid).toBe(alloc.guid);
      expect((await cb.read(alloc.guid, 0, flushed.length)).equals(flushed)).toBe(true);
      expect((await cb.read(alloc.guid, 200 * 4096, later.length)).equals(later)).toBe(true);
    } finally {
      await cb.close();
    }
  }, 90_000);

  it('keeps what was flushed when both controllers are killed with SIGKILL and started again', async () => {
    const data = pattern(31, 64 * 4096);
    const { c, alloc } = await flushedThrough('B', 'it-kill', 64 * 4096, data);
    await c.close();

    await Promise.all([a.stop('SIGKILL'), b.stop('SIGKILL')]);
    [a, b] = await startMirroredPair(files);

    const ca = await connect('A');
    try {
      expect((await ca.read(alloc.guid, 0, data.length)).equals(data)).toBe(true);
    } finally {
      await ca.close();
    }
  }, 90_000);
});

describe('the command line', () => {
  it('names the bad field of a broken configuration', async () => {
    const bad = join(files.dir, 'bad.json');
    writeFileSync(bad, JSON.stringify(files.configOf('A', { cache: { cacheBytesMax: -5 } })));
    const r = await runCli(['start', '--config', bad]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/BAD_CONFIG/);
    expect(r.stderr).toMatch(/cache\.cacheBytesMax/);
  });

  it('prints help for every command', async () => {
    for (const cmd of ['start', 'pair', 'status', 'workload', 'report', 'check', 'kill-test']) {
      const r = await runCli([cmd, '--help']);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/Usage: pagepair/);
    }
  });
});
