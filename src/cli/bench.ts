// `pagepair bench`: how far the mirrored pair runs from the fastest thing
// this machine can do, measured side by side in one run (src/bench/).

import { Command, Option } from 'commander';
import { PagepairError } from '../protocol/errors.js';
import { formatBench } from '../bench/format.js';
import { runBench } from '../bench/run.js';
import { BENCH_CONFIGS, BENCH_OPS, type BenchConfigName, type BenchOp, type BenchOptions, type BenchReport } from '../bench/types.js';
import { parseNumberInRange, parsePositiveInt, parseSize } from '../workload/units.js';

export { formatBench, runBench };
export type { BenchOptions, BenchReport };

/** The options as commander hands them over (strings, and booleans for flags). */
export interface BenchCliOptions {
  runs?: string;
  seconds?: string;
  warmup?: string;
  inflight?: string;
  ops?: string;
  configs?: string;
  block?: string;
  workingSet?: string;
  cache?: string;
  connections?: string;
  target?: string;
  journal?: boolean;
  json?: string;
  seed?: string;
  cpuProf?: string;
  quiet?: boolean;
  waitQuiet?: string;
  tls?: boolean;
}

function list(text: string, field: string): string[] {
  const items = text.split(',').map((x) => x.trim()).filter((x) => x !== '');
  if (items.length === 0) throw new PagepairError('BAD_FIELD', `${field} must be a comma-separated list, got "${text}"`, field);
  return items;
}

function oneOfList<T extends string>(text: string, field: string, allowed: readonly T[]): T[] {
  return list(text, field).map((x) => {
    if (!allowed.includes(x as T)) throw new PagepairError('BAD_FIELD', `${field}: "${x}" is not one of ${allowed.join(', ')}`, field);
    return x as T;
  });
}

/** Turns command-line strings into BenchOptions; every bad value is a BAD_FIELD naming the option. */
export function benchOptionsFromCli(raw: BenchCliOptions, progress?: (line: string) => void): BenchOptions {
  const o: BenchOptions = {};
  if (raw.runs !== undefined) o.runs = parsePositiveInt(raw.runs, 'runs', 100);
  if (raw.seconds !== undefined) o.seconds = parseNumberInRange(raw.seconds, 'seconds', 0.1, 3600);
  if (raw.warmup !== undefined) o.warmupSeconds = parseNumberInRange(raw.warmup, 'warmup', 0, 600);
  if (raw.inflight !== undefined) o.inflight = list(raw.inflight, 'inflight').map((x) => parsePositiveInt(x, 'inflight', 4096));
  if (raw.ops !== undefined) o.ops = oneOfList<BenchOp>(raw.ops, 'ops', BENCH_OPS);
  if (raw.configs !== undefined) o.configs = oneOfList<BenchConfigName>(raw.configs, 'configs', BENCH_CONFIGS);
  if (raw.block !== undefined) o.blockBytes = parseSize(raw.block, 'block');
  if (raw.workingSet !== undefined) o.workingSetBytes = parseSize(raw.workingSet, 'working-set');
  if (raw.cache !== undefined) o.cacheBytesMax = parseSize(raw.cache, 'cache');
  if (raw.connections !== undefined) o.connections = parsePositiveInt(raw.connections, 'connections', 256);
  if (raw.target !== undefined) {
    if (raw.target !== 'A' && raw.target !== 'both') throw new PagepairError('BAD_FIELD', `target must be A or both, got "${raw.target}"`, 'target');
    o.mirroredTarget = raw.target;
  }
  if (raw.journal === true) o.journal = true;
  if (raw.json !== undefined) o.json = raw.json;
  if (raw.seed !== undefined) o.seed = parsePositiveInt(raw.seed, 'seed');
  if (raw.cpuProf !== undefined) o.cpuProfDir = raw.cpuProf;
  if (raw.waitQuiet !== undefined) o.waitQuietSeconds = parseNumberInRange(raw.waitQuiet, 'wait-quiet', 0, 3600);
  if (raw.tls === true) o.tls = true;
  if (raw.quiet !== true && progress !== undefined) o.progress = progress;
  return o;
}

/** The `bench` subcommand, ready for program.addCommand(benchCommand()). Progress goes to stderr, the table to stdout. */
export function benchCommand(): Command {
  return new Command('bench')
    .description('measure the floors (ws echo, bare relay), a single controller and the mirrored pair side by side, with ratios')
    .option('--runs <n>', 'runs of every cell; medians are quoted', '3')
    .option('--seconds <s>', 'measured seconds per run', '3')
    .option('--warmup <s>', 'warm-up seconds before each run', '1')
    .option('--inflight <list>', 'operations in flight, comma-separated', '1,32')
    .option('--ops <list>', 'write, read', 'write,read')
    .option('--configs <list>', 'rows to measure: echo, relay, single, mirrored, redis (a primary and a replica, SET then WAIT 1; skipped when redis-server is not installed)', 'echo,relay,single,mirrored,redis')
    .option('--block <size>', 'bytes per read or write', '4KiB')
    .option('--working-set <size>', 'bytes the operations range over', '64MiB')
    .option('--cache <size>', "each controller's cacheBytesMax (default: 256MiB, or twice the working set)")
    .option('--connections <n>', 'connections when more than one operation is in flight', '4')
    .addOption(new Option('--target <which>', 'mirrored pair: clients talk to A, or to both (each its own allocation)').choices(['A', 'both']).default('both'))
    .option('--journal', 'add the "mirrored pair with a journal" row (not built yet: printed as a note)')
    .option('--json <file>', 'save the report (every run, medians, ratios, machine) as JSON')
    .option('--seed <n>', 'seed of the page choices', '1')
    .option('--cpu-prof <dir>', 'run the controllers under node --cpu-prof, write profiles to <dir> and summarize them')
    .option('--wait-quiet <s>', 'first wait up to <s> seconds for the machine to be under 25% busy')
    .option('--tls', 'run the controllers with tls.mode "require": clients and the peer link over TLS-PSK (the echo and relay floors stay plain)')
    .option('--quiet', 'no progress lines')
    .action(async (raw: BenchCliOptions) => {
      const report = await runBench(benchOptionsFromCli(raw, (line) => console.error(`bench: ${line}`)));
      console.log(formatBench(report));
    });
}
