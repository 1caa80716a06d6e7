// Seeded random workloads on a simulated pair (test/sim/random-workload.ts).
// A failure names its seed; runSeed(seed, opts) replays it exactly.
// PAGEPAIR_SIM_SEEDS raises the seed count for a longer hunt.

import { describe, it } from 'vitest';
import { runSeed } from '../sim/random-workload.js';

const SEEDS = Number(process.env.PAGEPAIR_SIM_SEEDS ?? 200);

describe('core pair: seeded random workloads', () => {
  it(`${SEEDS} seeds: reads see the last acknowledged write; both sides agree when quiet`, async () => {
    for (let seed = 1; seed <= SEEDS; seed++) await runSeed(seed);
  });

  it(`${Math.ceil(SEEDS / 4)} seeds on a single controller (mirroring off)`, async () => {
    for (let seed = 1; seed <= Math.ceil(SEEDS / 4); seed++) await runSeed(seed, { single: true });
  });

  it(`${Math.ceil(SEEDS / 2)} seeds with link cuts and controller restarts`, async () => {
    for (let seed = 1; seed <= Math.ceil(SEEDS / 2); seed++) await runSeed(seed, { chaos: true, opsPerActor: 16 });
  });
});
