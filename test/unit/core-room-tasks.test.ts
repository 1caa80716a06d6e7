// The core's tasks: generators resumed by Futures that settle only inside a
// handler, in the order a promise's continuations would run, with no promise
// and no await. Scheduler and Future are tested alone here.

import { describe, expect, it } from 'vitest';
import { Future, Scheduler, settle, wait, type Task } from '../../src/core/tasks.js';

function scheduler(): { s: Scheduler; faults: unknown[] } {
  const faults: unknown[] = [];
  return { s: new Scheduler((err) => faults.push(err)), faults };
}

describe('Scheduler and Future', () => {
  it('resumes a waiting task after the handler that settled its Future, not inside it', () => {
    const { s } = scheduler();
    const log: string[] = [];
    const f = s.future<number>();
    s.turn(() =>
      s.spawn(
        (function* (): Task<void> {
          log.push(`got ${yield* wait(f)}`);
        })(),
      ),
    );
    s.turn(() => {
      f.resolve(7);
      log.push('handler ends');
    });
    expect(log).toEqual(['handler ends', 'got 7']);
  });

  it('resumes in the order the Futures settled (FIFO), whatever order the tasks waited in', () => {
    const { s } = scheduler();
    const log: string[] = [];
    const a = s.future<void>();
    const b = s.future<void>();
    const waitOn = (name: string, f: Future<void>) =>
      s.spawn(
        (function* (): Task<void> {
          yield* wait(f);
          log.push(name);
        })(),
      );
    s.turn(() => {
      waitOn('a', a);
      waitOn('b', b);
    });
    s.turn(() => {
      b.resolve();
      a.resolve();
    });
    expect(log).toEqual(['b', 'a']);
  });

  it('queues a callback on an already settled Future behind the current handler too', () => {
    const { s } = scheduler();
    const log: string[] = [];
    s.turn(() => {
      s.resolved(1).onDone((v) => log.push(`settled ${v}`));
      log.push('handler ends');
    });
    expect(log).toEqual(['handler ends', 'settled 1']);
  });

  it('turn() drains everything it set going, chains included, before it returns', () => {
    const { s } = scheduler();
    const log: number[] = [];
    const f1 = s.future<void>();
    const f2 = s.future<void>();
    s.turn(() => {
      f1.onDone(() => {
        log.push(1);
        f2.resolve();
      });
      f2.onDone(() => log.push(2));
      f1.resolve();
    });
    expect(log).toEqual([1, 2]);
  });

  it('a nested turn drains only when the outermost one ends', () => {
    const { s } = scheduler();
    const log: string[] = [];
    s.turn(() => {
      s.turn(() => s.resolved(0).onDone(() => log.push('resumed')));
      log.push('inner turn returned');
    });
    expect(log).toEqual(['inner turn returned', 'resumed']);
  });

  it('spawn runs a task synchronously up to its first wait', () => {
    const { s } = scheduler();
    const log: string[] = [];
    const gate = s.future<void>();
    s.turn(() => {
      s.spawn(
        (function* (): Task<void> {
          log.push('before wait');
          yield* wait(gate);
          log.push('after wait');
        })(),
      );
      log.push('spawn returned');
    });
    expect(log).toEqual(['before wait', 'spawn returned']);
    s.turn(() => gate.resolve());
    expect(log).toEqual(['before wait', 'spawn returned', 'after wait']);
  });

  it("a task's Future settles with its return value, or with what it threw", () => {
    const { s } = scheduler();
    let ok: Future<number> | undefined;
    let bad: Future<number> | undefined;
    s.turn(() => {
      ok = s.spawn((function* (): Task<number> { return 5; })());
      bad = s.spawn(
        (function* (): Task<number> {
          throw new Error('boom');
        })(),
      );
    });
    expect(ok!.value).toBe(5);
    expect(bad!.failure?.message).toBe('boom');
  });

  it('all() gives the values in the order of its Futures, not the order they settled', () => {
    const { s } = scheduler();
    const a = s.future<string>();
    const b = s.future<string>();
    let all: Future<string[]> | undefined;
    s.turn(() => (all = s.all([a, b])));
    s.turn(() => b.resolve('b'));
    expect(all!.settled).toBe(false);
    s.turn(() => a.resolve('a'));
    expect(all!.value).toEqual(['a', 'b']);
    let none: Future<string[]> | undefined;
    s.turn(() => (none = s.all([])));
    expect(none!.value).toEqual([]);
  });

  it('all() fails with the first Future to fail, without waiting for the rest', () => {
    const { s } = scheduler();
    const a = s.future<number>();
    const b = s.future<number>();
    const c = s.future<number>();
    let all: Future<number[]> | undefined;
    s.turn(() => (all = s.all([a, b, c])));
    s.turn(() => c.reject(new Error('c failed')));
    s.turn(() => a.reject(new Error('a failed')));
    expect(all!.failure?.message).toBe('c failed');
    expect(b.settled).toBe(false);
  });

  it('a failed Future is thrown into the task at its yield: try/catch catches it and finally runs', () => {
    const { s } = scheduler();
    const log: string[] = [];
    const f = s.future<number>();
    let task: Future<string> | undefined;
    s.turn(() => {
      task = s.spawn(
        (function* (): Task<string> {
          try {
            yield* wait(f);
            log.push('not reached');
            return 'no';
          } catch (err) {
            log.push(`caught ${(err as Error).message}`);
            return 'recovered';
          } finally {
            log.push('finally');
          }
        })(),
      );
    });
    s.turn(() => f.reject(new Error('EIO')));
    expect(log).toEqual(['caught EIO', 'finally']);
    expect(task!.value).toBe('recovered');
  });

  it('an error a task does not catch runs its finally blocks and fails its Future', () => {
    const { s } = scheduler();
    const log: string[] = [];
    const f = s.future<void>();
    let task: Future<void> | undefined;
    const inner = function* (): Task<void> {
      try {
        yield* wait(f);
      } finally {
        log.push('inner finally');
      }
    };
    s.turn(() => {
      task = s.spawn(
        (function* (): Task<void> {
          try {
            yield* inner();
          } finally {
            log.push('outer finally');
          }
        })(),
      );
    });
    s.turn(() => f.reject(new Error('lost')));
    expect(log).toEqual(['inner finally', 'outer finally']);
    expect(task!.failure?.message).toBe('lost');
  });

  it('settle() waits for a Future whatever its outcome, and does not throw', () => {
    const { s } = scheduler();
    const f = s.future<void>();
    let task: Future<string> | undefined;
    s.turn(() => {
      task = s.spawn(
        (function* (): Task<string> {
          yield* settle(f);
          return 'went on';
        })(),
      );
    });
    expect(task!.settled).toBe(false);
    s.turn(() => f.reject(new Error('ignored')));
    expect(task!.value).toBe('went on');
  });

  it('a Future settles once: later resolves and rejects are ignored', () => {
    const { s } = scheduler();
    const f = s.future<number>();
    const seen: string[] = [];
    s.turn(() => {
      f.onDone(
        (v) => seen.push(`ok ${v}`),
        (e) => seen.push(`fail ${e.message}`),
      );
      f.resolve(1);
      f.resolve(2);
      f.reject(new Error('late'));
    });
    expect(seen).toEqual(['ok 1']);
    expect(f.value).toBe(1);
    expect(f.failure).toBeNull();
  });

  it('a resumption that throws is reported to the fault hook, and the queue goes on', () => {
    const { s, faults } = scheduler();
    const log: string[] = [];
    const f = s.future<void>();
    s.turn(() => {
      f.onDone(() => {
        throw new Error('bug in a callback');
      });
      f.onDone(() => log.push('next callback ran'));
      f.resolve();
    });
    expect(faults.map((e) => (e as Error).message)).toEqual(['bug in a callback']);
    expect(log).toEqual(['next callback ran']);
    // The scheduler still works afterwards.
    s.turn(() => s.resolved(0).onDone(() => log.push('later turn')));
    expect(log).toEqual(['next callback ran', 'later turn']);
  });

  it('outside any turn, a deferred job runs at once', () => {
    const { s } = scheduler();
    const log: string[] = [];
    s.defer(() => log.push('ran'));
    expect(log).toEqual(['ran']);
  });
});
