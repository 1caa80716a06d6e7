// Store I/O as effects: the core asks for an operation with an id and hears
// its outcome as an event. An untyped failure reaches the client as
// IO_ERROR naming the operation; a typed one keeps its code; an outcome for
// no operation in flight is ignored.

import { describe, expect, it } from 'vitest';
import { PagepairError } from '../../src/protocol/errors.js';
import { CONN, coreFixture, errorName, hop, PAGE, replyTo } from './core-fixture.js';

describe('store I/O as effects', () => {
  it('asks for each operation through startIo and waits for its outcome before going on', async () => {
    const f = await coreFixture();
    const req = f.request({ kind: 'C_ALLOCATE', name: 'v', policy: '', sizeBytes: 4 * PAGE });
    f.core.onClientRequest(CONN, req);
    expect(f.pending.map((p) => p.op.kind)).toEqual(['clearExtent']);
    expect(f.core.io.inFlight).toBe(1);
    expect(replyTo(f, req)).toBeUndefined();
    await f.runOne('clearExtent');
    // The table is written only after the extent was zeroed.
    expect(f.pending.map((p) => p.op.kind)).toEqual(['writeTable']);
    await f.runOne('writeTable');
    await hop();
    expect(replyTo(f, req)?.kind).toBe('C_ALLOCATE_REPLY');
    expect(f.core.io.inFlight).toBe(0);
  });

  it('an untyped store failure reaches the client as IO_ERROR naming the operation', async () => {
    const f = await coreFixture();
    const req = f.request({ kind: 'C_ALLOCATE', name: 'v', policy: '', sizeBytes: 4 * PAGE });
    f.core.onClientRequest(CONN, req);
    f.failOne('clearExtent', new Error('disk on fire'));
    const r = replyTo(f, req);
    expect(errorName(r)).toBe('IO_ERROR');
    expect(r?.kind === 'ERROR' && r.message).toContain('store clearExtent failed: disk on fire');
    expect(f.pending).toEqual([]);
  });

  it('a typed store failure keeps its code', async () => {
    const f = await coreFixture();
    const req = f.request({ kind: 'C_ALLOCATE', name: 'v', policy: '', sizeBytes: 4 * PAGE });
    f.core.onClientRequest(CONN, req);
    f.failOne('clearExtent', new PagepairError('STORE_CORRUPT', 'bad extent'));
    expect(errorName(replyTo(f, req))).toBe('STORE_CORRUPT');
  });

  it('an outcome for no operation in flight (unknown id, or answered twice) is ignored with a warning', async () => {
    const f = await coreFixture();
    const req = f.request({ kind: 'C_ALLOCATE', name: 'v', policy: '', sizeBytes: 4 * PAGE });
    f.core.onClientRequest(CONN, req);
    const first = f.pending[0]!;
    f.core.onIoDone(9999, { ok: true, value: undefined });
    expect(f.log.some((l) => l.level === 'warn' && l.msg === 'store outcome for no operation in flight')).toBe(true);
    f.core.onIoDone(first.id, { ok: false, error: new Error('first answer') });
    f.pending.shift();
    // The same id answered again, now with success: nothing changes.
    f.core.onIoDone(first.id, { ok: true, value: undefined });
    expect(errorName(replyTo(f, req))).toBe('IO_ERROR');
    expect(f.pending).toEqual([]);
    expect(f.replies.filter((r) => r.msg.requestId === req.requestId)).toHaveLength(1);
  });

  it('gives each operation in flight its own id', async () => {
    const f = await coreFixture();
    for (const name of ['a', 'b', 'c']) f.core.onClientRequest(CONN, f.request({ kind: 'C_ALLOCATE', name, policy: '', sizeBytes: PAGE }));
    const ids = f.pending.map((p) => p.id);
    expect(ids).toHaveLength(3);
    expect(new Set(ids).size).toBe(3);
  });
});
