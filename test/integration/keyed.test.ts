// Keyed allocations between two real controller processes: the key made by
// A opens the allocation through B, nothing else does, and B keeps refusing
// after A is killed with SIGKILL.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { isPagepairError } from '../../src/protocol/errors.js';
import { makePairFiles, startMirroredPair, stopPair, waitUntil, type PairFiles, type Proc } from './helpers.js';

let files: PairFiles;
let a: Proc;
let b: Proc;
const open: PagepairClient[] = [];

async function connect(id: 'A' | 'B'): Promise<PagepairClient> {
  const c = await PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? files.ports.aClient : files.ports.bClient, token: files.token });
  open.push(c);
  return c;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return isPagepairError(err) ? err.code : String(err);
  }
}

beforeAll(async () => {
  files = await makePairFiles();
  [a, b] = await startMirroredPair(files);
}, 60_000);

afterAll(async () => {
  await Promise.all(open.map((c) => c.close().catch(() => undefined)));
  await stopPair([a, b], files);
}, 60_000);

describe('keyed allocations on a real pair', () => {
  it('opens only to connections with the key, through either controller, and after A is killed', async () => {
    const maker = await connect('A');
    const made = await maker.allocate('it-keyed', 64 * 4096, 'default', { keyed: true });
    expect(made.key).toMatch(/^[A-Za-z0-9_-]{22}$/);
    const data = Buffer.alloc(3 * 4096, 0x4b);
    await maker.write(made.guid, 100, data); // the maker is unlocked by allocate

    const stranger = await connect('B');
    expect(await codeOf(stranger.read(made.guid, 100, 10))).toBe('ACCESS_DENIED');
    expect(await codeOf(stranger.write(made.guid, 0, Buffer.from('x')))).toBe('ACCESS_DENIED');
    const wrong = Buffer.from(made.key!, 'base64url');
    wrong[0] = wrong[0]! ^ 1;
    expect(await codeOf(stranger.unlock(made.guid, wrong))).toBe('ACCESS_DENIED');
    expect((await stranger.list()).find((e) => e.guid === made.guid)).toMatchObject({ keyed: true });
    // The controller serves on, on the same connection.
    expect(await stranger.status()).toBeTruthy();

    const friend = await connect('B');
    await friend.unlock(made.guid, made.key!);
    expect((await friend.read(made.guid, 100, data.length)).equals(data)).toBe(true);

    // Neither the key nor its base64url text is in either controller's log.
    for (const p of [a, b]) expect(p.lines.some((l) => l.includes(made.key!) || l.includes(Buffer.from(made.key!, 'base64url').toString('hex')))).toBe(false);

    await a.stop('SIGKILL');
    await waitUntil(async () => ((await friend.status()) as { role?: string }).role === 'alone', 20_000, 'B alone');
    const late = await connect('B');
    expect(await codeOf(late.read(made.guid, 100, 10))).toBe('ACCESS_DENIED');
    await late.unlock(made.guid, made.key!);
    expect((await late.read(made.guid, 100, data.length)).equals(data)).toBe(true);
    await friend.write(made.guid, 0, Buffer.from('after'));
    expect((await late.read(made.guid, 0, 5)).toString()).toBe('after');
  });
});
