// Regression (issue 11, finding 1), on real controller processes on
// 127.0.0.1: an authenticated client's C_ALLOCATE with a long policy name
// (valid UTF-8, and invalid bytes that triple in size as U+FFFD) made the
// ERROR reply's echo too long to encode, and the controller process exited.
// After that and other hostile input on the client and peer ports, both
// controllers still serve a write and a read, and their status says no error
// escaped a handler.

import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { ErrorCode } from '../../src/protocol/errors.js';
import { decode, encode } from '../../src/protocol/codec.js';
import { crc32c } from '../../src/protocol/crc32c.js';
import { authProof } from '../../src/protocol/handshake.js';
import { HARD_LIMITS } from '../../src/protocol/limits.js';
import { HEADER_BYTES, PROTOCOL_VERSION, type Message } from '../../src/protocol/messages.js';
import { RawWs } from '../unit/transport-helpers.js';
import { makePairFiles, runCli, startMirroredPair, stopPair, waitUntil, type PairFiles, type Proc } from './helpers.js';

const SECRET = 'integration-peer-secret-0123456789';
const HEAD = { epoch: 0, sender: 0, flags: 0 } as const;

let files: PairFiles;
let a: Proc;
let b: Proc;
let pairId: string;
const raws: RawWs[] = [];

beforeAll(async () => {
  // Long enough names get in for the echo to overflow a string field.
  files = await makePairFiles({ limits: { stringBytesMax: HARD_LIMITS.stringBytesMax } });
  pairId = files.configOf('A').pairId as string;
  [a, b] = await startMirroredPair(files);
}, 60_000);

afterAll(async () => {
  for (const raw of raws.splice(0)) raw.terminate();
  await stopPair([a, b], files);
}, 60_000);

/** Fixed bytes that are no frame (the magic is wrong), the same every run. */
function garbage(bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (seed * 131 + i * 29 + ((i * i) >> 3)) & 0xff;
  return b;
}

async function open(port: number): Promise<RawWs> {
  const raw = new RawWs(port);
  raws.push(raw);
  await raw.opened;
  return raw;
}

async function authenticatedClient(port: number): Promise<RawWs> {
  const raw = await open(port);
  raw.send({ kind: 'CLIENT_HELLO', requestId: 1, ...HEAD, protocolVersion: PROTOCOL_VERSION, token: files.token, clientName: 'hostile' });
  expect((await raw.nth(1)).kind).toBe('CLIENT_HELLO_REPLY');
  return raw;
}

/** The frame with its body's length and both CRCs made right again after the body was edited. */
function reseal(frame: Buffer): Buffer {
  frame.writeUInt32LE(frame.length - HEADER_BYTES, 20);
  frame.writeUInt32LE(crc32c(frame.subarray(HEADER_BYTES)), 24);
  frame.writeUInt32LE(crc32c(frame.subarray(0, 28)), 28);
  return frame;
}

/** C_ALLOCATE whose policy name is `bytes` bytes of 0xff: no UTF-8 encoder makes that, so it is edited in. */
function allocateWithInvalidPolicy(requestId: number, bytes: number): Buffer {
  const marker = 'q'.repeat(bytes);
  const frame = encode({ kind: 'C_ALLOCATE', requestId, ...HEAD, name: 'hostile', policy: marker, sizeBytes: 4096, keyed: false });
  const at = frame.indexOf(Buffer.from(marker, 'utf8'));
  expect(at).toBeGreaterThan(0);
  frame.fill(0xff, at, at + bytes);
  return reseal(frame);
}

async function escapedErrors(cfg: string): Promise<number | undefined> {
  const r = await runCli(['status', '--config', cfg, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { escapedErrors?: number }).escapedErrors;
}

async function mirrored(cfg: string): Promise<boolean> {
  const r = await runCli(['status', '--config', cfg, '--json']);
  return r.code === 0 && (JSON.parse(r.stdout) as { role: string }).role === 'mirrored';
}

/** Dials `port` as partner A would, with the pair's secret; resolves once authenticated. */
async function authenticatedPeer(port: number): Promise<RawWs> {
  const raw = await open(port);
  const nonce = randomBytes(32);
  raw.send({ kind: 'HELLO', requestId: 0, epoch: 0, sender: 1, flags: 0, protocolVersion: PROTOCOL_VERSION, pairId, controllerId: 1, nonce, pid: 0 });
  const hello = await raw.nth(1);
  if (hello.kind !== 'HELLO_REPLY') throw new Error(`expected HELLO_REPLY, got ${hello.kind}`);
  raw.send({ kind: 'AUTH', requestId: 0, epoch: 0, sender: 1, flags: 0, proof: authProof(SECRET, pairId, 1, 2, nonce, hello.nonce) });
  expect((await raw.nth(2)).kind).toBe('AUTH_REPLY');
  return raw;
}

async function writeAndRead(port: number, name: string): Promise<void> {
  const client = await PagepairClient.connect({ host: '127.0.0.1', port, token: files.token });
  try {
    const alloc = await client.allocate(name, 64 * 1024);
    const data = garbage(3 * 4096 + 17, name.length);
    await client.write(alloc.guid, 100, data);
    expect((await client.read(alloc.guid, 100, data.length)).equals(data)).toBe(true);
  } finally {
    await client.close();
  }
}

/** A serves a client that writes and reads back (allocation `name`), and no error escaped a handler there. */
async function stillServesA(name: string): Promise<void> {
  await writeAndRead(files.ports.aClient, name);
  expect(await escapedErrors(files.a)).toBe(0);
}

describe('hostile input to a real pair', () => {
  it('answers an allocate whose policy name is too long to echo, and goes on serving', async () => {
    const raw = await authenticatedClient(files.ports.aClient);
    // Valid UTF-8: the echo is the name plus the rest of the sentence.
    raw.send({ kind: 'C_ALLOCATE', requestId: 2, ...HEAD, name: 'hostile', policy: 'p'.repeat(HARD_LIMITS.stringBytesMax), sizeBytes: 4096, keyed: false });
    // Invalid UTF-8: each byte comes back as a 3-byte U+FFFD.
    raw.sendBytes(allocateWithInvalidPolicy(3, 400));
    const first = await raw.nth(2, 10_000);
    const second = await raw.nth(3, 10_000);
    expect(first).toMatchObject({ kind: 'ERROR', requestId: 2, code: ErrorCode.POLICY_UNKNOWN });
    expect(second).toMatchObject({ kind: 'ERROR', requestId: 3, code: ErrorCode.POLICY_UNKNOWN });
    expect(a.child.exitCode).toBeNull();
    await stillServesA('after-long-policy');
  }, 60_000);

  it('refuses malformed frames on the client port, connection by connection', async () => {
    const junk = await open(files.ports.aClient);
    junk.sendBytes(garbage(64, 1));
    expect(await junk.closed).toBe(1002);

    const text = await open(files.ports.aClient);
    text.sendBytes('not a frame', false);
    expect(await text.closed).toBe(1003);

    // After authentication: a frame whose header checks out but whose body does not.
    const raw = await authenticatedClient(files.ports.aClient);
    const frame = encode({ kind: 'C_ALLOCATE', requestId: 4, ...HEAD, name: 'x', policy: 'default', sizeBytes: 4096, keyed: false });
    const bad = reseal(Buffer.concat([frame.subarray(0, HEADER_BYTES), Buffer.from([0xff, 0xff, 0xff])]));
    raw.sendBytes(bad);
    const reply = await raw.nth(2);
    expect(reply.kind).toBe('ERROR');
    // A truncated frame cannot be trusted at all: the connection is closed.
    raw.sendBytes(frame.subarray(0, HEADER_BYTES - 3));
    expect(await raw.closed).toBe(1002);

    await stillServesA('after-malformed');
  }, 60_000);

  it('refuses garbage on the peer port before authentication, and after it, and the pair mirrors again', async () => {
    const junk = await open(files.ports.bPeer);
    junk.sendBytes(garbage(100, 2));
    await junk.closed;
    const early = await open(files.ports.bPeer);
    early.send({ kind: 'AUTH', requestId: 0, epoch: 0, sender: 1, flags: 0, proof: Buffer.alloc(32, 7) } as Message);
    await early.closed;

    // Authenticated as A (it replaces A's link for a moment), then garbage.
    const peer = await authenticatedPeer(files.ports.bPeer);
    peer.sendBytes(garbage(200, 3));
    await peer.closed;
    for (const byte of [0x00, 0x41]) {
      const again = await authenticatedPeer(files.ports.bPeer);
      const frame = encode({ kind: 'HELLO', requestId: 0, epoch: 0, sender: 1, flags: 0, protocolVersion: PROTOCOL_VERSION, pairId, controllerId: 1, nonce: randomBytes(32), pid: 1 });
      again.sendBytes(reseal(Buffer.concat([frame.subarray(0, HEADER_BYTES), Buffer.alloc(5, byte)])));
      await again.closed;
      // Whatever it answered decodes: the ERROR is well-formed.
      for (const m of again.undecodable) expect(() => decode(m, HARD_LIMITS)).not.toThrow();
    }

    await waitUntil(async () => (await mirrored(files.a)) && (await mirrored(files.b)), 30_000, 'A and B mirrored again');
    expect(a.child.exitCode).toBeNull();
    expect(b.child.exitCode).toBeNull();
    await writeAndRead(files.ports.bClient, 'after-peer-garbage-b');
    await writeAndRead(files.ports.aClient, 'after-peer-garbage-a');
    expect(await escapedErrors(files.a)).toBe(0);
    expect(await escapedErrors(files.b)).toBe(0);
  }, 90_000);
});
