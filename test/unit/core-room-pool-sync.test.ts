// Pool sync (src/core/pool-sync.ts): a store outcome that says our pool's
// generation grew (a member failed on our path) is not acted on until the
// partner says, in a SENSE reply, that its own pool object reached that
// generation; a partner asked for a newer generation refreshes its pool
// before it answers; a link that drops lets the held outcome go.

import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../../src/protocol/errors.js';
import { Role, SenseReason, type Message } from '../../src/protocol/messages.js';
import { runIo } from '../../src/runtime/store-io.js';
import { allocate, clientRead, errorName, hop, joinedCore, PAGE, readData, replyTo, type CoreFixture, type HandPartner } from './core-fixture.js';

const fence = { fencePartner: () => Promise.resolve(false), partnerGone: () => Promise.resolve(false) };

/** Carry out the first pending operation of `kind`, its outcome saying the pool is now at `generation`. */
async function runWithGeneration(f: CoreFixture, kind: string, generation: number): Promise<void> {
  const i = f.pending.findIndex((p) => p.op.kind === kind);
  if (i < 0) throw new Error(`no pending ${kind} (pending: ${f.pending.map((p) => p.op.kind).join(', ') || 'none'})`);
  const p = f.pending.splice(i, 1)[0]!;
  const outcome = await runIo(f.store, fence, p.op);
  f.core.onIoDone(p.id, { ...outcome, poolGeneration: generation });
}

function sensesOf(frames: Message[]): Extract<Message, { kind: 'SENSE_REQUEST' }>[] {
  return frames.filter((m): m is Extract<Message, { kind: 'SENSE_REQUEST' }> => m.kind === 'SENSE_REQUEST');
}

function senseReply(partner: HandPartner, to: Message, poolGeneration: number): void {
  partner.reply(to, { kind: 'SENSE_REQUEST_REPLY', role: Role.MIRRORED, senseCode: 0, allocations: 0, cachedPages: 0, dirtyPages: 0, destageQueue: 0, tableDigest: '0', dirtyDigest: '0', poolGeneration });
}

/** Joined, with a 4-page allocation; a client read of page 0 is staging it, its readPage answered with pool generation 2. */
async function readHeldAtGeneration2(): Promise<{ f: CoreFixture; partner: HandPartner; read: Message; sense: Extract<Message, { kind: 'SENSE_REQUEST' }> }> {
  const { f, partner } = await joinedCore();
  const guid = await allocate(f, 'v', 4, partner);
  partner.auto.delete('SENSE_REQUEST');
  const read = clientRead(f, guid, 0, PAGE);
  expect(f.pending.map((p) => p.op.kind)).toContain('readPage');
  await runWithGeneration(f, 'readPage', 2);
  await hop();
  const sense = sensesOf(f.flush()).at(-1);
  expect(sense).toBeDefined();
  return { f, partner, read, sense: sense! };
}

describe('pool sync', () => {
  it('holds a store outcome that raised the pool generation until the partner says in its SENSE reply that it reached it', async () => {
    const { f, partner, read, sense } = await readHeldAtGeneration2();
    // The read waits: the partner's pool object may still read the member we gave up on.
    expect(replyTo(f, read)).toBeUndefined();
    expect(f.core.counters.poolOutcomesHeld).toBe(1);
    expect(f.core.poolSync.heldOutcomes).toBe(1);
    expect(sense).toMatchObject({ reason: SenseReason.HEARTBEAT, poolGeneration: 2 });

    // A heartbeat answer from before the partner caught up changes nothing.
    f.setNow(f.nowMs() + 150);
    f.core.tick();
    const beat = sensesOf(f.flush()).at(-1)!;
    expect(beat.poolGeneration).toBe(2);
    senseReply(partner, sense, 2);
    await hop();
    expect(readData(replyTo(f, read))).toEqual(Buffer.alloc(PAGE));
    expect(f.core.poolSync.heldOutcomes).toBe(0);
    expect(f.core.poolSync.partnerGeneration).toBe(2);
    expect(f.core.currentRole).toBe(Role.MIRRORED);
    expect(f.closed).toEqual([]);
  });

  it("the partner's own SENSE carrying the generation does not release what we hold: it may know the generation without having acted on it; its answer to ours does", async () => {
    const { f, partner, read, sense } = await readHeldAtGeneration2();
    const theirs = partner.send({ kind: 'SENSE_REQUEST', role: Role.MIRRORED, reason: SenseReason.HEARTBEAT, joinFlags: 0, poolGeneration: 2 });
    const p = f.pending.splice(f.pending.findIndex((x) => x.op.kind === 'refreshPool'), 1)[0]!;
    f.core.onIoDone(p.id, { ok: true, value: 2 });
    await hop();
    // Our answer says what our pool object refreshed to.
    expect(f.flush().find((m) => m.kind === 'SENSE_REQUEST_REPLY' && m.requestId === theirs.requestId)).toMatchObject({ poolGeneration: 2 });
    expect(replyTo(f, read)).toBeUndefined();
    expect(f.core.poolSync.heldOutcomes).toBe(1);
    senseReply(partner, sense, 2);
    await hop();
    expect(replyTo(f, read)?.kind).toBe('C_READ_REPLY');
  });

  it('while one outcome is held, later ones wait behind it (they may have written to the members left only)', async () => {
    const { f, partner, read, sense } = await readHeldAtGeneration2();
    const second = clientRead(f, (f.core.allocator.allocs.values().next().value)!.record.guid, PAGE, PAGE);
    await f.runOne('readPage');
    await hop();
    expect(replyTo(f, second)).toBeUndefined();
    expect(f.core.poolSync.heldOutcomes).toBe(2);
    senseReply(partner, sense, 2);
    await hop();
    expect(replyTo(f, read)?.kind).toBe('C_READ_REPLY');
    expect(replyTo(f, second)?.kind).toBe('C_READ_REPLY');
  });

  it('a link that drops lets the held outcome go', async () => {
    const { f, read } = await readHeldAtGeneration2();
    f.core.peerDown('link cut');
    await hop();
    expect(replyTo(f, read)).toBeDefined();
    expect(f.core.poolSync.heldOutcomes).toBe(0);
  });

  it('a partner that answers below the generation asked for is dropped, and the held outcome goes', async () => {
    const { f, partner, read, sense } = await readHeldAtGeneration2();
    senseReply(partner, sense, 1);
    await hop();
    expect(f.closed.some((r) => r.includes('below the 2'))).toBe(true);
    expect(replyTo(f, read)).toBeDefined();
  });

  it('the partner side refreshes its pool before it answers a SENSE asking for a newer generation, and answers the SENSEs behind it in order', async () => {
    const { f, partner } = await joinedCore();
    f.flush();
    const first = partner.send({ kind: 'SENSE_REQUEST', role: Role.MIRRORED, reason: SenseReason.HEARTBEAT, joinFlags: 0, poolGeneration: 3 });
    const second = partner.send({ kind: 'SENSE_REQUEST', role: Role.MIRRORED, reason: SenseReason.HEARTBEAT, joinFlags: 0, poolGeneration: 3 });
    // No answer yet: the refresh comes first.
    expect(f.flush().filter((m) => m.kind === 'SENSE_REQUEST_REPLY')).toEqual([]);
    expect(f.pending.map((p) => p.op)).toContainEqual({ kind: 'refreshPool' });
    expect(f.core.counters.poolRefreshes).toBe(1);
    const p = f.pending.splice(f.pending.findIndex((x) => x.op.kind === 'refreshPool'), 1)[0]!;
    f.core.onIoDone(p.id, { ok: true, value: 3, poolGeneration: 3 });
    const replies = f.flush().filter((m) => m.kind === 'SENSE_REQUEST_REPLY');
    expect(replies.map((r) => r.requestId)).toEqual([first.requestId, second.requestId]);
    expect(replies.every((r) => r.kind === 'SENSE_REQUEST_REPLY' && r.poolGeneration === 3)).toBe(true);
    // Caught up: the next one is answered at once, without another refresh.
    const third = partner.send({ kind: 'SENSE_REQUEST', role: Role.MIRRORED, reason: SenseReason.HEARTBEAT, joinFlags: 0, poolGeneration: 3 });
    expect(f.flush().filter((m) => m.kind === 'SENSE_REQUEST_REPLY').map((r) => r.requestId)).toEqual([third.requestId]);
    expect(f.core.counters.poolRefreshes).toBe(1);
    // Its SENSE says what it knows of, not what its pool object acted on: only its answers to ours count.
    expect(f.core.poolSync.partnerGeneration).toBe(0);
  });

  it('a generation learned from our own store outcome is not a refresh: a partner asking for it still gets one first (its labels may record a rebuild to follow)', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 4, partner);
    partner.auto.delete('SENSE_REQUEST');
    // Our own label move (a member failing here) read labels at generation 4 and told us so.
    clientRead(f, guid, 0, PAGE);
    await runWithGeneration(f, 'readPage', 4);
    await hop();
    expect(f.core.poolSync.generation).toBe(4);
    f.flush();
    const refreshesBefore = f.core.counters.poolRefreshes;
    const sense = partner.send({ kind: 'SENSE_REQUEST', role: Role.MIRRORED, reason: SenseReason.HEARTBEAT, joinFlags: 0, poolGeneration: 4 });
    expect(f.flush().filter((m) => m.kind === 'SENSE_REQUEST_REPLY')).toEqual([]);
    expect(f.core.counters.poolRefreshes).toBe(refreshesBefore + 1);
    const p = f.pending.splice(f.pending.findIndex((x) => x.op.kind === 'refreshPool'), 1)[0]!;
    f.core.onIoDone(p.id, { ok: true, value: 4 });
    expect(f.flush().filter((m) => m.kind === 'SENSE_REQUEST_REPLY').map((r) => r.requestId)).toEqual([sense.requestId]);
  });

  it('a refresh that fails: IO_ERROR to the partner, counted, and this controller fences itself and drops the link', async () => {
    const { f, partner } = await joinedCore();
    f.flush();
    const sense = partner.send({ kind: 'SENSE_REQUEST', role: Role.MIRRORED, reason: SenseReason.HEARTBEAT, joinFlags: 0, poolGeneration: 2 });
    f.failOne('refreshPool', new Error('member label unreadable'));
    const err = partner.f.sent.find((m) => m.kind === 'ERROR' && m.requestId === sense.requestId);
    expect(errorName(err)).toBe('IO_ERROR');
    expect(f.core.counters.poolRefreshFailures).toBe(1);
    expect(f.core.status().senseCode).toBe(ErrorCode.IO_ERROR);
    expect(f.core.currentRole).toBe(Role.FENCED);
    expect(f.closed.some((r) => r.includes('pool refresh'))).toBe(true);
    expect(f.log.some((l) => l.level === 'error' && l.msg.includes('could not refresh the pool'))).toBe(true);
  });

  it('without a pool nothing is held: heartbeats carry generation 0 and outcomes go straight on', async () => {
    const { f, partner } = await joinedCore();
    const guid = await allocate(f, 'v', 2, partner);
    partner.auto.delete('SENSE_REQUEST');
    const read = clientRead(f, guid, 0, PAGE);
    await f.runOne('readPage');
    await hop();
    expect(replyTo(f, read)?.kind).toBe('C_READ_REPLY');
    f.setNow(f.nowMs() + 150);
    f.core.tick();
    expect(sensesOf(f.flush()).at(-1)?.poolGeneration).toBe(0);
    expect(f.core.counters.poolOutcomesHeld).toBe(0);
  });
});
