// The NBD backend over two paired cores in one process (test/sim/harness.ts):
// volumes made through either controller are exported by both, snapshots
// read only; block I/O goes in as client requests, a write as one C_WRITE,
// reads and write-zeroes in whole-page pieces; FUA and flush reach the
// store; a takeover is waited out; a fenced controller stops serving. Then
// over a scripted core: a one-piece request is one message in and nothing
// else, a write is never cut, refusals that pass are retried with fresh
// messages, and close() ends a retry.

import { describe, expect, it } from 'vitest';
import { ErrorCode, isPagepairError, type ErrorCodeName } from '../../src/protocol/errors.js';
import { decode } from '../../src/protocol/codec.js';
import { NbdErrno, nbdErrnoFor } from '../../src/protocol/nbd.js';
import { Role, type ClientRequest, type Message } from '../../src/protocol/messages.js';
import { CoreVolumes, splitRange, type CoreVolumesOptions } from '../../src/runtime/nbd-volumes.js';
import type { NbdVolume } from '../../src/transport/nbd-backend.js';
import { Harness, tagged, type NodeName, type SimOptions } from './harness.js';

const PAGE = 512; // the simulator's 'tiny' policy

/** A backend on one controller of the simulated pair, its replies routed like a client connection's. */
function backendOn(h: Harness, name: NodeName, opts: Partial<CoreVolumesOptions> = {}): CoreVolumes {
  const conn = h.client(name); // reserves a connection id the harness routes replies for
  const backend = new CoreVolumes({
    core: {
      get currentRole() {
        return h.node(name).core.currentRole;
      },
      onClientRequest: (connId, msg) => h.node(name).core.onClientRequest(connId, msg),
    },
    connId: conn.connId,
    pieceBytes: 4 * PAGE,
    readPieceBytes: 2 * PAGE,
    piecesInFlight: 3,
    nowMs: () => h.nowMs,
    sleep: (ms) => h.sleep(ms),
    ...opts,
  });
  conn.onReply = (frame: Buffer) => backend.reply(decode(frame, h.limits));
  return backend;
}

function volumeOf(b: CoreVolumes, name: string): NbdVolume {
  const v = b.findVolume(name);
  if (v === undefined) throw new Error(`no volume ${name}`);
  return v;
}

/** A pair (`opts`), an NBD backend on A and one on B, and volume `name` of `pages` pages allocated through A, as A's backend sees it. */
async function pairWithVolume(opts: SimOptions, name: string, pages: number): Promise<{ h: Harness; na: CoreVolumes; nb: CoreVolumes; va: NbdVolume }> {
  const h = await Harness.createPair(opts);
  const na = backendOn(h, 'A');
  const nb = backendOn(h, 'B');
  await h.run(h.client('A').allocate(name, pages * PAGE, 'tiny'));
  return { h, na, nb, va: volumeOf(na, name) };
}

async function storedBytes(h: Harness, name: string, offset: number, length: number): Promise<Buffer> {
  const view = await h.openStoreView();
  const rec = (await view.readTable()).records.find((r) => r.name === name)!;
  const out = Buffer.alloc(length);
  for (let p = Math.floor(offset / PAGE); p * PAGE < offset + length; p++) {
    const sp = await view.readPage({ guid: rec.guid, dataOffset: rec.dataOffset, pageSizeBytes: rec.pageSizeBytes }, p);
    const from = Math.max(offset, p * PAGE);
    const to = Math.min(offset + length, (p + 1) * PAGE);
    sp.data.copy(out, from - offset, from - p * PAGE, to - p * PAGE);
  }
  return out;
}

describe('splitRange', () => {
  it('cuts at multiples of the piece size and covers the range exactly', () => {
    expect(splitRange(0, 4096, 4096)).toEqual([[0, 4096]]);
    expect(splitRange(100, 5000, 2048)).toEqual([
      [100, 1948],
      [2048, 2048],
      [4096, 1004],
    ]);
    expect(splitRange(4095, 2, 4096)).toEqual([
      [4095, 1],
      [4096, 1],
    ]);
  });
});

describe('NBD volumes over a paired core', () => {
  it('exports volumes made through either controller, on both, with their sizes', async () => {
    const h = await Harness.createPair({ seed: 501 });
    const na = backendOn(h, 'A');
    const nb = backendOn(h, 'B');
    await h.run(h.client('A').allocate('vol-a', 10 * PAGE, 'tiny'));
    await h.run(h.client('B').allocate('vol-b', 3 * PAGE + 1, 'tiny'));
    for (const b of [na, nb]) {
      expect(b.listVolumes().map((v) => v.name).sort()).toEqual(['vol-a', 'vol-b']);
      expect(b.findVolume('vol-a')).toMatchObject({ name: 'vol-a', sizeBytes: 10 * PAGE, pageSizeBytes: PAGE });
      // Rounded up to whole pages, as the allocation is.
      expect(b.findVolume('vol-b')?.sizeBytes).toBe(4 * PAGE);
      expect(b.findVolume('nope')).toBeUndefined();
      expect(b.serving()).toBe(true);
    }
    expect(na.findVolume('vol-a')?.guid).toBe(nb.findVolume('vol-a')?.guid);
    expect(h.violations).toEqual([]);
  });

  it('does not export a keyed allocation on either controller, says why in the log, and its I/O is refused anyway', async () => {
    const h = await Harness.createPair({ seed: 515 });
    const logged: object[] = [];
    const log = { info: (obj: object, msg: string) => void logged.push({ ...obj, msg }) };
    const na = backendOn(h, 'A', { log });
    const nb = backendOn(h, 'B', { log });
    await h.run(h.client('A').allocate('open-vol', 2 * PAGE, 'tiny'));
    const keyed = await h.run(h.client('A').allocateKeyed('keyed-vol', 2 * PAGE, 'tiny'));
    for (const b of [na, nb]) {
      expect(b.listVolumes().map((v) => v.name)).toEqual(['open-vol']);
      expect(b.findVolume('keyed-vol')).toBeUndefined();
    }
    expect(logged).toEqual([
      expect.objectContaining({ export: 'keyed-vol', guid: keyed.guid, msg: expect.stringContaining('keyed') }),
      expect.objectContaining({ export: 'keyed-vol', guid: keyed.guid, msg: expect.stringContaining('keyed') }),
    ]);
    // A volume object made up for it (NBD cannot name it) gets ACCESS_DENIED from the core, not data.
    const forged: NbdVolume = { name: 'keyed-vol', guid: keyed.guid, sizeBytes: 2 * PAGE, pageSizeBytes: PAGE };
    const read = await h.settle(na.read(forged, 0, PAGE));
    expect(read.ok ? 'ok' : (read.error as { code?: string }).code).toBe('ACCESS_DENIED');
    const write = await h.settle(nb.write(forged, 0, Buffer.alloc(PAGE, 1), false));
    expect(write.ok ? 'ok' : (write.error as { code?: string }).code).toBe('ACCESS_DENIED');
    expect(h.violations).toEqual([]);
  });

  it('writes through A, each write one C_WRITE, and reads the same bytes through B (in pieces); unaligned both ways', async () => {
    const h = await Harness.createPair({ seed: 502 });
    const na = backendOn(h, 'A', { pieceBytes: 16 * PAGE });
    const nb = backendOn(h, 'B', { pieceBytes: 16 * PAGE });
    await h.run(h.client('A').allocate('v', 64 * PAGE, 'tiny'));
    const va = volumeOf(na, 'v');
    const vb = volumeOf(nb, 'v');

    const data = tagged(13 * PAGE + 77, 'nbd-A');
    await h.run(na.write(va, 3 * PAGE - 5, data, false));
    expect(await h.run(nb.read(vb, 3 * PAGE - 5, data.length))).toEqual(data);
    // The same bytes through a plain client: the pieces landed where they belong.
    expect(await h.run(h.client('B').read(va.guid, 3 * PAGE - 5, data.length))).toEqual(data);

    const model = Buffer.alloc(64 * PAGE);
    data.copy(model, 3 * PAGE - 5);
    const small = Buffer.from('unaligned through B');
    await h.run(nb.write(vb, 10 * PAGE + 100, small, false));
    small.copy(model, 10 * PAGE + 100);
    expect(await h.run(na.read(va, 10 * PAGE + 90, small.length + 20))).toEqual(model.subarray(10 * PAGE + 90, 10 * PAGE + 90 + small.length + 20));
    expect(await h.run(na.read(va, 0, 64 * PAGE))).toEqual(model);
    // Nothing outside the writes changed.
    expect(await h.run(na.read(va, 0, 3 * PAGE - 5))).toEqual(Buffer.alloc(3 * PAGE - 5));
    expect(await h.run(na.read(va, 0, 0))).toEqual(Buffer.alloc(0));
    expect(h.violations).toEqual([]);
  });

  it('zeroes a range (write-zeroes and trim) across pages, in pieces, leaving its neighbours', async () => {
    const { h, na, nb, va } = await pairWithVolume({ seed: 503 }, 'z', 32);
    const full = tagged(32 * PAGE, 'before-zero');
    await h.run(h.client('A').write(va.guid, 0, full));
    await h.run(nb.writeZeroes(volumeOf(nb, 'z'), 2 * PAGE + 3, 20 * PAGE, false));
    const expected = Buffer.from(full);
    expected.fill(0, 2 * PAGE + 3, 22 * PAGE + 3);
    expect(await h.run(na.read(va, 0, 32 * PAGE))).toEqual(expected);
    expect(h.violations).toEqual([]);
  });

  it('a FUA write is in the store when it resolves; a flush through B stores what A wrote', async () => {
    const { h, na, nb, va } = await pairWithVolume({ seed: 504 }, 'f', 16);

    const fua = tagged(3 * PAGE, 'fua');
    await h.run(na.write(va, PAGE + 10, fua, true));
    expect(await storedBytes(h, 'f', PAGE + 10, fua.length)).toEqual(fua);

    // Written through A without FUA: dirty (the simulated dirty age is an hour).
    const later = tagged(2 * PAGE, 'flushed-by-B');
    await h.run(na.write(va, 8 * PAGE, later, false));
    expect(await storedBytes(h, 'f', 8 * PAGE, later.length)).not.toEqual(later);
    await h.run(nb.flush(volumeOf(nb, 'f')));
    expect(await storedBytes(h, 'f', 8 * PAGE, later.length)).toEqual(later);

    const zeroFua = await h.settle(nb.writeZeroes(volumeOf(nb, 'f'), 8 * PAGE, PAGE, true));
    expect(zeroFua.ok).toBe(true);
    expect(await storedBytes(h, 'f', 8 * PAGE, PAGE)).toEqual(Buffer.alloc(PAGE));
    expect(h.violations).toEqual([]);
  });

  it('a write longer than pieceBytes is refused TOO_LARGE, whole: nothing of it lands', async () => {
    const { h, na, va } = await pairWithVolume({ seed: 509 }, 'big', 16);
    const r = await h.settle(na.write(va, PAGE, tagged(4 * PAGE + 1, 'too-long'), false));
    expect(!r.ok && isPagepairError(r.error) ? r.error.code : 'ok').toBe('TOO_LARGE');
    expect(await h.run(na.read(va, 0, 16 * PAGE))).toEqual(Buffer.alloc(16 * PAGE));
    // Exactly pieceBytes, across a multiple of it: one write, taken.
    const exact = tagged(4 * PAGE, 'exact');
    await h.run(na.write(va, 3 * PAGE + 7, exact, false));
    expect(await h.run(na.read(va, 3 * PAGE + 7, exact.length))).toEqual(exact);
    expect(h.violations).toEqual([]);
  });

  it('exports snapshots read only on both controllers: their bytes stay, a write reaches the core only to be refused READ_ONLY (NBD_EPERM)', async () => {
    const { h, na, nb, va } = await pairWithVolume({ seed: 510 }, 'vol', 8);
    const before = tagged(8 * PAGE, 'before');
    await h.run(na.write(va, 0, before.subarray(0, 4 * PAGE), false));
    await h.run(nb.write(volumeOf(nb, 'vol'), 4 * PAGE, before.subarray(4 * PAGE), false));
    const snap = await h.run(h.client('B').snapshot(va.guid, 's1'));
    const keyed = await h.run(h.client('A').allocateKeyed('secret', 2 * PAGE, 'tiny'));
    const owner = h.client('A');
    await h.run(owner.unlock(keyed.guid, keyed.key));
    await h.run(owner.snapshot(keyed.guid, 'k1'));
    expect((await h.run(owner.list())).find((e) => e.name === 'secret@k1')).toMatchObject({ keyed: true, origin: keyed.guid });
    for (const b of [na, nb]) {
      expect(b.findVolume('vol')).toMatchObject({ name: 'vol', readOnly: false });
      expect(b.findVolume('vol@s1')).toMatchObject({ name: 'vol@s1', guid: snap.guid, sizeBytes: 8 * PAGE, pageSizeBytes: PAGE, readOnly: true });
      // A snapshot of a keyed volume is keyed: not exported, as its volume is not.
      expect(b.listVolumes().map((v) => [v.name, v.readOnly])).toEqual([
        ['vol', false],
        ['vol@s1', true],
      ]);
      expect(b.findVolume('secret@k1')).toBeUndefined();
    }
    // The volume moves on through both controllers; the snapshot reads as it was, through both.
    await h.run(na.write(va, 2 * PAGE + 9, tagged(3 * PAGE, 'after-A'), false));
    await h.run(nb.write(volumeOf(nb, 'vol'), 5 * PAGE, tagged(3 * PAGE, 'after-B'), false));
    for (const b of [na, nb]) expect(await h.run(b.read(volumeOf(b, 'vol@s1'), 0, 8 * PAGE))).toEqual(before);
    // The server refuses writes to a read-only export itself; the core refuses them too, whoever asks.
    for (const b of [na, nb]) {
      const r = await h.settle(b.write(volumeOf(b, 'vol@s1'), 0, Buffer.alloc(PAGE, 1), false));
      expect(!r.ok && isPagepairError(r.error) ? r.error.code : 'ok').toBe('READ_ONLY');
      const z = await h.settle(b.writeZeroes(volumeOf(b, 'vol@s1'), 0, 3 * PAGE, false));
      expect(!z.ok && isPagepairError(z.error) ? z.error.code : 'ok').toBe('READ_ONLY');
    }
    expect(nbdErrnoFor('READ_ONLY')).toBe(NbdErrno.EPERM);
    for (const b of [na, nb]) expect(await h.run(b.read(volumeOf(b, 'vol@s1'), 0, 8 * PAGE))).toEqual(before);
    // A flush (not offered on a read-only export, but a client may send one) is served.
    await h.run(nb.flush(volumeOf(nb, 'vol@s1')));
    // Deleted, it is no longer exported, and a connection still open on it gets errors.
    const stale = volumeOf(na, 'vol@s1');
    await h.run(h.client('A').release(snap.guid));
    for (const b of [na, nb]) expect(b.findVolume('vol@s1')).toBeUndefined();
    const gone = await h.settle(na.read(stale, 0, PAGE));
    expect(!gone.ok && isPagepairError(gone.error) ? gone.error.code : 'ok').toBe('UNKNOWN_GUID');
    expect(h.violations).toEqual([]);
  });

  it('turns ERROR replies into PagepairErrors with their code', async () => {
    const h = await Harness.createPair({ seed: 505 });
    const na = backendOn(h, 'A');
    const c = h.client('A');
    const x = await h.run(c.allocate('gone', 4 * PAGE, 'tiny'));
    const v = volumeOf(na, 'gone');
    await h.run(c.release(x.guid));
    expect(na.findVolume('gone')).toBeUndefined();
    for (const op of [(): Promise<unknown> => na.read(v, 0, PAGE), () => na.write(v, 0, Buffer.alloc(10), false), () => na.flush(v)]) {
      const r = await h.settle(op());
      expect(r.ok).toBe(false);
      expect(!r.ok && isPagepairError(r.error) ? r.error.code : 'untyped').toBe('UNKNOWN_GUID');
    }
    // A range past the end is the server's bug, refused before the core sees it.
    await h.run(c.allocate('small', 2 * PAGE, 'tiny'));
    const small = volumeOf(na, 'small');
    await expect(na.read(small, PAGE, 2 * PAGE)).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
    expect(h.violations).toEqual([]);
  });

  it('waits out a takeover: a write through B while A is killed completes once B serves alone', async () => {
    const h = await Harness.createPair({ seed: 506 });
    const nb = backendOn(h, 'B');
    const impatient = backendOn(h, 'B', { retryForMs: 0 });
    await h.run(h.client('A').allocate('t', 8 * PAGE, 'tiny'));
    const vb = volumeOf(nb, 't');
    h.kill('A');
    const data = tagged(2 * PAGE, 'after-kill');
    // Issued while B is still arbitrating: refused (the impatient backend
    // shows it), and retried until B serves alone.
    const refused = h.track(impatient.write(vb, 0, Buffer.alloc(PAGE, 7), false));
    const w = h.track(nb.write(vb, PAGE, data, false));
    await h.runUntil(() => refused.settled, 'impatient write settled');
    expect(refused.result?.ok).toBe(false);
    await h.runUntil(() => w.settled, 'write through B settled');
    expect(w.result).toMatchObject({ ok: true });
    expect(h.status('B').role).toBe('alone');
    // Alone, B wrote it through to the store before acknowledging.
    expect(await storedBytes(h, 't', PAGE, data.length)).toEqual(data);
    expect(h.violations).toEqual([]);
  });

  it('gives up on a refusal that lasts past retryForMs, with its code', async () => {
    const h = await Harness.createPair({ seed: 507, partnerTimeoutMs: 5_000, fenceKills: false });
    const nb = backendOn(h, 'B', { retryForMs: 300 });
    await h.run(h.client('A').allocate('r', 4 * PAGE, 'tiny'));
    const vb = volumeOf(nb, 'r');
    h.kill('A');
    // The partner timeout is long; arbitration has not finished when the retries end.
    await h.advance(20);
    const r = await h.settle(nb.write(vb, 0, Buffer.alloc(PAGE, 1), false));
    expect(r.ok).toBe(false);
    expect(!r.ok && isPagepairError(r.error) ? r.error.code : 'untyped').toMatch(/NOT_MIRRORED|PARTNER_LOST/);
  });

  it('a fenced controller does not serve; a closed backend refuses and fails what is pending', async () => {
    const h = await Harness.createPair({ seed: 508, preferred: 'A' });
    const na = backendOn(h, 'A');
    const nb = backendOn(h, 'B');
    await h.run(h.client('A').allocate('p', 4 * PAGE, 'tiny'));
    h.cut('partition');
    await h.runUntil(() => h.status('A').role === 'alone' && h.status('B').role === 'fenced', 'A alone, B fenced');
    expect(na.serving()).toBe(true);
    expect(nb.serving()).toBe(false);
    const r = await h.settle(nb.read(volumeOf(nb, 'p'), 0, PAGE));
    expect(!r.ok && isPagepairError(r.error) ? r.error.code : 'ok').toBe('FENCED');

    na.close();
    expect(na.serving()).toBe(false);
    await expect(na.read(volumeOf(nb, 'p'), 0, PAGE)).rejects.toMatchObject({ code: 'SHUTTING_DOWN' });
  });
});

// ---------------------------------------------------------------------------
// Over a scripted core

const GUID = '00000000-0000-4000-8000-00000000000a';
const SCRIPT_PAGE = 4096;

/** A core that records what comes in and answers as the test says; C_LIST at once. */
class ScriptedCore {
  readonly currentRole = Role.MIRRORED;
  readonly seen: ClientRequest[] = [];
  backend!: CoreVolumes;
  /** What to answer a request with; undefined: hold it (answer later with answer()). */
  answerWith: (msg: ClientRequest) => Message | undefined = () => undefined;

  onClientRequest(_connId: number, msg: ClientRequest): void {
    this.seen.push(msg);
    if (msg.kind === 'C_LIST') {
      this.answer({
        kind: 'C_LIST_REPLY',
        requestId: msg.requestId,
        epoch: 1,
        sender: 1,
        flags: 0,
        allocations: [{ guid: GUID, name: 'v', policy: 'default', pageSizeBytes: SCRIPT_PAGE, pageCount: 256 }],
      });
      return;
    }
    const reply = this.answerWith(msg);
    if (reply !== undefined) this.answer(reply);
  }

  answer(msg: Message): void {
    this.backend.reply(msg);
  }

  kinds(): string[] {
    return this.seen.map((m) => m.kind);
  }
}

function scripted(opts: Partial<CoreVolumesOptions> = {}): { core: ScriptedCore; backend: CoreVolumes; volume: NbdVolume; sleeps: number[] } {
  const core = new ScriptedCore();
  const sleeps: number[] = [];
  const backend = new CoreVolumes({ core, nowMs: () => sleeps.reduce((a, b) => a + b, 0), sleep: async (ms) => void sleeps.push(ms), ...opts });
  core.backend = backend;
  const volume = volumeOf(backend, 'v');
  core.seen.length = 0;
  return { core, backend, volume, sleeps };
}

function ok(msg: ClientRequest, data?: Buffer): Message {
  const common = { requestId: msg.requestId, epoch: 1, sender: 1, flags: 0 } as const;
  if (msg.kind === 'C_READ') return { kind: 'C_READ_REPLY', ...common, data: data ?? Buffer.alloc(msg.length, 0x5a) };
  if (msg.kind === 'C_WRITE') return { kind: 'C_WRITE_REPLY', ...common };
  if (msg.kind === 'C_FLUSH') return { kind: 'C_FLUSH_REPLY', ...common, pages: 0 };
  throw new Error(`unexpected ${msg.kind}`);
}

function refusal(msg: ClientRequest, code: ErrorCodeName): Message {
  return { kind: 'ERROR', requestId: msg.requestId, epoch: 1, sender: 1, flags: 0, code: ErrorCode[code], requestType: 0, message: `scripted ${code}` };
}

describe('NBD volumes over a scripted core', () => {
  it('a write is one C_WRITE whatever its alignment, up to pieceBytes; a longer one is refused whole; FUA adds a C_FLUSH', async () => {
    const { core, backend, volume } = scripted({ pieceBytes: 8 * SCRIPT_PAGE });
    core.answerWith = (m) => ok(m);
    expect(backend.writeBytesMax).toBe(8 * SCRIPT_PAGE);
    // Across a multiple of the piece size, unaligned: one message, the client's bytes as they are.
    const data = Buffer.alloc(8 * SCRIPT_PAGE, 3);
    await backend.write(volume, 5 * SCRIPT_PAGE + 100, data, false);
    expect(core.kinds()).toEqual(['C_WRITE']);
    expect(core.seen[0]).toMatchObject({ kind: 'C_WRITE', offset: 5 * SCRIPT_PAGE + 100 });
    expect(core.seen[0]!.kind === 'C_WRITE' && core.seen[0]!.data === data).toBe(true);
    core.seen.length = 0;
    await backend.write(volume, 7, Buffer.alloc(3 * SCRIPT_PAGE), true);
    expect(core.kinds()).toEqual(['C_WRITE', 'C_FLUSH']);
    core.seen.length = 0;
    await expect(backend.write(volume, 0, Buffer.alloc(8 * SCRIPT_PAGE + 1), false)).rejects.toMatchObject({ code: 'TOO_LARGE' });
    expect(core.kinds()).toEqual([]);
    // Write-zeroes still go in whole-page pieces.
    await backend.writeZeroes(volume, 100, 16 * SCRIPT_PAGE, false);
    expect(core.kinds()).toEqual(['C_WRITE', 'C_WRITE', 'C_WRITE']);
  });

  it('a snapshot (C_LIST gives its origin) is read only; a keyed one is not exported', async () => {
    const { core, backend } = scripted();
    const entry = { policy: 'default', pageSizeBytes: SCRIPT_PAGE, pageCount: 256, keyed: false, origin: '' };
    core.onClientRequest = (_connId, msg): void => {
      core.seen.push(msg);
      core.answer({
        kind: 'C_LIST_REPLY',
        requestId: msg.requestId,
        epoch: 1,
        sender: 1,
        flags: 0,
        allocations: [
          { ...entry, guid: GUID, name: 'v' },
          { ...entry, guid: '00000000-0000-4000-8000-00000000000b', name: 'v@s1', origin: GUID },
          { ...entry, guid: '00000000-0000-4000-8000-00000000000c', name: 'k', keyed: true },
          { ...entry, guid: '00000000-0000-4000-8000-00000000000d', name: 'k@s1', keyed: true, origin: '00000000-0000-4000-8000-00000000000c' },
          // A name with '@' does not make a snapshot: only an origin does.
          { ...entry, guid: '00000000-0000-4000-8000-00000000000e', name: 'plain@name' },
        ],
      });
    };
    expect(backend.listVolumes().map((v) => [v.name, v.readOnly])).toEqual([
      ['v', false],
      ['v@s1', true],
      ['plain@name', false],
    ]);
    expect(backend.findVolume('v@s1')?.readOnly).toBe(true);
    expect(backend.findVolume('k@s1')).toBeUndefined();
  });

  it('a one-piece read or write is one message into the core, and block I/O never lists', async () => {
    const { core, backend, volume } = scripted({ clientId: 77 });
    core.answerWith = (m) => ok(m);
    const data = Buffer.alloc(SCRIPT_PAGE, 7);
    for (let i = 0; i < 20; i++) {
      await backend.write(volume, i * SCRIPT_PAGE, data, false);
      expect(await backend.read(volume, i * SCRIPT_PAGE + 10, 100)).toEqual(Buffer.alloc(100, 0x5a));
    }
    expect(core.kinds()).toEqual(Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? 'C_WRITE' : 'C_READ')));
    const w = core.seen[0]!;
    // The client's bytes go in as they are (the core copies them into its page), with a retry tag of its own, no pointer.
    expect(w).toMatchObject({ kind: 'C_WRITE', guid: GUID, offset: 0, pointerId: 0, clientId: 77, clientSeq: 1, epoch: 0, sender: 0, flags: 0 });
    const seqs = core.seen.flatMap((m) => (m.kind === 'C_WRITE' ? [m.clientSeq] : []));
    expect(seqs).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect(w.kind === 'C_WRITE' && w.data === data).toBe(true);
    expect(core.seen[1]).toMatchObject({ kind: 'C_READ', guid: GUID, offset: 10, length: 100, pointerId: 0 });
    expect(new Set(core.seen.map((m) => m.requestId)).size).toBe(40);
    expect(backend.inflight).toBe(0);
  });

  it('requests in flight are answered in any order, each to its own caller', async () => {
    const { core, backend, volume } = scripted();
    const reads = [0, 1, 2, 3].map((i) => backend.read(volume, i * SCRIPT_PAGE, 8));
    expect(backend.inflight).toBe(4);
    for (const i of [2, 0, 3, 1]) core.answer(ok(core.seen[i]!, Buffer.alloc(8, i)));
    expect(await Promise.all(reads)).toEqual([0, 1, 2, 3].map((i) => Buffer.alloc(8, i)));
    // An answer nobody waits for (a duplicate, or after close) is dropped.
    core.answer(ok(core.seen[0]!));
    expect(backend.inflight).toBe(0);
  });

  it('retries a refusal that passes with a fresh message, pausing longer each time; a final one rejects at once', async () => {
    const { core, backend, volume, sleeps } = scripted();
    let refusals = 3;
    core.answerWith = (m) => (m.kind === 'C_WRITE' && refusals-- > 0 ? refusal(m, 'BUSY') : ok(m));
    await backend.write(volume, 0, Buffer.alloc(SCRIPT_PAGE, 1), false);
    expect(core.kinds()).toEqual(['C_WRITE', 'C_WRITE', 'C_WRITE', 'C_WRITE']);
    expect(new Set(core.seen.map((m) => m.requestId)).size).toBe(4);
    // Every attempt carries the same retry tag: the core applies the write at most once.
    const tags = core.seen.map((m) => (m.kind === 'C_WRITE' ? `${m.clientId}:${m.clientSeq}` : ''));
    expect(new Set(tags).size).toBe(1);
    expect(tags[0]).not.toBe('0:0');
    expect(sleeps).toEqual([5, 10, 20]);

    core.seen.length = 0;
    core.answerWith = (m) => refusal(m, 'UNKNOWN_GUID');
    await expect(backend.read(volume, 0, 1)).rejects.toMatchObject({ code: 'UNKNOWN_GUID' });
    expect(core.kinds()).toEqual(['C_READ']);
  });

  it('does not resend a refused request once the NBD connection that sent it is gone', async () => {
    // The client closed the connection and sent the write again elsewhere; a
    // resend landing after its later writes would undo them.
    const sleepers: (() => void)[] = [];
    const { core, backend, volume } = scripted({ sleep: () => new Promise<void>((r) => sleepers.push(r)) });
    const conn = { gone: false };
    core.answerWith = (m) => refusal(m, 'NOT_MIRRORED');
    const write = backend.write(volume, 0, Buffer.alloc(SCRIPT_PAGE, 1), false, conn);
    const big = backend.write(volume, 0, Buffer.alloc(4 * SCRIPT_PAGE, 2), true, conn);
    expect(core.kinds()).toEqual(['C_WRITE', 'C_WRITE']);
    conn.gone = true;
    for (const wake of sleepers.splice(0)) wake();
    await expect(write).rejects.toMatchObject({ code: 'NOT_ACTIVE' });
    await expect(big).rejects.toMatchObject({ code: 'NOT_ACTIVE' });
    await new Promise((r) => setImmediate(r));
    expect(core.kinds()).toEqual(['C_WRITE', 'C_WRITE']);
    // Nothing at all goes in for a connection already gone.
    await expect(backend.read(volume, 0, 10, conn)).rejects.toMatchObject({ code: 'NOT_ACTIVE' });
    expect(core.kinds()).toEqual(['C_WRITE', 'C_WRITE']);
  });

  it('gives up once a refusal lasted retryForMs, with its code', async () => {
    const { core, backend, volume, sleeps } = scripted({ retryForMs: 100 });
    core.answerWith = (m) => refusal(m, 'NOT_MIRRORED');
    await expect(backend.write(volume, 0, Buffer.alloc(1), false)).rejects.toMatchObject({ code: 'NOT_MIRRORED' });
    expect(sleeps.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(100);
    expect(sleeps.length).toBe(core.seen.length - 1);
  });

  it('close() fails what is waiting, a retry in its pause included, and refuses what comes after', async () => {
    const core = new ScriptedCore();
    let wake: (() => void) | null = null;
    const backend = new CoreVolumes({ core, sleep: () => new Promise<void>((r) => (wake = r)) });
    core.backend = backend;
    const volume = volumeOf(backend, 'v');
    core.answerWith = (m) => (m.kind === 'C_WRITE' ? refusal(m, 'CACHE_FULL') : undefined);
    const retrying = backend.write(volume, 0, Buffer.alloc(1), false);
    const held = backend.read(volume, 0, 1);
    await Promise.resolve();
    expect(wake).not.toBeNull();
    backend.close();
    await expect(held).rejects.toMatchObject({ code: 'SHUTTING_DOWN' });
    wake!();
    await expect(retrying).rejects.toMatchObject({ code: 'SHUTTING_DOWN' });
    await expect(backend.write(volume, 0, Buffer.alloc(1), false)).rejects.toMatchObject({ code: 'SHUTTING_DOWN' });
    expect(core.kinds().filter((k) => k === 'C_WRITE')).toHaveLength(1);
  });

  it('an answer of the wrong kind or length is the core\'s bug: that request fails INTERNAL', async () => {
    const { core, backend, volume } = scripted();
    core.answerWith = (m) => ({ kind: 'C_FLUSH_REPLY', requestId: m.requestId, epoch: 1, sender: 1, flags: 0, pages: 0 });
    await expect(backend.write(volume, 0, Buffer.alloc(1), false)).rejects.toMatchObject({ code: 'INTERNAL' });
    core.answerWith = (m) => ok(m, Buffer.alloc(3));
    await expect(backend.read(volume, 0, 4)).rejects.toMatchObject({ code: 'INTERNAL' });
    expect(backend.inflight).toBe(0);
  });
});
