// A remote NBD export as a pool's device (issue 14): reads and writes split
// to the export's largest payload, sync as NBD flush, an export without
// flush or a read-only one refused; and a mirror pool over two exports that
// keeps serving when one export's server goes away.

import { afterEach, describe, expect, it } from 'vitest';
import { isPagepairError } from '../../src/protocol/errors.js';
import { MirrorDevice } from '../../src/store/mirror-device.js';
import { NbdDevice } from '../../src/store/nbd-device.js';
import { PageStore } from '../../src/store/page-store.js';
import { MemoryNbdBackend } from '../../src/testing/memory-nbd-backend.js';
import { NbdServer } from '../../src/transport/nbd-server.js';
import { captureLog } from './transport-helpers.js';

const MiB = 1024 * 1024;
const servers: NbdServer[] = [];
const devices: NbdDevice[] = [];

async function serveExport(sizeBytes = 16 * MiB): Promise<{ server: NbdServer; url: string; backend: MemoryNbdBackend }> {
  const backend = new MemoryNbdBackend([{ name: 'dev', sizeBytes }]);
  const server = new NbdServer({ host: '127.0.0.1', port: 0, log: captureLog().log }, backend);
  servers.push(server);
  const { port } = await server.start();
  return { server, url: `nbd://127.0.0.1:${port}/dev`, backend };
}

async function connect(url: string): Promise<NbdDevice> {
  const d = await NbdDevice.connect(url, { requestTimeoutMs: 5000 });
  devices.push(d);
  return d;
}

afterEach(async () => {
  await Promise.all(devices.splice(0).map((d) => d.close().catch(() => undefined)));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

describe('NBD export as a device', () => {
  it('reads and writes across the largest payload, and syncs with a flush', async () => {
    const { url } = await serveExport();
    const d = await connect(url);
    expect(d.sizeBytes).toBe(16 * MiB);
    const big = Buffer.alloc(3 * MiB + 123);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
    await d.write(4096, big);
    await d.sync();
    expect((await d.read(4096, big.length)).equals(big)).toBe(true);
    expect((await d.read(4096 + MiB, 10)).equals(big.subarray(MiB, MiB + 10))).toBe(true);
  });

  it("a mirror pool over two exports keeps serving when one export's server goes away, and carries a block store", async () => {
    const a = await serveExport();
    const b = await serveExport();
    const pool = await MirrorDevice.create([
      { name: a.url, device: await connect(a.url) },
      { name: b.url, device: await connect(b.url) },
    ]);
    const store = await PageStore.format(pool, { pairId: '6a1f0c52-8d3e-4b7a-9f21-0c4d5e6f7a8b', tableEntriesMax: 16, nowMs: 0 });
    const loc = { guid: '00000000-0000-4000-8000-000000000002', dataOffset: 0, pageSizeBytes: 4096 };
    await store.writePage(loc, 1, 1, 1, Buffer.alloc(4096, 0x11));
    await store.sync();
    // The second export's server is gone: its connection fails, the pool goes on with the first.
    await b.server.close();
    await store.writePage(loc, 2, 1, 1, Buffer.alloc(4096, 0x22));
    await store.sync();
    expect(pool.degraded).toBe(true);
    expect(pool.status().members.map((s) => s.state)).toEqual(['healthy', 'failed']);
    expect((await store.readPage(loc, 1)).data.equals(Buffer.alloc(4096, 0x11))).toBe(true);
    expect((await store.readPage(loc, 2)).data.equals(Buffer.alloc(4096, 0x22))).toBe(true);
  });

  it('refuses an export that does not answer with a typed error naming it', async () => {
    const { server, url } = await serveExport();
    await server.close();
    let got = '';
    try {
      await connect(url);
    } catch (err) {
      got = isPagepairError(err) ? err.code : String(err);
    }
    expect(got).not.toBe('');
    expect(got).not.toMatch(/^Error/);
  });
});
