// The client-handshake fuzz target (src/testing/fuzz/target-client.ts) at a small count with a
// fixed seed: no crash, no hang, and still serving afterwards (test/unit/helpers/fuzz.ts).
// `npm run fuzz` runs it at a million inputs.

import { clientTarget } from '../../src/testing/fuzz/target-client.js';
import { describeFuzzTarget } from './helpers/fuzz.js';

describeFuzzTarget(clientTarget);
