// A Device over a regular file. Both controllers of a pair open the same file;
// each write lands at its own offset, so no locking is needed at this level:
// who may write what is the core's business (epochs, ownership).

import { open, type FileHandle } from 'node:fs/promises';
import { PagepairError, isPagepairError } from '../errors.js';
import type { Device } from './types.js';

function ioError(path: string, what: string, err: unknown): PagepairError {
  if (isPagepairError(err)) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new PagepairError('IO_ERROR', `${path}: ${what}: ${msg}`);
}

export class FileDevice implements Device {
  private closed = false;

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
   * right to format it.
   */
  static async create(path: string, sizeBytes: number, opts: { exclusive?: boolean } = {}): Promise<FileDevice> {
    let handle: FileHandle;
    try {
      handle = await open(path, opts.exclusive === false ? 'w+' : 'wx+');
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

  async read(offset: number, length: number): Promise<Buffer> {
    this.check('read', offset, length);
    const buf = Buffer.alloc(length);
    let done = 0;
    try {
      while (done < length) {
        const { bytesRead } = await this.handle.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) break; // past end of file: the rest stays zero
        done += bytesRead;
      }
    } catch (err) {
      throw ioError(this.path, `read of ${length} bytes at ${offset}`, err);
    }
    return buf;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.check('write', offset, data.length);
    let done = 0;
    try {
      while (done < data.length) {
        const { bytesWritten } = await this.handle.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
    } catch (err) {
      throw ioError(this.path, `write of ${data.length} bytes at ${offset}`, err);
    }
  }

  async sync(): Promise<void> {
    this.check('sync', 0, 0);
    try {
      await this.handle.datasync();
    } catch (err) {
      throw ioError(this.path, 'datasync', err);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.handle.close();
    } catch (err) {
      throw ioError(this.path, 'close', err);
    }
  }

  private check(op: string, offset: number, length: number): void {
    if (this.closed) throw new PagepairError('IO_ERROR', `${this.path}: ${op} after close`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.sizeBytes) {
      throw new PagepairError('IO_ERROR', `${this.path}: ${op} of ${length} bytes at ${offset} is outside 0..${this.sizeBytes}`);
    }
  }
}
