// What the client workload (random-workload.ts) and the NBD workload
// (nbd-workload.ts) share: how an answer is named, which answers a client
// retries, and how a seed draws the pair's timing. The draws keep their
// order, so every seed runs as it did.

import { createHash } from 'node:crypto';
import { expect, it } from 'vitest';
import { isPagepairError } from '../../src/protocol/errors.js';
import type { Harness, NodeName, SimOptions } from './harness.js';
import { ConnectionLost } from './nbd-endpoint.js';
import type { Prng } from './prng.js';

/** Answers after which the same request may succeed on the other controller or a moment later (as PairClient). */
export const RETRYABLE = new Set(['NOT_ACTIVE', 'FENCED', 'NOT_MIRRORED', 'PARTNER_LOST', 'SHUTTING_DOWN', 'TIMEOUT', 'BUSY', 'STALE_EPOCH', 'CONNECTION_LOST']);

/** The error code of an answer; CONNECTION_LOST for a lost connection, "untyped: …" for anything else. */
export function codeOf(err: unknown): string {
  if (err instanceof ConnectionLost) return 'CONNECTION_LOST';
  if (isPagepairError(err)) return err.code;
  const text = String(err);
  return /connection to [AB] (lost|is closed)/.test(text) ? 'CONNECTION_LOST' : `untyped: ${text}`;
}

/** The heartbeat and the partner timeout of a seed: one of two pairs. */
export function drawTiming(rng: Prng): { heartbeatIntervalMs: number; partnerTimeoutMs: number } {
  return rng.pick([
    { heartbeatIntervalMs: 100, partnerTimeoutMs: 600 },
    { heartbeatIntervalMs: 50, partnerTimeoutMs: 300 },
  ]);
}

/** The delays, the destager and the cache of a seed's pair, and which controller is preferred, drawn in that order. */
export function drawPairOptions(
  rng: Prng,
  o: { frameDelayMaxMs: number; dirtyAgesMs: readonly number[]; cachePages: readonly number[]; pageBytes: number },
): Required<Pick<SimOptions, 'frameDelayMaxMs' | 'storeDelayMaxMs' | 'clientDelayMaxMs' | 'dirtyAgeMaxMs' | 'destageConcurrency' | 'cacheBytesMax'>> & { preferred: NodeName } {
  return {
    frameDelayMaxMs: rng.int(o.frameDelayMaxMs),
    storeDelayMaxMs: rng.int(5),
    clientDelayMaxMs: rng.int(3),
    dirtyAgeMaxMs: rng.pick(o.dirtyAgesMs),
    destageConcurrency: rng.pick([1, 4, 8]),
    cacheBytesMax: rng.pick(o.cachePages) * o.pageBytes,
    preferred: rng.pick(['A', 'B'] as const),
  };
}

/** The last log records of both cores, for a failure's message, where PAGEPAIR_SIM_TRACE is set (PAGEPAIR_SIM_TRACE_LINES of them, 150 unless told); else how to get them. */
export function traceOf(h: Harness): string {
  return process.env.PAGEPAIR_SIM_TRACE
    ? `\n${h.logs
        .slice(-Number(process.env.PAGEPAIR_SIM_TRACE_LINES ?? 150))
        .map((l) => `${l.atMs} ${l.node}${l.incarnation} ${l.level} ${l.msg} ${JSON.stringify(l.obj)}`)
        .join('\n')}`
    : '\n(PAGEPAIR_SIM_TRACE=1 prints the last log records)';
}

/** A digest of a run: `outcome` (its result as text), then what `h` did: its steps, its virtual time, every log record and the store's bytes. */
export function fingerprintRun(outcome: string, h: Harness): string {
  const hash = createHash('sha256');
  hash.update(outcome);
  hash.update(`${h.sched.steps} ${h.nowMs}`);
  for (const l of h.logs) hash.update(`${l.atMs} ${l.node}${l.incarnation} ${l.level} ${l.msg} ${JSON.stringify(l.obj)}\n`);
  hash.update(h.device.snapshot());
  return hash.digest('hex');
}

/** For each mode, a test that runs each of `seeds` twice and finds both runs' fingerprints the same. */
export function itReplaysEachSeed<O>(modes: readonly [string, O][], seeds: readonly number[], fingerprint: (seed: number, opts: O) => Promise<string>): void {
  for (const [name, opts] of modes) {
    it(`${name}: two runs of one seed are identical`, async () => {
      for (const seed of seeds) {
        const first = await fingerprint(seed, opts);
        const second = await fingerprint(seed, opts);
        expect(second, `seed ${seed}`).toBe(first);
      }
    });
  }
}

/** A line in the harness's log, among the cores' records: "sim: <msg>", as `name` at the virtual time now. */
export function simNote(h: Harness, name: NodeName, msg: string): void {
  h.logs.push({ node: name, incarnation: h.node(name).incarnation, atMs: h.nowMs, level: 'info', msg: `sim: ${msg}`, obj: {} });
}

/**
 * The chaos actor's rounds while `running()`: a pause of 10 ms plus up to
 * `gapMaxMs`, then a fault of `faults` on A or B (drawn by `my`, in that
 * order), noted in the log, and `inject` to make it happen and recover.
 */
export async function chaosRounds<F extends string>(h: Harness, my: Prng, faults: readonly F[], gapMaxMs: number, running: () => boolean, inject: (fault: F, name: NodeName) => Promise<void>): Promise<void> {
  while (running()) {
    await h.sleep(10 + my.int(gapMaxMs));
    if (!running()) break;
    const fault = my.pick(faults);
    const name: NodeName = my.chance(0.5) ? 'A' : 'B';
    simNote(h, name, `chaos: ${fault} of ${name}`);
    await inject(fault, name);
  }
}
