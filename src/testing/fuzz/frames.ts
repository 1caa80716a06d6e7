// Inputs for the fuzz targets, made by fast-check: valid messages of every
// kind (walking the body layouts, so a new field is covered without a line
// here), and mutations of valid bytes (bit flips, truncation, extension,
// swapped fields, length fields set to extremes), optionally resealed so
// that the frame's CRCs are right again and the damage reaches the body
// parser instead of stopping at the header check.

import fc from 'fast-check';
import { crc32c } from '../../protocol/crc32c.js';
import { BODY, TYPE_OF_KIND } from '../../protocol/layout.js';
import type { Field, ScalarField } from '../../protocol/layout.js';
import { DEFAULT_LIMITS } from '../../protocol/limits.js';
import type { Limits } from '../../protocol/limits.js';
import { HEADER_BYTES } from '../../protocol/messages.js';
import type { Message, MessageKind } from '../../protocol/messages.js';

export const ALL_KINDS = Object.keys(TYPE_OF_KIND) as MessageKind[];

const smallString = (limits: Limits): fc.Arbitrary<string> =>
  fc
    .oneof(
      { weight: 3, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 24 }) },
      { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 12 }) },
      { weight: 1, arbitrary: fc.constant('x'.repeat(limits.stringBytesMax)) },
    )
    .filter((s) => Buffer.byteLength(s, 'utf8') <= limits.stringBytesMax);

const bufferOf = (lengths: fc.Arbitrary<number>): fc.Arbitrary<Buffer> =>
  lengths.chain((n) => fc.uint8Array({ minLength: n, maxLength: n }).map((a) => Buffer.from(a)));

/** Data lengths: mostly tiny, sometimes a page (the CRC-combining path). */
const dataLength = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 48 }) },
  { weight: 1, arbitrary: fc.constantFrom(512, 4096) },
);

function scalarArb(f: ScalarField, limits: Limits): fc.Arbitrary<unknown> {
  switch (f.enc) {
    case 'u8':
      return fc.integer({ min: 0, max: 0xff });
    case 'u16':
      return fc.integer({ min: 0, max: 0xffff });
    case 'u32': {
      const max = f.limit === null ? 0xffff_ffff : limits[f.limit];
      return fc.oneof(fc.integer({ min: 0, max: Math.min(max, 64) }), fc.integer({ min: 0, max }), fc.constant(max));
    }
    case 'u64':
      return fc.oneof(fc.integer({ min: 0, max: 1 << 20 }), fc.constant(Number.MAX_SAFE_INTEGER), fc.maxSafeNat());
    case 'offset64':
      return fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 1 << 20 }), fc.maxSafeNat());
    case 'bool':
      return fc.boolean();
    case 'enum':
      return fc.constantFrom(...Object.values(f.enumValues!));
    case 'bits': {
      const mask = f.allowed![0]!;
      return fc.integer({ min: 0, max: 0xff }).map((v) => v & mask);
    }
    case 'guid':
      return fc.uuid();
    case 'guidOrEmpty':
      return fc.oneof(fc.constant(''), fc.uuid());
    case 'str':
      return smallString(limits);
    case 'json':
      return fc.json({ maxDepth: 1 });
    case 'bytes32':
      return bufferOf(fc.constant(32));
    case 'bytes16':
      return bufferOf(fc.constant(16));
    case 'data':
      return bufferOf(dataLength);
  }
}

function recordArb(fields: readonly Field[], limits: Limits): fc.Arbitrary<Record<string, unknown>> {
  const parts: Record<string, fc.Arbitrary<unknown>> = {};
  for (const f of fields) {
    if (f.enc !== 'list') {
      parts[f.name] = scalarArb(f, limits);
      continue;
    }
    const item = recordArb(f.item, limits).map((rec) => {
      // A record's data travels with its CRC whenever it is not empty.
      for (const g of f.item) {
        if (g.crcField === null) continue;
        const d = rec[g.name] as Buffer;
        if (d.length > 0) rec[g.crcField] = crc32c(d);
      }
      return rec;
    });
    parts[f.name] = fc.array(item, { minLength: f.countMin, maxLength: Math.max(f.countMin, 3) });
  }
  return fc.record(parts);
}

const arbCache = new Map<string, fc.Arbitrary<Message>>();

/** A valid message of `kind` (every field within `limits`). */
export function messageOf(kind: MessageKind, limits: Limits = DEFAULT_LIMITS): fc.Arbitrary<Message> {
  const key = `${kind}/${JSON.stringify(limits)}`;
  let arb = arbCache.get(key);
  if (arb === undefined) {
    arb = fc
      .record({
        requestId: fc.oneof(fc.integer({ min: 0, max: 16 }), fc.integer({ min: 0, max: 0xffff_ffff })),
        epoch: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff_ffff })),
        sender: fc.integer({ min: 0, max: 0xff }),
        body: recordArb(BODY[kind], limits),
      })
      .map(({ requestId, epoch, sender, body }) => ({ kind, requestId, epoch, sender, flags: 0, ...body }) as unknown as Message);
    arbCache.set(key, arb);
  }
  return arb;
}

/** A valid message of any kind, or of one of `kinds`. */
export function anyMessage(kinds: readonly MessageKind[] = ALL_KINDS, limits: Limits = DEFAULT_LIMITS): fc.Arbitrary<Message> {
  return fc.constantFrom(...kinds).chain((k) => messageOf(k, limits));
}

// ---------------------------------------------------------------------------
// Mutations

export type Mutation =
  | { op: 'flip'; at: number; bit: number }
  | { op: 'set'; at: number; value: number }
  | { op: 'truncate'; at: number }
  | { op: 'extend'; bytes: Uint8Array }
  | { op: 'insert'; at: number; bytes: Uint8Array }
  | { op: 'delete'; at: number; n: number }
  | { op: 'swap'; a: number; b: number; width: number }
  | { op: 'extreme'; at: number; width: 1 | 2 | 4 | 8; value: number; bigEndian: boolean }
  | { op: 'bodyLength'; delta: number }
  | { op: 'splice'; at: number; from: Uint8Array };

/** Values that break length checks: zero, one, the top of each width, signed edges. */
const EXTREMES = [0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff];

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('extend' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 40 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('swap' as const), a: fc.nat(), b: fc.nat(), width: fc.constantFrom(1, 2, 4, 8, 16) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('extreme' as const),
      at: fc.nat(),
      width: fc.constantFrom(1 as const, 2 as const, 4 as const, 8 as const),
      value: fc.constantFrom(...EXTREMES),
      bigEndian: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('bodyLength' as const), delta: fc.integer({ min: -4, max: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('splice' as const), at: fc.nat(), from: fc.uint8Array({ minLength: 1, maxLength: 32 }) }) },
);

function writeWidth(b: Buffer, at: number, width: number, value: number, bigEndian: boolean): void {
  for (let i = 0; i < width; i++) {
    // Widths past 4 repeat the 32-bit value's sign (all ones stay all ones).
    const byte = i < 4 ? (value >>> (8 * i)) & 0xff : value >= 0x8000_0000 ? 0xff : 0;
    b[bigEndian ? at + width - 1 - i : at + i] = byte;
  }
}

/** Applies one mutation; positions wrap around the input's length. */
export function mutate(input: Buffer, m: Mutation): Buffer {
  const n = input.length;
  switch (m.op) {
    case 'flip': {
      if (n === 0) return input;
      const b = Buffer.from(input);
      b[m.at % n]! ^= 1 << m.bit;
      return b;
    }
    case 'set': {
      if (n === 0) return input;
      const b = Buffer.from(input);
      b[m.at % n] = m.value;
      return b;
    }
    case 'truncate':
      return input.subarray(0, n === 0 ? 0 : m.at % n);
    case 'extend':
      return Buffer.concat([input, m.bytes]);
    case 'insert': {
      const at = m.at % (n + 1);
      return Buffer.concat([input.subarray(0, at), m.bytes, input.subarray(at)]);
    }
    case 'delete': {
      if (n === 0) return input;
      const at = m.at % n;
      return Buffer.concat([input.subarray(0, at), input.subarray(Math.min(n, at + m.n))]);
    }
    case 'swap': {
      if (n < 2 * m.width) return input;
      const slots = Math.floor(n / m.width);
      const a = (m.a % slots) * m.width;
      const c = (m.b % slots) * m.width;
      const b = Buffer.from(input);
      const tmp = Buffer.from(b.subarray(a, a + m.width));
      b.copy(b, a, c, c + m.width);
      tmp.copy(b, c);
      return b;
    }
    case 'extreme': {
      if (n < m.width) return input;
      const b = Buffer.from(input);
      writeWidth(b, m.at % (n - m.width + 1), m.width, m.value, m.bigEndian);
      return b;
    }
    case 'bodyLength': {
      if (n < HEADER_BYTES) return input;
      const b = Buffer.from(input);
      b.writeUInt32LE(Math.max(0, b.length - HEADER_BYTES + m.delta), 20);
      return b;
    }
    case 'splice': {
      if (n === 0) return Buffer.from(m.from);
      const at = m.at % n;
      const b = Buffer.from(input);
      b.set(m.from.subarray(0, n - at), at);
      return b;
    }
  }
}

/**
 * Makes a pagepair frame's body CRC and header CRC right for the bytes it
 * now holds (its body length as it says, or as far as the bytes go).
 */
export function reseal(frame: Buffer): Buffer {
  if (frame.length < HEADER_BYTES) return frame;
  const b = Buffer.from(frame);
  const bodyLength = b.readUInt32LE(20);
  const end = Math.min(b.length, HEADER_BYTES + bodyLength);
  b.writeUInt32LE(crc32c(b.subarray(HEADER_BYTES, end)), 24);
  b.writeUInt32LE(crc32c(b.subarray(0, 28)), 28);
  return b;
}

/** Mutations to apply in order, and whether to reseal the frame after. */
export const mutationsArb = fc.record({
  mutations: fc.array(mutationArb, { minLength: 1, maxLength: 4 }),
  reseal: fc.boolean(),
});

/** A frame after its mutations (resealed when asked: most of them then pass the header check). */
export function mutateFrame(frame: Buffer, plan: { mutations: readonly Mutation[]; reseal: boolean }): Buffer {
  let b = frame;
  for (const m of plan.mutations) b = mutate(b, m);
  return plan.reseal ? reseal(b) : b;
}
