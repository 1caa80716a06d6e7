// A workload job: what to drive, how hard, and for how long. One job comes
// from command-line options, a JSON job file, or both (the options win), and
// is checked here once, so the engine only ever sees a coherent JobSpec and a
// bad option is refused with its name before anything connects.

import { parseSize } from './units.js';
import { PagepairError } from '../protocol/errors.js';

export type Pattern = 'read' | 'write' | 'randread' | 'randwrite' | 'randrw' | 'rw';
export const PATTERNS: readonly Pattern[] = ['read', 'write', 'randread', 'randwrite', 'randrw', 'rw'];

export type Distribution =
  | { kind: 'uniform' }
  | { kind: 'zipf'; theta: number }
  /** opsPct of the operations land on the first blocksPct of the positions. */
  | { kind: 'hotspot'; opsPct: number; blocksPct: number }
  | { kind: 'sequential' };

export interface BlockSizeShare {
  bytes: number;
  /** Share of the operations, in percent; the shares of a job add up to 100. */
  pct: number;
}

export type Target = 'A' | 'B' | 'both';
/** With target both: each client alternates controllers op by op, or half the clients use each. */
export type Spread = 'round-robin' | 'split';
/** How clients reach the volumes: pagepair's WebSocket protocol, or NBD (each controller's listen.nbd). */
export type Transport = 'ws' | 'nbd';

/** A checked job, every default filled in. */
export interface JobSpec {
  name: string;
  description: string;
  pattern: Pattern;
  /** Share of reads, 0..100 (100 for read patterns, 0 for write patterns). */
  readPct: number;
  blockSizes: BlockSizeShare[];
  /** The working set, split evenly across the allocations. */
  sizeBytes: number;
  allocations: number;
  /** Base name of the allocations; given, an allocation of that name left by an earlier run (--keep) is reused. */
  allocationName: string | null;
  distribution: Distribution;
  /** Operations in flight per client connection. */
  inflight: number;
  clients: number;
  /** Processes driving the clients (1: this process). */
  workers: number;
  /** Operations per second over all clients; 0 = as fast as the pair answers. */
  rateOpsPerSec: number;
  /** Measured time after the warm-up; 0 = until `ops` operations (both 0, never from validateJob: until the caller stops the run). */
  durationS: number;
  /** Measured operations; 0 = until `durationS`. */
  ops: number;
  warmupS: number;
  seed: number;
  target: Target;
  spread: Spread;
  /** Retry on the other controller (PairClient) instead of counting an error. */
  failover: boolean;
  transport: Transport;
  /**
   * Let operations of different clients hit the same block at the same
   * time (by default one operation per block at a time, so every read has
   * one right answer). Reads are then only checked to name a write of their
   * block; whether they may see it is the history checker's call (--history).
   */
  contend: boolean;
  verify: boolean;
  /** Write every block once before the measured run (not counted). */
  prefill: boolean;
  policy: string;
  /** Keep the allocations afterwards (default: release them). */
  keep: boolean;
  /** Flush the allocations to the store at the end (not counted). */
  flush: boolean;
  /** Length of one interval of the time series and of the live progress. */
  intervalMs: number;
}

/**
 * A job as a file or the command line spells it: sizes and durations as
 * text ("64MiB", "30s") or numbers (bytes, seconds). Field names are the
 * long option names in camelCase.
 */
export interface JobInput {
  description?: string;
  pattern?: string;
  readPct?: number | string;
  blockSize?: number | string;
  size?: number | string;
  allocations?: number | string;
  name?: string;
  distribution?: string;
  inflight?: number | string;
  clients?: number | string;
  workers?: number | string;
  rate?: number | string;
  duration?: number | string;
  ops?: number | string;
  warmup?: number | string;
  seed?: number | string;
  target?: string;
  spread?: string;
  failover?: boolean | string;
  transport?: string;
  contend?: boolean | string;
  verify?: boolean | string;
  prefill?: boolean | string;
  policy?: string;
  keep?: boolean | string;
  flush?: boolean | string;
  interval?: number | string;
}

export const JOB_FIELDS: readonly (keyof JobInput)[] = [
  'description',
  'pattern',
  'readPct',
  'blockSize',
  'size',
  'allocations',
  'name',
  'distribution',
  'inflight',
  'clients',
  'workers',
  'rate',
  'duration',
  'ops',
  'warmup',
  'seed',
  'target',
  'spread',
  'failover',
  'transport',
  'contend',
  'verify',
  'prefill',
  'policy',
  'keep',
  'flush',
  'interval',
];

export const JOB_LIMITS = Object.freeze({
  inflightMax: 4096,
  clientsMax: 1024,
  workersMax: 64,
  allocationsMax: 4096,
  blockBytesMin: 512,
  /** The client's hard ceiling on one request (protocol HARD_LIMITS.requestBytesMax). */
  blockBytesMax: 32 * 1024 * 1024,
  /** A mix whose sizes share no stripe below this is refused (see stripeBytes). */
  stripeBytesMax: 64 * 1024 * 1024,
  durationSMax: 7 * 86_400,
  intervalMsMin: 100,
  intervalMsMax: 60_000,
  zipfThetaMax: 10,
});

export const JOB_DEFAULTS = Object.freeze({
  pattern: 'randrw' as Pattern,
  readPct: 50,
  blockSize: '4KiB',
  size: '64MiB',
  allocations: 1,
  inflight: 16,
  clients: 1,
  workers: 1,
  rate: 0,
  durationS: 10,
  warmupS: 0,
  seed: 1,
  target: 'both' as Target,
  spread: 'split' as Spread,
  policy: 'default',
  intervalMs: 1000,
});

// ------------------------------------------------------------ field parsers

function bad(field: string, what: string, got: unknown): PagepairError {
  const shown = typeof got === 'string' ? `"${got}"` : JSON.stringify(got);
  return new PagepairError('BAD_FIELD', `${field} must be ${what}, got ${shown}`, field);
}

/** A size in bytes: a number, or text such as 4096, 4k, 64KiB, 1.5GiB. Negative and zero are refused. */
export function parseSizeField(v: unknown, field: string): number {
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v <= 0) throw bad(field, 'a positive whole number of bytes', v);
    return v;
  }
  if (typeof v !== 'string') throw bad(field, 'a size such as 4096, 64KiB or 1GiB', v);
  return parseSize(v, field);
}

const DURATION_UNITS: Record<string, number> = { '': 1, s: 1, ms: 0.001, m: 60, min: 60, h: 3600 };

/** Seconds: a number, or text such as 30, 30s, 500ms, 2m, 1h. */
export function parseDurationField(v: unknown, field: string): number {
  let s: number;
  if (typeof v === 'number') s = v;
  else if (typeof v === 'string') {
    const m = /^\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(v);
    const mult = DURATION_UNITS[(m?.[2] ?? '').toLowerCase()];
    if (m === null || mult === undefined) throw bad(field, 'a duration such as 30, 30s, 500ms or 2m', v);
    s = Number(m[1]) * mult;
  } else throw bad(field, 'a duration such as 30, 30s, 500ms or 2m', v);
  if (!Number.isFinite(s) || s < 0) throw bad(field, 'a duration of zero or more', v);
  if (s > JOB_LIMITS.durationSMax) throw bad(field, `at most ${JOB_LIMITS.durationSMax} s`, v);
  return s;
}

function parseNumberField(v: unknown, field: string, min: number, max: number, integer: boolean): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
  const kind = integer ? 'a whole number' : 'a number';
  if (!Number.isFinite(n) || (integer && !Number.isSafeInteger(n)) || n < min || n > max) {
    throw bad(field, `${kind} from ${min} to ${max}`, v);
  }
  return n;
}

function parseBoolField(v: unknown, field: string): boolean {
  if (typeof v === 'boolean') return v;
  if (v === 'true' || v === 'on' || v === 'yes' || v === '1') return true;
  if (v === 'false' || v === 'off' || v === 'no' || v === '0') return false;
  throw bad(field, 'true or false', v);
}

function parseEnumField<T extends string>(v: unknown, field: string, values: readonly T[]): T {
  if (typeof v !== 'string' || !values.includes(v as T)) throw bad(field, `one of ${values.join(', ')}`, v);
  return v as T;
}

function parseStringField(v: unknown, field: string): string {
  if (typeof v !== 'string' || v.length === 0) throw bad(field, 'a non-empty string', v);
  return v;
}

/**
 * One size ("4k") or a weighted mix ("4k:70,64k:30"). Weights are relative
 * and normalized to percent; a size without a weight shares what is left.
 */
export function parseBlockSizes(v: unknown, field = 'blockSize'): BlockSizeShare[] {
  if (typeof v === 'number') return [{ bytes: checkBlockBytes(parseSizeField(v, field), field, v), pct: 100 }];
  if (typeof v !== 'string' || v.trim() === '') throw bad(field, 'a size or a mix such as 4k:70,64k:30', v);
  const parts = v.split(',').map((p) => p.trim());
  const raw: { bytes: number; weight: number | null }[] = [];
  for (const part of parts) {
    const m = /^([^:]+?)(?::\s*(-?\d+(?:\.\d+)?))?$/.exec(part);
    if (m === null || part === '') throw bad(field, 'a size or a mix such as 4k:70,64k:30 (size:weight, comma separated)', v);
    const bytes = checkBlockBytes(parseSizeField(m[1]!, field), field, v);
    const weight = m[2] === undefined ? null : Number(m[2]);
    if (weight !== null && (!Number.isFinite(weight) || weight <= 0)) throw bad(field, 'a mix with positive weights (e.g. 4k:70,64k:30)', v);
    if (raw.some((r) => r.bytes === bytes)) throw bad(field, 'a mix naming each size once', v);
    raw.push({ bytes, weight });
  }
  const given = raw.reduce((s, r) => s + (r.weight ?? 0), 0);
  const unweighted = raw.filter((r) => r.weight === null).length;
  let shares: BlockSizeShare[];
  if (unweighted === 0) {
    shares = raw.map((r) => ({ bytes: r.bytes, pct: (r.weight! * 100) / given }));
  } else {
    // Beside sizes without a weight, the weights are percents and the others share the rest.
    if (given >= 100) throw bad(field, 'a mix whose percents leave a share for the sizes without one', v);
    const rest = (100 - given) / unweighted;
    shares = raw.map((r) => ({ bytes: r.bytes, pct: r.weight ?? rest }));
  }
  return shares.sort((a, b) => a.bytes - b.bytes);
}

function checkBlockBytes(bytes: number, field: string, got: unknown): number {
  if (bytes < JOB_LIMITS.blockBytesMin || bytes % JOB_LIMITS.blockBytesMin !== 0) {
    throw bad(field, `a multiple of ${JOB_LIMITS.blockBytesMin} bytes`, got);
  }
  if (bytes > JOB_LIMITS.blockBytesMax) throw bad(field, `at most ${JOB_LIMITS.blockBytesMax} bytes`, got);
  return bytes;
}

/** uniform, zipf:<theta>, hotspot:<ops%>/<blocks%>, sequential. */
export function parseDistribution(v: unknown, field = 'distribution'): Distribution {
  if (typeof v !== 'string') throw bad(field, 'uniform, zipf:<theta>, hotspot:<ops%>/<blocks%> or sequential', v);
  const text = v.trim().toLowerCase();
  if (text === 'uniform' || text === 'random') return { kind: 'uniform' };
  if (text === 'sequential' || text === 'seq') return { kind: 'sequential' };
  const zipf = /^zipf(?::(.*))?$/.exec(text);
  if (zipf !== null) {
    const theta = zipf[1] === undefined ? NaN : Number(zipf[1]);
    if (!Number.isFinite(theta) || theta <= 0 || theta > JOB_LIMITS.zipfThetaMax) {
      throw bad(field, `zipf:<theta> with theta above 0 and at most ${JOB_LIMITS.zipfThetaMax} (e.g. zipf:0.99)`, v);
    }
    return { kind: 'zipf', theta };
  }
  const hot = /^hotspot(?::(.*))?$/.exec(text);
  if (hot !== null) {
    const m = /^(\d+(?:\.\d+)?)\/(\d+(?:\.\d+)?)$/.exec(hot[1] ?? '');
    const opsPct = m === null ? NaN : Number(m[1]);
    const blocksPct = m === null ? NaN : Number(m[2]);
    if (!(opsPct >= 0 && opsPct <= 100 && blocksPct > 0 && blocksPct < 100)) {
      throw bad(field, 'hotspot:<ops%>/<blocks%> with ops% in 0..100 and blocks% above 0 and below 100 (e.g. hotspot:90/10)', v);
    }
    return { kind: 'hotspot', opsPct, blocksPct };
  }
  throw bad(field, 'uniform, zipf:<theta>, hotspot:<ops%>/<blocks%> or sequential', v);
}

export function formatDistribution(d: Distribution): string {
  switch (d.kind) {
    case 'zipf':
      return `zipf:${d.theta}`;
    case 'hotspot':
      return `hotspot:${d.opsPct}/${d.blocksPct}`;
    default:
      return d.kind;
  }
}

export function formatBlockSizes(shares: readonly BlockSizeShare[]): string {
  const size = (b: number): string =>
    b % (1024 * 1024) === 0 ? `${b / (1024 * 1024)}m` : b % 1024 === 0 ? `${b / 1024}k` : String(b);
  if (shares.length === 1) return size(shares[0]!.bytes);
  return shares.map((s) => `${size(s.bytes)}:${Math.round(s.pct * 100) / 100}`).join(',');
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

/** The smallest unit every operation's size is a whole number of (the verification grain). */
export function grainBytes(shares: readonly BlockSizeShare[]): number {
  return shares.reduce((g, s) => gcd(g, s.bytes), 0);
}

/**
 * The smallest length every size divides: allocations and each worker's part
 * are whole stripes, so an operation aligned to its own size never crosses
 * either boundary.
 */
export function stripeBytes(shares: readonly BlockSizeShare[]): number {
  return shares.reduce((l, s) => (l / gcd(l, s.bytes)) * s.bytes, 1);
}

// ------------------------------------------------------------ the job

function isSequential(p: Pattern): boolean {
  return p === 'read' || p === 'write' || p === 'rw';
}

/**
 * Checks a job and fills its defaults; `name` is the job's name (reports
 * and allocation names carry it). Errors name the field; resolveJob adds
 * the file a bad field came from.
 */
export function validateJob(input: JobInput, opts: { name?: string } = {}): JobSpec {
  for (const key of Object.keys(input)) {
    if (!(JOB_FIELDS as readonly string[]).includes(key)) {
      const near = JOB_FIELDS.find((f) => f.toLowerCase() === key.toLowerCase().replace(/[-_]/g, ''));
      throw new PagepairError('BAD_FIELD', `${key} is not a job field${near !== undefined ? ` (did you mean ${near}?)` : ''}`, key);
    }
  }
  const has = (k: keyof JobInput): boolean => input[k] !== undefined;

  const pattern = has('pattern') ? parseEnumField(input.pattern, 'pattern', PATTERNS) : JOB_DEFAULTS.pattern;
  let readPct: number;
  const readPctGiven = has('readPct') ? parseNumberField(input.readPct, 'readPct', 0, 100, false) : null;
  if (pattern === 'read' || pattern === 'randread' || pattern === 'write' || pattern === 'randwrite') {
    const implied = pattern === 'read' || pattern === 'randread' ? 100 : 0;
    if (readPctGiven !== null && readPctGiven !== implied) {
      throw new PagepairError('BAD_FIELD', `readPct ${readPctGiven} contradicts pattern ${pattern} (${implied}% reads); use randrw or rw for a mix`, 'readPct');
    }
    readPct = implied;
  } else {
    readPct = readPctGiven ?? JOB_DEFAULTS.readPct;
  }

  const blockSizes = parseBlockSizes(has('blockSize') ? input.blockSize : JOB_DEFAULTS.blockSize);
  const stripe = stripeBytes(blockSizes);
  if (stripe > JOB_LIMITS.stripeBytesMax) {
    throw new PagepairError(
      'BAD_FIELD',
      `blockSize: the sizes of the mix have no common multiple up to ${JOB_LIMITS.stripeBytesMax} bytes; use sizes that divide one another (e.g. 4k:70,64k:30)`,
      'blockSize',
    );
  }
  const sizeBytes = parseSizeField(has('size') ? input.size : JOB_DEFAULTS.size, 'size');
  const allocations = has('allocations') ? parseNumberField(input.allocations, 'allocations', 1, JOB_LIMITS.allocationsMax, true) : JOB_DEFAULTS.allocations;

  let distribution: Distribution;
  if (has('distribution')) {
    distribution = parseDistribution(input.distribution);
    if (isSequential(pattern) !== (distribution.kind === 'sequential')) {
      throw new PagepairError(
        'BAD_FIELD',
        isSequential(pattern)
          ? `distribution ${formatDistribution(distribution)} contradicts the sequential pattern ${pattern}; use randread, randwrite or randrw`
          : `distribution sequential contradicts the random pattern ${pattern}; use read, write or rw`,
        'distribution',
      );
    }
  } else {
    distribution = isSequential(pattern) ? { kind: 'sequential' } : { kind: 'uniform' };
  }

  const inflight = has('inflight') ? parseNumberField(input.inflight, 'inflight', 1, JOB_LIMITS.inflightMax, true) : JOB_DEFAULTS.inflight;
  const clients = has('clients') ? parseNumberField(input.clients, 'clients', 1, JOB_LIMITS.clientsMax, true) : JOB_DEFAULTS.clients;
  const workers = has('workers') ? parseNumberField(input.workers, 'workers', 1, JOB_LIMITS.workersMax, true) : JOB_DEFAULTS.workers;
  if (workers > clients) {
    throw new PagepairError('BAD_FIELD', `workers (${workers}) must be at most clients (${clients}): each worker drives at least one client`, 'workers');
  }
  const rateOpsPerSec = has('rate') ? parseNumberField(input.rate, 'rate', 0, 100_000_000, false) : JOB_DEFAULTS.rate;
  const ops = has('ops') ? parseNumberField(input.ops, 'ops', 0, Number.MAX_SAFE_INTEGER, true) : 0;
  let durationS = has('duration') ? parseDurationField(input.duration, 'duration') : ops > 0 ? 0 : JOB_DEFAULTS.durationS;
  if (durationS === 0 && ops === 0) {
    throw new PagepairError('BAD_FIELD', 'duration must be above 0 unless ops gives a number of operations', 'duration');
  }
  if (durationS > 0 && durationS < 0.1) throw bad('duration', 'at least 0.1 s', input.duration);
  durationS = Math.round(durationS * 1000) / 1000;
  const warmupS = has('warmup') ? parseDurationField(input.warmup, 'warmup') : JOB_DEFAULTS.warmupS;
  const seed = has('seed') ? parseNumberField(input.seed, 'seed', 0, 0xffff_ffff, true) : JOB_DEFAULTS.seed;
  const target = has('target') ? parseEnumField<Target>(input.target, 'target', ['A', 'B', 'both']) : JOB_DEFAULTS.target;
  const spread = has('spread') ? parseEnumField<Spread>(input.spread, 'spread', ['round-robin', 'split']) : JOB_DEFAULTS.spread;
  if (has('spread') && target !== 'both') {
    throw new PagepairError('BAD_FIELD', `spread applies to target both only (target is ${target})`, 'spread');
  }
  const failover = has('failover') ? parseBoolField(input.failover, 'failover') : target === 'both';
  const transport = has('transport') ? parseEnumField<Transport>(input.transport, 'transport', ['ws', 'nbd']) : 'ws';
  const contend = has('contend') ? parseBoolField(input.contend, 'contend') : false;
  const verify = has('verify') ? parseBoolField(input.verify, 'verify') : true;
  const prefill = has('prefill') ? parseBoolField(input.prefill, 'prefill') : readPct === 100;
  const policy = has('policy') ? parseStringField(input.policy, 'policy') : JOB_DEFAULTS.policy;
  const keep = has('keep') ? parseBoolField(input.keep, 'keep') : false;
  const flush = has('flush') ? parseBoolField(input.flush, 'flush') : false;
  const intervalS = has('interval') ? parseDurationField(input.interval, 'interval') : JOB_DEFAULTS.intervalMs / 1000;
  const intervalMs = Math.round(intervalS * 1000);
  if (intervalMs < JOB_LIMITS.intervalMsMin || intervalMs > JOB_LIMITS.intervalMsMax) {
    throw bad('interval', `from ${JOB_LIMITS.intervalMsMin} ms to ${JOB_LIMITS.intervalMsMax / 1000} s`, input.interval);
  }
  const allocationName = has('name') ? parseStringField(input.name, 'name') : null;
  if (allocationName !== null && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/.test(allocationName)) {
    throw bad('name', "letters, digits, '.', '_' or '-', starting with a letter or digit", allocationName);
  }
  const description = has('description') ? String(input.description) : '';

  // The working set is cut into whole stripes per allocation, and a worker
  // needs at least one stripe of its own.
  const perAllocation = Math.floor(sizeBytes / allocations / stripe) * stripe;
  if (perAllocation < stripe) {
    throw new PagepairError(
      'BAD_FIELD',
      `size ${sizeBytes} bytes over ${allocations} allocation(s) leaves less than one block of ${stripe} bytes each`,
      'size',
    );
  }
  if ((perAllocation * allocations) / stripe < workers) {
    throw new PagepairError('BAD_FIELD', `size is too small for ${workers} workers: each needs at least ${stripe} bytes of its own`, 'workers');
  }

  return {
    name: opts.name ?? 'job',
    description,
    pattern,
    readPct,
    blockSizes,
    sizeBytes: perAllocation * allocations,
    allocations,
    allocationName,
    distribution,
    inflight,
    clients,
    workers,
    rateOpsPerSec,
    durationS,
    ops,
    warmupS,
    seed,
    target,
    spread,
    failover,
    transport,
    contend,
    verify,
    prefill,
    policy,
    keep,
    flush,
    intervalMs,
  };
}

/** One line that says what a job does, for progress output and chart titles. */
export function describeJob(job: JobSpec): string {
  const mix = job.readPct === 100 ? 'reads' : job.readPct === 0 ? 'writes' : `${job.readPct}% reads`;
  // Neither a time nor a count: a caller (the kill test) stops the run.
  const length =
    job.ops > 0 ? `${job.ops} ops${job.durationS > 0 ? ` or ${job.durationS} s` : ''}` : job.durationS > 0 ? `${job.durationS} s` : 'until stopped';
  return (
    `${job.pattern} ${formatBlockSizes(job.blockSizes)} (${mix}), ${formatDistribution(job.distribution)}, ` +
    `${job.clients} client(s) x ${job.inflight} in flight${job.workers > 1 ? ` in ${job.workers} workers` : ''}, ` +
    `target ${job.target}${job.target === 'both' ? ` (${job.spread})` : ''}${job.transport === 'nbd' ? ' over NBD' : ''}${job.contend ? ', contended blocks' : ''}, ${length}` +
    (job.warmupS > 0 ? ` after ${job.warmupS} s warm-up` : '') +
    (job.rateOpsPerSec > 0 ? `, at most ${job.rateOpsPerSec} ops/s` : '')
  );
}
