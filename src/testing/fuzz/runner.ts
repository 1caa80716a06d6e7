// Runs one fuzz target: fast-check generates cases in seeded batches, each
// case is delivered whole and split (at every offset for short inputs, at
// random offsets for long ones), and every delivery is one input judged by
// the target's oracle. Process-level escapes are watched by the project's
// EscapeGuard; an input that does not finish within its bound is a hang.
// At the end the target must still serve a well-formed request.

import fc from 'fast-check';
import pino from 'pino';
import { EscapeGuard } from '../../runtime/escape-guard.js';

/** One generated input: bytes and where its frames (messages) start and end. */
export interface FuzzCase {
  bytes: Buffer;
  /**
   * Message boundaries for message-framed targets (WebSocket): the offsets
   * where one message ends and the next begins, the end excluded.
   */
  boundaries: number[];
  /** What made it, for the failure report. */
  label: string;
  /** What the target needs besides the bytes (expected messages, which server, ...). */
  meta?: unknown;
}

/** A case of whole messages one after another: their bytes, and where each ends. */
export function caseOfMessages(messages: readonly Buffer[], label: string, meta: unknown): FuzzCase {
  const boundaries: number[] = [];
  let at = 0;
  for (const m of messages.slice(0, -1)) boundaries.push((at += m.length));
  return { bytes: Buffer.concat(messages), boundaries, label, meta };
}

/** Offsets where the byte stream is cut into chunks (or, for messages, where a message is cut in two). */
export type Splits = readonly number[];

export class OracleFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OracleFailure';
  }
}

export interface TargetInstance {
  readonly cases: fc.Arbitrary<FuzzCase>;
  /** Delivers one input and judges it: throws OracleFailure (or anything) when the oracle fails. */
  run(c: FuzzCase, splits: Splits): void | Promise<void>;
  /** A well-formed request served correctly after all the input. */
  stillServes(): Promise<boolean>;
  /** Errors the target's handlers logged since setup: each is a finding. */
  errorsLogged(): readonly string[];
  close(): Promise<void>;
}

export interface FuzzTarget {
  readonly name: string;
  readonly description: string;
  setup(): Promise<TargetInstance>;
}

export interface Finding {
  kind: 'crash' | 'hang';
  target: string;
  seed: number;
  batch: number;
  index: number;
  splits: Splits;
  label: string;
  hex: string;
  message: string;
}

export interface TargetResult {
  target: string;
  inputs: number;
  cases: number;
  crashes: number;
  hangs: number;
  stillServing: boolean;
  seconds: number;
  findings: Finding[];
}

export interface RunOptions {
  inputs: number;
  seed: number;
  /** Longest one input may take (ms). */
  inputTimeoutMs?: number;
  /** Cases generated per fast-check sample. */
  batchSize?: number;
  /** Inputs at or under this length are split at every offset. */
  splitAllMax?: number;
  /** Random splits of a longer input. */
  randomSplits?: number;
  /** Findings kept in full (all are counted). */
  findingsKept?: number;
  onProgress?(done: number, total: number, seconds: number): void;
  /** Only this case (batch, index), for replaying a finding. */
  only?: { batch: number; index: number };
  /** Where the run is, for a watchdog in another thread (see watchdog.ts). */
  where?: Where;
}

/**
 * The case being run, in memory another thread can read while this one is
 * stuck in a loop that never yields: the watchdog's only view of a hang
 * that no timer in this thread can see.
 */
export class Where {
  static readonly HEX_BYTES_MAX = 4096;
  /** [inputs done, batch, index, case bytes length]. */
  readonly counters: Int32Array;
  readonly bytes: Uint8Array;

  constructor(readonly shared = new SharedArrayBuffer(16 + Where.HEX_BYTES_MAX)) {
    this.counters = new Int32Array(shared, 0, 4);
    this.bytes = new Uint8Array(shared, 16, Where.HEX_BYTES_MAX);
  }

  enterCase(batch: number, index: number, bytes: Uint8Array): void {
    const n = Math.min(bytes.length, Where.HEX_BYTES_MAX);
    this.bytes.set(bytes.subarray(0, n));
    Atomics.store(this.counters, 1, batch);
    Atomics.store(this.counters, 2, index);
    Atomics.store(this.counters, 3, n);
  }

  input(done: number): void {
    Atomics.store(this.counters, 0, done);
  }

  get inputs(): number {
    return Atomics.load(this.counters, 0);
  }

  get batch(): number {
    return Atomics.load(this.counters, 1);
  }

  get index(): number {
    return Atomics.load(this.counters, 2);
  }

  get hex(): string {
    return Buffer.from(this.bytes.subarray(0, Atomics.load(this.counters, 3))).toString('hex');
  }
}

const BATCH_DEFAULT = 500;
const SPLIT_ALL_MAX_DEFAULT = 48;
const RANDOM_SPLITS_DEFAULT = 6;
const INPUT_TIMEOUT_MS_DEFAULT = 2000;
const HEX_SHOWN_MAX = 4096;

/** The seed of one batch: every batch reproducible from the run's seed alone. */
export function batchSeed(seed: number, batch: number): number {
  return (Math.imul(seed ^ 0x5bd1e995, 0x9e3779b1) + Math.imul(batch + 1, 0x85ebca6b)) | 0;
}

/** A small deterministic generator for split offsets (xorshift32). */
function splitRng(seed: number): () => number {
  let s = seed | 0 || 0x1234567;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s >>> 0;
  };
}

/** Whole, then each split of the case: single cuts, and for long inputs a few multi-cut chunkings. */
export function deliveriesOf(c: FuzzCase, seed: number, splitAllMax: number, randomSplits: number): Splits[] {
  const n = c.bytes.length;
  const out: Splits[] = [[]];
  if (n <= 1) return out;
  if (n <= splitAllMax) {
    for (let k = 1; k < n; k++) out.push([k]);
    return out;
  }
  const next = splitRng(seed);
  for (let i = 0; i < randomSplits; i++) out.push([1 + (next() % (n - 1))]);
  // Every byte alone once in a while (the byte-by-byte reader), else a few cuts.
  const cuts = new Set<number>();
  for (let i = 0; i < 4; i++) cuts.add(1 + (next() % (n - 1)));
  out.push([...cuts].sort((a, b) => a - b));
  return out;
}

/** Cuts bytes at the offsets. */
export function chunksOf(bytes: Buffer, splits: Splits): Buffer[] {
  if (splits.length === 0) return [bytes];
  const out: Buffer[] = [];
  let at = 0;
  for (const s of splits) {
    if (s <= at || s >= bytes.length) continue;
    out.push(bytes.subarray(at, s));
    at = s;
  }
  out.push(bytes.subarray(at));
  return out;
}

/**
 * The ws messages of a case: its frames as they are, each split also cutting
 * the message it falls in (a split on a boundary changes nothing).
 */
export function messagesOf(c: FuzzCase, splits: Splits): Buffer[] {
  const cuts = [...new Set([...c.boundaries, ...splits])].sort((a, b) => a - b);
  return chunksOf(c.bytes, cuts);
}

class HangError extends Error {}

function withTimeout(p: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<void>((_, reject) => {
    timer = setTimeout(() => reject(new HangError(`input not finished within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

export async function runTarget(target: FuzzTarget, opts: RunOptions): Promise<TargetResult> {
  const started = performance.now();
  const guard = new EscapeGuard({ log: pino({ level: 'silent' }), onUncaughtException: () => undefined }).install();
  const inst = await target.setup();
  const batchSize = opts.batchSize ?? BATCH_DEFAULT;
  const splitAllMax = opts.splitAllMax ?? SPLIT_ALL_MAX_DEFAULT;
  const randomSplits = opts.randomSplits ?? RANDOM_SPLITS_DEFAULT;
  const timeoutMs = opts.inputTimeoutMs ?? INPUT_TIMEOUT_MS_DEFAULT;
  const kept = opts.findingsKept ?? 5;
  const result: TargetResult = {
    target: target.name,
    inputs: 0,
    cases: 0,
    crashes: 0,
    hangs: 0,
    stillServing: false,
    seconds: 0,
    findings: [],
  };
  let errorsSeen = 0;
  let escapesSeen = 0;
  let lastProgress = started;

  const note = (kind: Finding['kind'], batch: number, index: number, c: FuzzCase, splits: Splits, message: string): void => {
    if (kind === 'crash') result.crashes++;
    else result.hangs++;
    if (result.findings.length >= kept) return;
    result.findings.push({
      kind,
      target: target.name,
      seed: opts.seed,
      batch,
      index,
      splits,
      label: c.label,
      hex: c.bytes.subarray(0, HEX_SHOWN_MAX).toString('hex') + (c.bytes.length > HEX_SHOWN_MAX ? '...' : ''),
      message,
    });
  };

  try {
    for (let batch = 0; result.inputs < opts.inputs; batch++) {
      if (opts.only !== undefined && batch !== opts.only.batch) {
        if (batch > opts.only.batch) break;
        continue;
      }
      const cases = fc.sample(inst.cases, { seed: batchSeed(opts.seed, batch), numRuns: batchSize });
      for (let index = 0; index < cases.length && result.inputs < opts.inputs; index++) {
        if (opts.only !== undefined && index !== opts.only.index) continue;
        const c = cases[index]!;
        result.cases++;
        opts.where?.enterCase(batch, index, c.bytes);
        for (const splits of deliveriesOf(c, batchSeed(opts.seed, batch) ^ index, splitAllMax, randomSplits)) {
          if (result.inputs >= opts.inputs && opts.only === undefined) break;
          result.inputs++;
          opts.where?.input(result.inputs);
          try {
            const r = inst.run(c, splits);
            if (r !== undefined) await withTimeout(r, timeoutMs);
          } catch (err) {
            const hang = err instanceof HangError;
            note(hang ? 'hang' : 'crash', batch, index, c, splits, err instanceof Error ? err.message : String(err));
          }
          const errors = inst.errorsLogged();
          if (errors.length > errorsSeen) {
            note('crash', batch, index, c, splits, `handler logged an error: ${errors[errorsSeen]!.slice(0, 400)}`);
            errorsSeen = errors.length;
          }
          if (guard.count > escapesSeen) {
            note('crash', batch, index, c, splits, `escaped to the process: ${guard.last?.event} ${guard.last?.message}`);
            escapesSeen = guard.count;
          }
        }
        // Sync targets leave timers and immediates (close grace, uncork) behind: let them run.
        if ((result.cases & 63) === 0) await new Promise((resolve) => setImmediate(resolve));
        const now = performance.now();
        if (opts.onProgress !== undefined && now - lastProgress > 10_000) {
          lastProgress = now;
          opts.onProgress(result.inputs, opts.inputs, (now - started) / 1000);
        }
      }
    }
    // Late escapes (a rejection nobody awaited) surface after a turn or two.
    await new Promise((resolve) => setTimeout(resolve, 20));
    if (guard.count > escapesSeen) {
      result.crashes += guard.count - escapesSeen;
      result.findings.push({
        kind: 'crash', target: target.name, seed: opts.seed, batch: -1, index: -1, splits: [], label: 'late escape',
        hex: '', message: `escaped to the process after the inputs: ${guard.last?.event} ${guard.last?.message}`,
      });
    }
    try {
      result.stillServing = await withTimeout(
        inst.stillServes().then((ok) => {
          result.stillServing = ok;
        }),
        10_000,
      ).then(() => result.stillServing);
    } catch {
      result.stillServing = false;
    }
  } finally {
    await inst.close();
    guard.uninstall();
  }
  result.seconds = (performance.now() - started) / 1000;
  return result;
}

/** The table the fuzz command prints. */
export function formatTable(rows: readonly TargetResult[]): string {
  const head = ['target', 'inputs', 'crashes', 'hangs', 'still serving', 'seconds'];
  const body = rows.map((r) => [r.target, String(r.inputs), String(r.crashes), String(r.hangs), r.stillServing ? 'yes' : 'NO', r.seconds.toFixed(1)]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...body.map(line)].join('\n');
}

export function formatFinding(f: Finding): string {
  const replay = f.batch >= 0 ? `npm run fuzz -- --target ${f.target} --seed ${f.seed} --replay ${f.batch}:${f.index}` : '(no single input)';
  return [
    `${f.kind.toUpperCase()} in ${f.target}: ${f.message}`,
    `  case: ${f.label}; seed ${f.seed}, batch ${f.batch}, index ${f.index}, splits [${f.splits.join(',')}]`,
    `  replay: ${replay}`,
    `  input (hex): ${f.hex}`,
  ].join('\n');
}
