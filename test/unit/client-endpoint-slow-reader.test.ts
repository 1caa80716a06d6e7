// Issue 11, finding 4: bounds on what a client can make a controller hold.
// A client that sends requests but stops reading the replies made its
// controller buffer them without limit (+182 MiB seen): the client endpoint
// now drops a connection once its unsent replies pass replyBytesBufferedMax,
// with a logged reason. And there was no cap on connections: past
// connectionsMax they are dropped as they come. Everyone else is served.

import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { decode, encode } from '../../src/protocol/codec.js';
import type { Message } from '../../src/protocol/messages.js';
import type { ClientEndpoint, ClientEndpointOptions } from '../../src/transport/client-endpoint.js';
import { clientHello, testClientEndpoint } from './helpers/endpoints.js';
import { captureLog, waitFor, type LogRecord } from './transport-helpers.js';

const MiB = 1024 * 1024;
const GUID = '00000000-0000-4000-8000-000000000001';

const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

async function client(port: number): Promise<{ ws: WebSocket; replies: Message[] }> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}`);
  closers.push(() => ws.terminate());
  const replies: Message[] = [];
  ws.on('message', (data: Buffer) => replies.push(decode(data)));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  ws.send(encode(clientHello()));
  await waitFor(() => replies.length === 1, 'the hello reply');
  return { ws, replies };
}

/** An endpoint that answers every read at once (as a cache hit is), with the bound under test. */
async function readsEndpoint(bounds: Pick<ClientEndpointOptions, 'replyBytesBufferedMax' | 'connectionsMax'>): Promise<{ endpoint: ClientEndpoint; port: number; records: LogRecord[] }> {
  const { log, records } = captureLog();
  const endpoint = testClientEndpoint({
    ...bounds,
    log,
    onRequest: (conn, msg) => {
      if (msg.kind === 'C_READ') conn.reply({ kind: 'C_READ_REPLY', requestId: msg.requestId, epoch: 1, sender: 1, flags: 0, data: Buffer.alloc(msg.length, 7) });
    },
  });
  const { port } = await endpoint.start();
  closers.push(() => endpoint.close());
  return { endpoint, port, records };
}

describe('client endpoint: a client that does not read its replies', () => {
  it('is dropped once its unsent replies pass replyBytesBufferedMax, and another client is served meanwhile', async () => {
    const { endpoint, port, records } = await readsEndpoint({ replyBytesBufferedMax: 8 * MiB });

    const slow = await client(port);
    const good = await client(port);
    expect(endpoint.connections).toBe(2);
    // The slow client stops reading its socket and keeps asking: 256 MiB of replies if nothing stopped it.
    (slow.ws as unknown as { _socket: { pause(): void } })._socket.pause();
    for (let i = 0; i < 256; i++) {
      slow.ws.send(encode({ kind: 'C_READ', requestId: 100 + i, epoch: 0, sender: 0, flags: 0, guid: GUID, offset: 0, length: MiB, pointerId: 0 }));
    }
    await waitFor(() => records.some((r) => r.msg === 'client does not read its replies; connection dropped'), 'the slow reader dropped', 20_000);
    const dropped = records.find((r) => r.msg === 'client does not read its replies; connection dropped')!;
    expect(dropped.bufferedBytes as number).toBeGreaterThan(8 * MiB);
    expect(dropped.bufferedBytes as number).toBeLessThan(8 * MiB + 2 * MiB);
    await waitFor(() => endpoint.connections === 1, 'the slow connection gone');

    // The other client is served as before.
    good.ws.send(encode({ kind: 'C_READ', requestId: 9, epoch: 0, sender: 0, flags: 0, guid: GUID, offset: 0, length: 4096, pointerId: 0 }));
    await waitFor(() => good.replies.length === 2, 'the good client answered');
    expect(good.replies[1]).toMatchObject({ kind: 'C_READ_REPLY', requestId: 9 });
  }, 30_000);
});

describe('client endpoint: more connections than connectionsMax', () => {
  it('drops the ones past the bound as they come, keeps nothing for them, and serves the others', async () => {
    const { endpoint, port, records } = await readsEndpoint({ connectionsMax: 4 });
    const kept = await Promise.all([0, 1, 2, 3].map(() => client(port)));
    // A stranger opens twenty more without ever saying hello.
    const extra = Array.from({ length: 20 }, () => new WebSocket(`ws://127.0.0.1:${port}`));
    for (const ws of extra) {
      ws.on('error', () => undefined);
      closers.push(() => ws.terminate());
    }
    await Promise.all(extra.map((ws) => new Promise<void>((resolve) => ws.once('close', () => resolve()))));
    expect(endpoint.connections).toBe(4);
    expect(records.filter((r) => r.msg === 'client connection dropped: too many open')).toHaveLength(20);
    kept[0]!.ws.send(encode({ kind: 'C_READ', requestId: 5, epoch: 0, sender: 0, flags: 0, guid: GUID, offset: 0, length: 16, pointerId: 0 }));
    await waitFor(() => kept[0]!.replies.length === 2, 'a kept client answered');
  });
});
