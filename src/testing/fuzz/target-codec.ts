// Fuzz target: the frame codec. decode of every message type (valid frames,
// mutated frames, frames run together, noise), through decode() and the
// streaming FrameDecoder. Oracles: only ProtocolError is thrown; a valid
// frame decodes to the message it was made from; whatever decodes encodes
// again and decodes to the same message; the FrameDecoder gives the same
// messages and the same error however the bytes are split.

import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import { isPagepairError } from '../../protocol/errors.js';
import { decode, encode, FrameDecoder, ProtocolError } from '../../protocol/codec.js';
import { DEFAULT_LIMITS, HARD_LIMITS } from '../../protocol/limits.js';
import { FRAME_MAGIC, HEADER_BYTES, PROTOCOL_VERSION } from '../../protocol/messages.js';
import type { Message } from '../../protocol/messages.js';
import { crc32c } from '../../protocol/crc32c.js';
import { anyMessage, mutateFrame, mutationsArb } from './frames.js';
import { caseOfMessages, chunksOf, OracleFailure } from './runner.js';
import type { FuzzCase, FuzzTarget, Splits, TargetInstance } from './runner.js';

interface CodecMeta {
  /** The messages the bytes hold, when they were made valid. */
  expected: Message[] | null;
}

/** A header with the right magic, version and CRC over random fields: gets past the first checks. */
const plausibleHeader = fc
  .record({ type: fc.integer({ min: 0, max: 255 }), flags: fc.constantFrom(0, 0, 0, 1, 0x80), requestId: fc.nat(), bodyLength: fc.oneof(fc.integer({ min: 0, max: 64 }), fc.nat()), sender: fc.oneof(fc.integer({ min: 0, max: 2 }), fc.nat()), tail: fc.uint8Array({ maxLength: 64 }) })
  .map(({ type, flags, requestId, bodyLength, sender, tail }) => {
    const b = Buffer.alloc(HEADER_BYTES);
    b.writeUInt32LE(FRAME_MAGIC, 0);
    b.writeUInt16LE(PROTOCOL_VERSION, 4);
    b[6] = type;
    b[7] = flags;
    b.writeUInt32LE(requestId >>> 0, 8);
    b.writeUInt32LE(sender >>> 0, 16);
    b.writeUInt32LE(bodyLength >>> 0, 20);
    b.writeUInt32LE(crc32c(tail), 24);
    b.writeUInt32LE(crc32c(b.subarray(0, 28)), 28);
    return Buffer.concat([b, tail]);
  });

function framesCase(frames: Buffer[], label: string, expected: Message[] | null): FuzzCase {
  return caseOfMessages(frames, label, { expected } satisfies CodecMeta);
}

export const codecCases: fc.Arbitrary<FuzzCase> = fc.oneof(
  { weight: 2, arbitrary: anyMessage().map((m) => framesCase([encode(m)], `valid ${m.kind}`, [m])) },
  {
    weight: 1,
    arbitrary: fc.array(anyMessage(), { minLength: 2, maxLength: 3 }).map((ms) => framesCase(ms.map((m) => encode(m)), `valid ${ms.map((m) => m.kind).join('+')}`, ms)),
  },
  {
    weight: 6,
    arbitrary: fc.tuple(anyMessage(), mutationsArb).map(([m, plan]) => framesCase([mutateFrame(encode(m), plan)], `mutated ${m.kind} ${JSON.stringify(plan.mutations.map((x) => x.op))}${plan.reseal ? ' resealed' : ''}`, null)),
  },
  {
    weight: 1,
    arbitrary: fc.tuple(anyMessage(), anyMessage(), mutationsArb).map(([a, b, plan]) => framesCase([encode(a), mutateFrame(encode(b), plan)], `valid ${a.kind} + mutated ${b.kind}`, null)),
  },
  { weight: 1, arbitrary: plausibleHeader.map((b) => framesCase([b], 'plausible header', null)) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 80 }).map((a) => framesCase([Buffer.from(a)], 'noise', null)) },
);

function onlyProtocolErrors<T>(what: string, f: () => T): T | ProtocolError {
  try {
    return f();
  } catch (err) {
    if (err instanceof ProtocolError) return err;
    throw new OracleFailure(`${what} threw ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}, not a ProtocolError`);
  }
}

/** What a FrameDecoder made of a stream: the messages, then the error that stopped it. */
interface StreamOutcome {
  messages: Message[];
  error: string | null;
}

function decodeStream(chunks: readonly Buffer[]): StreamOutcome {
  const d = new FrameDecoder(DEFAULT_LIMITS);
  const messages: Message[] = [];
  for (const c of chunks) {
    // Pushed as a copy: messages alias their chunk, and a split copies, so both paths see bytes that do not change.
    const r = onlyProtocolErrors('FrameDecoder.push', () => d.push(Buffer.from(c)));
    if (r instanceof ProtocolError) return { messages, error: r.code };
    messages.push(...r);
  }
  return { messages, error: null };
}

/** Re-encoding a decoded message never throws anything but a typed error, and what it makes decodes to the same message. */
function checkReencode(m: Message): void {
  let frame: Buffer;
  try {
    frame = encode(m);
  } catch (err) {
    if (isPagepairError(err)) return;
    throw new OracleFailure(`encode of a decoded ${m.kind} threw ${String(err)}`);
  }
  const again = onlyProtocolErrors('decode of a re-encoded frame', () => decode(frame, HARD_LIMITS));
  if (again instanceof ProtocolError) throw new OracleFailure(`a decoded ${m.kind} re-encoded does not decode: ${again.message}`);
  if (!isDeepStrictEqual(comparable(again), comparable(m))) throw new OracleFailure(`a decoded ${m.kind} re-encoded decodes to something else`);
}

/** Buffers as hex, so messages built from Uint8Array and decoded as Buffer views compare by content. */
function comparable(v: unknown): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex');
  if (Array.isArray(v)) return v.map(comparable);
  if (typeof v === 'object' && v !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = comparable(x);
    return out;
  }
  return v;
}

class CodecInstance implements TargetInstance {
  readonly cases = codecCases;
  /** The whole-delivery outcome of the case last run, for comparing its splits. */
  private reference: { c: FuzzCase; outcome: StreamOutcome } | null = null;

  run(c: FuzzCase, splits: Splits): void {
    const meta = c.meta as CodecMeta;
    if (splits.length === 0) {
      // Each frame alone through decode().
      const frames = chunksOf(c.bytes, c.boundaries);
      frames.forEach((f, i) => {
        const r = onlyProtocolErrors('decode', () => decode(f, DEFAULT_LIMITS));
        const want = meta.expected?.[i];
        if (want !== undefined) {
          if (r instanceof ProtocolError) throw new OracleFailure(`valid ${want.kind} did not decode: ${r.message}`);
          if (!isDeepStrictEqual(comparable(r), comparable(want))) throw new OracleFailure(`valid ${want.kind} decoded to something else`);
        }
        if (!(r instanceof ProtocolError)) checkReencode(r);
      });
      this.reference = { c, outcome: decodeStream([c.bytes]) };
      return;
    }
    // A split: the first piece alone is a truncated frame, and the stream must come out as it did whole.
    const chunks = chunksOf(c.bytes, splits);
    onlyProtocolErrors('decode of a truncated frame', () => decode(chunks[0]!, DEFAULT_LIMITS));
    const got = decodeStream(chunks);
    const ref = this.reference?.c === c ? this.reference.outcome : decodeStream([c.bytes]);
    // A push that fails drops the messages it completed before the bad frame, so a stream
    // that ends in an error may yield more when split: the whole delivery's must be a prefix.
    const countsAgree = ref.error === null ? got.messages.length === ref.messages.length : got.messages.length >= ref.messages.length;
    if (got.error !== ref.error || !countsAgree) {
      throw new OracleFailure(
        `split at [${splits.join(',')}] gave ${got.messages.length} messages and ${got.error ?? 'no error'}, whole gave ${ref.messages.length} and ${ref.error ?? 'no error'}`,
      );
    }
    for (let i = 0; i < ref.messages.length; i++) {
      if (!isDeepStrictEqual(comparable(got.messages[i]), comparable(ref.messages[i]))) {
        throw new OracleFailure(`split at [${splits.join(',')}]: message ${i} differs from the whole delivery's`);
      }
    }
  }

  async stillServes(): Promise<boolean> {
    const m: Message = { kind: 'C_WRITE', requestId: 7, epoch: 0, sender: 0, flags: 0, guid: '00000000-0000-4000-8000-000000000001', offset: 4096, pointerId: 0, clientId: 1, clientSeq: 2, data: Buffer.alloc(4096, 0x5a) };
    const back = decode(encode(m), DEFAULT_LIMITS);
    return isDeepStrictEqual(comparable(back), comparable(m));
  }

  errorsLogged(): readonly string[] {
    return [];
  }

  async close(): Promise<void> {}
}

export const codecTarget: FuzzTarget = {
  name: 'codec',
  description: 'decode/FrameDecoder of every message type: generated, mutated, run together, noise; round trips',
  setup: async () => new CodecInstance(),
};
