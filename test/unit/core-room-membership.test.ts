// Membership: the role and the epoch. A frame from a newer epoch is adopted
// by a fresh controller and fences one that served; an older one is refused
// with STALE_EPOCH; heartbeats go out on the link, a silent partner is
// dropped, a lone fresh controller arbitrates through the store; each role
// refuses client I/O in its own words.

import { describe, expect, it } from 'vitest';
import { LockOp, Role, SenseReason, JoinFlag } from '../../src/protocol/messages.js';
import { allocate, clientRead, clientWrite, coreFixture, errorName, framesOf, HandPartner, joinedCore, PAGE, replyTo, type CoreFixture } from './core-fixture.js';

const GUID = '00000000-0000-4000-8000-00000000abcd';

/** What a client write is answered while the core is in its present role. */
function writeRefusal(f: CoreFixture): { code: string | undefined; message: string } {
  const r = replyTo(f, clientWrite(f, GUID, 0, Buffer.alloc(4)));
  return { code: errorName(r), message: r?.kind === 'ERROR' ? r.message : '' };
}

/** Tick every 50 ms of core time up to `toMs`, carrying out the store operations. */
async function runUntil(f: CoreFixture, toMs: number): Promise<void> {
  for (let t = f.nowMs(); t <= toMs; t += 50) {
    f.setNow(t);
    f.core.tick();
    await f.settleIo();
  }
}

describe('membership', () => {
  it('a fresh controller adopts the newer epoch its partner speaks in', async () => {
    const f = await coreFixture({ mirroring: true });
    const partner = new HandPartner(f);
    f.core.peerUp();
    expect(f.core.currentEpoch).toBe(1);
    partner.send({ kind: 'SENSE_REQUEST', role: Role.ALONE, reason: SenseReason.HEARTBEAT, joinFlags: JoinFlag.JOINING }, { epoch: 4 });
    expect(f.core.currentEpoch).toBe(4);
    expect(f.core.currentRole).toBe(Role.JOINING);
    expect(f.closed).toEqual([]);
  });

  it('a controller that served is fenced by a frame from a newer epoch, and does not handle it', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 2, partner);
    partner.send({ kind: 'LOCK_REQUEST', guid, firstPage: 0, pageCount: 1, op: LockOp.TAKE, ownerGen: 0 }, { epoch: 2 });
    expect(f.core.currentRole).toBe(Role.FENCED);
    expect(f.core.currentEpoch).toBe(1);
    expect(f.closed).toEqual(['partner is in a newer epoch']);
    expect(f.core.allocator.allocs.get(guid)!.owner[0]).toBe(1);
    expect(writeRefusal(f)).toEqual({ code: 'FENCED', message: 'controller A is fenced: its partner serves in epoch 1 or later' });
  });

  it('refuses a frame from an older epoch with STALE_EPOCH, but hears a SENSE from one', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 2, partner);
    partner.send({ kind: 'LOCK_REQUEST', guid, firstPage: 0, pageCount: 1, op: LockOp.TAKE, ownerGen: 0 }, { epoch: 0 });
    const refused = f.flush();
    expect(refused.map(errorName)).toEqual(['STALE_EPOCH']);
    expect(f.core.allocator.allocs.get(guid)!.owner[0]).toBe(1);
    partner.send({ kind: 'SENSE_REQUEST', role: Role.STARTING, reason: SenseReason.HEARTBEAT, joinFlags: 0 }, { epoch: 0 });
    expect(framesOf(f.flush(), 'SENSE_REQUEST_REPLY')).toHaveLength(1);
    expect(f.core.currentRole).toBe(Role.MIRRORED);
  });

  it('sends a heartbeat every heartbeatIntervalMs, and drops a partner silent past partnerTimeoutMs', async () => {
    const { f, partner } = await joinedCore();
    f.setNow(99);
    f.core.tick();
    expect(framesOf(f.flush(), 'SENSE_REQUEST')).toHaveLength(0);
    f.setNow(100);
    f.core.tick();
    expect(framesOf(f.flush(), 'SENSE_REQUEST')).toEqual([expect.objectContaining({ reason: SenseReason.HEARTBEAT })]);
    // The partner is heard at 300; silence counts from there.
    f.setNow(300);
    partner.send({ kind: 'SENSE_REQUEST', role: Role.MIRRORED, reason: SenseReason.HEARTBEAT, joinFlags: 0 });
    f.setNow(800);
    f.core.tick();
    expect(f.closed).toEqual([]);
    f.setNow(801);
    f.core.tick();
    expect(f.closed).toEqual(['partner silent for 501 ms']);
    expect(f.core.currentRole).toBe(Role.ARBITRATING);
  });

  it('a fresh controller with no partner in sight arbitrates after partnerTimeoutMs and, unopposed, serves alone in a new epoch', async () => {
    const f = await coreFixture({ mirroring: true });
    await runUntil(f, 500);
    expect(f.core.currentRole).toBe(Role.STARTING);
    await runUntil(f, 1000);
    expect(f.core.currentRole).toBe(Role.ALONE);
    expect(f.core.currentEpoch).toBe(2);
    expect((await f.store.readMailbox()).epoch).toMatchObject({ epoch: 2, activeId: 1 });
  });

  it('a partner that comes onto the link while we arbitrate is not fenced, even if its slot has not moved (it started late on a loaded machine)', async () => {
    const f = await coreFixture({ mirroring: true });
    // The partner's process wrote its slot once, at its start, and is slow to beat again.
    await f.store.writeMailboxSlot({ controllerId: 2, epoch: 1, counter: 1, timeMs: 0, pid: 4242, role: Role.STARTING });
    const ops: string[] = [];
    const start = f.core.env.startIo;
    f.core.env.startIo = (id, op) => {
      ops.push(op.kind);
      start(id, op);
    };
    await runUntil(f, 500);
    f.setNow(550);
    f.core.tick();
    expect(f.core.currentRole).toBe(Role.ARBITRATING);
    // It comes onto the link in the middle of our arbitration (its store reads are still out).
    const partner = new HandPartner(f);
    f.core.peerUp();
    await f.settleIo();
    await partner.pump();
    await runUntil(f, 2000);
    expect(ops).not.toContain('fencePartner');
    expect(f.log.some((l) => l.msg.includes('the partner is on the link; no fence action'))).toBe(true);
  });

  it('alone, a write is answered only once the store holds it, synced', async () => {
    const f = await coreFixture({ mirroring: true });
    await runUntil(f, 1000);
    const guid = await allocate(f, 'v', 2);
    const w = clientWrite(f, guid, 0, Buffer.alloc(PAGE, 0x5c));
    expect(replyTo(f, w)).toBeUndefined();
    await f.runOne('writePage');
    expect(replyTo(f, w)).toBeUndefined();
    await f.runOne('sync');
    expect(replyTo(f, w)?.kind).toBe('C_WRITE_REPLY');
    expect(f.core.status().dirtyPages).toBe(0);
  });

  it('refuses client I/O in the words of each role', async () => {
    const starting = await coreFixture({ mirroring: true });
    expect(writeRefusal(starting)).toEqual({ code: 'NOT_ACTIVE', message: 'controller has not joined its partner yet; writes wait' });
    const r = replyTo(starting, clientRead(starting, GUID, 0, 4));
    expect(r?.kind === 'ERROR' && r.message).toBe('controller has not joined its partner yet; reads wait');

    const { f } = await joinedCore();
    f.core.peerDown('cut');
    expect(f.core.currentRole).toBe(Role.ARBITRATING);
    expect(writeRefusal(f)).toEqual({ code: 'NOT_MIRRORED', message: 'controller lost its partner and is arbitrating; writes wait' });

    const single = await coreFixture();
    void single.core.shutdown();
    expect(single.core.currentRole).toBe(Role.STOPPING);
    expect(writeRefusal(single)).toEqual({ code: 'SHUTTING_DOWN', message: 'controller is shutting down' });
  });

  it('a controller whose lease ran out reads nothing from its cache until the store says it still serves; taken over, it is fenced', async () => {
    const { f, partner } = await joinedCore({ config: { partnerTimeoutMs: 1_000_000 } });
    const guid = await allocate(f, 'v', 2, partner);
    clientWrite(f, guid, 0, Buffer.alloc(PAGE, 1));
    await partner.pump();
    // Paused past its lease; meanwhile the partner took over in epoch 2.
    f.setNow(f.core.membership.arbiter!.leaseMs + 10_000);
    expect(f.core.status().lease?.valid).toBe(false);
    await f.store.writeEpochRecord({ epoch: 2, activeId: 2, timeMs: 0 });
    const r = clientRead(f, guid, 0, 4);
    expect(replyTo(f, r)).toBeUndefined();
    expect(f.pending.map((p) => p.op.kind)).toEqual(['writeMailboxSlot']);
    await f.settleIo();
    expect(errorName(replyTo(f, r))).toBe('FENCED');
    expect(f.core.currentRole).toBe(Role.FENCED);
  });

  it('fenced, and the partner back: forgets its cache, reloads the table from the store, and joins afresh', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 2, partner);
    clientWrite(f, guid, 0, Buffer.alloc(PAGE, 1));
    await partner.pump();
    expect(f.core.status().dirtyPages).toBe(1);
    partner.send({ kind: 'SENSE_REQUEST', role: Role.ALONE, reason: SenseReason.HEARTBEAT, joinFlags: 0 }, { epoch: 2 });
    expect(f.core.currentRole).toBe(Role.FENCED);
    f.core.peerUp();
    expect(f.core.currentRole).toBe(Role.STARTING);
    expect(f.core.membership.fresh).toBe(true);
    expect(f.core.allocator.allocs.size).toBe(0);
    expect(f.core.status().dirtyPages).toBe(0);
    expect(f.pending.map((p) => p.op.kind)).toEqual(['readTable']);
    await partner.pump();
    expect([...f.core.allocator.allocs.keys()]).toEqual([guid]);
    expect(f.core.currentRole).toBe(Role.JOINING);
    expect(partner.sentOf('SENSE_REQUEST').at(-1)?.joinFlags).toBe(JoinFlag.JOINING | JoinFlag.FRESH);
  });

  it('a partner that says it is shutting down is known to be leaving', async () => {
    const { f, partner } = await joinedCore();
    expect(f.core.membership.partnerLeaving).toBe(false);
    partner.send({ kind: 'SENSE_REQUEST', role: Role.MIRRORED, reason: SenseReason.SHUTTING_DOWN, joinFlags: 0 });
    expect(f.core.membership.partnerLeaving).toBe(true);
  });
});
