// Rewriting one slot of store.pool.devices in a controller's configuration
// file after `pagepair device replace`, and nothing else: the file's other
// bytes (its order, spacing, other fields) stay as the operator wrote them.
// The JSON text is scanned for where that one string lies, the string is
// swapped for the new device, and the result must still load as a
// configuration before it replaces the file.

import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { isAbsolute, relative, resolve } from 'node:path';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import { loadConfig } from '../runtime/config.js';

/** Where a JSON value lies in the text: [start, end). */
interface Span {
  start: number;
  end: number;
}

/** A parse of JSON text that keeps, for every value, where it lies. */
type Node =
  | { kind: 'object'; span: Span; entries: [string, Node][] }
  | { kind: 'array'; span: Span; items: Node[] }
  | { kind: 'scalar'; span: Span; value: unknown };

class Scanner {
  private at = 0;
  constructor(private readonly text: string) {}

  parseDocument(): Node {
    const v = this.value();
    this.space();
    if (this.at !== this.text.length) this.fail('text after the JSON value');
    return v;
  }

  private value(): Node {
    this.space();
    const start = this.at;
    const c = this.text[this.at];
    if (c === '{') {
      this.at++;
      const entries: [string, Node][] = [];
      this.space();
      if (this.text[this.at] === '}') {
        this.at++;
        return { kind: 'object', span: { start, end: this.at }, entries };
      }
      for (;;) {
        this.space();
        const key = this.value();
        if (key.kind !== 'scalar' || typeof key.value !== 'string') this.fail('a key that is not a string');
        this.space();
        this.expect(':');
        entries.push([key.value as string, this.value()]);
        this.space();
        if (this.text[this.at] === ',') {
          this.at++;
          continue;
        }
        this.expect('}');
        return { kind: 'object', span: { start, end: this.at }, entries };
      }
    }
    if (c === '[') {
      this.at++;
      const items: Node[] = [];
      this.space();
      if (this.text[this.at] === ']') {
        this.at++;
        return { kind: 'array', span: { start, end: this.at }, items };
      }
      for (;;) {
        items.push(this.value());
        this.space();
        if (this.text[this.at] === ',') {
          this.at++;
          continue;
        }
        this.expect(']');
        return { kind: 'array', span: { start, end: this.at }, items };
      }
    }
    if (c === '"') {
      this.at++;
      while (this.at < this.text.length && this.text[this.at] !== '"') this.at += this.text[this.at] === '\\' ? 2 : 1;
      this.expect('"');
    } else {
      const m = /^(?:true|false|null|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(this.text.slice(this.at, this.at + 64));
      if (m === null) this.fail('not JSON');
      this.at += m![0].length;
    }
    return { kind: 'scalar', span: { start, end: this.at }, value: JSON.parse(this.text.slice(start, this.at)) as unknown };
  }

  private space(): void {
    while (this.at < this.text.length && ' \t\r\n'.includes(this.text[this.at]!)) this.at++;
  }

  private expect(ch: string): void {
    if (this.text[this.at] !== ch) this.fail(`"${ch}" expected`);
    this.at++;
  }

  private fail(why: string): never {
    throw new PagepairError('BAD_CONFIG', `${why} at character ${this.at}`);
  }
}

function member(node: Node | undefined, key: string): Node | undefined {
  // JSON.parse takes the last of repeated keys; so does this.
  return node?.kind === 'object' ? node.entries.filter(([k]) => k === key).at(-1)?.[1] : undefined;
}

export interface DevicesEdit {
  file: string;
  /** store.pool.devices as the file has them now. */
  before: string[];
  /** As they will be. */
  after: string[];
  /** The whole new text of the file. */
  text: string;
}

/**
 * Plan the rewrite of store.pool.devices[slot] in `file` to name `device`
 * (a path resolved against the current directory, or an NBD URI). The file
 * must name `expected` (the devices of the configuration the command ran
 * from, resolved the same way) in every other slot: a file of another
 * pool is refused rather than half rewritten. Throws BAD_CONFIG naming the
 * file and the field.
 */
export function planDevicesEdit(file: string, slot: number, device: { kind: 'file'; path: string } | { kind: 'nbd'; uri: string }, expected: readonly string[]): DevicesEdit {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new PagepairError('BAD_CONFIG', `--update-config ${file}: cannot read it: ${(err as Error).message}`, 'update-config');
  }
  let doc: Node;
  try {
    doc = new Scanner(text).parseDocument();
  } catch (err) {
    throw new PagepairError('BAD_CONFIG', `--update-config ${file}: ${isPagepairError(err) ? err.message : String(err)}`, 'update-config');
  }
  const devices = member(member(member(doc, 'store'), 'pool'), 'devices');
  if (devices === undefined || devices.kind !== 'array') throw new PagepairError('BAD_CONFIG', `--update-config ${file}: it has no store.pool.devices array`, 'store.pool.devices');
  const before = devices.items.map((n, i) => {
    if (n.kind !== 'scalar' || typeof n.value !== 'string') throw new PagepairError('BAD_CONFIG', `--update-config ${file}: store.pool.devices[${i}] is not a string`, `store.pool.devices[${i}]`);
    return n.value;
  });
  if (before.length !== expected.length) {
    throw new PagepairError('BAD_CONFIG', `--update-config ${file}: store.pool.devices lists ${before.length} devices, the pool has ${expected.length}`, 'store.pool.devices');
  }
  for (let i = 0; i < before.length; i++) {
    if (i === slot) continue;
    if (deviceKey(before[i]!) !== expected[i]) {
      throw new PagepairError('BAD_CONFIG', `--update-config ${file}: store.pool.devices[${i}] is ${before[i]}, but the pool's slot ${i} is ${expected[i]}: is it the configuration of another pool?`, `store.pool.devices[${i}]`);
    }
  }
  const old = devices.items[slot]!;
  const written = deviceAsWritten(device, before[slot]!);
  const after = before.map((d, i) => (i === slot ? written : d));
  const newText = text.slice(0, old.span.start) + JSON.stringify(written) + text.slice(old.span.end);
  return { file, before, after, text: newText };
}

/**
 * Write a planned edit: the new text must load as a configuration (a
 * temporary file beside it, then renamed over it, so the file is never
 * half written).
 */
export function applyDevicesEdit(edit: DevicesEdit): void {
  const tmp = `${edit.file}.pagepair-edit-${process.pid}`;
  writeFileSync(tmp, edit.text);
  try {
    loadConfig(tmp);
  } catch (err) {
    try {
      renameSync(tmp, `${tmp}.refused`);
    } catch {
      // it is only a leftover
    }
    throw new PagepairError('BAD_CONFIG', `--update-config ${edit.file}: the rewritten configuration does not load (${isPagepairError(err) ? err.message : String(err)}); left unchanged, the attempt is in ${tmp}.refused`, 'update-config');
  }
  renameSync(tmp, edit.file);
}

/** A device entry as the configuration loader compares them: a path resolved against the current directory, a URI as written. */
export function deviceKey(entry: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(entry) ? entry : resolve(entry);
}

/**
 * How to write the new device into a file whose entry was `oldEntry`: a
 * URI as given; a path absolute when the old entry was, else relative to
 * the current directory (relative paths in a configuration are resolved
 * against the directory pagepair runs from: src/runtime/config.ts).
 */
export function deviceAsWritten(device: { kind: 'file'; path: string } | { kind: 'nbd'; uri: string }, oldEntry: string): string {
  if (device.kind === 'nbd') return device.uri;
  if (isAbsolute(oldEntry) || /^[a-z][a-z0-9+.-]*:\/\//i.test(oldEntry)) return device.path;
  const rel = relative(process.cwd(), device.path);
  return rel === '' || rel.startsWith('..') || isAbsolute(rel) ? device.path : rel;
}
