// What a snapshot taken among stamped writes must look like (used by the
// simulator's and the real-process snapshot tests). The volume is cut into
// rows; every write covers one whole row with a stamp of its own (a u32
// repeated), so a row whose pages show two stamps is a write split by a
// snapshot. A snapshot must equal the volume at one instant between its
// request and its answer: for each row, the write it shows started before
// that instant, and no write that started after that one ended had ended by
// then; one instant must serve every row.

export interface RowGeometry {
  rows: number;
  rowBytes: number;
  /** Bytes of a page, to say which page of a row is wrong. */
  pageBytes: number;
}

export interface StampedWrite {
  stamp: number;
  row: number;
  startMs: number;
  /** Infinity when the write was not acknowledged (it may or may not have landed). */
  endMs: number;
}

export function rowBytes(g: RowGeometry, stamp: number): Buffer {
  const b = Buffer.alloc(g.rowBytes);
  for (let i = 0; i < g.rowBytes; i += 4) b.writeUInt32LE(stamp, i);
  return b;
}

/** The stamp a row holds (0: never written), or a description of what is wrong with it. */
export function rowStamp(g: RowGeometry, image: Buffer, row: number): number | string {
  const bytes = image.subarray(row * g.rowBytes, (row + 1) * g.rowBytes);
  const stamp = bytes.readUInt32LE(0);
  for (let i = 4; i < g.rowBytes; i += 4) {
    const other = bytes.readUInt32LE(i);
    if (other !== stamp) return `row ${row} holds stamp ${stamp} at byte 0 and ${other} at byte ${i} (page ${Math.floor(i / g.pageBytes)} of the row): a split write`;
  }
  return stamp;
}

/** Why no single instant in [startMs, endMs] gives this image, or null. */
export function cutProblem(g: RowGeometry, image: Buffer, snap: { startMs: number; endMs: number }, writes: readonly StampedWrite[]): string | null {
  let lo = snap.startMs;
  let hi = Number.POSITIVE_INFINITY;
  let hiWhy = '';
  for (let row = 0; row < g.rows; row++) {
    const stamp = rowStamp(g, image, row);
    if (typeof stamp === 'string') return stamp;
    const rowWrites = writes.filter((w) => w.row === row);
    const shown = stamp === 0 ? null : rowWrites.find((w) => w.stamp === stamp);
    if (shown === undefined) return `row ${row} holds stamp ${stamp}, which no write of that row wrote`;
    if (shown !== null && shown.startMs > lo) lo = shown.startMs;
    for (const w of rowWrites) {
      // A write that began after the shown one had ended supersedes it once it ends.
      const after = shown === null || w.startMs > shown.endMs;
      if (after && w.endMs < hi) {
        hi = w.endMs;
        hiWhy = `row ${row} shows ${stamp}, but write ${w.stamp} (after it) ended at ${w.endMs.toFixed(4)}`;
      }
    }
  }
  if (lo > snap.endMs) return `a write it shows started at ${lo.toFixed(4)}, after the snapshot was answered (${snap.endMs.toFixed(4)})`;
  if (lo >= hi) return `no instant fits: latest start shown ${lo.toFixed(4)}; ${hiWhy}`;
  return null;
}
