// `pagepair snapshot`: take, list, delete, roll back to and commit copy-on-write snapshots of a
// volume while it is in use (docs/snapshots.md). A snapshot is a read-only
// allocation named VOL@NAME, exported read-only over NBD under that name by
// both controllers; the command goes through whichever controller answers.

import { Command } from 'commander';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import type { CListReply } from '../protocol/messages.js';
import { formatBytes } from '../workload/units.js';
import { allocations, context, pairClient, withCommon, type CommonOpts, type VolumeCliContext } from './volume.js';

type Entry = CListReply['allocations'][number];

export interface SnapshotInfo {
  /** The snapshot's own name (after the '@'). */
  name: string;
  /** Its export name over NBD: VOL@NAME. */
  exportName: string;
  guid: string;
  volume: string;
  volumeGuid: string;
  sizeBytes: number;
}

const SNAPSHOT_NAME_RE = /^[^@/\s]{1,32}$/;

function checkSnapshotName(name: string): void {
  if (!SNAPSHOT_NAME_RE.test(name) || Buffer.byteLength(name) > 32) {
    throw new PagepairError('BAD_FIELD', `a snapshot name is 1 to 32 bytes without '@', '/' or spaces, got ${JSON.stringify(name)}`, 'name');
  }
}

function snapshotInfo(e: Entry, all: readonly Entry[]): SnapshotInfo {
  const volume = all.find((a) => a.guid === e.origin);
  const at = e.name.lastIndexOf('@');
  return {
    name: e.name.slice(at + 1),
    exportName: e.name,
    guid: e.guid,
    volume: volume?.name ?? e.name.slice(0, at),
    volumeGuid: e.origin ?? '',
    sizeBytes: e.pageCount * e.pageSizeBytes,
  };
}

/** The volume a person named (by name or guid), from the table. */
function findVolume(all: readonly Entry[], vol: string): Entry {
  const found = all.find((a) => a.name === vol || a.guid === vol);
  if (found === undefined) throw new PagepairError('UNKNOWN_GUID', `no volume "${vol}" (pagepair volume list shows them)`, 'volume');
  if (found.origin !== undefined && found.origin !== '') throw new PagepairError('READ_ONLY', `"${vol}" is a snapshot; take a snapshot of its volume instead`, 'volume');
  return found;
}

export async function createSnapshot(ctx: VolumeCliContext, vol: string, name: string): Promise<SnapshotInfo> {
  checkSnapshotName(name);
  const all = await allocations(ctx);
  const volume = findVolume(all, vol);
  const pc = await pairClient(ctx);
  try {
    const made = await pc.snapshot(volume.guid, name);
    return snapshotInfo({ ...volume, guid: made.guid, name: `${volume.name}@${name}`, origin: volume.guid }, all);
  } catch (err) {
    if (isPagepairError(err, 'DUPLICATE')) throw new PagepairError('DUPLICATE', `"${volume.name}" has a snapshot named "${name}" already (or an allocation ${volume.name}@${name} exists)`, 'name');
    if (isPagepairError(err, 'NO_SPACE')) throw new PagepairError('NO_SPACE', `no room in the store for a snapshot of "${volume.name}" (${formatBytes(volume.pageCount * volume.pageSizeBytes)}, reserved when it is made): ${err.message}`, 'volume');
    throw err;
  } finally {
    await pc.close();
  }
}

export async function listSnapshots(ctx: VolumeCliContext, vol?: string): Promise<SnapshotInfo[]> {
  const all = await allocations(ctx);
  const only = vol === undefined ? null : findVolume(all, vol).guid;
  return all
    .filter((a) => a.origin !== undefined && a.origin !== '' && (only === null || a.origin === only))
    .map((a) => snapshotInfo(a, all))
    .sort((x, y) => x.exportName.localeCompare(y.exportName));
}

export async function deleteSnapshot(ctx: VolumeCliContext, vol: string, name: string): Promise<SnapshotInfo> {
  const { found, all } = await findSnapshot(ctx, vol, name);
  const pc = await pairClient(ctx);
  try {
    await pc.release(found.guid);
  } finally {
    await pc.close();
  }
  return snapshotInfo(found, all);
}

/** The snapshot NAME of volume VOL, from the table. */
async function findSnapshot(ctx: VolumeCliContext, vol: string, name: string): Promise<{ found: Entry; all: Entry[] }> {
  const all = await allocations(ctx);
  const volume = findVolume(all, vol);
  const found = all.find((a) => a.origin === volume.guid && a.name === `${volume.name}@${name}`);
  if (found === undefined) throw new PagepairError('UNKNOWN_GUID', `"${volume.name}" has no snapshot named "${name}" (pagepair snapshot list ${volume.name} shows them)`, 'name');
  return { found, all };
}

/** The volume gets the snapshot's bytes back; pages written back. */
export async function rollbackSnapshot(ctx: VolumeCliContext, vol: string, name: string): Promise<{ snapshot: SnapshotInfo; pages: number }> {
  const { found, all } = await findSnapshot(ctx, vol, name);
  const pc = await pairClient(ctx);
  try {
    return { snapshot: snapshotInfo(found, all), pages: await pc.snapshotRollback(found.guid) };
  } finally {
    await pc.close();
  }
}

/** The volume's changes since the snapshot folded in: the snapshot taken again, now (a new guid). */
export async function commitSnapshot(ctx: VolumeCliContext, vol: string, name: string): Promise<SnapshotInfo> {
  const { found, all } = await findSnapshot(ctx, vol, name);
  const pc = await pairClient(ctx);
  try {
    const made = await pc.snapshotCommit(found.guid);
    return snapshotInfo({ ...found, guid: made.guid }, all);
  } finally {
    await pc.close();
  }
}

export function formatSnapshotList(ss: readonly SnapshotInfo[]): string {
  if (ss.length === 0) return 'no snapshots';
  const lines = ss.map((s) => `${s.exportName.padEnd(40)} ${formatBytes(s.sizeBytes).padStart(10)}  ${s.guid}`);
  const total = ss.reduce((n, s) => n + s.sizeBytes, 0);
  return [`${'snapshot (NBD export, read only)'.padEnd(40)} ${'reserved'.padStart(10)}  guid`, ...lines, `${ss.length} snapshot(s), ${formatBytes(total)} reserved`].join('\n');
}

/** The `snapshot` command, ready for program.addCommand(snapshotCommand()). */
export function snapshotCommand(): Command {
  const snapshot = new Command('snapshot').description('take, list and delete copy-on-write snapshots of a volume while it is in use (read only over NBD as VOL@NAME)');

  snapshot.addCommand(
    withCommon(
      new Command('create')
        .description('take a snapshot of the volume now: writes before it are in it, writes after it are not, none half')
        .argument('<volume>', 'the volume (name or guid)')
        .argument('<name>', "the snapshot's name: 1 to 32 bytes without '@', '/' or spaces"),
    ).action(async (vol: string, name: string, opts: CommonOpts) => {
      const s = await createSnapshot(context(opts), vol, name);
      if (opts.json === true) console.log(JSON.stringify(s, null, 2));
      else console.log(`snapshot "${s.name}" of "${s.volume}" taken: NBD export ${s.exportName} (read only), guid ${s.guid}, ${formatBytes(s.sizeBytes)} reserved`);
    }),
  );

  snapshot.addCommand(
    withCommon(new Command('list').description('list snapshots (of one volume, or all)').argument('[volume]', 'only this volume (name or guid)')).action(async (vol: string | undefined, opts: CommonOpts) => {
      const ss = await listSnapshots(context(opts), vol);
      console.log(opts.json === true ? JSON.stringify(ss, null, 2) : formatSnapshotList(ss));
    }),
  );

  snapshot.addCommand(
    withCommon(
      new Command('delete')
        .description('delete a snapshot and free the space it holds (the volume is untouched)')
        .argument('<volume>', 'the volume (name or guid)')
        .argument('<name>', "the snapshot's name"),
    ).action(async (vol: string, name: string, opts: CommonOpts) => {
      const s = await deleteSnapshot(context(opts), vol, name);
      if (opts.json === true) console.log(JSON.stringify({ deleted: s.exportName, guid: s.guid }, null, 2));
      else console.log(`snapshot ${s.exportName} deleted (${formatBytes(s.sizeBytes)} freed)`);
    }),
  );

  snapshot.addCommand(
    withCommon(
      new Command('rollback')
        .description("write the snapshot's bytes back into the volume where they differ, while it stays in use (writes meanwhile interleave run by run; quiesce them for an exact result)")
        .argument('<volume>', 'the volume (name or guid)')
        .argument('<name>', "the snapshot's name"),
    ).action(async (vol: string, name: string, opts: CommonOpts) => {
      const r = await rollbackSnapshot(context(opts), vol, name);
      if (opts.json === true) console.log(JSON.stringify({ rolledBackTo: r.snapshot.exportName, pages: r.pages }, null, 2));
      else console.log(`volume "${r.snapshot.volume}" rolled back to ${r.snapshot.exportName}: ${r.pages} pages written back`);
    }),
  );

  snapshot.addCommand(
    withCommon(
      new Command('commit')
        .description("fold the volume's changes since the snapshot into it: the snapshot is taken again now, under its name, and takes the changes from here on")
        .argument('<volume>', 'the volume (name or guid)')
        .argument('<name>', "the snapshot's name"),
    ).action(async (vol: string, name: string, opts: CommonOpts) => {
      const s = await commitSnapshot(context(opts), vol, name);
      if (opts.json === true) console.log(JSON.stringify(s, null, 2));
      else console.log(`snapshot ${s.exportName} committed: taken again now (guid ${s.guid})`);
    }),
  );

  return snapshot;
}
