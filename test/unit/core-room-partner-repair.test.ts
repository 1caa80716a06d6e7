// A survivor over a pool asks the store to make the pool agree again where
// the partner may have been writing when it died: the metadata and the
// stripes of the pages the partner owned and had not yet reported clean.

import { describe, expect, it } from 'vitest';
import { crc32c } from '../../src/protocol/crc32c.js';
import { LockOp, Role, type PageWrite } from '../../src/protocol/messages.js';
import type { IoOp } from '../../src/core/io.js';
import { allocate, joinedCore, PAGE, type CoreFixture, type HandPartner } from './core-fixture.js';

function page(guid: string, p: number, fill: number): PageWrite {
  const data = Buffer.alloc(PAGE, fill);
  return { guid, page: p, version: 1, crc: crc32c(data), epoch: 1, pageFlags: 0, pointerId: 0, clientId: 0, clientSeq: 0, ownerGen: 1, data };
}

/** Controller 1, joined; the partner owns pages 2..5 of an 8-page allocation and mirrored dirty pages 2, 3 and 5. */
async function partnerWroteAndDied(pooled: boolean): Promise<{ f: CoreFixture; partner: HandPartner; guid: string; ops: IoOp[] }> {
  const { f, partner } = await joinedCore();
  (f.core.cfg.store as { repairsAfterWriter: boolean }).repairsAfterWriter = pooled;
  const guid = await allocate(f, 'v', 8, partner);
  partner.send({ kind: 'LOCK_REQUEST', guid, firstPage: 2, pageCount: 4, op: LockOp.TAKE, ownerGen: 0 });
  partner.send({ kind: 'WRITE_PAGE', pages: [page(guid, 2, 1), page(guid, 3, 2), page(guid, 5, 3)] });
  f.flush();
  const ops: IoOp[] = [];
  const start = f.core.env.startIo;
  f.core.env.startIo = (id, op) => {
    ops.push(op);
    start(id, op);
  };
  f.core.peerDown('partner killed');
  for (let t = 0; t <= 2000 && f.core.currentRole !== Role.ALONE; t += 50) {
    f.setNow(t);
    f.core.tick();
    await f.settleIo();
  }
  expect(f.core.currentRole).toBe(Role.ALONE);
  return { f, partner, guid, ops };
}

describe('repair after the partner died', () => {
  it('over a pool, the takeover asks for the stripes of the pages the partner had dirty, before it writes them', async () => {
    const { f, guid, ops } = await partnerWroteAndDied(true);
    const repairs = ops.filter((o) => o.kind === 'repairAfterWriter');
    expect(repairs).toEqual([{ kind: 'repairAfterWriter', pages: [expect.objectContaining({ first: 2, count: 2 }), expect.objectContaining({ first: 5, count: 1 })] }]);
    expect(repairs[0]!.pages[0]!.loc.guid).toBe(guid);
    // Asked before the survivor destaged the partner's pages.
    const firstWrite = ops.findIndex((o) => o.kind === 'writePage');
    expect(ops.findIndex((o) => o.kind === 'repairAfterWriter')).toBeLessThan(firstWrite < 0 ? Infinity : firstWrite);
    expect(f.core.counters.partnerRepairs).toBe(1);
    expect(f.log.some((l) => l.msg.includes('the pool agrees again'))).toBe(true);
  });

  it('over a plain store nothing is asked', async () => {
    const { f, ops } = await partnerWroteAndDied(false);
    expect(ops.some((o) => o.kind === 'repairAfterWriter')).toBe(false);
    expect(f.core.counters.partnerRepairs).toBe(0);
  });
});
