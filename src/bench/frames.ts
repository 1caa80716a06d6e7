// The sizes of the frames a pagepair read or write puts on the wire, taken
// from the codec itself so the floors carry exactly as many bytes as the
// controller does.

import { encode } from '../protocol/codec.js';
import { SENDER_CLIENT } from '../protocol/messages.js';
import type { BenchOp } from './types.js';

const SOME_GUID = '00000000-0000-4000-8000-000000000001';

export interface FrameSizes {
  requestBytes: number;
  replyBytes: number;
}

export function frameSizes(op: BenchOp, blockBytes: number): FrameSizes {
  const common = { requestId: 1, epoch: 0, sender: SENDER_CLIENT, flags: 0 };
  if (op === 'write') {
    const request = encode({ kind: 'C_WRITE', ...common, guid: SOME_GUID, offset: 0, pointerId: 0, clientId: 0, clientSeq: 0, data: Buffer.alloc(blockBytes) });
    const reply = encode({ kind: 'C_WRITE_REPLY', ...common, sender: 1 });
    return { requestBytes: request.length, replyBytes: reply.length };
  }
  const request = encode({ kind: 'C_READ', ...common, guid: SOME_GUID, offset: 0, length: blockBytes, pointerId: 0 });
  const reply = encode({ kind: 'C_READ_REPLY', ...common, sender: 1, data: Buffer.alloc(blockBytes) });
  return { requestBytes: request.length, replyBytes: reply.length };
}
