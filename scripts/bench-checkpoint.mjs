#!/usr/bin/env node
// Checkpoint commits through a real mirrored pair (issue 15's benchmark for
// regions): for each checkpoint size, an overwrite region (a ring of 2
// generations) takes checkpoints one after another, each timed from
// beginCheckpoint() to the answer of commit(); p50, p99 and MB/s. Beside
// them, measured in the same run on the same pair and the same client, the
// floors they are compared against: the same bytes written as plain
// mirrored writes to an ordinary allocation (what the data costs without a
// region's commit), and the same bytes written to a local file and
// fdatasync'd (one copy on this machine's disk).
//
//   npm run bench:checkpoint [-- --quick] [--sizes 1MiB,64MiB] [--json FILE]
//
// The pair runs in a temporary directory (store sparse), removed afterwards
// unless --keep.

import { randomBytes } from 'node:crypto';
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
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
  'bench-checkpoint',
  `usage: node scripts/bench-checkpoint.mjs [options]

A mirrored pair of controllers (pagepair start, 127.0.0.1) of its own; one
client (the pair client, through controller A) commits checkpoints of each
size into an overwrite region, one after another, and writes the same bytes
as plain mirrored writes and into a local file with fdatasync, for the ratios.
  --sizes LIST       checkpoint sizes (default 1MiB,64MiB)
  --commits LIST     timed commits per size (default 200,16; --quick 20,3)
  --warmup N         untimed commits per size first (default 2; --quick 1)
  --chunk SIZE       bytes per write() (default 1MiB)
  --inflight N       write() calls in flight within a checkpoint (default 4)
  --policy NAME      the region's policy, which sets its page size (default checkpoint: 256 KiB pages)
  --cache MiB        each controller's cacheBytesMax (default 512)
  --quick            a short run (about 10 s; the full one takes about a minute)
  --json FILE        write every figure as JSON too
  --keep             keep the working directory
`,
  {
    sizes: { type: 'string', default: '1MiB,64MiB' },
    commits: { type: 'string' },
    warmup: { type: 'string' },
    chunk: { type: 'string', default: '1MiB' },
    inflight: { type: 'string', default: '4' },
    policy: { type: 'string', default: 'checkpoint' },
    cache: { type: 'string', default: '512' },
    quick: { type: 'boolean', default: false },
    json: { type: 'string' },
  },
);

const { parseSize, formatBytes } = await load('workload/units.js');
const { NbdPair, storeBytesFor } = await load('runtime/nbd-pair.js');
const { PairClient } = await load('client/pair-client.js');
const { Region } = await load('client/region.js');

function fail(text) {
  process.stderr.write(`bench-checkpoint: ${text}\n`);
  process.exit(2);
}
function wholeNumber(name, text, min) {
  const v = Number(text);
  if (!/^\d+$/.test(String(text).trim()) || v < min) fail(`--${name} must be a whole number of at least ${min}, got ${text}`);
  return v;
}
let sizes;
let chunkBytes;
try {
  sizes = values.sizes.split(',').map((s) => parseSize(s.trim(), 'sizes'));
  chunkBytes = parseSize(values.chunk, 'chunk');
} catch (err) {
  fail(err.message);
}
const commitsText = values.commits ?? (values.quick ? '20,3' : '200,16');
const commitCounts = commitsText.split(',').map((c) => wholeNumber('commits', c, 1));
const commitsFor = (i) => commitCounts[Math.min(i, commitCounts.length - 1)];
const warmup = wholeNumber('warmup', values.warmup ?? (values.quick ? '1' : '2'), 0);
const inflight = wholeNumber('inflight', values.inflight, 1);
const cacheBytesMax = wholeNumber('cache', values.cache, 16) * MiB;
if (chunkBytes > 8 * MiB) fail('--chunk must be at most 8MiB (a controller takes no larger request by default)');
const progress = (line) => process.stderr.write(`${line}\n`);

/** Nearest-rank percentile of a sorted array. */
function pct(sorted, p) {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** Runs fn(offset, piece) over [0, size) in chunk pieces, `inflight` at a time. */
async function inPieces(size, fn) {
  let next = 0;
  const lane = async () => {
    while (next < size) {
      const offset = next;
      next = Math.min(size, next + chunkBytes);
      await fn(offset, next - offset);
    }
  };
  await Promise.all(Array.from({ length: Math.min(inflight, Math.ceil(size / chunkBytes)) }, lane));
}

/** Times `runs` runs of one; ms each. */
async function timed(runs, one) {
  const ms = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await one(i);
    ms.push(performance.now() - t0);
  }
  return ms;
}

function summary(ms, bytes) {
  const sorted = [...ms].sort((a, b) => a - b);
  const total = ms.reduce((s, x) => s + x, 0);
  return { runs: ms.length, p50Ms: pct(sorted, 50), p99Ms: pct(sorted, 99), mbPerSec: (bytes * ms.length) / MiB / (total / 1000) };
}

const loadAtStart = os.loadavg()[0];
const dir = mkdtempSync(path.join(os.tmpdir(), 'pagepair-bench-checkpoint-'));
let pair = null;
let pc = null;
const rows = [];
let failed = false;
try {
  const biggest = Math.max(...sizes);
  // Each size's region (2 generations and its metadata) and plain allocation, with room to spare.
  const storeBytes = storeBytesFor(sizes.flatMap((s) => [2 * s + MiB, s]));
  progress(`bench-checkpoint: pair in ${dir}, store ${formatBytes(storeBytes)} (sparse), cache ${formatBytes(cacheBytesMax)} each`);
  pair = await NbdPair.start({ dir, storeBytes, cacheBytesMax: Math.max(cacheBytesMax, 4 * biggest), logLevel: 'warn' });
  pc = await PairClient.connect({ controllers: [pair.a.address, pair.b.address], name: 'bench-checkpoint', timeoutMs: 60_000, retryForMs: 60_000 });

  for (const [i, size] of sizes.entries()) {
    const commits = commitsFor(i);
    const label = formatBytes(size);
    const data = randomBytes(size);
    const stamp = (n) => data.writeUInt32LE(n, 0);

    // Floor 1: a local file, written in the same pieces, then fdatasync.
    const file = path.join(dir, `floor-${size}.bin`);
    const fd = openSync(file, 'w', 0o600);
    let fileMs;
    try {
      fileMs = await timed(Math.max(commits, 3), async (n) => {
        stamp(n);
        for (let o = 0; o < size; o += chunkBytes) writeSync(fd, data, o, Math.min(chunkBytes, size - o), o);
        fdatasyncSync(fd);
      });
    } finally {
      closeSync(fd);
      rmSync(file, { force: true });
    }
    const file1 = summary(fileMs, size);
    progress(`${label}: local file + fdatasync: p50 ${file1.p50Ms.toFixed(2)} ms, ${file1.mbPerSec.toFixed(0)} MB/s`);

    // Floor 2: the same bytes as plain mirrored writes to an ordinary allocation.
    const raw = await pc.allocate(`bench-raw-${size}`, size, values.policy);
    for (let w = 0; w < warmup; w++) await inPieces(size, (o, n) => pc.write(raw.guid, o, data.subarray(o, o + n)));
    const rawMs = await timed(commits, async (n) => {
      stamp(n);
      await inPieces(size, (o, len) => pc.write(raw.guid, o, data.subarray(o, o + len)));
    });
    await pc.release(raw.guid);
    const raw1 = summary(rawMs, size);
    progress(`${label}: plain mirrored writes: p50 ${raw1.p50Ms.toFixed(2)} ms, ${raw1.mbPerSec.toFixed(0)} MB/s`);

    // The region: beginCheckpoint → write()… → commit(), timed whole.
    const name = `bench-${size}`;
    const { region, key } = await Region.create(pc, name, { mode: 'overwrite', sizeBytes: size, generations: 2, policy: values.policy });
    const checkpoint = async (n) => {
      stamp(n);
      const cp = await region.beginCheckpoint();
      await inPieces(size, (o, len) => cp.write(o, data.subarray(o, o + len)));
      return cp.commit();
    };
    for (let w = 0; w < warmup; w++) await checkpoint(0x7fff_0000 + w);
    let last = null;
    const regionMs = await timed(commits, async (n) => {
      last = await checkpoint(n);
    });
    // The figures are of checkpoints that read back whole.
    const back = await region.readWhole(last.generation);
    if (!back.equals(data)) throw new Error(`${label}: generation ${last.generation} does not read back as written`);
    await Region.delete(pc, name, key);
    const reg = summary(regionMs, size);
    progress(`${label}: checkpoint commits: p50 ${reg.p50Ms.toFixed(2)} ms, p99 ${reg.p99Ms.toFixed(2)} ms, ${reg.mbPerSec.toFixed(0)} MB/s (read back whole: ok)`);
    rows.push({ sizeBytes: size, label, checkpoint: reg, plainWrites: raw1, localFileFdatasync: file1 });
  }
} catch (err) {
  failed = true;
  process.stderr.write(`bench-checkpoint failed: ${err instanceof Error ? err.stack : String(err)}\n`);
} finally {
  await pc?.close();
  await pair?.stop();
  if (!values.keep) rmSync(dir, { recursive: true, force: true });
  else progress(`files kept in ${dir}`);
}

function table(rs) {
  const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  const head = ['checkpoint', 'commits', 'p50 ms', 'p99 ms', 'MB/s', 'plain writes MB/s', 'ratio', 'file+fdatasync MB/s', 'ratio'];
  const body = rs.map((r) => [
    r.label,
    String(r.checkpoint.runs),
    f(r.checkpoint.p50Ms, 2),
    f(r.checkpoint.p99Ms, 2),
    f(r.checkpoint.mbPerSec, 0),
    f(r.plainWrites.mbPerSec, 0),
    f(r.checkpoint.mbPerSec / r.plainWrites.mbPerSec, 2),
    f(r.localFileFdatasync.mbPerSec, 0),
    f(r.checkpoint.mbPerSec / r.localFileFdatasync.mbPerSec, 2),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [line(head), ...body.map(line)].join('\n');
}

if (rows.length > 0) {
  process.stdout.write(`\ncheckpoint commits, overwrite region (ring of 2), policy ${values.policy}, ${formatBytes(chunkBytes)} writes ${inflight} in flight, one pair client through A\n`);
  process.stdout.write(`${table(rows)}\n`);
  process.stdout.write('MB/s: MiB committed per second of back-to-back commits; ratios: checkpoint MB/s over each floor measured in this run\n');
  process.stdout.write(`(load average ${loadAtStart.toFixed(1)} at the start, ${os.loadavg()[0].toFixed(1)} at the end: other work on the machine moves these figures)\n`);
}
if (values.json !== undefined) {
  writeFileSync(values.json, `${JSON.stringify({ settings: { sizes, chunkBytes, inflight, policy: values.policy, warmup, commits: commitCounts, quick: values.quick }, rows, loadAtStart, loadAtEnd: os.loadavg()[0] }, null, 2)}\n`);
}
process.exit(failed ? 1 : 0);
