// Where the next operation lands. A picker chooses, for an operation of a
// given size, which size-aligned position of a part of the working set it
// covers. Random pickers hold no state besides the generator; the
// sequential one walks a cursor shared by all sizes, so a mix of sizes still
// streams through the part in order.

import type { Prng } from '../core/prng.js';
import type { Distribution } from './job.js';

export interface Picker {
  /** The index of the position, of `positions` aligned positions of this size. */
  pick(sizeBytes: number, positions: number): number;
}

export function makePicker(d: Distribution, rng: Prng): Picker {
  switch (d.kind) {
    case 'uniform':
      return { pick: (_size, positions) => rng.below(positions) };
    case 'hotspot':
      return hotspotPicker(d.opsPct, d.blocksPct, rng);
    case 'zipf':
      return zipfPicker(d.theta, rng);
    case 'sequential':
      return sequentialPicker();
  }
}

function hotspotPicker(opsPct: number, blocksPct: number, rng: Prng): Picker {
  return {
    pick(_size, positions) {
      const hot = Math.min(positions, Math.max(1, Math.round((positions * blocksPct) / 100)));
      const cold = positions - hot;
      if (cold === 0 || rng.next() * 100 < opsPct) return rng.below(hot);
      return hot + rng.below(cold);
    },
  };
}

/**
 * Zipf over ranks 0..n-1 (rank r drawn with weight 1/(r+1)^theta), by the
 * inverse of its cumulative distribution: exact for every theta, one table
 * per number of positions (a few, one per block size), O(log n) per pick.
 * Rank 0 is the first position: the hot blocks sit at the start of a part.
 */
function zipfPicker(theta: number, rng: Prng): Picker {
  const tables = new Map<number, Float64Array>();
  const table = (n: number): Float64Array => {
    let cdf = tables.get(n);
    if (cdf === undefined) {
      cdf = zipfCdf(n, theta);
      tables.set(n, cdf);
    }
    return cdf;
  };
  return {
    pick(_size, positions) {
      const cdf = table(positions);
      const u = rng.next();
      let lo = 0;
      let hi = positions - 1;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (cdf[mid]! > u) hi = mid;
        else lo = mid + 1;
      }
      return lo;
    },
  };
}

export function zipfCdf(n: number, theta: number): Float64Array {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let r = 0; r < n; r++) {
    sum += 1 / Math.pow(r + 1, theta);
    cdf[r] = sum;
  }
  for (let r = 0; r < n; r++) cdf[r] = cdf[r]! / sum;
  cdf[n - 1] = 1;
  return cdf;
}

function sequentialPicker(): Picker {
  let cursorBytes = 0;
  return {
    pick(sizeBytes, positions) {
      let index = Math.ceil(cursorBytes / sizeBytes);
      if (index >= positions) index = 0;
      cursorBytes = (index + 1) * sizeBytes;
      return index;
    },
  };
}

/** Picks a block size of a mix by its share. */
export function makeSizePicker(shares: readonly { bytes: number; pct: number }[], rng: Prng): () => number {
  if (shares.length === 1) {
    const only = shares[0]!.bytes;
    return () => only;
  }
  const bounds = new Float64Array(shares.length);
  let sum = 0;
  shares.forEach((s, i) => {
    sum += s.pct;
    bounds[i] = sum;
  });
  const sizes = shares.map((s) => s.bytes);
  return () => {
    const u = rng.next() * sum;
    for (let i = 0; i < bounds.length - 1; i++) if (u < bounds[i]!) return sizes[i]!;
    return sizes[sizes.length - 1]!;
  };
}
