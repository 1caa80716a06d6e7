// Seeded random NBD workloads on a simulated pair (test/sim/nbd-workload.ts):
// the NBD volume layer on both controllers, clients on both writing the same
// pages at once (partial pages, several pages, write-zeroes, trim, flush,
// FUA), no faults. After every seed both controllers' copies of every page
// must be equal and every cell's history linearizable.
//
// A failure names its seed and the line that replays it:
//   SEED=<n> npx vitest run test/sim/sim-nbd-random.test.ts
// PAGEPAIR_NBD_SIM_SEEDS changes the seed count (PAGEPAIR_NBD_SIM_FIRST_SEED
// moves the window); PAGEPAIR_SIM_TRACE=1 adds the last log records of both
// cores to a failure.

import { describe, it } from 'vitest';
import { runNbdSeeds, seedChunks } from './nbd-seeds.js';

const FILE = 'test/sim/sim-nbd-random.test.ts';

describe('NBD on both controllers, no faults: equal copies, linearizable cells', () => {
  for (const { label, seeds } of seedChunks({ defaultSeeds: 1000, firstSeed: 1 })) {
    it(`${label}, concurrent NBD writers on both controllers`, () => runNbdSeeds(seeds, { replayFile: FILE }, 'no faults'), 120_000);
  }
});
