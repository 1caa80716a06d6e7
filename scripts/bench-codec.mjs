#!/usr/bin/env node
// Codec throughput, run by hand against the compiled output:
//   npm run build && node scripts/bench-codec.mjs [frames]
// PAGEPAIR_DIST=<dir> points at another build. Each figure comes with a
// baseline measured in the same run (a plain 4 KiB copy, zlib's native
// CRC-32), so numbers from different machines can be compared as ratios.
// The last block is the codec work of one mirrored 4 KiB write, frame by
// frame as the controllers do it (C_WRITE in at A with its data CRC kept,
// WRITE_PAGE out to B reusing it, the two replies), in ns per frame.

import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import zlib from 'node:zlib';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = process.env.PAGEPAIR_DIST ?? path.join(here, '..', 'dist');
const load = (file) => import(pathToFileURL(path.join(dist, 'protocol', file)).href);
const { encode, decode, FrameDecoder, DATA_CRC } = await load('codec.js');
const { crc32c } = await load('crc32c.js');

const frames = Number(process.argv[2] ?? 100_000);
const PAGE_BYTES = 4096;
const GUID = '0123abcd-4567-89ef-a1b2-c3d4e5f60718';

const pages = Array.from({ length: 64 }, () => randomBytes(PAGE_BYTES));
// The decoder checks a WRITE_PAGE page's crc against its data: real ones.
const crcs = pages.map((p) => crc32c(p));
const message = (i) => ({
  kind: 'WRITE_PAGE',
  requestId: i >>> 0,
  epoch: 3,
  sender: 1,
  flags: 0,
  pages: [{ guid: GUID, page: i & 0xffff, version: i + 1, crc: crcs[i & 63], epoch: 3, pageFlags: 0, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: 0, data: pages[i & 63] }],
});

function time(label, n, bytesEach, fn) {
  for (let i = 0; i < Math.min(n, 5000); i++) fn(i); // warm up the JIT
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn(i);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const perSecond = n / seconds;
  const mbPerSecond = (perSecond * bytesEach) / 1e6;
  console.log(
    `${label.padEnd(34)} ${Math.round(perSecond).toString().padStart(10)} /s ${mbPerSecond.toFixed(0).padStart(7)} MB/s`,
  );
  return mbPerSecond;
}

const frameBytes = encode(message(0)).length;
console.log(`node ${process.version}, ${frames} WRITE_PAGE frames of ${frameBytes} bytes (one ${PAGE_BYTES}-byte page)\n`);

const copyMb = time('baseline: copy 4 KiB', frames, PAGE_BYTES, (i) => Buffer.from(pages[i & 63]));
const zlibMb =
  typeof zlib.crc32 === 'function'
    ? time('baseline: zlib.crc32 (IEEE) 4 KiB', frames, PAGE_BYTES, (i) => zlib.crc32(pages[i & 63]))
    : undefined;
const crcMb = time('crc32c 4 KiB', frames, PAGE_BYTES, (i) => crc32c(pages[i & 63]));

const encoded = Array.from({ length: 64 }, (_, i) => encode(message(i)));
const encodeMb = time('encode WRITE_PAGE', frames, frameBytes, (i) => encode(message(i)));
const decodeMb = time('decode WRITE_PAGE', frames, frameBytes, (i) => decode(encoded[i & 63]));
const bothMb = time('encode + decode WRITE_PAGE', frames, frameBytes, (i) => decode(encode(message(i))));

// A byte stream cut into 64 KiB chunks that split frames anywhere.
const stream = Buffer.concat(Array.from({ length: 1024 }, (_, i) => encoded[i & 63]));
const CHUNK = 64 * 1024;
const chunks = [];
for (let at = 0; at < stream.length; at += CHUNK) chunks.push(stream.subarray(at, at + CHUNK));
const streamRounds = Math.max(1, Math.round(frames / 1024));
const streamMb = time('FrameDecoder, 64 KiB chunks', streamRounds, stream.length, () => {
  const d = new FrameDecoder();
  let n = 0;
  for (const c of chunks) n += d.push(c).length;
  if (n !== 1024) throw new Error(`decoded ${n} frames`);
});

// One mirrored write's frames, as the controllers build and read them.
const common = (i) => ({ requestId: i >>> 0, epoch: 3, sender: 1, flags: 0 });
const cWrite = (i) => ({ kind: 'C_WRITE', ...common(i), guid: GUID, offset: (i & 0xffff) * PAGE_BYTES, pointerId: 0, clientId: 7, clientSeq: i + 1, data: pages[i & 63] });
const cWrites = Array.from({ length: 64 }, (_, i) => encode(cWrite(i)));
const decodedCWrites = cWrites.map((f) => decode(f, undefined, { dataCrc: true }));
// A's WRITE_PAGE carries the page the client sent, with the CRC decode handed back.
const mirrored = (i) => {
  const w = decodedCWrites[i & 63];
  const m = message(i);
  m.pages[0].data = w.data;
  m.pages[0].crc = w[DATA_CRC];
  return m;
};
const smallReplies = [
  ['WRITE_PAGE_REPLY', (i) => ({ kind: 'WRITE_PAGE_REPLY', ...common(i), sender: 2, count: 1 })],
  ['C_WRITE_REPLY', (i) => ({ kind: 'C_WRITE_REPLY', ...common(i) })],
];
function nsEach(label, n, fn) {
  for (let i = 0; i < Math.min(n, 5000); i++) fn(i);
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn(i);
  const ns = Number(process.hrtime.bigint() - start) / n;
  console.log(`  ${label.padEnd(44)} ${ns.toFixed(0).padStart(7)} ns`);
  return ns;
}
// The controllers encode into frames from their pool, given back once the socket has written them.
const { FRAMES } = await import(pathToFileURL(path.join(dist, 'transport', 'frame-pool.js')).href);
const pooled = (msg) => FRAMES.give(encode(msg, FRAMES.take));
console.log('\none mirrored 4 KiB write, frame by frame (encoded into pooled frames, as the controllers do):');
let perWrite = 0;
perWrite += nsEach('A: decode C_WRITE (data CRC kept)', frames, (i) => decode(cWrites[i & 63], undefined, { dataCrc: true }));
perWrite += nsEach('A: encode WRITE_PAGE (known page CRC)', frames, (i) => pooled(mirrored(i)));
const mirroredFrames = Array.from({ length: 64 }, (_, i) => encode(mirrored(i)));
perWrite += nsEach('B: decode WRITE_PAGE', frames, (i) => decode(mirroredFrames[i & 63]));
for (const [kind, make] of smallReplies) {
  const framesOf = Array.from({ length: 64 }, (_, i) => encode(make(i)));
  perWrite += nsEach(`${kind === 'WRITE_PAGE_REPLY' ? 'B' : 'A'}: encode ${kind}`, frames, (i) => pooled(make(i)));
  perWrite += nsEach(`${kind === 'WRITE_PAGE_REPLY' ? 'A' : 'client'}: decode ${kind}`, frames, (i) => decode(framesOf[i & 63]));
}
console.log(`  ${'codec work per mirrored write (both sides)'.padEnd(44)} ${perWrite.toFixed(0).padStart(7)} ns`);

console.log('\nratios to the copy baseline (higher is better):');
const ratio = (mb) => (mb / copyMb).toFixed(3);
if (zlibMb !== undefined) console.log(`  zlib.crc32 ${ratio(zlibMb)}   crc32c / zlib.crc32 ${(crcMb / zlibMb).toFixed(3)}`);
console.log(
  `  crc32c ${ratio(crcMb)}   encode ${ratio(encodeMb)}   decode ${ratio(decodeMb)}   both ${ratio(bothMb)}   stream ${ratio(streamMb)}`,
);
