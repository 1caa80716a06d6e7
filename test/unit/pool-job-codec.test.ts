// C_POOL_JOB and its reply on the wire: a round trip of each kind, split
// at every offset through FrameDecoder, and each malformed form refused
// with its typed error (an unknown job kind, a boolean that is not 0 or 1,
// a device name over deviceNameBytesMax, a body cut short or too long, a
// rate over 2^53 - 1), by the decoder and, where it can tell, the encoder.

import { describe, expect, it } from 'vitest';
import { decode, encode, FrameDecoder, ProtocolError } from '../../src/protocol/codec.js';
import { crc32c } from '../../src/protocol/crc32c.js';
import { PagepairError } from '../../src/protocol/errors.js';
import { DEFAULT_LIMITS, HARD_LIMITS } from '../../src/protocol/limits.js';
import { HEADER_BYTES, PoolJobKind, type CPoolJob, type Message } from '../../src/protocol/messages.js';

const head = { requestId: 0x0102_0304, epoch: 7, sender: 0, flags: 0 };

function job(over: Partial<CPoolJob> = {}): CPoolJob {
  return { kind: 'C_POOL_JOB', ...head, job: PoolJobKind.REPLACE, slot: 2, device: '/var/lib/pagepair/d2-new.img', rateBytesPerSec: 100 * 1024 * 1024, repair: false, ...over };
}

/** Recomputes bodyLength and both CRCs, so the damage reaches the body parser. */
function reseal(frame: Buffer): Buffer {
  frame.writeUInt32LE(frame.length - HEADER_BYTES, 20);
  frame.writeUInt32LE(crc32c(frame.subarray(HEADER_BYTES)), 24);
  frame.writeUInt32LE(crc32c(frame.subarray(0, 28)), 28);
  return frame;
}

function decodeError(frame: Buffer): ProtocolError {
  try {
    decode(frame);
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    return err as ProtocolError;
  }
  throw new Error('decoded a malformed frame');
}

function encodeError(msg: unknown): PagepairError {
  try {
    encode(msg as Message);
  } catch (err) {
    expect(err).toBeInstanceOf(PagepairError);
    return err as PagepairError;
  }
  throw new Error('encoded a malformed message');
}

/** Offsets in the body: job 0, slot 1, device length 5, device 7. */
const DEVICE_AT = HEADER_BYTES + 5;

describe('C_POOL_JOB on the wire', () => {
  it('round-trips a replace, a scrub and the reply, whole and split at every offset', () => {
    const msgs: Message[] = [
      job(),
      job({ device: 'nbd+unix:///spare?socket=/run/ünï.sock', rateBytesPerSec: 0 }),
      job({ job: PoolJobKind.SCRUB, slot: 0, device: '', repair: true, rateBytesPerSec: Number.MAX_SAFE_INTEGER }),
      job({ device: '/'.padEnd(HARD_LIMITS.deviceNameBytesMax, 'x') }),
      { kind: 'C_POOL_JOB_REPLY', ...head, sender: 1, jobId: 0xffff_ffff },
    ];
    for (const m of msgs) {
      const frame = encode(m);
      expect(decode(frame)).toEqual(m);
      for (let at = 0; at <= frame.length; at++) {
        const d = new FrameDecoder();
        const got = [...d.push(frame.subarray(0, at)), ...d.push(frame.subarray(at))];
        expect(got).toEqual([m]);
      }
    }
  });

  it('takes a device name past stringBytesMax (paths are long), up to deviceNameBytesMax', () => {
    const long = job({ device: `/${'d'.repeat(DEFAULT_LIMITS.stringBytesMax * 2)}` });
    expect(decode(encode(long))).toEqual(long);
  });

  it('refuses a job kind that is not REPLACE or SCRUB: BAD_FIELD job', () => {
    for (const bad of [0, 3, 0xff]) {
      const frame = Buffer.from(encode(job()));
      frame[HEADER_BYTES] = bad;
      const err = decodeError(reseal(frame));
      expect(err.code).toBe('BAD_FIELD');
      expect(err.field).toBe('job');
      expect(err.requestId).toBe(head.requestId);
    }
    expect(encodeError(job({ job: 3 as never })).field).toBe('job');
  });

  it('refuses repair other than 0 or 1: BAD_FIELD repair', () => {
    const frame = Buffer.from(encode(job()));
    frame[frame.length - 1] = 2;
    const err = decodeError(reseal(frame));
    expect(err.code).toBe('BAD_FIELD');
    expect(err.field).toBe('repair');
    expect(encodeError(job({ repair: 1 as never })).field).toBe('repair');
  });

  it('refuses a device name over deviceNameBytesMax: LIMIT_EXCEEDED on decode, BAD_FIELD on encode', () => {
    const over = `/${'x'.repeat(HARD_LIMITS.deviceNameBytesMax)}`;
    const e = encodeError(job({ device: over }));
    expect(e.code).toBe('BAD_FIELD');
    expect(e.field).toBe('device');
    // The same bytes built by hand: the length prefix is checked before the name is read.
    const ok = Buffer.from(encode(job({ device: '/x' })));
    const name = Buffer.from(over, 'utf8');
    const frame = Buffer.concat([ok.subarray(0, DEVICE_AT), Buffer.from([name.length & 0xff, name.length >> 8]), name, ok.subarray(DEVICE_AT + 2 + 2)]);
    const err = decodeError(reseal(frame));
    expect(err.code).toBe('LIMIT_EXCEEDED');
    expect(err.field).toBe('device');
    // A controller may take less than the hard limit.
    const tight = { ...DEFAULT_LIMITS, deviceNameBytesMax: 16 };
    const t = (() => {
      try {
        decode(encode(job({ device: '/seventeen-bytes!' })), tight);
      } catch (err2) {
        return err2 as ProtocolError;
      }
      throw new Error('decoded');
    })();
    expect(t.code).toBe('LIMIT_EXCEEDED');
  });

  it('refuses a body cut short (TRUNCATED) or with bytes after the last field (BAD_FRAME)', () => {
    const whole = Buffer.from(encode(job()));
    for (let cut = HEADER_BYTES; cut < whole.length; cut++) {
      const err = decodeError(reseal(Buffer.from(whole.subarray(0, cut))));
      expect(err.code, `cut at ${cut}`).toBe('TRUNCATED');
    }
    const err = decodeError(reseal(Buffer.concat([whole, Buffer.from([0])])));
    expect(err.code).toBe('BAD_FRAME');
  });

  it('refuses a rate over 2^53 - 1: BAD_FIELD rateBytesPerSec', () => {
    const frame = Buffer.from(encode(job()));
    const rateAt = frame.length - 1 - 8;
    frame.writeUInt32LE(0xffff_ffff, rateAt);
    frame.writeUInt32LE(0x0040_0000, rateAt + 4);
    const err = decodeError(reseal(frame));
    expect(err.code).toBe('BAD_FIELD');
    expect(err.field).toBe('rateBytesPerSec');
    expect(encodeError(job({ rateBytesPerSec: -1 })).field).toBe('rateBytesPerSec');
  });

  it('refuses a reply whose jobId is missing', () => {
    const frame = Buffer.from(encode({ kind: 'C_POOL_JOB_REPLY', ...head, jobId: 9 }));
    expect(decodeError(reseal(Buffer.from(frame.subarray(0, frame.length - 1)))).code).toBe('TRUNCATED');
  });
});
