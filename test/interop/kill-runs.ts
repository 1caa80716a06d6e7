// What the fio kill tests in this folder share: after the file's tests, the
// run is told to stop, and any fio or controller process it left is killed.

import { afterAll } from 'vitest';
import { killAllFio } from '../../src/runtime/fio.js';
import { killAllPairControllers } from '../../src/runtime/nbd-pair.js';

/** The signal to hand the file's kill-test run; after the file's tests it is aborted and whatever the run started is killed. */
export function useKillRunCleanup(): AbortSignal {
  const abort = new AbortController();
  afterAll(() => {
    abort.abort();
    killAllFio();
    killAllPairControllers();
  });
  return abort.signal;
}
