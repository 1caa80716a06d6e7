// Issue 10, the WebSocket client path with real processes: one client on each
// controller writes the same page at the same moment, different bytes; once
// both writes are acknowledged, the page reads the same through A and B, and
// it is one of the two values. Whole pages, parts of a page, and writes that
// span pages and overlap. Then the pair must find no ownership conflict and
// the store, read after a flush, must hold what both read.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import type { CoreStatus } from '../../src/core/controller.js';
import { makePairFiles, seededInts as rng, startMirroredPair, stopPair, type PairFiles, type Proc } from './helpers.js';
import { writeBothAtOnce } from './two-writers.js';

const PAGE = 4096;
const PAGES = 64;

let files: PairFiles;
let procs: [Proc, Proc];

async function connect(id: 'A' | 'B'): Promise<PagepairClient> {
  return PagepairClient.connect({ host: '127.0.0.1', port: id === 'A' ? files.ports.aClient : files.ports.bClient, token: files.token });
}

beforeAll(async () => {
  files = await makePairFiles();
  procs = await startMirroredPair(files);
}, 60_000);

afterAll(() => stopPair(procs, files), 60_000);

describe('two writers, one per controller, on the same pages (WebSocket clients, real processes)', () => {
  const shapes = [
    { name: 'whole pages', rounds: 2000 },
    { name: 'parts of a page', rounds: 1000 },
    { name: 'writes across two or three pages that overlap', rounds: 1000 },
  ] as const;
  for (const [i, shape] of shapes.entries()) {
    it(`${shape.name}: ${shape.rounds} rounds, A and B read the same bytes after every round`, async () => {
      const ca = await connect('A');
      const cb = await connect('B');
      const rand = rng(1000 + i);
      let differing = 0;
      let neither = 0;
      const firstBad: string[] = [];
      try {
        const al = await ca.allocate(`two-writers-ws-${i}`, PAGES * PAGE);
        for (let round = 0; round < shape.rounds; round++) {
          const page = rand(PAGES - 3);
          let offA: number;
          let offB: number;
          let lenA: number;
          let lenB: number;
          if (i === 0) {
            offA = offB = page * PAGE;
            lenA = lenB = PAGE;
          } else if (i === 1) {
            offA = page * PAGE + rand(PAGE / 2);
            offB = page * PAGE + rand(PAGE / 2);
            lenA = 1 + rand(PAGE / 2);
            lenB = 1 + rand(PAGE / 2);
          } else {
            offA = page * PAGE + rand(PAGE);
            offB = page * PAGE + rand(PAGE);
            lenA = PAGE + rand(2 * PAGE);
            lenB = PAGE + rand(2 * PAGE);
          }
          const r = await writeBothAtOnce(ca, cb, al.guid, { offA, lenA, offB, lenB }, round);
          if (!r.same) {
            differing++;
            if (firstBad.length < 3) firstBad.push(`round ${round}: A@${offA}+${lenA}, B@${offB}+${lenB}`);
          }
          if (!r.oneOfTheWrites) neither++;
        }
        expect(differing, `rounds where A and B read different bytes (first: ${firstBad.join('; ')})`).toBe(0);
        expect(neither, 'rounds where the overlap is neither write').toBe(0);
        const [sa, sb] = (await Promise.all([ca.status(), cb.status()])) as CoreStatus[];
        expect(sa!.counters.ownershipConflicts + sb!.counters.ownershipConflicts).toBe(0);
        await ca.release(al.guid);
      } finally {
        await Promise.all([ca.close(), cb.close()]);
      }
    }, 240_000);
  }
});
