// Job files: JSON with the same field names as the command-line options.
// A file holds one job (its fields at the top level) or several (a "jobs"
// object by name, with shared "defaults"). Ready jobs live in scripts/jobs/
// and are found by name.

import { existsSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PagepairError } from '../protocol/errors.js';
import { JOB_FIELDS, validateJob, type JobInput, type JobSpec } from './job.js';
import { readJsonFile } from './json-file.js';

/** scripts/jobs/ of this package; src/workload and dist/workload are both two levels down. */
export const JOBS_DIR = fileURLToPath(new URL('../../scripts/jobs/', import.meta.url));

const FILE_FIELDS = ['description', 'defaults', 'jobs'] as const;

export interface JobFileEntry {
  name: string;
  input: JobInput;
}

/** The jobs of a parsed job file, each with the file's defaults under its own fields. */
export function parseJobFile(json: unknown, source: string): JobFileEntry[] {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new PagepairError('BAD_FIELD', `${source}: a job file must hold a JSON object`, 'job');
  }
  const top = json as Record<string, unknown>;
  const fileName = basename(source).replace(/\.json$/i, '');
  if (top.jobs === undefined) {
    if (top.defaults !== undefined) throw new PagepairError('BAD_FIELD', `${source}: "defaults" needs a "jobs" object beside it`, 'defaults');
    return [{ name: fileName, input: fieldsOf(top, source, '') }];
  }
  for (const key of Object.keys(top)) {
    if (!(FILE_FIELDS as readonly string[]).includes(key)) {
      throw new PagepairError('BAD_FIELD', `${source}: ${key} is not allowed beside "jobs" (put job fields in "defaults" or in a job)`, key);
    }
  }
  const defaults = top.defaults === undefined ? {} : fieldsOf(top.defaults, source, 'defaults.');
  const jobs = top.jobs;
  if (typeof jobs !== 'object' || jobs === null || Array.isArray(jobs) || Object.keys(jobs).length === 0) {
    throw new PagepairError('BAD_FIELD', `${source}: "jobs" must be an object of named jobs`, 'jobs');
  }
  const description = typeof top.description === 'string' ? top.description : undefined;
  return Object.entries(jobs as Record<string, unknown>).map(([name, j]) => ({
    name,
    input: { ...(description !== undefined ? { description } : {}), ...defaults, ...fieldsOf(j, source, `jobs.${name}.`) },
  }));
}

function fieldsOf(v: unknown, source: string, prefix: string): JobInput {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new PagepairError('BAD_FIELD', `${source}: ${prefix || 'the job'} must be an object of job fields`, prefix.replace(/\.$/, '') || 'job');
  }
  for (const key of Object.keys(v)) {
    if (!(JOB_FIELDS as readonly string[]).includes(key)) {
      const near = JOB_FIELDS.find((f) => f.toLowerCase() === key.toLowerCase().replace(/[-_]/g, ''));
      throw new PagepairError('BAD_FIELD', `${source}: ${prefix}${key} is not a job field${near !== undefined ? ` (did you mean ${near}?)` : ''}`, key);
    }
  }
  return v as JobInput;
}

export function readJobFile(path: string): JobFileEntry[] {
  return parseJobFile(readJsonFile(path, 'job file', 'job'), path);
}

/** The names of the ready jobs in scripts/jobs/. */
export function listJobs(dir = JOBS_DIR): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => f.slice(0, -'.json'.length))
    .sort();
}

/**
 * The jobs a reference names: a ready job's name ("database") or a path to
 * a job file, either optionally ending in ":<job>" to pick one job of a
 * file that holds several; without a pick, every job of the file, in its
 * order. A job of a file with several is called "<file>-<job>" in reports.
 */
export function jobsByName(ref: string, dir = JOBS_DIR): { path: string; entries: JobFileEntry[] } {
  const m = /^(.*?)(?::([A-Za-z0-9._-]+))?$/.exec(ref);
  const where = m?.[1] ?? ref;
  const pick = m?.[2];
  const looksLikePath = where.includes('/') || where.endsWith('.json');
  const path = looksLikePath ? where : join(dir, `${where}.json`);
  if (!existsSync(path)) {
    const known = listJobs(dir);
    throw new PagepairError(
      'BAD_FIELD',
      looksLikePath ? `job file ${path} does not exist` : `no job named "${where}"; ready jobs: ${known.length > 0 ? known.join(', ') : 'none'}`,
      'job',
    );
  }
  const read = readJobFile(path);
  const fileName = basename(path).replace(/\.json$/i, '');
  const entries = read.length > 1 ? read.map((e) => ({ ...e, name: `${fileName}-${e.name}` })) : read;
  if (pick !== undefined) {
    const hit = read.findIndex((e) => e.name === pick);
    if (hit < 0) throw new PagepairError('BAD_FIELD', `${path} has no job "${pick}"; it has ${read.map((e) => e.name).join(', ')}`, 'job');
    return { path, entries: [entries[hit]!] };
  }
  return { path, entries };
}

/** One job by reference (see jobsByName); a file with several needs ":<job>". */
export function jobByName(ref: string, dir = JOBS_DIR): JobFileEntry & { path: string } {
  const { path, entries } = jobsByName(ref, dir);
  if (entries.length > 1) {
    const where = ref.replace(/:[A-Za-z0-9._-]+$/, '');
    const names = readJobFile(path).map((e) => e.name);
    throw new PagepairError('BAD_FIELD', `${path} holds several jobs; pick one as ${where}:<job> (${names.join(', ')})`, 'job');
  }
  return { ...entries[0]!, path };
}

/**
 * The job to run: a ready job or job file (optional) under command-line
 * fields (which win), checked.
 */
export function resolveJob(args: { job?: string; input?: JobInput; jobsDir?: string }): JobSpec {
  const input = args.input ?? {};
  if (args.job === undefined) return validateJob(input, { name: 'cli' });
  return checkEntry(jobByName(args.job, args.jobsDir), input);
}

/**
 * Every job to run, in order: one, or each job of a file that holds several
 * (the command-line fields win in each). All are checked before any runs.
 */
export function resolveJobs(args: { job?: string; input?: JobInput; jobsDir?: string }): JobSpec[] {
  const input = args.input ?? {};
  if (args.job === undefined) return [validateJob(input, { name: 'cli' })];
  const { path, entries } = jobsByName(args.job, args.jobsDir);
  return entries.map((e) => checkEntry({ ...e, path }, input));
}

function checkEntry(found: JobFileEntry & { path: string }, input: JobInput): JobSpec {
  try {
    return validateJob({ ...found.input, ...input }, { name: found.name });
  } catch (err) {
    if (err instanceof PagepairError && err.code === 'BAD_FIELD') {
      const fromFile = err.field !== undefined && (input as Record<string, unknown>)[err.field] === undefined;
      throw new PagepairError('BAD_FIELD', fromFile ? `${found.path} (job ${found.name}): ${err.message}` : err.message, err.field);
    }
    throw err;
  }
}
