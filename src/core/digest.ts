// An order-independent digest of a set, updated in O(1) per change: each
// member hashes to 64 bits (two murmur3 hashes with different seeds; a CRC
// would not do, being linear, XORs of CRCs cancel) and the set's digest is
// the XOR of its members' hashes plus the member count. Two controllers that hold the same set show
// the same digest whatever order they built it in, which is what status
// compares. Not a cryptographic commitment; a check that the sets agree.

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
    this.lo = (this.lo ^ murmur3(member, 0x9e3779b9)) >>> 0;
    this.hi = (this.hi ^ murmur3(member, 0x7f4a7c15)) >>> 0;
  }
}

/** MurmurHash3, x86 32-bit variant. */
export function murmur3(data: Uint8Array, seed: number): number {
  let h = seed >>> 0;
  const n = data.length;
  const words = n >>> 2;
  for (let i = 0; i < words; i++) {
    const j = i << 2;
    let k = data[j]! | (data[j + 1]! << 8) | (data[j + 2]! << 16) | (data[j + 3]! << 24);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const tail = words << 2;
  if ((n & 3) !== 0) {
    let k = 0;
    for (let i = n - 1; i >= tail; i--) k = (k << 8) | data[i]!;
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
  }
  h ^= n;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
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
