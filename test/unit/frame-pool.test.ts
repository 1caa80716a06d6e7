// The pool of frame buffers the transports encode into: buffers come back only
// through give(), are handed out again at the size asked for, and nothing
// that did not come from the pool (or came back twice) gets in.

import { describe, expect, it } from 'vitest';
import { FramePool } from '../../src/transport/frame-pool.js';
import { decode, encode } from '../../src/protocol/codec.js';

describe('frame pool', () => {
  it('hands out exact sizes and reuses a buffer given back', () => {
    const pool = new FramePool();
    const a = pool.take(4132);
    expect(a.length).toBe(4132);
    pool.give(a);
    const b = pool.take(5000);
    expect(b.length).toBe(5000);
    expect(b.buffer).toBe(a.buffer);
    expect(pool.stats).toEqual({ reused: 1, created: 1 });
    // Not given back: a new one.
    const c = pool.take(4132);
    expect(c.buffer).not.toBe(b.buffer);
  });

  it('leaves small and huge frames to plain allocation', () => {
    const pool = new FramePool();
    expect(pool.take(32).length).toBe(32);
    expect(pool.take(1 << 20).length).toBe(1 << 20);
    expect(pool.stats).toEqual({ reused: 0, created: 0 });
  });

  it('ignores buffers it did not make and a buffer given back twice', () => {
    const pool = new FramePool();
    pool.give(Buffer.alloc(8192));
    pool.give(Buffer.allocUnsafe(8192).subarray(1));
    const a = pool.take(8000);
    expect(pool.stats.created).toBe(1);
    pool.give(a);
    pool.give(a);
    const x = pool.take(8000);
    const y = pool.take(8000);
    expect(x.buffer).toBe(a.buffer);
    expect(y.buffer).not.toBe(a.buffer);
  });

  it('a reused buffer carries a whole new frame, nothing of the old one', () => {
    const pool = new FramePool();
    const guid = '6a1f0c52-8d3e-4b7a-9f21-0c4d5e6f7a8b';
    const first = encode({ kind: 'C_READ_REPLY', requestId: 1, epoch: 1, sender: 1, flags: 0, data: Buffer.alloc(4096, 0xee) }, pool.take);
    pool.give(first);
    const msg = { kind: 'C_WRITE', requestId: 2, epoch: 0, sender: 0, flags: 0, guid, offset: 0, pointerId: 0, clientId: 0, clientSeq: 0, data: Buffer.alloc(4050, 1) } as const;
    const second = encode(msg, pool.take);
    expect(second.buffer).toBe(first.buffer);
    expect(second.equals(encode(msg))).toBe(true);
    expect(decode(second)).toEqual(msg);
  });
});
