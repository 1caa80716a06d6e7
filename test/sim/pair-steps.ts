// Steps the simulator's pair tests take again and again.

import { isPagepairError } from '../../src/protocol/errors.js';
import { Harness, type Settled, type SimOptions } from './harness.js';
import type { SimClient } from './sim-client.js';

/** A simulated pair (`opts`) and a client on each controller. */
export async function pairWithClients(opts: SimOptions): Promise<{ h: Harness; ca: SimClient; cb: SimClient }> {
  const h = await Harness.createPair(opts);
  return { h, ca: h.client('A'), cb: h.client('B') };
}

/** Both controllers restarted (A, then B), the link healed, and the pair mirrored again. */
export async function restartBoth(h: Harness): Promise<void> {
  await h.restart('A');
  await h.restart('B');
  h.heal();
  await h.waitMirrored();
}

/** How a request settled: "ok", its error's code, or "untyped: …". */
export function codeOf<T>(r: Settled<T>): string {
  if (r.ok) return 'ok';
  return isPagepairError(r.error) ? r.error.code : `untyped: ${r.error.message}`;
}
