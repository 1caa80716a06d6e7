// GUIDs travel as 16 raw bytes and live in TypeScript as lowercase canonical
// uuid strings ("0123abcd-...."). Every page of every WRITE_PAGE carries one,
// so both directions are table lookups rather than parsing with regexes.

import { PagepairError } from './errors.js';

export const GUID_BYTES = 16;

const BYTE_TO_HEX: string[] = [];
for (let n = 0; n < 256; n++) BYTE_TO_HEX.push(n.toString(16).padStart(2, '0'));

// char code -> nibble value, or -1 for anything but 0-9 a-f (uppercase is
// refused so that one allocation never has two spellings as a map key).
const HEX_TO_NIBBLE = new Int8Array(128).fill(-1);
for (let n = 0; n < 16; n++) HEX_TO_NIBBLE[n.toString(16).charCodeAt(0)] = n;

const DASH = 0x2d;

/**
 * Writes `guid` as 16 bytes at out[offset]. Returns false, having perhaps
 * written part of it, when `guid` is not a lowercase canonical uuid string.
 */
export function writeGuid(guid: unknown, out: Uint8Array, offset: number): boolean {
  if (typeof guid !== 'string' || guid.length !== 36) return false;
  if (
    guid.charCodeAt(8) !== DASH ||
    guid.charCodeAt(13) !== DASH ||
    guid.charCodeAt(18) !== DASH ||
    guid.charCodeAt(23) !== DASH
  ) {
    return false;
  }
  let o = offset;
  for (let i = 0; i < 36; i += 2) {
    if (i === 8 || i === 13 || i === 18 || i === 23) i++;
    const hi = HEX_TO_NIBBLE[guid.charCodeAt(i)] ?? -1;
    const lo = HEX_TO_NIBBLE[guid.charCodeAt(i + 1)] ?? -1;
    if ((hi | lo) < 0) return false;
    out[o++] = (hi << 4) | lo;
  }
  return true;
}

/** The canonical string of the 16 bytes at buf[offset]; the caller checked the length. */
export function readGuid(buf: Uint8Array, offset: number): string {
  const h = BYTE_TO_HEX;
  const b = offset;
  // One line per group of the uuid: 4, 2, 2, 2 and 6 bytes.
  return (
    h[buf[b]!]! + h[buf[b + 1]!]! + h[buf[b + 2]!]! + h[buf[b + 3]!]! + '-' +
    h[buf[b + 4]!]! + h[buf[b + 5]!]! + '-' +
    h[buf[b + 6]!]! + h[buf[b + 7]!]! + '-' +
    h[buf[b + 8]!]! + h[buf[b + 9]!]! + '-' +
    h[buf[b + 10]!]! + h[buf[b + 11]!]! + h[buf[b + 12]!]! + h[buf[b + 13]!]! + h[buf[b + 14]!]! + h[buf[b + 15]!]!
  );
}

export function isGuid(value: unknown): value is string {
  return writeGuid(value, SCRATCH, 0);
}

const SCRATCH = new Uint8Array(GUID_BYTES);

/** The 16 bytes of a guid; BAD_FIELD when it is not a lowercase canonical uuid. */
export function guidToBytes(guid: string, field = 'guid'): Buffer {
  const out = Buffer.alloc(GUID_BYTES);
  if (!writeGuid(guid, out, 0)) {
    throw new PagepairError('BAD_FIELD', `${field}: not a lowercase canonical uuid: ${JSON.stringify(guid)}`, field);
  }
  return out;
}
