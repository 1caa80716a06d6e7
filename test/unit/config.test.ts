import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BUILTIN_POLICIES, pageCountFor, resolvePolicies } from '../../src/core/policy.js';
import { PagepairError } from '../../src/protocol/errors.js';
import { DEFAULT_LIMITS, HARD_LIMITS } from '../../src/protocol/limits.js';
import { loadConfig, parseConfig, SHIPPED_CLIENT_TOKENS, SHIPPED_SECRETS } from '../../src/runtime/config.js';
import { useTempDir } from './helpers/temp-dir.js';

const SRC = 'controllers/a.json';

function minimal(): Record<string, any> {
  return {
    id: 'A',
    pairId: '5d1e8a3c-2b4f-4c6d-9e8f-0a1b2c3d4e5f',
    secret: 'a-peer-secret-of-some-length',
    clientToken: 'client-token',
    listen: { client: { port: 7001 }, peer: { port: 7101 } },
    partner: { id: 'B', client: { port: 7002 }, peer: { host: '127.0.0.1', port: 7102 } },
    store: { path: 'data/pair.store' },
  };
}

/** Applies a change to a fresh minimal config and returns the BAD_CONFIG error. */
function badConfig(change: (c: Record<string, any>) => void): PagepairError {
  const c = minimal();
  change(c);
  try {
    parseConfig(c, SRC, { cwd: '/srv/pagepair' });
  } catch (err) {
    expect(err).toBeInstanceOf(PagepairError);
    expect((err as PagepairError).code).toBe('BAD_CONFIG');
    expect((err as PagepairError).message.startsWith(`${SRC}: `)).toBe(true);
    return err as PagepairError;
  }
  throw new Error('expected BAD_CONFIG');
}

function expectField(change: (c: Record<string, any>) => void, field: string, message?: RegExp): void {
  const err = badConfig(change);
  expect(err.field).toBe(field);
  expect(err.message).toContain(`${SRC}: ${field} `);
  if (message !== undefined) expect(err.message).toMatch(message);
}

describe('parseConfig', () => {
  it('loads a minimal config and fills every default', () => {
    const c = parseConfig(minimal(), SRC, { cwd: '/srv/pagepair' });
    expect(c.idLetter).toBe('A');
    expect(c.idNumber).toBe(1);
    expect(c.sourceName).toBe(SRC);
    expect(c.partner).toEqual({ idLetter: 'B', idNumber: 2, client: { host: '127.0.0.1', port: 7002 }, peer: { host: '127.0.0.1', port: 7102 } });
    expect(c.listen).toEqual({ client: { host: '127.0.0.1', port: 7001 }, peer: { host: '127.0.0.1', port: 7101 } });
    expect(c.mirroring).toBe(true);
    expect(c.store).toEqual({ path: '/srv/pagepair/data/pair.store', pool: null, sizeBytes: 1024 ** 3, tableEntriesMax: 4096 });
    expect(c.cache).toEqual({
      cacheBytesMax: 256 * 1024 * 1024,
      dirtyHighWatermarkPct: 60,
      dirtyLowWatermarkPct: 30,
      dirtyAgeMaxMs: 2000,
      destageConcurrency: 16,
    });
    expect(c.limits).toEqual({
      ...DEFAULT_LIMITS,
      inflightPerClientMax: 256,
      replyBytesBufferedMax: 64 * 1024 * 1024,
      clientConnectionsMax: 1024,
      peerConnectionsMax: 64,
      nbdConnectionsMax: 256,
      preAuthBytesMax: 64 * 1024,
      handshakeTimeoutMs: 5000,
      handshakesPerSourceMax: 4,
      nbdBytesInFlightMax: 64 * 1024 * 1024,
      peerBytesBufferedMax: 256 * 1024 * 1024,
    });
    expect(c.tls).toEqual({ mode: 'off' });
    expect(c.heartbeatIntervalMs).toBe(100);
    expect(c.partnerTimeoutMs).toBe(500);
    expect(c.peerReconnectMs).toBe(100);
    expect(c.log).toEqual({ level: 'info' });
    expect(c.userPolicies).toEqual([]);
    expect([...c.policies.keys()]).toEqual(BUILTIN_POLICIES.map((p) => p.name));
  });

  it('takes every field when given, and resolves relative paths against cwd', () => {
    const c = minimal();
    c.id = 'B';
    c.partner.id = 'A';
    c.pairId = c.pairId.toUpperCase();
    c.store = { path: '/abs/pair.store', sizeBytes: 64 * 1024 * 1024, tableEntriesMax: 100 };
    c.cache = { cacheBytesMax: 1 << 20, dirtyHighWatermarkPct: 90, dirtyLowWatermarkPct: 10, dirtyAgeMaxMs: 50, destageConcurrency: 2 };
    c.limits = { pagesPerMessageMax: 16, inflightPerClientMax: 8, replyBytesBufferedMax: 32 * 1024 * 1024 };
    c.policies = [{ name: 'tiny', dataStructureBytes: 100, pageSizeBytes: 512 }];
    c.log = { level: 'debug', file: 'logs/b.log' };
    c.heartbeatIntervalMs = 20;
    c.partnerTimeoutMs = 40;
    c.peerReconnectMs = 5;
    const cfg = parseConfig(c, SRC, { cwd: '/work' });
    expect(cfg.idNumber).toBe(2);
    expect(cfg.partner?.idNumber).toBe(1);
    expect(cfg.pairId).toBe(minimal().pairId);
    expect(cfg.store.path).toBe('/abs/pair.store');
    expect(cfg.cache.dirtyAgeMaxMs).toBe(50);
    expect(cfg.limits.pagesPerMessageMax).toBe(16);
    expect(cfg.limits.inflightPerClientMax).toBe(8);
    expect(cfg.limits.replyBytesBufferedMax).toBe(32 * 1024 * 1024);
    expect(cfg.limits.frameBytesMax).toBe(DEFAULT_LIMITS.frameBytesMax);
    // Fewer than two of the largest frames would drop a client reading at full speed.
    const small = minimal();
    small.limits = { replyBytesBufferedMax: DEFAULT_LIMITS.frameBytesMax };
    expect(() => parseConfig(small, SRC, { cwd: '/work' })).toThrow(/limits\.replyBytesBufferedMax/);
    expect(cfg.userPolicies).toEqual([{ name: 'tiny', dataStructureBytes: 100, pageSizeBytes: 512, description: '' }]);
    expect(cfg.policies.get('tiny')?.pageSizeBytes).toBe(512);
    expect(cfg.log).toEqual({ level: 'debug', file: '/work/logs/b.log' });
    expect(cfg.heartbeatIntervalMs).toBe(20);
  });

  it('allows a single controller without partner or peer listener', () => {
    const c = minimal();
    c.mirroring = false;
    delete c.partner;
    delete c.listen.peer;
    const cfg = parseConfig(c, SRC);
    expect(cfg.partner).toBeNull();
    expect(cfg.listen.peer).toBeNull();
    expect(cfg.store.path).toBe(join(process.cwd(), 'data/pair.store'));
  });

  it('allows port 0 for both listeners (tests)', () => {
    const c = minimal();
    c.listen = { client: { port: 0 }, peer: { port: 0 } };
    expect(parseConfig(c, SRC).listen.client.port).toBe(0);
  });

  it('names a field of the wrong type', () => {
    expectField((c) => (c.id = 1), 'id', /must be one of "A", "B", got 1/);
    expectField((c) => (c.secret = 12345678901234567), 'secret', /must be a string/);
    expectField((c) => (c.mirroring = 'yes'), 'mirroring', /true or false/);
    expectField((c) => (c.cache = { cacheBytesMax: '256MiB' }), 'cache.cacheBytesMax', /must be an integer/);
    expectField((c) => (c.cache = { destageConcurrency: 1.5 }), 'cache.destageConcurrency');
    expectField((c) => (c.listen.client.port = '7001'), 'listen.client.port');
    expectField((c) => (c.listen.client.host = 7), 'listen.client.host');
    expectField((c) => (c.store = 'pair.store'), 'store', /must be an object/);
    expectField((c) => (c.cache = null), 'cache', /must be an object, got null/);
    expectField((c) => (c.policies = {}), 'policies', /array/);
    expectField((c) => (c.policies = [7]), 'policies[0]', /must be an object/);
    expectField((c) => (c.policies = [{ name: 'x', dataStructureBytes: 'big', pageSizeBytes: 4096 }]), 'policies[0].dataStructureBytes');
    expectField((c) => (c.log = { level: 'loud' }), 'log.level', /one of/);
  });

  it('names a missing field', () => {
    expectField((c) => delete c.id, 'id', /\(missing\)/);
    expectField((c) => delete c.pairId, 'pairId', /\(missing\)/);
    expectField((c) => delete c.secret, 'secret', /\(missing\)/);
    expectField((c) => delete c.clientToken, 'clientToken');
    expectField((c) => delete c.listen, 'listen');
    expectField((c) => delete c.listen.peer, 'listen.peer');
    expectField((c) => delete c.listen.client.port, 'listen.client.port');
    expectField((c) => delete c.partner, 'partner');
    expectField((c) => delete c.partner.peer, 'partner.peer');
    expectField((c) => delete c.store.path, 'store.path');
    expectField((c) => (c.policies = [{ name: 'p', pageSizeBytes: 4096 }]), 'policies[0].dataStructureBytes');
  });

  it('names an unknown field, suggesting the one meant', () => {
    expectField((c) => (c.heartbeatIntervalMS = 100), 'heartbeatIntervalMS', /not a known field \(did you mean heartbeatIntervalMs\?\)/);
    expectField((c) => (c.cache = { cacheByteMax: 1 }), 'cache.cacheByteMax', /did you mean cacheBytesMax/);
    expectField((c) => (c.listen.client.adress = 'x'), 'listen.client.adress');
    expectField((c) => (c.limits = { frameBytes: 1 }), 'limits.frameBytes');
    expectField((c) => (c.policies = [{ name: 'p', dataStructureBytes: 1, pageSizeBytes: 4096, cache: 'lru' }]), 'policies[0].cache');
    expectField((c) => (c.zzz = 1), 'zzz', /not a known field$/);
  });

  it('names an out-of-range value', () => {
    expectField((c) => (c.listen.peer.port = 65536), 'listen.peer.port', /0\.\.65535/);
    expectField((c) => (c.partner.client.port = -1), 'partner.client.port');
    expectField((c) => (c.secret = 'short'), 'secret', /at least 16 characters/);
    expectField((c) => (c.clientToken = 'tiny'), 'clientToken', /at least 8/);
    expectField((c) => (c.clientToken = c.secret), 'clientToken', /differ from secret/);
    expectField((c) => (c.cache = { dirtyHighWatermarkPct: 101 }), 'cache.dirtyHighWatermarkPct');
    expectField((c) => (c.cache = { dirtyHighWatermarkPct: 30, dirtyLowWatermarkPct: 30 }), 'cache.dirtyLowWatermarkPct', /below/);
    expectField((c) => (c.cache = { cacheBytesMax: 0 }), 'cache.cacheBytesMax');
    expectField((c) => (c.store.sizeBytes = 100_000), 'store.sizeBytes', /too small/);
    expectField((c) => (c.store.tableEntriesMax = 0), 'store.tableEntriesMax');
    expectField((c) => (c.limits = { frameBytesMax: HARD_LIMITS.frameBytesMax + 1 }), 'limits.frameBytesMax');
    expectField((c) => (c.limits = { pageSizeBytesMax: 3000 }), 'limits.pageSizeBytesMax', /power of two/);
    expectField((c) => (c.limits = { requestBytesMax: 1 << 20, frameBytesMax: 1 << 19 }), 'limits.requestBytesMax');
    expectField((c) => (c.limits = { inflightPerClientMax: 0 }), 'limits.inflightPerClientMax');
    expectField((c) => (c.heartbeatIntervalMs = 0), 'heartbeatIntervalMs');
    expectField((c) => (c.partnerTimeoutMs = 150), 'partnerTimeoutMs', /twice heartbeatIntervalMs/);
    expectField((c) => (c.policies = [{ name: 'p', dataStructureBytes: 1, pageSizeBytes: 3000 }]), 'policies[0].pageSizeBytes', /power of two/);
    expectField((c) => (c.policies = [{ name: 'p', dataStructureBytes: 1, pageSizeBytes: 256 }]), 'policies[0].pageSizeBytes');
    expectField(
      (c) => {
        c.limits = { pageSizeBytesMax: 65536 };
        c.policies = [{ name: 'p', dataStructureBytes: 1, pageSizeBytes: 131072 }];
      },
      'policies[0].pageSizeBytes',
      /limits.pageSizeBytesMax/,
    );
  });

  it('refuses the same id for both controllers and a controller as its own partner', () => {
    expectField((c) => (c.partner.id = 'A'), 'partner.id', /must differ from id/);
    expectField((c) => (c.partner.peer.port = 7101), 'partner.peer.port', /own partner/);
    expectField((c) => (c.listen.peer.port = 7001), 'listen.peer.port');
  });

  it('refuses a bad uuid', () => {
    expectField((c) => (c.pairId = 'pair-1'), 'pairId', /uuid/);
    expectField((c) => (c.pairId = '5d1e8a3c2b4f4c6d9e8f0a1b2c3d4e5f'), 'pairId', /uuid/);
  });

  it('refuses redefining a built-in policy or defining one twice', () => {
    expectField((c) => (c.policies = [{ name: 'default', dataStructureBytes: 1, pageSizeBytes: 4096 }]), 'policies[0].name', /built-in/);
    expectField(
      (c) =>
        (c.policies = [
          { name: 'mine', dataStructureBytes: 1, pageSizeBytes: 4096 },
          { name: 'mine', dataStructureBytes: 2, pageSizeBytes: 8192 },
        ]),
      'policies[1].name',
      /defined twice/,
    );
    expectField((c) => (c.policies = [{ name: 'has space', dataStructureBytes: 1, pageSizeBytes: 4096 }]), 'policies[0].name');
    expectField((c) => (c.policies = [{ name: 'x'.repeat(33), dataStructureBytes: 1, pageSizeBytes: 4096 }]), 'policies[0].name');
  });

  it('refuses a configuration that is not an object', () => {
    expect(() => parseConfig([], SRC)).toThrow(/must be a JSON object/);
    expect(() => parseConfig(null, SRC)).toThrow(PagepairError);
  });
});

describe('loadConfig', () => {
  const tmp = useTempDir('pagepair-config-');

  it('reads a file and names it in errors', async () => {
    const good = join(tmp.path, 'a.json');
    await writeFile(good, JSON.stringify(minimal()));
    expect(loadConfig(good, { cwd: tmp.path }).store.path).toBe(join(tmp.path, 'data/pair.store'));

    const typo = join(tmp.path, 'typo.json');
    await writeFile(typo, JSON.stringify({ ...minimal(), cache: { cacheBytesMax: -5 } }));
    expect(() => loadConfig(typo)).toThrow(`${typo}: cache.cacheBytesMax must be an integer`);

    const broken = join(tmp.path, 'broken.json');
    await writeFile(broken, '{ "id": "A", ');
    expect(() => loadConfig(broken)).toThrow(new RegExp(`^${broken.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: not valid JSON`));
    expect(() => loadConfig(join(tmp.path, 'missing.json'))).toThrow(/cannot read/);
  });
});

describe('policies', () => {
  it('has the built-ins with valid page sizes', () => {
    const m = resolvePolicies([]);
    expect(m.get('default')).toMatchObject({ dataStructureBytes: 4096, pageSizeBytes: 4096 });
    expect(m.get('db-page')).toMatchObject({ dataStructureBytes: 8192, pageSizeBytes: 8192 });
    expect(m.get('log')?.pageSizeBytes).toBe(65536);
    expect(m.get('bulk')).toMatchObject({ dataStructureBytes: 1 << 20, pageSizeBytes: 1 << 20 });
    expect(m.get('checkpoint')?.pageSizeBytes).toBe(262144);
    expect(m.get('small-object')).toMatchObject({ dataStructureBytes: 512, pageSizeBytes: 4096 });
    // Built-ins cannot be changed through the exported list.
    expect(() => {
      (BUILTIN_POLICIES[0] as { pageSizeBytes: number }).pageSizeBytes = 1;
    }).toThrow();
  });

  it('counts pages, rounding up', () => {
    const p = { name: 'default', pageSizeBytes: 4096 };
    expect(pageCountFor(p, 0)).toBe(0);
    expect(pageCountFor(p, 1)).toBe(1);
    expect(pageCountFor(p, 4096)).toBe(1);
    expect(pageCountFor(p, 4097)).toBe(2);
    expect(() => pageCountFor(p, -1)).toThrow(PagepairError);
    expect(() => pageCountFor(p, 1.5)).toThrow(/non-negative integer/);
    expect(() => pageCountFor({ name: 'tiny', pageSizeBytes: 512 }, 512 * 2 ** 32)).toThrow(expect.objectContaining({ code: 'TOO_LARGE' }));
  });
});

describe('arbitration and alone settings', () => {
  it('default to preferring A, killing a silent partner, and writing through', () => {
    const c = parseConfig(minimal(), SRC, { cwd: '/srv/pagepair' });
    expect(c.arbitration).toEqual({ preferredLetter: 'A', preferredNumber: 1, fenceAction: 'kill' });
    expect(c.alone).toEqual({ ackMode: 'write-through' });
  });

  it('take a preference and a fence action', () => {
    const m = minimal();
    m.arbitration = { preferred: 'B', fenceAction: 'none' };
    const c = parseConfig(m, SRC, { cwd: '/srv/pagepair' });
    expect(c.arbitration).toEqual({ preferredLetter: 'B', preferredNumber: 2, fenceAction: 'none' });
  });

  it('name the bad field', () => {
    expectField((c) => (c.arbitration = { preferred: 'C' }), 'arbitration.preferred');
    expectField((c) => (c.arbitration = { fenceAction: 'shoot' }), 'arbitration.fenceAction');
    expectField((c) => (c.arbitration = { prefered: 'A' }), 'arbitration.prefered', /did you mean preferred/);
  });

  it('refuse the journal mode, which is not built yet', () => {
    expectField((c) => (c.alone = { ackMode: 'journal', journalPath: 'j' }), 'alone.ackMode', /not built yet/);
  });
});

describe('listen.nbd', () => {
  it('is absent unless given: no NBD server', () => {
    expect(parseConfig(minimal(), SRC, { cwd: '/srv/pagepair' }).listen.nbd).toBeUndefined();
  });

  it('takes a port, defaults the host, and resolves a relative socket against cwd', () => {
    const c = minimal();
    c.listen.nbd = { port: 10809, socket: 'data/a.nbd.sock' };
    expect(parseConfig(c, SRC, { cwd: '/srv/pagepair' }).listen.nbd).toEqual({ host: '127.0.0.1', port: 10809, socket: '/srv/pagepair/data/a.nbd.sock' });
    c.listen.nbd = { host: '0.0.0.0', port: 0, socket: '/run/pagepair/a.sock' };
    c.tls = { mode: 'require', pskFile: '/etc/pagepair/nbd.psk' };
    expect(parseConfig(c, SRC, { cwd: '/srv/pagepair' }).listen.nbd).toEqual({ host: '0.0.0.0', port: 0, socket: '/run/pagepair/a.sock' });
    delete c.tls;
    c.listen.nbd = { port: 10809 };
    expect(parseConfig(c, SRC).listen.nbd).toEqual({ host: '127.0.0.1', port: 10809 });
  });

  it('allows port 0 alongside port-0 client and peer listeners', () => {
    const c = minimal();
    c.listen = { client: { port: 0 }, peer: { port: 0 }, nbd: { port: 0 } };
    expect(parseConfig(c, SRC).listen.nbd?.port).toBe(0);
  });

  it('names the bad field', () => {
    expectField((c) => (c.listen.nbd = 10809), 'listen.nbd', /must be an object, got 10809/);
    expectField((c) => (c.listen.nbd = {}), 'listen.nbd.port', /\(missing\)/);
    expectField((c) => (c.listen.nbd = { port: 70000 }), 'listen.nbd.port', /0\.\.65535/);
    expectField((c) => (c.listen.nbd = { port: '10809' }), 'listen.nbd.port', /integer/);
    expectField((c) => (c.listen.nbd = { port: 10809, host: '' }), 'listen.nbd.host', /non-empty string/);
    expectField((c) => (c.listen.nbd = { port: 10809, socket: '' }), 'listen.nbd.socket', /a path/);
    expectField((c) => (c.listen.nbd = { port: 10809, socket: 5 }), 'listen.nbd.socket', /a path/);
    expectField((c) => (c.listen.nbd = { port: 10809, sockets: 'x' }), 'listen.nbd.sockets', /did you mean socket/);
    expectField((c) => (c.listen.nbd = { port: 10809, socket: `/tmp/${'s'.repeat(120)}.sock` }), 'listen.nbd.socket', /too long for a unix socket/);
  });

  it('refuses the port of the client or peer listener on the same host', () => {
    expectField((c) => (c.listen.nbd = { port: 7001 }), 'listen.nbd.port', /must differ from listen.client.port \(7001 on 127.0.0.1\)/);
    expectField((c) => (c.listen.nbd = { port: 7101 }), 'listen.nbd.port', /must differ from listen.peer.port/);
    const c = minimal();
    c.listen.nbd = { host: '127.0.0.2', port: 7001 };
    expect(parseConfig(c, SRC).listen.nbd?.port).toBe(7001);
  });
});

describe('tls and the bounds of issue 11', () => {
  it('takes a mode and a key file, resolved against cwd', () => {
    const c = minimal();
    c.tls = { mode: 'on', pskFile: 'keys/nbd.psk' };
    expect(parseConfig(c, SRC, { cwd: '/srv/pagepair' }).tls).toEqual({ mode: 'on', pskFile: '/srv/pagepair/keys/nbd.psk' });
    c.tls = { mode: 'require' };
    expect(parseConfig(c, SRC).tls).toEqual({ mode: 'require' });
  });

  it('names a bad mode, a missing key file for NBD, and unknown fields', () => {
    expectField((c) => (c.tls = { mode: 'yes' }), 'tls.mode', /"off", "on" or "require"|one of/);
    expectField((c) => {
      c.tls = { mode: 'require' };
      c.listen.nbd = { port: 10809 };
    }, 'tls.pskFile', /is missing.*listen\.nbd/);
    expectField((c) => (c.tls = { mode: 'on', psk: 'x' }), 'tls.psk');
  });

  it('refuses NBD reachable from other machines unless TLS is required, and says why', () => {
    for (const mode of [undefined, 'off', 'on']) {
      expectField((c) => {
        c.listen.nbd = { host: '0.0.0.0', port: 10809 };
        if (mode !== undefined) c.tls = { mode, pskFile: '/k.psk' };
      }, 'tls.mode', /reachable from other machines: NBD authenticates only through TLS-PSK/);
    }
    const c = minimal();
    c.listen.nbd = { host: '127.0.0.5', port: 10809 };
    expect(parseConfig(c, SRC).listen.nbd?.host).toBe('127.0.0.5');
  });

  it('keeps each bound within its range, naming the field', () => {
    expectField((c) => (c.limits = { preAuthBytesMax: 100 }), 'limits.preAuthBytesMax', /4096/);
    expectField((c) => (c.limits = { peerConnectionsMax: 1 }), 'limits.peerConnectionsMax');
    expectField((c) => (c.limits = { handshakeTimeoutMs: 10 }), 'limits.handshakeTimeoutMs');
    expectField((c) => (c.limits = { handshakesPerSourceMax: 0 }), 'limits.handshakesPerSourceMax');
    // Two of the largest requests at least: one request in flight never trips the NBD bound.
    expectField((c) => (c.limits = { nbdBytesInFlightMax: 1024 * 1024 }), 'limits.nbdBytesInFlightMax');
    const c = minimal();
    c.limits = { nbdConnectionsMax: 8, preAuthBytesMax: 8192, handshakesPerSourceMax: 2 };
    expect(parseConfig(c, SRC).limits).toMatchObject({ nbdConnectionsMax: 8, preAuthBytesMax: 8192, handshakesPerSourceMax: 2 });
  });
});

describe('the default pair (controllers/*.json)', () => {
  it('loads, serves NBD on 10809 and 10810 with sockets under data/, and has a store with room for a 1 GiB volume', () => {
    const a = loadConfig('controllers/a.json', { cwd: '/srv/pagepair' });
    const b = loadConfig('controllers/b.json', { cwd: '/srv/pagepair' });
    expect(a.listen.nbd).toEqual({ host: '127.0.0.1', port: 10809, socket: '/srv/pagepair/data/a.nbd.sock' });
    expect(b.listen.nbd).toEqual({ host: '127.0.0.1', port: 10810, socket: '/srv/pagepair/data/b.nbd.sock' });
    for (const c of [a, b]) {
      // 1 GiB of 4 KiB pages, each with its 64-byte header in the store, and as much again.
      expect(c.store.sizeBytes).toBeGreaterThanOrEqual(2 * (1024 ** 3 / 4096) * (4096 + 64));
    }
    expect(a.store).toEqual(b.store);
  });
});

describe('testHooks', () => {
  it('is off by default, and allowed on when every listener is on loopback', () => {
    expect(parseConfig(minimal(), SRC, { cwd: '/srv/pagepair' }).testHooks).toBe(false);
    for (const host of ['127.0.0.1', '::1', 'localhost']) {
      const c = minimal();
      c.testHooks = true;
      c.listen.client.host = host;
      c.listen.peer.host = host;
      c.listen.nbd = { host, port: 7201 };
      expect(parseConfig(c, SRC, { cwd: '/srv/pagepair' }).testHooks).toBe(true);
    }
  });

  it('refuses testHooks when any listener is reachable from other machines', () => {
    expectField((c) => Object.assign(c, { testHooks: 'yes' }), 'testHooks', /true or false/);
    expectField((c) => Object.assign(c, { testHooks: true, listen: { client: { host: '0.0.0.0', port: 7001 }, peer: { port: 7101 } } }), 'testHooks', /listen\.client\.host is "0\.0\.0\.0"/);
    expectField((c) => Object.assign(c, { testHooks: true, listen: { client: { port: 7001 }, peer: { host: '10.0.0.5', port: 7101 } } }), 'testHooks', /listen\.peer\.host/);
    expectField((c) => Object.assign(c, { testHooks: true, listen: { client: { port: 7001 }, peer: { port: 7101 }, nbd: { host: '::', port: 7201 } } }), 'testHooks', /listen\.nbd\.host/);
  });

  it('takes testKillAfterDataWrites only with testHooks on', () => {
    expect(parseConfig(minimal(), SRC, { cwd: '/srv/pagepair' }).testKillAfterDataWrites).toBeNull();
    expect(parseConfig(Object.assign(minimal(), { testHooks: true, testKillAfterDataWrites: 2 }), SRC, { cwd: '/srv/pagepair' }).testKillAfterDataWrites).toBe(2);
    expectField((c) => Object.assign(c, { testKillAfterDataWrites: 2 }), 'testKillAfterDataWrites', /needs testHooks true/);
    expectField((c) => Object.assign(c, { testHooks: true, testKillAfterDataWrites: -1 }), 'testKillAfterDataWrites', /./);
  });
});

// Issue 11, finding 3: the default pair's secret and client token are in the
// source, so they must not open a controller that other machines can reach.
describe('secrets and tokens', () => {
  const SHIPPED_SECRET = 'change-me: shared peer secret of the default pair';
  const SHIPPED_TOKEN = 'default-pair-client-token';
  const NO_ENV = {};
  const tmp = useTempDir('pagepair-secrets-');

  function parse(c: Record<string, any>, env: NodeJS.ProcessEnv = NO_ENV) {
    return parseConfig(c, SRC, { cwd: tmp.path, env });
  }

  function refused(c: Record<string, any>, env: NodeJS.ProcessEnv = NO_ENV): PagepairError {
    try {
      parse(c, env);
    } catch (err) {
      expect(err).toBeInstanceOf(PagepairError);
      expect((err as PagepairError).code).toBe('BAD_CONFIG');
      return err as PagepairError;
    }
    throw new Error('expected BAD_CONFIG');
  }

  async function credentialFile(name: string, text: string, mode: number): Promise<string> {
    const path = join(tmp.path, name);
    await writeFile(path, text);
    await chmod(path, mode);
    return path;
  }

  it('lists exactly the values controllers/*.json ship', () => {
    for (const file of ['controllers/a.json', 'controllers/b.json']) {
      const c = loadConfig(file, { env: NO_ENV });
      expect(SHIPPED_SECRETS).toContain(c.secret);
      expect(SHIPPED_CLIENT_TOKENS).toContain(c.clientToken);
      // npm start works with no setup because the default pair listens on loopback only.
      expect([c.listen.client.host, c.listen.peer?.host, c.listen.nbd?.host]).toEqual(['127.0.0.1', '127.0.0.1', '127.0.0.1']);
    }
  });

  it('refuses the shipped secret when a listener is off loopback, and says why', () => {
    const c = minimal();
    c.secret = SHIPPED_SECRET;
    c.listen.client.host = '0.0.0.0';
    const err = refused(c);
    expect(err.field).toBe('secret');
    expect(err.message).toContain(`${SRC}: secret is the shipped default`);
    expect(err.message).toMatch(/public/);
    expect(err.message).toMatch(/listen\.client\.host is "0\.0\.0\.0"/);
    expect(err.message).toMatch(/set your own secret .*or listen on loopback only/);
  });

  it('refuses the shipped client token off loopback, whichever listener it is', () => {
    for (const change of [
      (c: Record<string, any>) => (c.listen.peer.host = '10.0.0.5'),
      (c: Record<string, any>) => (c.listen.nbd = { host: '::', port: 10809 }),
    ]) {
      const c = minimal();
      c.clientToken = SHIPPED_TOKEN;
      change(c);
      const err = refused(c);
      expect(err.field).toBe('clientToken');
      expect(err.message).toMatch(/clientToken is the shipped default .*public/);
    }
  });

  it('accepts the shipped values when every listener is on loopback or a unix socket', () => {
    for (const host of ['127.0.0.1', '::1', 'localhost']) {
      const c = minimal();
      Object.assign(c, { secret: SHIPPED_SECRET, clientToken: SHIPPED_TOKEN });
      c.listen.client.host = host;
      c.listen.peer.host = host;
      c.listen.nbd = { host, port: 10809, socket: 'a.nbd.sock' };
      expect(parse(c).secret).toBe(SHIPPED_SECRET);
    }
  });

  it('accepts a secret and token of your own on 0.0.0.0', () => {
    const c = minimal();
    c.listen.client.host = '0.0.0.0';
    c.listen.peer.host = '0.0.0.0';
    c.listen.nbd = { host: '0.0.0.0', port: 10809 };
    c.tls = { mode: 'require', pskFile: 'nbd.psk' };
    const cfg = parse(c);
    expect(cfg.secret).toBe('a-peer-secret-of-some-length');
    expect(cfg.clientToken).toBe('client-token');
  });

  it('reads secretFile and clientTokenFile, trimmed, when only the owner may open them', async () => {
    const secretFile = await credentialFile('secret', '  a-secret-from-a-file-0600\n', 0o600);
    await credentialFile('token', 'token-from-a-file\n', 0o400);
    const c = minimal();
    delete c.secret;
    delete c.clientToken;
    Object.assign(c, { secretFile, clientTokenFile: 'token' });
    c.listen.client.host = '0.0.0.0';
    const cfg = parse(c);
    expect(cfg.secret).toBe('a-secret-from-a-file-0600');
    expect(cfg.clientToken).toBe('token-from-a-file');
  });

  it('refuses a secretFile others may read, a missing or short one, and one given with secret', async () => {
    const open = await credentialFile('secret-0644', 'a-secret-from-a-file-0644', 0o644);
    const c = minimal();
    delete c.secret;
    c.secretFile = open;
    let err = refused(c);
    expect(err.field).toBe('secretFile');
    expect(err.message).toContain(`${SRC}: secretFile names ${open}, which other users may open (mode 0644)`);
    expect(err.message).toContain(`chmod 600 ${open}`);

    await chmod(open, 0o640);
    expect(refused(c).message).toMatch(/mode 0640/);

    c.secretFile = 'missing';
    expect(refused(c).message).toMatch(/secretFile names a file that cannot be read/);

    c.secretFile = await credentialFile('secret-short', 'short\n', 0o600);
    expect(refused(c).message).toMatch(/must hold at least 16 characters, got 5/);

    const both = minimal();
    both.secretFile = await credentialFile('secret-ok', 'a-secret-from-a-file-ok', 0o600);
    err = refused(both);
    expect(err.field).toBe('secretFile');
    expect(err.message).toMatch(/must not be given with secret/);
  });

  it('refuses the shipped secret from a file, naming the file', async () => {
    const shipped = await credentialFile('secret-shipped', `${SHIPPED_SECRET}\n`, 0o600);
    const c = minimal();
    delete c.secret;
    c.secretFile = shipped;
    c.listen.client.host = '0.0.0.0';
    const err = refused(c);
    expect(err.field).toBe('secretFile');
    expect(err.message).toContain(`secretFile is the shipped default of the default pair (from ${shipped})`);
  });

  it('takes PAGEPAIR_SECRET and PAGEPAIR_CLIENT_TOKEN over the file and the config value', async () => {
    const env = { PAGEPAIR_SECRET: 'a-secret-from-the-environment', PAGEPAIR_CLIENT_TOKEN: 'token-from-the-environment' };
    const c = minimal();
    c.listen.client.host = '0.0.0.0';
    let cfg = parse(c, env);
    expect(cfg.secret).toBe(env.PAGEPAIR_SECRET);
    expect(cfg.clientToken).toBe(env.PAGEPAIR_CLIENT_TOKEN);

    // The variable wins over a secretFile too; the file is not read.
    const f = minimal();
    delete f.secret;
    f.secretFile = 'no-such-file';
    cfg = parse(f, env);
    expect(cfg.secret).toBe(env.PAGEPAIR_SECRET);

    // No secret in the file at all: the environment is enough.
    const none = minimal();
    delete none.secret;
    delete none.clientToken;
    expect(parse(none, env).secret).toBe(env.PAGEPAIR_SECRET);
  });

  it('checks values from the environment like any other', () => {
    let err = refused(minimal(), { PAGEPAIR_SECRET: 'short' });
    expect(err.field).toBe('secret');
    expect(err.message).toMatch(/secret from PAGEPAIR_SECRET must be at least 16 characters/);

    const c = minimal();
    c.listen.nbd = { host: '0.0.0.0', port: 10809 };
    err = refused(c, { PAGEPAIR_CLIENT_TOKEN: SHIPPED_TOKEN });
    expect(err.field).toBe('clientToken');
    expect(err.message).toMatch(/clientToken is the shipped default of the default pair \(from PAGEPAIR_CLIENT_TOKEN\)/);

    err = refused(minimal(), { PAGEPAIR_CLIENT_TOKEN: 'a-peer-secret-of-some-length' });
    expect(err.message).toMatch(/clientToken must differ from secret/);
  });
});
