import { defineConfig } from 'vitest/config';

// Two groups, one after the other: the pure tests (unit, and the seeded
// simulator, which keeps both cores busy for a while) first, then the tests
// that start real processes (integration, and interop with real NBD
// clients), so that controllers timed by the wall clock do not share the
// machine's two cores with a thousand simulated runs.
export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Keep the machine's two cores usable.
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: { name: 'pure', include: ['test/unit/**/*.test.ts', 'test/sim/**/*.test.ts'], sequence: { groupOrder: 0 } },
      },
      {
        extends: true,
        test: {
          name: 'processes',
          include: ['test/integration/**/*.test.ts', 'test/interop/**/*.test.ts'],
          // One line after a run where the NBD clients test/interop drives are missing.
          globalSetup: ['test/interop/skipped-notice.ts'],
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
