// What a controller remembers of recent client writes by (clientId,
// clientSeq), bounded: the most recently touched entries are kept, the
// longest untouched one goes when the bound is passed.
//
// lru-cache does the keeping (O(1) per write, with no walk over deleted
// slots: a plain Map's "first key" walked over every slot deleted since the
// table was last rebuilt, tens of microseconds per write at the bound). It
// is used as a plain bounded map: no TTL, so it reads no clock and starts no
// timer, and the core stays pure. Lookups (get, has) do not count as a touch:
// only remember() makes an entry the newest.

import { LRUCache } from 'lru-cache';

export class TagMemory<V extends NonNullable<unknown>> {
  private readonly cache: LRUCache<string, V>;

  constructor(entriesMax: number) {
    this.cache = new LRUCache<string, V>({ max: entriesMax });
  }

  get size(): number {
    return this.cache.size;
  }

  get(key: string): V | undefined {
    return this.cache.peek(key);
  }

  has(key: string): boolean {
    return this.cache.has(key);
  }

  /** Stores the entry as the most recently touched one. */
  remember(key: string, value: V): void {
    this.cache.set(key, value);
  }

  delete(key: string): void {
    this.cache.delete(key);
  }

  clear(): void {
    this.cache.clear();
  }

  /** Oldest first. */
  *entries(): Generator<[string, V]> {
    for (const key of this.cache.rkeys()) {
      const value = this.cache.peek(key);
      if (value !== undefined) yield [key, value];
    }
  }
}
