// Small helpers the rooms of the core share: page arithmetic and runs.

import { PagepairError } from '../protocol/errors.js';
import type { AllocState } from './allocation.js';

/** Rounds a write or flush retries when ownership keeps moving. */
export const OWNERSHIP_ROUNDS_MAX = 64;

export type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

export const EMPTY = Buffer.alloc(0);
export const ZERO_GUID = '00000000-0000-0000-0000-000000000000';

export function unknownGuid(guid: string): PagepairError {
  return new PagepairError('UNKNOWN_GUID', `no allocation ${guid}`, 'guid');
}

/** The version of an uncached page, when known without reading it; NaN when not. */
export function knownVersion(alloc: AllocState, page: number): number {
  return alloc.knownVersions?.[page] ?? Number.NaN;
}

/** The new contents of page `pageStart`: the old ones with the written bytes laid over. */
export function overlay(old: Buffer, pageSize: number, pageStart: number, offset: number, data: Buffer): Buffer {
  const page = Buffer.allocUnsafe(pageSize);
  const from = Math.max(offset, pageStart);
  const to = Math.min(offset + data.length, pageStart + pageSize);
  if (from > pageStart || to < pageStart + pageSize) old.copy(page, 0, 0, pageSize);
  data.copy(page, from - pageStart, from - offset, to - offset);
  return page;
}

/** The written bytes laid over page `pageStart` in its own buffer, which is returned. */
export function overlayInPlace(page: Buffer, pageStart: number, offset: number, data: Buffer): Buffer {
  const from = Math.max(offset, pageStart);
  const to = Math.min(offset + data.length, pageStart + page.length);
  data.copy(page, from - pageStart, from - offset, to - offset);
  return page;
}

export function copyInto(target: Buffer, source: Buffer): Buffer {
  source.copy(target);
  return target;
}

/** Maximal runs of pages in [first, first+count) where pred holds, as [first, count]. */
export function runs(first: number, count: number, pred: (p: number) => boolean): [number, number][] {
  const out: [number, number][] = [];
  let start = -1;
  for (let p = first; p < first + count; p++) {
    if (pred(p)) {
      if (start < 0) start = p;
    } else if (start >= 0) {
      out.push([start, p - start]);
      start = -1;
    }
  }
  if (start >= 0) out.push([start, first + count - start]);
  return out;
}

/** Runs of consecutive page numbers from a sorted list, each at most `maxRun` long. */
export function pageRuns(sorted: number[], maxRun = Number.MAX_SAFE_INTEGER): [number, number][] {
  const out: [number, number][] = [];
  for (const p of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && last[0] + last[1] === p && last[1] < maxRun) last[1]++;
    else out.push([p, 1]);
  }
  return out;
}

export function hex(crc: number): string {
  return (crc >>> 0).toString(16).padStart(8, '0');
}
