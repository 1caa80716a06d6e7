#!/usr/bin/env node
// Issue 14's benchmark in one table: for one device, a mirror of 2, parity
// over 4 and parity2 over 5, the store-level destage rate
// (scripts/bench-pools.mjs), client writes through a running mirrored pair
// (scripts/bench-pool-clients.mjs), each healthy and with one member failed,
// and the rebuild rate, side by side with ratios to one device.
//
//   npm run bench:pools-all [-- --quick] [--json FILE]
//
// It runs the two benchmarks one after the other (each as its own process,
// with --json to a temporary file) and prints their own tables too. --quick
// takes fewer pages, one repeat and shorter client runs (a few minutes
// instead of about ten; the figures are noisier).

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { scriptOptions } from './script-options.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const values = scriptOptions(
  'bench-pools-all',
  `usage: node scripts/bench-pools-all.mjs [--quick] [--json FILE]

Runs scripts/bench-pools.mjs (store level) and scripts/bench-pool-clients.mjs
(client writes through a pair), then prints one table of both with ratios
to one device. Build first (npm run build); npm run bench:pools-all does.

  --quick       fewer pages, one repeat, 2 s client runs (noisier)
  --json FILE   write the merged figures as JSON too
  --keep        keep the temporary directory of the two reports
`,
  { quick: { type: 'boolean', default: false }, json: { type: 'string' } },
);

const dir = mkdtempSync(path.join(os.tmpdir(), 'pagepair-bench-pools-all-'));
const storeJson = path.join(dir, 'store.json');
const clientJson = path.join(dir, 'clients.json');
const run = (script, args) => execFileSync(process.execPath, [path.join(here, script), ...args], { stdio: ['ignore', 'inherit', 'inherit'] });
let store;
let clients;
try {
  const loadStart = os.loadavg()[0];
  run('bench-pools.mjs', [...(values.quick ? ['--pages', '2048', '--repeat', '1'] : []), '--json', storeJson]);
  run('bench-pool-clients.mjs', [...(values.quick ? ['--seconds', '2', '--warmup', '1'] : []), '--json', clientJson]);
  store = JSON.parse(readFileSync(storeJson, 'utf8'));
  clients = JSON.parse(readFileSync(clientJson, 'utf8'));
  store.loadStart = loadStart;
} finally {
  if (!values.keep) rmSync(dir, { recursive: true, force: true });
}

// The two benchmarks name the layouts a little differently.
const storeName = { one: 'one device', 'mirror-2': 'mirror-2', 'parity-4': 'parity-4', 'parity2-5': 'parity2-5' };
const median = (xs) => {
  if (xs === null || xs === undefined || xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const merged = clients.rows.map((c) => {
  const s = store.rows.find((r) => r.layout === storeName[c.layout]) ?? {};
  return {
    layout: c.layout,
    destageMBs: s.destageMBs,
    destageDegradedMBs: s.destageDegradedMBs,
    clientWritesPerSec: median(c.healthy.map((r) => r.opsPerSec)),
    clientWritesDegradedPerSec: c.degraded === null ? undefined : median(c.degraded.map((r) => r.opsPerSec)),
    rebuildMBs: s.rebuildMBs,
  };
});
const one = merged.find((r) => r.layout === 'one');
const f = (x, digits = 0) => (x === undefined ? '-' : x.toFixed(digits));
const ratio = (x, base) => (x === undefined || base === undefined ? '-' : (x / base).toFixed(2));
const head = ['layout', 'destage MB/s', 'ratio', 'degraded', 'ratio', 'client writes/s', 'ratio', 'degraded', 'ratio', 'rebuild MB/s'];
const table = merged.map((r) => [
  r.layout,
  f(r.destageMBs, 1),
  ratio(r.destageMBs, one?.destageMBs),
  f(r.destageDegradedMBs, 1),
  ratio(r.destageDegradedMBs, one?.destageMBs),
  f(r.clientWritesPerSec),
  ratio(r.clientWritesPerSec, one?.clientWritesPerSec),
  f(r.clientWritesDegradedPerSec),
  ratio(r.clientWritesDegradedPerSec, one?.clientWritesPerSec),
  f(r.rebuildMBs, 1),
]);
const widths = head.map((h, i) => Math.max(h.length, ...table.map((t) => t[i].length)));
const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
console.log('');
console.log(`issue 14, side by side: store-level destage and rebuild (bench-pools), client writes through a mirrored pair (bench-pool-clients); ratios to one device healthy; load ${store.loadStart.toFixed(1)} at start, ${os.loadavg()[0].toFixed(1)} at end`);
console.log(line(head));
for (const t of table) console.log(line(t));
if (values.json !== undefined) writeFileSync(values.json, JSON.stringify({ store, clients, merged }, null, 2));
