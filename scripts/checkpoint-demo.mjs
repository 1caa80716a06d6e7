#!/usr/bin/env node
// A primary process checkpoints its state into a pagepair region; it is
// killed; a backup process opens the region through the other controller,
// restores the latest committed checkpoint and carries on from it.
//
// The demo starts a pair of its own in a temporary directory and makes an
// overwrite region (a ring of 3 generations) through controller A. The
// PRIMARY (a child process) counts: each step adds one to a counter and folds
// it into a running SHA-256, and every --interval ms it commits a checkpoint
// of {counter, hash} through controller A alone. It logs every step it takes
// and every commit, one line each, to a log file. After --seconds the demo
// SIGKILLs the primary (and with --kill-controller controller A as well).
// The BACKUP (another child) opens the region through controller B with the
// key, reads the latest committed generation, checks it (the CRC the library
// checks, then the hash chain recomputed from 0 to the counter), prints what
// it restored and how stale it was, and resumes counting from there,
// committing checkpoints of its own through B.
//
//   npm run demo:checkpoint [-- --interval 200 --seconds 3 --kill-controller]
//
// Needs a build (npm run build; the npm script builds first). Every process
// it starts is stopped and the directory removed on the way out (--keep
// keeps the directory and its logs).

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { scriptOptions } from './script-options.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = process.env.PAGEPAIR_DIST ?? path.join(here, '..', 'dist');
const load = (file) => import(pathToFileURL(path.join(dist, file)).href);

const HELP = `Usage: node scripts/checkpoint-demo.mjs [options]

A pair of controllers of its own; a primary process checkpoints a counter and
a running hash into a region through controller A every --interval ms; after
--seconds it is SIGKILLed; a backup process opens the region through
controller B with its key, restores the latest committed checkpoint, says how
stale it was, and resumes counting from it.

Options:
  --interval <ms>      checkpoint interval of the primary (default 200)
  --seconds <s>        how long the primary runs before it is killed (default 3)
  --step-ms <ms>       time between two steps of the count (default 2)
  --resume-seconds <s> how long the backup counts on after restoring (default 1)
  --kill-controller    SIGKILL controller A together with the primary
  --keep               keep the working directory and its logs
  -h, --help           this text
`;

const opt = scriptOptions('checkpoint-demo', HELP, {
  interval: { type: 'string', default: '200' },
  seconds: { type: 'string', default: '3' },
  'step-ms': { type: 'string', default: '2' },
  'resume-seconds': { type: 'string', default: '1' },
  'kill-controller': { type: 'boolean', default: false },
  // The demo runs itself as the primary and the backup.
  role: { type: 'string' },
});

function positive(name, min = 0) {
  const v = Number(opt[name]);
  if (opt[name] === undefined || !Number.isFinite(v) || v <= min) {
    process.stderr.write(`checkpoint-demo: --${name} must be a number above ${min}, got ${opt[name]}\n`);
    process.exit(2);
  }
  return v;
}

const REGION = 'demo-state';
const STATE_MAGIC = 'pagepair-checkpoint-demo/1';

/** One step of the count: the counter goes up and is folded into the hash. */
function step(state) {
  const counter = state.counter + 1;
  const hash = createHash('sha256').update(state.hash).update(String(counter)).digest('hex');
  return { counter, hash };
}

const ZERO = { counter: 0, hash: createHash('sha256').update('pagepair checkpoint demo').digest('hex') };

/** The hash the count has after `counter` steps from zero, computed again. */
function hashAt(counter) {
  let s = ZERO;
  while (s.counter < counter) s = step(s);
  return s.hash;
}

function encodeState(s, writer) {
  return Buffer.from(JSON.stringify({ magic: STATE_MAGIC, counter: s.counter, hash: s.hash, writer, wallMs: Date.now() }));
}

function decodeState(buf) {
  const o = JSON.parse(buf.toString('utf8'));
  if (o.magic !== STATE_MAGIC || !Number.isSafeInteger(o.counter) || typeof o.hash !== 'string') throw new Error('not a checkpoint of this demo');
  return o;
}

/** One line to the log, written at once (a SIGKILL may come any moment). */
function logger(file) {
  const fd = openSync(file, 'a');
  return {
    line: (o) => writeSync(fd, `${JSON.stringify(o)}\n`),
    close: () => closeSync(fd),
  };
}

/** Counts, checkpointing every interval, until killed or until `untilMs`. */
async function countAndCheckpoint(region, start, o) {
  let s = start;
  let nextCommitMs = Date.now() + o.intervalMs;
  let commits = 0;
  while (o.untilMs === undefined || Date.now() < o.untilMs) {
    s = step(s);
    o.log.line({ event: 'step', counter: s.counter });
    if (Date.now() >= nextCommitMs) {
      const cp = await region.beginCheckpoint();
      await cp.write(0, encodeState(s, o.who));
      const g = await cp.commit();
      commits++;
      o.log.line({ event: 'commit', counter: s.counter, generation: g.generation, committedAtMs: g.committedAtMs });
      nextCommitMs = Date.now() + o.intervalMs;
    }
    await sleep(o.stepMs);
  }
  return { state: s, commits };
}

// ---------------------------------------------------------------- the primary and the backup

async function child(role) {
  const env = JSON.parse(process.env.PAGEPAIR_DEMO ?? '{}');
  const { Region } = await load('client/region.js');
  const { PairClient } = await load('client/pair-client.js');
  const log = logger(env.log);
  // Through one controller only: A for the primary, B for the backup.
  const io = await PairClient.connect({ controllers: [env.controller], name: `checkpoint-demo-${role}`, timeoutMs: 10_000, retryForMs: 30_000 });
  if (role === 'primary') {
    const region = await Region.open(io, REGION, env.key);
    log.line({ event: 'started', pid: process.pid, controller: env.controller.id });
    await countAndCheckpoint(region, ZERO, { intervalMs: env.intervalMs, stepMs: env.stepMs, log, who: 'primary' });
    return; // not reached: the demo kills it
  }

  // The backup.
  const t0 = Date.now();
  const region = await Region.open(io, REGION, env.key);
  const latest = await region.latest();
  const say = (text) => process.stdout.write(`backup:  ${text}\n`);
  if (latest === null) {
    say('the region holds no committed checkpoint: nothing to restore, starting from zero');
    process.exitCode = 1;
    await io.close();
    return;
  }
  const restoredAtMs = Date.now();
  const bytes = await region.readWhole(latest.generation);
  const state = decodeState(bytes);
  const chainOk = hashAt(state.counter) === state.hash;
  // What the primary had logged before it died: how far it got past the checkpoint.
  const primaryLines = readFileSync(env.primaryLog, 'utf8').split('\n').filter((l) => l !== '');
  let lastStep = 0;
  for (const l of primaryLines) {
    try {
      const r = JSON.parse(l);
      if (r.event === 'step') lastStep = Math.max(lastStep, r.counter);
    } catch {
      // a line cut by the kill
    }
  }
  say(`opened region "${REGION}" through controller ${env.controller.id} (${restoredAtMs - t0} ms, the key presented on the way)`);
  say(`restored generation ${latest.generation}: ${latest.lengthBytes} bytes, crc ${(latest.crc >>> 0).toString(16).padStart(8, '0')}, written by the ${state.writer}`);
  say(`state: counter ${state.counter}, hash ${state.hash.slice(0, 16)}...; the hash chain recomputed from 0 to ${state.counter} ${chainOk ? 'matches' : 'DOES NOT MATCH'}`);
  say(
    `staleness: committed ${latest.committedAtMs <= env.killedAtMs ? `${env.killedAtMs - latest.committedAtMs} ms before the primary was killed` : 'after the kill?'}, ` +
      `${restoredAtMs - latest.committedAtMs} ms old when restored; the primary had logged step ${lastStep}, ${lastStep - state.counter} steps past it (lost, to be done again)`,
  );
  log.line({ event: 'restored', generation: latest.generation, counter: state.counter, chainOk, lastPrimaryStep: lastStep, staleMs: env.killedAtMs - latest.committedAtMs });
  if (!chainOk) {
    process.exitCode = 1;
    await io.close();
    return;
  }
  const resumed = await countAndCheckpoint(region, { counter: state.counter, hash: state.hash }, { intervalMs: env.intervalMs, stepMs: env.stepMs, log, who: 'backup', untilMs: Date.now() + env.resumeMs });
  say(`resumed counting at step ${state.counter + 1} and reached ${resumed.state.counter}, committing ${resumed.commits} checkpoints of its own through controller ${env.controller.id}`);
  log.line({ event: 'done', counter: resumed.state.counter, hash: resumed.state.hash });
  log.close();
  await io.close();
}

if (opt.role !== undefined) {
  if (opt.role !== 'primary' && opt.role !== 'backup') {
    process.stderr.write(`checkpoint-demo: --role is primary or backup\n`);
    process.exit(2);
  }
  try {
    await child(opt.role);
  } catch (err) {
    process.stderr.write(`checkpoint-demo ${opt.role}: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exitCode = 1;
  }
  process.exit();
}

// ---------------------------------------------------------------- the demo

const intervalMs = positive('interval');
const seconds = positive('seconds');
const stepMs = Number(opt['step-ms']);
if (!Number.isFinite(stepMs) || stepMs < 0) {
  process.stderr.write(`checkpoint-demo: --step-ms must be a number of 0 or more, got ${opt['step-ms']}\n`);
  process.exit(2);
}
const resumeMs = positive('resume-seconds') * 1000;
if (!existsSync(path.join(dist, 'client', 'region.js'))) {
  process.stderr.write('checkpoint-demo: run `npm run build` first (dist/client/region.js is missing)\n');
  process.exit(2);
}

const { NbdPair } = await load('runtime/nbd-pair.js');
const { Region } = await load('client/region.js');
const { PagepairClient } = await load('client/client.js');
const say = (line) => process.stdout.write(`${line}\n`);
const dir = mkdtempSync(path.join(os.tmpdir(), 'pagepair-checkpoint-demo-'));
const children = new Set();
let pair = null;
let failed = false;

/** This script again, as the primary or the backup; its output to a log and, for the backup, to ours. */
function startRole(role, env) {
  const out = path.join(dir, `${role}.out`);
  const fd = openSync(out, 'a');
  const c = spawn(process.execPath, [fileURLToPath(import.meta.url), '--role', role], {
    stdio: ['ignore', role === 'backup' ? 'pipe' : fd, fd],
    env: { ...process.env, PAGEPAIR_DEMO: JSON.stringify(env) },
  });
  closeSync(fd);
  if (role === 'backup') c.stdout.on('data', (d) => process.stdout.write(d));
  children.add(c);
  c.exitedPromise = new Promise((resolve) => c.once('exit', (code, sig) => resolve({ code, sig })));
  c.exitedPromise.then(() => children.delete(c));
  c.outPath = out;
  return c;
}

function readLog(file) {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .flatMap((l) => {
      try {
        return [JSON.parse(l)];
      } catch {
        return []; // cut by the kill
      }
    });
}

async function waitFor(what, pred, timeoutMs) {
  const t0 = Date.now();
  while (!(await pred())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await sleep(50);
  }
}

async function cleanup() {
  for (const c of children) c.kill('SIGKILL');
  await Promise.all([...children].map((c) => c.exitedPromise));
  await pair?.stop();
  if (!opt.keep && !failed) rmSync(dir, { recursive: true, force: true });
  else say(`files kept in ${dir}`);
}

process.on('SIGINT', () => {
  failed = true;
  cleanup().then(() => process.exit(130));
});

try {
  say(`checkpoint-demo: working in ${dir}`);
  pair = await NbdPair.start({ dir, storeBytes: 128 * 1024 * 1024, cacheBytesMax: 32 * 1024 * 1024, logLevel: 'warn' });
  say(`pair up: controller A (pid ${pair.a.pid}, ws://127.0.0.1:${pair.a.clientPort}) and B (pid ${pair.b.pid}, ws://127.0.0.1:${pair.b.clientPort}), mirrored`);

  const maker = await PagepairClient.connect({ ...pair.a.address, name: 'checkpoint-demo' });
  let key;
  try {
    const made = await Region.create(maker, REGION, { mode: 'overwrite', sizeBytes: 4096, generations: 3 });
    key = made.key;
    say(`region "${REGION}" made through A: overwrite, a ring of ${made.region.ringSize} generations of ${made.region.generationBytesMax} bytes; its key goes to the primary and the backup only`);
  } finally {
    await maker.close();
  }

  const primaryLog = path.join(dir, 'primary.log');
  const primary = startRole('primary', { log: primaryLog, controller: pair.a.address, key, intervalMs, stepMs });
  await waitFor('the primary starting', () => readLog(primaryLog).some((r) => r.event === 'started'), 30_000);
  say(`primary: pid ${primary.pid}, counting (a step every ${stepMs} ms) and committing a checkpoint every ${intervalMs} ms through controller A`);
  await sleep(seconds * 1000);

  const killedAtMs = Date.now();
  primary.kill('SIGKILL');
  const killingA = opt['kill-controller'] ? pair.a.kill() : null;
  await primary.exitedPromise;
  await killingA;
  const plog = readLog(primaryLog);
  const commits = plog.filter((r) => r.event === 'commit');
  const lastStep = plog.filter((r) => r.event === 'step').reduce((m, r) => Math.max(m, r.counter), 0);
  const lastCommit = commits.at(-1);
  say(
    `SIGKILL to the primary${opt['kill-controller'] ? ' and to controller A' : ''} after ${seconds} s: it had logged ${lastStep} steps and ${commits.length} commits` +
      (lastCommit !== undefined ? `, the last of them generation ${lastCommit.generation} at step ${lastCommit.counter}, ${killedAtMs - lastCommit.committedAtMs} ms before the kill` : ''),
  );
  if (opt['kill-controller']) {
    const tookMs = await pair.waitRole('B', ['alone'], 30_000);
    say(`controller B found A gone and serves alone (${Math.round(Date.now() - killedAtMs)} ms after the kill, ${Math.round(tookMs)} ms of it waited for here)`);
  }
  if (commits.length === 0) throw new Error(`the primary committed nothing in ${seconds} s (see ${path.join(dir, 'primary.out')})`);

  const backupLog = path.join(dir, 'backup.log');
  const backup = startRole('backup', { log: backupLog, primaryLog, controller: pair.b.address, key, intervalMs, stepMs, resumeMs, killedAtMs });
  const ended = await Promise.race([backup.exitedPromise, sleep(120_000, null)]);
  if (ended === null) throw new Error('the backup did not finish within 120 s');
  if (ended.code !== 0) throw new Error(`the backup failed (exit ${ended.code ?? ended.sig}): ${readFileSync(backup.outPath, 'utf8').trim()}`);

  const blog = readLog(backupLog);
  const restored = blog.find((r) => r.event === 'restored');
  const done = blog.find((r) => r.event === 'done');
  // The checkpoint restored must be one the primary committed, and the newest it heard back about or one
  // it was committing when it died (whose commit answer the kill cut off).
  const known = commits.find((c) => c.generation === restored.generation && c.counter === restored.counter);
  const newest = restored.generation >= lastCommit.generation;
  const inFlight = restored.generation === lastCommit.generation + 1 && restored.counter > lastCommit.counter && restored.counter <= lastStep;

  // And what the backup committed last is what a reader through B finds now.
  const reader = await PagepairClient.connect({ ...pair.b.address, name: 'checkpoint-demo-check' });
  let after;
  try {
    const region = await Region.open(reader, REGION, key);
    const g = await region.latest();
    after = g === null ? null : decodeState(await region.readWhole(g.generation));
  } finally {
    await reader.close();
  }
  const afterOk = after !== null && done !== undefined && after.writer === 'backup' && after.counter <= done.counter && hashAt(after.counter) === after.hash;

  failed = !restored?.chainOk || !newest || (known === undefined && !inFlight) || !afterOk;
  say('');
  say('what happened:');
  say(`  the primary counted to ${lastStep} and committed ${commits.length} checkpoints through A before it was killed`);
  say(
    `  the backup restored generation ${restored.generation} (step ${restored.counter}) through B: ${known !== undefined ? 'the last checkpoint the primary had heard committed' : inFlight ? 'the one the primary was committing when it died (committed, its answer lost with the primary)' : 'NOT a checkpoint the primary committed last'}; ` +
      `${restored.staleMs} ms older than the kill, ${lastStep - restored.counter} steps behind`,
  );
  say(`  it went on from step ${restored.counter + 1} to ${done?.counter}; its last checkpoint reads back through B as step ${after?.counter} (${afterOk ? 'hash chain checked' : 'NOT as expected'})`);
  say(failed ? 'FAIL' : 'PASS: the backup resumed from the latest committed checkpoint');
} catch (err) {
  failed = true;
  say(`checkpoint-demo failed: ${err instanceof Error ? err.stack : String(err)}`);
} finally {
  await cleanup();
}
process.exit(failed ? 1 : 0);
