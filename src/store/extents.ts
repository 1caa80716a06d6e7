// Space in the data area: which extents are taken and where a new one fits.
// Pure, so the core decides placement itself and both controllers, given the
// same table, pick the same place.

import { BLOCK_BYTES, extentBytes, roundUpToBlock } from './layout.js';
import type { AllocationRecord } from './types.js';

export { extentBytes } from './layout.js';

/** A taken range of the data area; offsets relative to the data area. */
export interface UsedExtent {
  dataOffset: number;
  bytes: number;
}

export function extentOf(r: Pick<AllocationRecord, 'dataOffset' | 'pageSizeBytes' | 'pageCount'>, alignBytes: number = BLOCK_BYTES): UsedExtent {
  return { dataOffset: r.dataOffset, bytes: extentBytes(r.pageSizeBytes, r.pageCount, alignBytes) };
}

export function extentsOf(records: readonly AllocationRecord[], alignBytes: number = BLOCK_BYTES): UsedExtent[] {
  return records.map((r) => extentOf(r, alignBytes));
}

/** Ranges sorted by start, overlaps and neighbours merged, each end rounded to alignBytes. */
function merged(used: readonly UsedExtent[], alignBytes: number): UsedExtent[] {
  const sorted = used
    .filter((u) => u.bytes > 0)
    .map((u) => ({ dataOffset: u.dataOffset, bytes: roundUpToBlock(u.dataOffset + u.bytes, alignBytes) - u.dataOffset }))
    .sort((a, b) => a.dataOffset - b.dataOffset);
  const out: UsedExtent[] = [];
  for (const u of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && u.dataOffset <= last.dataOffset + last.bytes) {
      last.bytes = Math.max(last.bytes, u.dataOffset + u.bytes - last.dataOffset);
    } else {
      out.push(u);
    }
  }
  return out;
}

/**
 * The lowest offset aligned to alignBytes (a block, or a parity pool's row)
 * where `bytes` (rounded up to it) fits between the used extents inside a
 * data area of dataBytes; -1 when no gap is large enough. First fit keeps
 * placement predictable and the free space at the end of the area in one
 * piece for as long as possible.
 */
export function findExtent(used: readonly UsedExtent[], bytes: number, dataBytes: number, alignBytes: number = BLOCK_BYTES): number {
  const need = roundUpToBlock(Math.max(bytes, 1), alignBytes);
  let cursor = 0;
  for (const u of merged(used, alignBytes)) {
    const gapStart = roundUpToBlock(cursor, alignBytes);
    if (u.dataOffset - gapStart >= need) return gapStart;
    cursor = Math.max(cursor, u.dataOffset + u.bytes);
  }
  const start = roundUpToBlock(cursor, alignBytes);
  return start + need <= dataBytes ? start : -1;
}

/** Bytes of the data area not covered by any used extent. */
export function storeBytesFree(used: readonly UsedExtent[], dataBytes: number): number {
  let taken = 0;
  for (const u of merged(used, BLOCK_BYTES)) {
    const end = Math.min(u.dataOffset + u.bytes, dataBytes);
    if (end > u.dataOffset) taken += end - u.dataOffset;
  }
  return Math.max(0, dataBytes - taken);
}

/** The largest single extent findExtent could still place. */
export function largestFreeExtentBytes(used: readonly UsedExtent[], dataBytes: number): number {
  let best = 0;
  let cursor = 0;
  for (const u of merged(used, BLOCK_BYTES)) {
    best = Math.max(best, Math.min(u.dataOffset, dataBytes) - roundUpToBlock(cursor));
    cursor = Math.max(cursor, u.dataOffset + u.bytes);
  }
  return Math.max(best, dataBytes - roundUpToBlock(cursor), 0);
}
