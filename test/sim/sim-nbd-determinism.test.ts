// An NBD seed is the whole run too: the same seed, run twice in one process,
// takes the same steps, logs the same records at the same virtual times, and
// ends with the same store bytes, passing or failing. Without this,
// SEED=<n> would not replay an NBD failure.

import { describe, expect, it } from 'vitest';
import { lastNbdHarness, runNbdSeed, type NbdWorkloadOptions } from './nbd-workload.js';
import { fingerprintRun, itReplaysEachSeed } from './workload-common.js';

async function fingerprint(seed: number, opts: NbdWorkloadOptions): Promise<string> {
  // A failing seed must replay its failure as exactly as a passing one its pass.
  const outcome = await runNbdSeed(seed, opts).then(
    (stats) => JSON.stringify(stats),
    (err: unknown) => `failed: ${err instanceof Error ? err.message : String(err)}`,
  );
  return fingerprintRun(outcome, lastNbdHarness!);
}

describe('NBD simulator: a seed replays exactly', () => {
  const modes: [string, NbdWorkloadOptions][] = [
    ['no faults', {}],
    ['chaos', { chaos: true, opsPerActor: 16 }],
  ];
  itReplaysEachSeed(modes, [2, 9], fingerprint);

  it('different seeds make different runs', async () => {
    expect(await fingerprint(2, {})).not.toBe(await fingerprint(3, {}));
  });
});
