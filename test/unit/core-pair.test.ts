// Two controller cores paired in one process (test/sim/harness.ts): mirroring,
// reads through either side, partial writes, lock ping-pong under contention,
// flush and destage, restart and rejoin, release. Every frame crosses the real
// codec; every run is seeded.

import { describe, expect, it } from 'vitest';
import { Harness, tagged } from '../sim/harness.js';
import type { SimClient } from '../sim/sim-client.js';

const PAGE = 512; // the 'tiny' policy

function digests(h: Harness): { a: unknown; b: unknown } {
  return { a: h.status('A').digests, b: h.status('B').digests };
}

describe('core pair: mirrored basics', () => {
  it('both controllers come up mirrored with equal digests', async () => {
    const h = await Harness.createPair({ seed: 1 });
    expect(h.status('A').role).toBe('mirrored');
    expect(h.status('B').role).toBe('mirrored');
    await h.runUntilQuiet();
    const d = digests(h);
    expect(d.a).toEqual(d.b);
  });

  it('allocate and write through A, read through B, and the reverse', async () => {
    const h = await Harness.createPair({ seed: 2 });
    const ca = h.client('A');
    const cb = h.client('B');
    const x = await h.run(ca.allocate('x', 8 * PAGE, 'tiny'));
    expect(x).toMatchObject({ pageSizeBytes: PAGE, pageCount: 8 });
    const data = tagged(8 * PAGE, 'from-A');
    await h.run(ca.write(x.guid, 0, data));
    expect(await h.run(cb.read(x.guid, 0, 8 * PAGE))).toEqual(data);

    const y = await h.run(cb.allocate('y', 5 * PAGE, 'tiny'));
    const data2 = tagged(5 * PAGE, 'from-B');
    await h.run(cb.write(y.guid, 0, data2));
    expect(await h.run(ca.read(y.guid, 0, 5 * PAGE))).toEqual(data2);

    const la = await h.run(ca.list());
    const lb = await h.run(cb.list());
    expect(la.map((e) => e.name).sort()).toEqual(['x', 'y']);
    expect(lb).toEqual(expect.arrayContaining(la));
    expect(lb.length).toBe(la.length);
    await h.runUntilQuiet();
    const d = digests(h);
    expect(d.a).toEqual(d.b);
    expect(h.errorLogs()).toEqual([]);
  });
});
