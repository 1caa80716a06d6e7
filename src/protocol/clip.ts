// Error messages often quote what the other side sent (a policy name, a
// field). Quoted input has no length of its own worth trusting, so every
// message put in an ERROR frame is clipped here first: then an ERROR always
// fits the frame's string limit and never fails to encode.

import { DEFAULT_LIMITS } from './limits.js';

/**
 * Longest ERROR message sent, in bytes of UTF-8: fits a receiver's
 * stringBytesMax at its default, with room to spare for one it tightened a little.
 */
export const ERROR_MESSAGE_BYTES_MAX = Math.min(200, DEFAULT_LIMITS.stringBytesMax);

/**
 * `text` cut to at most `bytesMax` bytes of UTF-8, at a character boundary
 * (never half a surrogate pair): a prefix of `text`.
 */
export function clipUtf8(text: string, bytesMax: number): string {
  if (text.length * 3 <= bytesMax || Buffer.byteLength(text, 'utf8') <= bytesMax) return text;
  let bytes = 0;
  let end = 0;
  while (end < text.length) {
    const unit = text.charCodeAt(end);
    const pair = unit >= 0xd800 && unit <= 0xdbff && end + 1 < text.length && isLowSurrogate(text.charCodeAt(end + 1));
    // A lone surrogate is written as U+FFFD: 3 bytes.
    const n = pair ? 4 : unit < 0x80 ? 1 : unit < 0x800 ? 2 : 3;
    if (bytes + n > bytesMax) break;
    bytes += n;
    end += pair ? 2 : 1;
  }
  return text.slice(0, end);
}

function isLowSurrogate(unit: number): boolean {
  return unit >= 0xdc00 && unit <= 0xdfff;
}

/** An ERROR frame's message, clipped to ERROR_MESSAGE_BYTES_MAX. */
export function clipErrorMessage(text: string): string {
  return clipUtf8(text, ERROR_MESSAGE_BYTES_MAX);
}
