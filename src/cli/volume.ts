// `pagepair volume`: create, list and delete volumes, the named allocations
// each controller's NBD server exports. Both controllers hold the same
// allocation table, so a volume made through one is served by both; the
// command goes through whichever controller answers.

import { Command, Option } from 'commander';
import { PagepairClient, controllerAddresses, type ControllerAddress } from '../client/index.js';
import { PairClient } from '../client/pair-client.js';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import type { CListReply } from '../protocol/messages.js';
import { loadConfig, type ControllerConfig } from '../runtime/config.js';
import { CLIENT_TLS_HELP, clientView } from './status.js';
import type { ControllerStatus } from '../runtime/controller-process.js';
import { formatBytes, parsePositiveInt, parseSize } from '../workload/units.js';

/** What a person types as a volume name: also an NBD export name, and a URL path segment as it is. */
const VOLUME_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** What an allocation is, as `volume list` shows it: only volumes and snapshots are exported over NBD. */
export type AllocationKind = 'volume' | 'snapshot' | 'region' | 'keyed';

export interface VolumeInfo {
  name: string;
  kind: AllocationKind;
  guid: string;
  policy: string;
  sizeBytes: number;
  pageSizeBytes: number;
  pageCount: number;
  /** Where NBD clients reach it, per controller: nbd://host:port/name and nbd+unix:///name?socket=path; a note when unknown. */
  nbd: { controller: string; urls: string[]; note?: string }[];
}

/** A controller's NBD listeners, as its status reports them. */
export interface NbdListeners {
  controller: string;
  /** "nbd://host:port", or null when the controller serves no NBD. */
  tcp: string | null;
  socket: string | null;
  /** Why nothing is known (the controller did not answer). */
  unknown?: string;
}

export interface VolumeCliContext {
  cfg: ControllerConfig;
  timeoutMs: number;
}

export function checkVolumeName(name: string): void {
  if (!VOLUME_NAME_RE.test(name)) {
    throw new PagepairError(
      'BAD_FIELD',
      `--name must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit, got ${JSON.stringify(name)}`,
      'name',
    );
  }
}

function addresses(cfg: ControllerConfig): ControllerAddress[] {
  if (cfg.partner === null) {
    return [{ id: cfg.idLetter, host: dialable(cfg.listen.client.host), port: cfg.listen.client.port, token: cfg.clientToken, ...(cfg.tls.mode === 'require' ? { tls: true } : {}) }];
  }
  return controllerAddresses({
    id: cfg.idLetter,
    clientToken: cfg.clientToken,
    listen: cfg.listen,
    partner: { id: cfg.partner.idLetter, client: cfg.partner.client },
    tls: cfg.tls,
  }).all;
}

function dialable(host: string): string {
  return host === '0.0.0.0' || host === '' ? '127.0.0.1' : host;
}

/** A pair client over both controllers of the configuration; `name` is what the controllers log it as. */
export function pairClient(ctx: VolumeCliContext, name = 'pagepair-volume'): Promise<PairClient> {
  return PairClient.connect({ controllers: addresses(ctx.cfg), name, timeoutMs: ctx.timeoutMs, retryForMs: ctx.timeoutMs }).catch((err: unknown) => {
    throw unreachable(ctx, err);
  });
}

function unreachable(ctx: VolumeCliContext, err: unknown): PagepairError {
  const where = addresses(ctx.cfg)
    .map((a) => `${a.id} at ${a.tls === true ? 'wss' : 'ws'}://${a.host}:${a.port}`)
    .join(', ');
  const why = err instanceof Error ? err.message : String(err);
  return new PagepairError('NOT_ACTIVE', `no controller answered (${where}, from ${ctx.cfg.sourceName}): ${why}`);
}

/** The allocation table, from the first controller that answers. */
export async function allocations(ctx: VolumeCliContext): Promise<CListReply['allocations']> {
  let lastErr: unknown = null;
  for (const addr of addresses(ctx.cfg)) {
    let c: PagepairClient;
    try {
      c = await PagepairClient.connect({ host: addr.host, port: addr.port, token: addr.token, tls: addr.tls === true, name: 'pagepair-volume', timeoutMs: ctx.timeoutMs });
    } catch (err) {
      lastErr = err;
      continue;
    }
    try {
      return await c.list();
    } catch (err) {
      if (!isPagepairError(err) || err.code === 'BAD_FIELD') throw err;
      lastErr = err;
    } finally {
      await c.close().catch(() => undefined);
    }
  }
  throw unreachable(ctx, lastErr);
}

/** Each controller's NBD listeners, asked of the controller itself (so a port-0 listener shows its real port). */
export async function nbdListeners(ctx: VolumeCliContext): Promise<NbdListeners[]> {
  const all = await Promise.all(
    addresses(ctx.cfg).map(async (addr): Promise<NbdListeners> => {
      try {
        const c = await PagepairClient.connect({ host: addr.host, port: addr.port, token: addr.token, tls: addr.tls === true, name: 'pagepair-volume', timeoutMs: ctx.timeoutMs });
        try {
          const s = (await c.status()) as Partial<ControllerStatus>;
          const nbd = s.listen?.nbd ?? null;
          return { controller: addr.id, tcp: nbd?.tcp ?? null, socket: nbd?.socket ?? null };
        } finally {
          await c.close().catch(() => undefined);
        }
      } catch (err) {
        // Down, or an older controller: say what the configuration says, when it is ours.
        const own = addr.id === ctx.cfg.idLetter ? ctx.cfg.listen.nbd : undefined;
        const tcp = own !== undefined && own.port !== 0 ? `nbd://${dialable(own.host)}:${own.port}` : null;
        return { controller: addr.id, tcp, socket: own?.socket ?? null, unknown: err instanceof Error ? err.message : String(err) };
      }
    }),
  );
  // A before B, whichever configuration was given.
  return all.sort((x, y) => x.controller.localeCompare(y.controller));
}

/** nbd://host:port/name and nbd+unix:///name?socket=path (the NBD URI forms qemu and libnbd take); nbds:// and nbds+unix:// when the controller requires TLS. */
export function volumeUrls(name: string, l: NbdListeners): string[] {
  const urls: string[] = [];
  const path = encodeURIComponent(name);
  const s = l.tcp?.startsWith('nbds://') === true ? 's' : '';
  if (l.tcp !== null) urls.push(`${l.tcp.replace('://0.0.0.0:', '://127.0.0.1:')}/${path}`);
  if (l.socket !== null) urls.push(`nbd${s}+unix:///${path}?socket=${l.socket}`);
  return urls;
}

export function kindOf(a: { name: string; keyed?: boolean; origin?: string }): AllocationKind {
  if (a.name.startsWith('region:') && a.keyed === true) return 'region';
  if (a.origin !== undefined && a.origin !== '') return 'snapshot';
  return a.keyed === true ? 'keyed' : 'volume';
}

function info(a: CListReply['allocations'][number], listeners: NbdListeners[]): VolumeInfo {
  const kind = kindOf(a);
  // Keyed allocations (regions among them) are not exported: NBD cannot present a key.
  const exported = a.keyed !== true;
  return {
    name: a.name,
    kind,
    guid: a.guid,
    policy: a.policy,
    sizeBytes: a.pageCount * a.pageSizeBytes,
    pageSizeBytes: a.pageSizeBytes,
    pageCount: a.pageCount,
    nbd: listeners.map((l) => {
      if (!exported) return { controller: l.controller, urls: [], note: 'not exported over NBD (keyed)' };
      const urls = volumeUrls(a.name, l);
      if (l.unknown !== undefined) return { controller: l.controller, urls, note: `did not answer: ${l.unknown}` };
      return urls.length > 0 ? { controller: l.controller, urls } : { controller: l.controller, urls, note: 'serves no NBD (no listen.nbd in its configuration)' };
    }),
  };
}

export async function createVolume(ctx: VolumeCliContext, name: string, sizeBytes: number, policy: string): Promise<VolumeInfo> {
  checkVolumeName(name);
  if (!ctx.cfg.policies.has(policy)) {
    throw new PagepairError('POLICY_UNKNOWN', `--policy: no policy named "${policy}" in ${ctx.cfg.sourceName} (known: ${[...ctx.cfg.policies.keys()].join(', ')})`, 'policy');
  }
  const pc = await pairClient(ctx);
  let created: { guid: string; pageSizeBytes: number; pageCount: number };
  try {
    created = await pc.allocate(name, sizeBytes, policy);
  } catch (err) {
    if (isPagepairError(err, 'DUPLICATE')) {
      throw new PagepairError('DUPLICATE', `a volume named "${name}" exists already; delete it first (pagepair volume delete ${name}) or pick another name`, 'name');
    }
    if (isPagepairError(err, 'NO_SPACE')) {
      throw new PagepairError('NO_SPACE', `no room for ${formatBytes(sizeBytes)} in the store: ${err.message} (store.sizeBytes in the configuration sets the size of a new store)`, 'size');
    }
    throw err;
  } finally {
    await pc.close();
  }
  const listeners = await nbdListeners(ctx);
  return info({ name, guid: created.guid, policy, pageSizeBytes: created.pageSizeBytes, pageCount: created.pageCount }, listeners);
}

export async function listVolumes(ctx: VolumeCliContext): Promise<VolumeInfo[]> {
  const [all, listeners] = await Promise.all([allocations(ctx), nbdListeners(ctx)]);
  return all.map((a) => info(a, listeners)).sort((x, y) => x.name.localeCompare(y.name));
}

export async function deleteVolume(ctx: VolumeCliContext, name: string): Promise<VolumeInfo> {
  const found = (await allocations(ctx)).find((a) => a.name === name);
  if (found === undefined) throw new PagepairError('UNKNOWN_GUID', `no volume named "${name}" (pagepair volume list shows them)`, 'name');
  const pc = await pairClient(ctx);
  try {
    await pc.release(found.guid);
  } finally {
    await pc.close();
  }
  return info(found, []);
}

// ---------------------------------------------------------------- output

export function formatVolume(v: VolumeInfo): string {
  const lines = [
    `name       ${v.name}`,
    `guid       ${v.guid}`,
    `size       ${formatBytes(v.sizeBytes)} (${v.sizeBytes} bytes, ${v.pageCount} pages)`,
    `page size  ${formatBytes(v.pageSizeBytes)} (policy ${v.policy})`,
  ];
  const nbd = v.nbd.flatMap((x) => [
    ...x.urls.map((u) => `${u}   (controller ${x.controller})`),
    ...(x.note !== undefined ? [`controller ${x.controller} ${x.note}`] : []),
  ]);
  if (nbd.length === 0) nbd.push('unknown: no controller answered');
  lines.push(`NBD        ${nbd[0]}`, ...nbd.slice(1).map((x) => `           ${x}`));
  return lines.join('\n');
}

export function formatVolumeList(vs: VolumeInfo[]): string {
  if (vs.length === 0) return 'no volumes (pagepair volume create --name vol0 --size 1GiB makes one)';
  const nbdOf = (v: VolumeInfo): string => {
    const urls = v.nbd.flatMap((x) => x.urls.filter((u) => u.startsWith('nbd://') || u.startsWith('nbds://'))).join(' ');
    if (urls === '') return v.kind === 'region' || v.kind === 'keyed' ? '- (keyed: not exported)' : '';
    return v.kind === 'snapshot' ? `${urls} (read only)` : urls;
  };
  const rows = [['NAME', 'KIND', 'SIZE', 'PAGE', 'POLICY', 'GUID', 'NBD'], ...vs.map((v) => [v.name, v.kind, formatBytes(v.sizeBytes), formatBytes(v.pageSizeBytes), v.policy, v.guid, nbdOf(v)])];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const table = rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ').trimEnd());
  // The space each kind holds (a snapshot reserves its volume's size when it is made).
  const totals = (['volume', 'snapshot', 'region', 'keyed'] as const)
    .map((k) => ({ k, n: vs.filter((v) => v.kind === k).length, bytes: vs.filter((v) => v.kind === k).reduce((t, v) => t + v.sizeBytes, 0) }))
    .filter((t) => t.n > 0)
    .map((t) => `${t.n} ${t.k}${t.n === 1 ? '' : 's'} ${formatBytes(t.bytes)}`);
  return [...table, `held: ${totals.join(', ')}`].join('\n');
}

// ---------------------------------------------------------------- command

export interface CommonOpts {
  config: string;
  timeout: string;
  json?: boolean;
  tls?: boolean;
}

export function context(opts: CommonOpts): VolumeCliContext {
  return { cfg: clientView(loadConfig(opts.config), opts.tls), timeoutMs: parsePositiveInt(opts.timeout, 'timeout', 600_000) };
}

export function withCommon(cmd: Command): Command {
  return cmd
    .option('-c, --config <file>', "a controller's configuration (JSON); both controllers are reached from it", 'controllers/a.json')
    .option('--timeout <ms>', 'how long to wait for a controller', '5000')
    .option('--tls', CLIENT_TLS_HELP)
    .option('--json', 'print JSON');
}

/** The `volume` command, ready for program.addCommand(volumeCommand()). */
export function volumeCommand(): Command {
  const volume = new Command('volume').description('create, list and delete volumes: named allocations that every controller exports over NBD');

  volume.addCommand(
    withCommon(
      new Command('create')
        .description('create a volume (through whichever controller answers); prints its NBD URLs')
        .requiredOption('-n, --name <name>', 'the volume name, which is also its NBD export name')
        .requiredOption('-s, --size <size>', 'its size: 1GiB, 512MiB, 4096, ... (rounded up to whole pages)')
        .addOption(new Option('-p, --policy <policy>', 'the allocation policy, which sets the page size (built-ins: default, db-page, log, bulk, checkpoint, small-object)').default('default')),
    ).action(async (opts: CommonOpts & { name: string; size: string; policy: string }) => {
      checkVolumeName(opts.name);
      const sizeBytes = parseSize(opts.size, 'size');
      const ctx = context(opts);
      const v = await createVolume(ctx, opts.name, sizeBytes, opts.policy);
      if (opts.json === true) console.log(JSON.stringify(v, null, 2));
      else console.log(`volume "${v.name}" created\n${formatVolume(v)}`);
    }),
  );

  volume.addCommand(
    withCommon(new Command('list').description('list every volume, with its size, page size, policy and NBD URL')).action(async (opts: CommonOpts) => {
      const vs = await listVolumes(context(opts));
      console.log(opts.json === true ? JSON.stringify(vs, null, 2) : formatVolumeList(vs));
    }),
  );

  volume.addCommand(
    withCommon(
      new Command('delete')
        .description('delete a volume and its data, on both controllers')
        .argument('[name]', 'the volume name (or --name)')
        .option('-n, --name <name>', 'the volume name'),
    ).action(async (positional: string | undefined, opts: CommonOpts & { name?: string }) => {
      if (positional !== undefined && opts.name !== undefined && positional !== opts.name) {
        throw new PagepairError('BAD_FIELD', `two names given: "${positional}" and --name "${opts.name}"`, 'name');
      }
      const name = positional ?? opts.name;
      if (name === undefined) throw new PagepairError('BAD_FIELD', 'which volume? give its name: pagepair volume delete <name>', 'name');
      const v = await deleteVolume(context(opts), name);
      if (opts.json === true) console.log(JSON.stringify({ deleted: v.name, guid: v.guid }, null, 2));
      else console.log(`volume "${v.name}" deleted (guid ${v.guid}, ${formatBytes(v.sizeBytes)})`);
    }),
  );

  return volume;
}
