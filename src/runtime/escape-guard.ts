// The last line of defence: every handler that takes input answers bad input
// itself (issue 11), so anything reaching the process-level events is a bug.
// It is logged and counted, and status shows the count (escapedErrors), which
// tests expect to stay 0 after hostile input.
//
// What happens next differs by event, on purpose:
// - an unhandled rejection is a promise nobody awaited: the work it belonged
//   to has failed, but nothing ran half-way on the stack that threw, so the
//   controller logs, counts and goes on serving;
// - an uncaught exception unwound a handler half-way, possibly between two
//   changes to the page cache or the lock tables that must go together. A
//   controller that keeps serving from such a state could acknowledge writes
//   its partner does not hold. So it logs, counts, tells the partner it is
//   crashing (the SENSE "crashing" path, onUncaughtException) and exits: the
//   partner holds every acknowledged write and takes over; only this side's
//   cache is lost.

import type pino from 'pino';

export interface EscapeGuardOptions {
  log: pino.Logger;
  /** Called after an uncaught exception is logged and counted; expected to end the process. */
  onUncaughtException(err: unknown): void;
}

export interface EscapedError {
  /** taskFault: a callback in the core's task queue threw (the core's own unhandled rejection). */
  event: 'uncaughtException' | 'unhandledRejection' | 'taskFault';
  message: string;
  atMs: number;
}

export class EscapeGuard {
  private escaped = 0;
  private lastEscaped: EscapedError | null = null;
  private readonly onRejection = (reason: unknown): void => this.record('unhandledRejection', reason);
  private readonly onException = (err: unknown): void => {
    this.record('uncaughtException', err);
    this.opts.onUncaughtException(err);
  };

  constructor(private readonly opts: EscapeGuardOptions) {}

  /** Errors that reached the process-level events since install(). */
  get count(): number {
    return this.escaped;
  }

  get last(): EscapedError | null {
    return this.lastEscaped;
  }

  install(proc: NodeJS.Process = process): this {
    proc.on('unhandledRejection', this.onRejection);
    proc.on('uncaughtException', this.onException);
    return this;
  }

  uninstall(proc: NodeJS.Process = process): void {
    proc.off('unhandledRejection', this.onRejection);
    proc.off('uncaughtException', this.onException);
  }

  /** Logs and counts one escaped error (exposed for tests; the process events call it). */
  record(event: EscapedError['event'], err: unknown): void {
    this.escaped++;
    const message = err instanceof Error ? err.message : String(err);
    this.lastEscaped = { event, message: message.slice(0, 500), atMs: Date.now() };
    this.opts.log[event === 'uncaughtException' ? 'fatal' : 'error'](
      { event, escapedErrors: this.escaped, err: err instanceof Error ? err.stack : String(err) },
      event === 'uncaughtException' ? 'an error escaped every handler; exiting' : 'a rejection escaped every handler; serving on',
    );
  }
}
