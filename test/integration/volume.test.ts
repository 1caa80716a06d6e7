// Volumes end to end: `pagepair volume create/list/delete` against a real
// pair serving NBD. qemu-io reading and writing such a volume through both
// controllers is test/interop/volume-qemu-io.test.ts.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makePairFiles, runCli, startMirroredPair, stopPair, type PairFiles, type Proc } from './helpers.js';

let files: PairFiles;
let a: Proc;
let b: Proc;

const MiB = 1024 * 1024;

function tcpUrl(id: 'A' | 'B', volume: string): string {
  return `nbd://127.0.0.1:${id === 'A' ? files.ports.aNbd : files.ports.bNbd}/${volume}`;
}

function unixUrl(id: 'A' | 'B', volume: string): string {
  return `nbd+unix:///${volume}?socket=${id === 'A' ? files.nbdSockets!.a : files.nbdSockets!.b}`;
}

interface VolumeJson {
  name: string;
  guid: string;
  sizeBytes: number;
  pageSizeBytes: number;
  policy: string;
  nbd: { controller: string; urls: string[] }[];
}

beforeAll(async () => {
  files = await makePairFiles({}, { nbd: true });
  [a, b] = await startMirroredPair(files);
}, 60_000);

afterAll(() => stopPair([a, b], files), 60_000);

describe('volumes and NBD on a real pair', () => {
  it('logs where each controller serves NBD', async () => {
    const la = await a.waitForLog((r) => r.msg === 'controller listening');
    expect(la.nbd).toBe(`nbd://127.0.0.1:${files.ports.aNbd}`);
    expect(la.nbdSocket).toBe(files.nbdSockets!.a);
    const lb = await b.waitForLog((r) => r.msg === 'controller listening');
    expect(lb.nbd).toBe(`nbd://127.0.0.1:${files.ports.bNbd}`);
  });

  it('creates a volume through the CLI and prints its NBD URLs on both controllers', async () => {
    const r = await runCli(['volume', 'create', '--name', 'vol0', '--size', '64MiB', '--config', files.a]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('volume "vol0" created');
    expect(r.stdout).toMatch(/guid\s+[0-9a-f-]{36}/);
    expect(r.stdout).toContain('64 MiB (67108864 bytes, 16384 pages)');
    expect(r.stdout).toContain('4.0 KiB (policy default)');
    expect(r.stdout).toContain(tcpUrl('A', 'vol0'));
    expect(r.stdout).toContain(tcpUrl('B', 'vol0'));
    expect(r.stdout).toContain(unixUrl('A', 'vol0'));

    // Listed through either controller's configuration, the same volume.
    const la = await runCli(['volume', 'list', '--json', '--config', files.a]);
    const lb = await runCli(['volume', 'list', '--json', '--config', files.b]);
    expect(la.code, la.stderr).toBe(0);
    const va = JSON.parse(la.stdout) as VolumeJson[];
    expect(JSON.parse(lb.stdout)).toEqual(va);
    expect(va).toHaveLength(1);
    expect(va[0]).toMatchObject({ name: 'vol0', sizeBytes: 64 * MiB, pageSizeBytes: 4096, policy: 'default' });
    expect(va[0]!.nbd.map((x) => x.controller)).toEqual(['A', 'B']);

    const table = await runCli(['volume', 'list', '--config', files.b]);
    expect(table.stdout).toMatch(/^NAME\s+KIND\s+SIZE\s+PAGE\s+POLICY\s+GUID\s+NBD$/m);
    expect(table.stdout).toMatch(/^vol0\s+volume\s+64 MiB\s+4\.0 KiB\s+default\s+[0-9a-f-]{36}\s+nbd:\/\//m);
  });

  it('refuses bad input with errors that name it', async () => {
    // Each command, the exit code it must end with, and what its error must say.
    const refusals: [string[], number, string | RegExp][] = [
      [['volume', 'create', '--name', 'vol0', '--size', '1MiB', '--config', files.b], 1, 'DUPLICATE: a volume named "vol0" exists already'],
      [['volume', 'create', '--name', 'x', '--size', '12XB', '--config', files.a], 2, 'size must be a size such as 4096, 64KiB or 1GiB, got "12XB"'],
      [['volume', 'create', '--name', 'x', '--size', '1MiB', '--policy', 'nope', '--config', files.a], 1, /POLICY_UNKNOWN: --policy: no policy named "nope" .*known: default/],
      [['volume', 'create', '--name', 'huge', '--size', '1TiB', '--config', files.a], 1, 'NO_SPACE: no room for 1.0 TiB in the store'],
      [['volume', 'create', '--name', 'a b', '--size', '1MiB', '--config', files.a], 2, '--name must be 1 to 64 letters'],
      [['volume', 'delete', 'no-such-volume', '--config', files.a], 1, 'no volume named "no-such-volume"'],
    ];
    for (const [args, code, says] of refusals) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).toBe(code);
      if (typeof says === 'string') expect(r.stderr).toContain(says);
      else expect(r.stderr).toMatch(says);
    }

    const missing = await runCli(['volume', 'create', '--name', 'x', '--config', files.a]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain("required option '-s, --size <size>' not specified");

    for (const sub of ['create', 'list', 'delete']) {
      const help = await runCli(['volume', sub, '--help']);
      expect(help.code).toBe(0);
      expect(help.stdout).toContain('--config');
    }
  });

  it('deletes the volume through the CLI, by argument or --name', async () => {
    const r = await runCli(['volume', 'delete', 'vol0', '--config', files.b]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/volume "vol0" deleted \(guid [0-9a-f-]{36}, 64 MiB\)/);
    const list = await runCli(['volume', 'list', '--config', files.a]);
    expect(list.stdout).toContain('no volumes');

    const c = await runCli(['volume', 'create', '--name', 'vol1', '--size', '1MiB', '--policy', 'log', '--json', '--config', files.a]);
    expect(c.code, c.stderr).toBe(0);
    expect(JSON.parse(c.stdout)).toMatchObject({ name: 'vol1', sizeBytes: MiB, pageSizeBytes: 65536, policy: 'log' });
    const d = await runCli(['volume', 'delete', '--name', 'vol1', '--config', files.a]);
    expect(d.code, d.stderr).toBe(0);
    const again = await runCli(['volume', 'delete', '--name', 'vol1', '--config', files.a]);
    expect(again.code).toBe(1);
  });
});
