// Writers of stamped rows on a real pair, for the snapshot tests with real
// processes (test/integration/snapshots.test.ts, test/interop/
// snapshot-nbd.test.ts): each writer, NBD or WebSocket, on either controller,
// writes whole rows with a stamp of its own per write (test/sim/
// snapshot-cut.ts) until stopped, and every write's request and answer times
// are kept, on the clock the snapshots' times are taken with.

import { performance } from 'node:perf_hooks';
import { rowBytes, type RowGeometry, type StampedWrite } from '../sim/snapshot-cut.js';
import { seededInts } from './helpers.js';

/** One way to write: an NBD client or a WebSocket client on one controller. */
export interface RowWriter {
  readonly name: string;
  /** Writes `data` at `offset` of the volume; resolves once acknowledged. */
  write(offset: number, data: Buffer): Promise<void>;
}

/** The clock every time here is on (ms, monotonic). */
export const now = (): number => performance.now();

export class StampedLoad {
  readonly writes: StampedWrite[] = [];
  readonly errors: string[] = [];
  /** Acknowledged writes per writer. */
  readonly acked = new Map<string, number>();
  private nextStamp = 1;
  private stopping = false;
  private running: Promise<void> | null = null;

  constructor(
    private readonly g: RowGeometry,
    /** Where row 0 starts in the volume. */
    private readonly baseBytes: number,
    private readonly writers: readonly RowWriter[],
    private readonly seed: number,
  ) {}

  start(): void {
    this.running = Promise.all(this.writers.map((w, i) => this.loop(w, seededInts(this.seed * 31 + i)))).then(() => undefined);
  }

  /** Lets each writer finish the write it has in flight, then resolves. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.running;
  }

  /** Acknowledged writes so far (all writers). */
  get ackedTotal(): number {
    let n = 0;
    for (const v of this.acked.values()) n += v;
    return n;
  }

  private async loop(w: RowWriter, rand: (n: number) => number): Promise<void> {
    while (!this.stopping) {
      const row = rand(this.g.rows);
      const stamp = this.nextStamp++;
      const startMs = now();
      try {
        await w.write(this.baseBytes + row * this.g.rowBytes, rowBytes(this.g, stamp));
        this.writes.push({ stamp, row, startMs, endMs: now() });
        this.acked.set(w.name, (this.acked.get(w.name) ?? 0) + 1);
      } catch (err) {
        // Not acknowledged: it may or may not have landed, at any time from its start.
        this.writes.push({ stamp, row, startMs, endMs: Number.POSITIVE_INFINITY });
        this.errors.push(`${w.name} stamp ${stamp}: ${err instanceof Error ? err.message : String(err)}`);
        if (this.errors.length > 20) return;
      }
    }
  }
}
