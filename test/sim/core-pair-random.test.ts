// Seeded random workloads on a simulated pair (test/sim/random-workload.ts).
// A failure names its seed and mode and the line that replays it:
//   SEED=<n> npx vitest run test/sim/core-pair-random.test.ts
// runs that one seed in every mode. PAGEPAIR_SIM_SEEDS raises the seed count
// for a longer hunt (PAGEPAIR_SIM_FIRST_SEED moves the window), and
// PAGEPAIR_SIM_TRACE=1 adds the last log records of both cores to a failure.

import { describe, it } from 'vitest';
import { replayLine, runSeed, type WorkloadOptions } from './random-workload.js';

const one = process.env.SEED === undefined ? null : Number(process.env.SEED);
const SEEDS = Number(process.env.PAGEPAIR_SIM_SEEDS ?? 300);
const FIRST = Number(process.env.PAGEPAIR_SIM_FIRST_SEED ?? 1);

interface Mode {
  name: string;
  opts: WorkloadOptions;
  /** Seeds of this mode per run, as a share of PAGEPAIR_SIM_SEEDS. */
  share: number;
}

const MODES: Mode[] = [
  { name: 'mirrored: reads see the last acknowledged write; both sides agree when quiet', opts: {}, share: 1 },
  { name: 'single controller (mirroring off)', opts: { single: true }, share: 0.25 },
  { name: 'chaos: cuts, drops, kills, pauses, crashes in store writes (fence action kills)', opts: { chaos: true, opsPerActor: 16 }, share: 1.5 },
  { name: 'chaos without a fence action: a paused controller must fence itself', opts: { chaos: true, fenceKills: false, opsPerActor: 16 }, share: 1 },
];

/** Seeds per it(), so each stays well inside the test timeout. */
const CHUNK = 50;

/** Runs the seeds, every one of them, and fails naming each seed that failed, the first one in full. */
async function runSeeds(seeds: number[], mode: Mode): Promise<void> {
  const failed: { seed: number; message: string }[] = [];
  for (const seed of seeds) {
    try {
      await runSeed(seed, mode.opts);
    } catch (err) {
      const text = err instanceof Error ? err.message : String(err);
      failed.push({ seed, message: text.includes('replay:') ? text : `${text} (seed ${seed}; replay: ${replayLine(seed)})` });
    }
  }
  if (failed.length === 0) return;
  const list = failed.map((f) => `  seed ${f.seed}: ${f.message.split('\n')[0]!.slice(0, 300)}`).join('\n');
  throw new Error(`${failed.length} of ${seeds.length} seeds failed (${mode.name}):\n${list}\n\nfirst failure in full:\n${failed[0]!.message}`);
}

describe('core pair: seeded random workloads', () => {
  for (const mode of MODES) {
    if (one !== null) {
      it(`seed ${one}, ${mode.name}`, () => runSeeds([one], mode), 120_000);
      continue;
    }
    const n = Math.ceil(SEEDS * mode.share);
    for (let from = FIRST; from < FIRST + n; from += CHUNK) {
      const to = Math.min(FIRST + n, from + CHUNK) - 1;
      const seeds = Array.from({ length: to - from + 1 }, (_, i) => from + i);
      it(`seeds ${from}..${to}, ${mode.name}`, () => runSeeds(seeds, mode), 120_000);
    }
  }
});
