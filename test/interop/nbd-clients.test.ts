// Real NBD clients on a real pair: Debian's nbdinfo, qemu-io, nbdcopy, fio's
// nbd engine, nbd-client and nbdsh (scripts/install-nbd-clients.sh installs
// them) write through one controller and read through the other. Each client
// was written against the NBD spec by other people, so what they accept is an
// outside check of the handshake, the flags and every command.

import { createCipheriv, createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { itWithTools } from '../tools.js';
import { stopPair, type PairFiles, type Proc } from '../integration/helpers.js';
import { WRITABLE_EXPORT, qemuIo, run, startServingPair, tcpUrl, unixUrl } from './clients.js';

const MiB = 1024 * 1024;
/** The volume the small clients use, and the one nbdcopy fills. */
const SMALL = { name: 'vol0', sizeBytes: 16 * MiB };
const DISK = { name: 'disk', sizeBytes: 64 * MiB };

let files: PairFiles;
let a: Proc;
let b: Proc;
let work: string;

function tcp(id: 'A' | 'B', volume: string): string {
  return tcpUrl(files, id, volume);
}

function unix(id: 'A' | 'B', volume: string): string {
  return unixUrl(files, id, volume);
}

/** qemu-io on one URL, discards passed on as unmaps. */
function qemuIoAt(url: string, commands: string[]): Promise<string> {
  return qemuIo(['-f', 'raw', '-d', 'unmap', url], commands);
}

/** fio prints notes ("fio: connected to NBD server") before its JSON; the report is what follows. */
interface FioJob {
  error: number;
  total_err?: number;
  read: { io_bytes: number; total_ios: number };
  write: { io_bytes: number; total_ios: number };
}

function fioJob(stdout: string): FioJob {
  const at = stdout.indexOf('{\n  "fio version"');
  if (at < 0) throw new Error(`no JSON report in fio's output:\n${stdout.slice(-2000)}`);
  const report = JSON.parse(stdout.slice(at)) as { jobs: FioJob[] };
  expect(report.jobs).toHaveLength(1);
  return report.jobs[0]!;
}

/** A reproducible 64 MiB "random" image: AES-CTR of zeroes under a fixed key. */
function seededImage(path: string, bytes: number): void {
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, 0));
  writeFileSync(path, Buffer.concat([cipher.update(Buffer.alloc(bytes)), cipher.final()]));
}

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

describe('real NBD clients on a real pair', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'pagepair-nbd-clients-'));
    ({ files, a, b } = await startServingPair({}, [SMALL, DISK]));
  }, 60_000);

  afterAll(async () => {
    await stopPair([a, b], files);
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
  }, 60_000);

  itWithTools(['nbdinfo'], 'nbdinfo --json sees the export, its size and flags through A, B and both unix sockets', async () => {
    for (const url of [tcp('A', SMALL.name), tcp('B', SMALL.name), unix('A', SMALL.name), unix('B', SMALL.name)]) {
      const r = await run('nbdinfo', ['--json', url], 20_000);
      expect(r.code, `${url}: ${r.stderr}`).toBe(0);
      const info = JSON.parse(r.stdout) as { protocol: string; exports: Record<string, unknown>[] };
      expect(info.protocol).toBe('newstyle-fixed');
      expect(info.exports).toHaveLength(1);
      expect(info.exports[0]).toMatchObject({
        'export-name': SMALL.name,
        'export-size': SMALL.sizeBytes,
        ...WRITABLE_EXPORT,
      });
    }
    const list = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${files.ports.bNbd}`], 20_000);
    expect(list.code, list.stderr).toBe(0);
    const names = (JSON.parse(list.stdout) as { exports: { 'export-name': string; 'export-size': number }[] }).exports.map((e) => [e['export-name'], e['export-size']]);
    expect(names.sort()).toEqual([
      [DISK.name, DISK.sizeBytes],
      [SMALL.name, SMALL.sizeBytes],
    ]);
  });

  itWithTools(['nbd-client'], 'nbd-client -l lists the export names through A and B', async () => {
    for (const port of [files.ports.aNbd!, files.ports.bNbd!]) {
      const r = await run('nbd-client', ['-l', '127.0.0.1', String(port)], 20_000);
      expect(r.code, r.stderr).toBe(0);
      const names = r.stdout
        .split('\n')
        .filter((l) => !l.startsWith('Negotiation:'))
        .map((l) => /^([A-Za-z0-9._-]+):/.exec(l)?.[1])
        .filter((n): n is string => n !== undefined);
      expect(names.sort()).toEqual([DISK.name, SMALL.name]);
    }
  });

  itWithTools(['qemu-io'], 'qemu-io: aligned, unaligned, FUA, write-zeroes, discard and flush through A, read back through B', async () => {
    await qemuIoAt(tcp('A', SMALL.name), [
      'write -P 0xab 0 1M',
      'write -P 0x11 1000 3333', // unaligned, inside two pages
      'write -P 0x22 1048575 70000', // unaligned, across many pages and past the first MiB
      'write -f -P 0x33 2M 64k', // FUA
      'write -P 0x44 3M 128k',
      'write -z 3M 4k', // write-zeroes, aligned
      'write -z 3200001 999', // write-zeroes, unaligned
      'write -P 0x77 4M 128k',
      'discard 4M 64k',
      'aio_write -P 0x55 5M 4k',
      'aio_write -P 0x56 5246976 4k',
      'aio_flush',
      'flush',
    ]);
    // Through B: every byte as A left it (a discard may leave anything; pagepair leaves zeroes).
    await qemuIoAt(tcp('B', SMALL.name), [
      'read -P 0xab 0 1000',
      'read -P 0x11 1000 3333',
      'read -P 0xab 4333 1044242',
      'read -P 0x22 1048575 70000',
      'read -P 0x00 1118575 978577',
      'read -P 0x33 2M 64k',
      'read -P 0x00 3M 4k',
      'read -P 0x44 3149824 50177',
      'read -P 0x00 3200001 999',
      'read -P 0x44 3201000 75800',
      'read -P 0x00 4M 64k',
      'read -P 0x77 4259840 64k',
      'read -P 0x55 5M 4k',
      'read -P 0x56 5246976 4k',
    ]);
    // And through A's unix socket, the other way round: B writes, A reads.
    await qemuIoAt(unix('B', SMALL.name), ['write -f -P 0x66 6M 12345', 'flush']);
    await qemuIoAt(unix('A', SMALL.name), ['read -P 0x66 6M 12345', 'read -P 0x00 6303801 4096']);
  });

  itWithTools(['nbdcopy'], 'nbdcopy: a 64 MiB image in through A and out through B is byte-identical', async () => {
    const image = join(work, 'image.raw');
    const copy = join(work, 'copy.raw');
    seededImage(image, DISK.sizeBytes);
    const into = await run('nbdcopy', ['--flush', image, tcp('A', DISK.name)], 60_000);
    expect(into.code, into.stderr).toBe(0);
    const out = await run('nbdcopy', [tcp('B', DISK.name), copy], 60_000);
    expect(out.code, out.stderr).toBe(0);
    const [want, got] = await Promise.all([sha256(image), sha256(copy)]);
    expect(got).toBe(want);
    // The volume started as zeroes: the image is not, so an unwritten volume would not pass.
    expect(want).not.toBe(createHash('sha256').update(Buffer.alloc(DISK.sizeBytes)).digest('hex'));
  }, 90_000);

  itWithTools(['fio'], 'fio nbd engine: crc32c-verified random writes through A, every block verified through B', async () => {
    const job = ['--name=clients', '--ioengine=nbd', '--rw=randwrite', '--bs=4k', '--iodepth=16', '--size=8M', '--offset=8M', '--randseed=5150', '--verify=crc32c', '--verify_state_save=0', '--output-format=json'];
    const w = await run('fio', [...job, `--uri=${tcp('A', SMALL.name)}`, '--do_verify=0'], 60_000, { cwd: work });
    expect(w.code, w.stderr.slice(-2000)).toBe(0);
    const written = fioJob(w.stdout);
    expect(written.error).toBe(0);
    expect(written.write.io_bytes).toBe(8 * MiB);

    const v = await run('fio', [...job, `--uri=${tcp('B', SMALL.name)}`, '--verify_only', '--continue_on_error=verify'], 60_000, { cwd: work });
    expect(v.code, v.stderr.slice(-2000)).toBe(0);
    const verified = fioJob(v.stdout);
    expect(verified.error, v.stderr.slice(-2000)).toBe(0);
    expect(verified.total_err ?? 0).toBe(0);
    expect(verified.read.total_ios).toBe((8 * MiB) / 4096);
  }, 90_000);

  itWithTools(['nbdsh'], 'nbdsh (Debian python3 with libnbd) reads the size and what A wrote, through B', async (ctx) => {
    if (!existsSync('/usr/bin/python3')) {
      ctx.annotate('no /usr/bin/python3: nbdsh cannot run here (scripts/install-nbd-clients.sh warns about it)');
      return;
    }
    // nbdsh runs under Debian's python3, which has the nbd module; another python3 earlier in PATH has not.
    const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };
    const r = await run('nbdsh', ['-u', tcp('B', SMALL.name), '-c', 'print(h.get_size(), h.can_multi_conn(), h.pread(4, 2097152).hex())'], 20_000, { env });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(`${SMALL.sizeBytes} True 33333333`);
  });
});
