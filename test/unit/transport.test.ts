// The peer link over real sockets on 127.0.0.1: handshake, refusal of the
// wrong partner, loss and re-dial, replacement by a restarted partner, and a
// bad frame from an authenticated partner.

import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { encode } from '../../src/protocol/codec.js';
import { crc32c } from '../../src/protocol/crc32c.js';
import { ErrorCode } from '../../src/protocol/errors.js';
import {
  Role,
  SenseReason,
  type Message,
  type SenseRequest,
  type WritePage,
} from '../../src/protocol/messages.js';
import type { PeerLink, PeerLinkOptions } from '../../src/transport/peer-link.js';
import { PAIR_ID, SECRET, authenticateAsPartner, testPeerLink } from './helpers/endpoints.js';
import { captureLog, RawWs, waitFor, WARN, type LogRecord } from './transport-helpers.js';

const OTHER_PAIR_ID = '11111111-2222-4333-8444-555555555555';

interface Harness {
  link: PeerLink;
  ups: { partnerId: number; partnerPid: number }[];
  downs: string[];
  msgs: Message[];
  records: LogRecord[];
}

const links: PeerLink[] = [];
const raws: RawWs[] = [];

afterEach(async () => {
  for (const raw of raws.splice(0)) raw.terminate();
  await Promise.all(links.splice(0).map((l) => l.close()));
});

function makeLink(opts: Partial<PeerLinkOptions> & { selfId: number; partnerId: number }): Harness {
  const { log, records } = captureLog();
  const h: Harness = { link: undefined as unknown as PeerLink, ups: [], downs: [], msgs: [], records };
  h.link = testPeerLink(
    { handshakeTimeoutMs: 2000, log, ...opts },
    {
      onUp: (info) => h.ups.push(info),
      onDown: (reason) => h.downs.push(reason),
      onMessage: (msg) => h.msgs.push(msg),
    },
  );
  links.push(h.link);
  return h;
}

/** B (id 2) listens; A (id 1) dials it. */
async function pair(
  aOpts: Partial<PeerLinkOptions> = {},
  bOpts: Partial<PeerLinkOptions> = {},
): Promise<{ a: Harness; b: Harness; bPort: number }> {
  const b = makeLink({ selfId: 2, partnerId: 1, ...bOpts });
  const { port: bPort } = await b.link.start();
  const a = makeLink({ selfId: 1, partnerId: 2, partner: { host: '127.0.0.1', port: bPort }, ...aOpts });
  await a.link.start();
  return { a, b, bPort };
}

function sense(requestId: number, sender: number): SenseRequest {
  return { kind: 'SENSE_REQUEST', requestId, epoch: 3, sender, flags: 0, role: Role.MIRRORED, reason: SenseReason.HEARTBEAT, joinFlags: 0, poolGeneration: 0 };
}

function warnings(records: LogRecord[]): LogRecord[] {
  return records.filter((r) => r.level >= WARN);
}

/** Dials like a partner with id 1 would, by hand. Resolves after AUTH_REPLY (or whatever came instead). */
async function rawPartner(port: number, secret: string, opts: { badAuthProof?: boolean } = {}): Promise<RawWs> {
  const raw = new RawWs(port);
  raws.push(raw);
  await authenticateAsPartner(raw, secret, opts);
  return raw;
}

describe('PeerLink', () => {
  it('comes up and carries frames both ways', async () => {
    const { a, b } = await pair();
    await waitFor(() => a.link.isUp && b.link.isUp, 'both sides up');
    expect(a.ups).toEqual([{ partnerId: 2, partnerPid: 1002 }]);
    expect(b.ups).toEqual([{ partnerId: 1, partnerPid: 1001 }]);

    a.link.send(sense(7, 1));
    b.link.send(sense(8, 2));
    const pages: WritePage = {
      kind: 'WRITE_PAGE',
      requestId: 9,
      epoch: 3,
      sender: 2,
      flags: 0,
      pages: [
        {
          guid: PAIR_ID,
          page: 5,
          version: 2,
          crc: crc32c(Buffer.alloc(4096, 0xab)),
          epoch: 3,
          pageFlags: 0,
          pointerId: 0,
          clientId: 0,
          clientSeq: 0,
          ownerGen: 0,
          data: Buffer.alloc(4096, 0xab),
        },
      ],
    };
    b.link.sendMany([sense(10, 2), pages, sense(11, 2)]);

    await waitFor(() => b.msgs.length === 1 && a.msgs.length === 4, 'frames delivered');
    expect(b.msgs[0]).toMatchObject({ kind: 'SENSE_REQUEST', requestId: 7, sender: 1, epoch: 3 });
    expect(a.msgs.map((m) => [m.kind, m.requestId])).toEqual([
      ['SENSE_REQUEST', 8],
      ['SENSE_REQUEST', 10],
      ['WRITE_PAGE', 9],
      ['SENSE_REQUEST', 11],
    ]);
    const got = a.msgs[2] as WritePage;
    expect(got.pages[0]?.data.equals(Buffer.alloc(4096, 0xab))).toBe(true);
    expect(a.downs).toEqual([]);
  });

  it('send throws PARTNER_LOST while the link is down', async () => {
    const a = makeLink({ selfId: 1, partnerId: 2 });
    await a.link.start();
    expect(a.link.isUp).toBe(false);
    expect(() => a.link.send(sense(1, 1))).toThrow(expect.objectContaining({ code: 'PARTNER_LOST' }));
  });

  for (const wrongSide of ['dialer', 'listener'] as const) {
    it(`never comes up when the ${wrongSide} has the wrong secret, and says why`, async () => {
      const wrong = { secret: 'not-the-secret' };
      const { a, b } = await pair(wrongSide === 'dialer' ? wrong : {}, wrongSide === 'listener' ? wrong : {});
      // The dialer (A) proves first, so the listener (B) checks a proof first
      // and refuses; the dialer sees the ERROR and the close. Wait for a few re-dials.
      await waitFor(
        () => warnings(b.records).filter((r) => r.msg === 'peer handshake refused').length >= 3,
        'three refused handshakes',
      );
      expect(a.link.isUp || b.link.isUp).toBe(false);
      expect(a.ups.length + b.ups.length).toBe(0);
      const refusal = warnings(b.records).find((r) => r.msg === 'peer handshake refused');
      expect(refusal).toMatchObject({ code: 'AUTH_FAILED', remote: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });
      expect(String(refusal?.reason)).toMatch(/wrong secret/);
      expect(warnings(a.records).some((r) => r.msg === 'peer refused the handshake')).toBe(true);
    });
  }

  it('the partner comes up while a stranger holds every handshake slot open (issue 11, finding 2)', async () => {
    // Handshakes time out only after 30 s here: the stranger's connections stay.
    const b = makeLink({ selfId: 2, partnerId: 1, handshakeTimeoutMs: 30_000 });
    const { port } = await b.link.start();
    const squatters: RawWs[] = [];
    for (let i = 0; i < 20; i++) {
      const raw = new RawWs(port);
      raws.push(raw);
      await raw.opened;
      squatters.push(raw);
    }
    const a = makeLink({ selfId: 1, partnerId: 2, partner: { host: '127.0.0.1', port }, handshakeTimeoutMs: 30_000 });
    await a.link.start();
    await waitFor(() => a.link.isUp && b.link.isUp, 'the partner up despite the stranger', 10_000);
    expect(warnings(b.records).some((r) => r.msg === 'peer handshake dropped: every slot was taken, the oldest gives way')).toBe(true);
  });

  it('a stranger who dials the peer port gets no proof to guess the secret from (the dialer proves first)', async () => {
    const b = makeLink({ selfId: 2, partnerId: 1 });
    const { port } = await b.link.start();
    // Whoever knows the pair id and our partner's id but not the secret: it collects what it can.
    const raw = await rawPartner(port, 'a-guess-at-the-secret', { badAuthProof: true });
    await raw.closed;
    for (const frame of raw.received) expect('proof' in frame, `${frame.kind} carries a proof`).toBe(false);
    expect(raw.received.map((f) => f.kind)).toEqual(['HELLO_REPLY', 'ERROR']);
  });

  it('the listener refuses an AUTH with a wrong proof', async () => {
    const b = makeLink({ selfId: 2, partnerId: 1 });
    const { port } = await b.link.start();
    const raw = await rawPartner(port, SECRET, { badAuthProof: true });
    expect(raw.received[1]).toMatchObject({ kind: 'ERROR', code: ErrorCode.AUTH_FAILED });
    await raw.closed;
    expect(b.ups).toEqual([]);
    const refusal = warnings(b.records).find((r) => r.msg === 'peer handshake refused');
    expect(refusal).toMatchObject({ code: 'AUTH_FAILED', remote: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });
  });

  it('refuses a partner of another pair', async () => {
    const { a, b } = await pair({ pairId: OTHER_PAIR_ID });
    await waitFor(() => warnings(b.records).some((r) => r.msg === 'peer handshake refused'), 'refusal');
    const refusal = warnings(b.records).find((r) => r.msg === 'peer handshake refused');
    expect(refusal).toMatchObject({ code: 'AUTH_FAILED' });
    expect(String(refusal?.reason)).toContain(OTHER_PAIR_ID);
    // Told, it dials again (every reconnectMs) and is refused again: never up on either side.
    await waitFor(() => warnings(a.records).filter((r) => r.msg === 'peer refused the handshake').length >= 2, 'dialer told twice');
    expect(a.ups.length + b.ups.length).toBe(0);
  });

  it('refuses a partner with the wrong controller id', async () => {
    // B listens as id 2 expecting 1; this dialer expects its partner to be 3.
    const { a, b } = await pair({ partnerId: 3 });
    await waitFor(() => warnings(a.records).some((r) => r.msg === 'peer handshake refused'), 'refusal');
    const refusal = warnings(a.records).find((r) => r.msg === 'peer handshake refused');
    expect(String(refusal?.reason)).toMatch(/controller id 2/);
    expect(a.ups.length + b.ups.length).toBe(0);
  });

  it('goes down once when the listener stops, and re-dials when it is back', async () => {
    const { a, b, bPort } = await pair();
    await waitFor(() => a.link.isUp && b.link.isUp, 'up');

    await b.link.close();
    await waitFor(() => a.downs.length === 1, 'dialer down');
    expect(b.downs).toHaveLength(1);
    // Several re-dials fail while nobody listens; still one onDown.
    const from = a.records.length;
    await waitFor(() => a.records.slice(from).filter((r) => r.msg === 'peer dial failed').length >= 3, 'three failed re-dials');
    expect(a.downs).toHaveLength(1);
    expect(a.link.isUp).toBe(false);

    const b2 = makeLink({ selfId: 2, partnerId: 1, listen: { host: '127.0.0.1', port: bPort }, pid: 2002 });
    await b2.link.start();
    await waitFor(() => a.link.isUp && b2.link.isUp, 'up again');
    expect(a.ups).toEqual([
      { partnerId: 2, partnerPid: 1002 },
      { partnerId: 2, partnerPid: 2002 },
    ]);
    expect(a.downs).toHaveLength(1);
    a.link.send(sense(21, 1));
    await waitFor(() => b2.msgs.length === 1, 'frame over the new link');
  });

  it('a newer authenticated connection replaces the older one', async () => {
    // The old A must not dial straight back when it is replaced.
    const { a, b, bPort } = await pair({ reconnectMs: 60_000 });
    await waitFor(() => a.link.isUp && b.link.isUp, 'up');

    const restarted = await rawPartner(bPort, SECRET);
    expect(restarted.received[1]).toMatchObject({ kind: 'AUTH_REPLY' });
    await waitFor(() => b.ups.length === 2 && a.downs.length === 1, 'replacement');
    expect(b.downs).toHaveLength(1);
    expect(b.downs[0]).toMatch(/replaced/);
    expect(b.ups[1]).toEqual({ partnerId: 1, partnerPid: 4242 });
    expect(b.link.isUp).toBe(true);

    // B now talks to the new connection, not the old one.
    b.link.send(sense(31, 2));
    await waitFor(() => restarted.received.length === 3, 'frame to the new partner');
    expect(restarted.received[2]).toMatchObject({ kind: 'SENSE_REQUEST', requestId: 31 });
    restarted.send(sense(32, 1));
    await waitFor(() => b.msgs.length === 1, 'frame from the new partner');
    expect(a.msgs).toEqual([]);
  });

  it('a bad frame from the authenticated partner takes the link down once', async () => {
    const b = makeLink({ selfId: 2, partnerId: 1 });
    const { port } = await b.link.start();
    const raw = await rawPartner(port, SECRET);
    await waitFor(() => b.link.isUp, 'up');

    const frame = encode(sense(40, 1));
    const last = frame.length - 1;
    frame.writeUInt8(frame.readUInt8(last) ^ 0xff, last); // breaks the body checksum
    raw.sendBytes(frame);
    await raw.closed;
    await waitFor(() => b.downs.length === 1, 'down');
    expect(b.downs[0]).toMatch(/protocol error/);
    expect(raw.received.at(-1)).toMatchObject({ kind: 'ERROR' });
    expect(b.msgs).toEqual([]);
    expect(warnings(b.records).some((r) => r.msg === 'peer link protocol error')).toBe(true);
    // Once B has seen the socket close too, nothing is left that could report it down again.
    await waitFor(() => b.link.listenerCounters!.open === 0, 'the socket closed at B');
    expect(b.downs).toHaveLength(1);
  });

  it('refuses garbage and frames before the handshake, and keeps listening', async () => {
    const b = makeLink({ selfId: 2, partnerId: 1 });
    const { port } = await b.link.start();

    const garbage = new RawWs(port);
    raws.push(garbage);
    await garbage.opened;
    garbage.sendBytes(randomBytes(100));
    await garbage.closed;
    expect(garbage.received[0]).toMatchObject({ kind: 'ERROR' });

    const early = new RawWs(port);
    raws.push(early);
    await early.opened;
    early.send(sense(1, 1));
    await early.closed;
    expect(early.received[0]).toMatchObject({ kind: 'ERROR', code: ErrorCode.NOT_AUTHENTICATED });

    const text = new RawWs(port);
    raws.push(text);
    await text.opened;
    text.sendBytes('hello', false);
    await text.closed;
    expect(text.received[0]).toMatchObject({ kind: 'ERROR', code: ErrorCode.BAD_FRAME });

    const good = await rawPartner(port, SECRET);
    expect(good.received[1]).toMatchObject({ kind: 'AUTH_REPLY' });
    expect(b.ups).toHaveLength(1);
  });

  it('times out a silent connection', async () => {
    const b = makeLink({ selfId: 2, partnerId: 1, handshakeTimeoutMs: 100 });
    const { port } = await b.link.start();
    const silent = new RawWs(port);
    raws.push(silent);
    await silent.opened;
    await silent.closed;
    expect(silent.received[0]).toMatchObject({ kind: 'ERROR', code: ErrorCode.TIMEOUT });
  });
});
