// `pagepair device replace` and `pagepair scrub` on a stopped pair, over real
// files: a pool made by `pool create` from a pair's configuration, pages
// written through the store, one member lost (its file deleted); replace
// rebuilds it onto a new file and rewrites both configurations' devices
// entry; then scrub finds nothing and every page reads back with each other
// member missing in turn. A planted parity (or mirror copy) mismatch is
// found, and --repair makes the members byte for byte what they were. A
// controller whose heartbeat in the store is fresh or moving, or whose
// address accepts connections, makes both commands refuse, naming it.

import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runDeviceReplace } from '../../src/cli/device.js';
import { openOfflineStore } from '../../src/cli/offline-store.js';
import { runPoolCreate } from '../../src/cli/pool.js';
import { runScrub } from '../../src/cli/scrub.js';
import type { OfflineJobIo } from '../../src/cli/offline-job.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import { Role } from '../../src/protocol/messages.js';
import { loadConfig } from '../../src/runtime/config.js';
import { extentBytes } from '../../src/store/layout.js';
import { openMembersLoose, openPool } from '../../src/store/open-pool.js';
import { PageStore } from '../../src/store/page-store.js';
import { POOL_LABEL_AREA_BYTES } from '../../src/store/pool-label.js';
import type { PoolLayout } from '../../src/store/pool.js';
import type { AllocationRecord } from '../../src/store/types.js';
import { makePairFiles, runCli, type PairFiles } from '../integration/helpers.js';

const MiB = 1024 * 1024;
const PAGE_BYTES = 4096;
const PAGES = 40;

const made: PairFiles[] = [];
afterAll(() => {
  for (const f of made) f.cleanup();
});

/** Quiet, quick: no progress output, the heartbeat watched briefly. */
function quietIo(warnings: string[] = []): OfflineJobIo {
  return { warn: (l) => warnings.push(l), progress: () => ({ update: () => undefined, stop: () => undefined }), serving: { watchMs: 60, connectTimeoutMs: 300 } };
}

function pageData(alloc: number, page: number, version: number): Buffer {
  const b = Buffer.alloc(PAGE_BYTES);
  for (let i = 0; i < PAGE_BYTES; i += 4) b.writeUInt32LE(((alloc * 7919 + page * 104729 + version * 31 + i) * 2654435761) >>> 0, i);
  return b;
}

interface Fixture {
  f: PairFiles;
  paths: string[];
  records: AllocationRecord[];
  /** The last version written of each page, by allocation then page. */
  expected: Buffer[][];
}

/** A pair's configurations over a pool of `n` files, the pool made by pool create, and two allocations of pages written through the store (some twice, so both slots are used). */
async function fixture(layout: PoolLayout, n: number): Promise<Fixture> {
  const f = await makePairFiles();
  made.push(f);
  const paths = Array.from({ length: n }, (_, i) => join(f.dir, 'pool', `d${i}.img`));
  const store = { pool: { layout, devices: paths, deviceBytes: 8 * MiB, ...(layout === 'mirror' ? {} : { chunkBytes: 16384 }) }, tableEntriesMax: 64 };
  writeFileSync(f.a, JSON.stringify(f.configOf('A', { store }), null, 2));
  writeFileSync(f.b, JSON.stringify(f.configOf('B', { store }), null, 2));
  await runPoolCreate([], { config: f.a });

  const cfg = loadConfig(f.a);
  const { store: s } = await openOfflineStore(cfg, { readOnly: false });
  const align = s.geometry.alignBytes;
  const records: AllocationRecord[] = [0, 1].map((k) => ({
    guid: randomUUID(),
    name: `alloc-${k}`,
    policy: 'default',
    pageSizeBytes: PAGE_BYTES,
    pageCount: PAGES,
    dataOffset: k * extentBytes(PAGE_BYTES, PAGES, align),
    createdEpoch: 1,
  }));
  await s.writeTable(records);
  const expected: Buffer[][] = [];
  for (const [k, rec] of records.entries()) {
    const pages: Buffer[] = [];
    for (let p = 0; p < PAGES; p++) {
      const loc = { guid: rec.guid, dataOffset: rec.dataOffset, pageSizeBytes: PAGE_BYTES };
      await s.writePage(loc, p, 1, 1, pageData(k, p, 1));
      pages.push(pageData(k, p, 1));
      if (p % 3 === 0) {
        await s.writePage(loc, p, 2, 1, pageData(k, p, 2));
        pages[p] = pageData(k, p, 2);
      }
    }
    expected.push(pages);
  }
  await s.sync();
  await s.close();
  return { f, paths, records, expected };
}

/** Every page of the fixture read back through a pool opened from `paths` with `missing` given as a path that does not exist. */
async function readAllWithout(layout: PoolLayout, paths: string[], missing: number | null, fx: Fixture): Promise<void> {
  const devices = paths.map((path, i) => ({ kind: 'file' as const, path: i === missing ? `${path}.absent` : path }));
  const members = await openMembersLoose({ layout, chunkBytes: 0, devices, deviceBytes: 0 });
  const pool = await openPool(layout, members, { readOnly: true });
  const s = await PageStore.open(pool, {});
  try {
    for (const [k, rec] of fx.records.entries()) {
      for (let p = 0; p < rec.pageCount; p++) {
        const got = await s.readPage({ guid: rec.guid, dataOffset: rec.dataOffset, pageSizeBytes: rec.pageSizeBytes }, p);
        expect(got.tornSlot, `${rec.name} page ${p} without slot ${missing}`).toBeUndefined();
        expect(got.data.equals(fx.expected[k]![p]!), `${rec.name} page ${p} without slot ${missing}`).toBe(true);
      }
    }
  } finally {
    await s.close();
  }
}

for (const [layout, n, lost] of [
  ['parity', 4, 2],
  ['mirror', 2, 0],
  ['parity2', 4, 1],
] as const) {
  describe(`${layout} pool of ${n} files`, () => {
    it(`device replace rebuilds a deleted member onto a new file and rewrites both configurations; scrub is clean after; every page reads back with each member missing in turn`, async () => {
      const fx = await fixture(layout, n);
      const { f, paths } = fx;
      await rm(paths[lost]!);
      const degraded = await runScrub({ config: f.a }, quietIo());
      expect(degraded.status.degraded).toBe(true);
      expect(degraded.pages).toMatchObject({ pagesChecked: 2 * PAGES, checksumMismatches: 0, unreadablePages: 0 });

      const spare = join(f.dir, 'spare', 'new.img');
      const textA = readFileSync(f.a, 'utf8');
      const textB = readFileSync(f.b, 'utf8');
      const r = await runDeviceReplace({ config: f.a, slot: String(lost), with: spare, updateConfig: [f.a, f.b], rate: '512MiB/s' }, quietIo());
      expect(r.slot).toBe(lost);
      expect(r.device).toBe(spare);
      expect(r.bytesCopied).toBeGreaterThan(0);
      expect(r.pool.degraded).toBe(false);
      expect(r.pool.members[lost]).toMatchObject({ name: spare, state: 'healthy' });
      const withSpare = paths.map((p, i) => (i === lost ? spare : p));
      expect(r.devices).toEqual(withSpare);
      expect(r.updated).toEqual([f.a, f.b]);
      // Only the one string changed in each file; both still load and name the spare.
      for (const [file, before] of [
        [f.a, textA],
        [f.b, textB],
      ] as const) {
        const after = readFileSync(file, 'utf8');
        expect(after).toBe(before.replace(JSON.stringify(paths[lost]), JSON.stringify(spare)));
        expect(loadConfig(file).store.pool!.devices.map((d) => (d.kind === 'file' ? d.path : d.uri))).toEqual(withSpare);
      }

      const clean = await runScrub({ config: f.a }, quietIo());
      expect(clean.pool).toMatchObject({ mismatches: 0, unreadable: 0 });
      expect(clean.pool.bytesChecked).toBeGreaterThan(0);
      expect(clean.pages).toMatchObject({ allocations: 2, pagesChecked: 2 * PAGES, checksumMismatches: 0, unreadablePages: 0, tornSlots: 0 });
      expect(clean.problems).toEqual([]);
      expect(clean.status.degraded).toBe(false);

      await readAllWithout(layout, withSpare, null, fx);
      for (let i = 0; i < n; i++) await readAllWithout(layout, withSpare, i, fx);
    });

    it('scrub finds a mismatch planted behind the pool, reports it without --repair, and --repair makes every member what it was', async () => {
      const fx = await fixture(layout, n);
      const { f, paths } = fx;
      const before = await Promise.all(paths.map((p) => readFile(p)));
      // Where to plant: a parity layout's P chunk of the row holding the first pages (P of row r is on member N - 1 - (r mod N), docs and parity-device.ts); a mirror's second copy.
      const cfg = loadConfig(f.a);
      const { pool, store } = await openOfflineStore(cfg, { readOnly: true });
      const dataOffset = store.geometry.dataOffset;
      const prefix = pool.mirroredPrefixBytes;
      const rowBytes = pool.rowBytes;
      await store.close();
      let member: number;
      let at: number;
      if (layout === 'mirror') {
        member = 1;
        at = POOL_LABEL_AREA_BYTES + dataOffset + 100;
      } else {
        const chunkBytes = rowBytes / (n - (layout === 'parity' ? 1 : 2));
        const row = Math.floor((dataOffset - prefix) / rowBytes);
        member = n - 1 - (row % n);
        at = POOL_LABEL_AREA_BYTES + prefix + row * chunkBytes + 100;
      }
      const damaged = Buffer.from(before[member]!);
      damaged[at] = damaged[at]! ^ 0x5a;
      await writeFile(paths[member]!, damaged);

      const found = await runScrub({ config: f.a }, quietIo());
      expect(found.pool.mismatches).toBeGreaterThanOrEqual(1);
      expect(found.pool.repaired).toBe(0);
      expect(found.problems.join('; ')).toMatch(/mismatch(es)? left \(run with --repair\)/);
      // Scrub without --repair wrote nothing.
      expect((await readFile(paths[member]!)).equals(damaged)).toBe(true);

      const fixed = await runScrub({ config: f.a, repair: true }, quietIo());
      expect(fixed.pool.mismatches).toBeGreaterThanOrEqual(1);
      expect(fixed.pool.repaired).toBe(fixed.pool.mismatches);
      expect(fixed.problems).toEqual([]);
      const after = await Promise.all(paths.map((p) => readFile(p)));
      // The repair wrote the planted byte back; only the labels may differ (none here: no member failed).
      after.forEach((b, i) => expect(b.subarray(POOL_LABEL_AREA_BYTES).equals(before[i]!.subarray(POOL_LABEL_AREA_BYTES)), `member ${i}`).toBe(true));
      expect((await runScrub({ config: f.a }, quietIo())).pool.mismatches).toBe(0);
      for (let i = 0; i < n; i++) await readAllWithout(layout, paths, i, fx);
    });
  });
}

describe('a page that fails its CRC', () => {
  it('is counted by scrub, which exits non-zero through the CLI; a torn slot beside a good one is counted, not a problem', async () => {
    const fx = await fixture('mirror', 2);
    const { f, paths, records } = fx;
    const cfg = loadConfig(f.a);
    const { store } = await openOfflineStore(cfg, { readOnly: true });
    const dataOffset = store.geometry.dataOffset;
    await store.close();
    // Page 1 of the first allocation was written once (slot 0 only): both slots of it damaged on every member is a lost page;
    // page 0 was written twice: damaging slot 0 alone leaves slot 1 good (a torn slot).
    const { pageSlotOffset } = await import('../../src/store/layout.js');
    const rec = records[0]!;
    for (const p of paths) {
      const b = await readFile(p);
      // [page, slot, byte of the slot]: a data byte fails the CRC; a never-written slot (all zeros) needs a header byte changed to be more than blank.
      for (const [page, slot, byte] of [
        [1, 0, 64 + 10],
        [1, 1, 0],
        [0, 0, 64 + 10],
      ] as const) {
        const off = POOL_LABEL_AREA_BYTES + dataOffset + pageSlotOffset(rec.dataOffset, PAGE_BYTES, page, slot) + byte;
        b[off] = b[off]! ^ 0xff;
      }
      await writeFile(p, b);
    }
    const r = await runScrub({ config: f.a }, quietIo());
    expect(r.pool.mismatches).toBe(0);
    expect(r.pages).toMatchObject({ checksumMismatches: 1, tornSlots: 1, unreadablePages: 0 });
    expect(r.pages.badPages[0]).toMatch(/alloc-0 page 1: .*slot 0: .*slot 1: /);
    expect(r.problems.join('; ')).toMatch(/1 page with both slots failing their CRC/);

    const cli = await runCli(['scrub', '--config', f.a, '--partner-config', f.b]);
    expect(cli.code, cli.stderr).toBe(1);
    expect(cli.stdout).toMatch(/^pages +80 pages .*: 1 failing their CRC, 0 unreadable, 1 torn slot/m);
    expect(cli.stdout).toMatch(/bad page: alloc-0 page 1/);
    // Not a terminal: plain progress lines on stderr.
    expect(cli.stderr).toMatch(/^scrubbing the pool: 100% \(/m);
    expect(cli.stderr).toMatch(/^checking page CRCs: 100% \(/m);
  });
});

describe('refused while a controller serves', () => {
  it('a fresh heartbeat, a moving one, or a listening address makes scrub and device replace refuse, naming the controller; --force goes on with a warning; a clean stop does not refuse', async () => {
    const fx = await fixture('parity', 3);
    const { f, paths } = fx;
    const cfg = loadConfig(f.a);
    const beat = async (slot: { controllerId: number; counter: number; timeMs: number; role: number }): Promise<void> => {
      const { store } = await openOfflineStore(cfg, { readOnly: false });
      await store.writeMailboxSlot({ epoch: 3, pid: 4242, ...slot });
      await store.sync();
      await store.close();
    };
    const refusal = async (run: Promise<unknown>): Promise<string> => {
      const err = await run.then(
        () => null,
        (e: unknown) => e,
      );
      expect(isPagepairError(err, 'BUSY'), String(err)).toBe(true);
      return (err as Error).message;
    };

    // B's heartbeat, written just now, role MIRRORED: refused, naming B.
    await beat({ controllerId: 2, counter: 7, timeMs: Date.now(), role: Role.MIRRORED });
    const m1 = await refusal(runScrub({ config: f.a }, quietIo()));
    expect(m1).toMatch(/runs on a stopped pair only/);
    expect(m1).toMatch(/controller B looks alive: its heartbeat in the store's mailbox is \d+ ms old \(pid 4242, mirrored\)/);
    expect(m1).not.toMatch(/controller A/);
    const spare = join(f.dir, 'spare.img');
    const m2 = await refusal(runDeviceReplace({ config: f.a, slot: '1', with: spare }, quietIo()));
    expect(m2).toMatch(/^device replace runs on a stopped pair only.*controller B looks alive/);
    expect(existsSync(spare)).toBe(false);

    // --force: goes on, and says so loudly.
    const warnings: string[] = [];
    const forced = await runScrub({ config: f.a, force: true }, quietIo(warnings));
    expect(forced.forcedPast).toEqual(['B']);
    expect(warnings.join('')).toMatch(/WARNING: --force: controller B looks alive/);

    // A's heartbeat moving (its clock far off: the time alone would say it is old), B stopped cleanly.
    await beat({ controllerId: 2, counter: 8, timeMs: Date.now(), role: Role.STOPPING });
    // One store kept open for the beats, as a controller keeps its own: each beat is one slot write.
    const beater = (await openOfflineStore(cfg, { readOnly: false })).store;
    let counter = 100;
    let beating: Promise<void> = Promise.resolve();
    const timer = setInterval(() => {
      beating = beating.then(() => beater.writeMailboxSlot({ controllerId: 1, epoch: 3, pid: 4242, counter: ++counter, timeMs: 1_000_000, role: Role.ALONE }));
    }, 20);
    try {
      const m3 = await refusal(runScrub({ config: f.a }, { ...quietIo(), serving: { watchMs: 400 } }));
      expect(m3).toMatch(/controller A looks alive: its heartbeat in the store's mailbox moved while watched for 400 ms/);
      expect(m3).not.toMatch(/controller B/);
    } finally {
      clearInterval(timer);
      await beating;
      await beater.close();
    }
    // Its beats stopped long ago by its clock, and B stopped cleanly: scrub runs.
    expect((await runScrub({ config: f.a }, quietIo())).problems).toEqual([]);

    // Something listening on B's client address (a fenced or paused controller still accepts connections).
    const server = createServer((s) => s.destroy());
    await new Promise<void>((resolve) => server.listen(f.ports.bClient, '127.0.0.1', resolve));
    try {
      const m4 = await refusal(runDeviceReplace({ config: f.a, slot: '0', with: spare }, quietIo()));
      expect(m4).toMatch(new RegExp(`controller B looks alive: controller B's listen.client \\(127.0.0.1:${f.ports.bClient}\\) accepts connections`));
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    // Through the CLI: the refusal is the message and exit status 1; nothing was replaced.
    await beat({ controllerId: 2, counter: 9, timeMs: Date.now(), role: Role.MIRRORED });
    const cli = await runCli(['device', 'replace', '--config', f.a, '--slot', '0', '--with', spare]);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toMatch(/^pagepair: BUSY: device replace runs on a stopped pair only .*controller B looks alive/m);
    expect(existsSync(spare)).toBe(false);
    expect(paths.every((p) => existsSync(p))).toBe(true);
  });
});

describe('options', () => {
  it('a bad option is refused by name before anything is written', async () => {
    const fx = await fixture('mirror', 2);
    const { f, paths } = fx;
    const bad = async (run: Promise<unknown>, code: string, field: string, text: RegExp): Promise<void> => {
      const err = await run.then(
        () => null,
        (e: unknown) => e,
      );
      expect(isPagepairError(err), String(err)).toBe(true);
      expect((err as { code: string }).code).toBe(code);
      expect((err as { field?: string }).field).toBe(field);
      expect((err as Error).message).toMatch(text);
    };
    const spare = join(f.dir, 'spare.img');
    await bad(runDeviceReplace({ config: f.a, slot: '2', with: spare }, quietIo()), 'BAD_FIELD', '--slot', /--slot must be one of 0\.\.1 .* got "2"/);
    await bad(runDeviceReplace({ config: f.a, slot: 'x', with: spare }, quietIo()), 'BAD_FIELD', '--slot', /got "x"/);
    await bad(runDeviceReplace({ config: f.a, slot: '0', with: paths[1]! }, quietIo()), 'BAD_FIELD', '--with', /is the pool's device in slot 1/);
    await bad(runDeviceReplace({ config: f.a, slot: '0', with: 'http://example.invalid/x' }, quietIo()), 'BAD_FIELD', '--with', /^--with http:/);
    await bad(runDeviceReplace({ config: f.a, slot: '0', with: spare, rate: 'fast' }, quietIo()), 'BAD_FIELD', '--rate', /--rate must be a size/);
    await bad(runScrub({ config: f.a, rate: '-3' }, quietIo()), 'BAD_FIELD', '--rate', /--rate must be/);
    // A configuration of another pool named in --update-config: refused before the rebuild.
    const other = join(f.dir, 'other.json');
    writeFileSync(other, JSON.stringify(f.configOf('B', { store: { pool: { layout: 'mirror', devices: [join(f.dir, 'x0.img'), join(f.dir, 'x1.img')] } } })));
    await bad(runDeviceReplace({ config: f.a, slot: '0', with: spare, updateConfig: [f.b, other] }, quietIo()), 'BAD_CONFIG', 'store.pool.devices[1]', /--update-config .*other\.json: store\.pool\.devices\[1\] is .*x1\.img, but the pool's slot 1 is/);
    expect(existsSync(spare)).toBe(false);
    // A configuration over one file has no pool.
    const single = join(f.dir, 'single.json');
    writeFileSync(single, JSON.stringify(f.configOf('A')));
    await bad(runScrub({ config: single }, quietIo()), 'BAD_CONFIG', 'store.pool', /store\.pool is not given/);

    const cli = await runCli(['device', 'replace', '--config', f.a, '--slot', '5', '--with', spare]);
    expect(cli.code).toBe(2);
    expect(cli.stderr).toMatch(/^pagepair: BAD_FIELD: --slot must be one of 0\.\.1/m);
    for (const args of [
      ['device', 'replace', '--help'],
      ['scrub', '--help'],
    ]) {
      const help = await runCli(args);
      expect(help.code).toBe(0);
      expect(help.stdout).toMatch(/stopped/);
      expect(help.stdout).toMatch(/--rate <size>/);
      expect(help.stdout).toMatch(/--force/);
    }
    expect((await runCli(['device', 'replace', '--help'])).stdout).toMatch(/--update-config <file\.\.\.>/);
    expect((await runCli(['scrub', '--help'])).stdout).toMatch(/--repair/);
  });

  it('device replace through the CLI: progress lines off a terminal, the devices array to put in both configurations', async () => {
    const fx = await fixture('parity', 3);
    const { f, paths } = fx;
    await rm(paths[1]!);
    const spare = join(f.dir, 'cli-spare.img');
    const cli = await runCli(['device', 'replace', '--config', f.a, '--slot', '1', '--with', spare, '--rate', '1GiB/s']);
    expect(cli.code, cli.stderr).toBe(0);
    expect(cli.stderr).toMatch(new RegExp(`^rebuilding slot 1 onto ${spare.replace(/[.]/g, '\\.')}: 100% \\(`, 'm'));
    expect(cli.stdout).toMatch(/^slot 1: rebuilt onto .*cli-spare\.img \(was .*d1\.img\)/m);
    expect(cli.stdout).toContain(`"devices": ${JSON.stringify([paths[0], spare, paths[2]])}`);
    expect(cli.stdout).toMatch(/BOTH controllers' configurations must now name/);
    expect(cli.stdout).toMatch(/not written anywhere: .*--update-config/);
    // The configurations were not touched: they still name the deleted file.
    expect(JSON.parse(readFileSync(f.a, 'utf8')).store.pool.devices).toEqual(paths);
    const scrub = await runCli(['scrub', '--config', f.a, '--json']);
    // Through a.json the pool opens with slot 1 missing again (its file was deleted): degraded but clean.
    expect(scrub.code, scrub.stderr).toBe(0);
    const r = JSON.parse(scrub.stdout) as { pool: { mismatches: number }; status: { degraded: boolean } };
    expect(r.pool.mismatches).toBe(0);
  });
});
