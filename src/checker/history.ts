// A history: what a workload asked of the pair and what it was told, one
// operation per line. The checker (linearizability.ts) judges it afterwards,
// so a history must say exactly what the client knew: when it asked, when
// (and whether) it heard back, and what it heard.
//
// This file stays pure (no fs, no clock): the simulator records histories
// too, with its own clock. Reading and writing files is history-file.ts.

import { PagepairError, invariant } from '../protocol/errors.js';

export type OpKind = 'write' | 'read';

/**
 * - 'ok': the reply said it happened (a read's value is what it returned).
 * - 'fail': a typed error reply. By default the checker does not trust it to
 *   mean "did not happen" (a write may already be held by the partner when
 *   the error is sent), so a failed write is maybe-happened; see
 *   CheckOptions.failedWritesDidNotHappen.
 * - 'unknown': no reply (timed out, connection lost); endMs is null.
 */
export type OpOutcome = 'ok' | 'fail' | 'unknown';

export interface HistoryOp {
  /** Unique in the history. */
  id: number;
  /** The client or worker that issued it; ops of one process never overlap in time. */
  process: number;
  kind: OpKind;
  /** Which register, e.g. "<guid>:<block>". */
  key: string;
  /** Write: the value it wrote (> 0, unique per key). Read: the value it returned (0 = never written). */
  value: number;
  /** Invocation time, monotonic ms (fractional allowed). */
  startMs: number;
  /** Completion time; null = no answer, so it may or may not have taken effect. */
  endMs: number | null;
  outcome: OpOutcome;
}

export const HISTORY_FORMAT = 'pagepair-history';
export const HISTORY_VERSION = 1;

export interface HistoryHeader {
  format: typeof HISTORY_FORMAT;
  version: typeof HISTORY_VERSION;
  seed?: number;
  /** Wall-clock start, ISO 8601, for people; the ops' times are monotonic ms. */
  startedAt?: string;
  [extra: string]: unknown;
}

export interface History {
  header: HistoryHeader;
  ops: HistoryOp[];
}

const OUTCOMES: readonly string[] = ['ok', 'fail', 'unknown'];

function badField(where: string, field: string, what: string): PagepairError {
  return new PagepairError('BAD_FIELD', `${where}: ${field} ${what}`, field);
}

/**
 * Checks one op's fields, naming `where` (a line of a file, or an op id) in
 * the error. Throws PagepairError BAD_FIELD.
 */
export function validateOp(op: Record<string, unknown>, where: string): HistoryOp {
  const { id, process, kind, key, value, startMs, endMs, outcome } = op;
  if (typeof id !== 'number' || !Number.isSafeInteger(id)) throw badField(where, 'id', 'must be an integer');
  if (typeof process !== 'number' || !Number.isSafeInteger(process)) throw badField(where, 'process', 'must be an integer');
  if (kind !== 'write' && kind !== 'read') throw badField(where, 'kind', "must be 'write' or 'read'");
  if (typeof key !== 'string' || key.length === 0) throw badField(where, 'key', 'must be a non-empty string');
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw badField(where, 'value', 'must be an integer >= 0');
  if (kind === 'write' && value === 0) throw badField(where, 'value', 'of a write must be > 0 (0 is the initial value)');
  if (typeof startMs !== 'number' || !Number.isFinite(startMs)) throw badField(where, 'startMs', 'must be a finite number');
  if (endMs !== null && (typeof endMs !== 'number' || !Number.isFinite(endMs))) throw badField(where, 'endMs', 'must be a finite number or null');
  if (endMs !== null && endMs < startMs) throw badField(where, 'endMs', `(${endMs}) is before startMs (${startMs})`);
  if (typeof outcome !== 'string' || !OUTCOMES.includes(outcome)) throw badField(where, 'outcome', "must be 'ok', 'fail' or 'unknown'");
  if (outcome === 'ok' && endMs === null) throw badField(where, 'endMs', "must be set when outcome is 'ok'");
  return { id, process, kind, key, value, startMs, endMs, outcome: outcome as OpOutcome };
}

/** One JSON object per line: the header, then the ops in id order. */
export function historyToJsonl(header: HistoryHeader, ops: readonly HistoryOp[]): string {
  const lines = [JSON.stringify(header)];
  for (const op of ops) {
    lines.push(
      JSON.stringify({
        id: op.id,
        process: op.process,
        kind: op.kind,
        key: op.key,
        value: op.value,
        startMs: op.startMs,
        endMs: op.endMs,
        outcome: op.outcome,
      }),
    );
  }
  return lines.join('\n') + '\n';
}

/**
 * Parses a JSON-lines history. Every problem is a PagepairError naming the
 * line (1-based) and, as `field`, the field at fault. Blank lines are
 * skipped; fields a newer writer adds are ignored.
 */
export function parseHistory(text: string, source = 'history'): History {
  const lines = text.split('\n');
  let header: HistoryHeader | null = null;
  const ops: HistoryOp[] = [];
  const lineOfId = new Map<number, number>();
  const lineOfWrite = new Map<string, number>();
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.trim();
    if (raw === '') continue;
    const where = `${source} line ${i + 1}`;
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      throw new PagepairError('BAD_FIELD', `${where}: not valid JSON`, 'line');
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw new PagepairError('BAD_FIELD', `${where}: not a JSON object`, 'line');
    }
    const obj = parsed as Record<string, unknown>;
    if (header === null) {
      if (obj.format !== HISTORY_FORMAT) throw badField(where, 'format', `must be '${HISTORY_FORMAT}' (the first line is the header)`);
      if (obj.version !== HISTORY_VERSION) {
        throw new PagepairError('BAD_VERSION', `${where}: version ${String(obj.version)} is not supported (this checker reads ${HISTORY_VERSION})`, 'version');
      }
      if (obj.seed !== undefined && typeof obj.seed !== 'number') throw badField(where, 'seed', 'must be a number');
      if (obj.startedAt !== undefined && typeof obj.startedAt !== 'string') throw badField(where, 'startedAt', 'must be a string');
      header = obj as HistoryHeader;
      continue;
    }
    const op = validateOp(obj, where);
    const seenAt = lineOfId.get(op.id);
    if (seenAt !== undefined) throw badField(where, 'id', `${op.id} was already used on line ${seenAt}`);
    lineOfId.set(op.id, i + 1);
    if (op.kind === 'write') {
      const wkey = `${op.key}\u0000${op.value}`;
      const wroteAt = lineOfWrite.get(wkey);
      if (wroteAt !== undefined) throw badField(where, 'value', `${op.value} was already written to ${op.key} on line ${wroteAt}; write values must be unique per key`);
      lineOfWrite.set(wkey, i + 1);
    }
    ops.push(op);
  }
  if (header === null) throw badField(`${source} line 1`, 'format', 'missing: the history has no header line');
  return { header, ops };
}

export interface HistoryRecorderOptions {
  /** Monotonic milliseconds; the recorder never reads a clock of its own. */
  clock: () => number;
  /** Goes into the header: seed, startedAt, anything else that helps replay. */
  meta?: { seed?: number; startedAt?: string; [extra: string]: unknown };
}

/**
 * Records a history as a workload runs. Call invoke() just before sending a
 * request and complete() as soon as its answer (or the decision to stop
 * waiting) is known. An op never completed is written as outcome 'unknown'
 * with no end: it may still land after the history ends.
 */
export class HistoryRecorder {
  private readonly clock: () => number;
  private readonly meta: HistoryRecorderOptions['meta'];
  private readonly all: HistoryOp[] = [];
  private readonly pending = new Map<number, HistoryOp>();
  private readonly busyProcesses = new Set<number>();
  private readonly written = new Set<string>();

  constructor(opts: HistoryRecorderOptions) {
    this.clock = opts.clock;
    this.meta = opts.meta;
  }

  /** Starts an op and returns its id. A write's value must be > 0 and unique for its key. */
  invoke(process: number, kind: OpKind, key: string, value?: number): number {
    invariant(!this.busyProcesses.has(process), `process ${process} invoked an op while another of its ops is pending`);
    invariant(key.length > 0, 'history key is empty');
    let v = 0;
    if (kind === 'write') {
      invariant(value !== undefined && Number.isSafeInteger(value) && value > 0, `write value ${String(value)} is not an integer > 0`);
      const wkey = `${key}\u0000${value}`;
      invariant(!this.written.has(wkey), `value ${value} written twice to ${key}`);
      this.written.add(wkey);
      v = value;
    }
    const op: HistoryOp = { id: this.all.length + 1, process, kind, key, value: v, startMs: this.clock(), endMs: null, outcome: 'unknown' };
    this.all.push(op);
    this.pending.set(op.id, op);
    this.busyProcesses.add(process);
    return op.id;
  }

  /**
   * Ends an op. 'ok' and 'fail' record the time of the answer; 'unknown'
   * (no answer) leaves endMs null. A read that succeeded needs the value it
   * returned.
   */
  complete(opId: number, outcome: OpOutcome, value?: number): void {
    const op = this.pending.get(opId);
    invariant(op !== undefined, `op ${opId} is not pending`);
    if (op.kind === 'read' && outcome === 'ok') {
      invariant(value !== undefined && Number.isSafeInteger(value) && value >= 0, `read ${opId} completed ok without a value`);
      op.value = value;
    }
    op.endMs = outcome === 'unknown' ? null : this.clock();
    invariant(op.endMs === null || op.endMs >= op.startMs, 'history clock went backwards');
    op.outcome = outcome;
    this.pending.delete(opId);
    this.busyProcesses.delete(op.process);
  }

  get pendingCount(): number {
    return this.pending.size;
  }

  header(): HistoryHeader {
    const header: HistoryHeader = { format: HISTORY_FORMAT, version: HISTORY_VERSION, ...this.meta };
    // meta must not be able to make the file unreadable by its own checker
    header.format = HISTORY_FORMAT;
    header.version = HISTORY_VERSION;
    return header;
  }

  /** A copy of the ops so far, in id order; pending ops appear as 'unknown' with no end. */
  ops(): HistoryOp[] {
    return this.all.map((op) => ({ ...op }));
  }

  toJsonl(): string {
    return historyToJsonl(this.header(), this.all);
  }

  /** Writes the history file. The fs code lives apart so this file stays pure. */
  async writeTo(path: string): Promise<void> {
    const { writeHistoryText } = await import('./history-file.js');
    await writeHistoryText(path, this.toJsonl());
  }
}
