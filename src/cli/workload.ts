// `pagepair workload`: a random read/write mix against one or both
// controllers that checks every read against what it wrote.
//
// Each block carries a self-describing pattern (block number and a write
// sequence number, then bytes derived from them), and the generator keeps
// one operation in flight per block, so every read must return exactly the
// last acknowledged write of its block, through either controller. A write
// that failed may or may not have landed; the block then accepts either
// value until a read settles it.

import { performance } from 'node:perf_hooks';
import { PagepairClient, controllerAddresses, type ControllerAddress } from '../client/index.js';
import { Prng } from '../core/prng.js';
import { PagepairError, isPagepairError } from '../errors.js';
import type { ControllerConfig } from '../runtime/config.js';
import { formatBytes } from './units.js';

export interface WorkloadOptions {
  durationS: number;
  target: 'A' | 'B' | 'both';
  sizeBytes: number;
  blockBytes: number;
  inflight: number;
  readPct: number;
  seed: number;
  policy: string;
  /** Keep the allocation afterwards (it is released by default). */
  keep: boolean;
  /** Flush before finishing, so what was written is in the store. */
  flush: boolean;
  /** Print a progress line every second. */
  progress: (line: string) => void;
}

export interface LatencySummary {
  count: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

export interface WorkloadResult {
  allocation: { guid: string; name: string };
  elapsedS: number;
  ops: number;
  opsPerSec: number;
  bytesPerSec: number;
  reads: LatencySummary;
  writes: LatencySummary;
  errors: number;
  errorCodes: Record<string, number>;
  verifyErrors: number;
  verifyFailures: string[];
}

const MAGIC = 0x57504750; // "PGPW"
const HEADER_BYTES = 16;

/**
 * The bytes block `block` holds after its write number `seq` (seq 0 = never
 * written: zeros): a header naming block and write, then a 16-byte motif
 * derived from them, repeated (Buffer.fill is native: the generator must not
 * be what limits the rate it measures).
 */
export function blockPattern(seed: number, block: number, seq: number, bytes: number): Buffer {
  const buf = Buffer.allocUnsafe(bytes);
  if (seq === 0) return buf.fill(0);
  const g = new Prng((seed * 0x9e3779b1) ^ (block * 0x85ebca6b) ^ seq);
  const motif = Buffer.allocUnsafe(16);
  for (let i = 0; i < 16; i += 4) motif.writeUInt32LE(g.nextU32(), i);
  buf.fill(motif);
  if (bytes >= HEADER_BYTES) {
    buf.writeUInt32LE(MAGIC, 0);
    buf.writeUInt32LE(block >>> 0, 4);
    buf.writeUInt32LE(seq >>> 0, 8);
    buf.writeUInt32LE(seed >>> 0, 12);
  }
  return buf;
}

function pickClients(cfg: ControllerConfig, target: WorkloadOptions['target']): ControllerAddress[] {
  if (cfg.partner === null) {
    if (target === 'both' || target !== cfg.idLetter) {
      if (target !== 'both') throw new PagepairError('BAD_FIELD', `${cfg.sourceName} has no partner; --target must be ${cfg.idLetter}`, 'target');
    }
    return [{ id: cfg.idLetter, host: cfg.listen.client.host, port: cfg.listen.client.port, token: cfg.clientToken }];
  }
  const addrs = controllerAddresses({
    id: cfg.idLetter,
    clientToken: cfg.clientToken,
    listen: cfg.listen,
    partner: { id: cfg.partner.idLetter, client: cfg.partner.client },
  });
  if (target === 'both') return addrs.all;
  return addrs.all.filter((a) => a.id === target);
}

export async function runWorkload(cfg: ControllerConfig, opts: WorkloadOptions): Promise<WorkloadResult> {
  if (opts.blockBytes < HEADER_BYTES) throw new PagepairError('BAD_FIELD', `--block must be at least ${HEADER_BYTES} bytes`, 'block');
  const blocks = Math.floor(opts.sizeBytes / opts.blockBytes);
  if (blocks < 1) throw new PagepairError('BAD_FIELD', '--size must hold at least one block', 'size');
  const addrs = pickClients(cfg, opts.target);
  const clients: PagepairClient[] = [];
  try {
    for (const a of addrs) clients.push(await PagepairClient.connect({ host: a.host, port: a.port, token: a.token, name: 'pagepair-workload' }));
    const first = clients[0]!;
    const name = `workload-${opts.seed}-${Date.now().toString(36)}`;
    const alloc = await first.allocate(name, blocks * opts.blockBytes, opts.policy);
    opts.progress(
      `allocated ${name} (${alloc.guid}): ${formatBytes(blocks * opts.blockBytes)} in ${alloc.pageCount} pages of ${formatBytes(alloc.pageSizeBytes)}; ` +
        `${blocks} blocks of ${formatBytes(opts.blockBytes)}, ${opts.inflight} in flight, ${opts.readPct}% reads, through ${addrs.map((a) => a.id).join('+')}`,
    );

    const rng = new Prng(opts.seed);
    /** Per block: write sequence numbers the block may hold (one, unless a write failed). */
    const possible: number[][] = Array.from({ length: blocks }, () => [0]);
    const nextSeq = new Uint32Array(blocks);
    const busy = new Uint8Array(blocks);
    const readLat: number[] = [];
    const writeLat: number[] = [];
    const errorCodes: Record<string, number> = {};
    const verifyFailures: string[] = [];
    let verifyErrors = 0;
    let errors = 0;
    let ops = 0;
    let bytes = 0;
    let rr = 0;

    const started = performance.now();
    const deadline = started + opts.durationS * 1000;
    let lastReport = started;
    let lastOps = 0;

    const pickBlock = (): number => {
      for (let tries = 0; tries < 8; tries++) {
        const b = rng.below(blocks);
        if (busy[b] === 0) return b;
      }
      for (let b = rng.below(blocks), n = 0; n < blocks; n++, b = (b + 1) % blocks) if (busy[b] === 0) return b;
      return -1;
    };

    const worker = async (): Promise<void> => {
      while (performance.now() < deadline) {
        const block = pickBlock();
        if (block < 0) {
          await new Promise((r) => setImmediate(r));
          continue;
        }
        busy[block] = 1;
        const client = clients[rr++ % clients.length]!;
        const offset = block * opts.blockBytes;
        const t0 = performance.now();
        try {
          if (rng.next() * 100 < opts.readPct) {
            const data = await client.read(alloc.guid, offset, opts.blockBytes);
            readLat.push(performance.now() - t0);
            const seqs = possible[block]!;
            const seq = data.length >= HEADER_BYTES && data.readUInt32LE(0) === MAGIC ? data.readUInt32LE(8) : 0;
            if (seqs.includes(seq) && blockPattern(opts.seed, block, seq, opts.blockBytes).equals(data)) {
              possible[block] = [seq];
            } else {
              verifyErrors++;
              if (verifyFailures.length < 20) {
                verifyFailures.push(`block ${block} via ${client.controllerId === 1 ? 'A' : 'B'}: read write #${seq}, expected one of #${seqs.join(', #')}`);
              }
            }
          } else {
            const seq = ++nextSeq[block]!;
            const data = blockPattern(opts.seed, block, seq, opts.blockBytes);
            try {
              await client.write(alloc.guid, offset, data);
              possible[block] = [seq];
            } catch (err) {
              possible[block]!.push(seq);
              throw err;
            }
            writeLat.push(performance.now() - t0);
          }
          ops++;
          bytes += opts.blockBytes;
        } catch (err) {
          errors++;
          const code = isPagepairError(err) ? err.code : 'INTERNAL';
          errorCodes[code] = (errorCodes[code] ?? 0) + 1;
        } finally {
          busy[block] = 0;
        }
        const now = performance.now();
        if (now - lastReport >= 1000) {
          const rate = ((ops - lastOps) * 1000) / (now - lastReport);
          opts.progress(
            `${((now - started) / 1000).toFixed(0).padStart(4)}s  ${Math.round(rate).toString().padStart(7)} ops/s  ${formatBytes((rate * opts.blockBytes) | 0).padStart(9)}/s  errors ${errors}  verify errors ${verifyErrors}`,
          );
          lastReport = now;
          lastOps = ops;
        }
      }
    };
    await Promise.all(Array.from({ length: opts.inflight }, worker));
    const elapsedS = (performance.now() - started) / 1000;

    if (opts.flush) await first.flush(alloc.guid);
    if (!opts.keep) await first.release(alloc.guid);

    return {
      allocation: { guid: alloc.guid, name },
      elapsedS,
      ops,
      opsPerSec: ops / elapsedS,
      bytesPerSec: bytes / elapsedS,
      reads: summarize(readLat),
      writes: summarize(writeLat),
      errors,
      errorCodes,
      verifyErrors,
      verifyFailures,
    };
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
  }
}

export function summarize(samplesMs: number[]): LatencySummary {
  const s = Float64Array.from(samplesMs).sort();
  const at = (q: number): number => (s.length === 0 ? 0 : s[Math.min(s.length - 1, Math.floor(q * s.length))]!);
  return { count: s.length, p50Ms: at(0.5), p90Ms: at(0.9), p99Ms: at(0.99), maxMs: s.length === 0 ? 0 : s[s.length - 1]! };
}

export function formatWorkloadResult(r: WorkloadResult): string {
  const lat = (name: string, l: LatencySummary): string =>
    `  ${name.padEnd(6)} ${String(l.count).padStart(9)} ops   p50 ${us(l.p50Ms)}  p90 ${us(l.p90Ms)}  p99 ${us(l.p99Ms)}  max ${us(l.maxMs)}`;
  const lines = [
    `workload on ${r.allocation.name}: ${r.ops} ops in ${r.elapsedS.toFixed(1)} s = ${Math.round(r.opsPerSec)} ops/s, ${formatBytes(Math.round(r.bytesPerSec))}/s`,
    lat('reads', r.reads),
    lat('writes', r.writes),
    `  errors ${r.errors}${Object.keys(r.errorCodes).length > 0 ? ` (${Object.entries(r.errorCodes).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}   verification errors ${r.verifyErrors}`,
    ...r.verifyFailures.map((f) => `  ! ${f}`),
  ];
  return lines.join('\n');
}

function us(ms: number): string {
  return ms < 1 ? `${Math.round(ms * 1000)} µs`.padStart(8) : `${ms.toFixed(2)} ms`.padStart(8);
}
