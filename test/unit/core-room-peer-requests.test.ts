// Requests to the partner: each waits for the reply with its request id,
// fails with TIMEOUT after peerRequestTimeoutMs (plus its allowance) and
// drops the link, fails with PARTNER_LOST when the link goes, and takes an
// ERROR reply as the typed error it names. A client write's pages settle
// when every WRITE_PAGE frame carrying them is answered.

import { describe, expect, it } from 'vitest';
import { PagepairError } from '../../src/protocol/errors.js';
import { DEFAULT_LIMITS } from '../../src/protocol/limits.js';
import { Role, type PeerReply } from '../../src/protocol/messages.js';
import type { Future } from '../../src/core/tasks.js';
import { allocate, clientWrite, errorName, joinedCore, PAGE, replyTo, type CoreFixture } from './core-fixture.js';

const GUID = '00000000-0000-4000-8000-00000000abcd';
/** The partner never goes silent here: only the request timeout is at work. */
const config = { peerRequestTimeoutMs: 1000, partnerTimeoutMs: 1_000_000 };

function readHeader(f: CoreFixture, extraTimeoutMs = 0): Future<PeerReply> {
  let r: Future<PeerReply> | undefined;
  f.core.tasks.turn(() => (r = f.core.requests.request({ kind: 'READ_HEADER', guid: GUID, firstPage: 0, pageCount: 1 }, extraTimeoutMs)));
  return r!;
}

describe('peer requests', () => {
  it('a request unanswered past peerRequestTimeoutMs fails with TIMEOUT and the link is made anew', async () => {
    const { f } = await joinedCore({ config });
    const r = readHeader(f);
    f.flush();
    f.setNow(1000);
    f.core.tick();
    expect(r.settled).toBe(false);
    expect(f.closed).toEqual([]);
    f.setNow(1001);
    f.core.tick();
    expect((r.failure as PagepairError).code).toBe('TIMEOUT');
    expect(r.failure?.message).toContain('READ_HEADER within 1000 ms');
    expect(f.closed).toEqual(['a partner request timed out']);
    expect(f.core.membership.linkUp).toBe(false);
    // Mirrored and the link gone: the partner may be dead, the store decides.
    expect(f.core.currentRole).toBe(Role.ARBITRATING);
  });

  it('a request with extra time (the partner zeroes an extent first) times out that much later', async () => {
    const { f } = await joinedCore({ config });
    const r = readHeader(f, 500);
    f.flush();
    f.setNow(1500);
    f.core.tick();
    expect(r.settled).toBe(false);
    f.setNow(1501);
    f.core.tick();
    expect((r.failure as PagepairError).code).toBe('TIMEOUT');
  });

  it('when the link goes, requests unanswered and frames not yet sent fail with PARTNER_LOST', async () => {
    const { f, partner } = await joinedCore({ config });
    const guid = await allocate(f, 'v', 4, partner);
    const asked = readHeader(f);
    f.flush();
    // A mirrored write whose WRITE_PAGE is still in the outbox.
    const w = clientWrite(f, guid, 0, Buffer.alloc(PAGE, 1));
    expect(f.core.outbox.length).toBe(1);
    f.core.peerDown('cable pulled');
    expect((asked.failure as PagepairError).code).toBe('PARTNER_LOST');
    expect(errorName(replyTo(f, w))).toBe('PARTNER_LOST');
    expect(f.core.outbox.length).toBe(0);
  });

  it('a request asked while the link is down fails at once with NOT_MIRRORED and sends nothing', async () => {
    const { f } = await joinedCore({ config });
    f.core.peerDown('gone');
    const r = readHeader(f);
    expect((r.failure as PagepairError).code).toBe('NOT_MIRRORED');
    expect(f.flush()).toEqual([]);
  });

  it("the partner's ERROR reply fails the request with the code it names", async () => {
    const { f, partner } = await joinedCore({ config });
    const r = readHeader(f);
    await partner.pump();
    partner.refuse(partner.take('READ_HEADER'), 'UNKNOWN_GUID', 'no such allocation');
    expect((r.failure as PagepairError).code).toBe('UNKNOWN_GUID');
    expect(r.failure?.message).toBe('partner: no such allocation');
  });

  it('a reply goes to the request with its id; a reply to no pending request is ignored', async () => {
    const { f, partner } = await joinedCore({ config });
    const a = readHeader(f);
    const b = readHeader(f);
    await partner.pump();
    const [ra, rb] = [partner.take('READ_HEADER'), partner.take('READ_HEADER')];
    expect(ra.requestId).not.toBe(rb.requestId);
    partner.reply(rb, { kind: 'READ_HEADER_REPLY', guid: GUID, headers: [] });
    expect(b.settled).toBe(true);
    expect(a.settled).toBe(false);
    // Answered again, or never asked: nothing happens.
    partner.reply(rb, { kind: 'READ_HEADER_REPLY', guid: GUID, headers: [] });
    partner.reply({ ...rb, requestId: 424242 }, { kind: 'READ_HEADER_REPLY', guid: GUID, headers: [] });
    expect(a.settled).toBe(false);
    expect(f.log.filter((l) => l.msg === 'reply to no pending request')).toHaveLength(2);
    partner.reply(ra, { kind: 'READ_HEADER_REPLY', guid: GUID, headers: [] });
    expect(a.value?.kind).toBe('READ_HEADER_REPLY');
  });

  it("a client write spread over several WRITE_PAGE frames is answered only when the partner answered every one", async () => {
    const { f, partner } = await joinedCore({ config: { ...config, limits: { ...DEFAULT_LIMITS, pagesPerMessageMax: 2 } } });
    const guid = await allocate(f, 'v', 4, partner);
    partner.auto.delete('WRITE_PAGE');
    const w = clientWrite(f, guid, 0, Buffer.alloc(3 * PAGE, 9));
    await partner.pump();
    const frames = [partner.take('WRITE_PAGE'), partner.take('WRITE_PAGE')];
    expect(frames.map((m) => (m.kind === 'WRITE_PAGE' ? m.pages.map((p) => p.page) : []))).toEqual([[0, 1], [2]]);
    partner.answer(frames[1]!);
    expect(replyTo(f, w)).toBeUndefined();
    partner.answer(frames[0]!);
    expect(replyTo(f, w)?.kind).toBe('C_WRITE_REPLY');
  });
});
