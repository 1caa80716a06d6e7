#!/usr/bin/env node
// The takeover from a host's point of view. A pair of our own serves a
// volume; `pagepair attach` serves it to this host; nbdfuse turns it into a
// file, mkfs.ext4 makes a filesystem on it and fuse2fs mounts that. A writer
// writes files into the filesystem, fsync-ing each one, and in the middle of
// it controller A is SIGKILLed. The writer must go on without an error (it
// sees a pause); afterwards the volume is copied through the survivor alone,
// `e2fsck -fn` must find the filesystem clean, and every file whose fsync had
// returned must read back with its checksum.
//
//   npm run build && node scripts/host-failover-demo.mjs [--seconds 6] [--keep]
//
// Needs nbdfuse and nbdcopy (libnbd-bin), fuse2fs, fusermount3 (fuse3),
// mkfs.ext4 and e2fsck (e2fsprogs), and /dev/fuse:
// `scripts/install-nbd-clients.sh --demo` installs them. Root, or a user
// allowed to mount FUSE filesystems. Every process it starts is stopped and
// every mount undone on the way out.

import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { scriptOptions } from './script-options.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.join(here, '..');
const dist = process.env.PAGEPAIR_DIST ?? path.join(root, 'dist');
const load = (file) => import(pathToFileURL(path.join(dist, file)).href);

const HELP = `Usage: node scripts/host-failover-demo.mjs [options]

ext4 on a pagepair volume, through pagepair attach, nbdfuse and fuse2fs; a
writer writes and fsyncs files while controller A is SIGKILLed; then the
volume is checked through controller B alone (e2fsck -fn, every fsync'd file).

Options:
  --seconds <s>    how long the writer writes (default 6); A is killed at a third
  --file-kib <n>   size of each file in KiB (default 64)
  --volume <MiB>   volume size in MiB (default 256)
  --keep           keep the working directory
  -h, --help       this text
`;

const opt = scriptOptions('host-failover-demo', HELP, {
  seconds: { type: 'string', default: '6' },
  'file-kib': { type: 'string', default: '64' },
  volume: { type: 'string', default: '256' },
});
const seconds = Number(opt.seconds);
const fileBytes = Number(opt['file-kib']) * 1024;
const volumeBytes = Number(opt.volume) * 1024 * 1024;
for (const [name, v] of [['--seconds', seconds], ['--file-kib', fileBytes], ['--volume', volumeBytes]]) {
  if (!Number.isFinite(v) || v <= 0) {
    process.stderr.write(`host-failover-demo: ${name} must be a positive number\n`);
    process.exit(2);
  }
}

const TOOLS = ['nbdfuse', 'nbdcopy', 'fuse2fs', 'fusermount3', 'mkfs.ext4', 'e2fsck'];
const missing = TOOLS.filter((t) => {
  try {
    execFileSync('sh', ['-c', `command -v ${t}`], { stdio: 'ignore' });
    return false;
  } catch {
    return true;
  }
});
if (missing.length > 0 || !existsSync('/dev/fuse')) {
  const what = [...missing, ...(existsSync('/dev/fuse') ? [] : ['/dev/fuse'])].join(', ');
  process.stderr.write(`host-failover-demo: missing ${what}; scripts/install-nbd-clients.sh --demo installs the programs (FUSE needs /dev/fuse)\n`);
  process.exit(2);
}
if (!existsSync(path.join(dist, 'attach', 'attach.js'))) {
  process.stderr.write('host-failover-demo: run `npm run build` first\n');
  process.exit(2);
}

const { NbdPair, storeBytesFor } = await load('runtime/nbd-pair.js');
const say = (line) => process.stdout.write(`${line}\n`);
const dir = mkdtempSync(path.join(os.tmpdir(), 'pagepair-host-demo-'));
const children = [];
const mounts = [];
let pair = null;
let failed = false;

/** A background process whose output goes to a log in the working directory. */
function background(name, cmd, args) {
  const logPath = path.join(dir, `${name}.log`);
  const out = openSync(logPath, 'a');
  const child = spawn(cmd, args, { stdio: ['ignore', out, out] });
  children.push(child);
  child.logPath = logPath;
  return child;
}

async function waitFor(what, pred, timeoutMs = 20_000) {
  const t0 = Date.now();
  while (!(await pred())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await sleep(50);
  }
}

function run(cmd, args) {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function unmount(p) {
  try {
    execFileSync('fusermount3', ['-u', p], { stdio: 'ignore' });
  } catch {
    try {
      execFileSync('fusermount3', ['-uz', p], { stdio: 'ignore' });
    } catch {
      // not mounted
    }
  }
}

async function cleanup() {
  for (const m of mounts.splice(0).reverse()) unmount(m);
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
  await sleep(200);
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await pair?.stop();
  if (!opt.keep && !failed) rmSync(dir, { recursive: true, force: true });
  else say(`files kept in ${dir}`);
}

process.on('SIGINT', () => {
  failed = true;
  cleanup().then(() => process.exit(130));
});

try {
  say(`host-failover-demo: working in ${dir}`);
  pair = await NbdPair.start({ dir, storeBytes: storeBytesFor([volumeBytes]), cacheBytesMax: 64 * 1024 * 1024 });
  await pair.createVolume('A', 'disk', volumeBytes);
  say(`pair up: A (pid ${pair.a.pid}) and B (pid ${pair.b.pid}) mirrored; volume "disk", ${volumeBytes / 1048576} MiB`);

  const attachSock = path.join(dir, 'attach.sock');
  const attach = background('attach', process.execPath, [
    path.join(root, 'bin', 'pagepair.js'),
    'attach',
    'disk',
    '--a-url', `nbd://127.0.0.1:${pair.a.nbdPort}`,
    '--b-url', `nbd://127.0.0.1:${pair.b.nbdPort}`,
    '--listen', '127.0.0.1:0',
    '--socket', attachSock,
    '--status-socket', path.join(dir, 'attach.status.sock'),
    '--reconnect-ms', '100',
  ]);
  await waitFor('attach serving', () => readFileSync(attach.logPath, 'utf8').includes('attach serving'));
  say(`pagepair attach serves it at nbd+unix:///disk?socket=${attachSock}`);

  const fuseDir = path.join(dir, 'nbd');
  const mnt = path.join(dir, 'mnt');
  mkdirSync(fuseDir);
  mkdirSync(mnt);
  const nbdfuse = background('nbdfuse', 'nbdfuse', [path.join(fuseDir, 'disk'), `nbd+unix:///disk?socket=${attachSock}`]);
  mounts.push(fuseDir);
  await waitFor('nbdfuse', () => existsSync(path.join(fuseDir, 'disk')));
  run('mkfs.ext4', ['-q', '-F', path.join(fuseDir, 'disk')]);
  // In the foreground (-f) as our child: after the unmount it still writes
  // back what it holds, and the volume is ready only once it has exited.
  const fuse2fs = background('fuse2fs', 'fuse2fs', [path.join(fuseDir, 'disk'), mnt, '-f', '-o', 'fakeroot']);
  mounts.push(mnt);
  await waitFor('fuse2fs mount', () => existsSync(path.join(mnt, 'lost+found')));
  say('ext4 made with mkfs.ext4 on the nbdfuse file, mounted with fuse2fs');

  // The writer: files of seeded bytes, each fsync'd; a file counts once its fsync returned.
  const synced = new Map();
  let errors = 0;
  let longestMs = 0;
  let killedAtFile = -1;
  const killAt = Date.now() + (seconds * 1000) / 3;
  const endAt = Date.now() + seconds * 1000;
  let killing = null;
  for (let i = 0; Date.now() < endAt; i++) {
    if (killing === null && Date.now() >= killAt) {
      killedAtFile = i;
      say(`writer at file ${i}: SIGKILL to controller A (pid ${pair.a.pid})`);
      killing = pair.a.kill();
    }
    const name = `f${String(i).padStart(5, '0')}`;
    const data = createHash('sha512').update(`${name}`).digest();
    const body = Buffer.alloc(fileBytes);
    for (let o = 0; o < fileBytes; o += data.length) data.copy(body, o);
    body.writeUInt32BE(i, 0);
    const t0 = performance.now();
    try {
      const fh = await open(path.join(mnt, name), 'w');
      await fh.write(body);
      await fh.sync();
      await fh.close();
      synced.set(name, createHash('sha256').update(body).digest('hex'));
    } catch (err) {
      errors++;
      say(`writer: ${name}: ${err.message}`);
    }
    longestMs = Math.max(longestMs, performance.now() - t0);
  }
  await killing;
  say(`writer done: ${synced.size} files written and fsync'd, ${errors} errors; the longest write+fsync took ${longestMs.toFixed(0)} ms (the failover pause)`);
  const status = run(process.execPath, [path.join(root, 'bin', 'pagepair.js'), 'attach', '--status', '--status-socket', path.join(dir, 'attach.status.sock')]);
  say(status.trimEnd().split('\n').map((l) => `  ${l}`).join('\n'));

  // Unmount (fuse2fs writes back what it holds), then check through B alone.
  unmount(mnt);
  mounts.splice(mounts.indexOf(mnt), 1);
  await waitFor('fuse2fs to write back and exit', () => fuse2fs.exitCode !== null || fuse2fs.signalCode !== null, 60_000);
  unmount(fuseDir);
  mounts.splice(mounts.indexOf(fuseDir), 1);
  await waitFor('nbdfuse to exit', () => nbdfuse.exitCode !== null || nbdfuse.signalCode !== null, 60_000);
  const copy = path.join(dir, 'through-b.img');
  run('nbdcopy', [`nbd://127.0.0.1:${pair.b.nbdPort}/disk`, copy]);
  let fsckOk = true;
  try {
    run('e2fsck', ['-fn', copy]);
  } catch (err) {
    fsckOk = false;
    say(`e2fsck -fn found problems:\n${err.stdout ?? ''}${err.stderr ?? ''}`);
  }
  say(`e2fsck -fn of the volume read through B alone: ${fsckOk ? 'clean' : 'NOT CLEAN'}`);
  const ro = path.join(dir, 'check');
  mkdirSync(ro);
  run('fuse2fs', [copy, ro, '-o', 'ro,fakeroot']);
  mounts.push(ro);
  let bad = 0;
  for (const [name, sum] of synced) {
    let got = null;
    try {
      got = createHash('sha256').update(readFileSync(path.join(ro, name))).digest('hex');
    } catch {
      got = null;
    }
    if (got !== sum) bad++;
  }
  say(`fsync'd files read back through B: ${synced.size - bad} of ${synced.size} match their checksums (A was killed at file ${killedAtFile})`);
  failed = errors > 0 || !fsckOk || bad > 0 || killedAtFile < 0;
  say(failed ? 'FAIL' : 'PASS: the host saw a pause, not an outage');
} catch (err) {
  failed = true;
  say(`host-failover-demo failed: ${err instanceof Error ? err.stack : String(err)}`);
} finally {
  await cleanup();
}
process.exit(failed ? 1 : 0);
