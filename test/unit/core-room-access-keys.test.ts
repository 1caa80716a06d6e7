// Access keys (src/core/access-keys.ts): a keyed allocation is served only to
// the connections that unlocked it with its key; every other request that
// names it is ACCESS_DENIED and the core serves on. The key leaves the core
// once, in the C_ALLOCATE reply; the record, the partner and the table hold
// only its digest.

import { describe, expect, it } from 'vitest';
import { keyDigest } from '../../src/core/access-keys.js';
import { JoinFlag, PointerMode, Role, SenseReason, type Message } from '../../src/protocol/messages.js';
import { CONN, coreFixture, errorName, framesOf, HandPartner, hop, joinedCore, PAGE, readData, replyTo, type CoreFixture } from './core-fixture.js';

const OTHER = CONN + 1;

async function ask(f: CoreFixture, body: Record<string, unknown>, connId = CONN): Promise<Message | undefined> {
  const req = f.request(body);
  f.core.onClientRequest(connId, req);
  await f.settleIo();
  await hop();
  await f.settleIo();
  await hop();
  return replyTo(f, req);
}

async function allocateKeyed(f: CoreFixture, name: string, pages: number): Promise<{ guid: string; key: Buffer }> {
  const r = await ask(f, { kind: 'C_ALLOCATE', name, policy: '', sizeBytes: pages * PAGE, keyed: true });
  if (r?.kind !== 'C_ALLOCATE_REPLY') throw new Error(`allocate answered ${JSON.stringify(r)}`);
  return { guid: r.guid, key: Buffer.from(r.key) };
}

const write = (f: CoreFixture, guid: string, offset: number, data: Buffer, connId = CONN) =>
  ask(f, { kind: 'C_WRITE', guid, offset, pointerId: 0, clientId: 0, clientSeq: 0, data }, connId);
const read = (f: CoreFixture, guid: string, offset: number, length: number, connId = CONN) => ask(f, { kind: 'C_READ', guid, offset, length, pointerId: 0 }, connId);
const unlock = (f: CoreFixture, guid: string, key: Buffer, connId = CONN) => ask(f, { kind: 'C_UNLOCK', guid, key }, connId);

/** Every request that names an allocation, as a client would send it. */
function requestsNaming(guid: string): Record<string, unknown>[] {
  return [
    { kind: 'C_READ', guid, offset: 0, length: 8, pointerId: 0 },
    { kind: 'C_WRITE', guid, offset: 0, pointerId: 0, clientId: 0, clientSeq: 0, data: Buffer.alloc(8, 1) },
    { kind: 'C_WRITE', guid, offset: 0, pointerId: 0, clientId: 9, clientSeq: 1, data: Buffer.alloc(PAGE, 2) },
    { kind: 'C_OPEN_POINTER', guid, firstPage: 0, pageCount: 1, mode: PointerMode.READ },
    { kind: 'C_OPEN_POINTER', guid, firstPage: 0, pageCount: 1, mode: PointerMode.WRITE },
    { kind: 'C_FLUSH', guid },
    { kind: 'C_VERIFY', guid, firstPage: 0, pageCount: 1 },
    { kind: 'C_REWRITE', guid, page: 0 },
    { kind: 'C_TEST_CORRUPT', guid, page: 0, data: Buffer.alloc(PAGE, 3) },
    { kind: 'C_RELEASE', guid },
  ];
}

describe('access keys', () => {
  it('a keyed C_ALLOCATE answers a 16-byte key; the core keeps only its digest, and logs neither', async () => {
    const f = await coreFixture();
    const a = await allocateKeyed(f, 'ckpt', 2);
    const b = await allocateKeyed(f, 'ckpt2', 2);
    expect(a.key.length).toBe(16);
    expect(a.key.equals(Buffer.alloc(16))).toBe(false);
    expect(a.key.equals(b.key)).toBe(false);
    const record = f.core.allocator.allocs.get(a.guid)!.record;
    expect(record.keyDigest).toEqual(keyDigest(a.guid, a.key));
    expect(record.keyDigest!.equals(a.key)).toBe(false);
    const logged = JSON.stringify(f.log);
    for (const secret of [a.key, b.key]) {
      expect(logged).not.toContain(secret.toString('hex'));
      expect(logged).not.toContain(secret.toString('base64'));
    }
    // A plain allocation's reply carries zeros where the key would be.
    const plain = await ask(f, { kind: 'C_ALLOCATE', name: 'plain', policy: '', sizeBytes: PAGE, keyed: false });
    expect(plain).toMatchObject({ kind: 'C_ALLOCATE_REPLY', key: Buffer.alloc(16) });
    expect(f.core.allocator.allocs.get((plain as { guid: string }).guid)!.record.keyDigest).toBeUndefined();
  });

  it('refuses every request naming a keyed allocation from a connection that has not unlocked it, and serves on', async () => {
    const f = await coreFixture();
    const { guid } = await allocateKeyed(f, 'ckpt', 2);
    for (const body of requestsNaming(guid)) {
      expect(errorName(await ask(f, body)), body.kind as string).toBe('ACCESS_DENIED');
    }
    expect(f.core.allocator.allocs.has(guid)).toBe(true);
    expect(f.core.counters.accessDenied).toBe(requestsNaming(guid).length);
    // The controller still serves others: a plain allocation is read and written.
    const plain = await ask(f, { kind: 'C_ALLOCATE', name: 'plain', policy: '', sizeBytes: PAGE, keyed: false });
    const pg = (plain as { guid: string }).guid;
    expect((await write(f, pg, 0, Buffer.from('open')))?.kind).toBe('C_WRITE_REPLY');
    expect(readData(await read(f, pg, 0, 4)).toString()).toBe('open');
  });

  it('refuses a wrong key and an unknown guid with ACCESS_DENIED; the right key opens it to that connection only', async () => {
    const f = await coreFixture();
    const { guid, key } = await allocateKeyed(f, 'ckpt', 2);
    const wrong = Buffer.from(key);
    wrong[15] = wrong[15]! ^ 1;
    expect(errorName(await unlock(f, guid, wrong))).toBe('ACCESS_DENIED');
    expect(errorName(await unlock(f, guid, Buffer.alloc(16)))).toBe('ACCESS_DENIED');
    expect(errorName(await unlock(f, '00000000-0000-4000-8000-0000000000ff', key))).toBe('ACCESS_DENIED');
    // A wrong key unlocks nothing.
    expect(errorName(await read(f, guid, 0, 8))).toBe('ACCESS_DENIED');

    expect((await unlock(f, guid, key))?.kind).toBe('C_UNLOCK_REPLY');
    expect((await write(f, guid, 10, Buffer.from('checkpoint')))?.kind).toBe('C_WRITE_REPLY');
    expect(readData(await read(f, guid, 10, 10)).toString()).toBe('checkpoint');
    expect((await ask(f, { kind: 'C_FLUSH', guid }))?.kind).toBe('C_FLUSH_REPLY');

    // A second connection is still refused, until it presents the key itself.
    expect(errorName(await read(f, guid, 10, 10, OTHER))).toBe('ACCESS_DENIED');
    expect(errorName(await write(f, guid, 0, Buffer.from('x'), OTHER))).toBe('ACCESS_DENIED');
    expect(errorName(await unlock(f, guid, wrong, OTHER))).toBe('ACCESS_DENIED');
    expect((await unlock(f, guid, key, OTHER))?.kind).toBe('C_UNLOCK_REPLY');
    expect(readData(await read(f, guid, 10, 10, OTHER)).toString()).toBe('checkpoint');

    // The unlock goes with the connection: a new connection with the same id starts locked.
    f.core.onClientGone(CONN);
    expect(errorName(await read(f, guid, 10, 10))).toBe('ACCESS_DENIED');
    expect(readData(await read(f, guid, 10, 10, OTHER)).toString()).toBe('checkpoint');
  });

  it('pointers: opened after the unlock, used and closed on that connection only', async () => {
    const f = await coreFixture();
    const { guid, key } = await allocateKeyed(f, 'ckpt', 2);
    await unlock(f, guid, key);
    const opened = await ask(f, { kind: 'C_OPEN_POINTER', guid, firstPage: 0, pageCount: 1, mode: PointerMode.WRITE });
    expect(opened?.kind).toBe('C_OPEN_POINTER_REPLY');
    const pointerId = (opened as { pointerId: number }).pointerId;
    expect(errorName(await ask(f, { kind: 'C_WRITE', guid, offset: 0, pointerId, clientId: 0, clientSeq: 0, data: Buffer.from('p') }, OTHER))).toBe('ACCESS_DENIED');
    expect((await ask(f, { kind: 'C_WRITE', guid, offset: 0, pointerId, clientId: 0, clientSeq: 0, data: Buffer.from('p') }))?.kind).toBe('C_WRITE_REPLY');
    expect(errorName(await ask(f, { kind: 'C_CLOSE_POINTER', pointerId, commit: true }, OTHER))).toBe('POINTER_UNKNOWN');
    expect((await ask(f, { kind: 'C_CLOSE_POINTER', pointerId, commit: true }))?.kind).toBe('C_CLOSE_POINTER_REPLY');
    expect(readData(await read(f, guid, 0, 1)).toString()).toBe('p');
  });

  it('C_LIST shows a keyed allocation as keyed, without its digest', async () => {
    const f = await coreFixture();
    const { guid, key } = await allocateKeyed(f, 'ckpt', 1);
    await ask(f, { kind: 'C_ALLOCATE', name: 'plain', policy: '', sizeBytes: PAGE, keyed: false });
    const list = await ask(f, { kind: 'C_LIST' }, OTHER);
    expect(list).toMatchObject({ kind: 'C_LIST_REPLY', allocations: [{ guid, name: 'ckpt', keyed: true }, { name: 'plain', keyed: false }] });
    const digest = keyDigest(guid, key);
    for (const entry of (list as { allocations: object[] }).allocations) {
      expect(Object.keys(entry).sort()).toEqual(['guid', 'keyed', 'name', 'origin', 'pageCount', 'pageSizeBytes', 'policy']);
    }
    expect(JSON.stringify(list)).not.toContain(digest.toString('hex'));
  });

  it('releasing needs the key; a released allocation cannot be unlocked', async () => {
    const f = await coreFixture();
    const { guid, key } = await allocateKeyed(f, 'ckpt', 1);
    expect(errorName(await ask(f, { kind: 'C_RELEASE', guid }, OTHER))).toBe('ACCESS_DENIED');
    await unlock(f, guid, key);
    expect((await ask(f, { kind: 'C_RELEASE', guid }))?.kind).toBe('C_RELEASE_REPLY');
    expect(errorName(await unlock(f, guid, key, OTHER))).toBe('ACCESS_DENIED');
  });

  it('bounds the unlocks one connection holds (LIMIT_EXCEEDED); released ones do not count', async () => {
    const f = await coreFixture({ config: { unlocksPerConnectionMax: 2 } });
    const made = [await allocateKeyed(f, 'k1', 1), await allocateKeyed(f, 'k2', 1), await allocateKeyed(f, 'k3', 1)];
    expect((await unlock(f, made[0]!.guid, made[0]!.key))?.kind).toBe('C_UNLOCK_REPLY');
    expect((await unlock(f, made[1]!.guid, made[1]!.key))?.kind).toBe('C_UNLOCK_REPLY');
    // Unlocking again what is unlocked is no new entry.
    expect((await unlock(f, made[1]!.guid, made[1]!.key))?.kind).toBe('C_UNLOCK_REPLY');
    expect(errorName(await unlock(f, made[2]!.guid, made[2]!.key))).toBe('LIMIT_EXCEEDED');
    expect(errorName(await read(f, made[2]!.guid, 0, 1))).toBe('ACCESS_DENIED');
    // Another connection has its own bound.
    expect((await unlock(f, made[2]!.guid, made[2]!.key, OTHER))?.kind).toBe('C_UNLOCK_REPLY');
    expect((await ask(f, { kind: 'C_RELEASE', guid: made[0]!.guid }))?.kind).toBe('C_RELEASE_REPLY');
    expect((await unlock(f, made[2]!.guid, made[2]!.key))?.kind).toBe('C_UNLOCK_REPLY');
  });

  it('mirrored: ALLOCATE carries the keyed flag and the digest, never the key', async () => {
    const { f, partner } = await joinedCore();
    const req = f.request({ kind: 'C_ALLOCATE', name: 'ckpt', policy: '', sizeBytes: 2 * PAGE, keyed: true });
    f.core.onClientRequest(CONN, req);
    await partner.pump();
    await hop();
    await partner.pump();
    const r = replyTo(f, req);
    if (r?.kind !== 'C_ALLOCATE_REPLY') throw new Error(`allocate answered ${JSON.stringify(r)}`);
    const [sent] = partner.sentOf('ALLOCATE');
    expect(sent).toMatchObject({ guid: r.guid, keyed: true });
    expect(Buffer.from(sent!.keyDigest).equals(keyDigest(r.guid, r.key))).toBe(true);
    expect(Buffer.from(sent!.keyDigest).equals(r.key)).toBe(false);
  });

  it('mirrored: a keyed allocation the partner made is enforced here too; a digest without the flag is refused', async () => {
    const { f, partner } = await joinedCore({ selfId: 2 });
    const key = Buffer.alloc(16, 0x42);
    const guid = '00000000-0000-4000-8000-0000000000ab';
    partner.send({ kind: 'SPACE_REQUEST', policy: 'default', pageSizeBytes: PAGE, pageCount: 1, reserve: true, dataOffset: 0 });
    const space = framesOf(f.flush(), 'SPACE_REQUEST_REPLY')[0]!;
    partner.send({ kind: 'ALLOCATE', guid, name: 'theirs', policy: 'default', pageSizeBytes: PAGE, pageCount: 1, dataOffset: space.dataOffset, createdEpoch: f.core.currentEpoch, reservationId: space.reservationId, keyed: true, keyDigest: keyDigest(guid, key) });
    await partner.pump();
    expect(framesOf(partner.seen, 'ALLOCATE_REPLY').length).toBeGreaterThan(0);
    expect(errorName(await read(f, guid, 0, 4))).toBe('ACCESS_DENIED');
    expect(errorName(await unlock(f, guid, Buffer.alloc(16, 0x43)))).toBe('ACCESS_DENIED');
    expect((await unlock(f, guid, key))?.kind).toBe('C_UNLOCK_REPLY');
    expect((await read(f, guid, 0, 4))?.kind).toBe('C_READ_REPLY');

    // Not keyed, yet a digest: the two sides would disagree on who may use it.
    partner.send({ kind: 'SPACE_REQUEST', policy: 'default', pageSizeBytes: PAGE, pageCount: 1, reserve: true, dataOffset: PAGE * 64 });
    const space2 = framesOf(f.flush(), 'SPACE_REQUEST_REPLY')[0]!;
    const bad = partner.send({ kind: 'ALLOCATE', guid: '00000000-0000-4000-8000-0000000000ac', name: 'odd', policy: 'default', pageSizeBytes: PAGE, pageCount: 1, dataOffset: space2.dataOffset, createdEpoch: f.core.currentEpoch, reservationId: space2.reservationId, keyed: false, keyDigest: Buffer.alloc(16, 1) });
    await partner.pump();
    const answer = partner.seen.find((m) => m.requestId === bad.requestId && m.kind === 'ERROR');
    expect(errorName(answer)).toBe('BAD_FIELD');
    expect(f.core.allocator.allocs.has('00000000-0000-4000-8000-0000000000ac')).toBe(false);
    // An unkeyed ALLOCATE (zeros, flag off) from a partner is an open allocation.
    partner.send({ kind: 'SPACE_REQUEST', policy: 'default', pageSizeBytes: PAGE, pageCount: 1, reserve: true, dataOffset: PAGE * 128 });
    const space3 = framesOf(f.flush(), 'SPACE_REQUEST_REPLY')[0]!;
    partner.send({ kind: 'ALLOCATE', guid: '00000000-0000-4000-8000-0000000000ad', name: 'open', policy: 'default', pageSizeBytes: PAGE, pageCount: 1, dataOffset: space3.dataOffset, createdEpoch: f.core.currentEpoch, reservationId: space3.reservationId, keyed: false, keyDigest: Buffer.alloc(16) });
    await partner.pump();
    expect((await read(f, '00000000-0000-4000-8000-0000000000ad', 0, 4))?.kind).toBe('C_READ_REPLY');
    expect(f.core.allocator.allocs.get('00000000-0000-4000-8000-0000000000ad')!.record.keyDigest).toBeUndefined();
  });

  it('a join replays a keyed allocation with its digest (SYNC ALLOCATE), and the table digest covers it', async () => {
    const { f, partner } = await joinedCore({ selfId: 2 });
    const key = Buffer.alloc(16, 0x17);
    const guid = '00000000-0000-4000-8000-0000000000b1';
    const before = f.core.allocator.tableDigest();
    partner.send({ kind: 'ALLOCATE', guid, name: 'synced', policy: 'default', pageSizeBytes: PAGE, pageCount: 1, dataOffset: 0, createdEpoch: f.core.currentEpoch, reservationId: 0xffff_ffff, keyed: true, keyDigest: keyDigest(guid, key) });
    await partner.pump();
    expect(f.core.allocator.allocs.get(guid)!.record.keyDigest).toEqual(keyDigest(guid, key));
    expect(errorName(await read(f, guid, 0, 4))).toBe('ACCESS_DENIED');
    const keyed = f.core.allocator.tableDigest();
    expect(keyed).not.toBe(before);
    // The same allocation unkeyed has another table digest: SENSE shows the sides disagree.
    delete f.core.allocator.allocs.get(guid)!.record.keyDigest;
    f.core.allocator.tableDigestText = null;
    expect(f.core.allocator.tableDigest()).not.toBe(keyed);
  });

  it('a join takes the winning side\'s key for an allocation this side read unkeyed from its table', async () => {
    const guid = '00000000-0000-4000-8000-0000000000c1';
    const table = [{ guid, name: 'old', policy: 'default', pageSizeBytes: PAGE, pageCount: 1, dataOffset: 0, createdEpoch: 0 }];
    const f = await coreFixture({ selfId: 2, mirroring: true, table });
    expect(f.core.allocator.allocs.get(guid)!.record.keyDigest).toBeUndefined();
    const partner = new HandPartner(f);
    const key = Buffer.alloc(16, 0x33);
    // The partner (controller 1, whose state wins) replays its table in the join, this allocation keyed.
    f.core.peerUp({ partnerPid: 4242 });
    await partner.pump();
    partner.send({ kind: 'SENSE_REQUEST', role: Role.STARTING, reason: SenseReason.HEARTBEAT, joinFlags: JoinFlag.JOINING | JoinFlag.FRESH, poolGeneration: 0 });
    await partner.pump();
    partner.send({ kind: 'ALLOCATE', ...table[0]!, reservationId: 0xffff_ffff, keyed: true, keyDigest: keyDigest(guid, key) });
    await partner.pump();
    partner.send({ kind: 'SENSE_REQUEST', role: Role.STARTING, reason: SenseReason.HEARTBEAT, joinFlags: JoinFlag.JOINING | JoinFlag.FRESH | JoinFlag.PUSH_DONE, poolGeneration: 0 });
    await partner.pump();
    expect(f.core.currentRole).toBe(Role.MIRRORED);
    expect(f.core.allocator.allocs.get(guid)!.record.keyDigest).toEqual(keyDigest(guid, key));
    expect(errorName(await read(f, guid, 0, 4, OTHER))).toBe('ACCESS_DENIED');
    expect(f.log.some((l) => l.msg.includes("access key differed here"))).toBe(true);
    expect((await unlock(f, guid, key, OTHER))?.kind).toBe('C_UNLOCK_REPLY');
  });
});
