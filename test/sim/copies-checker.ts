// Are the two controllers' copies of every page the same? DESIGN.md 4.4: once
// the pair is quiet and mirrored, every page reads the same bytes through
// either controller, dirty, clean in a cache, or only in the store. A digest
// of dirty pages cannot show it (two different copies can both be clean), so
// this reads every page of every allocation through A and through B, as a
// client does (through the core: cached copies and store copies alike), and
// compares the bytes page by page.
//
// Before reading, it also looks at what each cache holds: a page cached on
// both sides must carry one version and one CRC, and no page may be owned by
// both controllers. These look into the cores' private state (read only), the
// state a READ_HEADER answers from, so a failure can say which versions and
// CRCs the two copies carry and whether both sides took the page for theirs.
//
// Use it when the pair is quiet (Harness.quiet()) and mirrored; the reads it
// makes stage pages and so change the caches, never the contents.

import type { ControllerCore } from '../../src/core/controller.js';
import { Role } from '../../src/protocol/messages.js';
import type { Harness, NodeName } from './harness.js';
import type { SimClient } from './sim-client.js';

/** Bytes of one client read, at most: the copies are compared in reads this long. */
const READ_BYTES_MAX = 16 * 1024;

export interface CopyMismatch {
  kind: 'bytes' | 'header' | 'owners';
  guid: string;
  name: string;
  page: number;
  detail: string;
}

export interface CopiesReport {
  allocations: number;
  pagesCompared: number;
  /** Pages cached on both sides whose version and CRC were compared. */
  headersCompared: number;
  mismatches: CopyMismatch[];
}

interface PageHeaderView {
  version: number;
  crc: number;
  dirty: boolean;
}

/** Cached pages of one allocation: page -> version, CRC, dirty. Empty when the allocation is unknown to the core. */
export function cachedHeaders(core: ControllerCore, guid: string): Map<number, PageHeaderView> {
  const out = new Map<number, PageHeaderView>();
  const alloc = core.allocator.allocs.get(guid);
  if (alloc === undefined) return out;
  for (const [page, cp] of alloc.pages) out.set(page, { version: cp.version, crc: cp.crc, dirty: cp.dirty });
  return out;
}

/** Which controller id each page's owner is, as one core sees it; null when the allocation is unknown. */
export function ownerView(core: ControllerCore, guid: string): Uint8Array | null {
  return core.allocator.allocs.get(guid)?.owner ?? null;
}

function hex(crc: number): string {
  return `0x${(crc >>> 0).toString(16).padStart(8, '0')}`;
}

function headerText(h: PageHeaderView | undefined): string {
  return h === undefined ? 'not cached' : `v${h.version} crc ${hex(h.crc)} ${h.dirty ? 'dirty' : 'clean'}`;
}

/** The first byte where two buffers differ, or -1. */
function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/**
 * Compares both controllers' copies of every page of every allocation.
 * Needs both controllers alive, unpaused and mirrored; runs the simulation
 * while its reads are answered.
 */
export async function checkCopies(h: Harness): Promise<CopiesReport> {
  for (const n of h.nodes) {
    if (!n.alive || n.paused || n.core.currentRole !== Role.MIRRORED) {
      throw new Error(`copies checker: ${n.name} is not serving mirrored (${h.incarnations()}, role ${n.core.status().role})`);
    }
  }
  const clients: Record<NodeName, SimClient> = { A: h.client('A'), B: h.client('B') };
  const listA = await h.run(clients.A.list(), 'copies checker: list through A');
  const listB = await h.run(clients.B.list(), 'copies checker: list through B');
  const report: CopiesReport = { allocations: listA.length, pagesCompared: 0, headersCompared: 0, mismatches: [] };
  const key = (a: { guid: string; pageCount: number; pageSizeBytes: number; name: string }): string => `${a.guid} ${a.name} ${a.pageCount}x${a.pageSizeBytes}`;
  const tableA = listA.map(key).sort();
  const tableB = listB.map(key).sort();
  if (tableA.join('\n') !== tableB.join('\n')) {
    report.mismatches.push({ kind: 'bytes', guid: '', name: '', page: -1, detail: `the allocation tables differ: A lists [${tableA.join('; ')}], B lists [${tableB.join('; ')}]` });
  }

  for (const al of listA) {
    // What the caches hold, before the reads below stage anything.
    const ha = cachedHeaders(h.a.core, al.guid);
    const hb = cachedHeaders(h.b.core, al.guid);
    const oa = ownerView(h.a.core, al.guid);
    const ob = ownerView(h.b.core, al.guid);
    for (let p = 0; p < al.pageCount; p++) {
      const a = ha.get(p);
      const b = hb.get(p);
      if (a !== undefined && b !== undefined) {
        report.headersCompared++;
        if (a.version !== b.version || a.crc !== b.crc) {
          report.mismatches.push({ kind: 'header', guid: al.guid, name: al.name, page: p, detail: `cached copies differ: A ${headerText(a)}, B ${headerText(b)}` });
        }
      }
      if (oa !== null && ob !== null && oa[p] === h.a.id && ob[p] === h.b.id) {
        report.mismatches.push({
          kind: 'owners',
          guid: al.guid,
          name: al.name,
          page: p,
          detail: `both controllers own the page (A: ${headerText(a)}, B: ${headerText(b)})`,
        });
      }
    }

    const pagesPerRead = Math.max(1, Math.floor(READ_BYTES_MAX / al.pageSizeBytes));
    for (let first = 0; first < al.pageCount; first += pagesPerRead) {
      const count = Math.min(pagesPerRead, al.pageCount - first);
      const offset = first * al.pageSizeBytes;
      const length = count * al.pageSizeBytes;
      const [viaA, viaB] = await h.run(
        Promise.all([clients.A.read(al.guid, offset, length), clients.B.read(al.guid, offset, length)]),
        `copies checker: pages ${first}..${first + count - 1} of ${al.name}`,
      );
      for (let i = 0; i < count; i++) {
        const p = first + i;
        const pa = viaA.subarray(i * al.pageSizeBytes, (i + 1) * al.pageSizeBytes);
        const pb = viaB.subarray(i * al.pageSizeBytes, (i + 1) * al.pageSizeBytes);
        report.pagesCompared++;
        const at = firstDifference(pa, pb);
        if (at < 0) continue;
        report.mismatches.push({
          kind: 'bytes',
          guid: al.guid,
          name: al.name,
          page: p,
          detail:
            `A and B read different bytes (first at byte ${at} of the page: A ${pa[at]}, B ${pb[at]}); ` +
            `before the reads A held ${headerText(ha.get(p))}, B held ${headerText(hb.get(p))}` +
            (oa !== null && ob !== null ? `; owner as A sees it ${oa[p]}, as B sees it ${ob[p]}` : ''),
        });
      }
    }
  }
  return report;
}

/** One line per mismatch (at most `max`), for a failure message that names the seed. */
export function describeMismatches(report: CopiesReport, max = 10): string {
  const lines = report.mismatches.slice(0, max).map((m) => (m.page < 0 ? `  ${m.detail}` : `  ${m.kind}: page ${m.page} of "${m.name}" (${m.guid}): ${m.detail}`));
  const more = report.mismatches.length > max ? `\n  ... and ${report.mismatches.length - max} more` : '';
  const byKind = (k: CopyMismatch['kind']): number => report.mismatches.filter((m) => m.kind === k).length;
  return (
    `${report.mismatches.length} mismatches (bytes ${byKind('bytes')}, headers ${byKind('header')}, owned by both ${byKind('owners')}) ` +
    `over ${report.pagesCompared} pages of ${report.allocations} allocations:\n${lines.join('\n')}${more}`
  );
}
