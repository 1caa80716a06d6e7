// A Device held in a Buffer, for tests and the simulator. It can be made to
// fail the way real storage fails: a write that errors, a write torn part way,
// a crash that stops all I/O, and the loss of writes not yet synced.

import { PagepairError } from '../errors.js';
import type { Device } from './types.js';

export class MemoryDevice implements Device {
  readonly sizeBytes: number;
  /** When true every operation rejects, as a crashed host's disk would. */
  crashed = false;
  writeCount = 0;
  syncCount = 0;

  private readonly bytes: Buffer;
  private nextWriteError: Error | null = null;
  private nextWriteKeepBytes: number | null = null;
  /** Old contents under each write since the last sync, newest last. */
  private unsynced: { offset: number; old: Buffer }[] = [];

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
    this.unsynced.push({ offset, old: Buffer.from(this.bytes.subarray(offset, offset + keep)) });
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
