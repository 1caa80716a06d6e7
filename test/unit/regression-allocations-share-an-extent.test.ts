// Regression (found by the allocator's unit tests, issue 13): on a single
// controller (and alone), two C_ALLOCATEs handled before the first one's
// clearExtent ended were placed in the same extent: the unmirrored branch of
// clientAllocate placed the extent without reserving it, and the allocation
// is installed only after clearExtent. The two then shared pages in the
// store: a flushed write to one was overwritten by the other's. Now every
// extent we place ourselves is held until its allocation is installed.

import { describe, expect, it } from 'vitest';
import { CONN, clientWrite, coreFixture, hop, PAGE, replyTo } from './core-fixture.js';

describe('allocator', () => {
  it('two allocations made at the same time on a single controller get extents that do not overlap', async () => {
    const f = await coreFixture();
    const a = f.request({ kind: 'C_ALLOCATE', name: 'a', policy: '', sizeBytes: 4 * PAGE });
    const b = f.request({ kind: 'C_ALLOCATE', name: 'b', policy: '', sizeBytes: 4 * PAGE });
    f.core.onClientRequest(CONN, a);
    f.core.onClientRequest(CONN, b);
    await f.settleIo();
    await hop();
    const ga = (replyTo(f, a) as { guid: string }).guid;
    const gb = (replyTo(f, b) as { guid: string }).guid;
    // Page 0 of each written and flushed to the store: each must still hold its own bytes there.
    clientWrite(f, ga, 0, Buffer.alloc(PAGE, 0xaa));
    f.core.onClientRequest(CONN, f.request({ kind: 'C_FLUSH', guid: ga }));
    await f.settleIo();
    clientWrite(f, gb, 0, Buffer.alloc(PAGE, 0xbb));
    f.core.onClientRequest(CONN, f.request({ kind: 'C_FLUSH', guid: gb }));
    await f.settleIo();
    await hop();
    const stored = await f.store.readPage(f.core.allocator.location(f.core.allocator.allocs.get(ga)!), 0);
    expect(stored.data).toEqual(Buffer.alloc(PAGE, 0xaa));
    const ra = f.core.allocator.allocs.get(ga)!.record;
    const rb = f.core.allocator.allocs.get(gb)!.record;
    const bytes = f.core.cfg.store.extentBytes(PAGE, 4);
    expect(ra.dataOffset + bytes <= rb.dataOffset || rb.dataOffset + bytes <= ra.dataOffset).toBe(true);
  });
});
