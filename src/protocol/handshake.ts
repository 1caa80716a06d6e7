// The proofs of the peer handshake (docs/protocol.md, "Peer handshake"). Each
// side proves it knows the pair's secret by an HMAC over both nonces, so the
// secret never travels and an old proof cannot be replayed on a new link.
// Pure: HMAC is computation, not I/O.

import { createHmac, timingSafeEqual } from 'node:crypto';
import { PagepairError } from './errors.js';
import { guidToBytes } from './guid.js';

export const NONCE_BYTES = 32;
export const PROOF_BYTES = 32;

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

/**
 * One side's proof: HMAC-SHA256(secret, label ++ first nonce ++ second nonce
 * ++ u8 dialerId ++ u8 listenerId ++ pairId as 16 bytes). The two proofs
 * differ in label and in which nonce comes first, so neither can stand in
 * for the other.
 */
function proofOf(label: string, dialerNonceFirst: boolean) {
  const labelBytes = Buffer.from(label, 'ascii');
  return (secret: string, pairId: string, dialerId: number, listenerId: number, dialerNonce: Uint8Array, listenerNonce: Uint8Array): Buffer => {
    checkNonce(dialerNonce, 'dialerNonce');
    checkNonce(listenerNonce, 'listenerNonce');
    checkId(dialerId, 'dialerId');
    checkId(listenerId, 'listenerId');
    return createHmac('sha256', secret)
      .update(labelBytes)
      .update(dialerNonceFirst ? dialerNonce : listenerNonce)
      .update(dialerNonceFirst ? listenerNonce : dialerNonce)
      .update(Uint8Array.of(dialerId, listenerId))
      .update(guidToBytes(pairId, 'pairId'))
      .digest();
  };
}

/** The listener's proof, sent in AUTH_REPLY once the dialer's proof (AUTH) checked out: label "pagepair-peer-v1|reply|", dialerNonce first. */
export const helloProof = proofOf('pagepair-peer-v1|reply|', true);

/** The dialer's proof, sent in AUTH: label "pagepair-peer-v1|auth|", listenerNonce first. */
export const authProof = proofOf('pagepair-peer-v1|auth|', false);

/** Compares a received proof with the expected one in constant time. */
export function proofMatches(expected: Uint8Array, received: Uint8Array): boolean {
  return expected.length === received.length && timingSafeEqual(expected, received);
}
