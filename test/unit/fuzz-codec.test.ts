// The codec fuzz target (src/testing/fuzz/target-codec.ts) at a small count with a
// fixed seed: no crash, no hang, and still serving afterwards. `npm run fuzz`
// runs it at a million inputs.

import { describe, expect, it } from 'vitest';
import { formatFinding, runTarget } from '../../src/testing/fuzz/runner.js';
import { codecTarget } from '../../src/testing/fuzz/target-codec.js';

describe('fuzz codec', () => {
  it('takes 3000 hostile inputs without a crash or hang and still serves', async () => {
    const r = await runTarget(codecTarget, { inputs: 3000, seed: 20261204 });
    expect(r.findings.map(formatFinding).join('\n\n')).toBe('');
    expect(r.inputs).toBe(3000);
    expect(r.crashes).toBe(0);
    expect(r.hangs).toBe(0);
    expect(r.stillServing).toBe(true);
  });
});
