// Opening the pair's store file when both controllers may start at the same
// instant and the file may not exist yet: exactly one creates and formats it.

import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import { FileDevice } from './file-device.js';
import { PageStore } from './page-store.js';

export const STORE_WAIT_MS_DEFAULT = 5000;
/** Mode of a directory made for the store (an existing one is left alone). */
export const STORE_DIR_MODE = 0o700;
const RETRY_INTERVAL_MS = 50;

export interface OpenOrFormatOptions {
  pairId: string;
  /** Size of a newly created file; an existing store keeps its own size. */
  sizeBytes: number;
  nowMs: number;
  /** How long to wait for a partner that created the file to finish formatting it. */
  waitMs?: number;
  tableEntriesMax?: number;
  mailboxBytes?: number;
}

/**
 * Opens the store at path, creating and formatting it when it does not exist.
 * The O_EXCL create decides which of two racing controllers formats; the other
 * keeps reading until a valid superblock appears or waitMs runs out
 * (STORE_CORRUPT). A store of another pair is refused at once (STORE_MISMATCH).
 */
export async function openOrFormatFileStore(path: string, opts: OpenOrFormatOptions): Promise<PageStore> {
  try {
    // Directories made here are the owner's alone: by default the unix
    // sockets sit next to the store (data/).
    await mkdir(dirname(path), { recursive: true, mode: STORE_DIR_MODE });
  } catch (err) {
    throw new PagepairError('IO_ERROR', `${path}: cannot make parent directory: ${(err as Error).message}`);
  }

  let created: FileDevice | null = null;
  try {
    created = await FileDevice.create(path, opts.sizeBytes, { exclusive: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  if (created !== null) {
    try {
      const formatOpts: Parameters<typeof PageStore.format>[1] = { pairId: opts.pairId, nowMs: opts.nowMs, name: path };
      if (opts.tableEntriesMax !== undefined) formatOpts.tableEntriesMax = opts.tableEntriesMax;
      if (opts.mailboxBytes !== undefined) formatOpts.mailboxBytes = opts.mailboxBytes;
      return await PageStore.format(created, formatOpts);
    } catch (err) {
      await created.close().catch(() => undefined);
      throw err;
    }
  }

  const waitMs = opts.waitMs ?? STORE_WAIT_MS_DEFAULT;
  const deadline = Date.now() + waitMs;
  for (;;) {
    // Reopen every time: the creator may not have sized the file yet, and a
    // device's size is fixed when it is opened.
    const device = await FileDevice.open(path);
    try {
      return await PageStore.open(device, { pairId: opts.pairId, name: path });
    } catch (err) {
      await device.close().catch(() => undefined);
      if (!isPagepairError(err, 'STORE_CORRUPT') || Date.now() >= deadline) {
        if (isPagepairError(err, 'STORE_CORRUPT')) {
          throw new PagepairError('STORE_CORRUPT', `${err.message} after waiting ${waitMs} ms for it to be formatted`);
        }
        throw err;
      }
    }
    await sleep(RETRY_INTERVAL_MS);
  }
}
