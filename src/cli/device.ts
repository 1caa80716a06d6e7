// `pagepair device replace` (issue 14, part 3): put a new device in one slot
// of the pair's pool and rebuild it from the others. While the pair serves,
// a controller that answers runs the rebuild itself (C_POOL_JOB; its pool
// object holds off the partner's writes to what it copies) and the command
// follows it (online-job.ts). With the pair stopped the command opens the
// pool and rebuilds it here, after looking for a live controller that did
// not answer (it refuses then, naming it).

import { Command } from 'commander';
import { PagepairError } from '../protocol/errors.js';
import { openPoolMembers, poolDeviceSpecName, type PoolDeviceSpec } from '../store/open-pool.js';
import { POOL_LABEL_AREA_BYTES, type PoolLabel } from '../store/pool-label.js';
import type { PoolStatus } from '../store/pool.js';
import { formatBytes, formatDuration } from '../workload/units.js';
import { applyDevicesEdit, deviceKey, planDevicesEdit, type DevicesEdit } from './config-devices.js';
import { configuredPool, openOfflineStore } from './offline-store.js';
import { loadConfigs, parseRate, refuseWhileServing, sinkFor, warnIfStartedMeanwhile, withInterrupt, type OfflineJobIo } from './offline-job.js';
import { followOnlineJob, startOnlineJob } from './online-job.js';
import { deviceSpecOf, poolLines } from './pool.js';

export interface DeviceReplaceOptions {
  config?: string;
  partnerConfig?: string;
  slot?: string;
  with?: string;
  rate?: string;
  force?: boolean;
  updateConfig?: string[];
  json?: boolean;
}

export interface DeviceReplaceResult {
  slot: number;
  /** The device that was in the slot (as the configuration names it). */
  old: string;
  /** The device rebuilt into it. */
  device: string;
  bytesCopied: number;
  elapsedMs: number;
  pool: PoolStatus;
  /** store.pool.devices as every configuration of the pair must now list them (as --config writes its entries). */
  devices: string[];
  /** Configuration files rewritten (--update-config). */
  updated: string[];
  /** Controllers that looked alive, when --force went on anyway. */
  forcedPast: string[];
  /** The pair served: a controller ran the rebuild (C_POOL_JOB). */
  online?: boolean;
  /** Online: the controller that ran it (A or B), and its job id. */
  controller?: string;
  jobId?: number;
}

export function deviceCommand(): Command {
  const device = new Command('device').description("act on one device of the pair's pool (store.pool)");
  device.addCommand(
    new Command('replace')
      .description(
        'put a new device in one slot of the pool and rebuild it from the others, with a progress bar and a rate limit. ' +
          'While the pair serves, the controller of --config (or its partner, when that one does not answer) runs the rebuild and the command follows it in its status; ' +
          'Ctrl-C then stops following only (the rebuild goes on: pagepair status shows it). ' +
          "With the pair stopped, the command rebuilds the slot itself; it refuses when a controller that did not answer still looks alive (its heartbeat in the store moves or is recent, or its address accepts connections). " +
          'The new device is labelled unfinished until it is whole, so a rebuild cut short (Ctrl-C on a stopped pair, a controller stopping) leaves it stale, never trusted. A missing file is made sparse at the members\' size. ' +
          "Afterwards BOTH controllers' configurations must name the new device in that slot: the command prints the devices array, and --update-config rewrites it in place.",
      )
      .requiredOption('-c, --config <file>', "a controller's configuration (its store.pool names the pool)")
      .requiredOption('--slot <n>', 'the slot to fill, from 0 (a failed, stale or healthy device; a healthy one is moved off)')
      .requiredOption('--with <device>', 'the new device: a path (made when missing), nbd://host:port/name or nbd+unix:///name?socket=PATH')
      .option('--rate <size>', 'copy at most this many bytes a second: 100MiB/s, 1GiB, ... (default: no limit)')
      .option('--update-config <file...>', 'rewrite store.pool.devices[slot] in these configuration files (both controllers\'), leaving the rest of each file as it is')
      .option('--partner-config <file>', "the partner's configuration, for its addresses (default: <partner id>.json beside --config)")
      .option('--force', 'with no controller answering, go on even when one looks alive (with a loud warning): only when you know nothing serves this store')
      .option('--json', 'print the result as JSON')
      .action(async (opts: DeviceReplaceOptions) => {
        const r = await withInterrupt((signal) => runDeviceReplace(opts, { signal }));
        console.log(opts.json === true ? JSON.stringify(r, null, 2) : formatReplace(r, opts));
      }),
  );
  return device;
}

/** `device replace`: exported for tests. */
export async function runDeviceReplace(opts: DeviceReplaceOptions, io: OfflineJobIo = {}): Promise<DeviceReplaceResult> {
  const pair = loadConfigs(opts.config, opts.partnerConfig);
  const spec = configuredPool(pair.cfg);
  const n = spec.devices.length;
  if (opts.slot === undefined || !/^\d+$/.test(opts.slot) || Number(opts.slot) >= n) {
    throw new PagepairError('BAD_FIELD', `--slot must be one of 0..${n - 1} (the pool of ${pair.cfg.sourceName} has ${n} devices), got ${JSON.stringify(opts.slot ?? null)}`, '--slot');
  }
  const slot = Number(opts.slot);
  if (opts.with === undefined || opts.with === '') throw new PagepairError('BAD_FIELD', '--with: which device goes into the slot? a path or an nbd:// URI', '--with');
  let target: PoolDeviceSpec;
  try {
    target = deviceSpecOf(opts.with);
  } catch (err) {
    throw new PagepairError('BAD_FIELD', `--with ${opts.with}: ${(err as Error).message}`, '--with');
  }
  const names = spec.devices.map(poolDeviceSpecName);
  const clash = names.findIndex((name, i) => i !== slot && deviceKey(name) === deviceKey(poolDeviceSpecName(target)));
  if (clash >= 0) throw new PagepairError('BAD_FIELD', `--with ${opts.with} is the pool's device in slot ${clash}: a device fills one slot`, '--with');
  const rateBytesPerSec = parseRate(opts.rate);
  // Configuration files are checked before the rebuild, not after an hour of it.
  const edits: DevicesEdit[] = (opts.updateConfig ?? []).map((file) => planDevicesEdit(file, slot, target, names));
  const rawDevices = planDevicesEdit(pair.configPath, slot, target, names).after;

  // A controller that serves runs the rebuild itself.
  const online = await startOnlineJob(pair, { kind: 'replace', slot, device: poolDeviceSpecName(target), rateBytesPerSec }, io);
  if (online !== null) {
    const end = await followOnlineJob(online, pair, io);
    if (end.report.kind !== 'replace') throw new PagepairError('INTERNAL', `controller ${online.controller} answered a replace with a ${end.report.kind} report`);
    for (const e of edits) applyDevicesEdit(e);
    return {
      slot,
      old: names[slot]!,
      device: end.report.device,
      bytesCopied: end.report.bytesCopied,
      elapsedMs: (end.job.endedAtMs ?? end.job.startedAtMs) - end.job.startedAtMs,
      pool: end.pool,
      devices: rawDevices,
      updated: edits.map((e) => e.file),
      forcedPast: [],
      online: true,
      controller: online.controller,
      jobId: online.jobId,
    };
  }

  // The pair is stopped. Look with the pool read-only, then open it to be written.
  const look = await openOfflineStore(pair.cfg, { readOnly: true });
  let seen;
  try {
    seen = await refuseWhileServing(look.store, pair, opts.force === true, 'device replace', io);
  } finally {
    await look.store.close();
  }

  const { pool, store, labels } = await openOfflineStore(pair.cfg, { readOnly: false });
  const before = pool.status();
  const othersDown = before.members.filter((m) => m.slot !== slot && m.state !== 'healthy');
  const parities = pool.layout === 'mirror' ? n - 1 : pool.layout === 'parity' ? 1 : 2;
  if (othersDown.length >= parities) {
    await store.close();
    throw new PagepairError(
      'IO_ERROR',
      `slot ${slot} cannot be rebuilt: the ${pool.layout} pool needs ${parities === 1 ? 'every other device' : `at least ${n - parities} other devices`} healthy, and ${othersDown.map((m) => `slot ${m.slot} (${m.name}) is ${m.reason ?? m.state}`).join(', ')}. ` +
        `If a device named in ${pair.configPath} was replaced earlier, name its replacement there first`,
      'store.pool.devices',
    );
  }
  const started = Date.now();
  const sink = sinkFor(io, `rebuilding slot ${slot} onto ${poolDeviceSpecName(target)}`);
  try {
    // A missing file is made at the size every member holds: the labels say it.
    const label = labels.find((l): l is PoolLabel => typeof l !== 'string');
    const memberBytes = POOL_LABEL_AREA_BYTES + (label?.dataBytes ?? 0);
    const [fresh] = await openPoolMembers({ layout: pool.layout, chunkBytes: 0, devices: [target], deviceBytes: memberBytes }, { createFiles: true });
    if (fresh!.device.sizeBytes < memberBytes) {
      await fresh!.device.close();
      throw new PagepairError('BAD_FIELD', `--with ${opts.with} holds ${formatBytes(fresh!.device.sizeBytes)} (${fresh!.device.sizeBytes} bytes); every device of this pool needs at least ${memberBytes} bytes`, '--with');
    }
    let bytesCopied = 0;
    let totalBytes = 0;
    try {
      await pool.replace(
        slot,
        { name: fresh!.name, device: fresh!.device },
        {
          rateBytesPerSec,
          onProgress: (done, total) => {
            bytesCopied = done;
            totalBytes = total;
            sink.update(done, total);
          },
          ...(io.signal !== undefined ? { signal: io.signal } : {}),
        },
      );
    } catch (err) {
      if (io.signal?.aborted !== true) throw err;
      sink.stop();
      throw new PagepairError(
        'SHUTTING_DOWN',
        `interrupted: the rebuild of slot ${slot} onto ${fresh!.name} stopped after ${formatBytes(bytesCopied)} of ${formatBytes(totalBytes)}; ` +
          `the device stays labelled unfinished (generation 0), so no pool trusts it: run device replace again to rebuild it from the start`,
      );
    }
    sink.stop();
    await pool.sync();
    await warnIfStartedMeanwhile(store, seen, 'device replace', io);
    for (const e of edits) applyDevicesEdit(e);
    return {
      slot,
      old: names[slot]!,
      device: fresh!.name,
      bytesCopied,
      elapsedMs: Date.now() - started,
      pool: pool.status(),
      devices: rawDevices,
      updated: edits.map((e) => e.file),
      forcedPast: seen.alive.map((s) => s.controller),
    };
  } finally {
    sink.stop();
    await store.close();
  }
}

function formatReplace(r: DeviceReplaceResult, opts: DeviceReplaceOptions): string {
  const rate = r.elapsedMs > 0 ? `, ${formatBytes((r.bytesCopied * 1000) / r.elapsedMs)}/s` : '';
  const by = r.online === true ? ` by controller ${r.controller ?? '?'} while the pair served (pool job ${r.jobId ?? '?'})` : '';
  const lines = [`slot ${r.slot}: rebuilt onto ${r.device} (was ${r.old})${by}: ${formatBytes(r.bytesCopied)} in ${formatDuration(r.elapsedMs)}${rate}`, ''];
  lines.push(...poolLines(r.pool).map(([k, v]) => `${k.padEnd(13)} ${v}`), '');
  lines.push(`BOTH controllers' configurations must now name ${r.device} in slot ${r.slot}; store.pool.devices:`, `  "devices": ${JSON.stringify(r.devices)}`);
  if (r.updated.length > 0) lines.push(`rewritten in: ${r.updated.join(', ')}`);
  else lines.push(`(not written anywhere: edit both files by hand, or run with --update-config ${opts.config ?? 'controllers/a.json'} <partner's configuration>)`);
  lines.push(`${r.old} is no longer part of the pool: given again, it would be opened as stale, not trusted.`);
  return lines.join('\n');
}
