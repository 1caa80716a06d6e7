// JSON files a person writes or a run leaves (job files, reports): one that
// cannot be read, or is not JSON, is a BAD_FIELD error naming the file.

import { readFileSync } from 'node:fs';
import { PagepairError } from '../protocol/errors.js';

/** The parsed JSON of the file at path; `what` names it in errors ("job file"), `field` is the error's field. */
export function readJsonFile(path: string, what: string, field: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new PagepairError('BAD_FIELD', `cannot read ${what} ${path}: ${err instanceof Error ? err.message : String(err)}`, field);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new PagepairError('BAD_FIELD', `${path} is not JSON: ${err instanceof Error ? err.message : String(err)}`, field);
  }
}
