// The core and the protocol stay pure (DESIGN.md section 6): no sockets,
// files, timers, logger, wall clock or ambient randomness. That is what lets
// the simulator run both controllers from a seed.

import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = new URL('../../src/', import.meta.url).pathname;
const FORBIDDEN_IMPORTS = /from\s+['"](ws|pino|uuid|lru-cache\/.*|(node:)?(fs|fs\/promises|net|http|https|dgram|child_process|timers|timers\/promises|worker_threads|perf_hooks|os))['"]/;
const FORBIDDEN_CALLS = /\b(Date\.now|new Date|Math\.random|setTimeout|setInterval|setImmediate|queueMicrotask|performance\.now|process\.)/;

function sources(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

describe('pure layers', () => {
  for (const dir of ['core', 'protocol']) {
    it(`src/${dir} imports no I/O, timers or logger and reads no clock`, () => {
      const files = sources(dir);
      expect(files.length).toBeGreaterThan(3);
      for (const f of files) {
        const text = readFileSync(join(ROOT, f), 'utf8')
          .split('\n')
          .filter((l) => !/^\s*(\/\/|\*)/.test(l))
          .join('\n');
        expect(FORBIDDEN_IMPORTS.exec(text)?.[0], `${f} imports I/O`).toBeUndefined();
        expect(FORBIDDEN_CALLS.exec(text)?.[0], `${f} uses the clock, timers or process`).toBeUndefined();
      }
    });
  }
});
