// Waiting inside the core: sleeps end on the tick that reaches their time
// (core time, never the wall clock), and "progress" wakes every waiter once.

import { describe, expect, it } from 'vitest';
import type { Future } from '../../src/core/tasks.js';
import { coreFixture } from './core-fixture.js';

describe('waits', () => {
  it('a sleep ends on the first tick at or past its time, not before', async () => {
    const f = await coreFixture();
    f.setNow(1000);
    let short: Future<void> | undefined;
    let long: Future<void> | undefined;
    f.core.tasks.turn(() => {
      short = f.core.waits.sleep(50);
      long = f.core.waits.sleep(200);
    });
    f.setNow(1049);
    f.core.tick();
    expect(short!.settled).toBe(false);
    f.setNow(1050);
    f.core.tick();
    expect(short!.settled).toBe(true);
    expect(long!.settled).toBe(false);
    // Time moving without a tick fires nothing.
    f.setNow(5000);
    expect(long!.settled).toBe(false);
    f.core.tick();
    expect(long!.settled).toBe(true);
  });

  it('wakeProgress wakes every waiter once; a later waiter waits for the next one', async () => {
    const f = await coreFixture();
    let a: Future<void> | undefined;
    let b: Future<void> | undefined;
    f.core.tasks.turn(() => {
      a = f.core.waits.progress();
      b = f.core.waits.progress();
    });
    f.core.tasks.turn(() => f.core.waits.wakeProgress());
    expect(a!.settled && b!.settled).toBe(true);
    let c: Future<void> | undefined;
    f.core.tasks.turn(() => (c = f.core.waits.progress()));
    expect(c!.settled).toBe(false);
    f.core.tasks.turn(() => f.core.waits.wakeProgress());
    expect(c!.settled).toBe(true);
  });
});
