// Virtual time for the simulator: events run one at a time in (time, order of
// scheduling) order, and after each one every promise continuation the event
// set off runs before the next event. Background events (ticks) keep time
// moving but do not count as work in progress when asking whether the
// simulation is quiet.

export interface SimEvent {
  atMs: number;
  seq: number;
  label: string;
  background: boolean;
  run(): void;
}

export class Scheduler {
  nowMs = 0;
  steps = 0;
  private readonly heap: SimEvent[] = [];
  private seq = 0;
  private foreground = 0;
  /** Called after every event has run and settled (checkers, samplers). */
  readonly afterEachStep: (() => void)[] = [];

  constructor(private readonly describe: () => string) {}

  /** Events scheduled and not yet run, ticks excluded. */
  get pendingWork(): number {
    return this.foreground;
  }

  get pendingEvents(): number {
    return this.heap.length;
  }

  at(atMs: number, label: string, run: () => void, background = false): void {
    const ev: SimEvent = { atMs: Math.max(atMs, this.nowMs), seq: this.seq++, label, background, run };
    if (!background) this.foreground++;
    this.heap.push(ev);
    this.siftUp(this.heap.length - 1);
  }

  after(delayMs: number, label: string, run: () => void, background = false): void {
    this.at(this.nowMs + delayMs, label, run, background);
  }

  /** Run the next event and let what it set off settle. False when there is none. */
  async step(): Promise<boolean> {
    const ev = this.pop();
    if (ev === undefined) return false;
    if (!ev.background) this.foreground--;
    this.nowMs = Math.max(this.nowMs, ev.atMs);
    this.steps++;
    ev.run();
    await settleMicrotasks();
    for (const f of this.afterEachStep) f();
    return true;
  }

  /** Run events until pred holds; throws when maxSteps pass or nothing is left to run. */
  async runUntil(pred: () => boolean, what: string, maxSteps = 200_000): Promise<void> {
    for (let n = 0; !pred(); n++) {
      if (n >= maxSteps) throw new Error(`sim: ${what} not reached after ${maxSteps} steps (${this.describe()})`);
      if (!(await this.step())) throw new Error(`sim: ${what} not reached and nothing left to run (${this.describe()})`);
    }
  }

  /** Run every event due up to now + ms, then stand at that time. */
  async advance(ms: number, maxSteps = 1_000_000): Promise<void> {
    const target = this.nowMs + ms;
    for (let n = 0; ; n++) {
      const next = this.heap[0];
      if (next === undefined || next.atMs > target) break;
      if (n >= maxSteps) throw new Error(`sim: advancing ${ms} ms took over ${maxSteps} steps (${this.describe()})`);
      await this.step();
    }
    this.nowMs = target;
  }

  private pop(): SimEvent | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (top === undefined || last === undefined) return undefined;
    if (h.length > 0) {
      h[0] = last;
      this.siftDown(0);
    }
    return top;
  }

  private less(i: number, j: number): boolean {
    const a = this.heap[i]!;
    const b = this.heap[j]!;
    return a.atMs < b.atMs || (a.atMs === b.atMs && a.seq < b.seq);
  }

  private swap(i: number, j: number): void {
    const h = this.heap;
    const t = h[i]!;
    h[i] = h[j]!;
    h[j] = t;
  }

  private siftUp(i: number): void {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.less(i, parent)) return;
      this.swap(i, parent);
      i = parent;
    }
  }

  private siftDown(i: number): void {
    const n = this.heap.length;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < n && this.less(l, m)) m = l;
      if (r < n && this.less(r, m)) m = r;
      if (m === i) return;
      this.swap(i, m);
      i = m;
    }
  }
}

/** setImmediate runs after the microtask queue is empty: every continuation has run. */
function settleMicrotasks(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
