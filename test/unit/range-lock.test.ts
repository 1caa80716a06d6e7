// The range lock a pool's copy holds against its writes: writes share, a
// copy excludes the writes over its range (waiting for those under way),
// ranges apart never wait, and a write asked for after a waiting copy waits
// behind it, so a stream of writes cannot starve the copy.

import { describe, expect, it } from 'vitest';
import { RangeLock } from '../../src/store/range-lock.js';

const turn = () => new Promise((r) => setImmediate(r));

describe('RangeLock', () => {
  it('shares among writes, excludes a copy over their range, and serves in order where they conflict', async () => {
    const lock = new RangeLock();
    const order: string[] = [];
    const w1 = await lock.acquire(0, 100, false);
    const w2 = await lock.acquire(50, 100, false);
    const copy = lock.acquire(0, 200, true).then((release) => (order.push('copy'), release));
    const apart = lock.acquire(500, 10, true).then((release) => (order.push('apart'), release));
    const late = lock.acquire(150, 10, false).then((release) => (order.push('late write'), release));
    await turn();
    expect(order).toEqual(['apart']);
    w1();
    await turn();
    expect(order).toEqual(['apart']);
    w2();
    await turn();
    expect(order).toEqual(['apart', 'copy']);
    (await copy)();
    await turn();
    expect(order).toEqual(['apart', 'copy', 'late write']);
    (await late)();
    (await apart)();
    expect(lock.idle).toBe(true);
  });

  it('gives a range back once however often it is released', async () => {
    const lock = new RangeLock();
    const a = await lock.acquire(0, 10, true);
    const b = lock.acquire(0, 10, true);
    a();
    a();
    const releaseB = await b;
    let c = false;
    void lock.acquire(5, 1, false).then(() => (c = true));
    await turn();
    expect(c).toBe(false);
    releaseB();
    await turn();
    expect(c).toBe(true);
  });
});
