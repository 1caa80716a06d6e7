// The `pagepair` command.

import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import { loadConfig } from '../runtime/config.js';
import { startController } from '../runtime/controller-process.js';
import { EscapeGuard } from '../runtime/escape-guard.js';
import { createLogger } from '../runtime/logger.js';
import { CHECK_EXIT, runCheck } from './check.js';
import { killTestCommand } from './kill-test.js';
import { NBD_TLS_IDENTITY_HELP, NBD_TLS_PSK_FILE_HELP, nbdTlsChoice } from './nbd-tls.js';
import { runPair } from './pair.js';
import { CLIENT_TLS_HELP, clientView, fetchStatus, formatStatus } from './status.js';
import { parsePositiveInt } from '../workload/units.js';
import { addWorkloadOptions, jobInputFromCli } from '../workload/cli-options.js';
import { partnerConfigFor, runWorkloadCommand } from '../workload/command.js';
import { listJobs } from '../workload/job-file.js';
import { runReport } from './report.js';
import { benchCommand } from './bench.js';
import { volumeCommand } from './volume.js';
import { nbdKillTestCommand } from './nbd-kill-test.js';
import { verifyCommand } from './verify.js';
import { attachCommand } from './attach.js';
import { attachKillTestCommand } from './attach-kill-test.js';
import { poolCommand } from './pool.js';
import { deviceCommand } from './device.js';
import { scrubCommand } from './scrub.js';
import { regionCommand } from './region.js';
import { snapshotCommand } from './snapshot.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const program = new Command('pagepair')
  .description('A fault-tolerant paging manager for a redundant pair of storage controllers.')
  .version(pkg.version)
  .showHelpAfterError('(run with --help for usage)');

program
  .command('start')
  .description('run one controller in the foreground until SIGINT/SIGTERM')
  .requiredOption('-c, --config <file>', "the controller's configuration (JSON)")
  .option('--log-level <level>', 'override log.level from the configuration')
  .action(async (opts: { config: string; logLevel?: string }) => {
    const cfg = loadConfig(opts.config);
    if (opts.logLevel !== undefined) cfg.log.level = opts.logLevel as typeof cfg.log.level;
    const log = createLogger(cfg.log, { controller: cfg.idLetter });
    let running: Awaited<ReturnType<typeof startController>> | null = null;
    const die = (what: string, err: unknown): void => {
      log.fatal({ err: err instanceof Error ? err.stack : String(err) }, `${what}; exiting`);
      // The partner hears it at once instead of waiting for our silence to time out.
      try {
        running?.announceCrash();
      } catch {
        // dying anyway
      }
      setTimeout(() => process.exit(70), 50).unref();
    };
    // Logs and counts what escapes every handler; an uncaught exception still
    // ends the process (see src/runtime/escape-guard.ts for why).
    const escapeGuard = new EscapeGuard({ log, onUncaughtException: (err) => die('uncaught exception', err) }).install();
    running = await startController(cfg, log, { escapeGuard });
    let firstSignalMs = 0;
    const onSignal = (sig: string): void => {
      // Ctrl-C under `npm start` reaches us twice (from the terminal and from
      // the pair supervisor): a repeat within 2 s is the same request. Later,
      // another signal means "stop now".
      if (firstSignalMs !== 0) {
        if (Date.now() - firstSignalMs > 2000) process.exit(130);
        return;
      }
      firstSignalMs = Date.now();
      log.info({ signal: sig }, 'signal received');
      running!.stop().then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err: String(err) }, 'stop failed');
          process.exit(1);
        },
      );
    };
    process.on('SIGINT', () => onSignal('SIGINT'));
    process.on('SIGTERM', () => onSignal('SIGTERM'));
  });

program
  .command('pair')
  .description('run both controllers of a pair in the foreground (what `npm start` does)')
  .option('-a, --config-a <file>', "controller A's configuration", 'controllers/a.json')
  .option('-b, --config-b <file>', "controller B's configuration", 'controllers/b.json')
  .action(async (opts: { configA: string; configB: string }) => {
    process.exitCode = await runPair([opts.configA, opts.configB]);
  });

program
  .command('status')
  .description("show a controller's role, partner link, epoch, cache and digests")
  .requiredOption('-c, --config <file>', "a controller's configuration (JSON)")
  .addOption(new Option('--controller <id>', 'which controller to ask: the configured one, or A or B').choices(['self', 'A', 'B']).default('self'))
  .option('--json', 'print the status as JSON')
  .option('--timeout <ms>', 'how long to wait for the controller', '5000')
  .option('--tls', CLIENT_TLS_HELP)
  .action(async (opts: { config: string; controller: 'self' | 'A' | 'B'; json?: boolean; timeout: string; tls?: boolean }) => {
    const cfg = clientView(loadConfig(opts.config), opts.tls);
    const s = await fetchStatus(cfg, opts.controller, parsePositiveInt(opts.timeout, 'timeout'));
    console.log(opts.json ? JSON.stringify(s, null, 2) : formatStatus(s));
  });

program
  .command('workload')
  .description('drive a storage workload (fio-like options or a job file), verify every read, and write a JSON report and an SVG chart')
  .requiredOption('-c, --config <file>', "a controller's configuration (JSON); both controllers are reached from it")
  .option('--job <name|file[:job]>', `a ready job (${listJobs().join(', ')}) or a job file; options given here win over it`)
  .option('--out <base|dir>', 'write the report to <base>.json and the chart to <base>.svg, or both into a directory (default workload-reports/<job>-<time>)')
  .option('--json', 'print the report as JSON')
  .option('--history <file>', 'also record a history (JSON lines) for the checker, read the working set back at the end, and check the history for lost writes and stale reads (one worker, fresh allocations)')
  .option('--partner-config <file>', "the partner's configuration, for its NBD address with --transport nbd (default: <partner id>.json beside --config, e.g. b.json beside a.json)")
  .option('--tls', `${CLIENT_TLS_HELP} (the WebSocket transport)`)
  .option('--tls-psk-file <path>', NBD_TLS_PSK_FILE_HELP)
  .option('--tls-identity <name>', NBD_TLS_IDENTITY_HELP)
  .action(async (opts: Record<string, unknown>, cmd: Command) => {
    const cfg = loadConfig(String(opts.config));
    const partnerCfg = partnerConfigFor(String(opts.config), cfg, typeof opts.partnerConfig === 'string' ? opts.partnerConfig : undefined);
    const nbdTls = nbdTlsChoice(opts);
    const r = await runWorkloadCommand({
      cfg,
      ...(partnerCfg !== undefined ? { partnerCfg } : {}),
      input: jobInputFromCli(opts, cmd),
      ...(typeof opts.job === 'string' ? { job: opts.job } : {}),
      ...(typeof opts.out === 'string' ? { out: opts.out } : {}),
      ...(typeof opts.history === 'string' ? { history: opts.history } : {}),
      json: opts.json === true,
      tls: opts.tls === true,
      ...(nbdTls !== undefined ? { nbdTls } : {}),
    });
    console.log(r.text);
    process.exitCode = r.exitCode;
  });
addWorkloadOptions(program.commands.find((c) => c.name() === 'workload')!);

program.addCommand(benchCommand());

program.addCommand(volumeCommand());
program.addCommand(nbdKillTestCommand());
program.addCommand(verifyCommand());
program.addCommand(attachCommand());
program.addCommand(attachKillTestCommand());
program.addCommand(poolCommand());
program.addCommand(deviceCommand());
program.addCommand(scrubCommand());
program.addCommand(regionCommand());
program.addCommand(snapshotCommand());

program
  .command('report')
  .description('summarize a workload report, or compare two side by side')
  .argument('<report...>', 'one or two JSON reports written by `pagepair workload`')
  .option('--json', 'print as JSON')
  .action(async (paths: string[], opts: { json?: boolean }) => {
    if (paths.length > 2) throw new PagepairError('BAD_FIELD', 'give one report, or two to compare', 'report');
    console.log(await runReport(paths, { json: opts.json === true }));
  });

program
  .command('check')
  .description('check a recorded history: no acknowledged write lost, reads linearizable per block')
  .argument('<history>', 'history file (JSON lines) written by `workload --history` or `kill-test`')
  .option('--json', 'print the result as JSON')
  .option('--show <n>', 'how many violations to spell out', '5')
  .option('--max-states <n>', 'search bound per key (default grows with the key)')
  .action(async (path: string, opts: { json?: boolean; show: string; maxStates?: string }) => {
    const r = await runCheck(path, {
      json: opts.json === true,
      violationsShown: parsePositiveInt(opts.show, 'show'),
      ...(opts.maxStates !== undefined ? { maxSearchStatesPerKey: parsePositiveInt(opts.maxStates, 'max-states') } : {}),
    });
    if (r.exitCode === CHECK_EXIT.badInput && opts.json !== true) console.error(r.text);
    else console.log(r.text);
    process.exitCode = r.exitCode;
  });

program.addCommand(killTestCommand());

program.parseAsync(process.argv).catch((err: unknown) => {
  if (isPagepairError(err)) {
    console.error(`pagepair: ${err.code}: ${err.message}`);
    process.exitCode = err.code === 'BAD_CONFIG' || err.code === 'BAD_FIELD' ? 2 : 1;
  } else {
    console.error(`pagepair: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exitCode = 1;
  }
});
