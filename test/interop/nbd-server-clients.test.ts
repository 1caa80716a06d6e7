// Debian's NBD clients (nbdinfo, qemu-io, nbdcopy, nbd-client) against the
// NBD server over an in-memory backend, over TCP and the unix socket; the
// server's byte-level unit tests are test/unit/nbd-server.test.ts.

import { randomFillSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { itWithTools } from '../tools.js';
import { useNbdRig } from '../unit/helpers/nbd-rig.js';
import { WRITABLE_EXPORT, runOk as run } from './clients.js';

const MiB = 1024 * 1024;
const rig = useNbdRig();

describe('NbdServer with real NBD clients', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'pagepair-nbd-real-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  itWithTools(['nbdinfo'], 'nbdinfo sees the export, its size and flags; --list sees every export', async () => {
    const { port } = await rig();
    const info = JSON.parse(await run('nbdinfo', ['--json', `nbd://127.0.0.1:${port}/vol0`])) as {
      exports: Record<string, unknown>[];
    };
    expect(info.exports[0]).toMatchObject({
      'export-name': 'vol0',
      'export-size': 4 * MiB,
      ...WRITABLE_EXPORT,
      block_size_maximum: 32 * MiB,
    });
    const list = JSON.parse(await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`])) as {
      exports: { 'export-name': string; 'export-size': number }[];
    };
    expect(list.exports.map((e) => [e['export-name'], e['export-size']])).toEqual([
      ['vol0', 4 * MiB],
      ['vol1', MiB],
    ]);
  });

  itWithTools(['qemu-io'], 'qemu-io writes and reads patterns, aligned and not, with FUA, write-zeroes, discard and flush', async () => {
    const { port, backend } = await rig();
    const out = await run('qemu-io', [
      '-f', 'raw',
      '-d', 'unmap',
      `nbd://127.0.0.1:${port}/vol0`,
      '-c', 'write -P 0xab 0 1M',
      '-c', 'read -P 0xab 0 1M',
      '-c', 'write -P 0x11 1000 3333',
      '-c', 'read -P 0xab 0 1000',
      '-c', 'read -P 0x11 1000 3333',
      '-c', 'read -P 0xab 4333 5000',
      '-c', 'write -f -P 0x22 2M 64k',
      '-c', 'read -P 0x22 2M 64k',
      '-c', 'write -z 512k 64k',
      '-c', 'read -P 0 512k 64k',
      '-c', 'write -P 0x33 3M 128k',
      '-c', 'discard 3M 64k',
      '-c', 'flush',
      '-c', 'read -P 0x33 3136k 64k',
    ]);
    expect(out).not.toMatch(/fail|error/i);
    expect(out.match(/^wrote /gm)?.length).toBe(5);
    const vol = backend.bytesOf('vol0');
    expect(vol.subarray(0, 1000).equals(Buffer.alloc(1000, 0xab))).toBe(true);
    expect(vol.subarray(1000, 4333).equals(Buffer.alloc(3333, 0x11))).toBe(true);
    expect(vol[4333]).toBe(0xab);
    expect(vol.subarray(512 * 1024, 576 * 1024).equals(Buffer.alloc(64 * 1024))).toBe(true);
    expect(backend.calls.some((c) => c.op === 'write' && c.fua && c.offsetBytes === 2 * MiB)).toBe(true);
    expect(backend.calls.some((c) => c.op === 'writeZeroes' && c.offsetBytes === 512 * 1024)).toBe(true);
    expect(backend.calls.some((c) => c.op === 'writeZeroes' && c.offsetBytes === 3 * MiB)).toBe(true);
    expect(backend.calls.some((c) => c.op === 'flush')).toBe(true);
  });

  itWithTools(['nbdcopy'], 'nbdcopy copies an image in and out over several connections, byte for byte', async () => {
    const { port, backend } = await rig();
    const image = join(dir, 'in.img');
    const back = join(dir, 'out.img');
    const bytes = Buffer.alloc(4 * MiB);
    randomFillSync(bytes);
    writeFileSync(image, bytes);
    await run('nbdcopy', [image, `nbd://127.0.0.1:${port}/vol0`]);
    expect(backend.bytesOf('vol0').equals(bytes)).toBe(true);
    await run('nbdcopy', [`nbd://127.0.0.1:${port}/vol0`, back]);
    expect(readFileSync(back).equals(bytes)).toBe(true);
  });

  itWithTools(['nbd-client'], 'nbd-client -l lists the exports', async () => {
    const { port } = await rig();
    const out = await run('nbd-client', ['-l', '127.0.0.1', String(port)]);
    expect(out).toContain('vol0');
    expect(out).toContain('vol1');
  });

  itWithTools(['nbdinfo', 'qemu-io'], 'serves the same volumes over the unix socket', async () => {
    const path = join(dir, 'nbd.sock');
    const { backend } = await rig({}, undefined, path);
    const uri = `nbd+unix:///vol1?socket=${path}`;
    const info = JSON.parse(await run('nbdinfo', ['--json', uri])) as { exports: Record<string, unknown>[] };
    expect(info.exports[0]).toMatchObject({ 'export-name': 'vol1', 'export-size': MiB, block_size_preferred: 8192 });
    const out = await run('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0x5a 4097 9000', '-c', 'read -P 0x5a 4097 9000']);
    expect(out).not.toMatch(/fail|error/i);
    expect(backend.bytesOf('vol1').subarray(4097, 13097).equals(Buffer.alloc(9000, 0x5a))).toBe(true);
    expect(backend.bytesOf('vol1')[4096]).toBe(0);
  });
});
