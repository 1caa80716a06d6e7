// Just enough of Redis's wire protocol (RESP2) for the bench's Redis row:
// commands go out as arrays of bulk strings, replies come back as simple
// strings, errors, integers, bulk strings and arrays. The encoder and the
// parser are pure functions of bytes, so they are tested without a server.

export type RespValue = string | number | Buffer | null | RespError | RespValue[];

/** A `-ERR ...` reply: a value, not a thrown error, so a reply in an array stays in place. */
export class RespError {
  constructor(readonly message: string) {}
}

const CRLF = Buffer.from('\r\n');

/** `*N\r\n` then `$len\r\narg\r\n` per argument. */
export function encodeCommand(args: readonly (string | Buffer)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = typeof arg === 'string' ? Buffer.from(arg) : arg;
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, CRLF);
  }
  return Buffer.concat(parts);
}

const WAIT_ONE_FOREVER = encodeCommand(['WAIT', '1', '0']);

/**
 * SET key value then WAIT 1 0, in one buffer: the same bytes as the two
 * commands encoded one after the other, made with one allocation and one
 * copy of the value (the client sends one of these per write).
 */
export function encodeSetAndWait(key: string, value: Buffer): Buffer {
  const keyBytes = Buffer.byteLength(key);
  const head = `*3\r\n$3\r\nSET\r\n$${keyBytes}\r\n${key}\r\n$${value.length}\r\n`;
  const headBytes = Buffer.byteLength(head);
  const out = Buffer.allocUnsafe(headBytes + value.length + 2 + WAIT_ONE_FOREVER.length);
  out.write(head, 0);
  value.copy(out, headBytes);
  out[headBytes + value.length] = 0x0d;
  out[headBytes + value.length + 1] = 0x0a;
  WAIT_ONE_FOREVER.copy(out, headBytes + value.length + 2);
  return out;
}

/** Bytes a reply is allowed to take before the parser calls the stream broken. */
const BULK_BYTES_MAX = 512 * 1024 * 1024;

export class RespProtocolError extends Error {}

/**
 * Feeds bytes as they arrive and hands back every reply completed so far;
 * a reply split across chunks waits for the rest.
 */
export class RespParser {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): RespValue[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: RespValue[] = [];
    let at = 0;
    for (;;) {
      const r = parseValue(this.buf, at);
      if (r === null) break;
      out.push(r.value);
      at = r.next;
    }
    this.buf = at === this.buf.length ? Buffer.alloc(0) : this.buf.subarray(at);
    return out;
  }

  /** Bytes received that do not yet make a whole reply. */
  get pendingBytes(): number {
    return this.buf.length;
  }
}

/** One value starting at `at`, or null when the bytes end before it does. */
export function parseValue(buf: Buffer, at: number): { value: RespValue; next: number } | null {
  if (at >= buf.length) return null;
  const eol = buf.indexOf(CRLF, at + 1);
  if (eol < 0) return null;
  const type = buf[at];
  const next = eol + 2;
  switch (type) {
    case 0x2b: // +
      return { value: buf.toString('latin1', at + 1, eol), next };
    case 0x2d: // -
      return { value: new RespError(buf.toString('latin1', at + 1, eol)), next };
    case 0x3a: // :
      return { value: integer(buf, at + 1, eol), next };
    case 0x24: {
      // $
      const len = integer(buf, at + 1, eol);
      if (len === -1) return { value: null, next };
      if (len < 0 || len > BULK_BYTES_MAX) throw new RespProtocolError(`bad bulk length ${len}`);
      if (buf.length < next + len + 2) return null;
      if (buf[next + len] !== 0x0d || buf[next + len + 1] !== 0x0a) throw new RespProtocolError('bulk string not followed by CRLF');
      return { value: Buffer.from(buf.subarray(next, next + len)), next: next + len + 2 };
    }
    case 0x2a: {
      // *
      const count = integer(buf, at + 1, eol);
      if (count === -1) return { value: null, next };
      if (count < 0) throw new RespProtocolError(`bad array length ${count}`);
      const items: RespValue[] = [];
      let pos = next;
      for (let i = 0; i < count; i++) {
        const r = parseValue(buf, pos);
        if (r === null) return null;
        items.push(r.value);
        pos = r.next;
      }
      return { value: items, next: pos };
    }
    default:
      throw new RespProtocolError(`unknown reply type 0x${(type ?? 0).toString(16)}`);
  }
}

/** The integer written in buf[start, end): an optional minus, then at least one digit. */
function integer(buf: Buffer, start: number, end: number): number {
  const negative = buf[start] === 0x2d;
  let i = negative ? start + 1 : start;
  const bad = (): RespProtocolError => new RespProtocolError(`not a safe integer: ${JSON.stringify(buf.toString('latin1', start, end))}`);
  if (i >= end) throw bad();
  let n = 0;
  for (; i < end; i++) {
    const d = buf[i]! - 0x30;
    if (d < 0 || d > 9) throw bad();
    n = n * 10 + d;
  }
  if (!Number.isSafeInteger(n)) throw bad();
  return negative ? -n : n;
}
