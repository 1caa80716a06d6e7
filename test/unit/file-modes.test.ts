// Finding 6 of issue 11: the store was created 0644 and the NBD socket took
// the umask's mode, so any local user could read every volume. The store file,
// a directory made for it or for a socket, and the socket itself are the
// owner's alone, whatever the umask lets through.

import { stat } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { listenPrivateSocket } from '../../src/transport/unix-socket.js';
import { FileDevice } from '../../src/store/file-device.js';
import { openOrFormatFileStore } from '../../src/store/open.js';
import { useTempDir } from './helpers/temp-dir.js';

const MiB = 1024 * 1024;
const PAIR = '5d1e8a3c-2b4f-4c6d-9e8f-0a1b2c3d4e5f';

async function modeOf(path: string): Promise<number> {
  return (await stat(path)).mode & 0o777;
}

describe('file modes', () => {
  const tmp = useTempDir('pagepair-modes-');

  it('a new store file is 0600 and a directory made for it 0700', async () => {
    const path = join(tmp.path, 'made', 'by', 'the-controller', 'pair.store');
    const store = await openOrFormatFileStore(path, { pairId: PAIR, sizeBytes: 16 * MiB, nowMs: 1 });
    try {
      expect((await modeOf(path)).toString(8)).toBe('600');
      expect((await modeOf(join(tmp.path, 'made', 'by', 'the-controller'))).toString(8)).toBe('700');
      expect((await modeOf(join(tmp.path, 'made'))).toString(8)).toBe('700');
    } finally {
      await store.close();
    }
  });

  it('FileDevice.create makes the file 0600, exclusive or not', async () => {
    for (const exclusive of [true, false]) {
      const path = join(tmp.path, `device-${exclusive}.bin`);
      const d = await FileDevice.create(path, MiB, { exclusive });
      await d.close();
      expect((await modeOf(path)).toString(8)).toBe('600');
    }
  });

  it('a unix socket is 0600 in a directory made 0700, and still serves its owner', async () => {
    const socketPath = join(tmp.path, 'run', 'a.nbd.sock');
    const server = net.createServer((s) => s.end('hello'));
    await listenPrivateSocket(server, socketPath);
    try {
      expect((await stat(socketPath)).isSocket()).toBe(true);
      expect((await modeOf(socketPath)).toString(8)).toBe('600');
      expect((await modeOf(join(tmp.path, 'run'))).toString(8)).toBe('700');
      const got = await new Promise<string>((resolve, reject) => {
        const c = net.connect({ path: socketPath });
        let text = '';
        c.on('data', (b) => (text += b.toString()));
        c.on('end', () => resolve(text));
        c.on('error', reject);
      });
      expect(got).toBe('hello');
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
