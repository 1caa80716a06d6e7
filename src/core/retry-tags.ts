// Retry tags: what we know of each client write by (clientId, clientSeq), so
// that a retried write is applied once, whichever controller the retry goes
// to, and is answered as the first attempt was.

import { TagMemory } from './tag-memory.js';

/** What we know of a client write by its (clientId, clientSeq). */
export type TaggedWrite =
  /** Being applied: a retry waits for the outcome (null: acknowledged). */
  | { state: 'running'; waiters: ((err: Error | null) => void)[] }
  /** Acknowledged by us: a retry is answered at once. */
  | { state: 'done' }
  /** Applied here (or held as the partner's mirrored copy) but not known
   *  acknowledged: a retry makes the pages durable, then answers. */
  | { state: 'held'; guid: string; first: number; count: number };

export const TAGGED_WRITES_MAX = 65_536;

export const TAG_DONE: TaggedWrite = { state: 'done' };

export function tagKey(clientId: number, clientSeq: number): string {
  return `${clientId}:${clientSeq}`;
}

export function settleTag(entry: TaggedWrite, err: Error | null): void {
  if (entry.state !== 'running') return;
  for (const w of entry.waiters.splice(0)) w(err);
}

export class RetryTags {
  /** Client writes by (clientId, clientSeq): a retried write is applied once. */
  readonly taggedWrites = new TagMemory<TaggedWrite>(TAGGED_WRITES_MAX);

  rememberTag(key: string, entry: TaggedWrite): void {
    this.taggedWrites.remember(key, entry);
  }
}
