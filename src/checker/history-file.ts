// History files on disk: the only part of the checker that touches fs.

import { readFile, rename, writeFile } from 'node:fs/promises';
import { PagepairError } from '../protocol/errors.js';
import { parseHistory, type History } from './history.js';

/** Writes beside the target and renames, so a reader never sees half a history. */
export async function writeHistoryText(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    await writeFile(tmp, text, 'utf8');
    await rename(tmp, path);
  } catch (err) {
    throw new PagepairError('IO_ERROR', `cannot write history ${path}: ${err instanceof Error ? err.message : String(err)}`, 'path');
  }
}

/** Reads and parses a history file; malformed lines are PagepairError BAD_FIELD naming the line and field. */
export async function readHistory(path: string): Promise<History> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new PagepairError('IO_ERROR', `cannot read history ${path}: ${err instanceof Error ? err.message : String(err)}`, 'path');
  }
  return parseHistory(text, path);
}
