// `pagepair attach`: serve the pair's volumes to this host's NBD clients and
// carry their I/O across a controller's death (src/attach). `--status` asks
// a running attach how its paths are.

import { Command, Option } from 'commander';
import { resolve } from 'node:path';
import { Attach, fetchAttachStatus, formatAttachStatus } from '../attach/attach.js';
import type { PathId } from '../attach/paths.js';
import { parseNbdUrl, resolveNbdTls, type NbdTlsChoice, type NbdTlsCredentials } from '../client/nbd-client.js';
import type { NbdEndpoint } from '../client/nbd-pair-client.js';
import { PagepairError } from '../protocol/errors.js';
import { loadConfig } from '../runtime/config.js';
import { createLogger } from '../runtime/logger.js';
import { NBD_TLS_IDENTITY_HELP, nbdTlsChoice } from './nbd-tls.js';
import { parsePositiveInt } from '../workload/units.js';

interface AttachCliOptions {
  configA: string;
  configB: string;
  aUrl?: string;
  bUrl?: string;
  tlsPskFile?: string;
  tlsIdentity?: string;
  listen: string;
  /** false with --no-socket. */
  socket: string | false;
  statusSocket: string;
  preferred: PathId;
  spread?: boolean;
  holdMs: string;
  requestTimeoutMs: string;
  reconnectMs: string;
  status?: boolean;
  json?: boolean;
  logLevel: string;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

/** "vol" or "vol:B": a volume and the controller it prefers. */
export function parseVolumeArg(arg: string, preferred: PathId): { name: string; preferred: PathId } {
  const m = /^(.+?)(?::([AB]))?$/.exec(arg);
  if (m === null || m[1] === undefined || m[1] === '') throw new PagepairError('BAD_FIELD', `volume must be NAME or NAME:A or NAME:B, got ${JSON.stringify(arg)}`, 'volume');
  return { name: m[1], preferred: (m[2] as PathId | undefined) ?? preferred };
}

/** HOST:PORT on loopback: attach has no authentication of its own, so only this host may reach it. */
export function parseListen(text: string): { host: string; port: number } {
  const at = text.lastIndexOf(':');
  const host = at < 0 ? '' : text.slice(0, at).replace(/^\[(.*)\]$/, '$1');
  const port = Number(at < 0 ? NaN : text.slice(at + 1));
  if (host === '' || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new PagepairError('BAD_FIELD', `--listen must be HOST:PORT, got ${JSON.stringify(text)}`, 'listen');
  }
  if (!LOOPBACK.has(host)) {
    throw new PagepairError('BAD_FIELD', `--listen ${text}: attach serves only this host (127.0.0.1, ::1 or localhost); it has no authentication of its own`, 'listen');
  }
  return { host, port };
}

/** A controller's NBD endpoint from a URL (its export part is ignored) or from its configuration's listen.nbd. */
function controllerEndpoint(id: PathId, url: string | undefined, configPath: string, tlsChoice: NbdTlsChoice | undefined): NbdEndpoint {
  if (url !== undefined) {
    // nbds:// takes its key from --tls-psk-file, else from its own ?tls-psk-file.
    const given = tlsChoice !== undefined ? resolveNbdTls(tlsChoice) : undefined;
    const secure = url.startsWith('nbds');
    const a = parseNbdUrl(url, secure && given !== undefined ? { tls: given } : {});
    const tls = withTls(a.tls ?? given);
    return 'socketPath' in a ? { id, socketPath: a.socketPath, ...tls } : { id, host: a.host, port: a.port, ...tls };
  }
  const cfg = loadConfig(configPath);
  const nbd = cfg.listen.nbd;
  if (nbd === undefined) throw new PagepairError('BAD_CONFIG', `${configPath} has no listen.nbd: controller ${id} serves no NBD; give --${id.toLowerCase()}-url`, 'listen.nbd');
  const tls = withTls(resolveNbdTls(tlsChoice, cfg.tls));
  if (nbd.socket !== undefined) return { id, socketPath: nbd.socket, ...tls };
  const host = nbd.host === '0.0.0.0' ? '127.0.0.1' : nbd.host;
  return { id, host, port: nbd.port, ...tls };
}

function withTls(tls: NbdTlsCredentials | undefined): { tls?: NbdTlsCredentials } {
  return tls !== undefined ? { tls } : {};
}

export function attachCommand(): Command {
  return new Command('attach')
    .description(
      "serve the pair's volumes to this host's NBD clients, forwarding each request to controller A or B; when one dies, requests in flight go to the other and the local client sees only a pause",
    )
    .argument('[volumes...]', 'volumes to serve, each NAME or NAME:A / NAME:B to give its preferred controller')
    .option('-a, --config-a <file>', "controller A's configuration, for its NBD address", 'controllers/a.json')
    .option('-b, --config-b <file>', "controller B's configuration, for its NBD address", 'controllers/b.json')
    .option('--a-url <url>', "controller A's NBD address instead (nbd://host:port or nbd+unix:///?socket=path; nbds:// and nbds+unix:// for TLS)")
    .option('--b-url <url>', "controller B's NBD address instead")
    .option(
      '--tls-psk-file <path>',
      'reach the controllers over NBD TLS (STARTTLS) with a key from this psktool file (identity:hexkey lines, mode 0600); default: their configuration\'s tls.pskFile when its tls.mode is "require"',
    )
    .option('--tls-identity <name>', NBD_TLS_IDENTITY_HELP)
    .option('--listen <host:port>', 'where local NBD clients connect over TCP (loopback only; port 0: any free one)', '127.0.0.1:10899')
    .option('--socket <path>', 'a unix socket to serve on as well', './data/attach.nbd.sock')
    .option('--no-socket', 'serve on TCP only')
    .option('--status-socket <path>', 'the socket `pagepair attach --status` asks', './data/attach.status.sock')
    .addOption(new Option('--preferred <id>', "the controller volumes prefer when both are up (ALUA's optimized path)").choices(['A', 'B']).default('A'))
    .option('--spread', 'send each volume\'s requests to both controllers in turn while both are up (the export promises CAN_MULTI_CONN)')
    .option('--hold-ms <ms>', 'with no controller reachable, hold requests this long, then fail them with EIO', '30000')
    .option('--request-timeout-ms <ms>', 'a controller that does not answer a request within this is treated as failed, and its requests go to the other', '5000')
    .option('--reconnect-ms <ms>', 'how often a failed controller is dialled again', '200')
    .option('--status', 'print the status of the attach running on --status-socket, and exit')
    .option('--json', 'with --status: print it as JSON')
    .option('--log-level <level>', 'trace, debug, info, warn, error, fatal or silent', 'info')
    .action(async (volumes: string[], opts: AttachCliOptions) => {
      const statusSocket = resolve(opts.statusSocket);
      if (opts.status === true) {
        const s = await fetchAttachStatus(statusSocket);
        console.log(opts.json === true ? JSON.stringify(s, null, 2) : formatAttachStatus(s));
        return;
      }
      if (volumes.length === 0) throw new PagepairError('BAD_FIELD', 'name at least one volume to serve (see `pagepair volume list`)', 'volumes');
      const levels = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
      const level = levels.find((l) => l === opts.logLevel);
      if (level === undefined) throw new PagepairError('BAD_FIELD', `--log-level must be one of ${levels.join(', ')}, got ${JSON.stringify(opts.logLevel)}`, 'logLevel');
      const log = createLogger({ level }, { component: 'attach' });
      const socket = opts.socket === false ? undefined : resolve(opts.socket);
      const attach = new Attach({
        controllers: [controllerEndpoint('A', opts.aUrl, opts.configA, nbdTlsChoice(opts)), controllerEndpoint('B', opts.bUrl, opts.configB, nbdTlsChoice(opts))],
        volumes: volumes.map((v) => parseVolumeArg(v, opts.preferred)),
        spread: opts.spread === true,
        holdMs: parsePositiveInt(opts.holdMs, 'hold-ms'),
        requestTimeoutMs: parsePositiveInt(opts.requestTimeoutMs, 'request-timeout-ms'),
        reconnectMs: parsePositiveInt(opts.reconnectMs, 'reconnect-ms'),
        upstreamInflightMax: 128,
        listen: { ...parseListen(opts.listen), ...(socket !== undefined ? { socket } : {}) },
        statusSocket,
        log,
      });
      const { port } = await attach.start();
      const urls = [`nbd://${opts.listen.replace(/:\d+$/, `:${port}`)}/<volume>`, ...(socket !== undefined ? [`nbd+unix:///<volume>?socket=${socket}`] : [])];
      process.stderr.write(`pagepair attach: serving ${volumes.join(', ')} at ${urls.join(' and ')}; status: pagepair attach --status --status-socket ${statusSocket}\n`);
      let stopping = false;
      const stop = (sig: string): void => {
        if (stopping) process.exit(130);
        stopping = true;
        log.info({ signal: sig }, 'attach stopping');
        attach.close().then(
          () => process.exit(0),
          () => process.exit(1),
        );
      };
      process.on('SIGINT', () => stop('SIGINT'));
      process.on('SIGTERM', () => stop('SIGTERM'));
    });
}
