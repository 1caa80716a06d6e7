// The history checker: record what a workload saw, then judge it.

export {
  HISTORY_FORMAT,
  HISTORY_VERSION,
  HistoryRecorder,
  historyToJsonl,
  parseHistory,
  validateOp,
  type History,
  type HistoryHeader,
  type HistoryOp,
  type HistoryRecorderOptions,
  type OpKind,
  type OpOutcome,
} from './history.js';
export { readHistory, writeHistoryText } from './history-file.js';
export {
  DEFAULT_SEARCH_STATES_BASE,
  DEFAULT_SEARCH_STATES_PER_OP,
  VIOLATION_KINDS,
  checkFinal,
  checkHistory,
  validateHistory,
  type CheckOptions,
  type CheckResult,
  type InconclusiveKey,
  type Violation,
  type ViolationKind,
} from './linearizability.js';
