// A run's history for the linearizability checker, recorded by the engine
// as it drives the pair. Every chunk of the working set is a register; its
// value is the number of the write that put it down (0: never written), and
// the chunk's own bytes name that write, so every read names the write it
// saw. An operation over several chunks is one history op per chunk. The
// recording also keeps when operations completed (so the kill test can ask
// how long service stalled in a window) and serves reads of the caller's
// own making (a read sent straight to a paused controller), recorded and
// checked like the engine's.

import { performance } from 'node:perf_hooks';
import { HistoryRecorder, type HistoryHeader, type HistoryOp, type OpKind, type OpOutcome } from '../checker/history.js';
import type { CheckResult } from '../checker/linearizability.js';
import { invariant, isPagepairError } from '../protocol/errors.js';
import type { ChunkCheck } from './pattern.js';
import type { HistoryCheckReport } from './report.js';
import { TimeLog } from './time-log.js';

/** Errors after which an operation may still have happened: no definite answer. */
const NO_ANSWER: ReadonlySet<string> = new Set(['TIMEOUT', 'NOT_ACTIVE', 'NOT_MIRRORED', 'PARTNER_LOST', 'SHUTTING_DOWN', 'FENCED', 'BUSY', 'STALE_EPOCH']);

/** How a failed operation enters the history: a typed refusal, or no answer at all. */
export function outcomeOf(err: unknown): OpOutcome {
  return isPagepairError(err) && !NO_ANSWER.has(err.code) ? 'fail' : 'unknown';
}

/** What an engine tells the recording about its part of the working set. */
export interface RecordedPart {
  chunkBytes: number;
  /** The part's first chunk (chunks are numbered over the whole working set) and how many it has. */
  firstChunk: number;
  chunks: number;
  /** Where a chunk lives. */
  locate(chunk: number): { guid: string; offset: number; allocation: string };
  /** Which write a chunk's bytes hold, or why they hold none. */
  check(data: Buffer, at: number, chunk: number): ChunkCheck;
}

export interface ProbeStats {
  /** Reads made through probeRead, and those that got an answer. */
  reads: number;
  answered: number;
  /** Answers whose bytes named no write of this chunk (torn, misplaced, another run's). */
  verifyErrors: number;
  verifyFailures: string[];
}

const VERIFY_FAILURES_KEPT = 20;

export class Recording {
  readonly recorder: HistoryRecorder;
  /** When operations of the run completed (answered), and when they failed. */
  readonly completed = new TimeLog();
  readonly failed = new TimeLog();
  readonly probes: ProbeStats = { reads: 0, answered: 0, verifyErrors: 0, verifyFailures: [] };
  /** Writes (operations, not chunks) whose fate is unknown: maybe-happened. */
  writesMaybe = 0;
  private part: RecordedPart | null = null;
  /** Per chunk of the part: when its latest acknowledged write was acknowledged. */
  private lastWriteAckMs = new Float64Array(0);
  private nextProcess = 0;

  /** `meta` goes into the history's header; `clock` (monotonic ms) is for tests. */
  constructor(
    meta: Record<string, unknown> = {},
    private readonly clock: () => number = () => performance.now(),
  ) {
    this.recorder = new HistoryRecorder({ clock: () => this.clock(), meta: { startedAt: new Date().toISOString(), ...meta } });
  }

  /** Monotonic ms, the clock of the history and of every window asked about (the engine's own times are performance.now()). */
  now(): number {
    return this.clock();
  }

  /** Called once by the engine that records into this. */
  attach(part: RecordedPart): void {
    invariant(this.part === null, 'a recording takes one engine');
    this.part = part;
    this.lastWriteAckMs = new Float64Array(part.chunks).fill(-Infinity);
  }

  get chunkBytes(): number {
    return this.part?.chunkBytes ?? 0;
  }

  /**
   * Reserves `count` history process numbers. A lane takes one per chunk an
   * operation of it may span, so its ops on different chunks never share a
   * process and its ops in time never overlap within one.
   */
  newProcesses(count: number): number {
    const base = this.nextProcess;
    this.nextProcess += count;
    return base;
  }

  /** Starts an operation over chunks [firstChunk, firstChunk + count): one history op per chunk. */
  invoke(processBase: number, kind: OpKind, firstChunk: number, count: number, writeNo = 0): number[] {
    const ids = new Array<number>(count);
    for (let i = 0; i < count; i++) ids[i] = this.recorder.invoke(processBase + i, kind, String(firstChunk + i), kind === 'write' ? writeNo : undefined);
    return ids;
  }

  writeAcked(ids: readonly number[], firstChunk: number): void {
    const now = this.now();
    const local = firstChunk - (this.part?.firstChunk ?? 0);
    for (let i = 0; i < ids.length; i++) {
      this.recorder.complete(ids[i]!, 'ok');
      this.lastWriteAckMs[local + i] = now;
    }
  }

  /** A read answered: values[i] is the write chunk i held, or -1 when its bytes named none (left out of the history). */
  readAnswered(ids: readonly number[], values: ArrayLike<number>): void {
    for (let i = 0; i < ids.length; i++) {
      const v = values[i]!;
      if (v < 0) this.recorder.complete(ids[i]!, 'fail');
      else this.recorder.complete(ids[i]!, 'ok', v);
    }
  }

  opFailed(ids: readonly number[], kind: OpKind, err: unknown): void {
    const outcome = outcomeOf(err);
    for (const id of ids) this.recorder.complete(id, outcome);
    if (kind === 'write') this.writesMaybe++;
  }

  /** An operation of the run was answered / failed at `atMs` (for stall and window counts). */
  opDone(atMs: number): void {
    this.completed.push(atMs);
  }

  opError(atMs: number): void {
    this.failed.push(atMs);
  }

  completedBetween(fromMs: number, toMs: number): number {
    return this.completed.countBetween(fromMs, toMs);
  }

  errorsBetween(fromMs: number, toMs: number): number {
    return this.failed.countBetween(fromMs, toMs);
  }

  /** The longest time in [fromMs, toMs] in which no operation completed. */
  stallMs(fromMs: number, toMs: number): number {
    return this.completed.longestGap(fromMs, toMs);
  }

  /** Chunks whose latest acknowledged write was acknowledged after `ms`. */
  chunksWrittenSince(ms: number): number[] {
    const first = this.part?.firstChunk ?? 0;
    const out: number[] = [];
    for (let c = 0; c < this.lastWriteAckMs.length; c++) if (this.lastWriteAckMs[c]! > ms) out.push(first + c);
    return out;
  }

  /**
   * One read of one chunk by the caller's own means (straight to one
   * controller, say), recorded and checked byte for byte like the engine's
   * reads; the checker judges its value. Resolves to the write it saw, or
   * null when it got no good answer.
   */
  async probeRead(chunk: number, read: (guid: string, offset: number, length: number) => Promise<Buffer>, via: string): Promise<number | null> {
    const part = this.part;
    invariant(part !== null, 'probeRead before the engine attached');
    const where = part.locate(chunk);
    const [id] = this.invoke(this.newProcesses(1), 'read', chunk, 1);
    this.probes.reads++;
    let data: Buffer;
    try {
      data = await read(where.guid, where.offset, part.chunkBytes);
    } catch (err) {
      this.recorder.complete(id!, outcomeOf(err));
      return null;
    }
    this.probes.answered++;
    const got = part.check(data, 0, chunk);
    if ('corrupt' in got) {
      this.recorder.complete(id!, 'fail');
      this.probes.verifyErrors++;
      if (this.probes.verifyFailures.length < VERIFY_FAILURES_KEPT) {
        this.probes.verifyFailures.push(`probe read of ${where.allocation} offset ${where.offset} via ${via}: ${got.corrupt}`);
      }
      return null;
    }
    this.recorder.complete(id!, 'ok', got.writeNo);
    return got.writeNo;
  }

  header(): HistoryHeader {
    return this.recorder.header();
  }

  ops(): HistoryOp[] {
    return this.recorder.ops();
  }

  writeTo(path: string): Promise<void> {
    return this.recorder.writeTo(path);
  }
}

/** The checker's result as a report carries it: the verdict, counts by kind, the first violations spelled out. */
export function summarizeCheck(check: CheckResult, historyPath: string | null, shown = 10): HistoryCheckReport {
  return {
    historyPath,
    ops: check.ops,
    verdict: check.verdict,
    byKind: { ...check.byKind },
    violations: check.violations.slice(0, shown).map((v) => `${v.kind} on chunk ${v.key}: ${v.explanation} (ops ${v.ops.map((o) => `#${o.id}`).join(', ')})`),
    inconclusiveKeys: check.inconclusive.length,
  };
}
