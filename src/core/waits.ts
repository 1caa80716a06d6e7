// ROOM waits

import type { Core } from './context.js';

export class Waits {
  constructor(private readonly c: Core) {}

  private progressWaiters: (() => void)[] = [];

  /** Timers of the core itself, fired by tick(): virtual in the simulator. */
  timers: { atMs: number; resolve: () => void }[] = [];

  /** Resolves after ms of core time (fired by tick). */
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.timers.push({ atMs: this.c.env.nowMs() + ms, resolve }));
  }

  waitForProgress(): Promise<void> {
    return new Promise((resolve) => this.progressWaiters.push(resolve));
  }

  wakeProgress(): void {
    if (this.progressWaiters.length === 0) return;
    const w = this.progressWaiters;
    this.progressWaiters = [];
    for (const f of w) f();
  }
}
