import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // One line after a run where the NBD clients test/interop drives are missing.
    globalSetup: ['test/interop/skipped-notice.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Integration tests start real processes; keep the machine's two cores usable.
    maxWorkers: 2,
  },
});
