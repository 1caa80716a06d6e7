// Issue 10 on the paths besides plain writes: write pointers, flushes (which
// take the pages they destage) and tagged writes retried on the other
// controller, each run through A and through B at once over the same pages,
// frames arriving in chunks. After every round both controllers read the
// same bytes, each page one of the values written to it (or the earlier
// one), and no ownership conflict is ever seen. Two bugs this found, both
// older than issue 10 and harmless only while two owners went unnoticed: a
// TAKE deferred while a write was in flight was granted later over a write
// pointer opened meanwhile, and a write pointer was registered on pages a
// deferred grant had just given away.

import { describe, expect, it } from 'vitest';
import { isPagepairError } from '../../src/protocol/errors.js';
import { PointerMode } from '../../src/protocol/messages.js';
import { Harness, tagged, type Tracked } from './harness.js';
import type { SimClient } from './sim-client.js';
import { Prng } from './prng.js';

const PAGE = 512;
const PAGES = 8;

/** Refusals a pointer's pages may give a concurrent writer; anything else fails the test. */
const EXPECTED_REFUSALS = new Set(['LOCK_CONFLICT', 'BUSY']);

/** Write `data` at `page` through a write pointer: open, write, commit. */
async function pointerWrite(c: SimClient, guid: string, page: number, data: Buffer): Promise<void> {
  const ptr = await c.openPointer(guid, page, 1, PointerMode.WRITE);
  await c.write(guid, page * PAGE, data, ptr);
  await c.closePointer(ptr, true);
}

describe('two writers on the same pages through pointers, flushes and retried writes', () => {
  for (let seed = 1; seed <= 16; seed++) {
    it(`seed ${seed}`, async () => {
      const h = await Harness.createPair({ seed, frameDelayMaxMs: seed % 3, clientDelayMaxMs: seed % 2, storeDelayMaxMs: 1 + (seed % 3) });
      const rng = new Prng(seed * 104_729);
      const clients = { A: h.client('A'), B: h.client('B') };
      const al = await h.run(clients.A.allocate('paths', PAGES * PAGE, 'tiny'));
      let seq = 1;
      for (let round = 0; round < 250; round++) {
        const page = rng.int(PAGES);
        const values: Buffer[] = [];
        const ops: Tracked<unknown>[] = [];
        for (const side of ['A', 'B'] as const) {
          const c = clients[side];
          const v = tagged(PAGE, `${side}${round}`);
          const kind = rng.int(4);
          if (kind === 0) {
            values.push(v);
            ops.push(h.track(pointerWrite(c, al.guid, page, v)));
          } else if (kind === 1) {
            ops.push(h.track(c.flush(al.guid)));
          } else if (kind === 2) {
            // A tagged write sent to this side and retried, same tag, on the other.
            values.push(v);
            const tag = { clientId: 9, clientSeq: seq++ };
            const other = clients[side === 'A' ? 'B' : 'A'];
            // Both attempts answered before the round is: a failed one must not hide the other still in flight.
            const both = Promise.allSettled([c.write(al.guid, page * PAGE, v, 0, tag), other.write(al.guid, page * PAGE, v, 0, tag)]).then((rs) => {
              const failed = rs.find((r): r is PromiseRejectedResult => r.status === 'rejected');
              if (failed !== undefined && rs.every((r) => r.status === 'rejected')) throw failed.reason;
            });
            ops.push(h.track(both));
          } else {
            values.push(v);
            ops.push(h.track(c.write(al.guid, page * PAGE, v)));
          }
        }
        const before = await h.run(clients.A.read(al.guid, page * PAGE, PAGE));
        await h.runUntil(() => ops.every((o) => o.settled), `round ${round} answered`);
        for (const o of ops) {
          if (o.result?.ok === false) {
            const code = isPagepairError(o.result.error) ? o.result.error.code : o.result.error.message;
            expect(EXPECTED_REFUSALS.has(code), `seed ${seed} round ${round}: ${code} ${o.result.error.message}\n${h.violations.join("\n")}`).toBe(true);
          }
        }
        const viaA = await h.run(clients.A.read(al.guid, page * PAGE, PAGE));
        const viaB = await h.run(clients.B.read(al.guid, page * PAGE, PAGE));
        expect(viaA.equals(viaB), `seed ${seed} round ${round}: A and B read different bytes`).toBe(true);
        expect(
          values.some((v) => v.equals(viaA)) || viaA.equals(before),
          `seed ${seed} round ${round}: the page is none of the values written ("${viaA.subarray(0, 12).toString()}")`,
        ).toBe(true);
      }
      await h.runUntilQuiet();
      expect(h.status('A').counters.ownershipConflicts + h.status('B').counters.ownershipConflicts).toBe(0);
      expect(h.status('A').digests).toEqual(h.status('B').digests);
      expect(h.violations).toEqual([]);
    });
  }
});
