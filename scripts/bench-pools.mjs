#!/usr/bin/env node
// The page store over each pool layout against one device, in one run (issue
// 14's benchmark, store level: no controllers): how fast pages are destaged
// the way the core's destager does it (runs of neighbouring pages, all in
// flight, one sync a run), how many random single pages a second it takes
// (8 in flight, a sync every 64: the worst case of a parity layout, whose
// write of part of a row reads the row's other data chunks), healthy and
// with one member failed, and how fast a member is rebuilt.
//
//   npm run build && node scripts/bench-pools.mjs [--pages 4096] [--repeat 3] [--json file]
//
// Files in the system's temporary directory (sparse, removed afterwards).
// Prints medians of the repeats and each layout's ratio to one device.
// Not measured here: client writes through a running pair over a pool.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { scriptOptions } from './script-options.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = process.env.PAGEPAIR_DIST ?? path.join(here, '..', 'dist');
const load = (file) => import(pathToFileURL(path.join(dist, file)).href);
const { FileDevice } = await load('store/file-device.js');
const { PageStore } = await load('store/page-store.js');
const { createPool, openPool } = await load('store/open-pool.js');

const values = scriptOptions(
  'bench-pools',
  `usage: node scripts/bench-pools.mjs [--pages N] [--repeat N] [--json FILE] [--keep]

The page store over one device, a mirror of 2, parity over 4 and parity2
over 5 (files, chunk 64 KiB), side by side: destage MB/s (runs of 32
neighbouring 4 KiB pages, one sync a run), random single-page writes a
second (8 in flight, a sync every 64), each healthy and with one member
failed, and the rebuild rate of one member. Medians of --repeat runs.
  --pages N     pages of 4 KiB written per run (default 4096)
  --repeat N    runs per figure (default 3)
  --json FILE   write the figures as JSON too
`,
  { pages: { type: 'string', default: '4096' }, repeat: { type: 'string', default: '3' }, json: { type: 'string' } },
);
const pages = Number(values.pages);
const repeat = Number(values.repeat);
if (!Number.isInteger(pages) || pages < 64 || !Number.isInteger(repeat) || repeat < 1) {
  process.stderr.write('bench-pools: --pages must be an integer of 64 or more, --repeat 1 or more\n');
  process.exit(2);
}
const PAGE = 4096;
const RUN = 32;
const RANDOM_WRITES = Math.min(2048, pages);
const RANDOM_INFLIGHT = 8;
const PAIR = '11111111-2222-4333-8444-555555555555';
const MEMBER_BYTES = 256 * 1024 * 1024;
const CHUNK = 64 * 1024;
const LAYOUTS = [
  { name: 'one device', layout: null, devices: 1 },
  { name: 'mirror-2', layout: 'mirror', devices: 2 },
  { name: 'parity-4', layout: 'parity', devices: 4 },
  { name: 'parity2-5', layout: 'parity2', devices: 5 },
];

/** A member that has failed: every request fails. */
class Failed {
  constructor(sizeBytes) {
    this.sizeBytes = sizeBytes;
  }
  read() {
    return Promise.reject(new Error('EIO: member failed (bench)'));
  }
  write() {
    return Promise.reject(new Error('EIO: member failed (bench)'));
  }
  sync() {
    return Promise.reject(new Error('EIO: member failed (bench)'));
  }
  close() {
    return Promise.resolve();
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const seconds = (t0) => Number(process.hrtime.bigint() - t0) / 1e9;
const dir = mkdtempSync(path.join(os.tmpdir(), 'pagepair-bench-pools-'));
let round = 0;

/** A fresh store over the layout; `failed`: one member out from the start (as after a failure). */
async function freshStore(l, failed) {
  round++;
  const paths = Array.from({ length: l.devices }, (_, i) => path.join(dir, `r${round}-d${i}.img`));
  const devices = await Promise.all(paths.map((p) => FileDevice.create(p, MEMBER_BYTES)));
  if (l.layout === null) return { store: await PageStore.format(devices[0], { pairId: PAIR, nowMs: 1 }), paths };
  const members = devices.map((device, i) => ({ name: paths[i], device }));
  const pool = await createPool(members, { layout: l.layout, chunkBytes: CHUNK });
  let store = await PageStore.format(pool, { pairId: PAIR, nowMs: 1 });
  if (failed) {
    await store.close();
    const again = await Promise.all(paths.map((p, i) => (i === 1 ? new Failed(MEMBER_BYTES) : FileDevice.open(p))));
    store = await PageStore.open(await openPool(l.layout, again.map((device, i) => ({ name: paths[i], device }))), { pairId: PAIR });
  }
  return { store, paths };
}

function locFor(store) {
  return { guid: '99999999-8888-4777-8666-555555555555', dataOffset: 0, pageSizeBytes: PAGE };
}

/** Runs of RUN neighbouring pages, all in flight, a sync after each: MB/s of page data. */
async function destage(store, version) {
  const loc = locFor(store);
  const data = Buffer.alloc(PAGE, version & 0xff);
  const t0 = process.hrtime.bigint();
  for (let first = 0; first < pages; first += RUN) {
    const writes = [];
    for (let p = first; p < Math.min(first + RUN, pages); p++) writes.push(store.writePage(loc, p, version, 1, data));
    await Promise.all(writes);
    await store.sync();
  }
  return (pages * PAGE) / 1e6 / seconds(t0);
}

/** Random single pages, RANDOM_INFLIGHT in flight, a sync every 64: writes a second. */
async function randomWrites(store, version) {
  const loc = locFor(store);
  const data = Buffer.alloc(PAGE, 3);
  let seed = 12345 + version;
  const next = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % pages;
  let issued = 0;
  const t0 = process.hrtime.bigint();
  const worker = async () => {
    while (issued < RANDOM_WRITES) {
      issued++;
      await store.writePage(loc, next(), version + issued, 1, data);
      if (issued % 64 === 0) await store.sync();
    }
  };
  await Promise.all(Array.from({ length: RANDOM_INFLIGHT }, worker));
  await store.sync();
  return RANDOM_WRITES / seconds(t0);
}

/** Member 0 rebuilt onto a new file: MB/s of member bytes. */
async function rebuild(l) {
  const { store, paths } = await freshStore(l, false);
  await destage(store, 1);
  await store.close();
  const devices = await Promise.all(paths.map((p) => FileDevice.open(p)));
  const pool = await openPool(l.layout, devices.map((device, i) => ({ name: paths[i], device })));
  const spare = path.join(dir, `r${round}-spare.img`);
  const target = await FileDevice.create(spare, MEMBER_BYTES);
  const t0 = process.hrtime.bigint();
  await pool.replace(0, { name: spare, device: target });
  const rate = MEMBER_BYTES / 1e6 / seconds(t0);
  await pool.close();
  return rate;
}

const rows = [];
try {
  for (const l of LAYOUTS) {
    const row = { layout: l.name };
    for (const failed of [false, true]) {
      if (failed && l.layout === null) continue;
      const d = [];
      const r = [];
      for (let i = 0; i < repeat; i++) {
        const { store } = await freshStore(l, failed);
        await destage(store, 1); // first writes allocate the sparse files' blocks
        d.push(await destage(store, 2));
        r.push(await randomWrites(store, 10));
        await store.close();
      }
      row[failed ? 'destageDegradedMBs' : 'destageMBs'] = median(d);
      row[failed ? 'randomDegradedPerSec' : 'randomPerSec'] = median(r);
    }
    if (l.layout !== null) {
      const rb = [];
      for (let i = 0; i < repeat; i++) rb.push(await rebuild(l));
      row.rebuildMBs = median(rb);
    }
    rows.push(row);
    process.stderr.write(`bench-pools: ${l.name} done\n`);
  }
} finally {
  if (!values.keep) rmSync(dir, { recursive: true, force: true });
}

const one = rows[0];
const f = (x, digits = 0) => (x === undefined ? '-' : x.toFixed(digits));
const ratio = (x, base) => (x === undefined ? '-' : (x / base).toFixed(2));
const head = ['layout', 'destage MB/s', 'ratio', 'degraded', 'ratio', 'random writes/s', 'ratio', 'degraded', 'ratio', 'rebuild MB/s'];
const table = rows.map((r) => [
  r.layout,
  f(r.destageMBs, 1),
  ratio(r.destageMBs, one.destageMBs),
  f(r.destageDegradedMBs, 1),
  ratio(r.destageDegradedMBs, one.destageMBs),
  f(r.randomPerSec),
  ratio(r.randomPerSec, one.randomPerSec),
  f(r.randomDegradedPerSec),
  ratio(r.randomDegradedPerSec, one.randomPerSec),
  f(r.rebuildMBs, 1),
]);
const widths = head.map((h, i) => Math.max(h.length, ...table.map((t) => t[i].length)));
const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
console.log(`page store over files, ${pages} pages of 4 KiB, chunk 64 KiB, median of ${repeat}; ratios to one device; load ${os.loadavg()[0].toFixed(1)}`);
console.log(line(head));
for (const t of table) console.log(line(t));
if (values.json !== undefined) writeFileSync(values.json, JSON.stringify({ pages, repeat, rows, loadAvg: os.loadavg()[0] }, null, 2));
