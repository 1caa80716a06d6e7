// The pair's store over its pool, opened by a command that runs with the
// pair stopped (`pagepair device replace`, `pagepair scrub`): from one
// controller's configuration, every member opened as it can be (one that
// cannot is failed, so the pool opens degraded), the pool by the layout
// its labels give, and the store over it, checked against the pair's id.

import { PagepairError, isPagepairError } from '../protocol/errors.js';
import type { ControllerConfig, PoolConfig } from '../runtime/config.js';
import { closeMembers, openMembersLoose, openPool, readMemberLabels } from '../store/open-pool.js';
import { PageStore } from '../store/page-store.js';
import type { PoolLabel } from '../store/pool-label.js';
import type { Pool, PoolMember } from '../store/pool.js';

export interface OfflineStore {
  pool: Pool;
  store: PageStore;
  members: PoolMember[];
  /** Each member's newest label, or why it has none. */
  labels: (PoolLabel | string)[];
}

/** store.pool of a configuration; a configuration over one file is refused naming it. */
export function configuredPool(cfg: ControllerConfig): PoolConfig {
  if (cfg.store.pool === null) {
    throw new PagepairError('BAD_CONFIG', `${cfg.sourceName}: store.pool is not given (the store is the file ${cfg.store.path ?? '?'}): only a pool of devices has devices to replace or redundancy to scrub`, 'store.pool');
  }
  return cfg.store.pool;
}

/**
 * Open the pool and the store of `cfg`. readOnly: the pool writes nothing
 * (a mirror otherwise writes its next generation at once past a member it
 * cannot open). Closing the store closes the pool and its members.
 */
export async function openOfflineStore(cfg: ControllerConfig, opts: { readOnly: boolean }): Promise<OfflineStore> {
  const spec = configuredPool(cfg);
  const members = await openMembersLoose({ layout: spec.layout, chunkBytes: spec.chunkBytes, devices: spec.devices, deviceBytes: 0 });
  const labels = await readMemberLabels(members);
  const labelled = labels.find((l): l is PoolLabel => typeof l !== 'string');
  if (labelled === undefined) {
    await closeMembers(members);
    throw new PagepairError('STORE_MISMATCH', `no device of store.pool in ${cfg.sourceName} holds a pool label: ${members.map((m, i) => `${m.name}: ${String(labels[i])}`).join('; ')}`, 'store.pool.devices');
  }
  if (labelled.layout !== spec.layout) {
    await closeMembers(members);
    throw new PagepairError('STORE_MISMATCH', `${cfg.sourceName} says store.pool.layout is ${spec.layout}, but the devices' labels say ${labelled.layout}`, 'store.pool.layout');
  }
  let pool: Pool;
  try {
    pool = await openPool(spec.layout, members, { readOnly: opts.readOnly });
  } catch (err) {
    await closeMembers(members);
    throw err;
  }
  try {
    const store = await PageStore.open(pool, { pairId: cfg.pairId, name: `${spec.layout} pool` });
    return { pool, store, members, labels };
  } catch (err) {
    await pool.close().catch(() => undefined);
    if (isPagepairError(err)) throw new PagepairError(err.code, `the store over the pool of ${cfg.sourceName}: ${err.message}`, err.field);
    throw err;
  }
}
