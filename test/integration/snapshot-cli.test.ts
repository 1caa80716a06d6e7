// `pagepair snapshot create/list/delete` against a real pair: a snapshot
// taken through the CLI keeps the bytes of before it (read through the other
// controller), the volume cannot be deleted while it has one, and deleting
// the snapshot frees it. Snapshots under concurrent writers are
// test/integration/snapshots.test.ts; over NBD, test/interop/snapshot-nbd.test.ts.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { makePairFiles, runCli, startMirroredPair, stopPair, type PairFiles, type Proc } from './helpers.js';

let files: PairFiles;
let a: Proc;
let b: Proc;

const MiB = 1024 * 1024;

async function client(id: 'A' | 'B'): Promise<PagepairClient> {
  return PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? files.ports.aClient : files.ports.bClient, token: files.token });
}

beforeAll(async () => {
  files = await makePairFiles({}, { nbd: true });
  [a, b] = await startMirroredPair(files);
}, 60_000);

afterAll(() => stopPair([a, b], files), 60_000);

describe('pagepair snapshot on a real pair', () => {
  it('takes a snapshot that keeps the bytes of before it, lists it, refuses what it must, and deletes it', async () => {
    expect((await runCli(['volume', 'create', '--name', 'vol0', '--size', '4MiB', '--config', files.a])).code).toBe(0);
    const ca = await client('A');
    const cb = await client('B');
    try {
      const vol = (await ca.list()).find((e) => e.name === 'vol0')!;
      const before = Buffer.alloc(MiB, 0x11);
      await ca.write(vol.guid, 0, before);

      const made = await runCli(['snapshot', 'create', 'vol0', 'monday', '--json', '--config', files.a]);
      expect(made.code, made.stderr).toBe(0);
      const snap = JSON.parse(made.stdout) as { name: string; exportName: string; guid: string; volume: string; sizeBytes: number };
      expect(snap).toMatchObject({ name: 'monday', exportName: 'vol0@monday', volume: 'vol0', sizeBytes: 4 * MiB });

      // Writes after it, through the other controller, do not reach it.
      await cb.write(vol.guid, 0, Buffer.alloc(MiB, 0x22));
      expect((await cb.read(snap.guid, 0, MiB)).equals(before)).toBe(true);
      expect((await ca.read(vol.guid, 0, MiB)).equals(Buffer.alloc(MiB, 0x22))).toBe(true);
      await expect(cb.write(snap.guid, 0, Buffer.alloc(4096))).rejects.toMatchObject({ code: 'READ_ONLY' });

      const listed = await runCli(['snapshot', 'list', 'vol0', '--config', files.b]);
      expect(listed.code, listed.stderr).toBe(0);
      expect(listed.stdout).toMatch(/^vol0@monday\s+4\.0 MiB\s+[0-9a-f-]{36}$/m);
      expect(listed.stdout).toContain('1 snapshot(s), 4.0 MiB reserved');

      // Status shows what the snapshot holds; deleting it below frees it.
      const st = await runCli(['status', '--config', files.b]);
      expect(st.code, st.stderr).toBe(0);
      // Store space: each page has two slots, so a 4 MiB volume holds a little over 8 MiB; its snapshot the same.
      const held = /^space\s+volumes 1 ([\d.]+ MiB), snapshots 1 ([\d.]+ MiB), regions 0 0 B, keyed 0 0 B; free ([\d.]+) MiB of /m.exec(st.stdout);
      expect(held, st.stdout).not.toBeNull();
      expect(held![2]).toBe(held![1]);

      const refusals: [string[], string][] = [
        [['snapshot', 'create', 'vol0', 'monday', '--config', files.b], 'DUPLICATE: "vol0" has a snapshot named "monday" already'],
        [['snapshot', 'create', 'nope', 'x', '--config', files.a], 'UNKNOWN_GUID: no volume "nope"'],
        [['snapshot', 'create', 'vol0', 'a@b', '--config', files.a], "BAD_FIELD: a snapshot name is 1 to 32 bytes without '@'"],
        [['snapshot', 'create', 'vol0@monday', 'x', '--config', files.a], 'READ_ONLY: "vol0@monday" is a snapshot'],
        [['snapshot', 'delete', 'vol0', 'tuesday', '--config', files.a], 'UNKNOWN_GUID: "vol0" has no snapshot named "tuesday"'],
        [['volume', 'delete', 'vol0', '--config', files.a], 'BUSY: vol0 has 1 snapshots (vol0@monday); delete them first'],
      ];
      for (const [args, said] of refusals) {
        const r = await runCli(args);
        expect(r.code, `${args.join(' ')}: ${r.stdout}`).not.toBe(0);
        expect(r.stderr, args.join(' ')).toContain(said);
      }

      // Rollback through the CLI: the volume gets the snapshot's bytes back, read through the other controller.
      const rb = await runCli(['snapshot', 'rollback', 'vol0', 'monday', '--config', files.a]);
      expect(rb.code, rb.stderr).toBe(0);
      expect(rb.stdout).toMatch(/volume "vol0" rolled back to vol0@monday: \d+ pages written back/);
      expect((await cb.read(vol.guid, 0, MiB)).equals(before)).toBe(true);
      // Commit: taken again now, so a write after it does not reach it, and its guid changes.
      await ca.write(vol.guid, 0, Buffer.alloc(MiB, 0x33));
      const cm = await runCli(['snapshot', 'commit', 'vol0', 'monday', '--json', '--config', files.b]);
      expect(cm.code, cm.stderr).toBe(0);
      const again = JSON.parse(cm.stdout) as { guid: string; exportName: string };
      expect(again.exportName).toBe('vol0@monday');
      expect(again.guid).not.toBe(snap.guid);
      await cb.write(vol.guid, 0, Buffer.alloc(MiB, 0x44));
      expect((await ca.read(again.guid, 0, MiB)).equals(Buffer.alloc(MiB, 0x33))).toBe(true);
      snap.guid = again.guid;

      const gone = await runCli(['snapshot', 'delete', 'vol0', 'monday', '--config', files.b]);
      expect(gone.code, gone.stderr).toBe(0);
      expect(gone.stdout).toContain('snapshot vol0@monday deleted (4.0 MiB freed)');
      expect((await ca.list()).some((e) => e.guid === snap.guid)).toBe(false);
      expect((await runCli(['snapshot', 'list', '--config', files.a])).stdout).toContain('no snapshots');
      const after = /^space\s+volumes 1 [\d.]+ MiB, snapshots 0 0 B, regions 0 0 B, keyed 0 0 B; free ([\d.]+) MiB of /m.exec((await runCli(['status', '--config', files.a])).stdout);
      expect(after).not.toBeNull();
      expect(Number(after![1])).toBeGreaterThanOrEqual(Number(held![3]) + 7);
      expect((await runCli(['volume', 'delete', 'vol0', '--config', files.a])).code).toBe(0);
    } finally {
      await ca.close();
      await cb.close();
    }
  }, 60_000);
});
