// Online verify (C_VERIFY): both copies of each page in a range compared,
// ours with the partner's (READ_HEADER) and, where only one side caches a
// page, with the store's; verify.ts judges. Also the test hook that makes
// our copy differ on purpose.

import { crc32c } from '../protocol/crc32c.js';
import { Role, type CTestCorrupt, type CVerifyReport, type PageHeaderInfo, type VerifiedPage } from '../protocol/messages.js';
import { PagepairError } from '../protocol/errors.js';
import type { AllocState } from './allocation.js';
import { listDifferences, pageHeader, sameCopy, storeDecides, type StoreHeader } from './verify.js';
import { hex } from './shared.js';
import type { Core } from './context.js';
import { wait, type Future, type Task } from './tasks.js';

/** Store reads one verify request has in flight at most. */
export const VERIFY_STORE_READS_MAX = 64;

/** What C_VERIFY answers: pages compared, and those whose copies differ or could not be judged. */
export interface VerifyResult {
  pagesChecked: number;
  pages: VerifiedPage[];
}

export class Verifier {
  /** The last verify run reported (C_VERIFY_REPORT). */
  lastVerify: { atMs: number; pagesChecked: number; mismatches: number; repaired: number; unsettled: number } | null = null;

  constructor(private readonly c: Core) {}

  /**
   * Compares our copy of each page in the range with the partner's and, where
   * only one side caches a page, with the store's. Our headers are taken as
   * the partner's READ_HEADER reply is handled: every frame the partner sent
   * before its answer has been handled by then, and every frame we sent after
   * asking reaches it after it answered. So a page that changed here between
   * asking and the answer, or has a mirrored write of ours unanswered, is the
   * only kind whose two headers may straddle a write: it is listed as busy.
   */
  *verifyPages(guid: string, firstPage: number, pageCount: number): Task<VerifyResult> {
    const alloc = this.c.allocator.lookup(guid);
    this.c.allocator.checkPageRange(alloc, firstPage, pageCount);
    if (pageCount > this.c.cfg.limits.headersPerMessageMax) {
      throw new PagepairError('LIMIT_EXCEEDED', `verify of ${pageCount} pages is over headersPerMessageMax (${this.c.cfg.limits.headersPerMessageMax})`, 'pageCount');
    }
    if (this.c.membership.role !== Role.MIRRORED || !this.c.membership.linkUp) this.c.membership.refuse('verifies');
    const headers = (): PageHeaderInfo[] => {
      const out: PageHeaderInfo[] = [];
      for (let p = firstPage; p < firstPage + pageCount; p++) out.push(pageHeader(alloc.pages.get(p), p));
      return out;
    };
    const asked = headers();
    let ours: PageHeaderInfo[] = [];
    const busy = new Uint8Array(pageCount);
    const reply = yield* wait(this.c.requests.request({ kind: 'READ_HEADER', guid, firstPage, pageCount }, 0, () => {
      ours = headers();
      for (let i = 0; i < pageCount; i++) {
        if (!sameCopy(asked[i]!, ours[i]!) || (alloc.pages.get(firstPage + i)?.mirrorPending ?? 0) > 0) busy[i] = 1;
      }
    }));
    if (reply.kind !== 'READ_HEADER_REPLY' || reply.headers.length !== pageCount) {
      throw new PagepairError('BAD_FIELD', `partner answered READ_HEADER of ${pageCount} pages with ${reply.kind === 'READ_HEADER_REPLY' ? reply.headers.length : reply.kind}`);
    }
    const theirs = reply.headers;
    const needStore: number[] = [];
    for (let i = 0; i < pageCount; i++) if (busy[i] === 0 && storeDecides(ours[i]!, theirs[i]!)) needStore.push(i);
    const stores = yield* this.storeHeaders(alloc, firstPage, needStore, ours, busy);
    if (alloc.released) throw this.c.allocator.goneError(alloc);
    const pages = listDifferences({ firstPage, selfId: this.c.selfId, ours, theirs, busy, stores, owner: alloc.owner });
    return { pagesChecked: pageCount, pages };
  }

  /**
   * The store's header of each page `firstPage + i` for i in `which` (null
   * where it cannot be read), a bounded number of reads at a time. A page of
   * ours that changed meanwhile had a write come through: it becomes busy.
   */
  private *storeHeaders(alloc: AllocState, firstPage: number, which: number[], ours: PageHeaderInfo[], busy: Uint8Array): Task<Map<number, StoreHeader | null>> {
    const stores = new Map<number, StoreHeader | null>();
    for (let at = 0; at < which.length; at += VERIFY_STORE_READS_MAX) {
      const reads: Future<void>[] = which.slice(at, at + VERIFY_STORE_READS_MAX).map((i) => this.c.tasks.spawn(this.storeHeader(alloc, firstPage, i, ours, busy, stores)));
      yield* wait(this.c.tasks.all(reads));
    }
    return stores;
  }

  private *storeHeader(alloc: AllocState, firstPage: number, i: number, ours: PageHeaderInfo[], busy: Uint8Array, stores: Map<number, StoreHeader | null>): Task<void> {
    const p = firstPage + i;
    try {
      const sp = yield* wait(this.c.io.run({ kind: 'readPage', loc: this.c.allocator.location(alloc), page: p }));
      stores.set(i, { version: sp.header.version, crc: sp.header.crc });
    } catch (err) {
      this.c.env.log.warn({ guid: alloc.record.guid, page: p, err: String(err) }, 'verify could not read the store\'s copy');
      stores.set(i, null);
    }
    if (!sameCopy(ours[i]!, pageHeader(alloc.pages.get(p), p))) busy[i] = 1;
  }

  /** What the last verify run found (C_VERIFY_REPORT), for status. */
  recordVerify(r: Pick<CVerifyReport, 'pagesChecked' | 'mismatches' | 'repaired' | 'unsettled'>): void {
    this.lastVerify = { atMs: this.c.env.nowMs(), pagesChecked: r.pagesChecked, mismatches: r.mismatches, repaired: r.repaired, unsettled: r.unsettled };
    this.c.env.log.info({ ...this.lastVerify }, 'verify run reported');
  }

  /**
   * Test hook: our copy of one page becomes `data`, at the version it has,
   * and the partner is not told, so the two copies differ on purpose. A page
   * not cached is staged first. For tests only.
   */
  *testCorruptPage(guid: string, page: number, data: Buffer): Task<{ version: number; crc: number }> {
    const alloc = this.c.allocator.lookup(guid);
    this.c.allocator.checkPageRange(alloc, page, 1);
    if (data.length !== alloc.record.pageSizeBytes) {
      throw new PagepairError('BAD_FIELD', `test corruption must be one whole page (${alloc.record.pageSizeBytes} bytes), got ${data.length}`, 'data');
    }
    const cp = yield* this.c.reads.readablePage(alloc, page);
    const crc = crc32c(data);
    this.c.cache.replaceContents(cp, Buffer.from(data), crc);
    this.c.env.log.warn({ guid, page, version: cp.version, crc: hex(crc) }, 'test hook: this copy of the page was overwritten, unmirrored');
    return { version: cp.version, crc };
  }

  *clientTestCorrupt(msg: CTestCorrupt): Task<{ version: number; crc: number }> {
    if (this.c.cfg.testHooks !== true) {
      throw new PagepairError('NOT_ALLOWED', 'C_TEST_CORRUPT is a test hook: this controller\'s configuration does not set testHooks: true');
    }
    return yield* this.testCorruptPage(msg.guid, msg.page, msg.data);
  }
}
