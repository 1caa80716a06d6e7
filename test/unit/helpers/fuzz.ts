// What every fuzz target's test checks, at a small count with a fixed seed:
// no crash, no hang, and still serving afterwards. `npm run fuzz` runs the
// same targets at a million inputs.

import { describe, expect, it } from 'vitest';
import { formatFinding, runTarget, type FuzzTarget } from '../../../src/testing/fuzz/runner.js';

const INPUTS = 3000;
const SEED = 20261204;

/** The test of one fuzz target, named after it. */
export function describeFuzzTarget(target: FuzzTarget): void {
  describe(`fuzz ${target.name}`, () => {
    it(`takes ${INPUTS} hostile inputs without a crash or hang and still serves`, async () => {
      const r = await runTarget(target, { inputs: INPUTS, seed: SEED });
      expect(r.findings.map(formatFinding).join('\n\n')).toBe('');
      expect(r.inputs).toBe(INPUTS);
      expect(r.crashes).toBe(0);
      expect(r.hangs).toBe(0);
      expect(r.stillServing).toBe(true);
    });
  });
}
