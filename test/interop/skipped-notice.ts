// A vitest globalSetup: after a run that included test/interop on a machine
// without some of Debian's NBD clients, one plain line says which suite was
// skipped and how to install what it needs. The skipped tests' titles say the
// same one by one; this line is the one a reader of `npm test` cannot miss.

import type { TestProject } from 'vitest/node';
import { INSTALL_HINT, INTEROP_TOOLS, TOOLS_REQUIRED, missingTools } from '../tools.js';

export default function setup(project: TestProject): () => void {
  return () => {
    if (TOOLS_REQUIRED) return;
    const missing = missingTools(INTEROP_TOOLS);
    if (missing.length === 0) return;
    const ran = project.vitest.state.getFilepaths().some((p) => p.includes('/test/interop/'));
    if (!ran) return;
    process.stdout.write(`pagepair tests: SKIPPED the interop suite (test/interop) where it needs ${missing.join(', ')} (not installed); ${INSTALL_HINT}\n`);
  };
}
