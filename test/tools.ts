// Some tests drive programs other people wrote against the NBD spec:
// Debian's nbdinfo, nbdcopy, nbdsh (libnbd-bin), qemu-io (qemu-utils), fio,
// nbd-client and nbdkit. scripts/install-nbd-clients.sh installs them.
//
// They all live in test/interop. On a machine without them, `npm test` still
// passes: those tests are skipped, each title says which program is missing,
// and test/interop/skipped-notice.ts prints one line per run naming the
// skipped suite and how to install them. CI sets PAGEPAIR_REQUIRE_TOOLS=1 (in
// .ci/run, after installing them): there a missing program fails the test
// instead, so a broken install is never mistaken for a pass.

import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { describe, it, type TestFunction } from 'vitest';

export const INSTALL_HINT = 'scripts/install-nbd-clients.sh (as root) installs them';

/** Every program a test in test/interop runs; `itWithTools` takes no other. */
export const INTEROP_TOOLS = ['qemu-io', 'nbdinfo', 'nbdcopy', 'nbd-client', 'nbdsh', 'fio', 'nbdkit'] as const;

/** True where a missing program must fail the tests (CI). */
export const TOOLS_REQUIRED = process.env.PAGEPAIR_REQUIRE_TOOLS === '1';

const found = new Map<string, boolean>();

/** Whether an executable of this name is on PATH. */
export function onPath(name: string): boolean {
  let yes = found.get(name);
  if (yes === undefined) {
    yes = (process.env.PATH ?? '').split(delimiter).some((dir) => {
      if (dir === '') return false;
      try {
        accessSync(join(dir, name), constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
    found.set(name, yes);
  }
  return yes;
}

/** The programs of `names` that are not installed. */
export function missingTools(names: readonly string[]): string[] {
  return names.filter((n) => !onPath(n));
}

/** The reason tests needing `names` are skipped here, or null where they run. */
function skipFor(names: readonly string[], title: string): string | null {
  const unknown = names.filter((n) => !(INTEROP_TOOLS as readonly string[]).includes(n));
  if (unknown.length > 0) throw new Error(`${unknown.join(', ')}: add to INTEROP_TOOLS in test/tools.ts, so a machine without it hears so`);
  const missing = missingTools(names);
  if (missing.length === 0 || TOOLS_REQUIRED) return null;
  return `${title} [skipped: ${missing.join(', ')} not installed; ${INSTALL_HINT}]`;
}

/** `it`, skipped (with the reason in its title) where a program it runs is missing. */
export function itWithTools(names: readonly string[], title: string, fn: TestFunction, timeoutMs?: number): void {
  const skipped = skipFor(names, title);
  if (skipped !== null) it.skip(skipped, fn);
  else it(title, fn, timeoutMs);
}

/** `describe`, skipped as a whole (set-up included) where a program its tests run is missing. */
export function describeWithTools(names: readonly string[], title: string, body: () => void): void {
  const skipped = skipFor(names, title);
  if (skipped !== null) describe.skip(skipped, body);
  else describe(title, body);
}
