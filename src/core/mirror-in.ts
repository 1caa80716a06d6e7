// Mirrored pages arriving (WRITE_PAGE): the partner's writes applied to our
// copy, checked first against the ownership rules (a page arrives only from
// its owner, under the generation both know, never older than ours), plus
// "clean at v", pointer shadows, and the tags of client writes it applied.

import { PageFlag, PointerMode, Role, type PageWrite, type WritePage } from '../protocol/messages.js';
import { PagepairError } from '../protocol/errors.js';
import type { AllocState } from './allocation.js';
import type { CachePage } from './page-cache.js';
import { copyInto, hex } from './shared.js';
import { tagKey } from './retry-tags.js';
import type { Core } from './context.js';

export class MirrorIn {
  constructor(private readonly c: Core) {}

  onWritePage(req: WritePage): void {
    // Check the whole frame first: it is applied entirely or not at all.
    const strict = this.ownershipSettled();
    for (const pw of req.pages) {
      const alloc = this.c.allocator.allocs.get(pw.guid);
      if (alloc === undefined) continue; // released meanwhile: nothing to keep
      this.c.allocator.checkPageRange(alloc, pw.page, 1);
      if ((pw.pageFlags & (PageFlag.CLEAN_AT | PageFlag.TAG_ONLY)) === 0 && pw.data.length !== alloc.record.pageSizeBytes) {
        throw new PagepairError('BAD_FIELD', `WRITE_PAGE page ${pw.page} of ${pw.guid} has ${pw.data.length} bytes, page size is ${alloc.record.pageSizeBytes}`, 'data');
      }
      if ((pw.pageFlags & PageFlag.POINTER_PENDING) !== 0) {
        const p = this.c.pointers.open.get(pw.pointerId);
        if (p === undefined || p.mode !== PointerMode.WRITE || p.alloc !== alloc) {
          throw new PagepairError('POINTER_UNKNOWN', `WRITE_PAGE names write pointer ${pw.pointerId}, which is not open here`, 'pointerId');
        }
      }
      if (strict && (pw.pageFlags & (PageFlag.TAG_ONLY | PageFlag.RESYNC)) === 0) {
        const conflict = this.mirrorConflict(alloc, pw);
        if (conflict !== null) {
          // Never acknowledged: the sender's write fails, and it makes the
          // link anew so that a join settles both copies.
          this.c.counters.ownershipConflicts++;
          this.c.env.log.error({ guid: pw.guid, page: pw.page, version: pw.version, ownerGen: pw.ownerGen }, `refused a mirrored page: ${conflict}`);
          throw new PagepairError('OWNERSHIP_CONFLICT', `WRITE_PAGE page ${pw.page} of ${pw.guid}: ${conflict}`, 'pages');
        }
      }
    }
    const now = this.c.env.nowMs();
    for (const pw of req.pages) {
      if ((pw.pageFlags & PageFlag.TAG_ONLY) !== 0) {
        // The partner's memory of client writes it applied, handed over in a join.
        const key = tagKey(pw.clientId, pw.clientSeq);
        if (pw.clientId !== 0 && !this.c.tags.taggedWrites.has(key)) this.c.tags.rememberTag(key, { state: 'held', guid: pw.guid, first: pw.page, count: 1 });
        continue;
      }
      const alloc = this.c.allocator.allocs.get(pw.guid);
      if (alloc === undefined) continue;
      if ((pw.pageFlags & PageFlag.CLEAN_AT) !== 0) {
        const cp = alloc.pages.get(pw.page);
        if (cp !== undefined) {
          if (pw.version > cp.storeVersion) cp.storeVersion = pw.version;
          this.c.cache.markClean(cp, pw.version, pw.crc);
        }
        continue;
      }
      if ((pw.pageFlags & PageFlag.POINTER_PENDING) !== 0) {
        // Keep the page, not the whole frame.
        this.c.pointers.open.get(pw.pointerId)?.shadows.set(pw.page, { version: pw.version, crc: pw.crc, data: Buffer.from(pw.data) });
        continue;
      }
      if (pw.clientId !== 0) {
        // The last page of a client write: the whole write is here now.
        const key = tagKey(pw.clientId, pw.clientSeq);
        // Also over our own attempt still in progress: the partner applied it first.
        if (this.c.tags.taggedWrites.get(key)?.state !== 'done') this.c.tags.rememberTag(key, { state: 'held', guid: pw.guid, first: pw.page, count: 1 });
      }
      const cp = alloc.pages.get(pw.page);
      if (cp !== undefined && cp.version >= pw.version && !this.resyncOverrides(cp, pw)) continue;
      this.c.reads.supersedeStaging(alloc, pw.page);
      // Keep the page, not the whole frame: copied into the page's own buffer
      // when it may be reused, else into a new one.
      const reusable = cp !== undefined ? this.c.cache.reusableData(cp) : null;
      const data = reusable !== null && reusable.length === pw.data.length ? copyInto(reusable, pw.data) : Buffer.from(pw.data);
      this.c.cache.writeDirty(alloc, pw.page, pw.version, pw.crc, pw.epoch, data, now);
      this.c.counters.pagesMirroredIn++;
    }
    this.c.requests.replyPeer(req, { kind: 'WRITE_PAGE_REPLY', count: req.pages.length });
    this.c.waits.wakeProgress();
  }

  /**
   * Whether both sides hold the same view of who owns what: mirrored, with
   * no join running. Only then does every page arrive from its owner under
   * the generation both know; in a join the resync's rules apply.
   */
  private ownershipSettled(): boolean {
    return this.c.cfg.mirroring && this.c.membership.role === Role.MIRRORED && this.c.joining.current === null;
  }

  /**
   * Why a mirrored page breaks the ownership rules, or null. Only the owner
   * writes a page, so it never arrives for a page we own, always under the
   * generation we know, and never at a version we hold with other bytes (nor
   * below what we hold).
   */
  private mirrorConflict(alloc: AllocState, pw: PageWrite): string | null {
    const p = pw.page;
    if (alloc.owner[p] === this.c.selfId) return `the page is ours (ownership generation ${alloc.ownerGen[p]}), the partner wrote it under generation ${pw.ownerGen}`;
    if (pw.ownerGen !== alloc.ownerGen[p]) return `written under ownership generation ${pw.ownerGen}, the page is at generation ${alloc.ownerGen[p]}`;
    if ((pw.pageFlags & PageFlag.POINTER_PENDING) !== 0) return null;
    const cp = alloc.pages.get(p);
    if (cp === undefined) return null;
    if (cp.version === pw.version && cp.crc !== pw.crc) {
      const what = (pw.pageFlags & PageFlag.CLEAN_AT) !== 0 ? 'clean at' : 'written at';
      return `${what} version ${pw.version} with CRC ${hex(pw.crc)}, our copy of that version has CRC ${hex(cp.crc)}`;
    }
    if ((pw.pageFlags & PageFlag.CLEAN_AT) === 0 && cp.version > pw.version) return `version ${pw.version} is older than our ${cp.version}`;
    return null;
  }

  /**
   * A resync page at the version we hold, with other bytes: the copy of the
   * side whose state wins the join is kept on both.
   */
  private resyncOverrides(cp: CachePage, pw: PageWrite): boolean {
    if ((pw.pageFlags & PageFlag.RESYNC) === 0 || cp.version !== pw.version || cp.crc === pw.crc) return false;
    if (this.c.joining.current === null || this.c.joining.current.authoritative !== false) return false;
    this.c.counters.resyncContentConflicts++;
    this.c.env.log.warn({ guid: pw.guid, page: pw.page, version: pw.version }, 'join: the partner holds other bytes at this version; its copy wins');
    return true;
  }
}
