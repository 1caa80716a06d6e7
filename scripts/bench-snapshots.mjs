#!/usr/bin/env node
// Volume write throughput with 0 and 8 copy-on-write snapshots, side by
// side (issue 15's snapshot benchmark), through a real mirrored pair of its
// own and the pair client (controller A). Three cases, each on a fresh
// volume of the same size:
//   0 snapshots      plain mirrored writes;
//   8, first writes  8 snapshots taken just before: every page's first write
//                    copies it into each of the 8 (the worst case);
//   8, steady        8 snapshots, every page already written once since: no
//                    copy left to make (the long-run cost of having them).
// For each: random 4 KiB writes (32 in flight) and 1 MiB sequential writes
// (4 in flight), in writes/s and MB/s, with the ratio to 0 snapshots.
//
//   npm run bench:snapshots [-- --quick] [--volume 64MiB] [--json FILE]

import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { scriptOptions } from './script-options.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = process.env.PAGEPAIR_DIST ?? path.join(here, '..', 'dist');
const load = (file) => import(pathToFileURL(path.join(dist, file)).href);

const MiB = 1024 * 1024;
const values = scriptOptions(
  'bench-snapshots',
  `usage: node scripts/bench-snapshots.mjs [options]

A mirrored pair of controllers (127.0.0.1) of its own; the pair client writes
a volume with 0 snapshots, with 8 taken just before (first writes copy), and
with 8 whose copies are all made (steady state).
  --volume SIZE   each volume's size (default 64MiB; --quick 16MiB)
  --snapshots N   snapshots in the second and third cases (default 8)
  --cache MiB     each controller's cacheBytesMax (default 512)
  --quick         a short run
  --json FILE     write every figure as JSON too
  --keep          keep the working directory
`,
  {
    volume: { type: 'string' },
    snapshots: { type: 'string', default: '8' },
    cache: { type: 'string', default: '512' },
    quick: { type: 'boolean', default: false },
    json: { type: 'string' },
  },
);

const { parseSize, formatBytes } = await load('workload/units.js');
const { NbdPair, storeBytesFor } = await load('runtime/nbd-pair.js');
const { PairClient } = await load('client/pair-client.js');

function fail(text) {
  process.stderr.write(`bench-snapshots: ${text}\n`);
  process.exit(2);
}
let volumeBytes;
try {
  volumeBytes = parseSize(values.volume ?? (values.quick ? '16MiB' : '64MiB'), 'volume');
} catch (err) {
  fail(err.message);
}
const snapshots = Number(values.snapshots);
if (!Number.isInteger(snapshots) || snapshots < 1 || snapshots > 32) fail(`--snapshots must be 1 to 32, got ${values.snapshots}`);
const cacheBytesMax = Number(values.cache) * MiB;
if (!Number.isInteger(Number(values.cache)) || cacheBytesMax < 64 * MiB) fail(`--cache must be a whole number of MiB, at least 64, got ${values.cache}`);
const progress = (line) => process.stderr.write(`${line}\n`);

/** `total` writes of `bytes` each, `inflight` at a time, at offsets `at(i)`; writes/s and MB/s. */
async function run(pc, guid, bytes, total, inflight, at) {
  const data = randomBytes(bytes);
  let next = 0;
  const t0 = performance.now();
  const lane = async () => {
    while (next < total) {
      const i = next++;
      await pc.write(guid, at(i), data);
    }
  };
  await Promise.all(Array.from({ length: inflight }, lane));
  const s = (performance.now() - t0) / 1000;
  return { writes: total, seconds: s, writesPerSec: total / s, mbPerSec: (total * bytes) / MiB / s };
}

const pages = volumeBytes / 4096;
/** A permutation of the volume's 4 KiB blocks, so each is written once (every first write copies). */
function shuffled(n, seed) {
  const p = Array.from({ length: n }, (_, i) => i);
  let x = seed;
  for (let i = n - 1; i > 0; i--) {
    x = (x * 1103515245 + 12345) >>> 0;
    const j = x % (i + 1);
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

async function measure(pc, guid) {
  const order = shuffled(pages, 7);
  const random = await run(pc, guid, 4096, pages, 32, (i) => order[i] * 4096);
  return random;
}

const loadAtStart = os.loadavg()[0];
const dir = mkdtempSync(path.join(os.tmpdir(), 'pagepair-bench-snapshots-'));
let pair = null;
let pc = null;
const rows = [];
let failed = false;
try {
  // Three volumes of the random case and three of the sequential one, each with up to `snapshots` snapshots.
  const storeBytes = storeBytesFor(Array.from({ length: 6 * (1 + snapshots) }, () => volumeBytes));
  progress(`bench-snapshots: pair in ${dir}, volumes of ${formatBytes(volumeBytes)}, ${snapshots} snapshots, store ${formatBytes(storeBytes)} (sparse)`);
  pair = await NbdPair.start({ dir, storeBytes, cacheBytesMax, logLevel: 'warn' });
  pc = await PairClient.connect({ controllers: [pair.a.address, pair.b.address], name: 'bench-snapshots', timeoutMs: 60_000, retryForMs: 60_000 });
  const seqTotal = volumeBytes / MiB;
  for (const [kind, label] of [['none', '0 snapshots'], ['first', `${snapshots}, first writes`], ['steady', `${snapshots}, steady`]]) {
    const figures = {};
    for (const shape of ['random 4 KiB', '1 MiB sequential']) {
      const vol = await pc.allocate(`bench-${kind}-${shape.startsWith('r') ? 'r' : 's'}`, volumeBytes);
      // Written once first, so 0 snapshots and the others start from the same place.
      await run(pc, vol.guid, MiB, seqTotal, 4, (i) => i * MiB);
      if (kind !== 'none') for (let s = 0; s < snapshots; s++) await pc.snapshot(vol.guid, `s${s}`);
      if (kind === 'steady') await run(pc, vol.guid, MiB, seqTotal, 4, (i) => i * MiB);
      figures[shape] = shape.startsWith('r') ? await measure(pc, vol.guid) : await run(pc, vol.guid, MiB, seqTotal, 4, (i) => i * MiB);
      progress(`${label}, ${shape}: ${figures[shape].writesPerSec.toFixed(0)} writes/s, ${figures[shape].mbPerSec.toFixed(1)} MB/s`);
    }
    rows.push({ kind, label, ...figures });
  }
} catch (err) {
  failed = true;
  process.stderr.write(`bench-snapshots failed: ${err instanceof Error ? err.stack : String(err)}\n`);
} finally {
  await pc?.close();
  await pair?.stop();
  if (!values.keep) rmSync(dir, { recursive: true, force: true });
  else progress(`files kept in ${dir}`);
}

if (rows.length > 0) {
  const base = rows[0];
  const head = ['case', 'random 4 KiB writes/s', 'ratio', '1 MiB seq MB/s', 'ratio'];
  const body = rows.map((r) => [
    r.label,
    r['random 4 KiB'].writesPerSec.toFixed(0),
    (r['random 4 KiB'].writesPerSec / base['random 4 KiB'].writesPerSec).toFixed(2),
    r['1 MiB sequential'].mbPerSec.toFixed(1),
    (r['1 MiB sequential'].mbPerSec / base['1 MiB sequential'].mbPerSec).toFixed(2),
  ]);
  console.log(`| ${head.join(' | ')} |\n|${head.map(() => '---').join('|')}|\n${body.map((b) => `| ${b.join(' | ')} |`).join('\n')}`);
  console.log(`volume ${formatBytes(volumeBytes)}, ${snapshots} snapshots; load ${loadAtStart.toFixed(1)} at start, ${os.loadavg()[0].toFixed(1)} at end`);
  if (values.json !== undefined) writeFileSync(values.json, JSON.stringify({ volumeBytes, snapshots, rows }, null, 2));
}
process.exit(failed ? 1 : 0);
