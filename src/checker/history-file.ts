// History files on disk: the only part of the checker that touches fs.

import { readFile, rename, writeFile } from 'node:fs/promises';
import { PagepairError } from '../protocol/errors.js';
import { parseHistory, type History } from './history.js';

function ioFailure(doing: 'write' | 'read', path: string, err: unknown): PagepairError {
  return new PagepairError('IO_ERROR', `cannot ${doing} history ${path}: ${err instanceof Error ? err.message : String(err)}`, 'path');
}

/** Writes beside the target and renames, so a reader never sees half a history. */
export async function writeHistoryText(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    await writeFile(tmp, text, 'utf8');
    await rename(tmp, path);
  } catch (err) {
    throw ioFailure('write', path, err);
  }
}

/** Reads and parses a history file; malformed lines are PagepairError BAD_FIELD naming the line and field. */
export async function readHistory(path: string): Promise<History> {
  const text = await readFile(path, 'utf8').catch((err: unknown) => {
    throw ioFailure('read', path, err);
  });
  return parseHistory(text, path);
}
