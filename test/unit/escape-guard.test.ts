// The process-level guard: what escapes every handler is logged and counted;
// a rejection leaves the controller serving, an uncaught exception hands over
// to the crash path (announce to the partner, exit).

import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { escapedText } from '../../src/cli/status.js';
import { EscapeGuard } from '../../src/runtime/escape-guard.js';
import { captureLog } from './transport-helpers.js';

function fakeProcess(): NodeJS.Process {
  return new EventEmitter() as unknown as NodeJS.Process;
}

describe('EscapeGuard', () => {
  it('counts and logs an unhandled rejection, and does not end the process', () => {
    const { log, records } = captureLog();
    const crashes: unknown[] = [];
    const proc = fakeProcess();
    const guard = new EscapeGuard({ log, onUncaughtException: (err) => crashes.push(err) }).install(proc);
    expect(guard.count).toBe(0);
    proc.emit('unhandledRejection', new Error('nobody awaited this'), Promise.resolve());
    expect(guard.count).toBe(1);
    expect(guard.last).toMatchObject({ event: 'unhandledRejection', message: 'nobody awaited this' });
    expect(crashes).toEqual([]);
    expect(records.find((r) => r.msg.includes('rejection escaped'))).toMatchObject({ escapedErrors: 1, event: 'unhandledRejection' });
  });

  it('counts and logs an uncaught exception, then takes the crash path', () => {
    const { log, records } = captureLog();
    const crashes: unknown[] = [];
    const proc = fakeProcess();
    const guard = new EscapeGuard({ log, onUncaughtException: (err) => crashes.push(err) }).install(proc);
    const boom = new Error('boom');
    proc.emit('uncaughtException', boom);
    expect(guard.count).toBe(1);
    expect(crashes).toEqual([boom]);
    expect(records.find((r) => r.msg.includes('escaped every handler; exiting'))).toMatchObject({ escapedErrors: 1 });
  });

  it('stops listening when uninstalled', () => {
    const { log } = captureLog();
    const proc = fakeProcess();
    const guard = new EscapeGuard({ log, onUncaughtException: () => undefined }).install(proc);
    guard.uninstall(proc);
    expect(proc.listenerCount('unhandledRejection') + proc.listenerCount('uncaughtException')).toBe(0);
  });
});

describe('status: escaped errors', () => {
  it('says none, how many, or that an older controller does not count them', () => {
    expect(escapedText(0)).toBe('no error escaped a handler');
    expect(escapedText(2)).toContain('2 errors escaped every handler');
    expect(escapedText(undefined)).toContain('not counted');
  });
});
