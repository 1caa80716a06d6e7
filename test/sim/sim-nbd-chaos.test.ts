// Seeded random NBD workloads on a simulated pair, with faults: the link is
// cut and dropped, controllers are killed and restarted and paused, while NBD
// clients on both controllers (and client-endpoint clients) write the same
// pages (test/sim/nbd-workload.ts). Once the pair has recovered and is quiet,
// both controllers' copies of every page must be equal and every cell's
// history linearizable, with the requests that got no answer as
// maybe-happened writes.
//
// A failure names its seed and the line that replays it:
//   SEED=<n> npx vitest run test/sim/sim-nbd-chaos.test.ts
// PAGEPAIR_NBD_SIM_SEEDS changes the seed count (PAGEPAIR_NBD_SIM_FIRST_SEED
// moves the window); PAGEPAIR_SIM_TRACE=1 adds the last log records of both
// cores to a failure.

import { describe, it } from 'vitest';
import { runNbdSeeds, seedChunks } from './nbd-seeds.js';

const FILE = 'test/sim/sim-nbd-chaos.test.ts';

describe('NBD on both controllers under cuts, drops, kills and pauses: equal copies, linearizable cells', () => {
  for (const { label, seeds } of seedChunks({ defaultSeeds: 250, firstSeed: 1 })) {
    it(`${label}, NBD writers on both controllers with faults`, () => runNbdSeeds(seeds, { chaos: true, opsPerActor: 16, replayFile: FILE }, 'chaos'), 120_000);
  }
});
