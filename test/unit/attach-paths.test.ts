// pagepair attach's paths (src/attach/paths.ts) over two fake controllers:
// a request is answered only by a controller; a controller that dies, times
// out or says it is fenced has its requests sent again to the other; with
// neither, requests are held for holdMs and then fail with IO_ERROR; a path
// that comes back is used again.

import pino from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { Paths, type PathId, type Upstream } from '../../src/attach/paths.js';
import type { NbdAddress, NbdExportInfo } from '../../src/client/nbd-client.js';
import { PagepairError } from '../../src/protocol/errors.js';
import { waitFor } from './transport-helpers.js';

const SIZE = 1 << 20;
const INFO: NbdExportInfo = { sizeBytes: SIZE, transmissionFlags: 0, minimumBytes: 1, preferredBytes: 4096, maximumPayloadBytes: 1 << 20 };

interface Held {
  op: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/** One controller: a byte array per volume, shared by both fakes (the pair holds one copy). */
class FakeController {
  up = true;
  /** Requests wait here until released, instead of being answered at once. */
  hold = false;
  /** Answer every request with this error (e.g. SHUTTING_DOWN: fenced). */
  answerWith: PagepairError | null = null;
  readonly held: Held[] = [];
  readonly conns = new Set<FakeUpstream>();
  answered = 0;
  /** Connections asked for, refused or not. */
  dials = 0;

  constructor(
    readonly id: PathId,
    readonly disk: Map<string, Buffer>,
  ) {}

  connect(address: NbdAddress): Promise<Upstream> {
    this.dials++;
    if (!this.up) return Promise.reject(new PagepairError('NOT_ACTIVE', `connection to ${this.id} refused`));
    if (!this.disk.has(address.exportName)) return Promise.reject(new PagepairError('UNKNOWN_GUID', `no export ${address.exportName}`));
    const u = new FakeUpstream(this, address.exportName);
    this.conns.add(u);
    return Promise.resolve(u);
  }

  /** Dies: every connection closes, requests in flight on them fail; new connections are refused. */
  kill(): void {
    this.up = false;
    for (const h of this.held.splice(0)) h.reject(new PagepairError('NOT_ACTIVE', `${this.id} closed the connection`));
    for (const c of [...this.conns]) c.fail(new PagepairError('NOT_ACTIVE', `${this.id} closed the connection`));
  }

  release(): void {
    for (const h of this.held.splice(0)) h.resolve(undefined);
  }

  do<T>(op: string, fn: () => T): Promise<T> {
    if (this.answerWith !== null) return Promise.reject(this.answerWith);
    if (this.hold) {
      return new Promise<T>((resolve, reject) => {
        this.held.push({ op, resolve: () => resolve(this.count(fn)), reject });
      });
    }
    return Promise.resolve(this.count(fn));
  }

  private count<T>(fn: () => T): T {
    this.answered++;
    return fn();
  }
}

class FakeUpstream implements Upstream {
  readonly info = INFO;
  isOpen = true;
  private listeners: ((err: PagepairError | null) => void)[] = [];

  constructor(
    private readonly c: FakeController,
    private readonly volume: string,
  ) {}

  private get bytes(): Buffer {
    return this.c.disk.get(this.volume)!;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.c.do('read', () => Buffer.from(this.bytes.subarray(offset, offset + length)));
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.c.do('write', () => {
      this.bytes.set(data, offset);
    });
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.c.do('zero', () => {
      this.bytes.fill(0, offset, offset + length);
    });
  }

  flush(): Promise<void> {
    return this.c.do('flush', () => undefined);
  }

  onClosed(listener: (err: PagepairError | null) => void): void {
    this.listeners.push(listener);
  }

  fail(err: PagepairError): void {
    if (!this.isOpen) return;
    this.isOpen = false;
    this.c.conns.delete(this);
    for (const l of this.listeners.splice(0)) l(err);
  }

  close(): Promise<void> {
    this.isOpen = false;
    this.c.conns.delete(this);
    for (const l of this.listeners.splice(0)) l(null);
    return Promise.resolve();
  }

  destroy(): void {
    this.fail(new PagepairError('NOT_ACTIVE', 'destroyed'));
  }
}

/** Paths for volume "vol" over the fakes a (port 1) and b (port 2), re-dialling every 10 ms unless told, logging nothing unless given a log. */
function pathsOver(a: FakeController, b: FakeController, opts: { holdMs: number; reconnectMs?: number; spread?: boolean; preferred?: PathId; log?: pino.Logger }): Paths {
  return new Paths({
    controllers: [
      { id: 'A', host: '127.0.0.1', port: 1 },
      { id: 'B', host: '127.0.0.1', port: 2 },
    ],
    volumes: [{ name: 'vol', preferred: opts.preferred ?? 'A' }],
    spread: opts.spread ?? false,
    holdMs: opts.holdMs,
    reconnectMs: opts.reconnectMs ?? 10,
    connect: (addr) => ((addr as { port: number }).port === 1 ? a : b).connect(addr),
    log: opts.log ?? pino({ level: 'silent' }),
  });
}

/** Both fakes over one disk, and paths over them. */
function rig(opts: { holdMs?: number; spread?: boolean; preferred?: PathId } = {}) {
  const disk = new Map([['vol', Buffer.alloc(SIZE)]]);
  const a = new FakeController('A', disk);
  const b = new FakeController('B', disk);
  const paths = pathsOver(a, b, { ...opts, holdMs: opts.holdMs ?? 2000 });
  return { a, b, paths, disk };
}

describe('attach paths', () => {
  it('sends requests to the preferred controller while it is up', async () => {
    const { a, b, paths } = rig({ preferred: 'B' });
    await paths.start();
    await paths.write('vol', 0, Buffer.alloc(4096, 1), false);
    expect(await paths.read('vol', 0, 4)).toEqual(Buffer.alloc(4, 1));
    expect(b.answered).toBe(2);
    expect(a.answered).toBe(0);
    expect(paths.status().volumes[0]).toMatchObject({ name: 'vol', current: 'B', sizeBytes: SIZE });
    await paths.close();
  });

  it('a controller that dies with requests in flight: each is sent again to the other and answered by it, none before', async () => {
    const { a, b, paths } = rig();
    await paths.start();
    a.hold = true;
    const writes = Array.from({ length: 32 }, (_, i) => paths.write('vol', i * 4096, Buffer.alloc(4096, i + 1), false));
    const flags = writes.map(() => false);
    writes.forEach((w, i) => void w.then(() => (flags[i] = true)));
    await waitFor(() => a.held.length === 32, 'all 32 held by A');
    expect(flags.some((f) => f), 'nothing is acknowledged that no controller acknowledged').toBe(false);
    a.kill();
    await Promise.all(writes);
    expect(b.answered).toBe(32);
    const s = paths.status();
    expect(s.resent).toBe(32);
    expect(s.failovers).toBe(1);
    expect(s.paths.find((p) => p.id === 'A')!.state).toBe('down');
    expect(s.stallsMs).toHaveLength(1);
    expect(s.volumes[0]!.current).toBe('B');
    for (let i = 0; i < 32; i++) expect((await paths.read('vol', i * 4096, 1))[0]).toBe(i + 1);
    await paths.close();
  });

  it('a controller that answers ESHUTDOWN (fenced) is left for the other', async () => {
    const { a, b, paths } = rig();
    await paths.start();
    a.answerWith = new PagepairError('SHUTTING_DOWN', 'fenced');
    await paths.flush('vol');
    expect(b.answered).toBe(1);
    expect(paths.status().paths.find((p) => p.id === 'A')!.state).toBe('down');
    await paths.close();
  });

  it('an error of the request itself is returned as it is, not sent to the other controller', async () => {
    const { a, b, paths } = rig();
    await paths.start();
    a.answerWith = new PagepairError('BAD_FIELD', 'offset out of range');
    await expect(paths.read('vol', 0, 1)).rejects.toMatchObject({ code: 'BAD_FIELD' });
    expect(b.answered).toBe(0);
    expect(paths.status().resent).toBe(0);
    await paths.close();
  });

  it('with both controllers gone, requests are held, then fail with IO_ERROR after holdMs; nothing is acknowledged', async () => {
    // holdMs on a fake clock: held at 299 ms, failed at 300.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    try {
      const { a, b, paths } = rig({ holdMs: 300 });
      await paths.start();
      a.kill();
      b.kill();
      const r = paths.write('vol', 0, Buffer.alloc(512, 9), false);
      let settled = false;
      r.then(
        () => (settled = true),
        () => (settled = true),
      );
      await vi.advanceTimersByTimeAsync(299);
      expect(paths.status().held).toBe(1);
      expect(settled).toBe(false);
      await vi.advanceTimersByTimeAsync(1);
      await expect(r).rejects.toMatchObject({ code: 'IO_ERROR' });
      expect(paths.status()).toMatchObject({ failedNoPath: 1, held: 0 });
      await paths.close();
    } finally {
      vi.useRealTimers();
    }
  });

  it('a request held with no path is answered when a controller comes back within holdMs', async () => {
    const { a, b, paths, disk } = rig({ holdMs: 5000 });
    await paths.start();
    a.kill();
    b.kill();
    const r = paths.write('vol', 8192, Buffer.alloc(512, 7), false);
    await waitFor(() => paths.status().held === 1, 'the write held');
    expect(disk.get('vol')![8192]).toBe(0);
    b.up = true;
    await r;
    expect(disk.get('vol')![8192]).toBe(7);
    expect(paths.status().paths.find((p) => p.id === 'B')!.state).toBe('up');
    await paths.close();
  });

  it('a controller that comes back is dialled again and used when the other fails', async () => {
    const { a, b, paths } = rig();
    await paths.start();
    a.kill();
    await paths.flush('vol');
    a.up = true;
    await waitFor(() => paths.status().paths.find((p) => p.id === 'A')!.state === 'up', 'A up again');
    // No bouncing back on its own: the volume stays on B while B is up.
    await paths.flush('vol');
    expect(b.answered).toBe(2);
    b.kill();
    await paths.flush('vol');
    expect(a.answered).toBe(1);
    expect(paths.status().failovers).toBe(2);
    await paths.close();
  });

  it('spread: requests alternate over both controllers while both are up', async () => {
    const { a, b, paths } = rig({ spread: true });
    await paths.start();
    for (let i = 0; i < 10; i++) await paths.read('vol', 0, 1);
    expect(a.answered).toBe(5);
    expect(b.answered).toBe(5);
    expect(paths.status().volumes[0]!.current).toBe('A+B');
    a.kill();
    for (let i = 0; i < 4; i++) await paths.read('vol', 0, 1);
    expect(b.answered).toBe(9);
    await paths.close();
  });

  it('start fails, naming the volume and each controller, when no controller serves the volume', async () => {
    const { a, b } = rig();
    a.kill();
    b.kill();
    const paths = pathsOver(a, b, { holdMs: 100 });
    await expect(paths.start()).rejects.toThrow(/no controller serves vol: A .*refused; B .*refused/);
    await paths.close();
  });

  it('a controller that does not serve a volume is logged once, not at every re-dial', async () => {
    const a = new FakeController('A', new Map([['vol', Buffer.alloc(SIZE)]]));
    const b = new FakeController('B', new Map());
    const errors: string[] = [];
    const log = { info: () => undefined, warn: () => undefined, error: (_o: unknown, msg: string) => errors.push(msg) } as unknown as pino.Logger;
    const paths = pathsOver(a, b, { holdMs: 1000, reconnectMs: 5, log });
    await paths.start();
    // B dialled again and again (every reconnectMs), refusing the volume each time.
    const from = b.dials;
    await waitFor(() => b.dials >= from + 5, 'five re-dials of B');
    expect(paths.status().paths.find((p) => p.id === 'B')).toMatchObject({ state: 'down', lastError: 'no export vol' });
    expect(errors).toEqual(['attach: controller does not serve a volume']);
    await paths.close();
  });
});
