// Policies: named rules that tie a typical data-structure size to the page
// size an allocation is cut into. A few are built in; a controller's
// configuration may add more but not redefine these, so that a name means the
// same thing on both controllers of every pair.

import { PagepairError } from '../protocol/errors.js';

export interface Policy {
  name: string;
  /** Typical size of one structure the client keeps in such an allocation. */
  dataStructureBytes: number;
  pageSizeBytes: number;
  description: string;
}

/** A policy as a configuration gives it: description optional. */
export interface PolicyInput {
  name: string;
  dataStructureBytes: number;
  pageSizeBytes: number;
  description?: string;
}

export const PAGE_SIZE_BYTES_MIN = 512;
export const PAGE_SIZE_BYTES_MAX = 1024 * 1024;
/** Longest policy name: what an allocation-table entry holds (store/layout.ts POLICY_BYTES_MAX). */
export const POLICY_NAME_BYTES_MAX = 32;
export const DATA_STRUCTURE_BYTES_MAX = 1024 * 1024 * 1024;
/** Most pages in one allocation: the table stores the count as a u32. */
export const PAGE_COUNT_MAX = 0xffff_ffff;

const KiB = 1024;
const MiB = 1024 * KiB;

export const DEFAULT_POLICY_NAME = 'default';

export const BUILTIN_POLICIES: readonly Readonly<Policy>[] = Object.freeze(
  [
    { name: 'default', dataStructureBytes: 4 * KiB, pageSizeBytes: 4 * KiB, description: 'general purpose, 4 KiB pages' },
    { name: 'db-page', dataStructureBytes: 8 * KiB, pageSizeBytes: 8 * KiB, description: 'database pages of 8 KiB' },
    { name: 'log', dataStructureBytes: 64 * KiB, pageSizeBytes: 64 * KiB, description: 'sequential log segments' },
    { name: 'bulk', dataStructureBytes: 1 * MiB, pageSizeBytes: 1 * MiB, description: 'large sequential buffers' },
    { name: 'checkpoint', dataStructureBytes: 256 * KiB, pageSizeBytes: 256 * KiB, description: 'checkpoint regions written whole' },
    { name: 'small-object', dataStructureBytes: 512, pageSizeBytes: 4 * KiB, description: 'many small records packed into 4 KiB pages' },
  ].map((p) => Object.freeze(p)),
);

// ASCII only, so a name's length is its byte length.
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

export function isValidPageSize(pageSizeBytes: number): boolean {
  return isPowerOfTwo(pageSizeBytes) && pageSizeBytes >= PAGE_SIZE_BYTES_MIN && pageSizeBytes <= PAGE_SIZE_BYTES_MAX;
}

function bad(field: string, what: string, got: unknown): PagepairError {
  return new PagepairError('BAD_CONFIG', `${field} must be ${what}, got ${JSON.stringify(got)}`, field);
}

/** Checks one policy; `field` names it in errors (e.g. `policies[2]`). */
export function validatePolicy(p: PolicyInput, field: string): Policy {
  const { name, dataStructureBytes, pageSizeBytes, description } = p;
  if (typeof name !== 'string' || !NAME_RE.test(name) || name.length > POLICY_NAME_BYTES_MAX) {
    throw bad(`${field}.name`, `letters, digits, '.', '_' or '-' (starting with a letter or digit), at most ${POLICY_NAME_BYTES_MAX} bytes`, name);
  }
  if (!Number.isSafeInteger(dataStructureBytes) || dataStructureBytes < 1 || dataStructureBytes > DATA_STRUCTURE_BYTES_MAX) {
    throw bad(`${field}.dataStructureBytes`, `an integer in 1..${DATA_STRUCTURE_BYTES_MAX}`, dataStructureBytes);
  }
  if (!isValidPageSize(pageSizeBytes)) {
    throw bad(`${field}.pageSizeBytes`, `a power of two in ${PAGE_SIZE_BYTES_MIN}..${PAGE_SIZE_BYTES_MAX}`, pageSizeBytes);
  }
  if (description !== undefined && typeof description !== 'string') {
    throw bad(`${field}.description`, 'a string', description);
  }
  return { name, dataStructureBytes, pageSizeBytes, description: description ?? '' };
}

/** Built-in policies plus the user's, by name. A user policy may add a name,
 *  never reuse one (BAD_CONFIG naming `policies[i].name`). */
export function resolvePolicies(user: readonly PolicyInput[]): Map<string, Policy> {
  const out = new Map<string, Policy>(BUILTIN_POLICIES.map((p) => [p.name, { ...p }]));
  user.forEach((raw, i) => {
    const p = validatePolicy(raw, `policies[${i}]`);
    if (out.has(p.name)) {
      const builtin = BUILTIN_POLICIES.some((b) => b.name === p.name);
      throw new PagepairError(
        'BAD_CONFIG',
        `policies[${i}].name must be a new name: ${JSON.stringify(p.name)} is ${builtin ? 'a built-in policy' : 'defined twice'}`,
        `policies[${i}].name`,
      );
    }
    out.set(p.name, p);
  });
  return out;
}

/** Pages an allocation of sizeBytes needs under policy. Throws BAD_FIELD for a
 *  size that is not a non-negative integer and TOO_LARGE past PAGE_COUNT_MAX. */
export function pageCountFor(policy: Pick<Policy, 'pageSizeBytes' | 'name'>, sizeBytes: number): number {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
    throw new PagepairError('BAD_FIELD', `sizeBytes must be a non-negative integer, got ${sizeBytes}`, 'sizeBytes');
  }
  const pages = Math.ceil(sizeBytes / policy.pageSizeBytes);
  if (pages > PAGE_COUNT_MAX) {
    throw new PagepairError('TOO_LARGE', `${sizeBytes} bytes under policy ${policy.name} is ${pages} pages, more than ${PAGE_COUNT_MAX}`, 'sizeBytes');
  }
  return pages;
}
