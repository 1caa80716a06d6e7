// The write hole, closed by the pair, on a parity2 pool: see kill-mid-stripe.ts.
// KILL_STRIPE_SEEDS (default 500) seeds from SEED (default 1).

import { describe, it } from 'vitest';
import { runKillMidStripeSeeds } from './kill-mid-stripe.js';

const SEEDS = Number(process.env.KILL_STRIPE_SEEDS ?? 500);
const FIRST_SEED = Number(process.env.SEED ?? 1);

describe('a controller killed in the middle of a row write (parity2)', () => {
  it(`${SEEDS} seeds: every step of the row, either controller; the repair leaves no row wrong and nothing acknowledged is lost`, async () => {
    await runKillMidStripeSeeds('parity2', FIRST_SEED, SEEDS);
  }, 1_800_000);
});
