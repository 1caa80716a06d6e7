// The job fields as command-line options, so `pagepair workload` and a job
// file speak the same language: each option's camelCase name is the field.
// The options carry no commander defaults on purpose: a default would
// override the job file; the defaults live in job.ts.

import { Option, type Command } from 'commander';
import type { JobInput } from './job.js';

export interface WorkloadCliOption {
  flags: string;
  /** The JobInput field the option sets. */
  field: keyof JobInput;
  description: string;
  choices?: readonly string[];
}

export const WORKLOAD_OPTIONS: readonly WorkloadCliOption[] = [
  { flags: '-p, --pattern <pattern>', field: 'pattern', description: 'read, write, rw (sequential) or randread, randwrite, randrw (default randrw)', choices: ['read', 'write', 'randread', 'randwrite', 'randrw', 'rw'] },
  { flags: '-r, --read-pct <percent>', field: 'readPct', description: 'share of reads for rw and randrw (default 50)' },
  { flags: '-b, --block-size <size|mix>', field: 'blockSize', description: 'bytes per operation, or a weighted mix such as 4k:70,64k:30 (default 4KiB)' },
  { flags: '-s, --size <bytes>', field: 'size', description: 'working set, split across the allocations (default 64MiB)' },
  { flags: '--allocations <n>', field: 'allocations', description: 'allocations the working set is split across (default 1)' },
  { flags: '--name <name>', field: 'name', description: 'base name of the allocations; an allocation of that name kept by an earlier run (--keep) is reused' },
  { flags: '--distribution <d>', field: 'distribution', description: 'uniform, zipf:<theta>, hotspot:<ops%>/<blocks%> or sequential (default: from the pattern)' },
  { flags: '-i, --inflight <n>', field: 'inflight', description: 'operations in flight per client (default 16)' },
  { flags: '--clients <n>', field: 'clients', description: 'client connections (default 1)' },
  { flags: '--workers <n>', field: 'workers', description: 'processes driving the clients, so several cores can push (default 1)' },
  { flags: '--rate <ops/s>', field: 'rate', description: 'operations per second over all clients, 0 = unlimited (default 0)' },
  { flags: '-d, --duration <time>', field: 'duration', description: 'measured time after the warm-up, e.g. 30 or 30s (default 10s, or unlimited with --ops)' },
  { flags: '--ops <n>', field: 'ops', description: 'measured operations (stops at whichever of --ops and --duration comes first)' },
  { flags: '--warmup <time>', field: 'warmup', description: 'time before the measured run, left out of the results (default 0)' },
  { flags: '--seed <n>', field: 'seed', description: 'seed of the random choices (default 1)' },
  { flags: '-t, --target <id>', field: 'target', description: 'controllers to drive: A, B or both (default both)', choices: ['A', 'B', 'both'] },
  { flags: '--spread <how>', field: 'spread', description: 'with target both: split (half the clients on each) or round-robin (each client alternates; default split)', choices: ['split', 'round-robin'] },
  { flags: '--failover <bool>', field: 'failover', description: 'retry on the other controller instead of counting an error (default: true with target both)' },
  { flags: '--transport <ws|nbd>', field: 'transport', description: "how clients reach the volumes: ws (pagepair's client protocol) or nbd (each controller's NBD export, listen.nbd; default ws)", choices: ['ws', 'nbd'] },
  { flags: '--contend', field: 'contend', description: 'let clients hit the same block at the same time (reads then only checked to name a write of their block: use with --history, whose checker judges them)' },
  { flags: '--no-verify', field: 'verify', description: 'do not check reads against the last acknowledged write' },
  { flags: '--prefill <bool>', field: 'prefill', description: 'write every block once before the measured run (default: true for read-only jobs)' },
  { flags: '--policy <name>', field: 'policy', description: 'policy of the allocations (default "default")' },
  { flags: '--keep', field: 'keep', description: 'keep the allocations afterwards (default: release them)' },
  { flags: '--flush', field: 'flush', description: 'flush the allocations to the store at the end' },
  { flags: '--interval <time>', field: 'interval', description: 'length of one progress interval and time-series step (default 1s)' },
];

/** Adds every job option to a command (e.g. `pagepair workload`). */
export function addWorkloadOptions(cmd: Command): Command {
  for (const o of WORKLOAD_OPTIONS) {
    const opt = new Option(o.flags, o.description);
    if (o.choices !== undefined) opt.choices(o.choices);
    cmd.addOption(opt);
  }
  return cmd;
}

/**
 * The job fields the user gave on the command line. With `cmd`, only values
 * that came from the command line (or the environment) count, so commander's
 * implied defaults (`--no-verify` implies verify=true) never override a job
 * file.
 */
export function jobInputFromCli(opts: Record<string, unknown>, cmd?: Pick<Command, 'getOptionValueSource'>): JobInput {
  const input: Record<string, unknown> = {};
  for (const o of WORKLOAD_OPTIONS) {
    const v = opts[o.field];
    if (v === undefined) continue;
    if (cmd !== undefined) {
      const source = cmd.getOptionValueSource(o.field);
      if (source !== 'cli' && source !== 'env') continue;
    } else if (o.field === 'verify' && v === true) {
      continue;
    }
    input[o.field] = v;
  }
  return input as JobInput;
}
