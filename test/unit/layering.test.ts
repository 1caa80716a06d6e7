// The layers of src/, held by a test that reads every import (issue 13, part
// 3). Each top-level folder of src/ is a layer; the rules say which layer may
// import which:
//
// - src/protocol (frames, codes, errors) imports nothing of ours outside it;
// - src/core imports src/protocol only (the pure core: no I/O, no runtime);
// - src/store and src/transport do not import src/core;
// - nothing imports src/cli (the top), and nothing in src/ imports test/;
// - nothing outside src/testing imports src/testing, the code of tests.
//
// Where the code does not keep a rule yet, the import is listed in KNOWN
// below with the part of issue 13 that removes it; an import that breaks a
// rule and is not listed fails this test, and so does a listed one that is
// gone (so the list only shrinks). The rule check itself is a pure function,
// tested on imports made up to break each rule.

import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

interface Import {
  /** Importing file, relative to the project root (src/...). */
  from: string;
  /** Imported file, resolved, relative to the project root. */
  to: string;
}

const ROOT = join(dirname(new URL(import.meta.url).pathname), '..', '..');

/** The layer of a path under src/: its first folder (src/errors.ts would be "errors.ts"). */
function layerOf(path: string): string {
  const parts = path.split('/');
  return parts[0] === 'src' ? (parts[1] ?? '') : parts[0]!;
}

/** Why an import breaks a rule, or null. */
export function ruleBroken(imp: Import): string | null {
  const a = layerOf(imp.from);
  const b = layerOf(imp.to);
  if (!imp.to.startsWith('src/')) return imp.to.startsWith('test/') ? 'src/ imports test code' : null;
  if (a === b) return null;
  if (a === 'protocol') return 'src/protocol imports nothing of ours outside it';
  if (a === 'core' && b !== 'protocol') return 'src/core imports src/protocol only';
  if ((a === 'store' || a === 'transport') && b === 'core') return `src/${a} does not import src/core`;
  if (b === 'cli') return 'nothing imports src/cli (the top layer)';
  if (b === 'testing') return 'nothing outside src/testing imports the code of tests';
  return null;
}

/** Imports that break a rule today, each with the part of issue 13 that removes it. */
const KNOWN: readonly { from: string; to: string; until: string }[] = [
];

function sourceFiles(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) => {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

/** Every relative import, export-from and import() with a literal path, resolved to a .ts file. */
function importsOf(file: string): Import[] {
  const text = readFileSync(join(ROOT, file), 'utf8');
  const found: Import[] = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)['"](\.{1,2}\/[^'"]+)['"]/g;
  for (const m of text.matchAll(re)) {
    const spec = m[1]!;
    const to = normalize(join(dirname(file), spec)).replace(/\.js$/, '.ts');
    found.push({ from: file, to: relative('.', to) });
  }
  return found;
}

describe('layering of src/', () => {
  const imports = sourceFiles('src').flatMap(importsOf);

  it('reads the imports of every file (a check that reads nothing would pass anything)', () => {
    expect(imports.length).toBeGreaterThan(300);
    expect(imports).toContainEqual({ from: 'src/core/controller.ts', to: 'src/protocol/messages.ts' });
  });

  it('every import keeps the rules, but those listed with the part of issue 13 that removes them', () => {
    const broken = imports.filter((i) => ruleBroken(i) !== null);
    const unlisted = broken.filter((i) => !KNOWN.some((k) => k.from === i.from && k.to === i.to));
    expect(unlisted.map((i) => `${i.from} -> ${i.to}: ${ruleBroken(i)}`)).toEqual([]);
    const gone = KNOWN.filter((k) => !broken.some((i) => k.from === i.from && k.to === i.to));
    expect(gone.map((k) => `${k.from} -> ${k.to} keeps the rules now: take it off KNOWN`)).toEqual([]);
  });

  it('the rule check catches each rule broken on purpose', () => {
    const cases: [Import, RegExp][] = [
      [{ from: 'src/protocol/codec.ts', to: 'src/store/layout.ts' }, /protocol imports nothing/],
      [{ from: 'src/core/controller.ts', to: 'src/transport/peer-link.ts' }, /core imports src\/protocol only/],
      [{ from: 'src/core/controller.ts', to: 'src/runtime/config.ts' }, /core imports src\/protocol only/],
      [{ from: 'src/store/page-store.ts', to: 'src/core/controller.ts' }, /store does not import src\/core/],
      [{ from: 'src/transport/peer-link.ts', to: 'src/core/controller.ts' }, /transport does not import src\/core/],
      [{ from: 'src/workload/job.ts', to: 'src/cli/main.ts' }, /nothing imports src\/cli/],
      [{ from: 'src/runtime/config.ts', to: 'src/testing/free-port.ts' }, /code of tests/],
      [{ from: 'src/runtime/config.ts', to: 'test/sim/harness.ts' }, /imports test code/],
    ];
    for (const [imp, why] of cases) expect(ruleBroken(imp), `${imp.from} -> ${imp.to}`).toMatch(why);
    for (const ok of [
      { from: 'src/core/controller.ts', to: 'src/protocol/errors.ts' },
      { from: 'src/runtime/controller-process.ts', to: 'src/core/controller.ts' },
      { from: 'src/cli/main.ts', to: 'src/workload/units.ts' },
      { from: 'src/testing/fuzz/main.ts', to: 'src/transport/peer-link.ts' },
    ]) {
      expect(ruleBroken(ok), `${ok.from} -> ${ok.to}`).toBeNull();
    }
  });
});
