// The generator's recorded history: chunks as registers, ops over several
// chunks cut into one history op each, failures recorded as the checker must
// see them, reads of the caller's own checked byte for byte; and the
// completion log the kill test measures stalls with.

import { describe, expect, it } from 'vitest';
import { checkHistory } from '../../src/checker/linearizability.js';
import { PagepairError } from '../../src/protocol/errors.js';
import { PatternMaker } from '../../src/workload/pattern.js';
import { Recording, outcomeOf, summarizeCheck } from '../../src/workload/recording.js';
import { TimeLog } from '../../src/workload/time-log.js';

const CHUNK = 4096;
const TAG = 0x5eed;

/** A recording over chunks 10..17, on a clock that moves 1 ms per reading. */
function recording(): { rec: Recording; maker: PatternMaker } {
  let t = 0;
  const rec = new Recording({ seed: 7 }, () => ++t);
  const maker = new PatternMaker(TAG, CHUNK);
  rec.attach({
    chunkBytes: CHUNK,
    firstChunk: 10,
    chunks: 8,
    locate: (chunk) => ({ guid: 'g', offset: (chunk - 10) * CHUNK, allocation: 'wl' }),
    check: (data, at, chunk) => maker.check(data, at, chunk),
  });
  return { rec, maker };
}

function chunkData(maker: PatternMaker, chunk: number, writeNo: number): Buffer {
  const b = Buffer.alloc(CHUNK);
  maker.fill(b, 0, CHUNK, chunk, writeNo);
  return b;
}

describe('a recorded history', () => {
  it('an operation over several chunks is one history op per chunk, each on a process of its own', () => {
    const { rec } = recording();
    const lane = rec.newProcesses(2);
    expect(rec.newProcesses(1)).toBe(lane + 2);
    const w = rec.invoke(lane, 'write', 10, 2, 5);
    rec.writeAcked(w, 10);
    const r = rec.invoke(lane, 'read', 10, 2);
    rec.readAnswered(r, [5, -1]);
    const ops = rec.ops();
    expect(ops.map((o) => [o.process, o.kind, o.key, o.value, o.outcome])).toEqual([
      [lane, 'write', '10', 5, 'ok'],
      [lane + 1, 'write', '11', 5, 'ok'],
      [lane, 'read', '10', 5, 'ok'],
      // Bytes that named no write: left out of the history (counted as a verification error by the engine).
      [lane + 1, 'read', '11', 0, 'fail'],
    ]);
    expect(rec.chunksWrittenSince(0)).toEqual([10, 11]);
    expect(rec.chunksWrittenSince(1_000)).toEqual([]);
    expect(checkHistory(ops).verdict).toBe('linearizable');
  });

  it('a failure without an answer may still have happened; a typed refusal did not answer either way', () => {
    expect(outcomeOf(new PagepairError('TIMEOUT', 'x'))).toBe('unknown');
    expect(outcomeOf(new PagepairError('FENCED', 'x'))).toBe('unknown');
    expect(outcomeOf(new PagepairError('OUT_OF_RANGE', 'x'))).toBe('fail');
    expect(outcomeOf(new Error('socket gone'))).toBe('unknown');
    const { rec } = recording();
    const ids = rec.invoke(rec.newProcesses(1), 'write', 12, 1, 9);
    rec.opFailed(ids, 'write', new PagepairError('TIMEOUT', 'no answer'));
    expect(rec.writesMaybe).toBe(1);
    expect(rec.ops()[0]).toMatchObject({ outcome: 'unknown', endMs: null });
  });

  it('catches a read older than the newest acknowledged write (the checker must be able to fail)', () => {
    const { rec } = recording();
    const p = rec.newProcesses(1);
    for (const writeNo of [5, 6]) rec.writeAcked(rec.invoke(p, 'write', 13, 1, writeNo), 13);
    // Write 6 was acknowledged, then a read saw 5, then one saw 6 again.
    rec.readAnswered(rec.invoke(p, 'read', 13, 1), [5]);
    rec.readAnswered(rec.invoke(p, 'read', 13, 1), [6]);
    const summary = summarizeCheck(checkHistory(rec.ops()), '/tmp/h.jsonl');
    expect(summary.verdict).toBe('violations');
    expect(summary.byKind['stale-read']).toBe(1);
    expect(summary.violations[0]).toMatch(/^stale-read on chunk 13: /);
    expect(summary.historyPath).toBe('/tmp/h.jsonl');
  });

  it("reads of the caller's own: recorded with the write their bytes name, corrupt or refused ones left out", async () => {
    const { rec, maker } = recording();
    const asked: [string, number, number][] = [];
    const answer = (data: Buffer) => async (guid: string, offset: number, length: number): Promise<Buffer> => {
      asked.push([guid, offset, length]);
      return data;
    };
    expect(await rec.probeRead(12, answer(chunkData(maker, 12, 4)), 'paused A')).toBe(4);
    expect(asked).toEqual([['g', 2 * CHUNK, CHUNK]]);
    expect(await rec.probeRead(12, answer(Buffer.alloc(CHUNK)), 'paused A')).toBe(0);
    // Chunk 13's data read back at chunk 12's place.
    expect(await rec.probeRead(12, answer(chunkData(maker, 13, 4)), 'paused A')).toBeNull();
    expect(
      await rec.probeRead(12, () => Promise.reject(new PagepairError('FENCED', 'not serving')), 'paused A'),
    ).toBeNull();
    expect(rec.probes).toMatchObject({ reads: 4, answered: 3, verifyErrors: 1 });
    expect(rec.probes.verifyFailures[0]).toMatch(/^probe read of wl offset 8192 via paused A: holds chunk 13's data/);
    expect(rec.ops().map((o) => [o.value, o.outcome])).toEqual([
      [4, 'ok'],
      [0, 'ok'],
      [0, 'fail'],
      [0, 'unknown'],
    ]);
  });
});

describe('TimeLog', () => {
  const log = new TimeLog();
  for (const t of [10, 20, 30, 500, 510, 900]) log.push(t);

  it('counts the entries in a window', () => {
    expect(log.countBetween(0, 1000)).toBe(6);
    expect(log.countBetween(20, 500)).toBe(2); // (20, 500]
    expect(log.countBetween(901, 2000)).toBe(0);
  });

  it('measures the longest gap from the last entry before the window to its end', () => {
    // From 30 (before the window) to 500.
    expect(log.longestGap(100, 600)).toBe(470);
    // The tail counts: nothing after 900 until the window ends at 2000.
    expect(log.longestGap(100, 2000)).toBe(1100);
    // A window with no entry before it starts counting at its own start.
    expect(new TimeLog().longestGap(5, 25)).toBe(20);
  });

  it('grows past its first buffer', () => {
    const big = new TimeLog();
    for (let i = 0; i < 40_000; i++) big.push(i);
    expect(big.length).toBe(40_000);
    expect(big.countBetween(-1, 39_999)).toBe(40_000);
    expect(big.longestGap(0, 39_999)).toBe(1);
  });
});
