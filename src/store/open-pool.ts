// Opening the pair's store over a pool of devices (issue 14; store.pool in
// the configuration): every member (a file, made sparse at deviceBytes when
// missing, or a remote NBD export), then the pool by its layout, then the
// block store over it.
//
// When no member holds a pool label yet, one of two controllers starting
// together creates the pool and formats the store: the one that makes the
// lock file next to the first file device (O_EXCL); the other waits until
// the store appears, as openOrFormatFileStore does for one file. A lock
// left by a process of this machine that is gone is taken over. A pool
// with no file device has nowhere to put that lock, so it is never created
// by a controller: `pagepair pool create` does it.
//
// A new pool's redundancy must agree with its data from the start (a
// parity row's P and Q with its data chunks, a mirror's copies with each
// other). Fresh sparse files, and fresh nbdkit memory exports, are all
// zeros, which agrees; a pool with any other member is scrubbed with
// repair once before the store is formatted.

import { open as openFile, mkdir, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, isAbsolute } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import { POOL_LABEL_READ_BYTES } from './pool-label.js';
import { FileDevice } from './file-device.js';
import { MirrorDevice } from './mirror-device.js';
import { NbdDevice } from './nbd-device.js';
import { STORE_DIR_MODE, STORE_WAIT_MS_DEFAULT } from './open.js';
import { PageStore } from './page-store.js';
import { ParityDevice, type ParityCreateOptions } from './parity-device.js';
import { newestPoolLabel, type PoolLabel } from './pool-label.js';
import { planPool } from './pool-plan.js';
import type { MemberOpener, Pool, PoolLayout, PoolMember, ProgressOptions } from './pool.js';
import type { Device } from './types.js';

/** A member as the configuration names it. */
export type PoolDeviceSpec = { kind: 'file'; path: string } | { kind: 'nbd'; uri: string };

export interface PoolSpec {
  layout: PoolLayout;
  /** Parity layouts: bytes of one chunk; 0 for a mirror. */
  chunkBytes: number;
  devices: readonly PoolDeviceSpec[];
  /** Size of a file device made fresh. */
  deviceBytes: number;
}

export function poolDeviceSpecName(d: PoolDeviceSpec): string {
  return d.kind === 'file' ? d.path : d.uri;
}

/** The lock file that decides which controller creates a pool: next to its first file device. */
export function poolCreateLockPath(spec: PoolSpec): string | null {
  const first = spec.devices.find((d) => d.kind === 'file');
  return first === undefined ? null : `${first.path}.pool-create.lock`;
}

/** A member opened, and whether this call made its file (all zeros). */
interface OpenedMember extends PoolMember {
  fresh: boolean;
}

/**
 * Open every member: files (made sparse at deviceBytes when missing and
 * `createFiles`), NBD exports connected. On a failure the ones opened are
 * closed again.
 */
export async function openPoolMembers(spec: PoolSpec, opts: { createFiles: boolean }): Promise<OpenedMember[]> {
  const opened: OpenedMember[] = [];
  try {
    for (const d of spec.devices) {
      if (d.kind === 'nbd') {
        opened.push({ name: d.uri, device: await NbdDevice.connect(d.uri), fresh: false });
        continue;
      }
      if (opts.createFiles) {
        try {
          await mkdir(dirname(d.path), { recursive: true, mode: STORE_DIR_MODE });
        } catch (err) {
          throw new PagepairError('IO_ERROR', `${d.path}: cannot make parent directory: ${(err as Error).message}`);
        }
        try {
          opened.push({ name: d.path, device: await FileDevice.create(d.path, spec.deviceBytes, { exclusive: true }), fresh: true });
          continue;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        }
      }
      opened.push({ name: d.path, device: await FileDevice.open(d.path), fresh: false });
    }
    return opened;
  } catch (err) {
    await closeMembers(opened);
    throw err;
  }
}

/**
 * A member device by the name a pool label records: an nbd://, nbds://,
 * nbd+unix:// or nbds+unix:// URI, else a file path (absolute: the two
 * controllers may not share a working directory). How a pool object takes up
 * the device the other controller's is rebuilding a slot onto (MemberOpener),
 * and how a controller opens the device it is asked to rebuild onto
 * (createBytes: a missing file is made sparse at that size).
 */
export async function openMemberByName(name: string, opts: { createBytes?: number } = {}): Promise<Device> {
  if (/^nbds?(\+unix)?:\/\//.test(name)) return NbdDevice.connect(name);
  if (!isAbsolute(name)) throw new PagepairError('BAD_FIELD', `device ${JSON.stringify(name)} is neither an nbd URI nor an absolute path`, 'device');
  if (opts.createBytes !== undefined) {
    try {
      await mkdir(dirname(name), { recursive: true, mode: STORE_DIR_MODE });
      return await FileDevice.create(name, opts.createBytes, { exclusive: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  return FileDevice.open(name);
}

/** A member that could not be opened: every operation fails with why, so a pool opens without it (as failed). */
export class UnopenedDevice implements Device {
  /** It limits nothing: the pool's size comes from the others' labels. */
  readonly sizeBytes = Number.MAX_SAFE_INTEGER;
  constructor(
    readonly name: string,
    readonly why: string,
  ) {}
  read(): Promise<Buffer> {
    return Promise.reject(this.error());
  }
  write(): Promise<void> {
    return Promise.reject(this.error());
  }
  sync(): Promise<void> {
    return Promise.reject(this.error());
  }
  async close(): Promise<void> {}
  private error(): PagepairError {
    return new PagepairError('IO_ERROR', `${this.name}: cannot be opened: ${this.why}`);
  }
}

/**
 * Open every member of an existing pool; one that cannot be opened (a file
 * gone, an export whose server does not answer) becomes an UnopenedDevice,
 * so the pool opens degraded rather than not at all.
 */
export async function openMembersLoose(spec: PoolSpec): Promise<OpenedMember[]> {
  const opened: OpenedMember[] = [];
  for (const d of spec.devices) {
    const name = poolDeviceSpecName(d);
    try {
      opened.push({ name, device: d.kind === 'file' ? await FileDevice.open(d.path) : await NbdDevice.connect(d.uri), fresh: false });
    } catch (err) {
      opened.push({ name, device: new UnopenedDevice(name, err instanceof Error ? err.message : String(err)), fresh: false });
    }
  }
  return opened;
}

export async function closeMembers(members: readonly PoolMember[]): Promise<void> {
  await Promise.all(members.map((m) => m.device.close().catch(() => undefined)));
}

/** Each member's newest label, or why it has none (a read that fails says so too). */
export async function readMemberLabels(members: readonly PoolMember[]): Promise<(PoolLabel | string)[]> {
  return Promise.all(
    members.map(async (m) => {
      try {
        if (m.device.sizeBytes < 8192) return `too small for a pool label (${m.device.sizeBytes} bytes)`;
        const [c0, c1] = await Promise.all([m.device.read(0, POOL_LABEL_READ_BYTES), m.device.read(4096, POOL_LABEL_READ_BYTES)]);
        return newestPoolLabel(Buffer.from(c0), Buffer.from(c1));
      } catch (err) {
        return `label read failed: ${err instanceof Error ? err.message : String(err)}`;
      }
    }),
  );
}

/**
 * Open the pool its members' labels describe (a layout other than `layout`
 * is refused). readOnly: write nothing, even when a member cannot be read
 * (a mirror otherwise moves the generation on past it at once).
 */
export async function openPool(layout: PoolLayout, members: readonly PoolMember[], opts: { readOnly?: boolean; openMember?: MemberOpener } = {}): Promise<Pool> {
  const shared = opts.openMember !== undefined ? { openMember: opts.openMember } : {};
  if (layout === 'mirror') return MirrorDevice.open(members, opts.readOnly === true ? { ...shared, readOnly: true } : shared);
  return ParityDevice.open(members, shared);
}

export interface CreatePoolOptions {
  layout: PoolLayout;
  /** How the new pool opens a device the other controller's pool object rebuilds onto (pool-rebuild.ts). */
  openMember?: MemberOpener;
  chunkBytes: number;
  tableEntriesMax?: number;
  mailboxBytes?: number;
  poolId?: string;
}

/**
 * Label `members` as a new pool. A parity pool's mirrored prefix is the
 * store's metadata at its row (pool-plan.ts), so the store formatted over it
 * next fits.
 */
export async function createPool(members: readonly PoolMember[], opts: CreatePoolOptions): Promise<Pool> {
  const smallest = Math.min(...members.map((m) => m.device.sizeBytes));
  const planIn: Parameters<typeof planPool>[0] = { layout: opts.layout, devices: members.length, chunkBytes: opts.chunkBytes, deviceBytes: smallest };
  if (opts.tableEntriesMax !== undefined) planIn.tableEntriesMax = opts.tableEntriesMax;
  if (opts.mailboxBytes !== undefined) planIn.mailboxBytes = opts.mailboxBytes;
  const plan = planPool(planIn);
  const shared = opts.openMember !== undefined ? { openMember: opts.openMember } : {};
  if (opts.layout === 'mirror') return MirrorDevice.create(members, opts.poolId, shared);
  const create: ParityCreateOptions = { layout: opts.layout, chunkBytes: opts.chunkBytes, mirroredPrefixBytes: plan.mirroredPrefixBytes, ...shared };
  if (opts.poolId !== undefined) create.poolId = opts.poolId;
  return ParityDevice.create(members, create);
}

/**
 * After createPool over members not all made fresh here: make every row's
 * redundancy agree with its data (a scrub with repair). Resolves with the
 * rows (or mirror ranges) it rewrote.
 */
export async function settleNewPool(pool: Pool, members: readonly OpenedMember[] | readonly PoolMember[], progress: ProgressOptions = {}): Promise<number | null> {
  if (members.every((m) => 'fresh' in m && m.fresh)) return null;
  const report = await pool.scrub({ ...progress, repair: true });
  return report.repaired;
}

export interface OpenPoolStoreOptions {
  pairId: string;
  nowMs: number;
  tableEntriesMax?: number;
  mailboxBytes?: number;
  /** How long to wait for a partner creating the pool to finish. */
  waitMs?: number;
  /** Told what happens (creating, scrubbing a new pool). */
  onEvent?(what: string, detail: Record<string, unknown>): void;
  /** The members as the pool will use them (a test hook puts them behind a gate). */
  wrapMembers?(members: readonly PoolMember[]): PoolMember[];
  /** How the pool opens a device the partner's pool object is rebuilding onto (default: openMemberByName). */
  openMember?: MemberOpener;
}

const RETRY_INTERVAL_MS = 50;
/** How many times a missing file member beside labelled ones is looked for again (RETRY_INTERVAL_MS apart) before the pool opens without it. */
const UNMADE_LOOKS = 40;

/**
 * The pair's store over the pool `spec` describes; created (pool and store)
 * when no member holds a pool label, by the controller that takes the
 * create lock. Resolves with the store and the pool under it.
 */
export async function openOrCreatePoolStore(spec: PoolSpec, opts: OpenPoolStoreOptions): Promise<{ store: PageStore; pool: Pool }> {
  const lockPath = poolCreateLockPath(spec);
  const waitMs = opts.waitMs ?? STORE_WAIT_MS_DEFAULT;
  const deadline = Date.now() + waitMs;
  const storeName = `${spec.layout} pool of ${spec.devices.map(poolDeviceSpecName).join(', ')}`;
  for (;;) {
    const attempt = await tryOpen(spec, opts, storeName, lockPath);
    if (attempt.kind === 'open') return attempt.value;
    if (Date.now() >= deadline) {
      const lockNote = lockPath !== null && (await exists(lockPath)) ? ` (${lockPath} is still there: remove it if no controller is creating the pool)` : '';
      throw new PagepairError(attempt.code, `${storeName}: ${attempt.why}, after waiting ${waitMs} ms for it to be created${lockNote}`, 'store.pool');
    }
    await sleep(RETRY_INTERVAL_MS);
  }
}

type Attempt = { kind: 'open'; value: { store: PageStore; pool: Pool } } | { kind: 'wait'; code: 'STORE_CORRUPT' | 'STORE_MISMATCH'; why: string };

async function tryOpen(spec: PoolSpec, opts: OpenPoolStoreOptions, storeName: string, lockPath: string | null): Promise<Attempt> {
  // Files are not made here: while someone may be creating the pool, only the lock holder makes them.
  let members = await openMembersLoose(spec);
  let labels = await readMemberLabels(members);
  // A file member missing beside labelled ones is most likely one the partner creating the pool had
  // not made yet when we opened it (it makes them in turn, labels them, then lets go of the lock):
  // look again for a while before opening without it.
  const unmade = (): boolean => members.some((m, i) => m.device instanceof UnopenedDevice && spec.devices[i]!.kind === 'file');
  for (let look = 0; look < UNMADE_LOOKS && labels.some((l) => typeof l !== 'string') && unmade(); look++) {
    await closeMembers(members);
    await sleep(RETRY_INTERVAL_MS);
    members = await openMembersLoose(spec);
    labels = await readMemberLabels(members);
  }
  // A member that cannot be opened does not keep a pool that exists from opening (degraded).
  if (labels.some((l) => typeof l !== 'string')) return openLabelled(spec, members, opts, storeName);
  await closeMembers(members);
  const unreachable = members.flatMap((m, i) => (m.device instanceof UnopenedDevice && spec.devices[i]!.kind === 'nbd' ? [`${m.name}: ${m.device.why}`] : []));
  if (unreachable.length > 0) throw new PagepairError('IO_ERROR', `${storeName}: no member holds a pool label, and some cannot be reached: ${unreachable.join('; ')}`, 'store.pool');
  if (lockPath === null) {
    throw new PagepairError('STORE_MISMATCH', `${storeName}: no member holds a pool label, and a pool of remote devices only is not created by a controller: run pagepair pool create`, 'store.pool');
  }
  const lock = await takeLock(lockPath);
  if (!lock) return { kind: 'wait', code: 'STORE_CORRUPT', why: 'the partner is creating the pool' };
  try {
    const members = await openPoolMembers(spec, { createFiles: true });
    const labels = await readMemberLabels(members);
    // Created and let go between our look and our lock: open it as it is.
    if (labels.some((l) => typeof l !== 'string')) return await openLabelled(spec, members, opts, storeName);
    let pool: Pool;
    try {
      opts.onEvent?.('creating pool', { layout: spec.layout, devices: members.map((m) => m.name) });
      const create: CreatePoolOptions = { layout: spec.layout, chunkBytes: spec.chunkBytes, openMember: opts.openMember ?? ((name) => openMemberByName(name)) };
      if (opts.tableEntriesMax !== undefined) create.tableEntriesMax = opts.tableEntriesMax;
      if (opts.mailboxBytes !== undefined) create.mailboxBytes = opts.mailboxBytes;
      pool = await createPool(members, create);
    } catch (err) {
      await closeMembers(members);
      throw err;
    }
    try {
      const repaired = await settleNewPool(pool, members);
      if (repaired !== null) opts.onEvent?.('new pool scrubbed', { repaired });
      const format: Parameters<typeof PageStore.format>[1] = { pairId: opts.pairId, nowMs: opts.nowMs, name: storeName };
      if (opts.tableEntriesMax !== undefined) format.tableEntriesMax = opts.tableEntriesMax;
      if (opts.mailboxBytes !== undefined) format.mailboxBytes = opts.mailboxBytes;
      return { kind: 'open', value: { store: await PageStore.format(pool, format), pool } };
    } catch (err) {
      await pool.close().catch(() => undefined);
      throw err;
    }
  } finally {
    await unlink(lockPath).catch(() => undefined);
  }
}

/** Open the pool the labels describe and the store over it; a store not there yet is waited for. */
async function openLabelled(spec: PoolSpec, members: OpenedMember[], opts: OpenPoolStoreOptions, storeName: string): Promise<Attempt> {
  let pool: Pool;
  try {
    pool = await openPool(spec.layout, opts.wrapMembers?.(members) ?? members, { openMember: opts.openMember ?? ((name) => openMemberByName(name)) });
  } catch (err) {
    await closeMembers(members);
    // Labels half written: the creator is still at it.
    if (isPagepairError(err, 'STORE_MISMATCH') && /no pool label/.test(err.message)) return { kind: 'wait', code: 'STORE_MISMATCH', why: err.message };
    throw err;
  }
  try {
    return { kind: 'open', value: { store: await PageStore.open(pool, { pairId: opts.pairId, name: storeName }), pool } };
  } catch (err) {
    await pool.close().catch(() => undefined);
    if (isPagepairError(err, 'STORE_CORRUPT')) return { kind: 'wait', code: 'STORE_CORRUPT', why: `the pool holds no store yet (${err.message})` };
    throw err;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** What the lock file holds: who made it, so a lock left by a process gone can be told from one in use. */
function lockOwner(): string {
  return `${hostname()} ${process.pid}\n`;
}

/**
 * The lock file's maker is a process of this machine that is gone (it died
 * while creating): the lock protects nothing any more. A lock made on
 * another machine, or unreadable, is never judged stale here.
 */
async function lockLeftByTheDead(path: string): Promise<boolean> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return false;
  }
  const m = /^(\S+) (\d+)\n$/.exec(text);
  if (m === null || m[1] !== hostname()) return false;
  const pid = Number(m[2]);
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/**
 * Make the lock file (O_EXCL): true when it is ours. One left by a dead
 * process of this machine is taken over: under a second O_EXCL file (two
 * starting at once may both find it dead), judged again, and overwritten
 * with our name, never removed (removing could remove a live one made
 * meanwhile).
 */
async function takeLock(path: string): Promise<boolean> {
  try {
    await mkdir(dirname(path), { recursive: true, mode: STORE_DIR_MODE });
    const h = await openFile(path, 'wx', 0o600);
    await h.writeFile(lockOwner());
    await h.close();
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new PagepairError('IO_ERROR', `${path}: cannot make the pool's create lock: ${(err as Error).message}`);
  }
  if (!(await lockLeftByTheDead(path))) return false;
  const takeover = `${path}.takeover`;
  try {
    await (await openFile(takeover, 'wx', 0o600)).close();
  } catch {
    return false;
  }
  try {
    if (!(await lockLeftByTheDead(path))) return false;
    await writeFile(path, lockOwner());
    return true;
  } finally {
    await unlink(takeover).catch(() => undefined);
  }
}
