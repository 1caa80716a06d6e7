// The registers of the simulated workload. Every page of an allocation is cut
// into cells at seeded, unaligned offsets (with the odd gap that no write
// ever covers); a cell is a register the history checker judges. A write
// fills each cell it covers with a pattern naming the write's value and the
// cell, so a read tells which write a cell holds, and a cell holding anything
// else (half of two writes, another cell's bytes) is seen as garbage.

import type { Prng } from './prng.js';

export interface Cell {
  /** Index in the cell list: cells of one allocation are contiguous, in offset order. */
  index: number;
  alloc: number;
  /** Byte offset in its allocation. */
  offset: number;
  length: number;
  key: string;
}

const RECORD_BYTES = 16;
export const CELL_BYTES_MIN = 24;

/** Cuts every page of every allocation into cells; cells never cross a page. */
export function layCells(rng: Prng, allocs: number, pagesPerAlloc: number, pageBytes: number): Cell[] {
  const cells: Cell[] = [];
  for (let a = 0; a < allocs; a++) {
    for (let p = 0; p < pagesPerAlloc; p++) {
      let at = p * pageBytes;
      const end = at + pageBytes;
      while (end - at >= CELL_BYTES_MIN) {
        // A gap now and then: bytes no write covers, which must stay zero.
        if (rng.chance(0.1)) at += 1 + rng.int(40);
        let length = CELL_BYTES_MIN + rng.int(100);
        if (at + length > end) break;
        if (end - (at + length) < CELL_BYTES_MIN) length = end - at;
        cells.push({ index: cells.length, alloc: a, offset: at, length, key: `a${a}:${at}` });
        at += length;
      }
    }
  }
  return cells;
}

/** The bytes of `cell` holding write value `value` (0: never written, all zeros). */
export function cellBytes(cell: Cell, value: number): Buffer {
  const b = Buffer.alloc(cell.length);
  if (value === 0) return b;
  const rec = Buffer.alloc(RECORD_BYTES);
  rec.writeUInt32LE(value >>> 0, 0);
  rec.writeUInt32LE(cell.index, 4);
  rec.writeUInt32LE((value ^ 0xa5a5a5a5) >>> 0, 8);
  rec.writeUInt32LE(((cell.offset << 8) ^ cell.alloc ^ 0x5a5a5a5a) >>> 0, 12);
  for (let i = 0; i < cell.length; i += RECORD_BYTES) rec.copy(b, i, 0, Math.min(RECORD_BYTES, cell.length - i));
  return b;
}

/** Which write value the bytes hold, or null when they are no write's pattern for this cell. */
export function decodeCell(cell: Cell, bytes: Buffer): number | null {
  if (bytes.every((x) => x === 0)) return 0;
  const value = bytes.readUInt32LE(0);
  return value > 0 && cellBytes(cell, value).equals(bytes) ? value : null;
}

/** The bytes a write of `value` to cells[first..last] sends: the cells' patterns, zeros in the gaps. */
export function writeBytes(cells: readonly Cell[], value: number): { offset: number; data: Buffer } {
  const first = cells[0]!;
  const last = cells[cells.length - 1]!;
  const data = Buffer.alloc(last.offset + last.length - first.offset);
  for (const c of cells) cellBytes(c, value).copy(data, c.offset - first.offset);
  return { offset: first.offset, data };
}

/** Values of the cells in `bytes` (read from `offset`); gap bytes that are not zero are reported. */
export function readCells(cells: readonly Cell[], offset: number, bytes: Buffer): { values: (number | null)[]; dirtyGapAt: number | null } {
  const values = cells.map((c) => decodeCell(c, bytes.subarray(c.offset - offset, c.offset - offset + c.length)));
  let at = offset;
  let dirtyGapAt: number | null = null;
  for (const c of cells) {
    for (let i = at; i < c.offset && dirtyGapAt === null; i++) if (bytes[i - offset] !== 0) dirtyGapAt = i;
    at = c.offset + c.length;
  }
  return { values, dirtyGapAt };
}
