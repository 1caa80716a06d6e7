// `pagepair pool create` and `pagepair pool status` (issue 14): a pool's
// devices handled offline, with no controller running over them.

import { resolve } from 'node:path';
import { Command, Option } from 'commander';
import { parseNbdUrl } from '../client/nbd-client.js';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import { loadConfig } from '../runtime/config.js';
import { UnopenedDevice, closeMembers, createPool, openMembersLoose, openPool, openPoolMembers, readMemberLabels, settleNewPool, type PoolDeviceSpec, type PoolSpec } from '../store/open-pool.js';
import { PageStore } from '../store/page-store.js';
import type { PoolLabel } from '../store/pool-label.js';
import { POOL_CHUNK_BYTES_DEFAULT, POOL_LAYOUTS, planPool } from '../store/pool-plan.js';
import type { PoolLayout, PoolStatus } from '../store/pool.js';
import { formatBytes, parsePositiveInt, parseSize } from '../workload/units.js';

const DEVICE_BYTES_DEFAULT = 1024 ** 3;

/** A device as given on the command line: an nbd URI, or a path resolved against the current directory. */
export function deviceSpecOf(arg: string): PoolDeviceSpec {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(arg)) {
    parseNbdUrl(arg);
    return { kind: 'nbd', uri: arg };
  }
  return { kind: 'file', path: resolve(arg) };
}

interface CreateOpts {
  layout?: PoolLayout;
  chunkBytes?: string;
  deviceBytes?: string;
  config?: string;
  pairId?: string;
  force?: boolean;
  zeroed?: boolean;
  json?: boolean;
}

interface StatusOpts {
  config?: string;
  json?: boolean;
}

export function poolCommand(): Command {
  const pool = new Command('pool').description('make or inspect a pool of devices for the store (store.pool in the configuration), with no controller running over it; `pagepair scrub` and `pagepair device replace` check and rebuild one');

  pool.addCommand(
    new Command('create')
      .description(
        'label devices as a new pool and format the pair\'s store over it (offline: no controller may be running over them). ' +
          'Missing files are made sparse at --device-bytes. Fresh sparse files and fresh nbdkit memory exports are all zeros, which agrees with their parity; ' +
          'a pool with any other device (an existing file, any NBD export) is scrubbed with repair once, with a progress line, so that every row\'s parity or every mirror copy agrees before use.',
      )
      .argument('[devices...]', 'the devices in slot order: paths, or nbd://host:port/name, nbd+unix:///name?socket=PATH (default: store.pool.devices of --config)')
      .addOption(new Option('--layout <layout>', 'mirror (2+ devices, copies), parity (3+, one parity chunk per row), parity2 (4+, two)').choices(POOL_LAYOUTS as string[]))
      .option('--chunk-bytes <n>', `bytes of one chunk of a parity row, a multiple of 4096 (default ${POOL_CHUNK_BYTES_DEFAULT})`)
      .option('--device-bytes <size>', 'size of file devices made fresh: 1GiB, 512MiB, ... (default 1GiB; existing devices keep their size)')
      .option('-c, --config <file>', "a controller's configuration: its pairId, and store.pool for whatever is not given here")
      .option('--pair-id <uuid>', 'the pair whose store this is (or --config)')
      .option('--force', 'relabel devices that already hold a pool label (whatever they held is lost)')
      .option('--zeroed', 'every device is known to read as zeros (fresh nbdkit memory exports, blank disks): skip the scrub of the new pool')
      .option('--json', 'print the new pool as JSON')
      .action(async (devices: string[], opts: CreateOpts) => {
        const r = await runPoolCreate(devices, opts, (line) => process.stderr.write(line));
        console.log(opts.json === true ? JSON.stringify(r, null, 2) : formatPoolStatus(r.pool, r.storeNote));
      }),
  );

  pool.addCommand(
    new Command('status')
      .description("read a pool's labels and show its layout, generation and each device's state (offline: with no controller running; `pagepair status` shows a running controller's view); exits 1 when the pool is degraded or cannot be opened")
      .argument('[devices...]', 'the devices in slot order (paths or nbd:// URIs), or --config')
      .option('-c, --config <file>', "a controller's configuration: its store.pool.devices")
      .option('--json', 'print the labels and states as JSON')
      .action(async (devices: string[], opts: StatusOpts) => {
        const r = await runPoolStatus(devices, opts);
        if (opts.json === true) console.log(JSON.stringify(r, null, 2));
        else console.log(formatOfflineStatus(r));
        if (r.pool === null || r.pool.degraded) process.exitCode = 1;
      }),
  );
  return pool;
}

export interface PoolCreateResult {
  pool: PoolStatus;
  /** Rows (or mirror ranges) the scrub of a new pool rewrote; null when every device was made fresh here. */
  scrubRepaired: number | null;
  storeNote: string;
}

/** `pool create`: exported for tests. progress gets the scrub's progress lines. */
export async function runPoolCreate(args: string[], opts: CreateOpts, progress: (line: string) => void = () => undefined): Promise<PoolCreateResult> {
  const cfg = opts.config !== undefined ? loadConfig(opts.config) : null;
  const fromCfg = cfg?.store.pool ?? null;
  if (cfg !== null && fromCfg === null && args.length === 0) throw new PagepairError('BAD_FIELD', `${opts.config} has no store.pool: give the devices`, 'devices');
  const layout = opts.layout ?? fromCfg?.layout;
  if (layout === undefined) throw new PagepairError('BAD_FIELD', 'which layout? give --layout mirror|parity|parity2 (or --config)', 'layout');
  const chunkBytes = layout === 'mirror' ? 0 : opts.chunkBytes !== undefined ? parsePositiveInt(opts.chunkBytes, 'chunk-bytes') : fromCfg !== null && fromCfg.chunkBytes > 0 ? fromCfg.chunkBytes : POOL_CHUNK_BYTES_DEFAULT;
  if (layout !== 'mirror' && chunkBytes % 4096 !== 0) throw new PagepairError('BAD_FIELD', `--chunk-bytes must be a multiple of 4096, got ${chunkBytes}`, 'chunk-bytes');
  const deviceBytes = opts.deviceBytes !== undefined ? parseSize(opts.deviceBytes, 'device-bytes') : (fromCfg?.deviceBytes ?? DEVICE_BYTES_DEFAULT);
  const specs = args.length > 0 ? args.map(deviceSpecOf) : (fromCfg?.devices ?? []);
  const pairId = opts.pairId ?? cfg?.pairId;
  if (pairId === undefined) throw new PagepairError('BAD_FIELD', "whose store? give --config (a controller's configuration) or --pair-id: the store over the pool is formatted for one pair", 'pair-id');
  const tableEntriesMax = cfg?.store.tableEntriesMax;
  // The numbers first, before any device is touched.
  planPool({ layout, devices: specs.length, chunkBytes: chunkBytes === 0 ? POOL_CHUNK_BYTES_DEFAULT : chunkBytes, deviceBytes, ...(tableEntriesMax !== undefined ? { tableEntriesMax } : {}) });
  const spec: PoolSpec = { layout, chunkBytes, devices: specs, deviceBytes };
  const members = await openPoolMembers(spec, { createFiles: true });
  let closed = false;
  try {
    const labels = await readMemberLabels(members);
    const labelled = members.filter((_, i) => typeof labels[i] !== 'string');
    if (labelled.length > 0 && opts.force !== true) {
      throw new PagepairError('STORE_MISMATCH', `${labelled.map((m) => m.name).join(', ')} already ${labelled.length === 1 ? 'holds' : 'hold'} a pool label: give --force to relabel (whatever the pool held is lost)`, 'devices');
    }
    const pool = await createPool(members, { layout, chunkBytes, ...(tableEntriesMax !== undefined ? { tableEntriesMax } : {}) });
    closed = true;
    try {
      const repaired = await settleNewPool(pool, opts.zeroed === true ? members.map((m) => ({ ...m, fresh: true })) : members, {
        onProgress: progressLine('scrubbing the new pool so its redundancy agrees with its data', progress),
      });
      const store = await PageStore.format(pool, { pairId, nowMs: Date.now(), name: `${layout} pool`, ...(tableEntriesMax !== undefined ? { tableEntriesMax } : {}) });
      const g = store.superblock.geometry;
      const storeNote = `store formatted for pair ${pairId}: ${formatBytes(g.dataBytes)} of data area after ${formatBytes(g.dataOffset)} of metadata`;
      const status = pool.status();
      await store.close();
      return { pool: status, scrubRepaired: repaired, storeNote };
    } catch (err) {
      await pool.close().catch(() => undefined);
      throw err;
    }
  } finally {
    if (!closed) await closeMembers(members);
  }
}

export interface OfflineMemberInfo {
  slot: number;
  name: string;
  /** The device's newest label, or why it has none (or could not be opened). */
  label: PoolLabel | null;
  problem: string | null;
}

export interface OfflinePoolStatus {
  members: OfflineMemberInfo[];
  /** The pool as opened from these devices, or null when it cannot be (openError says why). */
  pool: PoolStatus | null;
  openError: string | null;
  /** The store over the pool: its pair and sizes, or why it cannot be read. */
  store: string | null;
}

/** The devices of a pool as given (paths, URIs) or as --config names them, and the layout the configuration says. */
function poolDevicesOf(args: string[], config: string | undefined): { specs: PoolDeviceSpec[]; layoutHint: PoolLayout | null } {
  if (args.length > 0) return { specs: args.map(deviceSpecOf), layoutHint: null };
  if (config !== undefined) {
    const cfg = loadConfig(config);
    if (cfg.store.pool === null) throw new PagepairError('BAD_FIELD', `${config} has no store.pool (its store is the file ${cfg.store.path ?? '?'})`, 'config');
    return { specs: cfg.store.pool.devices, layoutHint: cfg.store.pool.layout };
  }
  throw new PagepairError('BAD_FIELD', 'which pool? give its devices, or --config', 'devices');
}

/** Open the pool on `specs` (members that cannot be opened are failed), by the layout its labels give. */
/** A progress reporter for stderr: on a terminal one line rewritten at each percent, elsewhere a line every tenth. */
export function progressLine(what: string, write: (line: string) => void, tty = process.stderr.isTTY === true): (done: number, total: number) => void {
  let lastStep = -1;
  return (done, total) => {
    const pct = total === 0 ? 100 : Math.floor((100 * done) / total);
    const step = tty ? pct : Math.floor(pct / 10);
    if (step === lastStep) return;
    lastStep = step;
    const text = `${what}: ${pct}% of ${formatBytes(total)}`;
    write(tty ? `\r${text}${done === total ? '\n' : ''}` : `${text}\n`);
  };
}

/** `pool status`: exported for tests. Only reads. */
export async function runPoolStatus(args: string[], opts: StatusOpts): Promise<OfflinePoolStatus> {
  const { specs, layoutHint } = poolDevicesOf(args, opts.config);
  // Each device on its own: one that cannot be opened is reported, not fatal.
  const members = await openMembersLoose({ layout: layoutHint ?? 'mirror', chunkBytes: 0, devices: specs, deviceBytes: 0 });
  const labels = await readMemberLabels(members);
  const info: OfflineMemberInfo[] = members.map((m, slot) => {
    const l = labels[slot]!;
    if (m.device instanceof UnopenedDevice) return { slot, name: m.name, label: null, problem: `cannot open: ${m.device.why}` };
    return typeof l === 'string' ? { slot, name: m.name, label: null, problem: l } : { slot, name: m.name, label: l, problem: null };
  });
  let pool: PoolStatus | null = null;
  let openError: string | null = null;
  let store: string | null = null;
  const layout = info.find((i) => i.label !== null)?.label?.layout ?? layoutHint;
  if (layout === null) openError = 'no device holds a pool label';
  else {
    try {
      const p = await openPool(layout, members, { readOnly: true });
      pool = p.status();
      try {
        const s = await PageStore.open(p, { name: `${layout} pool` });
        const g = s.superblock.geometry;
        store = `formatted for pair ${s.superblock.pairId}: ${formatBytes(g.dataBytes)} of data area after ${formatBytes(g.dataOffset)} of metadata`;
      } catch (err) {
        store = `no store: ${isPagepairError(err) ? `${err.code}: ${err.message}` : String(err)}`;
      }
      await p.close();
      return { members: info, pool, openError, store };
    } catch (err) {
      openError = isPagepairError(err) ? `${err.code}: ${err.message}` : String(err);
    }
  }
  await closeMembers(members);
  return { members: info, pool, openError, store };
}

/** A pool's layout, generation, health and members, one line each (pool create, pool status and pagepair status share it). */
export function poolLines(p: PoolStatus): [string, string][] {
  const rows: [string, string][] = [
    ['pool', `${p.layout}${p.chunkBytes > 0 ? `, chunk ${formatBytes(p.chunkBytes)}` : ''}, ${formatBytes(p.sizeBytes)}, generation ${p.generation}, id ${p.poolId}`],
    ['degraded', p.degraded ? `yes: ${p.failuresTolerated} more failure${p.failuresTolerated === 1 ? '' : 's'} tolerated` : `no: ${p.failuresTolerated} failure${p.failuresTolerated === 1 ? '' : 's'} tolerated`],
  ];
  for (const m of p.members) rows.push([`  slot ${m.slot}`, `${m.state.padEnd(10)} ${m.name}${m.reason !== null ? `   (${m.reason})` : ''}`]);
  if (p.rebuild !== null) {
    const pct = p.rebuild.totalBytes === 0 ? 100 : Math.floor((100 * p.rebuild.doneBytes) / p.rebuild.totalBytes);
    rows.push(['rebuild', `slot ${p.rebuild.slot}: ${pct}%, ${formatBytes(p.rebuild.doneBytes)} of ${formatBytes(p.rebuild.totalBytes)}`]);
  }
  return rows;
}

function formatPoolStatus(p: PoolStatus, storeNote: string): string {
  return [...poolLines(p), ['store', storeNote] as [string, string]].map(([k, v]) => `${k.padEnd(13)} ${v}`).join('\n');
}

function formatOfflineStatus(r: OfflinePoolStatus): string {
  const rows: [string, string][] = [];
  for (const m of r.members) {
    rows.push([
      `device ${m.slot}`,
      `${m.name}: ${m.label !== null ? `pool ${m.label.poolId}, ${m.label.layout} slot ${m.label.slot} of ${m.label.devices}, generation ${m.label.generation}${m.label.generation === 0 ? ' (a rebuild onto it did not finish)' : ''}` : m.problem}`,
    ]);
  }
  if (r.pool !== null) rows.push(...poolLines(r.pool));
  else rows.push(['pool', `cannot be opened: ${r.openError ?? 'unknown'}`]);
  if (r.store !== null) rows.push(['store', r.store]);
  return rows.map(([k, v]) => `${k.padEnd(13)} ${v}`).join('\n');
}
