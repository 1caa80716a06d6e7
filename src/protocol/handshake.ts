// The proofs of the peer handshake (docs/protocol.md, "Peer handshake"). Each
// side proves it knows the pair's secret by an HMAC over both nonces, so the
// secret never travels and an old proof cannot be replayed on a new link.
// Pure: HMAC is computation, not I/O.

import { createHmac, timingSafeEqual } from 'node:crypto';
import { PagepairError } from './errors.js';
import { guidToBytes } from './guid.js';

export const NONCE_BYTES = 32;
export const PROOF_BYTES = 32;

const HELLO_LABEL = Buffer.from('pagepair-peer-v1|reply|', 'ascii');
const AUTH_LABEL = Buffer.from('pagepair-peer-v1|auth|', 'ascii');

function checkNonce(nonce: Uint8Array, field: string): void {
  if (!(nonce instanceof Uint8Array) || nonce.length !== NONCE_BYTES) {
    throw new PagepairError('BAD_FIELD', `${field} must be ${NONCE_BYTES} bytes`, field);
  }
}

function checkId(id: number, field: string): void {
  if (typeof id !== 'number' || (id & 0xff) !== id) {
    throw new PagepairError('BAD_FIELD', `${field} must be 0..255, got ${String(id)}`, field);
  }
}

function proof(
  label: Buffer,
  secret: string,
  firstNonce: Uint8Array,
  secondNonce: Uint8Array,
  dialerId: number,
  listenerId: number,
  pairId: string,
): Buffer {
  return createHmac('sha256', secret)
    .update(label)
    .update(firstNonce)
    .update(secondNonce)
    .update(Uint8Array.of(dialerId, listenerId))
    .update(guidToBytes(pairId, 'pairId'))
    .digest();
}

/**
 * The listener's proof, sent in AUTH_REPLY once the dialer's proof (AUTH)
 * checked out: HMAC-SHA256(secret, "pagepair-peer-v1|reply|"
 * ++ dialerNonce ++ listenerNonce ++ u8 dialerId ++ u8 listenerId ++ pairId as 16 bytes).
 */
export function helloProof(
  secret: string,
  pairId: string,
  dialerId: number,
  listenerId: number,
  dialerNonce: Uint8Array,
  listenerNonce: Uint8Array,
): Buffer {
  checkProofArgs(dialerId, listenerId, dialerNonce, listenerNonce);
  return proof(HELLO_LABEL, secret, dialerNonce, listenerNonce, dialerId, listenerId, pairId);
}

/**
 * The dialer's proof, sent in AUTH: HMAC-SHA256(secret, "pagepair-peer-v1|auth|"
 * ++ listenerNonce ++ dialerNonce ++ u8 dialerId ++ u8 listenerId ++ pairId as 16 bytes).
 * The nonces come in the other order than in helloProof, so neither proof can
 * stand in for the other.
 */
export function authProof(
  secret: string,
  pairId: string,
  dialerId: number,
  listenerId: number,
  dialerNonce: Uint8Array,
  listenerNonce: Uint8Array,
): Buffer {
  checkProofArgs(dialerId, listenerId, dialerNonce, listenerNonce);
  return proof(AUTH_LABEL, secret, listenerNonce, dialerNonce, dialerId, listenerId, pairId);
}

function checkProofArgs(dialerId: number, listenerId: number, dialerNonce: Uint8Array, listenerNonce: Uint8Array): void {
  checkNonce(dialerNonce, 'dialerNonce');
  checkNonce(listenerNonce, 'listenerNonce');
  checkId(dialerId, 'dialerId');
  checkId(listenerId, 'listenerId');
}

/** Compares a received proof with the expected one in constant time. */
export function proofMatches(expected: Uint8Array, received: Uint8Array): boolean {
  return expected.length === received.length && timingSafeEqual(expected, received);
}
