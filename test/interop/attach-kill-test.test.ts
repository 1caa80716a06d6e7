// The fio kill test through `pagepair attach` (src/cli/attach-kill-test.ts),
// one cycle: fio writes crc32c-checked blocks through attach while A, then B,
// is SIGKILLed and restarted; fio must see no error and verify every block,
// and A's and B's copies must be the same. `pagepair attach-kill-test` runs
// the full 10 cycles (README).

import { describe, expect } from 'vitest';
import { formatAttachKillTest, runAttachKillTest } from '../../src/cli/attach-kill-test.js';
import { itWithTools } from '../tools.js';
import { useKillRunCleanup } from './kill-runs.js';

const signal = useKillRunCleanup();

describe('attach-kill-test: fio through attach while the controllers are killed', () => {
  itWithTools(['fio'], 'fio sees no error and verifies every block; the survivor answers attach after every kill', async () => {
    const lines: string[] = [];
    const r = await runAttachKillTest({ cycles: 1, sizeBytes: 96 * 1024 * 1024, rateIops: 4000, settleMs: 300, print: (l) => lines.push(l), signal });
    const why = `${lines.join('\n')}\n${formatAttachKillTest(r)}`;
    expect(r.problems, why).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.kills.map((k) => k.victim)).toEqual(['A', 'B']);
    expect(r.fio, why).toMatchObject({ error: 0, totalErrors: 0, writes: 24576, verified: 24576 });
    expect(r.copiesEqual).toBe(true);
    expect(r.attach.failedNoPath).toBe(0);
    // After every kill the survivor answered (stallMs is -1 where it did not within the tool's 30 s); how long the
    // stalls were is the tool's own check, a problem above where their median is 1 s or more.
    for (const k of r.kills) expect(k.stallMs, why).toBeGreaterThanOrEqual(0);
  }, 240_000);
});
