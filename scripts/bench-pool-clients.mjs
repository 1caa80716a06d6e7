#!/usr/bin/env node
// Client writes through a real mirrored pair over one device, a mirror of 2,
// parity over 4 and parity2 over 5 (issue 14's benchmark, client level; the
// store-level figures are scripts/bench-pools.mjs): 4 KiB random writes at 32
// in flight, healthy and with one member file removed (the pool opens
// degraded), medians of --runs, with ratios to one device.
//
//   npm run build && node scripts/bench-pool-clients.mjs [--seconds 5] [--runs 1] [--layouts one,parity-4] [--json FILE]
//
// Member files are sparse, in a temporary directory removed afterwards (--keep keeps it).

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { scriptOptions } from './script-options.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = process.env.PAGEPAIR_DIST ?? path.join(here, '..', 'dist');
const load = (file) => import(pathToFileURL(path.join(dist, file)).href);
const { runPoolClientBench, formatPoolClientTable, parsePoolLayouts, POOL_BENCH_LAYOUTS } = await load('bench/pool-clients.js');

const MiB = 1024 * 1024;
const values = scriptOptions(
  'bench-pool-clients',
  `usage: node scripts/bench-pool-clients.mjs [options]

A mirrored pair of controllers (pagepair start, 127.0.0.1) over each layout,
4 KiB random writes from this process, each controller writing its own area
(half the working set), a small cache and a short dirty age so that pages are
destaged to the pool while measuring. Healthy, then degraded: member 1's file
removed and the same pool started again. Prints median writes/s and each
figure's ratio to one device healthy.
  --seconds S        measured seconds per run (default 5)
  --warmup S         load before measuring (default 1)
  --runs N           runs per figure (default 1)
  --inflight N       writes in flight (default 32)
  --layouts LIST     of ${POOL_BENCH_LAYOUTS.join(',')} (default all)
  --cache MiB        each controller's cacheBytesMax (default 16)
  --dirty-age MS     cache.dirtyAgeMaxMs (default 200)
  --working-set MiB  pages written, split over A and B (default 32)
  --dir DIR          where member files go (default a new temp dir, removed after)
  --json FILE        write every run as JSON too
  --keep             keep the directory
`,
  {
    seconds: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '1' },
    runs: { type: 'string', default: '1' },
    inflight: { type: 'string', default: '32' },
    layouts: { type: 'string', default: POOL_BENCH_LAYOUTS.join(',') },
    cache: { type: 'string', default: '16' },
    'dirty-age': { type: 'string', default: '200' },
    'working-set': { type: 'string', default: '32' },
    dir: { type: 'string' },
    json: { type: 'string' },
  },
);
const num = (name, min) => {
  const v = Number(values[name]);
  if (!Number.isFinite(v) || v < min) {
    process.stderr.write(`bench-pool-clients: --${name} must be a number of at least ${min}, got ${values[name]}\n`);
    process.exit(2);
  }
  return v;
};
let layouts;
try {
  layouts = parsePoolLayouts(values.layouts);
} catch (err) {
  process.stderr.write(`bench-pool-clients: ${err.message}\n`);
  process.exit(2);
}
const settings = {
  layouts,
  runs: num('runs', 1),
  seconds: num('seconds', 0.5),
  warmupSeconds: num('warmup', 0),
  inflight: num('inflight', 1),
  connections: 4,
  deviceBytes: 256 * MiB,
  chunkBytes: 64 * 1024,
  workingSetBytes: num('working-set', 1) * MiB,
  cacheBytesMax: num('cache', 1) * MiB,
  dirtyAgeMaxMs: num('dirty-age', 1),
  seed: 1,
  progress: (line) => process.stderr.write(`bench-pool-clients: ${line}\n`),
};
const made = values.dir === undefined;
const dir = values.dir ?? mkdtempSync(path.join(os.tmpdir(), 'pagepair-bench-pool-clients-'));
const loadStart = os.loadavg();
let rows;
try {
  rows = await runPoolClientBench({ ...settings, dir });
} finally {
  if (made && !values.keep) rmSync(dir, { recursive: true, force: true });
}
const loadEnd = os.loadavg();
console.log(
  `client writes through a mirrored pair, 4 KiB random, ${settings.inflight} in flight, cache ${values.cache} MiB, dirtyAgeMaxMs ${settings.dirtyAgeMaxMs}, ` +
    `median of ${settings.runs} x ${settings.seconds} s; ratios to one device healthy; load ${loadStart[0].toFixed(2)} at start, ${loadEnd[0].toFixed(2)} at end`,
);
console.log(formatPoolClientTable(rows));
if (values.json !== undefined) {
  const { progress, ...rest } = settings;
  writeFileSync(values.json, JSON.stringify({ settings: rest, loadAvg: { start: loadStart, end: loadEnd }, rows }, null, 2));
}
