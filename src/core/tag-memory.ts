// What a controller remembers of recent client writes by (clientId,
// clientSeq), bounded: the most recently touched entries are kept, the
// longest untouched one goes when the bound is passed.
//
// A Map keeps insertion order, so its first key is the oldest; but taking the
// first key with map.keys().next() walks over every slot deleted since the
// table was last rebuilt, and at the bound every write deletes one: that made
// each tagged write cost tens of microseconds. One iterator kept across
// evictions walks over each deleted slot once.

export class TagMemory<V> {
  private readonly map = new Map<string, V>();
  /** Where eviction goes on from: the oldest live entry is at or after it. */
  private oldest: Iterator<string> | null = null;

  constructor(private readonly entriesMax: number) {}

  get size(): number {
    return this.map.size;
  }

  get(key: string): V | undefined {
    return this.map.get(key);
  }

  has(key: string): boolean {
    return this.map.has(key);
  }

  /** Stores the entry as the most recently touched one. */
  remember(key: string, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    while (this.map.size > this.entriesMax) this.evictOldest();
  }

  delete(key: string): void {
    this.map.delete(key);
  }

  clear(): void {
    this.map.clear();
    this.oldest = null;
  }

  entries(): IterableIterator<[string, V]> {
    return this.map.entries();
  }

  private evictOldest(): void {
    for (;;) {
      // A Map iterator sees entries added after it was made, and skips deleted ones.
      this.oldest ??= this.map.keys();
      const next = this.oldest.next();
      if (next.done === true) {
        this.oldest = null;
        continue;
      }
      this.map.delete(next.value);
      return;
    }
  }
}
