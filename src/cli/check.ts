// `pagepair check <history>`: judge a recorded history and say why it fails.
//
// Exit codes: 0 linearizable; 1 violations found; 2 the file cannot be read
// or is malformed; 3 no violation found but some keys could not be decided
// within the search bound (not proven, so not 0).

import { readHistory } from '../checker/history-file.js';
import type { HistoryHeader, HistoryOp } from '../checker/history.js';
import { VIOLATION_KINDS, checkHistory, type CheckOptions, type CheckResult } from '../checker/linearizability.js';
import { isPagepairError } from '../protocol/errors.js';

export interface RunCheckOptions extends CheckOptions {
  json?: boolean;
  /** How many violations the text report spells out (all are counted). */
  violationsShown?: number;
}

export const CHECK_EXIT = { linearizable: 0, violations: 1, badInput: 2, inconclusive: 3 } as const;

export async function runCheck(path: string, opts: RunCheckOptions = {}): Promise<{ exitCode: number; text: string }> {
  let history;
  try {
    history = await readHistory(path);
  } catch (err) {
    if (!isPagepairError(err)) throw err;
    const text = opts.json === true ? JSON.stringify({ path, error: { code: err.code, field: err.field ?? null, message: err.message } }, null, 2) : `cannot check ${path}: ${err.code}: ${err.message}`;
    return { exitCode: CHECK_EXIT.badInput, text };
  }
  const result = checkHistory(history.ops, opts);
  const exitCode = CHECK_EXIT[result.verdict];
  if (opts.json === true) return { exitCode, text: JSON.stringify({ path, header: history.header, result }, null, 2) };
  return { exitCode, text: formatCheck(path, history.header, result, opts.violationsShown ?? 5) };
}

function opLine(op: HistoryOp, originMs: number): string {
  const t = (x: number): string => (x - originMs).toFixed(3).padStart(12);
  const end = op.endMs === null ? '   no answer' : t(op.endMs);
  return `    #${String(op.id).padEnd(7)} p${String(op.process).padEnd(4)} ${op.kind.padEnd(5)} ${String(op.value).padStart(10)}  ${t(op.startMs)} → ${end} ms  ${op.outcome}`;
}

export function formatCheck(path: string, header: HistoryHeader, r: CheckResult, violationsShown: number): string {
  const lines: string[] = [];
  const about = [header.seed !== undefined ? `seed ${header.seed}` : '', header.startedAt !== undefined ? `started ${header.startedAt}` : ''].filter((s) => s !== '');
  lines.push(`history      ${path}${about.length > 0 ? `  (${about.join(', ')})` : ''}`);
  const c = r.counts;
  lines.push(
    `ops          ${r.ops}: writes ${c.writesOk + c.writesMaybe} (${c.writesOk} ok, ${c.writesMaybe} maybe-happened), ` +
      `reads ${c.readsOk + c.readsDropped} (${c.readsOk} ok, ${c.readsDropped} without an answer, dropped)`,
  );
  lines.push(`keys         ${r.keys}`);
  const kinds = VIOLATION_KINDS.filter((k) => r.byKind[k] > 0).map((k) => `${k} ${r.byKind[k]}`);
  lines.push(`violations   ${r.violations.length}${kinds.length > 0 ? ` (${kinds.join(', ')})` : ''}`);
  if (r.inconclusive.length > 0) {
    const names = r.inconclusive.slice(0, 5).map((k) => `${k.key} (${k.ops} ops)`);
    lines.push(`inconclusive ${r.inconclusive.length} keys (search bound hit): ${names.join(', ')}${r.inconclusive.length > 5 ? ', …' : ''}`);
  }
  const shown = r.violations.slice(0, violationsShown);
  if (shown.length > 0) {
    lines.push('');
    lines.push(`first ${shown.length} (times in ms from the first op):`);
    for (const v of shown) {
      lines.push(`  ${v.kind} on ${v.key}: ${v.explanation}`);
      for (const op of v.ops) lines.push(opLine(op, r.originMs));
    }
  }
  lines.push('');
  if (r.verdict === 'linearizable') lines.push('history is linearizable');
  else if (r.verdict === 'violations') lines.push('VIOLATIONS FOUND');
  else lines.push(`NOT PROVEN: no violation found, but ${r.inconclusive.length} keys were not decided`);
  return lines.join('\n');
}
