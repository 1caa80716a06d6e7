// Issue 11, part 4, with real processes: the peer link and the client link
// over TLS-PSK. With tls.mode "require" the pair mirrors over TLS, clients
// write on A and read on B over wss, a plain client is refused on the client
// port and a plain dialer on the peer port, and two writers (one per
// controller, over TLS) hitting the same pages leave both copies equal.
// With "on", plain and TLS clients both work.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { PagepairClient } from '../../src/client/index.js';
import type { CoreStatus } from '../../src/core/controller.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import type { ControllerStatus } from '../../src/runtime/controller-process.js';
import { makePairFiles, roundValue as value, runCli, seededInts as rng, startMirroredPair, stopPair, type PairFiles, type Proc } from './helpers.js';
import { writeBothAtOnce } from './two-writers.js';

const PAGE = 4096;

function connect(files: PairFiles, id: 'A' | 'B', tls: boolean): Promise<PagepairClient> {
  return PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? files.ports.aClient : files.ports.bClient, token: files.token, tls });
}

/** A mirrored pair with tls.mode `mode`, started before the block's tests and stopped after them. */
function usePairWithTls(mode: 'require' | 'on'): { files: PairFiles; procs: [Proc, Proc] } {
  const pair = {} as { files: PairFiles; procs: [Proc, Proc] };
  beforeAll(async () => {
    pair.files = await makePairFiles({ tls: { mode } });
    pair.procs = await startMirroredPair(pair.files);
  }, 60_000);
  afterAll(() => stopPair(pair.procs ?? [], pair.files), 60_000);
  return pair;
}

describe('tls.mode "require"', () => {
  const pair = usePairWithTls('require');

  it('mirrors over TLS: the peer link is up (B takes nothing but TLS), and status says so', async () => {
    const c = await connect(pair.files, 'B', true);
    try {
      const s = (await c.status()) as ControllerStatus;
      expect(s.role).toBe('mirrored');
      expect(s.tls).toBe('require');
      expect(s.listen.peer).toMatch(/^wss:\/\//);
      expect(s.listen.client).toMatch(/^wss:\/\//);
    } finally {
      await c.close();
    }
    expect(pair.procs[1].records().some((r) => r.msg === 'peer link listening' && r.tls === 'require')).toBe(true);
    // `pagepair status` reads tls.mode from the configuration and connects with TLS by itself.
    const r = await runCli(['status', '--config', pair.files.a]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/tls\s+require: TLS-PSK only/);
  });

  it('writes through A and reads the same bytes through B, over wss', async () => {
    const ca = await connect(pair.files, 'A', true);
    const cb = await connect(pair.files, 'B', true);
    try {
      const al = await ca.allocate('tls-rw', 32 * PAGE);
      for (let i = 0; i < 32; i++) await ca.write(al.guid, i * PAGE, value(PAGE, i, 1));
      for (let i = 0; i < 32; i++) expect((await cb.read(al.guid, i * PAGE, PAGE)).equals(value(PAGE, i, 1))).toBe(true);
    } finally {
      await Promise.all([ca.close(), cb.close()]);
    }
  });

  it('refuses a plain client on the client port, with a reason that names TLS', async () => {
    let err: unknown;
    try {
      await connect(pair.files, 'A', false);
    } catch (e) {
      err = e;
    }
    expect(isPagepairError(err, 'NOT_ALLOWED')).toBe(true);
    expect((err as Error).message).toMatch(/requires TLS/);
  });

  it('refuses a plain dialer on the peer port, and counts it', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${pair.files.ports.bPeer}/`, { perMessageDeflate: false });
    ws.on('error', () => undefined);
    const status = await new Promise<number | null>((resolve) => {
      ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? null));
      ws.once('open', () => resolve(101));
      ws.once('close', () => resolve(null));
    });
    ws.terminate();
    expect(status).toBe(426);
    const c = await connect(pair.files, 'B', true);
    try {
      const s = (await c.status()) as ControllerStatus;
      expect(s.refused.peer!.plainUnderRequire).toBeGreaterThanOrEqual(1);
      expect(s.role).toBe('mirrored');
    } finally {
      await c.close();
    }
  });

  it('two writers over TLS, one per controller, on the same pages: A and B read the same bytes after every round, and verify finds the copies equal', async () => {
    const ca = await connect(pair.files, 'A', true);
    const cb = await connect(pair.files, 'B', true);
    const rand = rng(4242);
    const PAGES = 16;
    let differing = 0;
    let neither = 0;
    try {
      const al = await ca.allocate('tls-two-writers', PAGES * PAGE);
      for (let round = 0; round < 300; round++) {
        const page = rand(PAGES - 2);
        const offA = page * PAGE + rand(PAGE);
        const offB = page * PAGE + rand(PAGE);
        const lenA = 1 + rand(PAGE);
        const lenB = 1 + rand(PAGE);
        const r = await writeBothAtOnce(ca, cb, al.guid, { offA, lenA, offB, lenB }, round);
        if (!r.same) differing++;
        if (!r.oneOfTheWrites) neither++;
      }
      expect(differing, 'rounds where A and B read different bytes').toBe(0);
      expect(neither, 'rounds where the overlap is neither write').toBe(0);
      const [sa, sb] = (await Promise.all([ca.status(), cb.status()])) as CoreStatus[];
      expect(sa!.counters.ownershipConflicts + sb!.counters.ownershipConflicts).toBe(0);
    } finally {
      await Promise.all([ca.close(), cb.close()]);
    }
    // Both copies of every page compared by `pagepair verify` (over TLS, from the configuration).
    const v = await runCli(['verify', '--config', pair.files.a, '--json']);
    expect(v.code, v.stderr + v.stdout).toBe(0);
    expect((JSON.parse(v.stdout) as { remaining: number }).remaining).toBe(0);
  }, 120_000);
});

describe('tls.mode "require", the command line', () => {
  const pair = usePairWithTls('require');

  it('`pagepair workload` and `pagepair volume` reach both controllers over TLS, from the configuration alone', async () => {
    const w = await runCli(['workload', '--config', pair.files.a, '--duration', '2', '--size', '4MiB', '--out', join(pair.files.dir, 'wl')]);
    expect(w.code, w.stdout + w.stderr).toBe(0);
    expect(w.stdout).toMatch(/verification errors 0/);
    const v = await runCli(['volume', 'create', '--config', pair.files.b, '--name', 'tls-vol', '--size', '1MiB']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    const l = await runCli(['volume', 'list', '--config', pair.files.a, '--json']);
    expect(l.code, l.stderr).toBe(0);
    expect(l.stdout).toMatch(/tls-vol/);
  }, 60_000);
});

describe('tls.mode "on"', () => {
  const pair = usePairWithTls('on');

  it('plain and TLS clients both work, on either controller', async () => {
    const plainA = await connect(pair.files, 'A', false);
    const tlsB = await connect(pair.files, 'B', true);
    try {
      const al = await plainA.allocate('tls-on', 4 * PAGE);
      await plainA.write(al.guid, 0, value(PAGE, 1, 1));
      expect((await tlsB.read(al.guid, 0, PAGE)).equals(value(PAGE, 1, 1))).toBe(true);
      await tlsB.write(al.guid, PAGE, value(PAGE, 2, 2));
      expect((await plainA.read(al.guid, PAGE, PAGE)).equals(value(PAGE, 2, 2))).toBe(true);
    } finally {
      await Promise.all([plainA.close(), tlsB.close()]);
    }
    // The controllers dial each other with TLS when the mode is not "off".
    const r = await runCli(['status', '--config', pair.files.b, '--tls', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as ControllerStatus).tls).toBe('on');
  });
});
