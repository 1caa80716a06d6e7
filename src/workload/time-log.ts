// When operations completed, kept so that a caller (the kill test) can ask
// how many completed in any window and how long service stalled in it.

/** A growing array of sorted times, searchable by window. */
export class TimeLog {
  private buf = new Float64Array(1 << 14);
  private n = 0;

  push(t: number): void {
    if (this.n === this.buf.length) {
      const bigger = new Float64Array(this.buf.length * 2);
      bigger.set(this.buf);
      this.buf = bigger;
    }
    // Appended as they happen on one thread, so already in order; a caller's
    // clock that steps back a hair is clamped rather than breaking the search.
    const last = this.n > 0 ? this.buf[this.n - 1]! : -Infinity;
    this.buf[this.n++] = t < last ? last : t;
  }

  get length(): number {
    return this.n;
  }

  /** Index of the first time > t. */
  private upper(t: number): number {
    let lo = 0;
    let hi = this.n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.buf[mid]! <= t) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Entries in (fromMs, toMs]. */
  countBetween(fromMs: number, toMs: number): number {
    return Math.max(0, this.upper(toMs) - this.upper(fromMs));
  }

  /**
   * The longest stretch in [fromMs, toMs] with no entry, counting from the
   * last entry before the window (service was already stalled when the
   * window opened) to the window's end.
   */
  longestGap(fromMs: number, toMs: number): number {
    const first = this.upper(fromMs);
    const end = this.upper(toMs);
    let prev = first > 0 ? this.buf[first - 1]! : fromMs;
    let gap = 0;
    for (let i = first; i < end; i++) {
      const t = this.buf[i]!;
      if (t - prev > gap) gap = t - prev;
      prev = t;
    }
    return Math.max(gap, toMs - prev);
  }
}
