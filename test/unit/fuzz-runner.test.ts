// The fuzz runner itself: a target that breaks on some inputs is reported
// (crash, hang, escaped rejection, logged error) with a replayable finding,
// the same seed gives the same inputs, and the real socket passes run.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { E2E_TARGETS } from '../../src/testing/fuzz/e2e.js';
import { chunksOf, deliveriesOf, formatFinding, formatTable, messagesOf, runTarget } from '../../src/testing/fuzz/runner.js';
import type { FuzzCase, FuzzTarget } from '../../src/testing/fuzz/runner.js';

const bytesCases: fc.Arbitrary<FuzzCase> = fc.uint8Array({ minLength: 1, maxLength: 8 }).map((a) => ({ bytes: Buffer.from(a), boundaries: [], label: 'bytes' }));

function brokenTarget(run: (c: FuzzCase) => void | Promise<void>, errors: string[] = []): FuzzTarget {
  return {
    name: 'broken',
    description: 'fails on purpose',
    setup: async () => ({ cases: bytesCases, run, stillServes: async () => true, errorsLogged: () => errors, close: async () => undefined }),
  };
}

describe('fuzz runner', () => {
  it('splits a short input at every offset and a long one at a few', () => {
    const short: FuzzCase = { bytes: Buffer.alloc(5), boundaries: [], label: '' };
    expect(deliveriesOf(short, 1, 48, 6)).toEqual([[], [1], [2], [3], [4]]);
    const long: FuzzCase = { bytes: Buffer.alloc(100), boundaries: [], label: '' };
    expect(deliveriesOf(long, 1, 48, 6)).toHaveLength(8);
    expect(deliveriesOf(long, 1, 48, 6)).toEqual(deliveriesOf(long, 1, 48, 6));
    expect(chunksOf(Buffer.from('abcdef'), [2, 4]).map(String)).toEqual(['ab', 'cd', 'ef']);
    expect(messagesOf({ bytes: Buffer.from('abcdef'), boundaries: [3], label: '' }, [1]).map(String)).toEqual(['a', 'bc', 'def']);
  });

  it('reports a crash with its seed, place and bytes', async () => {
    const r = await runTarget(brokenTarget((c) => { if (c.bytes[0]! > 250) throw new TypeError('boom'); }), { inputs: 2000, seed: 5 });
    expect(r.crashes).toBeGreaterThan(0);
    const f = r.findings[0]!;
    expect(formatFinding(f)).toContain('--seed 5 --replay');
    expect(f.hex.slice(0, 2)).toMatch(/^f[b-f]$/);
    // Replaying that case alone finds it again.
    const again = await runTarget(brokenTarget((c) => { if (c.bytes[0]! > 250) throw new TypeError('boom'); }), { inputs: Number.MAX_SAFE_INTEGER, seed: 5, only: { batch: f.batch, index: f.index } });
    expect(again.crashes).toBeGreaterThan(0);
    expect(again.cases).toBe(1);
  });

  it('counts an input that does not finish as a hang', async () => {
    const r = await runTarget(brokenTarget((c) => (c.bytes[0] === 7 ? new Promise<void>(() => undefined) : undefined)), { inputs: 1000, seed: 3, inputTimeoutMs: 50 });
    expect(r.hangs).toBeGreaterThan(0);
  });

  it('counts a rejection that escapes, and an error a handler logged, as crashes', async () => {
    const escaped = await runTarget(brokenTarget((c) => { if (c.bytes[0] === 9) void Promise.reject(new Error('nobody awaits me')); return new Promise((resolve) => setImmediate(resolve)); }), { inputs: 1500, seed: 4 });
    expect(escaped.crashes).toBeGreaterThan(0);
    expect(escaped.findings[0]!.message).toContain('escaped');
    const errors: string[] = [];
    const logged = await runTarget(brokenTarget((c) => { if (c.bytes[0] === 9) errors.push('handler threw'); }, errors), { inputs: 1500, seed: 4 });
    expect(logged.crashes).toBeGreaterThan(0);
    expect(formatTable([logged])).toContain('broken');
  });

  it('runs each socket target over real sockets', async () => {
    for (const target of Object.values(E2E_TARGETS)) {
      const r = await runTarget(target, { inputs: 60, seed: 11, inputTimeoutMs: 5000 });
      expect(r.findings.map(formatFinding).join('\n\n'), target.name).toBe('');
      expect(r.stillServing, target.name).toBe(true);
    }
  }, 60_000);
});
