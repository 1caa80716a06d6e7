// The core's long operations as tasks: generators that yield what they wait
// for (a store result, a partner's reply, a tick, room in the cache) as a
// Future, and are resumed when that Future settles. No promise and no await:
// a Future settles only while the core handles an event (a store result, a
// frame, a client request, a tick), and what it resumes runs in a queue that
// is drained before that event's handler returns. So everything the core does
// follows from the order of its events, which the runtime takes from the
// world and the simulator draws by seed.
//
// Resumptions keep the order of a promise's continuations: a task waiting on
// a Future resumes after the handler that settled it, in the order the
// Futures settled, even when the Future had settled already.

/** A task that ends with a T. `yield* task` runs it inside another. */
export type Task<T> = Generator<Future<unknown>, T, unknown>;

const PENDING = 0;
const DONE = 1;
const FAILED = 2;

/** Runs what settled Futures resume, after the handler of the event that settled them. */
export class Scheduler {
  private queue: (() => void)[] = [];
  private depth = 0;
  private draining = false;

  /** `fault`: a resumption threw outside any task (a bug): reported, the queue goes on. */
  constructor(private readonly fault: (err: unknown) => void) {}

  /** Handle one event: fn, then everything it set going. */
  turn<T>(fn: () => T): T {
    this.depth++;
    try {
      return fn();
    } finally {
      this.depth--;
      if (this.depth === 0) this.drain();
    }
  }

  /** Run fn after the current handler (at once, queued, outside any). */
  defer(fn: () => void): void {
    this.queue.push(fn);
    if (this.depth === 0) this.drain();
  }

  /** A Future settled by this core's events. */
  future<T>(): Future<T> {
    return new Future<T>(this);
  }

  /** A Future already resolved with `value`. */
  resolved<T>(value: T): Future<T> {
    const f = new Future<T>(this);
    f.resolve(value);
    return f;
  }

  /** A Future already failed with `err`. */
  failed<T>(err: Error): Future<T> {
    const f = new Future<T>(this);
    f.reject(err);
    return f;
  }

  /** Start a task now (up to its first wait); its Future settles with its result. */
  spawn<T>(task: Task<T>): Future<T> {
    const f = new Future<T>(this);
    this.step(task, f, false, undefined);
    return f;
  }

  /** Settles once every Future did, with their values in order; fails with the first to fail. */
  all<T>(futures: readonly Future<T>[]): Future<T[]> {
    const out = new Future<T[]>(this);
    const values = new Array<T>(futures.length);
    let left = futures.length;
    if (left === 0) out.resolve(values);
    futures.forEach((f, i) => {
      f.whenSettled(() => {
        if (f.failure !== null) out.reject(f.failure);
        else {
          values[i] = f.value as T;
          if (--left === 0) out.resolve(values);
        }
      });
    });
    return out;
  }

  private step<T>(task: Task<T>, f: Future<T>, throwing: boolean, input: unknown): void {
    let r: IteratorResult<Future<unknown>, T>;
    try {
      r = throwing ? task.throw(input) : task.next(input);
    } catch (err) {
      f.reject(asError(err));
      return;
    }
    if (r.done === true) {
      f.resolve(r.value);
      return;
    }
    const waited = r.value;
    waited.whenSettled(() => {
      if (waited.failure !== null) this.step(task, f, true, waited.failure);
      else this.step(task, f, false, waited.value);
    });
  }

  private drain(): void {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.queue.length > 0) {
        const jobs = this.queue;
        this.queue = [];
        for (const job of jobs) {
          try {
            job();
          } catch (err) {
            this.fault(err);
          }
        }
      }
    } finally {
      this.draining = false;
    }
  }
}

/** A value the core waits for: settled once, by resolve or reject. */
export class Future<T> {
  private state = PENDING;
  private result: T | undefined;
  private error: Error | null = null;
  private callbacks: (() => void)[] | null = null;

  constructor(private readonly sched: Scheduler) {}

  get settled(): boolean {
    return this.state !== PENDING;
  }

  /** The value, once resolved (undefined before). */
  get value(): T | undefined {
    return this.result;
  }

  /** The error, once failed; null otherwise. */
  get failure(): Error | null {
    return this.error;
  }

  resolve(value: T): void {
    if (this.state !== PENDING) return;
    this.state = DONE;
    this.result = value;
    this.wake();
  }

  reject(err: Error): void {
    if (this.state !== PENDING) return;
    this.state = FAILED;
    this.error = err;
    this.wake();
  }

  /** cb runs after the handler that settles this (queued at once when settled already). */
  whenSettled(cb: () => void): void {
    if (this.state !== PENDING) this.sched.defer(cb);
    else (this.callbacks ??= []).push(cb);
  }

  /** ok with the value, or fail with the error, once settled. */
  onDone(ok: (value: T) => void, fail: (err: Error) => void = () => undefined): void {
    this.whenSettled(() => (this.error !== null ? fail(this.error) : ok(this.result as T)));
  }

  private wake(): void {
    const cbs = this.callbacks;
    if (cbs === null) return;
    this.callbacks = null;
    for (const cb of cbs) this.sched.defer(cb);
  }
}

/** Inside a task: wait for f, then go on with its value (or its error thrown here). */
export function* wait<T>(f: Future<T>): Task<T> {
  return (yield f) as T;
}

/** Inside a task: wait for f to settle, whatever the outcome. */
export function* settle(f: Future<unknown>): Task<void> {
  try {
    yield f;
  } catch {
    // the outcome does not matter here
  }
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
