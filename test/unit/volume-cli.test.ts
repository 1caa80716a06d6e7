// The pieces of `pagepair volume` that need no controller: names, NBD URLs,
// and what is printed.

import { describe, expect, it } from 'vitest';
import { checkVolumeName, formatVolume, formatVolumeList, volumeUrls, type VolumeInfo } from '../../src/cli/volume.js';

function vol(over: Partial<VolumeInfo> = {}): VolumeInfo {
  return {
    name: 'vol0',
    kind: 'volume',
    guid: '4c85a5fc-9f9e-4dc6-afbc-36a050e04a00',
    policy: 'default',
    sizeBytes: 1 << 30,
    pageSizeBytes: 4096,
    pageCount: 262144,
    nbd: [
      { controller: 'A', urls: ['nbd://127.0.0.1:10809/vol0', 'nbd+unix:///vol0?socket=/d/a.sock'] },
      { controller: 'B', urls: [], note: 'did not answer: connect ECONNREFUSED 127.0.0.1:7200' },
    ],
    ...over,
  };
}

describe('volume names', () => {
  it('takes names that are export names and URL path segments as they are', () => {
    for (const ok of ['vol0', 'a', 'db.main-1_x', 'x'.repeat(64)]) expect(() => checkVolumeName(ok)).not.toThrow();
  });

  it('refuses others, naming --name', () => {
    for (const bad of ['', 'a b', '-x', '.hidden', 'a/b', 'x'.repeat(65), 'é']) {
      expect(() => checkVolumeName(bad)).toThrow(expect.objectContaining({ code: 'BAD_FIELD', field: 'name', message: expect.stringContaining('--name must be') }));
    }
  });
});

describe('NBD URLs', () => {
  it('makes a TCP and a unix-socket URL, and dials loopback for a listener on every interface', () => {
    expect(volumeUrls('vol0', { controller: 'A', tcp: 'nbd://127.0.0.1:10809', socket: '/run/a.sock' })).toEqual([
      'nbd://127.0.0.1:10809/vol0',
      'nbd+unix:///vol0?socket=/run/a.sock',
    ]);
    expect(volumeUrls('v', { controller: 'B', tcp: 'nbd://0.0.0.0:10810', socket: null })).toEqual(['nbd://127.0.0.1:10810/v']);
    expect(volumeUrls('v', { controller: 'B', tcp: null, socket: null })).toEqual([]);
    // A name made by another client may need escaping.
    expect(volumeUrls('a b', { controller: 'A', tcp: 'nbd://h:1', socket: null })).toEqual(['nbd://h:1/a%20b']);
  });
});

describe('output', () => {
  it('prints a volume with its URLs, and says which controller did not answer', () => {
    const text = formatVolume(vol());
    expect(text).toContain('size       1.0 GiB (1073741824 bytes, 262144 pages)');
    expect(text).toContain('page size  4.0 KiB (policy default)');
    expect(text).toContain('NBD        nbd://127.0.0.1:10809/vol0   (controller A)');
    expect(text).toContain('           nbd+unix:///vol0?socket=/d/a.sock   (controller A)');
    expect(text).toContain('controller B did not answer: connect ECONNREFUSED');
  });

  it('lists volumes in aligned columns, or says there are none', () => {
    const text = formatVolumeList([vol(), vol({ name: 'longer-name', sizeBytes: 65536, pageSizeBytes: 65536, policy: 'log', nbd: [] })]);
    const lines = text.split('\n');
    expect(lines[0]).toMatch(/^NAME {9}KIND {4}SIZE {5}PAGE {5}POLICY {3}GUID {34}NBD$/);
    expect(lines[1]).toMatch(/^vol0 {9}volume {2}1\.0 GiB {2}4\.0 KiB {2}default {2}4c85a5fc-\S+ {2}nbd:\/\/127\.0\.0\.1:10809\/vol0$/);
    expect(lines[2]).toMatch(/^longer-name {2}volume {2}64 KiB {3}64 KiB {3}log {6}4c85a5fc-\S+$/);
    expect(lines[3]).toBe('held: 2 volumes 1.0 GiB');
    expect(formatVolumeList([])).toMatch(/^no volumes/);
  });

  it('shows each kind, snapshots read only, keyed ones not exported, and the space each kind holds', () => {
    const text = formatVolumeList([
      vol(),
      vol({ name: 'vol0@monday', kind: 'snapshot', nbd: [{ controller: 'A', urls: ['nbd://127.0.0.1:10809/vol0%40monday'] }] }),
      vol({ name: 'region:ckpt', kind: 'region', sizeBytes: 1 << 20, nbd: [{ controller: 'A', urls: [], note: 'not exported over NBD (keyed)' }] }),
    ]);
    const lines = text.split('\n');
    expect(lines[2]).toMatch(/^vol0@monday\s+snapshot\s+1\.0 GiB\s.*nbd:\/\/127\.0\.0\.1:10809\/vol0%40monday \(read only\)$/);
    expect(lines[3]).toMatch(/^region:ckpt\s+region\s+1\.0 MiB\s.*- \(keyed: not exported\)$/);
    expect(lines[4]).toBe('held: 1 volume 1.0 GiB, 1 snapshot 1.0 GiB, 1 region 1.0 MiB');
  });
});
