// The set-up the sim-found-*.test.ts regressions share: a simulated pair with
// one small allocation written through A, and the tagged write of a client
// that retries (client 7, its first write).

import { Harness, tagged, type NodeName, type SimOptions, type Tracked } from './harness.js';

export const PAGE = 512;

/** The retry tag of the one client whose write is retried in these tests. */
export const RETRIED = { clientId: 7, clientSeq: 1 } as const;

/** A pair (`opts`), and allocation "x" of four pages ('tiny' policy) made through A; page 0 written through A with `page0` where given. */
export async function pairWithAllocation(opts: SimOptions, page0?: Buffer): Promise<{ h: Harness; guid: string }> {
  const h = await Harness.createPair(opts);
  const al = await h.run(h.client('A').allocate('x', 4 * PAGE, 'tiny'));
  if (page0 !== undefined) await h.run(h.client('A').write(al.guid, 0, page0));
  return { h, guid: al.guid };
}

/** Page 0 written through `node` with the retried client's tag, the write followed but not awaited. */
export function retriedWrite(h: Harness, node: NodeName, guid: string, data: Buffer): Tracked<void> {
  return h.track(h.client(node).write(guid, 0, data, 0, RETRIED));
}

/**
 * A owns page 0 and, destaging it through a slow store, defers giving it
 * away; the retried client's write of `data` reaches B, which asks A for the
 * page and waits. Returns B's attempt (unsettled) and A's flush.
 */
export async function writeWaitingAtB(h: Harness, guid: string, data: Buffer): Promise<{ attemptOnB: Tracked<void>; flush: Tracked<number> }> {
  h.a.store.stall('pageWrites');
  const flush = h.track(h.client('A').flush(guid));
  await h.advance(5);
  const attemptOnB = retriedWrite(h, 'B', guid, data);
  await h.advance(20);
  return { attemptOnB, flush };
}

export { tagged };
