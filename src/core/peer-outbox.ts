// Everything sent to the partner goes through one ordered outbox, so a lock
// grant or a pointer release can never overtake the pages sent before it.
// Consecutive page writes are packed into WRITE_PAGE frames (bounded by the
// page-count and frame-size limits): one round trip carries many pages.

import type { Message, PageWrite, WritePage } from '../protocol/messages.js';
import type { Limits } from '../protocol/limits.js';
import { HEADER_BYTES } from '../protocol/messages.js';

/** One caller's pages: settled when every frame carrying them is answered. */
export interface MirrorOp {
  remaining: number;
  resolve(): void;
  reject(err: Error): void;
  settled: boolean;
}

interface PageItem {
  page: PageWrite;
  op: MirrorOp | null;
}

type Item = { msg: Message } | PageItem;

/** Bytes one page takes inside a WRITE_PAGE body (see docs/protocol.md). */
const PAGE_ENTRY_OVERHEAD = 16 + 4 + 8 + 4 + 4 + 1 + 4 + 4 + 4 + 4 + 4;

export class PeerOutbox {
  private items: Item[] = [];

  constructor(
    private readonly limits: Limits,
    private readonly onFirstItem: () => void,
  ) {}

  get length(): number {
    return this.items.length;
  }

  push(msg: Message): void {
    if (this.items.length === 0) this.onFirstItem();
    this.items.push({ msg });
  }

  pushPage(page: PageWrite, op: MirrorOp | null): void {
    if (this.items.length === 0) this.onFirstItem();
    this.items.push({ page, op });
  }

  /**
   * Hand out the queued messages in order. WRITE_PAGE frames come with the
   * ops whose pages they carry; `frame` fills in the header fields.
   */
  drain(frame: (pages: PageWrite[]) => WritePage): { msg: Message; ops: MirrorOp[] | null }[] {
    const out: { msg: Message; ops: MirrorOp[] | null }[] = [];
    const items = this.items;
    this.items = [];
    const bodyBytesMax = this.limits.frameBytesMax - HEADER_BYTES - 2;
    let pages: PageWrite[] = [];
    let ops = new Set<MirrorOp>();
    let bytes = 0;
    const close = (): void => {
      if (pages.length === 0) return;
      for (const op of ops) op.remaining++;
      out.push({ msg: frame(pages), ops: [...ops] });
      pages = [];
      ops = new Set();
      bytes = 0;
    };
    for (const item of items) {
      if ('msg' in item) {
        close();
        out.push({ msg: item.msg, ops: null });
        continue;
      }
      const size = PAGE_ENTRY_OVERHEAD + item.page.data.length;
      if (pages.length >= this.limits.pagesPerMessageMax || bytes + size > bodyBytesMax) close();
      pages.push(item.page);
      bytes += size;
      if (item.op !== null) ops.add(item.op);
    }
    close();
    return out;
  }

  /** Fail everything queued (the link went down). */
  failAll(err: Error): void {
    const items = this.items;
    this.items = [];
    for (const item of items) if ('page' in item && item.op !== null) settleOp(item.op, err);
  }
}

export function newMirrorOp(resolve: () => void, reject: (err: Error) => void): MirrorOp {
  return { remaining: 0, resolve, reject, settled: false };
}

/** Settle an op: an error settles it at once; success when its last frame is answered. */
export function settleOp(op: MirrorOp, err: Error | null): void {
  if (op.settled) return;
  if (err !== null) {
    op.settled = true;
    op.reject(err);
    return;
  }
  if (--op.remaining <= 0) {
    op.settled = true;
    op.resolve();
  }
}
