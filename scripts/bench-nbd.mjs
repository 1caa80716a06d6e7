#!/usr/bin/env node
// pagepair's NBD server against a real one, in the same run: fio's nbd engine
// does 4 KiB random writes and reads at 1 and 32 in flight against a mirrored
// pair of our own (through controller A) and against `nbdkit memory`, several
// times in alternation; medians of IOPS and of fio's total latency (lat:
// submission included) p50 and p99 are printed side by side with the ratios,
// next to one peer-link round trip (the WebSocket echo floor of `pagepair bench`: a WRITE_PAGE-
// sized message and a small reply between two Node processes, 1 in flight,
// p50), and the targets of issue 5 are marked PASS or MISS.
//
//   npm run build && node scripts/bench-nbd.mjs [--seconds 10] [--repeat 3] [--out report.json]
//
// Runs the compiled code in dist/ (PAGEPAIR_DIST=<dir> points at another
// build) and needs fio, nbdkit and nbdinfo (scripts/install-nbd-clients.sh).
// Only 127.0.0.1; every process it starts is stopped on the way out.

import { execFile, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { scriptOptions } from './script-options.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.join(here, '..');
const dist = process.env.PAGEPAIR_DIST ?? path.join(root, 'dist');
const load = (file) => import(pathToFileURL(path.join(dist, file)).href);
const { freePort } = await load('runtime/free-port.js');

const HELP = `Usage: node scripts/bench-nbd.mjs [options]

fio's nbd engine, 4 KiB randwrite and randread at 1 and 32 in flight, against
a mirrored pagepair pair (through controller A) and against \`nbdkit memory\`
in the same run; medians of --repeat runs; IOPS, p50, p99, CPU per request
(both controllers, and nbdkit) and ratios; one peer-link round trip; the
issue's targets marked PASS or MISS.

Options:
  --seconds <s>     measured seconds of every fio run (default 10)
  --ramp <s>        fio ramp_time before measuring (default 2)
  --repeat <n>      runs of every cell, alternating the servers; medians quoted (default 3)
  --size <MiB>      the region fio works over, in MiB (default 64); written once
                    before the runs so reads find data
  --inflight <list> fio iodepths, comma-separated (default 1,32)
  --ops <list>      randwrite, randread or both (default randwrite,randread)
  --servers <list>  of pagepair, nbdkit, attach and nbd-only (default
                    pagepair,nbdkit,attach); attach is the same pair through
                    \`pagepair attach\` (a process of its own, preferring A),
                    its cost per request beside the direct connection;
                    nbd-only is pagepair's NBD server and its backend over a
                    stand-in core that costs nothing, in this process: what
                    the NBD side itself costs per request
  --cache <MiB>     each controller's cacheBytesMax in MiB (default 256, the default pair's)
  --seed <n>        fio --randseed (default 1)
  --out <file>      save the report as JSON
  --keep            keep the working directory (configurations, logs)
  -h, --help        this text
`;

const TARGET_IOPS_RATIO_MIN = 0.5;
const TARGET_RTT_FACTOR = 1.5;
const BLOCK_BYTES = 4096;

function fail(message) {
  console.error(`bench-nbd: ${message}`);
  process.exit(2);
}

function options() {
  const parsed = scriptOptions('bench-nbd', HELP, {
    seconds: { type: 'string', default: '10' },
    ramp: { type: 'string', default: '2' },
    repeat: { type: 'string', default: '3' },
    size: { type: 'string', default: '64' },
    inflight: { type: 'string', default: '1,32' },
    ops: { type: 'string', default: 'randwrite,randread' },
    servers: { type: 'string', default: 'pagepair,nbdkit,attach' },
    cache: { type: 'string', default: '256' },
    seed: { type: 'string', default: '1' },
    out: { type: 'string' },
  });
  const int = (name, min, max) => {
    const v = Number(parsed[name]);
    if (!Number.isInteger(v) || v < min || v > max) fail(`--${name} must be a whole number from ${min} to ${max}, got "${parsed[name]}"`);
    return v;
  };
  const inflight = parsed.inflight.split(',').map((x) => {
    const v = Number(x.trim());
    if (!Number.isInteger(v) || v < 1 || v > 1024) fail(`--inflight must be a comma-separated list of whole numbers from 1 to 1024, got "${parsed.inflight}"`);
    return v;
  });
  const ops = parsed.ops.split(',').map((x) => x.trim());
  for (const op of ops) if (op !== 'randwrite' && op !== 'randread') fail(`--ops: "${op}" is not randwrite or randread`);
  const servers = parsed.servers.split(',').map((x) => x.trim());
  for (const s of servers) if (!['pagepair', 'nbdkit', 'attach', 'nbd-only'].includes(s)) fail(`--servers: "${s}" is not pagepair, nbdkit, attach or nbd-only`);
  return {
    seconds: int('seconds', 1, 3600),
    ramp: int('ramp', 0, 600),
    repeat: int('repeat', 1, 100),
    sizeBytes: int('size', 1, 65536) * 1024 * 1024,
    inflight,
    ops,
    servers,
    cacheBytes: int('cache', 16, 65536) * 1024 * 1024,
    seed: int('seed', 0, 2 ** 31),
    out: parsed.out,
    keep: parsed.keep,
  };
}

function run(cmd, args, timeoutMs) {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 4 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) =>
      resolve({ ok: err === null, stdout, stderr: `${stderr}${err !== null ? `\n${err.message}` : ''}` }),
    );
  });
}

/** Clock ticks per second of /proc/<pid>/stat's CPU times (100 on Linux unless configured otherwise). */
function clockTicksPerSec() {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
}

/**
 * CPU time (user and system, every thread) a process has used so far, in µs;
 * null off Linux or once it is gone. CPU per request is what a shared machine
 * disturbs least: other work slows a run down but hardly changes what each
 * request costs.
 */
function cpuUsedUs(pid, ticksPerSec) {
  if (pid === undefined || !existsSync(`/proc/${pid}/stat`)) return null;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / ticksPerSec;
  } catch {
    return null;
  }
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** `nbdkit memory` on a free port, in the foreground, ending with us. */
async function startNbdkit(sizeBytes) {
  const port = await freePort();
  const child = spawn('nbdkit', ['--exit-with-parent', '-f', '-i', '127.0.0.1', '-p', String(port), 'memory', String(sizeBytes)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const url = `nbd://127.0.0.1:${port}/`;
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`nbdkit exited (${child.exitCode}): ${stderr}`);
    const r = await run('nbdinfo', ['--size', url], 5000);
    if (r.ok) return { child, url, pid: child.pid };
    await sleep(100);
  }
  child.kill('SIGKILL');
  throw new Error(`nbdkit did not answer on ${url}: ${stderr}`);
}

/** `pagepair attach` on the pair's volume, a process of its own on a free loopback port. */
async function startAttach(pair, dir) {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    [
      path.join(root, 'bin', 'pagepair.js'),
      'attach',
      'bench',
      '--a-url', pair.a.nbdUrl(''),
      '--b-url', pair.b.nbdUrl(''),
      '--listen', `127.0.0.1:${port}`,
      '--no-socket',
      '--status-socket', path.join(dir, 'attach.status.sock'),
      '--log-level', 'warn',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const url = `nbd://127.0.0.1:${port}/bench`;
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`pagepair attach exited (${child.exitCode}): ${stderr}`);
    const r = await run('nbdinfo', ['--size', url], 5000);
    if (r.ok) return { child, url, pid: child.pid };
    await sleep(100);
  }
  child.kill('SIGKILL');
  throw new Error(`pagepair attach did not answer on ${url}: ${stderr}`);
}

/** One peer-link round trip: the ws echo floor of `pagepair bench`, write-sized, 1 in flight, p50 (µs). */
async function peerLinkRoundTrip(dir) {
  const json = path.join(dir, 'echo-floor.json');
  const r = await run(process.execPath, [path.join(root, 'bin', 'pagepair.js'), 'bench', '--configs', 'echo', '--ops', 'write', '--inflight', '1', '--runs', '1', '--seconds', '2', '--warmup', '0.5', '--quiet', '--json', json], 120_000);
  if (!r.ok) throw new Error(`pagepair bench (echo floor) failed: ${r.stderr.slice(-1000)}`);
  const report = JSON.parse(readFileSync(json, 'utf8'));
  const cell = report.cells.find((c) => c.config === 'echo' && c.op === 'write' && c.inflight === 1);
  return { p50Us: cell.median.p50Us, p99Us: cell.median.p99Us, requestBytes: cell.requestBytes, replyBytes: cell.replyBytes };
}

/**
 * pagepair's NBD server and CoreVolumes in this process, over a stand-in for
 * the controller core: reads answered at once from memory, writes copied in
 * and acknowledged on the next setImmediate (as the partner's acknowledgement
 * would come, in a later event). Its CPU per request is the NBD side's own:
 * parsing, the backend, replies, the socket system calls.
 */
async function startNbdOnly(sizeBytes) {
  const { NbdServer } = await load('transport/nbd-server.js');
  const { CoreVolumes } = await load('runtime/nbd-volumes.js');
  const { Role } = await load('protocol/messages.js');
  const pageBytes = 4096;
  const memory = Buffer.alloc(sizeBytes);
  const guid = '00000000-0000-4000-8000-0000000000b1';
  let volumes = null;
  let acks = [];
  const ackAll = () => {
    const due = acks;
    acks = [];
    for (const m of due) volumes.reply(m);
  };
  const core = {
    currentRole: Role.MIRRORED,
    onClientRequest(_connId, msg) {
      const head = { requestId: msg.requestId, epoch: 1, sender: 1, flags: 0 };
      switch (msg.kind) {
        case 'C_LIST':
          volumes.reply({ kind: 'C_LIST_REPLY', ...head, allocations: [{ guid, name: 'bench', policy: 'default', pageSizeBytes: pageBytes, pageCount: sizeBytes / pageBytes }] });
          return;
        case 'C_READ':
          volumes.reply({ kind: 'C_READ_REPLY', ...head, data: memory.subarray(msg.offset, msg.offset + msg.length) });
          return;
        case 'C_WRITE':
          msg.data.copy(memory, msg.offset);
          if (acks.length === 0) setImmediate(ackAll);
          acks.push({ kind: 'C_WRITE_REPLY', ...head });
          return;
        case 'C_FLUSH':
          volumes.reply({ kind: 'C_FLUSH_REPLY', ...head, pages: 0 });
          return;
        default:
          throw new Error(`the stand-in core does not take ${msg.kind}`);
      }
    },
  };
  volumes = new CoreVolumes({ core });
  const { default: pino } = await import('pino');
  const server = new NbdServer({ host: '127.0.0.1', port: 0, log: pino({ level: 'silent' }) }, volumes);
  const { port } = await server.start();
  return { server, url: `nbd://127.0.0.1:${port}/bench` };
}

function fmtUs(us) {
  if (!Number.isFinite(us)) return '-';
  return us >= 1000 ? `${(us / 1000).toFixed(2)} ms` : `${us.toFixed(0)} µs`;
}

function fmtOps(x) {
  return Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '-';
}

/** CPU µs per request: one process, or A + B for the pair. */
function fmtCpu(list) {
  if (list.length === 0 || list.some((x) => !Number.isFinite(x))) return '-';
  const each = list.map((x) => x.toFixed(1));
  if (list.length === 1) return `${each[0]} µs`;
  const pair = `${(list[0] + list[1]).toFixed(1)} µs (A ${each[0]} + B ${each[1]})`;
  return list.length === 2 ? pair : `${pair} + attach ${each[2]} µs`;
}

function fmtRatio(x) {
  return Number.isFinite(x) ? `${x.toFixed(2)}x` : '-';
}

async function main() {
  const o = options();
  const { NbdPair, storeBytesFor } = await load('runtime/nbd-pair.js');
  const { runFio, killAllFio } = await load('runtime/fio.js');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pagepair-bench-nbd-'));
  const note = (line) => console.error(`bench-nbd: ${line}`);
  const started = new Date();
  const loadStart = os.loadavg();
  let pair = null;
  let nbdkit = null;
  let nbdOnly = null;
  let attach = null;
  let ok = false;
  const stopAll = async () => {
    killAllFio();
    nbdkit?.child.kill('SIGKILL');
    attach?.child.kill('SIGKILL');
    await nbdOnly?.server.close();
    await pair?.stop();
  };
  const interrupted = (code) => () =>
    void stopAll().then(() => {
      if (!o.keep) rmSync(dir, { recursive: true, force: true });
      process.exit(code);
    });
  process.once('SIGINT', interrupted(130));
  process.once('SIGTERM', interrupted(143));
  try {
    note(`machine: ${os.cpus().length} cpus, load ${loadStart.map((x) => x.toFixed(2)).join(' ')}; ${o.repeat} runs x (${o.ramp} s ramp + ${o.seconds} s) per cell; region ${o.sizeBytes / 1048576} MiB`);
    // One peer-link round trip, measured once per repeat between the fio runs
    // (it moves with the machine's load: an idle CPU is slower to wake up).
    const rttRuns = [];
    const measureRtt = async (rep) => {
      const r = await peerLinkRoundTrip(dir);
      rttRuns.push(r);
      note(`run ${rep + 1}/${o.repeat}: peer-link round trip (pagepair bench's ws echo floor, write-sized, 1 in flight): p50 ${fmtUs(r.p50Us)}, p99 ${fmtUs(r.p99Us)} (load ${os.loadavg()[0].toFixed(2)})`);
    };

    const urls = {};
    if (o.servers.includes('pagepair') || o.servers.includes('attach')) {
      pair = await NbdPair.start({ dir, storeBytes: Math.max(1024 ** 3, storeBytesFor([o.sizeBytes, o.sizeBytes])), cacheBytesMax: o.cacheBytes, logLevel: 'warn' });
      await pair.createVolume('A', 'bench', o.sizeBytes);
      if (o.servers.includes('pagepair')) urls.pagepair = pair.a.nbdUrl('bench');
      note(`pagepair: mirrored pair up (A pid ${pair.a.pid}, B pid ${pair.b.pid}); fio goes through A: ${pair.a.nbdUrl('bench')}`);
    }
    if (o.servers.includes('attach')) {
      attach = await startAttach(pair, dir);
      urls.attach = attach.url;
      note(`attach: pagepair attach (pid ${attach.pid}) in front of the same pair, preferring A: ${attach.url}`);
    }
    if (o.servers.includes('nbdkit')) {
      nbdkit = await startNbdkit(o.sizeBytes);
      urls.nbdkit = nbdkit.url;
      note(`nbdkit: memory ${o.sizeBytes} at ${nbdkit.url} (pid ${nbdkit.pid})`);
    }
    if (o.servers.includes('nbd-only')) {
      nbdOnly = await startNbdOnly(o.sizeBytes);
      urls['nbd-only'] = nbdOnly.url;
      note(`nbd-only: pagepair's NBD server over a stand-in core, in this process, at ${nbdOnly.url}`);
    }
    const fio = async (url, args, timeoutMs) => {
      const f = await runFio(['--name=bench', '--ioengine=nbd', `--uri=${url}`, `--size=${o.sizeBytes}`, '--output-format=json', ...args], { cwd: dir, timeoutMs });
      const job = f.job('bench');
      if (job.error !== 0) throw new Error(`fio ${args.join(' ')} against ${url} stopped on errno ${job.error}: ${f.stderrTailText.slice(-500)}`);
      return job;
    };
    // Write the whole region once, so reads find data and writes overwrite.
    for (const [server, url] of Object.entries(urls)) {
      const t0 = Date.now();
      await fio(url, ['--rw=write', '--bs=1M', '--iodepth=4'], 300_000);
      note(`${server}: region written once in ${Date.now() - t0} ms`);
    }

    const ticksPerSec = clockTicksPerSec();
    // The processes whose CPU each server's requests cost: both controllers, or nbdkit.
    const pidsOf = {
      pagepair: pair !== null ? [pair.a.pid, pair.b.pid] : [],
      nbdkit: nbdkit !== null ? [nbdkit.pid] : [],
      attach: attach !== null ? [pair.a.pid, pair.b.pid, attach.pid] : [],
      'nbd-only': [process.pid],
    };
    const cpuNow = (server) => pidsOf[server].map((pid) => cpuUsedUs(pid, ticksPerSec));
    const cells = [];
    for (const op of o.ops) for (const inflight of o.inflight) for (const server of Object.keys(urls)) cells.push({ server, op, inflight, runs: [] });
    for (let rep = 0; rep < o.repeat; rep++) {
      // Alternate which server goes first, so a change in the machine's load hits both alike.
      const order = rep % 2 === 0 ? Object.keys(urls) : Object.keys(urls).reverse();
      await measureRtt(rep);
      for (const op of o.ops) {
        for (const inflight of o.inflight) {
          for (const server of order) {
            const cell = cells.find((c) => c.server === server && c.op === op && c.inflight === inflight);
            const cpu0 = cpuNow(server);
            const job = await fio(
              urls[server],
              [`--rw=${op}`, `--bs=${BLOCK_BYTES}`, `--iodepth=${inflight}`, '--time_based', `--runtime=${o.seconds}`, `--ramp_time=${o.ramp}`, `--randseed=${o.seed + rep}`, '--lat_percentiles=1'],
              (o.seconds + o.ramp) * 1000 + 60_000,
            );
            const cpu1 = cpuNow(server);
            const d = op === 'randwrite' ? job.write : job.read;
            // CPU µs per request of each server process, over the whole fio run
            // (ramp included, at the measured rate): [A, B] or [nbdkit].
            const requests = d.iops * (o.ramp + o.seconds);
            const cpuUsPerIo = cpu0.map((c, i) => (c === null || cpu1[i] === null || !(requests > 0) ? NaN : (cpu1[i] - c) / requests));
            // Total latency (submission included): the nbd engine sends the request in its queue call, which fio's clat leaves out.
            const r = { iops: d.iops, p50Us: d.lat?.p50Us ?? NaN, p99Us: d.lat?.p99Us ?? NaN, meanUs: d.lat?.meanUs ?? NaN, clatP50Us: d.clat?.p50Us ?? NaN, cpuUsPerIo, load1: os.loadavg()[0] };
            cell.runs.push(r);
            note(`run ${rep + 1}/${o.repeat}: ${server.padEnd(8)} ${op.padEnd(9)} x${String(inflight).padEnd(2)}: ${fmtOps(r.iops)} IOPS, p50 ${fmtUs(r.p50Us)}, p99 ${fmtUs(r.p99Us)}, CPU ${fmtCpu(cpuUsPerIo)} per request (load ${r.load1.toFixed(2)})`);
          }
        }
      }
    }
    const rtt = { p50Us: median(rttRuns.map((r) => r.p50Us)), p99Us: median(rttRuns.map((r) => r.p99Us)), requestBytes: rttRuns[0].requestBytes, replyBytes: rttRuns[0].replyBytes, runs: rttRuns };
    for (const c of cells) {
      const procs = c.runs[0]?.cpuUsPerIo.length ?? 0;
      c.median = {
        iops: median(c.runs.map((r) => r.iops)),
        p50Us: median(c.runs.map((r) => r.p50Us)),
        p99Us: median(c.runs.map((r) => r.p99Us)),
        cpuUsPerIo: Array.from({ length: procs }, (_, i) => median(c.runs.map((r) => r.cpuUsPerIo[i]))),
      };
    }

    const get = (server, op, inflight) => cells.find((c) => c.server === server && c.op === op && c.inflight === inflight)?.median;
    const rows = [];
    for (const op of o.ops) {
      for (const inflight of o.inflight) {
        const p = get('pagepair', op, inflight);
        const k = get('nbdkit', op, inflight);
        rows.push({ op, inflight, pagepair: p ?? null, nbdkit: k ?? null, iopsRatio: p && k ? p.iops / k.iops : NaN, p50Ratio: p && k ? p.p50Us / k.p50Us : NaN });
      }
    }
    const targets = [];
    const w32p = get('pagepair', 'randwrite', 32);
    const w32k = get('nbdkit', 'randwrite', 32);
    if (w32p && w32k) {
      const ratio = w32p.iops / w32k.iops;
      targets.push({ name: 'mirrored randwrite IOPS @32 >= 0.5 x nbdkit', value: ratio, bound: TARGET_IOPS_RATIO_MIN, pass: ratio >= TARGET_IOPS_RATIO_MIN, text: `${fmtRatio(ratio)} (${fmtOps(w32p.iops)} vs ${fmtOps(w32k.iops)})` });
    }
    for (const op of o.ops) {
      const p = get('pagepair', op, 1);
      const k = get('nbdkit', op, 1);
      if (!p || !k) continue;
      const bound = k.p50Us + TARGET_RTT_FACTOR * rtt.p50Us;
      targets.push({
        name: `${op} p50 @1 <= nbdkit p50 + 1.5 x peer-link RTT`,
        value: p.p50Us,
        bound,
        pass: p.p50Us <= bound,
        text: `${fmtUs(p.p50Us)} vs ${fmtUs(bound)} (= ${fmtUs(k.p50Us)} + 1.5 x ${fmtUs(rtt.p50Us)})`,
      });
    }

    // The table.
    const lines = [];
    lines.push(`pagepair NBD (mirrored pair, through A) vs nbdkit memory: fio nbd engine, ${BLOCK_BYTES} B blocks over ${o.sizeBytes / 1048576} MiB, medians of ${o.repeat} runs of ${o.seconds} s (+${o.ramp} s ramp); latency is fio's lat (submission to completion)`);
    lines.push('');
    lines.push(`${'workload'.padEnd(14)}| ${'pagepair IOPS'.padStart(13)} ${'p50'.padStart(9)} ${'p99'.padStart(9)} | ${'nbdkit IOPS'.padStart(11)} ${'p50'.padStart(9)} ${'p99'.padStart(9)} | ${'IOPS ratio'.padStart(10)} ${'p50 ratio'.padStart(9)}`);
    lines.push('-'.repeat(106));
    for (const r of rows) {
      const p = r.pagepair ?? {};
      const k = r.nbdkit ?? {};
      lines.push(
        `${`${r.op} x${r.inflight}`.padEnd(14)}| ${fmtOps(p.iops).padStart(13)} ${fmtUs(p.p50Us).padStart(9)} ${fmtUs(p.p99Us).padStart(9)} | ${fmtOps(k.iops).padStart(11)} ${fmtUs(k.p50Us).padStart(9)} ${fmtUs(k.p99Us).padStart(9)} | ${fmtRatio(r.iopsRatio).padStart(10)} ${fmtRatio(r.p50Ratio).padStart(9)}`,
      );
    }
    lines.push('');
    lines.push(`CPU per request (user + system, every thread, from /proc; medians): what a busy machine disturbs least`);
    const withNbdOnly = o.servers.includes('nbd-only');
    lines.push(`${'workload'.padEnd(14)}| ${'pagepair A'.padStart(10)} ${'B'.padStart(7)} ${'A + B'.padStart(8)} | ${'nbdkit'.padStart(8)} | ${'ratio'.padStart(6)}${withNbdOnly ? ` | ${'NBD side only'.padStart(13)}` : ''}`);
    lines.push('-'.repeat(withNbdOnly ? 78 : 62));
    for (const r of rows) {
      const [a, b] = r.pagepair?.cpuUsPerIo ?? [];
      const [k] = r.nbdkit?.cpuUsPerIo ?? [];
      const [n] = get('nbd-only', r.op, r.inflight)?.cpuUsPerIo ?? [];
      const pair = a !== undefined && b !== undefined ? a + b : NaN;
      const us = (x) => (x !== undefined && Number.isFinite(x) ? `${x.toFixed(1)} µs` : '-');
      lines.push(
        `${`${r.op} x${r.inflight}`.padEnd(14)}| ${us(a).padStart(10)} ${us(b).padStart(7)} ${us(pair).padStart(8)} | ${us(k).padStart(8)} | ${(k !== undefined && Number.isFinite(pair / k) ? fmtRatio(pair / k) : '-').padStart(6)}${withNbdOnly ? ` | ${us(n).padStart(13)}` : ''}`,
      );
    }
    if (urls.attach !== undefined) {
      lines.push('');
      lines.push('through pagepair attach (the host-side failover process) against the direct connection to A; CPU: the attach process alone');
      lines.push(`${'workload'.padEnd(14)}| ${'attach IOPS'.padStart(11)} ${'p50'.padStart(9)} ${'p99'.padStart(9)} | ${'direct IOPS'.padStart(11)} ${'p50'.padStart(9)} | ${'IOPS ratio'.padStart(10)} ${'p50 added'.padStart(9)} | ${'attach CPU'.padStart(10)}`);
      lines.push('-'.repeat(104));
      for (const op of o.ops) {
        for (const inflight of o.inflight) {
          const t = get('attach', op, inflight);
          const d = get('pagepair', op, inflight);
          const cpu = t?.cpuUsPerIo?.[2];
          lines.push(
            `${`${op} x${inflight}`.padEnd(14)}| ${fmtOps(t?.iops).padStart(11)} ${fmtUs(t?.p50Us).padStart(9)} ${fmtUs(t?.p99Us).padStart(9)} | ${fmtOps(d?.iops).padStart(11)} ${fmtUs(d?.p50Us).padStart(9)} | ${fmtRatio(t && d ? t.iops / d.iops : NaN).padStart(10)} ${fmtUs(t && d ? t.p50Us - d.p50Us : NaN).padStart(9)} | ${(cpu !== undefined && Number.isFinite(cpu) ? `${cpu.toFixed(1)} µs` : '-').padStart(10)}`,
          );
        }
      }
    }
    lines.push('');
    lines.push(`peer-link round trip: ${fmtUs(rtt.p50Us)} p50 (${fmtUs(rtt.p99Us)} p99), median of ${rttRuns.length}: pagepair bench's ws echo floor, ${rtt.requestBytes} B message and ${rtt.replyBytes} B reply between two Node processes, 1 in flight`);
    const w1 = get('pagepair', 'randwrite', 1);
    const r1 = get('pagepair', 'randread', 1);
    if (w1 && r1) lines.push(`pagepair's cost of a mirrored write at 1 in flight (randwrite p50 - randread p50): ${fmtUs(w1.p50Us - r1.p50Us)}`);
    lines.push('targets');
    for (const t of targets) lines.push(`  ${t.pass ? 'PASS' : 'MISS'}  ${t.name.padEnd(52)} ${t.text}`);
    const loadEnd = os.loadavg();
    lines.push(`machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? '?'}, node ${process.version}; load ${loadStart.map((x) => x.toFixed(2)).join(' ')} at start, ${loadEnd.map((x) => x.toFixed(2)).join(' ')} at the end (a shared machine: compare ratios, not absolutes)`);
    console.log(lines.join('\n'));

    const fioVersion = (await run('fio', ['--version'], 10_000)).stdout.trim();
    const nbdkitVersion = (await run('nbdkit', ['--version'], 10_000)).stdout.trim();
    const report = {
      startedAt: started.toISOString(),
      finishedAt: new Date().toISOString(),
      settings: { ...o, blockBytes: BLOCK_BYTES, out: undefined },
      machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model ?? null, node: process.version, fio: fioVersion, nbdkit: nbdkitVersion, loadStart, loadEnd },
      peerLinkRoundTrip: { ...rtt, source: 'pagepair bench --configs echo --ops write --inflight 1 --runs 1 --seconds 2, once per repeat; median' },
      cells,
      rows,
      targets,
    };
    if (o.out !== undefined) {
      writeFileSync(o.out, `${JSON.stringify(report, null, 2)}\n`);
      note(`report saved to ${o.out}`);
    }
    ok = true;
  } finally {
    await stopAll();
    if (o.keep || !ok) note(`working directory kept: ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`bench-nbd: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
