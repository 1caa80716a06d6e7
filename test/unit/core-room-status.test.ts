// Status: what a controller tells about itself (`pagepair status`, C_STATUS):
// who it is, its role and epoch, the partner as last heard, the cache, the
// counters the rooms keep, and a join's progress while one runs.

import { describe, expect, it } from 'vitest';
import { roleName } from '../../src/core/status.js';
import { JoinFlag, Role, SenseReason } from '../../src/protocol/messages.js';
import { CONN, allocate, clientWrite, coreFixture, HandPartner, joinedCore, PAGE, replyTo } from './core-fixture.js';

describe('status', () => {
  it('a single controller: who it is, its role, the cache and the counters; C_STATUS answers the same document', async () => {
    const f = await coreFixture({ selfId: 2 });
    const guid = await allocate(f, 'v', 4);
    clientWrite(f, guid, 0, Buffer.alloc(2 * PAGE, 1));
    const s = f.core.status();
    expect(s).toMatchObject({
      controller: 'B',
      role: 'single',
      epoch: 1,
      mirroring: false,
      partner: null,
      lease: null,
      allocations: 1,
      cachedPages: 2,
      dirtyPages: 2,
      dirtyBytes: 2 * PAGE,
      cacheBytesMax: 1024 * 1024,
      resync: null,
      lastVerify: null,
    });
    expect(s.counters).toMatchObject({ clientWrites: 1, bytesWritten: 2 * PAGE, evictions: 0 });
    const req = f.request({ kind: 'C_STATUS' });
    f.core.onClientRequest(CONN, req);
    const r = replyTo(f, req);
    expect(r?.kind === 'C_STATUS_REPLY' && JSON.parse(r.json)).toEqual(JSON.parse(JSON.stringify(f.core.status())));
  });

  it('mirrored: the partner as its last heartbeat answer told, and nothing of it once the link is down', async () => {
    const { f, partner } = await joinedCore();
    f.setNow(100);
    f.core.tick();
    await partner.pump();
    f.setNow(130);
    expect(f.core.status().partner).toEqual({ link: 'up', role: 'mirrored', lastHeardMsAgo: 30, digests: { table: '0', dirty: '0' } });
    expect(f.core.status().lease?.valid).toBe(true);
    f.core.peerDown('cut');
    expect(f.core.status().partner).toEqual({ link: 'down', role: null, lastHeardMsAgo: null, digests: null });
  });

  it('shows how far a join has come while it runs', async () => {
    const f = await coreFixture({ mirroring: true });
    const partner = new HandPartner(f);
    f.core.peerUp();
    await partner.pump();
    expect(f.core.status()).toMatchObject({ role: 'joining', resync: { authoritative: null, done: false, partnerDone: false } });
    partner.send({ kind: 'SENSE_REQUEST', role: Role.STARTING, reason: SenseReason.HEARTBEAT, joinFlags: JoinFlag.JOINING | JoinFlag.FRESH });
    await partner.pump();
    expect(f.core.status().resync).toMatchObject({ authoritative: true, done: true, partnerDone: false, pagesToSend: 0 });
  });

  it("names each role by its key, and an unknown one by its number", () => {
    expect(roleName(Role.MIRRORED)).toBe('mirrored');
    expect(roleName(Role.ARBITRATING)).toBe('arbitrating');
    expect(roleName(99)).toBe('role-99');
  });
});
