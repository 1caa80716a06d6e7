// `pagepair region`: checkpoint regions from the command line. A region is a
// keyed allocation holding generations of a checkpoint (src/client/region.ts
// says how they are laid out and committed); this command makes one, shows
// and reads its generations, writes one generation from a file, and deletes
// it. Every command but `list` needs the region's key, which `create` prints
// once: no controller keeps it, so it cannot be shown again.

import { closeSync, openSync, readSync, statSync, writeFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import { accessKeyBytes } from '../client/client.js';
import { pairClient } from './volume.js';
import type { PairClient } from '../client/pair-client.js';
import { Region, REGION_NAME_BYTES_MAX, RING_SIZE_MAX, type GenerationInfo, type RegionMode, type RegionSummary } from '../client/region.js';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import { loadConfig, type ControllerConfig } from '../runtime/config.js';
import { CLIENT_TLS_HELP, clientView } from './status.js';
import { formatBytes, formatDuration, parsePositiveInt, parseSize } from '../workload/units.js';

/** A region name as a person types it (the library's rule); the allocation is named `region:NAME`. */
const REGION_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
/** How much of a file `region write` hands the library at once. */
const WRITE_CHUNK_BYTES = 1024 * 1024;
/** Where a key may come from besides --key and --key-file. */
export const REGION_KEY_ENV = 'PAGEPAIR_REGION_KEY';

export const REGION_KEY_WARNING =
  'Keep this key: no controller keeps it, and it is not shown again. Without it nobody can open, read, write or delete the region.';

export interface RegionCliContext {
  cfg: ControllerConfig;
  timeoutMs: number;
}

export function checkRegionName(name: string): void {
  if (!REGION_NAME_RE.test(name) || name.length > REGION_NAME_BYTES_MAX) {
    throw new PagepairError(
      'BAD_FIELD',
      `the region name must be 1 to ${REGION_NAME_BYTES_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit, got ${JSON.stringify(name)}`,
      'name',
    );
  }
}

export function parseRegionMode(text: string): RegionMode {
  if (text === 'overwrite' || text === 'append') return text;
  throw new PagepairError('BAD_FIELD', `--mode must be overwrite (a ring of generations) or append (generations one after another), got ${JSON.stringify(text)}`, 'mode');
}

/**
 * The key from --key, --key-file or PAGEPAIR_REGION_KEY (in that order),
 * checked for shape before anything is sent. A key on the command line is
 * seen by others on this host (ps); the file or the variable is not.
 */
export function resolveRegionKey(o: { key?: string; keyFile?: string }, env: NodeJS.ProcessEnv = process.env): string {
  if (o.key !== undefined && o.keyFile !== undefined) throw new PagepairError('BAD_FIELD', 'give --key or --key-file, not both', 'key');
  let key: string | undefined = o.key;
  let from = '--key';
  if (key === undefined && o.keyFile !== undefined) {
    try {
      key = readFileTextBounded(o.keyFile, 1024).trim();
    } catch (err) {
      throw new PagepairError('BAD_FIELD', `--key-file ${o.keyFile}: ${err instanceof Error ? err.message : String(err)}`, 'key-file');
    }
    from = `--key-file ${o.keyFile}`;
  }
  if (key === undefined && env[REGION_KEY_ENV] !== undefined && env[REGION_KEY_ENV] !== '') {
    key = env[REGION_KEY_ENV]!.trim();
    from = REGION_KEY_ENV;
  }
  if (key === undefined) throw new PagepairError('BAD_FIELD', `the region's key is needed: --key KEY, --key-file FILE or ${REGION_KEY_ENV} (region create printed it)`, 'key');
  try {
    accessKeyBytes(key);
  } catch (err) {
    throw new PagepairError('BAD_FIELD', `${from}: ${err instanceof Error ? err.message : String(err)}`, 'key');
  }
  return key;
}

function readFileTextBounded(path: string, bytesMax: number): string {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(bytesMax + 1);
    const n = readSync(fd, buf, 0, buf.length, 0);
    if (n > bytesMax) throw new Error(`longer than ${bytesMax} bytes: not a key file`);
    return buf.subarray(0, n).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

async function withPair<T>(ctx: RegionCliContext, fn: (pc: PairClient) => Promise<T>): Promise<T> {
  const pc = await pairClient(ctx, 'pagepair-region');
  try {
    return await fn(pc);
  } finally {
    await pc.close();
  }
}

/** The library's answer to a wrong key or a missing region, said for a person. */
function explain(err: unknown, name: string): unknown {
  if (isPagepairError(err, 'ACCESS_DENIED')) return new PagepairError('ACCESS_DENIED', `region "${name}": the key was refused (${err.message})`, 'key');
  if (isPagepairError(err, 'UNKNOWN_GUID')) return new PagepairError('UNKNOWN_GUID', `no region named "${name}" (pagepair region list shows them)`, 'name');
  return err;
}

async function openRegion(pc: PairClient, name: string, key: string): Promise<Region> {
  try {
    return await Region.open(pc, name, key);
  } catch (err) {
    throw explain(err, name);
  }
}

// ---------------------------------------------------------------- what the commands do

export interface RegionView {
  name: string;
  guid: string;
  mode: RegionMode;
  generationBytesMax: number;
  ringSize: number;
  allocatedBytes: number;
  /** Latest first. */
  generations: GenerationInfo[];
}

export interface CreateRegionArgs {
  name: string;
  mode: RegionMode;
  sizeBytes: number;
  generations?: number;
  policy?: string;
}

export async function createRegion(ctx: RegionCliContext, a: CreateRegionArgs): Promise<{ view: RegionView; key: string }> {
  checkRegionName(a.name);
  if (a.mode === 'append' && a.generations !== undefined) {
    throw new PagepairError('BAD_FIELD', '--generations is the ring of an overwrite region; an append region keeps generations until it is full', 'generations');
  }
  if (a.policy !== undefined && !ctx.cfg.policies.has(a.policy)) {
    throw new PagepairError('POLICY_UNKNOWN', `--policy: no policy named "${a.policy}" in ${ctx.cfg.sourceName} (known: ${[...ctx.cfg.policies.keys()].join(', ')})`, 'policy');
  }
  return withPair(ctx, async (pc) => {
    let made: { region: Region; key: string };
    try {
      made = await Region.create(pc, a.name, {
        mode: a.mode,
        sizeBytes: a.sizeBytes,
        ...(a.generations !== undefined ? { generations: a.generations } : {}),
        ...(a.policy !== undefined ? { policy: a.policy } : {}),
      });
    } catch (err) {
      if (isPagepairError(err, 'DUPLICATE')) throw new PagepairError('DUPLICATE', `a region named "${a.name}" exists already; delete it first or pick another name (${err.message})`, 'name');
      if (isPagepairError(err, 'NO_SPACE')) throw new PagepairError('NO_SPACE', `no room in the store for region "${a.name}": ${err.message}`, 'size');
      throw err;
    }
    return { view: viewOf(made.region, []), key: made.key };
  });
}

function viewOf(r: Region, generations: GenerationInfo[]): RegionView {
  return { name: r.name, guid: r.guid, mode: r.mode, generationBytesMax: r.generationBytesMax, ringSize: r.ringSize, allocatedBytes: r.allocatedBytes, generations };
}

/** Latest first. */
function latestFirst(gs: readonly GenerationInfo[]): GenerationInfo[] {
  return [...gs].sort((x, y) => y.generation - x.generation);
}

export async function openRegionView(ctx: RegionCliContext, name: string, key: string): Promise<RegionView> {
  return withPair(ctx, async (pc) => {
    const r = await openRegion(pc, name, key);
    return viewOf(r, latestFirst(await r.list()));
  });
}

export async function listRegions(ctx: RegionCliContext): Promise<RegionSummary[]> {
  return withPair(ctx, async (pc) => [...(await Region.list(pc))].sort((x, y) => x.name.localeCompare(y.name)));
}

export async function deleteRegion(ctx: RegionCliContext, name: string, key: string): Promise<void> {
  await withPair(ctx, async (pc) => {
    try {
      await Region.delete(pc, name, key);
    } catch (err) {
      throw explain(err, name);
    }
  });
}

/** One generation's bytes (the latest committed one unless asked), checked against its CRC by the library. */
export async function readRegion(ctx: RegionCliContext, name: string, key: string, generation?: number): Promise<{ info: GenerationInfo; data: Buffer }> {
  return withPair(ctx, async (pc) => {
    const r = await openRegion(pc, name, key);
    const all = await r.list();
    let info: GenerationInfo | undefined;
    if (generation === undefined) {
      info = latestFirst(all)[0];
      if (info === undefined) throw new PagepairError('UNKNOWN_GUID', `region "${name}" has no committed generation yet (pagepair region write puts one in)`, 'generation');
    } else {
      info = all.find((g) => g.generation === generation);
      if (info === undefined) {
        const have = latestFirst(all).map((g) => g.generation);
        throw new PagepairError('OUT_OF_RANGE', `--generation ${generation}: region "${name}" holds ${have.length === 0 ? 'no committed generation' : `generations ${have.join(', ')}`}`, 'generation');
      }
    }
    const data = await r.readWhole(info.generation);
    return { info, data };
  });
}

/** One checkpoint generation from a file, committed. */
export async function writeRegionFromFile(ctx: RegionCliContext, name: string, key: string, path: string): Promise<GenerationInfo> {
  let sizeBytes: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new Error('not a regular file');
    sizeBytes = st.size;
  } catch (err) {
    throw new PagepairError('BAD_FIELD', `--from ${path}: ${err instanceof Error ? err.message : String(err)}`, 'from');
  }
  return withPair(ctx, async (pc) => {
    const r = await openRegion(pc, name, key);
    if (r.mode === 'overwrite' && sizeBytes > r.generationBytesMax) {
      throw new PagepairError(
        'TOO_LARGE',
        `--from ${path}: ${formatBytes(sizeBytes)} (${sizeBytes} bytes) does not fit a generation of region "${name}", at most ${formatBytes(r.generationBytesMax)} (${r.generationBytesMax} bytes)`,
        'from',
      );
    }
    const cp = await r.beginCheckpoint();
    const fd = openSync(path, 'r');
    try {
      const buf = Buffer.alloc(Math.min(WRITE_CHUNK_BYTES, Math.max(sizeBytes, 1)));
      for (let offset = 0; offset < sizeBytes; ) {
        const n = readSync(fd, buf, 0, Math.min(buf.length, sizeBytes - offset), offset);
        if (n === 0) throw new PagepairError('BAD_FIELD', `--from ${path}: the file got shorter while it was read`, 'from');
        // The library may keep the buffer until the request is sent: hand it a copy.
        await cp.write(offset, Buffer.from(buf.subarray(0, n)));
        offset += n;
      }
      return await cp.commit();
    } catch (err) {
      cp.abort();
      if (isPagepairError(err, 'NO_SPACE') || isPagepairError(err, 'TOO_LARGE') || isPagepairError(err, 'OUT_OF_RANGE')) {
        throw new PagepairError(err.code, `--from ${path} (${formatBytes(sizeBytes)}): region "${name}" has no room for it: ${err.message}`, 'from');
      }
      throw err;
    } finally {
      closeSync(fd);
    }
  });
}

// ---------------------------------------------------------------- output

function modeLine(v: Pick<RegionView, 'mode' | 'generationBytesMax' | 'ringSize' | 'allocatedBytes'>): string {
  return v.mode === 'overwrite'
    ? `overwrite: a ring of ${v.ringSize} generations of up to ${formatBytes(v.generationBytesMax)} (${v.generationBytesMax} bytes) each`
    : `append: generations one after another, ${formatBytes(v.generationBytesMax)} (${v.generationBytesMax} bytes) in all`;
}

export function formatGenerations(gs: readonly GenerationInfo[], nowMs: number): string {
  if (gs.length === 0) return 'no committed generation yet';
  const rows = [
    ['GENERATION', 'LENGTH', 'CRC', 'OFFSET', 'COMMITTED', 'AGE'],
    ...gs.map((g) => [
      String(g.generation),
      `${g.lengthBytes}`,
      (g.crc >>> 0).toString(16).padStart(8, '0'),
      String(g.offset),
      new Date(g.committedAtMs).toISOString(),
      `${formatDuration(Math.max(0, nowMs - g.committedAtMs))} ago`,
    ]),
  ];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

export function formatRegion(v: RegionView, nowMs: number): string {
  return [
    `region     ${v.name}`,
    `guid       ${v.guid}`,
    `mode       ${modeLine(v)}`,
    `holds      ${formatBytes(v.allocatedBytes)} (${v.allocatedBytes} bytes) in the store`,
    `committed  ${v.generations.length} generation${v.generations.length === 1 ? '' : 's'}, latest first:`,
    ...formatGenerations(v.generations, nowMs)
      .split('\n')
      .map((l) => `  ${l}`),
  ].join('\n');
}

export function formatCreated(v: RegionView, key: string): string {
  return [`region "${v.name}" created`, `guid       ${v.guid}`, `mode       ${modeLine(v)}`, `holds      ${formatBytes(v.allocatedBytes)} (${v.allocatedBytes} bytes) in the store`, `key        ${key}`, '', REGION_KEY_WARNING].join('\n');
}

export function formatRegionList(rs: readonly RegionSummary[]): string {
  if (rs.length === 0) return 'no regions (pagepair region create NAME --size 1MiB --mode overwrite makes one)';
  const rows = [['NAME', 'HOLDS', 'BYTES', 'GUID'], ...rs.map((r) => [r.name, formatBytes(r.allocatedBytes), String(r.allocatedBytes), r.guid])];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const total = rs.reduce((n, r) => n + r.allocatedBytes, 0);
  return [
    ...rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : i === 1 || i === 2 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ')),
    `${rs.length} region${rs.length === 1 ? '' : 's'} holding ${formatBytes(total)} (${total} bytes)`,
  ].join('\n');
}

function generationJson(g: GenerationInfo): Record<string, unknown> {
  return { ...g, committedAt: new Date(g.committedAtMs).toISOString() };
}

// ---------------------------------------------------------------- command

interface CommonOpts {
  config: string;
  timeout: string;
  json?: boolean;
  tls?: boolean;
}

interface KeyOpts {
  key?: string;
  keyFile?: string;
}

function context(opts: CommonOpts): RegionCliContext {
  return { cfg: clientView(loadConfig(opts.config), opts.tls), timeoutMs: parsePositiveInt(opts.timeout, 'timeout', 600_000) };
}

function withCommon(cmd: Command, json = true): Command {
  cmd
    .option('-c, --config <file>', "a controller's configuration (JSON); both controllers are reached from it", 'controllers/a.json')
    .option('--timeout <ms>', 'how long to wait for a controller', '5000')
    .option('--tls', CLIENT_TLS_HELP);
  return json ? cmd.option('--json', 'print JSON') : cmd;
}

function withKey(cmd: Command): Command {
  return cmd
    .option('-k, --key <key>', `the region's key, as region create printed it (others on this host can see a command line: --key-file or ${REGION_KEY_ENV} cannot be seen)`)
    .option('--key-file <file>', "a file holding the region's key");
}

/** The `region` command, ready for program.addCommand(regionCommand()). */
export function regionCommand(): Command {
  const region = new Command('region').description('checkpoint regions: keyed allocations holding committed generations of a checkpoint (overwrite: a ring; append: one after another)');

  region.addCommand(
    withCommon(
      new Command('create')
        .description("create a region; prints its guid and its key, once (no controller keeps the key)")
        .argument('<name>', 'the region name (the allocation is named region:<name>)')
        .requiredOption('-s, --size <size>', 'overwrite: the largest generation; append: all generations together (1MiB, 64M, 4096, ...)')
        .addOption(new Option('-m, --mode <mode>', 'overwrite (a ring of --generations) or append (one after another until full)').makeOptionMandatory())
        .option('-g, --generations <k>', 'overwrite: how many committed generations the ring keeps (default 2)')
        .option('-p, --policy <policy>', 'the allocation policy, which sets the page size (default checkpoint: 256 KiB pages; built-ins: default, db-page, log, bulk, checkpoint, small-object)'),
    ).action(async (name: string, opts: CommonOpts & { size: string; mode: string; generations?: string; policy?: string }) => {
      checkRegionName(name);
      const mode = parseRegionMode(opts.mode);
      const sizeBytes = parseSize(opts.size, 'size');
      const generations = opts.generations !== undefined ? parsePositiveInt(opts.generations, 'generations', RING_SIZE_MAX) : undefined;
      if (mode === 'overwrite' && generations === 1) {
        throw new PagepairError('BAD_FIELD', '--generations must be at least 2: with one slot a commit would write over the only committed generation', 'generations');
      }
      const { view, key } = await createRegion(context(opts), { name, mode, sizeBytes, ...(generations !== undefined ? { generations } : {}), ...(opts.policy !== undefined ? { policy: opts.policy } : {}) });
      if (opts.json === true) console.log(JSON.stringify({ ...view, key, warning: REGION_KEY_WARNING }, null, 2));
      else console.log(formatCreated(view, key));
    }),
  );

  region.addCommand(
    withKey(
      withCommon(
        new Command('open').description("open a region with its key and show its mode, sizes and committed generations, latest first").argument('<name>', 'the region name'),
      ),
    ).action(async (name: string, opts: CommonOpts & KeyOpts) => {
      const key = resolveRegionKey(opts);
      const v = await openRegionView(context(opts), name, key);
      if (opts.json === true) console.log(JSON.stringify({ ...v, generations: v.generations.map(generationJson) }, null, 2));
      else console.log(formatRegion(v, Date.now()));
    }),
  );

  region.addCommand(
    withCommon(new Command('list').description('list every region and the bytes it holds in the store (no key needed)')).action(async (opts: CommonOpts) => {
      const rs = await listRegions(context(opts));
      console.log(opts.json === true ? JSON.stringify(rs, null, 2) : formatRegionList(rs));
    }),
  );

  region.addCommand(
    withKey(withCommon(new Command('delete').description('delete a region and every generation in it, on both controllers').argument('<name>', 'the region name'))).action(
      async (name: string, opts: CommonOpts & KeyOpts) => {
        const key = resolveRegionKey(opts);
        await deleteRegion(context(opts), name, key);
        if (opts.json === true) console.log(JSON.stringify({ deleted: name }, null, 2));
        else console.log(`region "${name}" deleted`);
      },
    ),
  );

  region.addCommand(
    withKey(
      withCommon(
        new Command('read')
          .description('read one committed generation whole (the latest unless --generation) into --out, or to standard output')
          .argument('<name>', 'the region name')
          .option('-g, --generation <n>', 'which generation (region open lists them)')
          .option('-o, --out <file>', 'write the bytes here (created or replaced, mode 0600) and print what was read; without it the bytes go to standard output'),
        false,
      ),
    ).action(async (name: string, opts: CommonOpts & KeyOpts & { generation?: string; out?: string }) => {
      const key = resolveRegionKey(opts);
      const generation = opts.generation !== undefined ? parseGeneration(opts.generation) : undefined;
      if ((opts.out === undefined || opts.out === '-') && process.stdout.isTTY === true) {
        throw new PagepairError('BAD_FIELD', '--out: a checkpoint is bytes, not text; give --out FILE, or send standard output to a file or a pipe', 'out');
      }
      const { info, data } = await readRegion(context(opts), name, key, generation);
      if (opts.out === undefined || opts.out === '-') {
        await new Promise<void>((resolve, reject) => process.stdout.write(data, (err) => (err ? reject(err) : resolve())));
        return;
      }
      try {
        writeFileSync(opts.out, data, { mode: 0o600 });
      } catch (err) {
        throw new PagepairError('BAD_FIELD', `--out ${opts.out}: ${err instanceof Error ? err.message : String(err)}`, 'out');
      }
      console.log(
        `region "${name}": generation ${info.generation}, ${info.lengthBytes} bytes (crc ${(info.crc >>> 0).toString(16).padStart(8, '0')}), committed ${new Date(info.committedAtMs).toISOString()}, written to ${opts.out}`,
      );
    }),
  );

  region.addCommand(
    withKey(
      withCommon(
        new Command('write')
          .description('write a file as one checkpoint generation and commit it (readers see all of it or the generation before)')
          .argument('<name>', 'the region name')
          .requiredOption('-f, --from <file>', 'the file whose bytes become the generation'),
      ),
    ).action(async (name: string, opts: CommonOpts & KeyOpts & { from: string }) => {
      const key = resolveRegionKey(opts);
      const g = await writeRegionFromFile(context(opts), name, key, opts.from);
      if (opts.json === true) console.log(JSON.stringify(generationJson(g), null, 2));
      else console.log(`region "${name}": generation ${g.generation} committed, ${g.lengthBytes} bytes (crc ${(g.crc >>> 0).toString(16).padStart(8, '0')}) from ${opts.from}`);
    }),
  );

  return region;
}

function parseGeneration(text: string): number {
  const n = Number(text);
  if (!/^\s*\d+\s*$/.test(text) || !Number.isSafeInteger(n)) throw new PagepairError('BAD_FIELD', `--generation must be a whole number (region open lists them), got "${text}"`, 'generation');
  return n;
}
