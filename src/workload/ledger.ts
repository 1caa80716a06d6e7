// What each grain of an engine's part may hold: the write number of its
// last acknowledged write, or, after a write that failed (it may or may not
// have landed), that and the failed ones, until a read settles which. One
// operation at a time per grain, so a read must return exactly one of them.

export const UNKNOWN_WRITE = 0xffff_ffff;

export class Ledger {
  /** Per grain: the write it holds, WRITE_ZERO (0) for zeros, UNKNOWN_WRITE before this run knows. */
  private readonly held: Uint32Array;
  /** Grains with more than one possible value. */
  private readonly maybe = new Map<number, number[]>();
  private readonly busy: Uint8Array;

  constructor(readonly grains: number, initial: 'zero' | 'unknown') {
    this.held = new Uint32Array(grains);
    if (initial === 'unknown') this.held.fill(UNKNOWN_WRITE);
    this.busy = new Uint8Array(grains);
  }

  /** Takes grains [first, first+count) for one operation, if none is taken. */
  tryReserve(first: number, count: number): boolean {
    const b = this.busy;
    for (let g = first; g < first + count; g++) if (b[g] !== 0) return false;
    b.fill(1, first, first + count);
    return true;
  }

  release(first: number, count: number): void {
    this.busy.fill(0, first, first + count);
  }

  writeAcked(first: number, count: number, writeNo: number): void {
    this.held.fill(writeNo, first, first + count);
    if (this.maybe.size > 0) for (let g = first; g < first + count; g++) this.maybe.delete(g);
  }

  writeFailed(first: number, count: number, writeNo: number): void {
    for (let g = first; g < first + count; g++) {
      const held = this.held[g]!;
      if (held === UNKNOWN_WRITE) continue;
      const list = this.maybe.get(g) ?? [held];
      list.push(writeNo);
      this.maybe.set(g, list);
    }
  }

  /** The writes grain g may hold; null when anything goes (not known in this run). */
  allowed(g: number): readonly number[] | null {
    const held = this.held[g]!;
    if (held === UNKNOWN_WRITE) return null;
    return this.maybe.get(g) ?? [held];
  }

  isAllowed(g: number, writeNo: number): boolean {
    const held = this.held[g]!;
    if (held === UNKNOWN_WRITE) return true;
    if (held === writeNo) return true;
    const list = this.maybe.get(g);
    return list !== undefined && list.includes(writeNo);
  }

  /** A read saw write writeNo in the whole grain: from now on that is what it holds. */
  settle(g: number, writeNo: number): void {
    this.held[g] = writeNo;
    this.maybe.delete(g);
  }
}
