// pino, set up once per process: one JSON line per record, a child logger per
// controller and component. File logs are written synchronously so the last
// lines before a crash are on disk.

import pino from 'pino';
import type { LogConfig } from './config.js';

export function createLogger(log: LogConfig, bindings: Record<string, string>): pino.Logger {
  const destination = log.file !== undefined ? pino.destination({ dest: log.file, mkdir: true, sync: true }) : pino.destination({ dest: 1, sync: true });
  return pino({ level: log.level, base: { pid: process.pid, ...bindings }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
}
