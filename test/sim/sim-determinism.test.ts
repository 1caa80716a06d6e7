// A seed is the whole run: the same seed, run twice in one process, takes the
// same steps, logs the same records at the same virtual times, and ends with
// the same store bytes. Without this, SEED=<n> would not replay a failure.

import { describe, expect, it } from 'vitest';
import { lastHarness, runSeed, type WorkloadOptions } from './random-workload.js';
import { fingerprintRun, itReplaysEachSeed } from './workload-common.js';

async function fingerprint(seed: number, opts: WorkloadOptions): Promise<string> {
  const stats = await runSeed(seed, opts);
  return fingerprintRun(JSON.stringify(stats), lastHarness!);
}

describe('simulator: a seed replays exactly', () => {
  const modes: [string, WorkloadOptions][] = [
    ['mirrored', {}],
    ['chaos', { chaos: true, opsPerActor: 16 }],
    ['chaos without fence kills', { chaos: true, fenceKills: false, opsPerActor: 16 }],
  ];
  itReplaysEachSeed(modes, [2, 5, 8], fingerprint);

  it('different seeds make different runs', async () => {
    expect(await fingerprint(2, { chaos: true })).not.toBe(await fingerprint(3, { chaos: true }));
  });
});
