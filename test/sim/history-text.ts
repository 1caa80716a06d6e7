// A failed history check, told so a reader can follow it: the first few
// violations, each with every operation on its key and the key's final value.

import type { CheckResult, HistoryOp } from '../../src/checker/index.js';

/** The first three violations of `result`, each line indented by `indent`, its operations two spaces more. */
export function shownViolations(result: CheckResult, history: readonly HistoryOp[], finals: ReadonlyMap<string, number>, indent = ''): string {
  return result.violations
    .slice(0, 3)
    .map((v) => {
      const ops = history
        .filter((o) => o.key === v.key)
        .map((o) => `${indent}  #${o.id} p${o.process} ${o.kind} ${o.value} ${o.startMs.toFixed(3)}..${o.endMs?.toFixed(3) ?? '?'} ${o.outcome}`);
      return `${indent}${v.kind} on ${v.key}: ${v.explanation}\n${ops.join('\n')}\n${indent}  final ${finals.get(v.key)}`;
    })
    .join('\n');
}
