// The core's hot paths on one unmirrored controller driven by hand: a write
// whose pages are in hand and a read of cached pages are answered without a
// promise, page buffers are reused in place only while nobody else holds
// them, and destages of neighbouring pages go to the store together.

import { describe, expect, it } from 'vitest';
import { ControllerCore } from '../../src/core/controller.js';
import { runIo } from '../../src/runtime/store-io.js';
import { testCoreConfig } from './core-fixture.js';
import type { CoreEnv } from '../../src/core/env.js';
import { SENDER_CLIENT, type ClientRequest, type Message } from '../../src/protocol/messages.js';
import { MemoryDevice } from '../../src/store/memory-device.js';
import { PageStore } from '../../src/store/page-store.js';
import type { BlockStore, PageLocation } from '../../src/store/types.js';

const PAGE = 4096;
const PAIR_ID = '6a1f0c52-8d3e-4b7a-9f21-0c4d5e6f7a8b';
const CONN = 7;

interface HeldWrite {
  page: number;
  version: number;
  data: Buffer;
  /** The bytes as they were when the write was asked for. */
  bytesAtCall: Buffer;
  release(): void;
}

/** A store whose page writes wait until the test lets them go. */
function holdingStore(inner: PageStore): { store: BlockStore; held: HeldWrite[]; holding: { on: boolean } } {
  const held: HeldWrite[] = [];
  const holding = { on: false };
  const store = Object.create(inner) as BlockStore;
  store.writePage = (loc: PageLocation, page: number, version: number, epoch: number, data: Buffer, crc?: number): Promise<void> => {
    if (!holding.on) return inner.writePage(loc, page, version, epoch, data, crc);
    return new Promise((resolve, reject) => {
      held.push({
        page,
        version,
        data,
        bytesAtCall: Buffer.from(data),
        release: () => inner.writePage(loc, page, version, epoch, data, crc).then(resolve, reject),
      });
    });
  };
  return { store, held, holding };
}

async function singleCore(): Promise<{ core: ControllerCore; replies: Message[]; held: HeldWrite[]; holding: { on: boolean }; setNow(ms: number): void }> {
  const device = new MemoryDevice(16 * 1024 * 1024);
  const inner = await PageStore.format(device, { pairId: PAIR_ID, tableEntriesMax: 16, nowMs: 0 });
  const { store, held, holding } = holdingStore(inner);
  const replies: Message[] = [];
  let now = 0;
  const cfg = testCoreConfig(inner, { selfId: 1, mirroring: false, cacheBytesMax: 4 * 1024 * 1024 });
  const fence = { fencePartner: () => Promise.resolve(false), partnerGone: () => Promise.resolve(false) };
  const env: CoreEnv = {
    sendPeer: () => undefined,
    replyClient: (_connId, msg) => replies.push(msg),
    requestFlush: () => undefined,
    nowMs: () => now,
    newGuid: () => '00000000-0000-4000-8000-000000000001',
    randomBytes: (n) => Buffer.alloc(n, 0x5a),
    closePeer: () => undefined,
    startIo: (id, op) => void runIo(store, fence, op).then((outcome) => core.onIoDone(id, outcome)),
    pid: 1,
    log: { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined },
  };
  const core = new ControllerCore(cfg, env);
  await core.start();
  return { core, replies, held, holding, setNow: (ms) => (now = ms) };
}

let nextRequestId = 1;

function request(body: Record<string, unknown>): ClientRequest {
  return { requestId: nextRequestId++, epoch: 0, sender: SENDER_CLIENT, flags: 0, ...body } as unknown as ClientRequest;
}

/** Lets the core's promise chains (store writes, replies of the long way) run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
}

async function allocate(core: ControllerCore, replies: Message[], pages: number): Promise<string> {
  core.onClientRequest(CONN, request({ kind: 'C_ALLOCATE', name: 'hot', policy: '', sizeBytes: pages * PAGE }));
  await settle();
  const r = replies.pop();
  if (r?.kind !== 'C_ALLOCATE_REPLY') throw new Error(`allocate answered ${JSON.stringify(r)}`);
  return r.guid;
}

function write(core: ControllerCore, guid: string, page: number, fill: number): ClientRequest {
  const msg = request({ kind: 'C_WRITE', guid, offset: page * PAGE, pointerId: 0, clientId: 0, clientSeq: 0, data: Buffer.alloc(PAGE, fill) });
  core.onClientRequest(CONN, msg);
  return msg;
}

describe('core hot paths', () => {
  it('answers a write of pages in hand and a read of cached pages before returning', async () => {
    const { core, replies } = await singleCore();
    const guid = await allocate(core, replies, 8);
    const w = write(core, guid, 2, 0x11);
    expect(replies).toEqual([expect.objectContaining({ kind: 'C_WRITE_REPLY', requestId: w.requestId })]);
    const r = request({ kind: 'C_READ', guid, offset: 2 * PAGE + 100, length: 200, pointerId: 0 });
    core.onClientRequest(CONN, r);
    expect(replies).toHaveLength(2);
    expect(replies[1]).toMatchObject({ kind: 'C_READ_REPLY', requestId: r.requestId });
    expect((replies[1] as Extract<Message, { kind: 'C_READ_REPLY' }>).data).toEqual(Buffer.alloc(200, 0x11));
    // Across two pages, one of them never written: the long way, which stages it.
    const across = request({ kind: 'C_READ', guid, offset: 3 * PAGE - 10, length: 20, pointerId: 0 });
    core.onClientRequest(CONN, across);
    await settle();
    const data = (replies[2] as Extract<Message, { kind: 'C_READ_REPLY' }>).data;
    expect(data).toEqual(Buffer.concat([Buffer.alloc(10, 0x11), Buffer.alloc(10, 0)]));
  });

  it('a page handed to a reader keeps its bytes when the page is written again', async () => {
    const { core, replies } = await singleCore();
    const guid = await allocate(core, replies, 4);
    write(core, guid, 1, 0xaa);
    core.onClientRequest(CONN, request({ kind: 'C_READ', guid, offset: PAGE, length: PAGE, pointerId: 0 }));
    const lent = (replies.at(-1) as Extract<Message, { kind: 'C_READ_REPLY' }>).data;
    expect(lent).toEqual(Buffer.alloc(PAGE, 0xaa));
    write(core, guid, 1, 0xbb);
    write(core, guid, 1, 0xcc);
    expect(lent).toEqual(Buffer.alloc(PAGE, 0xaa));
    core.onClientRequest(CONN, request({ kind: 'C_READ', guid, offset: PAGE, length: PAGE, pointerId: 0 }));
    expect((replies.at(-1) as Extract<Message, { kind: 'C_READ_REPLY' }>).data).toEqual(Buffer.alloc(PAGE, 0xcc));
  });

  it('a page being destaged is not written in place: the store gets the version it was asked for', async () => {
    const { core, replies, held, holding, setNow } = await singleCore();
    const guid = await allocate(core, replies, 4);
    write(core, guid, 0, 0x01);
    holding.on = true;
    setNow(5000); // the page is old enough to destage
    core.tick();
    await settle();
    expect(held.map((h) => [h.page, h.version])).toEqual([[0, 1]]);
    // Written again while its store write waits: a new buffer, the old one untouched.
    write(core, guid, 0, 0x02);
    expect(held[0]!.data).toEqual(held[0]!.bytesAtCall);
    expect(held[0]!.data).toEqual(Buffer.alloc(PAGE, 0x01));
    holding.on = false;
    held[0]!.release();
    await settle();
    core.onClientRequest(CONN, request({ kind: 'C_READ', guid, offset: 0, length: PAGE, pointerId: 0 }));
    expect((replies.at(-1) as Extract<Message, { kind: 'C_READ_REPLY' }>).data).toEqual(Buffer.alloc(PAGE, 0x02));
  });

  it('destages the dirty neighbours of a due page with it, whatever their age', async () => {
    const { core, replies, held, holding, setNow } = await singleCore();
    const guid = await allocate(core, replies, 8);
    write(core, guid, 3, 0x03); // due first
    setNow(900);
    for (const p of [1, 2, 4, 6]) write(core, guid, p, p); // young; 5 stays clean
    holding.on = true;
    setNow(1500); // page 3 is due (1000 ms), the others are not
    core.tick();
    await settle();
    expect(held.map((h) => h.page).sort()).toEqual([1, 2, 3, 4]);
    holding.on = false;
    for (const h of held) h.release();
    await settle();
  });
});
