// store.pool (issue 14): the store over several devices, files or NBD
// exports, instead of one file. Every mistake is a BAD_CONFIG naming the
// field; store.path configurations are as before.

import { describe, expect, it } from 'vitest';
import { PagepairError } from '../../src/protocol/errors.js';
import { parseConfig, storeName } from '../../src/runtime/config.js';

const SRC = 'controllers/a.json';

function withPool(pool: Record<string, unknown> | undefined, store: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: 'A',
    pairId: '5d1e8a3c-2b4f-4c6d-9e8f-0a1b2c3d4e5f',
    secret: 'a-peer-secret-of-some-length',
    clientToken: 'client-token',
    listen: { client: { port: 7001 }, peer: { port: 7101 } },
    partner: { id: 'B', client: { port: 7002 }, peer: { host: '127.0.0.1', port: 7102 } },
    store: { ...(pool !== undefined ? { pool } : {}), ...store },
  };
}

function fieldOf(json: Record<string, unknown>): { field: string | undefined; message: string } {
  try {
    parseConfig(json, SRC, { cwd: '/srv/pagepair' });
  } catch (err) {
    expect(err).toBeInstanceOf(PagepairError);
    expect((err as PagepairError).code).toBe('BAD_CONFIG');
    return { field: (err as PagepairError).field, message: (err as PagepairError).message };
  }
  throw new Error('expected BAD_CONFIG');
}

describe('store.pool', () => {
  it('reads a mirror of files, resolving relative paths like store.path', () => {
    const c = parseConfig(withPool({ layout: 'mirror', devices: ['data/d0.img', '/abs/d1.img'], deviceBytes: 64 * 1024 * 1024 }), SRC, { cwd: '/srv/pagepair' });
    expect(c.store.path).toBeNull();
    expect(c.store.pool).toEqual({
      layout: 'mirror',
      chunkBytes: 0,
      deviceBytes: 64 * 1024 * 1024,
      devices: [
        { kind: 'file', path: '/srv/pagepair/data/d0.img' },
        { kind: 'file', path: '/abs/d1.img' },
      ],
    });
    expect(storeName(c.store)).toBe('mirror pool of /srv/pagepair/data/d0.img, /abs/d1.img');
  });

  it('reads a parity pool with nbd devices, chunkBytes defaulting to 64 KiB and deviceBytes to 1 GiB', () => {
    const c = parseConfig(withPool({ layout: 'parity', devices: ['data/d0.img', 'nbd://127.0.0.1:10809/x', 'nbd+unix:///export?socket=/run/nbd.sock'] }), SRC, { cwd: '/srv/pagepair' });
    expect(c.store.pool).toEqual({
      layout: 'parity',
      chunkBytes: 65536,
      deviceBytes: 1024 ** 3,
      devices: [
        { kind: 'file', path: '/srv/pagepair/data/d0.img' },
        { kind: 'nbd', uri: 'nbd://127.0.0.1:10809/x' },
        { kind: 'nbd', uri: 'nbd+unix:///export?socket=/run/nbd.sock' },
      ],
    });
  });

  it('names the field at fault', () => {
    const cases: [Record<string, unknown>, string, RegExp][] = [
      [withPool({ layout: 'raid5', devices: ['a', 'b', 'c'] }), 'store.pool.layout', /one of "mirror", "parity", "parity2"/],
      [withPool({ layout: 'mirror', devices: ['a'] }), 'store.pool.devices', /2 to 32 devices for a mirror pool, got 1/],
      [withPool({ layout: 'parity', devices: ['a', 'b'] }), 'store.pool.devices', /3 to 32 devices for a parity pool, got 2/],
      [withPool({ layout: 'parity2', devices: ['a', 'b', 'c'] }), 'store.pool.devices', /4 to 32 devices for a parity2 pool, got 3/],
      [withPool({ layout: 'parity', devices: Array.from({ length: 33 }, (_, i) => `d${i}`) }), 'store.pool.devices', /3 to 32 devices for a parity pool, got 33/],
      [withPool({ layout: 'mirror', devices: 'a,b' }), 'store.pool.devices', /a list of 2 or more/],
      [withPool({ layout: 'parity', devices: ['a', 'b', 7] }), 'store.pool.devices[2]', /a path or an nbd:\/\/ URI/],
      [withPool({ layout: 'parity', devices: ['a', 'b', 'http://x/y'] }), 'store.pool.devices[2]', /http:\/\/ device/],
      [withPool({ layout: 'parity', devices: ['a', 'b', 'nbd+unix:///x'] }), 'store.pool.devices[2]', /no \?socket=path/],
      [withPool({ layout: 'parity', devices: ['a', 'b', '/srv/pagepair/a'] }), 'store.pool.devices[2]', /the same device as store.pool.devices\[0\]/],
      [withPool({ layout: 'mirror', devices: ['nbd://h:10809/x', 'nbd://h/x'] }), 'store.pool.devices[1]', /the same device as store.pool.devices\[0\]/],
      [withPool({ layout: 'parity', devices: ['a', 'b', 'c'], chunkBytes: 5000 }), 'store.pool.chunkBytes', /multiple of 4096/],
      [withPool({ layout: 'mirror', devices: ['a', 'b'], chunkBytes: 65536 }), 'store.pool.chunkBytes', /parity layouts only/],
      [withPool({ layout: 'mirror', devices: ['a', 'b'], deviceBytes: 100_000 }), 'store.pool.deviceBytes', /does not fit/],
      [withPool({ layout: 'parity', devices: ['a', 'b', 'c'], deviceBytes: 300_000 }), 'store.pool.deviceBytes', /does not fit/],
      [withPool({ layout: 'mirror', devices: ['a', 'b'], size: 1 }), 'store.pool.size', /not a known field/],
      [withPool({ layout: 'mirror', devices: ['a', 'b'] }, { path: 'x' }), 'store.pool', /must not be given with store.path/],
      [withPool({ layout: 'mirror', devices: ['a', 'b'] }, { sizeBytes: 1024 ** 3 }), 'store.sizeBytes', /must not be given with store.pool/],
      [withPool(undefined), 'store.path', /or give store.pool instead/],
    ];
    for (const [json, field, message] of cases) {
      const got = fieldOf(json);
      expect(got.field, `${JSON.stringify(json.store)}`).toBe(field);
      expect(got.message).toMatch(message);
      expect(got.message.startsWith(`${SRC}: ${field} `)).toBe(true);
    }
  });

  it('leaves a store.path configuration as it was', () => {
    const c = parseConfig(withPool(undefined, { path: 'data/pair.store', sizeBytes: 64 * 1024 * 1024 }), SRC, { cwd: '/srv/pagepair' });
    expect(c.store).toEqual({ path: '/srv/pagepair/data/pair.store', pool: null, sizeBytes: 64 * 1024 * 1024, tableEntriesMax: 4096 });
    expect(storeName(c.store)).toBe('/srv/pagepair/data/pair.store');
  });
});
