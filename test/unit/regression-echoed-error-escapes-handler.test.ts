// Regression (issue 11, finding 1): an ERROR reply that echoed a long policy
// name (invalid UTF-8 triples in size as U+FFFD) was longer than a string
// field may be; encoding it threw in the client endpoint's reply(), nothing
// caught it and the controller process exited. The peer link's message
// handler had no catch either. Here: the clip helper, and each transport
// answering instead of throwing.

import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCode, PagepairError } from '../../src/protocol/errors.js';
import { clipErrorMessage, clipUtf8, ERROR_MESSAGE_BYTES_MAX } from '../../src/protocol/clip.js';
import { decode, encode, typeOfKind } from '../../src/protocol/codec.js';
import { DEFAULT_LIMITS } from '../../src/protocol/limits.js';
import { Role, SenseReason, type ClientRequest, type ErrorReply, type Message } from '../../src/protocol/messages.js';
import type { ClientConn } from '../../src/transport/client-endpoint.js';
import type { PeerLink } from '../../src/transport/peer-link.js';
import { Prng } from '../../src/core/prng.js';
import { authenticateAsPartner, clientHello, testClientEndpoint, testPeerLink } from './helpers/endpoints.js';
import { captureLog, RawWs, waitFor } from './transport-helpers.js';

/** What the core's POLICY_UNKNOWN error says of a 1000-byte name of invalid UTF-8. */
const ECHO = `no policy named "${'\uFFFD'.repeat(1000)}" (known: default)`;

const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

describe('clipUtf8', () => {
  it('keeps short text as it is', () => {
    expect(clipUtf8('pages 10..29 are locked', 200)).toBe('pages 10..29 are locked');
  });

  it('cuts to a prefix that fits, at a character boundary, for any text', () => {
    const prng = new Prng(11);
    const alphabet = ['a', 'ü', '€', '😀', '\uFFFD', '\uD800', '\uDC00', 'z'];
    for (let round = 0; round < 2000; round++) {
      let text = '';
      const n = prng.below(301);
      for (let i = 0; i < n; i++) text += alphabet[prng.below(alphabet.length)];
      const bytesMax = prng.below(401);
      const out = clipUtf8(text, bytesMax);
      expect(text.startsWith(out)).toBe(true);
      expect(Buffer.byteLength(out, 'utf8')).toBeLessThanOrEqual(bytesMax);
      // Never half a surrogate pair of the input.
      if (out.length > 0 && out.length < text.length) {
        const last = out.charCodeAt(out.length - 1);
        const next = text.charCodeAt(out.length);
        expect(last >= 0xd800 && last <= 0xdbff && next >= 0xdc00 && next <= 0xdfff).toBe(false);
      }
      // Nothing that fits more was left off.
      if (out.length < text.length) expect(Buffer.byteLength(text.slice(0, out.length + 2), 'utf8')).toBeGreaterThan(bytesMax);
    }
  });

  it('makes the echo of a long invalid name fit an ERROR frame', () => {
    const message = clipErrorMessage(ECHO);
    expect(Buffer.byteLength(message, 'utf8')).toBeLessThanOrEqual(ERROR_MESSAGE_BYTES_MAX);
    const frame: ErrorReply = { kind: 'ERROR', requestId: 1, epoch: 0, sender: 1, flags: 0, code: ErrorCode.POLICY_UNKNOWN, requestType: typeOfKind('C_ALLOCATE'), message };
    expect(decode(encode(frame), DEFAULT_LIMITS)).toEqual(frame);
  });
});

async function endpointWithHeldConn(): Promise<{ raw: RawWs; conn: () => ClientConn; requests: ClientRequest[] }> {
  const { log } = captureLog();
  let last: ClientConn | undefined;
  const requests: ClientRequest[] = [];
  const endpoint = testClientEndpoint({
    log,
    // As the core does: the answer comes later, outside the endpoint's try.
    onRequest: (conn, msg) => {
      last = conn;
      requests.push(msg);
    },
  });
  const { port } = await endpoint.start();
  closers.push(() => endpoint.close());
  const raw = new RawWs(port);
  closers.push(() => raw.terminate());
  await raw.opened;
  raw.send(clientHello());
  expect((await raw.nth(1)).kind).toBe('CLIENT_HELLO_REPLY');
  return { raw, conn: () => last!, requests };
}

describe('client endpoint: a reply that echoes input', () => {
  it('sends an over-long ERROR clipped, and does not throw', async () => {
    const { raw, conn } = await endpointWithHeldConn();
    raw.send({ kind: 'C_ALLOCATE', requestId: 7, epoch: 0, sender: 0, flags: 0, name: 'x', policy: 'p', sizeBytes: 4096, keyed: false });
    await waitFor(() => conn() !== undefined, 'the request');
    const echo: ErrorReply = { kind: 'ERROR', requestId: 7, epoch: 0, sender: 1, flags: 0, code: ErrorCode.POLICY_UNKNOWN, requestType: typeOfKind('C_ALLOCATE'), message: ECHO };
    expect(() => conn().reply(echo)).not.toThrow();
    const got = await raw.nth(2);
    expect(got).toMatchObject({ kind: 'ERROR', requestId: 7, code: ErrorCode.POLICY_UNKNOWN });
    expect(ECHO.startsWith((got as ErrorReply).message)).toBe(true);
  });

  it('answers a reply that cannot be encoded with a short INTERNAL ERROR, and the connection goes on', async () => {
    const { raw, conn, requests } = await endpointWithHeldConn();
    raw.send({ kind: 'C_LIST', requestId: 8, epoch: 0, sender: 0, flags: 0 } as Message);
    await waitFor(() => requests.length === 1, 'the request');
    const tooLong = 'n'.repeat(5000);
    const reply = { kind: 'C_LIST_REPLY', requestId: 8, epoch: 0, sender: 1, flags: 0, allocations: [{ guid: '00000000-0000-4000-8000-000000000001', name: tooLong, policy: 'default', pageSizeBytes: 4096, pageCount: 1 }] } as unknown as Message;
    expect(() => conn().reply(reply)).not.toThrow();
    const got = await raw.nth(2);
    expect(got).toMatchObject({ kind: 'ERROR', requestId: 8, code: ErrorCode.INTERNAL, requestType: typeOfKind('C_LIST') });
    raw.send({ kind: 'C_LIST', requestId: 9, epoch: 0, sender: 0, flags: 0 } as Message);
    await waitFor(() => requests.length === 2, 'the next request on the same connection');
  });
});

/** B (id 2) listens; the test dials it as partner A by hand. */
async function linkWithRawPartner(onMessage: (msg: Message) => void): Promise<{ link: PeerLink; raw: RawWs; ups: number }> {
  const { log } = captureLog();
  const state = { ups: 0 };
  const link = testPeerLink({ selfId: 2, partnerId: 1, handshakeTimeoutMs: 2000, log }, { onUp: () => state.ups++, onMessage });
  const { port } = await link.start();
  closers.push(() => link.close());
  const raw = new RawWs(port);
  closers.push(() => raw.terminate());
  const auth = await authenticateAsPartner(raw);
  if (auth.kind !== 'AUTH_REPLY') throw new Error(`expected AUTH_REPLY, got ${auth.kind}`);
  await waitFor(() => link.isUp, 'the link up');
  return { link, raw, get ups() { return state.ups; } };
}

function sense(requestId: number): Message {
  return { kind: 'SENSE_REQUEST', requestId, epoch: 3, sender: 1, flags: 0, role: Role.MIRRORED, reason: SenseReason.HEARTBEAT, joinFlags: 0, poolGeneration: 0 };
}

describe('peer link: a frame the core cannot apply', () => {
  it('is answered with a typed ERROR and the link stays up', async () => {
    const seen: Message[] = [];
    const h = await linkWithRawPartner((msg) => {
      seen.push(msg);
      if (msg.requestId === 5) throw new PagepairError('BAD_FIELD', `cannot apply ${'\uFFFD'.repeat(800)}`);
      if (msg.requestId === 6) throw new TypeError('a bug in the core');
    });
    h.raw.send(sense(5));
    h.raw.send(sense(6));
    h.raw.send(sense(7));
    await waitFor(() => seen.length === 3, 'all three frames delivered');
    const e5 = await h.raw.nth(3);
    const e6 = await h.raw.nth(4);
    expect(e5).toMatchObject({ kind: 'ERROR', requestId: 5, code: ErrorCode.BAD_FIELD, requestType: typeOfKind('SENSE_REQUEST') });
    expect(e6).toMatchObject({ kind: 'ERROR', requestId: 6, code: ErrorCode.INTERNAL });
    expect(h.link.isUp).toBe(true);
    expect(h.ups).toBe(1);
  });

  it('sends an over-long ERROR clipped, and a frame that cannot be encoded does not cost the rest of the batch', async () => {
    const h = await linkWithRawPartner(() => undefined);
    const echo: ErrorReply = { kind: 'ERROR', requestId: 9, epoch: 3, sender: 2, flags: 0, code: ErrorCode.POLICY_UNKNOWN, requestType: typeOfKind('SPACE_REQUEST'), message: ECHO };
    expect(() => h.link.send(echo)).not.toThrow();
    const got = await h.raw.nth(3);
    expect(got).toMatchObject({ kind: 'ERROR', requestId: 9, code: ErrorCode.POLICY_UNKNOWN });
    const unencodable = { ...sense(10), role: 999 } as unknown as Message;
    expect(() => h.link.sendMany([unencodable, echo, sense(11)])).not.toThrow();
    const after = await h.raw.nth(5);
    expect(h.raw.received[3]).toMatchObject({ kind: 'ERROR', requestId: 9 });
    expect(after).toMatchObject({ kind: 'SENSE_REQUEST', requestId: 11 });
    expect(h.link.isUp).toBe(true);
  });
});
