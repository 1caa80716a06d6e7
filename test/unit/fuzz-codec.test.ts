// The codec fuzz target (src/testing/fuzz/target-codec.ts) at a small count with a
// fixed seed: no crash, no hang, and still serving afterwards (test/unit/helpers/fuzz.ts).
// `npm run fuzz` runs it at a million inputs.

import { codecTarget } from '../../src/testing/fuzz/target-codec.js';
import { describeFuzzTarget } from './helpers/fuzz.js';

describeFuzzTarget(codecTarget);
