// TLS with pre-shared keys (TLS-PSK), for all three of a controller's links.
// No certificates: the peer link's key is derived from the pair secret, the
// client link's from the client token, and NBD's are read from a key file in
// the format GnuTLS's psktool writes (and qemu-nbd, nbdkit and libnbd read):
// one `identity:hexkey` line per key.
//
// OpenSSL negotiates TLS 1.3 with these keys (its PSK callbacks are used in
// 1.3's external-PSK mode); TLS 1.2 PSK suites are offered as well for
// clients that stop at 1.2. Nothing here is a certificate check: a side that
// does not hold the key fails the handshake, which is the authentication.

import { createHmac, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import type { ConnectionOptions, TlsOptions } from 'node:tls';
import { PagepairError } from '../protocol/errors.js';

/** TLS 1.2 suites offered with a pre-shared key (1.3 suites need no listing). */
export const PSK_CIPHERS = 'ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:PSK-CHACHA20-POLY1305';

/** Identities of the derived keys. */
export const PEER_PSK_IDENTITY = 'pagepair-peer';
export const CLIENT_PSK_IDENTITY = 'pagepair-client';

/** Key bytes: 32, like psktool's default. */
export const PSK_BYTES = 32;
/** The longest identity TLS carries is 65535 bytes; GnuTLS and OpenSSL take far less, and so do we. */
const IDENTITY_BYTES_MAX = 128;

/**
 * The first byte of a TLS connection is the record type of its ClientHello:
 * 22 (handshake). An HTTP request starts with a letter, an NBD client sends
 * nothing first; so one byte tells a TLS client from a plain one.
 */
export const TLS_HANDSHAKE_RECORD = 0x16;

/** A key for one link, derived from a credential both sides hold; label keeps the links' keys apart. */
export function derivePsk(credential: string, label: 'peer' | 'client'): Buffer {
  return createHmac('sha256', credential).update(`pagepair tls-psk v1 ${label}`).digest();
}

/** Keys by identity. */
export type PskKeys = ReadonlyMap<string, Buffer>;

/** Permission bits a file holding a key or a credential may not have: any for group or others. */
const KEY_FILE_MODE_FORBIDDEN = 0o077;

/**
 * The text of a file holding a key, or a credential a key is derived from;
 * refused when anyone but its owner may open it. The caller words the
 * refusals: `unreadable` gets the system's reason, `openToOthers` the file's
 * mode in octal ("0644").
 */
export function readOwnerOnlyFile(path: string, refuse: { unreadable(reason: string): Error; openToOthers(mode: string): Error }): string {
  let mode: number;
  let text: string;
  try {
    mode = statSync(path).mode;
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw refuse.unreadable((err as Error).message);
  }
  if ((mode & KEY_FILE_MODE_FORBIDDEN) !== 0) throw refuse.openToOthers((mode & 0o777).toString(8).padStart(4, '0'));
  return text;
}

/**
 * Reads a psktool key file. Refuses a file group or others may read (the keys
 * are the whole of NBD's authentication), and names the line of any bad entry.
 */
export function readPskFile(path: string): PskKeys {
  const text = readOwnerOnlyFile(path, {
    unreadable: (reason) => new PagepairError('BAD_CONFIG', `TLS key file ${path} cannot be read: ${reason}`, 'tls.pskFile'),
    openToOthers: (mode) => new PagepairError('BAD_CONFIG', `TLS key file ${path} may be opened by other users (mode ${mode}); chmod 600 ${path}`, 'tls.pskFile'),
  });
  return parsePskText(text, path);
}

/** Parses `identity:hexkey` lines; blank lines and lines starting with # are skipped. */
export function parsePskText(text: string, source: string): PskKeys {
  const keys = new Map<string, Buffer>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const where = `${source} line ${i + 1}`;
    const colon = line.lastIndexOf(':');
    if (colon <= 0) throw new PagepairError('BAD_CONFIG', `${where}: expected identity:hexkey`, 'tls.pskFile');
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (Buffer.byteLength(identity) > IDENTITY_BYTES_MAX) {
      throw new PagepairError('BAD_CONFIG', `${where}: identity is longer than ${IDENTITY_BYTES_MAX} bytes`, 'tls.pskFile');
    }
    if (!/^(?:[0-9a-fA-F]{2}){16,64}$/.test(hex)) {
      throw new PagepairError('BAD_CONFIG', `${where}: the key must be 16 to 64 bytes in hex (psktool -s 32 writes 32)`, 'tls.pskFile');
    }
    if (keys.has(identity)) throw new PagepairError('BAD_CONFIG', `${where}: identity ${JSON.stringify(identity)} is given twice`, 'tls.pskFile');
    keys.set(identity, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw new PagepairError('BAD_CONFIG', `${source} holds no keys`, 'tls.pskFile');
  return keys;
}

/** Writes one key in psktool's format (for tests and `pagepair` tooling). */
export function formatPskLine(identity: string, key: Buffer): string {
  return `${identity}:${key.toString('hex')}\n`;
}

/** Server-side TLS options: the key for an identity, or null (handshake fails). */
export function pskServerOptions(keys: PskKeys): TlsOptions {
  return {
    pskCallback: (_socket, identity) => keys.get(identity) ?? null,
    ciphers: PSK_CIPHERS,
    minVersion: 'TLSv1.2',
  };
}

/** Client-side TLS options for one identity and key. */
export function pskClientOptions(identity: string, key: Buffer): ConnectionOptions {
  return {
    pskCallback: () => ({ psk: key, identity }),
    ciphers: PSK_CIPHERS,
    minVersion: 'TLSv1.2',
    // No certificates take part; the key is the check.
    checkServerIdentity: () => undefined,
  };
}

/** Constant-time comparison of two keys (for code that checks one itself). */
export function sameKey(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
