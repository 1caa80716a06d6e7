// What every pool layout does with its members' labels (issue 14): read a
// member's newest label, and write the pool's next generation to the
// members left after one failed. mirror-device.ts keeps its own copy of the
// generation loop for now; it may take this one.

import type { PoolLabel } from './pool-label.js';
import { labelCopyFor, newestPoolLabel } from './pool-label.js';
import type { MemberState, PoolMember } from './pool.js';
import type { Device } from './types.js';

/** A member as a pool keeps it: its slot and whether it may be used. */
export interface SlotMember extends PoolMember {
  slot: number;
  state: MemberState;
  /** Why it is not healthy. */
  reason: string | null;
}

/** A device's label: the valid copy with the higher generation, or why neither is. */
export async function readPoolLabel(device: Device): Promise<PoolLabel | string> {
  const [c0, c1] = await Promise.all([device.read(0, 64), device.read(4096, 64)]);
  return newestPoolLabel(Buffer.from(c0), Buffer.from(c1));
}

/** Write one label (to the copy its generation goes to) and make it durable. */
export async function writePoolLabel(device: Device, generation: number, label: Buffer): Promise<void> {
  await device.write(labelCopyFor(generation) * 4096, label);
  await device.sync();
}

/**
 * Write `generation` to every healthy member, synced. A member that cannot
 * take it is marked failed, and the generation after names it stale: the
 * loop ends when every member left holds the last one. Resolves with it.
 * Each member that stops being healthy moves the generation on once.
 */
export async function writeGeneration(members: readonly SlotMember[], generation: number, labelFor: (m: SlotMember, generation: number) => Buffer): Promise<number> {
  for (;;) {
    const left = members.filter((m) => m.state === 'healthy');
    if (left.length === 0) return generation;
    const results = await Promise.allSettled(left.map((m) => writePoolLabel(m.device, generation, labelFor(m, generation))));
    let failedNow = 0;
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') return;
      const m = left[i]!;
      // Marked failed meanwhile (by an operation of its own): whoever marked it moves the generation on.
      if (m.state !== 'healthy') return;
      m.state = 'failed';
      m.reason = `label write failed: ${String(r.reason)}`;
      failedNow++;
    });
    if (failedNow === 0) return generation;
    generation++;
  }
}
