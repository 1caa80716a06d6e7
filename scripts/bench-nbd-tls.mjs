#!/usr/bin/env node
// What TLS costs NBD clients of a pair: nbdcopy (libnbd) writes an image
// through controller A and reads it back, 4 KiB requests, 32 in flight on one
// connection, plain (nbd://) and over TLS-PSK (nbds://), alternating, against
// one mirrored pair of our own whose tls.mode is "on" (both served). fio's nbd
// engine cannot be given a TLS key (libnbd refuses tls-psk-file in a URI
// unless the program allows it), hence nbdcopy. Prints medians of requests a
// second and of the controllers' CPU per request (A + B, from /proc), and
// the ratios.
//
//   npm run build && node scripts/bench-nbd-tls.mjs [--size 256] [--repeat 3]
//
// Needs nbdcopy (scripts/install-nbd-clients.sh). Only 127.0.0.1 and a
// temporary directory; everything it starts is stopped on the way out.

import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { scriptOptions } from './script-options.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = process.env.PAGEPAIR_DIST ?? path.join(here, '..', 'dist');
const load = (file) => import(pathToFileURL(path.join(dist, file)).href);

const HELP = `Usage: node scripts/bench-nbd-tls.mjs [options]

nbdcopy, 4 KiB requests, 32 in flight, one connection: an image written
through controller A and read back, plain and over TLS-PSK, alternating;
medians of requests/s and of the controllers' CPU per request.

Options:
  --size <MiB>     image size in MiB (default 256)
  --repeat <n>     runs of each (default 3)
  --keep           keep the working directory
  -h, --help       this text
`;

const opt = scriptOptions('bench-nbd-tls', HELP, {
  size: { type: 'string', default: '256' },
  repeat: { type: 'string', default: '3' },
});
const sizeBytes = Number(opt.size) * 1024 * 1024;
const repeat = Number(opt.repeat);
if (!Number.isInteger(sizeBytes / 1048576) || sizeBytes <= 0 || !Number.isInteger(repeat) || repeat < 1) {
  process.stderr.write('bench-nbd-tls: --size and --repeat must be positive whole numbers\n');
  process.exit(2);
}
const REQUEST = 4096;

const ticks = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();
function cpuUs(pid) {
  if (!existsSync(`/proc/${pid}/stat`)) return NaN;
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1e6) / ticks;
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
function nbdcopy(args) {
  return new Promise((resolve, reject) =>
    execFile('nbdcopy', args, { timeout: 600_000 }, (err, _out, stderr) => (err ? reject(new Error(`nbdcopy ${args.join(' ')}: ${stderr || err.message}`)) : resolve())),
  );
}

const { NbdPair, storeBytesFor } = await load('runtime/nbd-pair.js');
const { formatPskLine } = await load('transport/tls.js');
const dir = mkdtempSync(path.join(os.tmpdir(), 'pagepair-bench-nbd-tls-'));
const pskFile = path.join(dir, 'nbd.psk');
writeFileSync(pskFile, formatPskLine('bench', randomBytes(32)), { mode: 0o600 });
const image = path.join(dir, 'image.raw');
writeFileSync(image, randomBytes(sizeBytes));
let pair = null;
try {
  pair = await NbdPair.start({ dir, storeBytes: storeBytesFor([sizeBytes]), cacheBytesMax: 256 * 1024 * 1024, logLevel: 'warn', tls: { mode: 'on', pskFile } });
  await pair.createVolume('A', 'bench', sizeBytes);
  const port = pair.a.nbdPort;
  const urls = { plain: `nbd://127.0.0.1:${port}/bench`, tls: `nbds://bench@127.0.0.1:${port}/bench?tls-psk-file=${pskFile}` };
  const flags = [`--request-size=${REQUEST}`, '--requests=32', '--connections=1'];
  const requests = sizeBytes / REQUEST;
  const runs = { plain: { write: [], read: [] }, tls: { write: [], read: [] } };
  for (let r = 0; r < repeat; r++) {
    for (const mode of r % 2 === 0 ? ['plain', 'tls'] : ['tls', 'plain']) {
      for (const op of ['write', 'read']) {
        const cpu0 = cpuUs(pair.a.pid) + cpuUs(pair.b.pid);
        const t0 = performance.now();
        if (op === 'write') await nbdcopy([...flags, '--flush', image, urls[mode]]);
        else await nbdcopy([...flags, urls[mode], 'null:']);
        const s = (performance.now() - t0) / 1000;
        const cpu = (cpuUs(pair.a.pid) + cpuUs(pair.b.pid) - cpu0) / requests;
        runs[mode][op].push({ perS: requests / s, cpu });
        process.stderr.write(`bench-nbd-tls: run ${r + 1}/${repeat} ${mode.padEnd(5)} ${op.padEnd(5)}: ${Math.round(requests / s)} requests/s, ${cpu.toFixed(1)} µs CPU (A + B) per request\n`);
      }
    }
  }
  const lines = [`NBD through controller A of a mirrored pair, nbdcopy ${REQUEST} B requests, 32 in flight, one connection, ${sizeBytes / 1048576} MiB; medians of ${repeat}`];
  lines.push(`${'op'.padEnd(6)}| ${'plain req/s'.padStart(11)} ${'CPU'.padStart(9)} | ${'TLS req/s'.padStart(9)} ${'CPU'.padStart(9)} | ${'rate'.padStart(5)} ${'CPU'.padStart(6)}`);
  for (const op of ['write', 'read']) {
    const p = { perS: median(runs.plain[op].map((x) => x.perS)), cpu: median(runs.plain[op].map((x) => x.cpu)) };
    const t = { perS: median(runs.tls[op].map((x) => x.perS)), cpu: median(runs.tls[op].map((x) => x.cpu)) };
    lines.push(
      `${op.padEnd(6)}| ${String(Math.round(p.perS)).padStart(11)} ${`${p.cpu.toFixed(1)} µs`.padStart(9)} | ${String(Math.round(t.perS)).padStart(9)} ${`${t.cpu.toFixed(1)} µs`.padStart(9)} | ${(t.perS / p.perS).toFixed(2).padStart(5)} ${(t.cpu / p.cpu).toFixed(2).padStart(6)}`,
    );
  }
  lines.push(`machine: ${os.cpus().length} cpus, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  console.log(lines.join('\n'));
} finally {
  await pair?.stop();
  if (!opt.keep) rmSync(dir, { recursive: true, force: true });
  else process.stderr.write(`bench-nbd-tls: kept ${dir}\n`);
}
