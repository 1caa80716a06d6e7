// Test devices for pools: a gate that can break a member or make its
// operations land at different times, and bytes that differ from write to write.

import type { Device } from '../../src/store/types.js';

/**
 * A device over another that, once broken, fails every operation (as a
 * pulled disk does); breakAfter breaks it that many calls from now. With
 * jitter, each operation first waits a few turns of the event loop, so the
 * member writes of one row land at different times, as on real disks.
 */
export class Gate implements Device {
  broken = false;
  breakAfter: number | null = null;
  jitter: (() => number) | null = null;
  constructor(readonly inner: Device) {}
  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }
  async read(offset: number, length: number): Promise<Buffer> {
    await this.pause();
    if (this.down()) throw new Error('simulated EIO on read');
    return this.inner.read(offset, length);
  }
  async write(offset: number, data: Buffer): Promise<void> {
    await this.pause();
    if (this.down()) throw new Error('simulated EIO on write');
    return this.inner.write(offset, data);
  }
  async sync(): Promise<void> {
    await this.pause();
    if (this.down()) throw new Error('simulated EIO on sync');
    return this.inner.sync();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  private down(): boolean {
    if (this.breakAfter !== null && this.breakAfter-- <= 0) this.broken = true;
    return this.broken;
  }
  private async pause(): Promise<void> {
    for (let n = this.jitter?.() ?? 0; n > 0; n--) await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** Each gate waits 0 to 3 turns before each operation, from a seeded sequence. */
export function jitter(gates: Gate[], seed: number): void {
  let x = seed >>> 0 || 1;
  const next = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x & 3;
  };
  for (const g of gates) g.jitter = next;
}

/** Bytes that differ from byte to byte and from write to write. */
export function pattern(length: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  let x = (seed * 2654435761 + 1) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

