// The bounded memory of client write tags: the most recently touched entries
// stay and the longest untouched goes, however many entries were deleted or
// touched again before it.

import { describe, expect, it } from 'vitest';
import { TagMemory } from '../../src/core/tag-memory.js';

describe('tag memory', () => {
  it('keeps the most recently touched entries', () => {
    const m = new TagMemory<number>(3);
    m.remember('a', 1);
    m.remember('b', 2);
    m.remember('c', 3);
    m.remember('a', 10); // touched again: now the newest
    m.remember('d', 4); // b goes
    expect([...m.entries()]).toEqual([
      ['c', 3],
      ['a', 10],
      ['d', 4],
    ]);
    m.delete('a');
    m.remember('e', 5);
    m.remember('f', 6); // c goes
    expect([...m.entries()].map(([k]) => k)).toEqual(['d', 'e', 'f']);
    expect(m.has('c')).toBe(false);
    expect(m.get('f')).toBe(6);
    m.clear();
    expect(m.size).toBe(0);
    m.remember('g', 7);
    expect([...m.entries()]).toEqual([['g', 7]]);
  });

  it('evicts in order across many deletes and touches', () => {
    const max = 1000;
    const m = new TagMemory<number>(max);
    const model = new Map<string, number>();
    for (let i = 0; i < 200_000; i++) {
      const key = String(i % 3 === 0 ? i - 1 : i);
      if (i % 7 === 0) {
        m.delete(key);
        model.delete(key);
      }
      m.remember(key, i);
      model.delete(key);
      model.set(key, i);
      while (model.size > max) model.delete(model.keys().next().value!);
    }
    expect([...m.entries()]).toEqual([...model.entries()]);
  });
});
