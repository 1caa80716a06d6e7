// One round of two writers on the same bytes, one client per controller, as
// the WebSocket tests (plain and TLS) run it: both write at the same moment,
// then both read the span either write touched.

import type { PagepairClient } from '../../src/client/index.js';
import { roundValue } from './helpers.js';

/** Where each writer writes in one round. */
export interface Round {
  offA: number;
  lenA: number;
  offB: number;
  lenB: number;
}

/**
 * Writes round `round`'s values (writer 1 through `ca`, writer 2 through `cb`)
 * at once, then reads the span back through both. `same`: A and B read the
 * same bytes; `oneOfTheWrites`: where the writes overlap, what is read is one
 * of them whole (true where they do not overlap).
 */
export async function writeBothAtOnce(ca: PagepairClient, cb: PagepairClient, guid: string, r: Round, round: number): Promise<{ same: boolean; oneOfTheWrites: boolean }> {
  const va = roundValue(r.lenA, round, 1);
  const vb = roundValue(r.lenB, round, 2);
  await Promise.all([ca.write(guid, r.offA, va), cb.write(guid, r.offB, vb)]);
  // Compare the whole span both writes touched.
  const from = Math.min(r.offA, r.offB);
  const to = Math.max(r.offA + r.lenA, r.offB + r.lenB);
  const [ra, rb] = await Promise.all([ca.read(guid, from, to - from), cb.read(guid, from, to - from)]);
  // Where one write covered the other's bytes, one of them must be what is read.
  const lo = Math.max(r.offA, r.offB);
  const hi = Math.min(r.offA + r.lenA, r.offB + r.lenB);
  let oneOfTheWrites = true;
  if (lo < hi) {
    const got = ra.subarray(lo - from, hi - from);
    oneOfTheWrites = got.equals(va.subarray(lo - r.offA, hi - r.offA)) || got.equals(vb.subarray(lo - r.offB, hi - r.offB));
  }
  return { same: ra.equals(rb), oneOfTheWrites };
}
