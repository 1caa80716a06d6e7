import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, describe, expect, it } from 'vitest';
import { runKillTest } from '../../src/cli/kill-test.js';
import { isPagepairError, type PagepairError } from '../../src/protocol/errors.js';
import { loadConfig } from '../../src/runtime/config.js';
import { runWorkloadCommand } from '../../src/workload/command.js';
import { addWorkloadOptions, jobInputFromCli } from '../../src/workload/cli-options.js';
import { jobByName, listJobs, parseJobFile, resolveJob, resolveJobs } from '../../src/workload/job-file.js';
import { describeJob, grainBytes, parseBlockSizes, stripeBytes, validateJob, type JobInput } from '../../src/workload/job.js';

function refusal(input: JobInput): PagepairError {
  try {
    validateJob(input);
  } catch (err) {
    if (isPagepairError(err)) return err;
    throw err;
  }
  throw new Error(`accepted ${JSON.stringify(input)}`);
}

describe('job validation', () => {
  it('fills defaults: a 10 s 50/50 random 4 KiB mix over 64 MiB, verified, on both controllers', () => {
    const j = validateJob({});
    expect(j).toMatchObject({
      pattern: 'randrw',
      readPct: 50,
      blockSizes: [{ bytes: 4096, pct: 100 }],
      sizeBytes: 64 * 1024 * 1024,
      distribution: { kind: 'uniform' },
      inflight: 16,
      clients: 1,
      workers: 1,
      durationS: 10,
      ops: 0,
      target: 'both',
      spread: 'split',
      failover: true,
      verify: true,
      prefill: false,
      intervalMs: 1000,
    });
  });

  it.each<[string, JobInput, string, RegExp]>([
    ['a negative size', { size: '-64MiB' }, 'size', /positive/],
    ['a zero size', { size: 0 }, 'size', /positive/],
    ['a size that is not one', { size: '64 potatoes' }, 'size', /size such as/],
    ['an unknown pattern', { pattern: 'randomwrite' }, 'pattern', /one of read, write/],
    ['0 in flight', { inflight: 0 }, 'inflight', /from 1 to/],
    ['a fractional in flight', { inflight: 2.5 }, 'inflight', /whole number/],
    ['read% above 100', { readPct: 101 }, 'readPct', /from 0 to 100/],
    ['read% below 0', { readPct: -1 }, 'readPct', /from 0 to 100/],
    ['read% that contradicts the pattern', { pattern: 'randwrite', readPct: 30 }, 'readPct', /contradicts pattern randwrite/],
    ['a mix with a bad weight', { blockSize: '4k:seventy,64k:30' }, 'blockSize', /size:weight/],
    ['a mix with an empty part', { blockSize: '4k:70,,64k:30' }, 'blockSize', /size:weight/],
    ['a mix with a negative weight', { blockSize: '4k:-70,64k:30' }, 'blockSize', /positive weights/],
    ['a mix naming a size twice', { blockSize: '4k:50,4096:50' }, 'blockSize', /each size once/],
    ['a block size not a multiple of 512', { blockSize: '1000' }, 'blockSize', /multiple of 512/],
    ['an unknown distribution', { distribution: 'pareto' }, 'distribution', /uniform, zipf/],
    ['zipf without theta', { distribution: 'zipf' }, 'distribution', /theta/],
    ['zipf with theta 0', { distribution: 'zipf:0' }, 'distribution', /theta above 0/],
    ['a hotspot on 0% of the blocks', { distribution: 'hotspot:90/0' }, 'distribution', /blocks% above 0/],
    ['a hotspot without shares', { distribution: 'hotspot:90' }, 'distribution', /hotspot:<ops%>/],
    ['sequential with a random pattern', { pattern: 'randread', distribution: 'sequential' }, 'distribution', /contradicts the random pattern/],
    ['zipf with a sequential pattern', { pattern: 'write', distribution: 'zipf:0.9' }, 'distribution', /contradicts the sequential pattern/],
    ['more workers than clients', { workers: 3, clients: 2 }, 'workers', /at most clients/],
    ['a zero duration without ops', { duration: 0 }, 'duration', /above 0 unless ops/],
    ['a negative duration', { duration: '-5s' }, 'duration', /zero or more/],
    ['a negative rate', { rate: -10 }, 'rate', /from 0/],
    ['an unknown target', { target: 'C' }, 'target', /one of A, B, both/],
    ['spread without target both', { target: 'A', spread: 'round-robin' }, 'spread', /target both only/],
    ['a bad boolean', { verify: 'maybe' }, 'verify', /true or false/],
    ['a too short interval', { interval: '10ms' }, 'interval', /from 100 ms/],
    ['a working set smaller than a block', { size: '4k', blockSize: '64k' }, 'size', /less than one block/],
    ['an unknown field', { inflights: 4 } as JobInput, 'inflights', /not a job field/],
  ])('refuses %s, naming the field', (_what, input, field, message) => {
    const err = refusal(input);
    expect(err.code).toBe('BAD_FIELD');
    expect(err.field).toBe(field);
    expect(err.message).toMatch(message);
  });

  it('suggests the field a near miss meant', () => {
    expect(refusal({ read_pct: 30 } as unknown as JobInput).message).toMatch(/did you mean readPct/);
  });

  it('takes sizes and durations as text or numbers', () => {
    const j = validateJob({ size: 1 << 20, duration: '1.5m', warmup: '500ms', interval: 0.25, blockSize: 8192 });
    expect(j.sizeBytes).toBe(1 << 20);
    expect(j.durationS).toBe(90);
    expect(j.warmupS).toBe(0.5);
    expect(j.intervalMs).toBe(250);
    expect(j.blockSizes).toEqual([{ bytes: 8192, pct: 100 }]);
  });

  it('an operation count alone means no time limit; with a duration, whichever comes first', () => {
    expect(validateJob({ ops: 1000 })).toMatchObject({ ops: 1000, durationS: 0 });
    expect(validateJob({ ops: 1000, duration: 5 })).toMatchObject({ ops: 1000, durationS: 5 });
  });

  it('read-only jobs prefill by default, and the pattern sets the read share', () => {
    expect(validateJob({ pattern: 'randread' })).toMatchObject({ readPct: 100, prefill: true, distribution: { kind: 'uniform' } });
    expect(validateJob({ pattern: 'write' })).toMatchObject({ readPct: 0, prefill: false, distribution: { kind: 'sequential' } });
    expect(validateJob({ pattern: 'rw', readPct: 30 })).toMatchObject({ readPct: 30, distribution: { kind: 'sequential' } });
  });

  it('failover is on for target both and off for one controller unless asked', () => {
    expect(validateJob({ target: 'A' }).failover).toBe(false);
    expect(validateJob({ target: 'A', failover: 'true' }).failover).toBe(true);
  });

  it('transport is ws unless nbd is asked for; contend is off unless asked', () => {
    expect(validateJob({})).toMatchObject({ transport: 'ws', contend: false });
    expect(validateJob({ transport: 'nbd', contend: 'true' })).toMatchObject({ transport: 'nbd', contend: true });
    expect(describeJob(validateJob({ transport: 'nbd', contend: true }))).toMatch(/over NBD, contended blocks/);
    expect(() => validateJob({ transport: 'iscsi' })).toThrow(expect.objectContaining({ code: 'BAD_FIELD', field: 'transport' }));
  });

  it('cuts the working set into whole stripes per allocation', () => {
    const j = validateJob({ size: '10MiB', allocations: 3, blockSize: '4k:70,64k:30' });
    expect(j.sizeBytes % (3 * 65536)).toBe(0);
    expect(j.sizeBytes).toBeLessThanOrEqual(10 * 1024 * 1024);
  });
});

describe('block size mixes', () => {
  it('normalizes weights to percent and sorts by size', () => {
    expect(parseBlockSizes('64k:30,4k:70')).toEqual([
      { bytes: 4096, pct: 70 },
      { bytes: 65536, pct: 30 },
    ]);
    expect(parseBlockSizes('4k:1,8k:3')).toEqual([
      { bytes: 4096, pct: 25 },
      { bytes: 8192, pct: 75 },
    ]);
  });

  it('sizes without a weight share what the percents leave', () => {
    expect(parseBlockSizes('4k:50,8k,16k')).toEqual([
      { bytes: 4096, pct: 50 },
      { bytes: 8192, pct: 25 },
      { bytes: 16384, pct: 25 },
    ]);
  });

  it('grain and stripe: the common divisor and the common multiple', () => {
    const mix = parseBlockSizes('8k:50,12k:50');
    expect(grainBytes(mix)).toBe(4096);
    expect(stripeBytes(mix)).toBe(24576);
  });
});

describe('job files', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pagepair-jobs-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('a file with one job at the top level, named after the file', () => {
    const entries = parseJobFile({ pattern: 'randread', blockSize: '8k' }, '/x/reads.json');
    expect(entries).toEqual([{ name: 'reads', input: { pattern: 'randread', blockSize: '8k' } }]);
  });

  it('a file with defaults and named jobs; a job overrides the defaults', () => {
    const entries = parseJobFile({ defaults: { pattern: 'randwrite', inflight: 4 }, jobs: { low: {}, high: { inflight: 64 } } }, 'f.json');
    expect(entries.map((e) => [e.name, e.input.inflight, e.input.pattern])).toEqual([
      ['low', 4, 'randwrite'],
      ['high', 64, 'randwrite'],
    ]);
  });

  it('refuses unknown fields in a file, naming where', () => {
    expect(() => parseJobFile({ jobs: { a: { blocksize: '4k' } } }, 'f.json')).toThrow(/jobs\.a\.blocksize is not a job field \(did you mean blockSize\?\)/);
    expect(() => parseJobFile({ jobs: { a: {} }, pattern: 'read' }, 'f.json')).toThrow(/pattern is not allowed beside "jobs"/);
  });

  it('every ready job in scripts/jobs/ is valid and runnable by name', () => {
    const names = listJobs();
    expect(names).toEqual(expect.arrayContaining(['database', 'log-append', 'seq-read', 'hot-set']));
    for (const name of names.filter((n) => n !== 'scaling')) expect(resolveJob({ job: name }).name).toBe(name);
    expect(resolveJob({ job: 'database' })).toMatchObject({ readPct: 70, blockSizes: [{ bytes: 8192, pct: 100 }], distribution: { kind: 'zipf', theta: 0.99 }, policy: 'db-page' });
    expect(resolveJob({ job: 'log-append' })).toMatchObject({ pattern: 'write', policy: 'log', distribution: { kind: 'sequential' } });
    expect(resolveJob({ job: 'seq-read' })).toMatchObject({ pattern: 'read', prefill: true, blockSizes: [{ bytes: 1 << 20, pct: 100 }] });
    expect(resolveJob({ job: 'hot-set' })).toMatchObject({ distribution: { kind: 'hotspot', opsPct: 90, blocksPct: 10 } });
  });

  it('picks one job of a file with several, and says which there are when one job is asked for', () => {
    expect(resolveJob({ job: 'scaling:qd32' })).toMatchObject({ name: 'scaling-qd32', inflight: 32, pattern: 'randwrite' });
    expect(() => jobByName('scaling:qd64')).toThrow(/has no job "qd64"; it has qd1, qd32/);
    expect(() => jobByName('scaling')).toThrow(/holds several jobs; pick one as scaling:<job> \(qd1, qd32/);
    expect(() => jobByName('no-such-job')).toThrow(/no job named "no-such-job"; ready jobs: .*database/);
  });

  it('a file with several jobs runs them all, in order, each checked before any runs', () => {
    const jobs = resolveJobs({ job: 'scaling', input: { duration: 2 } });
    expect(jobs.map((j) => j.name)).toEqual(['scaling-qd1', 'scaling-qd32', 'scaling-qd32-2clients', 'scaling-qd32-2workers', 'scaling-read-qd32']);
    expect(jobs.every((j) => j.durationS === 2)).toBe(true);
    expect(resolveJobs({ job: 'database' }).map((j) => j.name)).toEqual(['database']);
    expect(resolveJobs({ input: { inflight: 2 } })).toMatchObject([{ name: 'cli', inflight: 2 }]);
    // One bad job refuses them all, naming the file and the job.
    expect(() => resolveJobs({ job: 'scaling', input: { workers: 2 } })).toThrow(/workers \(2\) must be at most clients \(1\)/);
  });

  it('command-line fields win over the file, and a bad file field is blamed on the file', () => {
    const path = join(dir, 'mine.json');
    writeFileSync(path, JSON.stringify({ pattern: 'randrw', inflight: 4, readPct: 20 }));
    expect(resolveJob({ job: path, input: { inflight: 32 } })).toMatchObject({ inflight: 32, readPct: 20, name: 'mine' });
    writeFileSync(path, JSON.stringify({ inflight: 0 }));
    expect(() => resolveJob({ job: path })).toThrow(new RegExp(`${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(job mine\\): inflight must be`));
  });

  it('command-line options map onto the job fields, and implied defaults do not override a file', () => {
    const cmd = addWorkloadOptions(new Command('workload').exitOverride());
    cmd.parse(['--pattern', 'randread', '-i', '8', '--block-size', '4k:70,64k:30', '--no-verify'], { from: 'user' });
    expect(jobInputFromCli(cmd.opts(), cmd)).toEqual({ pattern: 'randread', inflight: '8', blockSize: '4k:70,64k:30', verify: false });
    const quiet = addWorkloadOptions(new Command('workload').exitOverride());
    quiet.parse([], { from: 'user' });
    expect(jobInputFromCli(quiet.opts(), quiet)).toEqual({});
  });
});

describe('nonsense is refused by the option as typed, before anything starts', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pagepair-opts-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('pagepair workload names the command-line option', async () => {
    const path = join(dir, 'single.json');
    writeFileSync(path, JSON.stringify({ id: 'A', pairId: '0b5c8a52-6f0e-4c4e-9a57-3f1d1c2b9e11', secret: 'unit-test-peer-secret-0123', clientToken: 'unit-test-token', mirroring: false, listen: { client: { host: '127.0.0.1', port: 1 }, peer: { host: '127.0.0.1', port: 2 } }, store: { path: join(dir, 'never.store') } }));
    const cfg = loadConfig(path);
    const refused = async (input: JobInput): Promise<PagepairError> => {
      try {
        await runWorkloadCommand({ cfg, input, print: () => undefined, signal: new AbortController().signal });
      } catch (err) {
        if (isPagepairError(err)) return err;
        throw err;
      }
      throw new Error(`ran ${JSON.stringify(input)}`);
    };
    expect((await refused({ size: '-64MiB' })).message).toMatch(/^--size: size must be a positive/);
    expect((await refused({ pattern: 'randomwrite' })).message).toMatch(/^--pattern: pattern must be one of read/);
    expect((await refused({ inflight: 0 })).message).toMatch(/^--inflight: inflight must be a whole number from 1/);
    expect((await refused({ blockSize: '4k:70,64k:abc' })).message).toMatch(/^--block-size: blockSize must be a size or a mix/);
    expect((await refused({ readPct: 150 })).message).toMatch(/^--read-pct: /);
    expect(existsSync(join(dir, 'never.store'))).toBe(false);
  });

  it('pagepair kill-test checks its load like a job, naming its own options', async () => {
    const refused = (extra: Record<string, number>): Promise<unknown> => runKillTest({ cycles: 1, mode: 'kill', seed: 1, print: () => undefined, ...extra });
    await expect(refused({ blockBytes: 1000 })).rejects.toThrow(/^--block: blockSize must be a multiple of 512 bytes/);
    await expect(refused({ inflight: 0 })).rejects.toThrow(/^--inflight: inflight must be a whole number from 1/);
    await expect(refused({ clients: 0 })).rejects.toThrow(/^--clients: /);
    await expect(refused({ readPct: 101 })).rejects.toThrow(/^--read-pct: /);
    await expect(refused({ blocks: -5 })).rejects.toThrow(/blocks must be at least 1/);
    await expect(refused({ cycles: 0 })).rejects.toThrow(/cycles must be at least 1/);
  });
});
