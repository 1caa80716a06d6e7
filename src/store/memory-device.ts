// A Device held in a Buffer, for tests and the simulator. It can be made to
// fail the way real storage fails: a write that errors, a write torn part way,
// a crash that stops all I/O, and the loss of writes not yet synced.

import { PagepairError } from '../protocol/errors.js';
import type { Device } from './types.js';

/** A write not yet followed by a completed sync, as a power cut meets it. */
export interface UnsyncedWrite {
  offset: number;
  /** The bytes the write put there (only the part that landed, for a torn one). */
  data: Buffer;
}

/**
 * What a power cut does to one unsynced write: it reached the medium whole,
 * not at all, only its first bytes, or only some of its sectors (a device
 * may persist the sectors of one write in any order).
 */
export type PowerCutFate = 'keep' | 'drop' | { prefixBytes: number } | { sectorBytes: number; landed: (sector: number) => boolean };

export class MemoryDevice implements Device {
  readonly sizeBytes: number;
  /** When true every operation rejects, as a crashed host's disk would. */
  crashed = false;
  writeCount = 0;
  syncCount = 0;

  private readonly bytes: Buffer;
  private nextWriteError: Error | null = null;
  private nextWriteKeepBytes: number | null = null;
  /** Each write since the last sync, with the old contents under it, newest last. */
  private unsynced: { offset: number; old: Buffer; data: Buffer }[] = [];

  /** A zeroed device of sizeBytes, or one over a copy of `from` (a snapshot). */
  constructor(sizeOrBytes: number | Uint8Array) {
    this.bytes = typeof sizeOrBytes === 'number' ? Buffer.alloc(sizeOrBytes) : Buffer.from(sizeOrBytes);
    this.sizeBytes = this.bytes.length;
  }

  /** The next write rejects with err and changes nothing. */
  failNextWrite(err: Error = new PagepairError('IO_ERROR', 'injected write failure')): void {
    this.nextWriteError = err;
  }

  /** The next write stores only its first keepBytes, then rejects. */
  tearNextWrite(keepBytes: number): void {
    this.nextWriteKeepBytes = keepBytes;
  }

  /** Another device with these bytes and these unsynced writes (a power cut of one leaves the other alone). */
  clone(): MemoryDevice {
    const d = new MemoryDevice(this.bytes);
    d.unsynced = this.unsynced.map((w) => ({ offset: w.offset, old: Buffer.from(w.old), data: Buffer.from(w.data) }));
    return d;
  }

  /** A copy of the current bytes. */
  snapshot(): Buffer {
    return Buffer.from(this.bytes);
  }

  /** Undoes every write since the last sync: what a power cut may do. */
  dropUnsyncedWrites(): void {
    for (let i = this.unsynced.length - 1; i >= 0; i--) {
      const w = this.unsynced[i]!;
      w.old.copy(this.bytes, w.offset);
    }
    this.unsynced = [];
  }

  /** How many writes were made since the last sync. */
  get unsyncedWriteCount(): number {
    return this.unsynced.length;
  }

  /** The writes since the last sync, oldest first: what a power cut now could lose. */
  unsyncedWrites(): UnsyncedWrite[] {
    return this.unsynced.map((w) => ({ offset: w.offset, data: Buffer.from(w.data) }));
  }

  /**
   * Power is cut: every write since the last sync meets its fate (in the
   * order they were made, so a later write kept over an earlier one wins
   * where they overlap), then the device holds what the medium would. What
   * a sync completed for is never touched.
   */
  powerCut(fate: (w: UnsyncedWrite, index: number) => PowerCutFate): void {
    const writes = this.unsynced;
    this.dropUnsyncedWrites();
    writes.forEach((w, i) => {
      const f = fate({ offset: w.offset, data: w.data }, i);
      if (f === 'drop') return;
      if (f === 'keep') {
        w.data.copy(this.bytes, w.offset);
        return;
      }
      if ('prefixBytes' in f) {
        w.data.copy(this.bytes, w.offset, 0, Math.max(0, Math.min(f.prefixBytes, w.data.length)));
        return;
      }
      // Sector n of the device covers [n * sectorBytes, (n + 1) * sectorBytes).
      const first = Math.floor(w.offset / f.sectorBytes);
      const last = Math.floor((w.offset + w.data.length - 1) / f.sectorBytes);
      for (let n = first; n <= last; n++) {
        if (!f.landed(n - first)) continue;
        const from = Math.max(w.offset, n * f.sectorBytes);
        const to = Math.min(w.offset + w.data.length, (n + 1) * f.sectorBytes);
        w.data.copy(this.bytes, from, from - w.offset, to - w.offset);
      }
    });
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check('read', offset, length);
    return Buffer.from(this.bytes.subarray(offset, offset + length));
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.check('write', offset, data.length);
    this.writeCount++;
    if (this.nextWriteError !== null) {
      const err = this.nextWriteError;
      this.nextWriteError = null;
      throw err;
    }
    let keep = data.length;
    const tear = this.nextWriteKeepBytes;
    if (tear !== null) {
      this.nextWriteKeepBytes = null;
      keep = Math.max(0, Math.min(tear, data.length));
    }
    this.unsynced.push({ offset, old: Buffer.from(this.bytes.subarray(offset, offset + keep)), data: Buffer.from(data.subarray(0, keep)) });
    data.copy(this.bytes, offset, 0, keep);
    if (tear !== null) {
      throw new PagepairError('IO_ERROR', `injected torn write: ${keep} of ${data.length} bytes at ${offset}`);
    }
  }

  async sync(): Promise<void> {
    this.check('sync', 0, 0);
    this.syncCount++;
    this.unsynced = [];
  }

  async close(): Promise<void> {
    // Nothing to release; a closed memory device may be reopened by a new store.
  }

  private check(op: string, offset: number, length: number): void {
    if (this.crashed) throw new PagepairError('IO_ERROR', `memory device: ${op} after crash`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.sizeBytes) {
      throw new PagepairError('IO_ERROR', `memory device: ${op} of ${length} bytes at ${offset} is outside 0..${this.sizeBytes}`);
    }
  }
}
