// Sizes and durations as people type them: 4096, 4k, 64KiB, 1GiB, 1.5GB.

import { PagepairError } from '../protocol/errors.js';

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1000 ** 4,
  tib: 1024 ** 4,
};

export function parseSize(text: string, field: string): number {
  const m = /^\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m?.[2]?.toLowerCase() ?? '';
  const mult = SIZE_UNITS[unit];
  if (m === null || mult === undefined) {
    throw new PagepairError('BAD_FIELD', `${field} must be a size such as 4096, 64KiB or 1GiB, got "${text}"`, field);
  }
  const bytes = Math.round(Number(m[1]) * mult);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new PagepairError('BAD_FIELD', `${field} must be a positive size, got "${text}"`, field);
  return bytes;
}

export function parsePositiveInt(text: string, field: string, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(text);
  if (!/^\s*\d+\s*$/.test(text) || !Number.isSafeInteger(n) || n < 1 || n > max) {
    throw new PagepairError('BAD_FIELD', `${field} must be a whole number from 1 to ${max}, got "${text}"`, field);
  }
  return n;
}

export function parseNumberInRange(text: string, field: string, min: number, max: number): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n) || n < min || n > max) {
    throw new PagepairError('BAD_FIELD', `${field} must be a number from ${min} to ${max}, got "${text}"`, field);
  }
  return n;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = -1;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}
