// Running many seeds of the NBD workload in one test, and cutting a seed
// range into tests: the shared part of the NBD sim test files.

import { nbdReplayLine, runNbdSeed, type NbdWorkloadOptions } from './nbd-workload.js';

/** Seeds per it(), so each stays well inside the test timeout. */
const CHUNK = 100;

/**
 * The seeds to run: SEED=<n> alone replays one; else PAGEPAIR_NBD_SIM_SEEDS
 * seeds (default `defaultSeeds`) from PAGEPAIR_NBD_SIM_FIRST_SEED (default
 * `firstSeed`), in chunks.
 */
export function seedChunks(opts: { defaultSeeds: number; firstSeed: number }): { label: string; seeds: number[] }[] {
  if (process.env.SEED !== undefined) {
    const one = Number(process.env.SEED);
    return [{ label: `seed ${one}`, seeds: [one] }];
  }
  const n = Number(process.env.PAGEPAIR_NBD_SIM_SEEDS ?? opts.defaultSeeds);
  const first = Number(process.env.PAGEPAIR_NBD_SIM_FIRST_SEED ?? opts.firstSeed);
  const chunks: { label: string; seeds: number[] }[] = [];
  for (let from = first; from < first + n; from += CHUNK) {
    const to = Math.min(first + n, from + CHUNK) - 1;
    chunks.push({ label: `seeds ${from}..${to}`, seeds: Array.from({ length: to - from + 1 }, (_, i) => from + i) });
  }
  return chunks;
}

/** Runs every seed, and fails naming each seed that failed, the first one in full. */
export async function runNbdSeeds(seeds: number[], opts: NbdWorkloadOptions, mode: string): Promise<void> {
  const failed: { seed: number; message: string }[] = [];
  for (const seed of seeds) {
    try {
      await runNbdSeed(seed, opts);
    } catch (err) {
      const text = err instanceof Error ? err.message : String(err);
      failed.push({ seed, message: text.includes('replay:') ? text : `${text} (seed ${seed}; replay: ${nbdReplayLine(seed, opts.replayFile)})` });
    }
  }
  if (failed.length === 0) return;
  const list = failed.map((f) => `  seed ${f.seed}: ${f.message.split('\n')[0]!.slice(0, 300)}`).join('\n');
  throw new Error(`${failed.length} of ${seeds.length} seeds failed (${mode}):\n${list}\n\nfirst failure in full:\n${failed[0]!.message}`);
}
