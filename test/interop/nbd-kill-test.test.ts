// The real-client kill test: fio's nbd engine writes crc32c-checked blocks
// through one controller, the controller is SIGKILLed mid-run, and every
// write fio saw completed is read back and checked through the survivor,
// killing A and then B. A control verify against a zeroed volume must fail
// on every block, so a survivor that lost writes would fail this test.

import { describe, expect } from 'vitest';
import { itWithTools } from '../tools.js';
import { runNbdKillTest, type NbdKillTestResult } from '../../src/cli/nbd-kill-test.js';
import { liveFioCount } from '../../src/runtime/fio.js';
import { useKillRunCleanup } from './kill-runs.js';

const signal = useKillRunCleanup();
const lines: string[] = [];

describe('nbd-kill-test: fio through a controller that is SIGKILLed', () => {
  itWithTools(['fio'], 'verifies every completed write through the survivor, killing A and then B', async () => {
    let r: NbdKillTestResult;
    try {
      r = await runNbdKillTest({ victims: ['A', 'B'], sizeBytes: 64 * 1024 * 1024, iodepth: 32, seed: 7, print: (l) => lines.push(l), signal });
    } finally {
      expect(liveFioCount()).toBe(0);
    }
    const why = `${lines.join('\n')}\nproblems: ${r.problems.join('\n')}`;
    expect(r.problems, why).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.dir).toBeNull();
    expect(r.cycles.map((c) => [c.victim, c.survivor])).toEqual([
      ['A', 'B'],
      ['B', 'A'],
    ]);
    for (const c of r.cycles) {
      // Killed mid-run: fio had completed some writes, not all, and saw its server go.
      expect(c.writesCompleted, why).toBeGreaterThan(1000);
      expect(c.writesCompleted, why).toBeLessThan(c.blocks);
      expect(c.writeError, why).not.toBe(0);
      expect(c.state, why).not.toBeNull();
      expect(c.state!.writesIssued).toBeGreaterThanOrEqual(c.writesCompleted);
      expect(c.state!.writesIssued - c.writesCompleted).toBeLessThanOrEqual(32);
      // Every completed write read back through the survivor, none wrong.
      expect(c.verified, why).toBeGreaterThanOrEqual(c.writesCompleted - 32);
      expect(c.verified, why).toBeLessThanOrEqual(c.state!.writesIssued);
      expect(c.verifyFailures, why).toBe(0);
      // The same verify on a zeroed volume fails on every block.
      expect(c.control, why).not.toBeNull();
      expect(c.control!.verified).toBe(c.verified);
      expect(c.control!.failures).toBe(c.control!.verified);
      // The survivor took over: the run waits for its role "alone" (or fails) before the verify.
      expect(c.survivorEpoch).toBeGreaterThan(1);
    }
  }, 90_000);
});
