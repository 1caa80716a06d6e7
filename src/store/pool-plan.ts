// The arithmetic of a pool before it exists (issue 14): how many members a
// layout needs, its row, how many of its first bytes must be plain copies
// on every member (the store's metadata: superblock, mailbox, table), and
// how many bytes it will serve. Pure: the configuration checks a pool with
// it, and `pool create` and the controllers create one with it.

import { PagepairError } from '../protocol/errors.js';
import { computeGeometry } from './layout.js';
import { POOL_LABEL_AREA_BYTES, POOL_MEMBERS_MAX } from './pool-label.js';
import type { PoolLayout } from './pool.js';

export const POOL_LAYOUTS: readonly PoolLayout[] = ['mirror', 'parity', 'parity2'];
export const POOL_CHUNK_BYTES_DEFAULT = 64 * 1024;
/** A label names the slots out of the pool in a 32-bit map (pool-label.ts). */
export const POOL_DEVICES_MAX = POOL_MEMBERS_MAX;

export function poolParities(layout: PoolLayout): 0 | 1 | 2 {
  return layout === 'mirror' ? 0 : layout === 'parity' ? 1 : 2;
}

export function poolDevicesMin(layout: PoolLayout): number {
  return layout === 'mirror' ? 2 : layout === 'parity' ? 3 : 4;
}

export interface PoolPlanInput {
  layout: PoolLayout;
  devices: number;
  /** Parity layouts: bytes of one chunk (a multiple of 4096); ignored for a mirror. */
  chunkBytes: number;
  /** The smallest member's bytes. */
  deviceBytes: number;
  tableEntriesMax?: number;
  mailboxBytes?: number;
}

export interface PoolPlan {
  /** chunkBytes × (devices − parities); 0 for a mirror. */
  rowBytes: number;
  /** The store's dataOffset at that row: the metadata lies in no parity row. 0 for a mirror. */
  mirroredPrefixBytes: number;
  /** Bytes the pool will serve. */
  poolBytes: number;
}

/** What a pool of these members will look like, or BAD_CONFIG naming the field at fault. */
export function planPool(p: PoolPlanInput): PoolPlan {
  const min = poolDevicesMin(p.layout);
  if (!Number.isInteger(p.devices) || p.devices < min || p.devices > POOL_DEVICES_MAX) {
    throw new PagepairError('BAD_CONFIG', `a ${p.layout} pool needs ${min} to ${POOL_DEVICES_MAX} devices, got ${p.devices}`, 'devices');
  }
  const geometryOf = (deviceBytes: number, alignBytes?: number) => {
    const opts: Parameters<typeof computeGeometry>[0] = { deviceBytes };
    if (p.tableEntriesMax !== undefined) opts.tableEntriesMax = p.tableEntriesMax;
    if (p.mailboxBytes !== undefined) opts.mailboxBytes = p.mailboxBytes;
    if (alignBytes !== undefined) opts.alignBytes = alignBytes;
    return computeGeometry(opts);
  };
  if (p.layout === 'mirror') {
    const poolBytes = p.deviceBytes - POOL_LABEL_AREA_BYTES;
    geometryOf(poolBytes);
    return { rowBytes: 0, mirroredPrefixBytes: 0, poolBytes };
  }
  if (!Number.isSafeInteger(p.chunkBytes) || p.chunkBytes < 4096 || p.chunkBytes % 4096 !== 0 || p.chunkBytes > 0xffff_f000) {
    throw new PagepairError('BAD_CONFIG', `chunkBytes must be a multiple of 4096 below 4 GiB, got ${p.chunkBytes}`, 'chunkBytes');
  }
  const rowBytes = p.chunkBytes * (p.devices - poolParities(p.layout));
  if (rowBytes > 0xffff_f000) throw new PagepairError('BAD_CONFIG', `a row of ${rowBytes} bytes (chunk × data devices) is too large: at most 4 GiB`, 'chunkBytes');
  // Where the store's data area starts does not depend on the device's size: only its metadata and the row.
  const upperBytes = p.devices * p.deviceBytes;
  const mirroredPrefixBytes = geometryOf(Math.max(upperBytes, 0), rowBytes).dataOffset;
  const rows = Math.floor((p.deviceBytes - POOL_LABEL_AREA_BYTES - mirroredPrefixBytes) / p.chunkBytes);
  if (rows < 1) {
    throw new PagepairError('BAD_CONFIG', `devices of ${p.deviceBytes} bytes leave no room for one row after the labels and the ${mirroredPrefixBytes}-byte mirrored prefix the store's metadata needs`, 'deviceBytes');
  }
  const poolBytes = mirroredPrefixBytes + rows * rowBytes;
  geometryOf(poolBytes, rowBytes);
  return { rowBytes, mirroredPrefixBytes, poolBytes };
}
