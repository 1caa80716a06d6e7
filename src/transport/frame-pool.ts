// Frame buffers used again once the socket has written them. A 4 KiB page
// travels in a frame of a little over 4 KiB, and a fresh buffer for each one
// (Buffer.allocUnsafe does not pool sizes that large) costs about a
// microsecond to create and more to collect: as much as the rest of encoding.
// A frame is handed back by the write callback of the send that carried it,
// so its bytes are never overwritten while the socket still holds them; a
// frame whose callback never comes is simply left to the garbage collector.

/** Smallest and largest pooled capacities (powers of two). */
const CLASS_MIN = 9; // 512 bytes: smaller frames come from Node's own pool
const CLASS_MAX = 17; // 128 KiB: a WRITE_PAGE of a few dozen 4 KiB pages
/** Free buffers kept per capacity: enough for a turn's worth of frames. */
const FREE_PER_CLASS_MAX = 128;

function classOf(bytes: number): number {
  if (bytes <= 1 << CLASS_MIN) return -1;
  const c = 32 - Math.clz32(bytes - 1);
  return c <= CLASS_MAX ? c : -1;
}

export class FramePool {
  private readonly free: ArrayBuffer[][] = [];
  /** Every buffer this pool made: only those may come back. */
  private readonly ours = new WeakSet<ArrayBuffer>();
  private reused = 0;
  private created = 0;

  constructor() {
    for (let c = 0; c <= CLASS_MAX; c++) this.free.push([]);
  }

  /** A buffer of exactly `bytes` (contents undefined), pooled when its size is. */
  readonly take = (bytes: number): Buffer => {
    const c = classOf(bytes);
    if (c < 0) return Buffer.allocUnsafe(bytes);
    const ab = this.free[c]!.pop();
    if (ab !== undefined) {
      this.reused++;
      return Buffer.from(ab, 0, bytes);
    }
    this.created++;
    const made = new ArrayBuffer(1 << c);
    this.ours.add(made);
    return Buffer.from(made, 0, bytes);
  };

  /** Gives a frame from take() back; anything else is ignored. Call only once nothing reads it any more. */
  give(frame: Buffer): void {
    const ab = frame.buffer;
    if (frame.byteOffset !== 0 || !(ab instanceof ArrayBuffer) || !this.ours.has(ab)) return;
    const list = this.free[classOf(ab.byteLength)]!;
    // Twice the same buffer in the list would hand it to two frames at once.
    if (list.length < FREE_PER_CLASS_MAX && !list.includes(ab)) list.push(ab);
  }

  /** A write callback that hands `frame` back once the socket is done with it. */
  giveBackAfter(frame: Buffer): (err?: Error | null) => void {
    return () => this.give(frame);
  }

  get stats(): { reused: number; created: number } {
    return { reused: this.reused, created: this.created };
  }
}

/** The process's pool, shared by every connection. */
export const FRAMES = new FramePool();
