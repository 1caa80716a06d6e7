// An order-independent digest of a set, updated in O(1) per change: each
// member hashes to 64 bits and the set's digest is the XOR of its members'
// hashes plus the member count. Two controllers that hold the same set show
// the same digest whatever order they built it in, which is what status
// compares. Not a cryptographic commitment; a check that the sets agree.

import { crc32c } from '../protocol/crc32c.js';

const scratch = Buffer.alloc(64);

export class SetDigest {
  private lo = 0;
  private hi = 0;
  private count = 0;

  add(member: Uint8Array): void {
    this.toggle(member);
    this.count++;
  }

  remove(member: Uint8Array): void {
    this.toggle(member);
    this.count--;
  }

  clear(): void {
    this.lo = 0;
    this.hi = 0;
    this.count = 0;
  }

  get size(): number {
    return this.count;
  }

  toString(): string {
    return `${this.count}:${hex32(this.hi)}${hex32(this.lo)}`;
  }

  private toggle(member: Uint8Array): void {
    this.lo = (this.lo ^ crc32c(member, 0x9e3779b9)) >>> 0;
    this.hi = (this.hi ^ crc32c(member, 0x7f4a7c15)) >>> 0;
  }
}

function hex32(n: number): string {
  return n.toString(16).padStart(8, '0');
}

/** Canonical bytes of a dirty page for the dirty-set digest. */
export function dirtyMember(guidBytes: Uint8Array, page: number, version: number, crc: number): Uint8Array {
  scratch.set(guidBytes, 0);
  scratch.writeUInt32LE(page >>> 0, 16);
  scratch.writeUInt32LE(version % 0x1_0000_0000, 20);
  scratch.writeUInt32LE(Math.floor(version / 0x1_0000_0000), 24);
  scratch.writeUInt32LE(crc >>> 0, 28);
  return scratch.subarray(0, 32);
}

/** Canonical bytes of an allocation record for the table digest. */
export function tableMember(fields: readonly (string | number)[]): Uint8Array {
  return Buffer.from(fields.join('\u0000'), 'utf8');
}

/** 16 raw bytes of a canonical lowercase uuid string. */
export function guidToBytes(guid: string): Buffer {
  return Buffer.from(guid.replace(/-/g, ''), 'hex');
}
