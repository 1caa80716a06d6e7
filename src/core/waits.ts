// Waiting inside the core: timers fired by tick() (virtual in the simulator)
// and "something moved" for the loops of flush and shutdown, which look
// again whenever a store write, a mirrored page or a role change lands.

import type { Core } from './context.js';
import type { Future } from './tasks.js';

export class Waits {
  private progressWaiters: Future<void>[] = [];
  private timers: { atMs: number; done: Future<void> }[] = [];

  constructor(private readonly c: Core) {}

  /** Settles after ms of core time (fired by tick). */
  sleep(ms: number): Future<void> {
    const done = this.c.tasks.future<void>();
    this.timers.push({ atMs: this.c.env.nowMs() + ms, done });
    return done;
  }

  /** Fire the timers that are due. */
  fireTimers(now: number): void {
    if (this.timers.length === 0) return;
    const due = this.timers.filter((t) => t.atMs <= now);
    if (due.length === 0) return;
    this.timers = this.timers.filter((t) => t.atMs > now);
    for (const t of due) t.done.resolve();
  }

  /** Settles at the next wakeProgress. */
  progress(): Future<void> {
    const f = this.c.tasks.future<void>();
    this.progressWaiters.push(f);
    return f;
  }

  wakeProgress(): void {
    if (this.progressWaiters.length === 0) return;
    const w = this.progressWaiters;
    this.progressWaiters = [];
    for (const f of w) f.resolve();
  }
}
