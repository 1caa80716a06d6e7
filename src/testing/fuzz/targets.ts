// Every fuzz target, in the order the fuzz command runs them.

import type { FuzzTarget } from './runner.js';
import { clientTarget } from './target-client.js';
import { codecTarget } from './target-codec.js';
import { nbdTarget } from './target-nbd.js';
import { peerTarget } from './target-peer.js';

export const TARGETS: readonly FuzzTarget[] = [codecTarget, peerTarget, clientTarget, nbdTarget];
