// Access keys and the store's table: the coordinator writes a keyed
// allocation's digest to the table, and a core that starts from a table
// holding one refuses it to connections without the key.

import { describe, expect, it } from 'vitest';
import { keyDigest } from '../../src/core/access-keys.js';
import { CONN, coreFixture, errorName, hop, PAGE, replyTo, type CoreFixture } from './core-fixture.js';

async function ask(f: CoreFixture, body: Record<string, unknown>, connId = CONN) {
  const req = f.request(body);
  f.core.onClientRequest(connId, req);
  await f.settleIo();
  await hop();
  await f.settleIo();
  await hop();
  return replyTo(f, req);
}

describe('access keys in the table', () => {
  it('a keyed allocation is written to the table with its digest, never its key', async () => {
    const f = await coreFixture();
    const r = await ask(f, { kind: 'C_ALLOCATE', name: 'ckpt', policy: '', sizeBytes: PAGE, keyed: true });
    if (r?.kind !== 'C_ALLOCATE_REPLY') throw new Error(JSON.stringify(r));
    const table = await f.store.readTable();
    expect(table.records).toEqual([expect.objectContaining({ guid: r.guid, keyDigest: keyDigest(r.guid, r.key) })]);
  });

  it('a core started from a table with a keyed entry refuses it without the key and serves it with it', async () => {
    const guid = '00000000-0000-4000-8000-0000000000d1';
    const key = Buffer.alloc(16, 0x61);
    const f = await coreFixture({ table: [{ guid, name: 'ckpt', policy: 'default', pageSizeBytes: PAGE, pageCount: 1, dataOffset: 0, createdEpoch: 0, keyDigest: keyDigest(guid, key) }] });
    expect(errorName(await ask(f, { kind: 'C_READ', guid, offset: 0, length: 4, pointerId: 0 }))).toBe('ACCESS_DENIED');
    expect(errorName(await ask(f, { kind: 'C_UNLOCK', guid, key: Buffer.alloc(16, 0x62) }))).toBe('ACCESS_DENIED');
    expect((await ask(f, { kind: 'C_UNLOCK', guid, key }))?.kind).toBe('C_UNLOCK_REPLY');
    expect((await ask(f, { kind: 'C_READ', guid, offset: 0, length: 4, pointerId: 0 }))?.kind).toBe('C_READ_REPLY');
  });
});
