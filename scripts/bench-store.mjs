#!/usr/bin/env node
// The page store alone over a real file: how fast pages are destaged (written,
// then synced in batches, as the core's group commit does) and staged (read
// back), so that the cost of a store format can be measured against another
// build in the same run. Each round writes `batch` pages (one writePage each,
// all in flight together) and syncs once; reads read pages one at a time.
//
//   npm run build && node scripts/bench-store.mjs [--pages 4096] [--page 4096] [--batch 32] [--repeat 5]
//   PAGEPAIR_DIST=/other/checkout/dist node scripts/bench-store.mjs ...   (another build)
//
// Prints median pages per second of each phase over the repeats. The file is
// made in the system's temporary directory and removed afterwards.

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = process.env.PAGEPAIR_DIST ?? path.join(here, '..', 'dist');
const load = (file) => import(pathToFileURL(path.join(dist, file)).href);
const { FileDevice } = await load('store/file-device.js');
const { PageStore } = await load('store/page-store.js');
const { extentBytes, FORMAT_VERSION } = await load('store/layout.js');

const { values } = parseArgs({
  options: {
    pages: { type: 'string', default: '4096' },
    page: { type: 'string', default: '4096' },
    batch: { type: 'string', default: '32' },
    repeat: { type: 'string', default: '5' },
    'no-sync': { type: 'boolean', default: false },
  },
});
const pages = Number(values.pages);
const pageSizeBytes = Number(values.page);
const batch = Number(values.batch);
const repeat = Number(values.repeat);
const PAIR = '11111111-2222-4333-8444-555555555555';

const dir = mkdtempSync(path.join(os.tmpdir(), 'pagepair-bench-store-'));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

try {
  const extent = extentBytes(pageSizeBytes, pages);
  const file = path.join(dir, 'store');
  const dev = await FileDevice.create(file, 2 * 1024 * 1024 + extent + 1024 * 1024);
  const store = await PageStore.format(dev, { pairId: PAIR, nowMs: 1 });
  const loc = { guid: '99999999-8888-4777-8666-555555555555', dataOffset: 0, pageSizeBytes };
  const data = Buffer.alloc(pageSizeBytes, 7);
  const results = { firstWrite: [], rewrite: [], read: [], rewriteCpuUs: [] };
  // The file is sparse: a first write of a block allocates it, which an
  // fdatasync then commits too. Measured apart ("first write", on a fresh
  // file, once) from writes over allocated blocks ("rewrite", every repeat).
  let version = 0;
  const writeAll = async () => {
    version++;
    const t0 = process.hrtime.bigint();
    for (let first = 0; first < pages; first += batch) {
      const writes = [];
      for (let p = first; p < Math.min(first + batch, pages); p++) writes.push(store.writePage(loc, p, version, 1, data));
      await Promise.all(writes);
      if (!values['no-sync']) await store.sync();
    }
    return pages / (Number(process.hrtime.bigint() - t0) / 1e9);
  };
  results.firstWrite.push(await writeAll());
  // Every slot allocated (a format 2 store's second slots too).
  await dev.write(store.geometry.dataOffset, Buffer.alloc(extent));
  await store.sync();
  await writeAll();
  for (let r = 0; r < repeat; r++) {
    const cpu0 = process.cpuUsage();
    results.rewrite.push(await writeAll());
    const cpu = process.cpuUsage(cpu0);
    results.rewriteCpuUs.push((cpu.user + cpu.system) / pages);
    const t0 = process.hrtime.bigint();
    for (let p = 0; p < pages; p++) await store.readPage(loc, p);
    results.read.push(pages / (Number(process.hrtime.bigint() - t0) / 1e9));
  }
  await store.close();
  const fmt = (xs) => `${Math.round(median(xs))}`.padStart(8);
  console.log(
    `store format ${FORMAT_VERSION} (${dist}): ${pages} pages of ${pageSizeBytes} bytes, batches of ${batch}${values['no-sync'] ? ', no sync' : ', one sync a batch'}, median of ${repeat}`,
  );
  console.log(
    `  pages/s  first write ${fmt(results.firstWrite)}  rewrite ${fmt(results.rewrite)}  read ${fmt(results.read)}   ` +
      `rewrite CPU ${median(results.rewriteCpuUs).toFixed(1)} us/page (all threads)`,
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
