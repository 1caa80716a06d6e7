// What `pagepair verify` and `pagepair status` print of a verify run.

import { describe, expect, it } from 'vitest';
import { copiesText } from '../../src/cli/status.js';
import { formatResult } from '../../src/cli/verify.js';
import { PageState, VerifyVerdict } from '../../src/protocol/messages.js';

describe('verify output', () => {
  it('status says when the copies were last verified and what was found', () => {
    expect(copiesText(null)).toMatch(/^never verified/);
    expect(copiesText(undefined)).toMatch(/^never verified/);
    expect(copiesText({ msAgo: 12_400, pagesChecked: 16384, mismatches: 0, repaired: 0, unsettled: 0 })).toBe('verified 16384 pages 12s ago, 0 differ');
    expect(copiesText({ msAgo: 500, pagesChecked: 10, mismatches: 3, repaired: 2, unsettled: 1 })).toBe('verified 10 pages 500 ms ago, 3 differed, 2 repaired, 1 differ, 1 busy page not judged');
  });

  it('names each differing page with both copies, the store\'s, the owner and the first differing byte', () => {
    const text = formatResult(
      {
        volumes: 1,
        released: [],
        pagesTotal: 64,
        pagesChecked: 64,
        elapsedMs: 1234,
        mismatches: [
          {
            volume: 'vol',
            guid: 'g',
            page: 7,
            header: { page: 7, verdict: VerifyVerdict.MISMATCH, owner: 2, aVersion: 3, aCrc: 0xab, aState: PageState.CLEAN, bVersion: 0, bCrc: 0, bState: PageState.ABSENT, storeVersion: 3, storeCrc: 0xcd },
            firstDifferentByte: 17,
            good: { from: 2, why: 'the store\'s' },
            repaired: true,
          },
        ],
        unsettled: [{ volume: 'vol', guid: 'g', page: 9 }],
        repaired: 1,
        remaining: 0,
      },
      true,
    );
    expect(text).toContain('pages whose copies differ (1):');
    expect(text).toContain('vol page 7: A v3 crc 000000ab clean; B not cached; store v3 crc 000000cd; owner B; first differing byte 17');
    expect(text).toContain("repair: kept B's copy (the store's): repaired");
    expect(text).toContain('pages busy at every look, not judged (1): vol:9');
    expect(text).toContain('summary: 64 pages checked in 1.2 s; 1 differ, 1 repaired, 0 remain; 1 busy, not judged');
  });
});
