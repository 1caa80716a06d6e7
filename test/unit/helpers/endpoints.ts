// The two WebSocket listeners as the transport and client tests stand them
// up: controller 1's client endpoint and either side's peer link, on
// 127.0.0.1 at a free port, of one test pair, with the protocol's default
// limits. A test passes what it is about (bounds, TLS, its request handler)
// and takes the rest from here.

import { randomBytes } from 'node:crypto';
import type pino from 'pino';
import { expect } from 'vitest';
import { authProof, helloProof } from '../../../src/protocol/handshake.js';
import { DEFAULT_LIMITS } from '../../../src/protocol/limits.js';
import { PROTOCOL_VERSION, Role, type Message } from '../../../src/protocol/messages.js';
import { ClientEndpoint, type ClientEndpointOptions } from '../../../src/transport/client-endpoint.js';
import { PeerLink, type PeerLinkHandlers, type PeerLinkOptions } from '../../../src/transport/peer-link.js';
import type { RawWs } from '../transport-helpers.js';

export const PAIR_ID = '6a1f0c52-8d3e-4b7a-9f21-0c4d5e6f7a8b';
export const TOKEN = 'client-token-for-tests';
export const SECRET = 'pair-secret-for-tests';

/** Controller 1's client endpoint, mirrored, eight requests in flight a connection; `opts` adds or overrides. */
export function testClientEndpoint(opts: Partial<ClientEndpointOptions> & Pick<ClientEndpointOptions, 'log' | 'onRequest'>): ClientEndpoint {
  return new ClientEndpoint({
    host: '127.0.0.1',
    port: 0,
    token: TOKEN,
    controllerId: 1,
    pairId: PAIR_ID,
    limits: DEFAULT_LIMITS,
    inflightMax: 8,
    getRole: () => Role.MIRRORED,
    ...opts,
  });
}

/** One side's peer link (pid 1000 + its id), its partner at 127.0.0.1:1 unless given, re-dialling every 50 ms; handlers left out do nothing. */
export function testPeerLink(opts: Partial<PeerLinkOptions> & { selfId: number; partnerId: number; log: pino.Logger }, handlers: Partial<PeerLinkHandlers> = {}): PeerLink {
  return new PeerLink(
    {
      pairId: PAIR_ID,
      secret: SECRET,
      pid: 1000 + opts.selfId,
      listen: { host: '127.0.0.1', port: 0 },
      partner: { host: '127.0.0.1', port: 1 },
      limits: DEFAULT_LIMITS,
      reconnectMs: 50,
      ...opts,
    },
    { onUp: () => undefined, onDown: () => undefined, onMessage: () => undefined, ...handlers },
  );
}

/** The first frame of a client: CLIENT_HELLO with the test token, unless another is given. */
export function clientHello(token = TOKEN): Extract<Message, { kind: 'CLIENT_HELLO' }> {
  return { kind: 'CLIENT_HELLO', requestId: 1, epoch: 0, sender: 0, flags: 0, protocolVersion: PROTOCOL_VERSION, token, clientName: 't' };
}

/**
 * HELLO and AUTH on `raw`, by hand, as partner A (id 1, pid 4242) of the test
 * pair dials B. Resolves with the answer to the AUTH: an AUTH_REPLY (its proof
 * checked) or whatever came instead.
 */
export async function authenticateAsPartner(raw: RawWs, secret = SECRET, opts: { badAuthProof?: boolean } = {}): Promise<Message> {
  await raw.opened;
  const nonce = randomBytes(32);
  raw.send({ kind: 'HELLO', requestId: 0, epoch: 0, sender: 1, flags: 0, protocolVersion: PROTOCOL_VERSION, pairId: PAIR_ID, controllerId: 1, nonce, pid: 4242 });
  const reply = await raw.nth(1);
  if (reply.kind !== 'HELLO_REPLY') throw new Error(`expected HELLO_REPLY, got ${reply.kind}`);
  // The listener gives no proof before the dialer's (it would be an oracle for the secret).
  expect('proof' in reply).toBe(false);
  const proof = opts.badAuthProof === true ? randomBytes(32) : authProof(secret, PAIR_ID, 1, 2, nonce, reply.nonce);
  raw.send({ kind: 'AUTH', requestId: 0, epoch: 0, sender: 1, flags: 0, proof });
  const auth = await raw.nth(2);
  if (auth.kind === 'AUTH_REPLY') expect(auth.proof.equals(helloProof(secret, PAIR_ID, 1, 2, nonce, reply.nonce))).toBe(true);
  return auth;
}
