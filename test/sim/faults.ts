// The faults both random workloads inject (test/sim/random-workload.ts and
// nbd-workload.ts): a partition, a dropped connection, a kill, a pause. One
// place, so the two simulate the same failures the same way.

import type { Harness, NodeName } from './harness.js';
import type { Prng } from './prng.js';

export type BasicFault = 'cut' | 'drop' | 'kill' | 'pause';

/**
 * Inject one fault on `name` (cut and drop are the link's). A cut lasts a
 * short while or long enough for arbitration to settle who serves; a pause
 * lasts `pauseMs()` (drawn when the pause starts). The caller's recover()
 * restarts a controller a fence action killed meanwhile.
 */
export async function injectFault(h: Harness, my: Prng, fault: BasicFault, name: NodeName, partnerTimeoutMs: number, pauseMs: () => number): Promise<void> {
  switch (fault) {
    case 'cut':
      h.cut('chaos');
      await h.sleep(my.chance(0.6) ? my.int(40) : partnerTimeoutMs + my.int(3 * partnerTimeoutMs));
      if (h.nodes.every((n) => n.alive)) h.heal();
      return;
    case 'drop':
      // The connection breaks and the dialer makes it again.
      h.drop('chaos drop');
      return;
    case 'kill':
      h.kill(name);
      return;
    case 'pause': {
      const ms = pauseMs();
      h.pause(name);
      await h.sleep(ms);
      h.resume(name);
      return;
    }
  }
}
