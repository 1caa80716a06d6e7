// A Device over a regular file. Both controllers of a pair open the same file;
// each write lands at its own offset, so no locking is needed at this level:
// who may write what is the core's business (epochs, ownership).
//
// Writes asked for in one turn of the event loop are gathered and those that
// touch end to end leave as one vectored write: destaging a run of adjacent
// pages costs one trip to the thread pool, not one per page. Writes are never
// merged with one they overlap, so concurrent writes to one range behave as
// before (in no promised order). Reads are gathered the same way: those that
// touch or overlap are made as one read (a page write reads the page's two
// slots first, so destaging a run of pages reads the whole run at once).

import { open, type FileHandle } from 'node:fs/promises';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import type { Device } from './types.js';

function ioError(path: string, what: string, err: unknown): PagepairError {
  if (isPagepairError(err)) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new PagepairError('IO_ERROR', `${path}: ${what}: ${msg}`);
}

/** Owner read and write only; the umask can only take bits away. */
export const STORE_FILE_MODE = 0o600;

/** Buffers in one vectored write (well under IOV_MAX, 1024 on Linux). */
const IOVECS_MAX = 256;

/** Bytes one gathered read may span. */
const READ_RUN_BYTES_MAX = 1024 * 1024;

interface QueuedRead {
  offset: number;
  length: number;
  resolve(b: Buffer): void;
  reject(err: unknown): void;
}

interface QueuedWrite {
  offset: number;
  parts: readonly Buffer[];
  bytes: number;
  resolve(): void;
  reject(err: unknown): void;
}

/**
 * Requests asked for in one turn of the event loop, handed on together,
 * sorted by offset, when `schedule` calls back (or at once by flush()).
 */
class TurnBatch<T extends { offset: number }> {
  private items: T[] = [];

  constructor(
    private readonly schedule: (flush: () => void) => void,
    private readonly issue: (sorted: T[]) => void,
  ) {}

  add(item: T): void {
    if (this.items.length === 0) this.schedule(() => this.flush());
    this.items.push(item);
  }

  flush(): void {
    const all = this.items;
    this.items = [];
    all.sort((a, b) => a.offset - b.offset);
    this.issue(all);
  }
}

export class FileDevice implements Device {
  private closed = false;
  // Writes wait for the end of the turn (setImmediate), so the pages of one
  // destage leave together; reads only for a microtask, so they start on the
  // turn they were asked for, still gathered with those asked for beside them.
  private readonly writes = new TurnBatch<QueuedWrite>((flush) => setImmediate(flush), (all) => this.issueWrites(all));
  private readonly reads = new TurnBatch<QueuedRead>(queueMicrotask, (all) => this.issueReads(all));
  /** Vectored writes and gathered reads under way: close() waits for them. */
  private readonly writing = new Set<Promise<void>>();

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly sizeBytes: number,
  ) {}

  /**
   * Opens an existing file read-write. Its size is the device size unless
   * sizeBytes says otherwise (a file still being created by the partner may
   * be shorter than it will be; reads past its end return zeros).
   */
  static async open(path: string, opts: { sizeBytes?: number } = {}): Promise<FileDevice> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r+');
    } catch (err) {
      throw ioError(path, 'cannot open store file', err);
    }
    try {
      const sizeBytes = opts.sizeBytes ?? (await handle.stat()).size;
      return new FileDevice(path, handle, sizeBytes);
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw ioError(path, 'cannot stat store file', err);
    }
  }

  /**
   * Creates the file with sizeBytes (sparse: truncate, not zero writes).
   * exclusive (the default) fails with the fs error code EEXIST when the file
   * exists, which is how one of two controllers starting together wins the
   * right to format it. A new file is made STORE_FILE_MODE: it holds every
   * volume's data, so only the user running the controllers may read it (the
   * mode of an existing file is left as its owner set it).
   */
  static async create(path: string, sizeBytes: number, opts: { exclusive?: boolean } = {}): Promise<FileDevice> {
    let handle: FileHandle;
    try {
      handle = await open(path, opts.exclusive === false ? 'w+' : 'wx+', STORE_FILE_MODE);
    } catch (err) {
      // EEXIST is a normal outcome for the caller to branch on, so it keeps its code.
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw err;
      throw ioError(path, 'cannot create store file', err);
    }
    try {
      await handle.truncate(sizeBytes);
      return new FileDevice(path, handle, sizeBytes);
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw ioError(path, `cannot size store file to ${sizeBytes} bytes`, err);
    }
  }

  read(offset: number, length: number): Promise<Buffer> {
    const refused = this.refusal('read', offset, length);
    if (refused !== null) return Promise.reject(refused);
    return new Promise((resolve, reject) => this.reads.add({ offset, length, resolve, reject }));
  }

  private issueReads(all: QueuedRead[]): void {
    let i = 0;
    while (i < all.length) {
      const run = [all[i]!];
      let end = all[i]!.offset + all[i]!.length;
      for (i++; i < all.length; i++) {
        const r = all[i]!;
        const newEnd = Math.max(end, r.offset + r.length);
        if (r.offset > end || newEnd - run[0]!.offset > READ_RUN_BYTES_MAX) break;
        run.push(r);
        end = newEnd;
      }
      void this.readRun(run, end);
    }
  }

  private async readRun(run: QueuedRead[], end: number): Promise<void> {
    const offset = run[0]!.offset;
    const reading = this.readAt(offset, end - offset);
    const settled = reading.then(
      () => undefined,
      () => undefined,
    );
    this.writing.add(settled);
    let buf: Buffer;
    try {
      buf = await reading;
    } catch (err) {
      for (const r of run) r.reject(err);
      return;
    } finally {
      this.writing.delete(settled);
    }
    // Views of the run's buffer, not copies (see Device.read): the callers
    // decode them and copy out what they keep.
    for (const r of run) r.resolve(run.length === 1 ? buf : buf.subarray(r.offset - offset, r.offset - offset + r.length));
  }

  private async readAt(offset: number, length: number): Promise<Buffer> {
    if (this.closed) throw new PagepairError('IO_ERROR', `${this.path}: read after close`);
    const buf = Buffer.allocUnsafeSlow(length);
    let done = 0;
    try {
      while (done < length) {
        const { bytesRead } = await this.handle.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) break; // past end of file: the rest reads as zeros
        done += bytesRead;
      }
    } catch (err) {
      throw ioError(this.path, `read of ${length} bytes at ${offset}`, err);
    }
    buf.fill(0, done);
    return buf;
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.writeParts(offset, [data]);
  }

  /** Writes the parts back to back from offset, as one write of their concatenation. */
  writeParts(offset: number, parts: readonly Buffer[]): Promise<void> {
    let bytes = 0;
    for (const p of parts) bytes += p.length;
    const refused = this.refusal('write', offset, bytes);
    if (refused !== null) return Promise.reject(refused);
    return new Promise((resolve, reject) => this.writes.add({ offset, parts, bytes, resolve, reject }));
  }

  private issueWrites(all: QueuedWrite[]): void {
    let i = 0;
    while (i < all.length) {
      const run = [all[i]!];
      let iovecs = all[i]!.parts.length;
      let end = all[i]!.offset + all[i]!.bytes;
      for (i++; i < all.length; i++) {
        const w = all[i]!;
        if (w.offset !== end || iovecs + w.parts.length > IOVECS_MAX) break;
        run.push(w);
        iovecs += w.parts.length;
        end += w.bytes;
      }
      void this.writeRun(run);
    }
  }

  private async writeRun(run: QueuedWrite[]): Promise<void> {
    const offset = run[0]!.offset;
    const parts = run.length === 1 ? run[0]!.parts : run.flatMap((w) => w.parts);
    let bytes = 0;
    for (const w of run) bytes += w.bytes;
    const written = this.writeAll(offset, parts, bytes);
    this.writing.add(written);
    try {
      await written;
    } catch (err) {
      const e = ioError(this.path, `write of ${bytes} bytes at ${offset}`, err);
      for (const w of run) w.reject(e);
      return;
    } finally {
      this.writing.delete(written);
    }
    for (const w of run) w.resolve();
  }

  private async writeAll(offset: number, parts: readonly Buffer[], bytes: number): Promise<void> {
    if (this.closed) throw new PagepairError('IO_ERROR', `${this.path}: write after close`);
    let done = parts.length === 1 ? (await this.handle.write(parts[0]!, 0, bytes, offset)).bytesWritten : (await this.handle.writev(parts, offset)).bytesWritten;
    if (done >= bytes) return;
    // A short write (rare with regular files): the rest in one piece.
    const rest = Buffer.concat(parts).subarray(done);
    while (done < bytes) {
      const n = (await this.handle.write(rest, done - (bytes - rest.length), bytes - done, offset + done)).bytesWritten;
      if (n <= 0) throw new Error(`wrote ${done} of ${bytes} bytes`);
      done += n;
    }
  }

  async sync(): Promise<void> {
    const refused = this.refusal('sync', 0, 0);
    if (refused !== null) throw refused;
    try {
      await this.handle.datasync();
    } catch (err) {
      throw ioError(this.path, 'datasync', err);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // Writes asked for before close are made, as they were before batching; reads too.
    this.writes.flush();
    this.reads.flush();
    await Promise.allSettled([...this.writing]);
    this.closed = true;
    try {
      await this.handle.close();
    } catch (err) {
      throw ioError(this.path, 'close', err);
    }
  }

  /** Why op cannot be asked for now (after close, or outside the device), or null. */
  private refusal(op: string, offset: number, length: number): PagepairError | null {
    if (this.closed) return new PagepairError('IO_ERROR', `${this.path}: ${op} after close`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.sizeBytes) {
      return new PagepairError('IO_ERROR', `${this.path}: ${op} of ${length} bytes at ${offset} is outside 0..${this.sizeBytes}`);
    }
    return null;
  }
}
