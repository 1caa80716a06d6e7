// NBD over TLS on a real pair with tls.mode "require": Debian's nbdinfo
// (libnbd) and qemu-io (qemu's tls-creds-psk) reach both controllers with a
// pre-shared key, a plain client is refused, and pagepair's own NBD client
// writes the same blocks through A and B at once over TLS, leaving both
// copies equal. The key file is made here: 32 bytes from a fixed seed, one
// `identity:hex` line, mode 0600, named keys.psk so qemu finds it in its dir.

import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient, type NbdTlsCredentials } from '../../src/client/nbd-client.js';
import { formatPskLine } from '../../src/transport/tls.js';
import { itWithTools } from '../tools.js';
import { makePairFiles, roundValue as value, runCli, seededInts as rng, startProcess, stopPair, waitUntil, type PairFiles, type Proc } from '../integration/helpers.js';
import { qemuIo, run, startServingPair } from './clients.js';

const MiB = 1024 * 1024;
const VOLUME = { name: 'tlsvol', sizeBytes: 16 * MiB };
const IDENTITY = 'pagepair-it';
const CREDS: NbdTlsCredentials = { identity: IDENTITY, key: createHash('sha256').update('nbd-tls integration key').digest() };

let keyDir: string;
let pskFile: string;
let files: PairFiles;
let a: Proc;
let b: Proc;

function port(id: 'A' | 'B'): number {
  return id === 'A' ? files.ports.aNbd! : files.ports.bNbd!;
}

function nbdsUrl(id: 'A' | 'B', file = pskFile): string {
  return `nbds://${IDENTITY}@127.0.0.1:${port(id)}/${VOLUME.name}?tls-psk-file=${file}`;
}

/** qemu-io over TLS-PSK (its keys.psk in keyDir); a failed pattern check or any error fails the test with the whole output. */
function qemuIoTls(id: 'A' | 'B', commands: string[]): Promise<string> {
  const args = [
    '--object',
    `tls-creds-psk,id=tls0,endpoint=client,dir=${keyDir},username=${IDENTITY}`,
    '--image-opts',
    `driver=nbd,host=127.0.0.1,port=${port(id)},export=${VOLUME.name},tls-creds=tls0`,
  ];
  return qemuIo(args, commands);
}

describe('NBD with tls.mode "require" on a real pair', () => {
  beforeAll(async () => {
    keyDir = mkdtempSync(join(tmpdir(), 'pagepair-nbd-tls-keys-'));
    pskFile = join(keyDir, 'keys.psk');
    writeFileSync(pskFile, formatPskLine(CREDS.identity, CREDS.key), { mode: 0o600 });
    ({ files, a, b } = await startServingPair({ tls: { mode: 'require', pskFile }, limits: { nbdConnectionsMax: 8, handshakeTimeoutMs: 3000 } }, [VOLUME]));
  }, 60_000);

  afterAll(async () => {
    await stopPair([a, b], files);
    if (keyDir !== undefined) rmSync(keyDir, { recursive: true, force: true });
  }, 60_000);

  it('takes limits.nbdConnectionsMax and limits.handshakeTimeoutMs from the configuration', async () => {
    const from = a.records().length;
    const timedOut = (r: Record<string, unknown>): boolean => r.msg === 'nbd connection closed' && r.reason === 'no export chosen within 3000 ms';
    const isClosed = Array.from({ length: 9 }, () => false);
    const closed = isClosed.map((_, i) => {
      const s = net.connect({ host: '127.0.0.1', port: port('A') });
      s.on('error', () => undefined);
      // Read (and drop) the greeting, so the end of the stream is seen.
      s.resume();
      return new Promise<number>((resolve) =>
        s.once('close', () => {
          isClosed[i] = true;
          resolve(i);
        }),
      );
    });
    // One was over the limit and went at once, while the eight others still sat in the handshake.
    await Promise.race(closed);
    expect(isClosed.filter((c) => c)).toHaveLength(1);
    expect(a.records().slice(from).filter(timedOut)).toHaveLength(0);
    await a.waitForLog((r) => r.msg === 'nbd connection refused: at the connection limit' && r.connectionsMax === 8, 5000);
    // The eight went at the configured handshake timeout, each saying so.
    await Promise.all(closed);
    await waitUntil(() => a.records().slice(from).filter(timedOut).length >= 8, 10_000, 'eight handshake timeouts in the log');
    expect(a.records().slice(from).filter(timedOut)).toHaveLength(8);
  }, 20_000);

  itWithTools(['nbdinfo'], 'nbdinfo with nbds:// and the key file reaches A and B (TCP and unix socket); plain nbd:// is refused', async () => {
    const urls = [
      nbdsUrl('A'),
      nbdsUrl('B'),
      `nbds+unix://${IDENTITY}@/${VOLUME.name}?socket=${files.nbdSockets!.a}&tls-psk-file=${pskFile}`,
      `nbds+unix://${IDENTITY}@/${VOLUME.name}?socket=${files.nbdSockets!.b}&tls-psk-file=${pskFile}`,
    ];
    for (const url of urls) {
      const r = await run('nbdinfo', ['--json', url], 20_000);
      expect(r.code, `${url}: ${r.stderr}`).toBe(0);
      const info = JSON.parse(r.stdout) as { TLS: boolean; exports: Record<string, unknown>[] };
      expect(info.TLS).toBe(true);
      expect(info.exports[0]).toMatchObject({ 'export-name': VOLUME.name, 'export-size': VOLUME.sizeBytes, block_size_minimum: 1, block_size_preferred: 4096 });
    }
    for (const id of ['A', 'B'] as const) {
      const plain = await run('nbdinfo', [`nbd://127.0.0.1:${port(id)}/${VOLUME.name}`], 20_000);
      expect(plain.code, plain.stdout).not.toBe(0);
      const list = await run('nbdinfo', ['--list', `nbd://127.0.0.1:${port(id)}`], 20_000);
      expect(list.code, list.stdout).not.toBe(0);
    }
    // A key file with another key for the same identity: the TLS handshake fails.
    const wrong = join(keyDir, 'wrong.psk');
    writeFileSync(wrong, formatPskLine(IDENTITY, createHash('sha256').update('not the key').digest()), { mode: 0o600 });
    const bad = await run('nbdinfo', [nbdsUrl('A', wrong)], 20_000);
    expect(bad.code).not.toBe(0);
    await a.waitForLog((r) => r.msg === 'nbd connection closed' && typeof r.reason === 'string' && r.reason.startsWith('TLS handshake failed'), 10_000);
    // And the controllers go on serving.
    const again = await run('nbdinfo', ['--size', nbdsUrl('A')], 20_000);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout.trim()).toBe(String(VOLUME.sizeBytes));
  });

  itWithTools(['qemu-io'], 'qemu-io with tls-creds-psk writes through A and reads back through B, and the other way round; without TLS it is refused', async () => {
    await qemuIoTls('A', ['write -P 0xab 0 1M', 'write -P 0x11 1000 3333', 'write -f -P 0x22 2M 64k', 'write -z 3M 4k', 'flush']);
    await qemuIoTls('B', ['read -P 0xab 0 1000', 'read -P 0x11 1000 3333', 'read -P 0xab 4333 1044243', 'read -P 0x22 2M 64k', 'read -P 0x00 3M 4k']);
    await qemuIoTls('B', ['write -P 0x66 6M 12345']);
    await qemuIoTls('A', ['read -P 0x66 6M 12345']);
    const plain = await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${port('B')}/${VOLUME.name}`, '-c', 'read 0 4k'], 30_000);
    expect(plain.code).not.toBe(0);
    expect(plain.stdout + plain.stderr).toMatch(/TLS/);
  });

  it('two writers over TLS, one per controller, on the same blocks: A and B read the same bytes after every round', async () => {
    const PAGE = 4096;
    const PAGES = 64;
    const na = await NbdClient.connect({ host: '127.0.0.1', port: port('A'), exportName: VOLUME.name, tls: CREDS });
    const nb = await NbdClient.connect({ host: '127.0.0.1', port: port('B'), exportName: VOLUME.name, tls: CREDS });
    const rand = rng(2011);
    const base = 8 * MiB;
    let differing = 0;
    let neither = 0;
    try {
      for (let round = 0; round < 400; round++) {
        // Whole pages, and 512-byte pieces anywhere in one page, alternately.
        const page = rand(PAGES);
        const whole = round % 2 === 0;
        const offA = base + page * PAGE + (whole ? 0 : rand(PAGE - 512 + 1));
        const offB = base + page * PAGE + (whole ? 0 : rand(PAGE - 512 + 1));
        const len = whole ? PAGE : 512;
        const va = value(len, round, 1);
        const vb = value(len, round, 2);
        const lag = rand(4);
        const later = async (turns: number, fn: () => Promise<void>): Promise<void> => {
          for (let i = 0; i < turns; i++) await new Promise<void>((resolve) => setImmediate(resolve));
          await fn();
        };
        await Promise.all([later(round % 3 === 0 ? lag : 0, () => na.write(offA, va)), later(round % 3 === 0 ? 0 : lag, () => nb.write(offB, vb))]);
        const from = Math.min(offA, offB);
        const to = Math.max(offA, offB) + len;
        const [ra, rb] = await Promise.all([na.read(from, to - from), nb.read(from, to - from)]);
        if (!ra.equals(rb)) differing++;
        const lo = Math.max(offA, offB);
        const hi = Math.min(offA, offB) + len;
        if (lo < hi) {
          const o = ra.subarray(lo - from, hi - from);
          if (!o.equals(va.subarray(lo - offA, hi - offA)) && !o.equals(vb.subarray(lo - offB, hi - offB))) neither++;
        }
      }
    } finally {
      await Promise.all([na.close().catch(() => undefined), nb.close().catch(() => undefined)]);
    }
    expect(differing, 'rounds where A and B read different bytes').toBe(0);
    expect(neither, 'rounds where the overlap is neither write').toBe(0);
    // The whole region, compared copy against copy.
    const ca = await NbdClient.connect({ host: '127.0.0.1', port: port('A'), exportName: VOLUME.name, tls: CREDS });
    const cb = await NbdClient.connect({ socketPath: files.nbdSockets!.b, exportName: VOLUME.name, tls: CREDS });
    try {
      const [da, db] = await Promise.all([ca.read(base, PAGES * PAGE), cb.read(base, PAGES * PAGE)]);
      expect(da.equals(db)).toBe(true);
    } finally {
      await Promise.all([ca.close(), cb.close()]);
    }
  }, 120_000);

  it('pagepair workload --transport nbd runs over TLS: with the configuration\'s key by default, or --tls-psk-file', async () => {
    const out = join(files.dir, 'reports');
    for (const extra of [[], ['--tls-psk-file', pskFile, '--tls-identity', IDENTITY]]) {
      const r = await runCli(
        ['workload', '-c', files.a, '--partner-config', files.b, '--transport', 'nbd', '--clients', '2', '-s', '1MiB', '-d', '1', '--out', out, '--json', ...extra],
        60_000,
      );
      expect(r.code, r.stderr).toBe(0);
      const report = JSON.parse(r.stdout) as { ok: boolean; totals: { ops: number; errors: number; verifyErrors: number } };
      expect(report).toMatchObject({ ok: true, totals: { errors: 0, verifyErrors: 0 } });
      expect(report.totals.ops).toBeGreaterThan(0);
    }
    const wrongId = await runCli(['workload', '-c', files.a, '--partner-config', files.b, '--transport', 'nbd', '-d', '1', '--out', out, '--tls-psk-file', pskFile, '--tls-identity', 'nobody'], 30_000);
    expect(wrongId.code).not.toBe(0);
    expect(wrongId.stderr).toMatch(/no key for identity "nobody"/);
  }, 120_000);

  it('pagepair attach reaches both controllers over TLS (the configurations\' key by default) and serves the host in plain', async () => {
    const socket = join(files.dir, 'attach.sock');
    const status = join(files.dir, 'attach.status.sock');
    const proc = startProcess(['attach', VOLUME.name, '-a', files.a, '-b', files.b, '--listen', '127.0.0.1:0', '--socket', socket, '--status-socket', status]);
    try {
      await proc.waitForLog((r) => r.msg === 'attach serving', 20_000);
      const local = await NbdClient.connect(`nbd+unix:///${VOLUME.name}?socket=${socket}`);
      const data = Buffer.alloc(64 * 1024, 0x5a);
      await local.write(12 * MiB, data);
      await local.close();
      for (const id of ['A', 'B'] as const) {
        const c = await NbdClient.connect({ host: '127.0.0.1', port: port(id), exportName: VOLUME.name, tls: CREDS });
        expect((await c.read(12 * MiB, data.length)).equals(data), `through ${id}`).toBe(true);
        await c.close();
      }
      await a.waitForLog((r) => r.msg === 'nbd tls established' && r.identity === IDENTITY, 5000);
    } finally {
      await proc.stop();
    }
  }, 60_000);

  it('a key file others may read stops a controller at start, saying why', async () => {
    const loose = join(keyDir, 'loose.psk');
    writeFileSync(loose, formatPskLine(IDENTITY, CREDS.key), { mode: 0o644 });
    const other = await makePairFiles({ tls: { mode: 'require', pskFile: loose } }, { nbd: true });
    try {
      const p = startProcess(['start', '--config', other.a]);
      const code = await p.exited;
      expect(code).toBe(2);
      expect(p.lines.join('\n')).toMatch(/BAD_CONFIG: TLS key file .*loose\.psk may be opened by other users \(mode 0644\); chmod 600/);
    } finally {
      other.cleanup();
    }
  }, 30_000);
});
