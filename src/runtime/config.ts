// A controller's configuration: one JSON file per controller. Everything is
// checked at load, so a typo or an impossible value stops the controller at
// start with a message naming the file and the exact field, instead of
// surfacing later as odd behaviour. Unknown fields are refused for the same
// reason. Relative paths (store.path, log.file, listen.nbd.socket,
// secretFile, clientTokenFile) are resolved against the current working
// directory of the process that loads the file, not against the file's own
// directory: `pagepair` is started from the project or data directory, and
// that is where operators expect relative paths to point.

import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { PagepairError, isPagepairError } from '../protocol/errors.js';
import { resolvePolicies, type Policy, type PolicyInput } from '../core/policy.js';
import { DEFAULT_LIMITS, HARD_LIMITS, type Limits } from '../protocol/limits.js';
import { formatNbdUrl, parseNbdUrl } from '../client/nbd-client.js';
import { computeGeometry, isUuid, TABLE_ENTRIES_MAX_DEFAULT } from '../store/layout.js';
import type { PoolLayout } from '../store/pool.js';
import { POOL_CHUNK_BYTES_DEFAULT, POOL_DEVICES_MAX, POOL_LAYOUTS, planPool, poolDevicesMin } from '../store/pool-plan.js';
import { CLIENT_CONNECTIONS_MAX_DEFAULT, REPLY_BYTES_BUFFERED_MAX_DEFAULT } from '../transport/client-endpoint.js';
import { readOwnerOnlyFile } from '../transport/tls.js';

export type ControllerLetter = 'A' | 'B';
export type ControllerNumber = 1 | 2;
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

export interface Endpoint {
  host: string;
  /** 0 asks the system for any free port (tests). */
  port: number;
}

/** Where a controller serves NBD (block clients). */
export interface NbdListenConfig {
  host: string;
  /** 0 asks the system for any free port. */
  port: number;
  /** Absolute path of a unix socket to serve on as well; absent: TCP only. */
  socket?: string;
}

export interface PartnerConfig {
  idLetter: ControllerLetter;
  idNumber: ControllerNumber;
  client: Endpoint;
  peer: Endpoint;
}

export interface StoreConfig {
  /** Absolute; null when the store is over a pool (pool). */
  path: string | null;
  /** store.pool: the store over several devices (issue 14); null for one file (path). */
  pool: PoolConfig | null;
  /** Size of a newly created store file (path only; a pool's size follows from its devices). */
  sizeBytes: number;
  tableEntriesMax: number;
}

/** A member of a pool as configured: a file (absolute path) or a remote NBD export. */
export type PoolDeviceConfig = { kind: 'file'; path: string } | { kind: 'nbd'; uri: string };

export interface PoolConfig {
  layout: PoolLayout;
  /** Parity layouts: bytes of one chunk (a multiple of 4096); 0 for a mirror. */
  chunkBytes: number;
  /** In slot order. */
  devices: PoolDeviceConfig[];
  /** Size of a file device created fresh (an existing one keeps its own). */
  deviceBytes: number;
}

/** How messages and status name a store: its file, or its pool's layout and devices. */
export function storeName(store: StoreConfig): string {
  if (store.pool === null) return store.path ?? 'store';
  return `${store.pool.layout} pool of ${store.pool.devices.map(poolDeviceName).join(', ')}`;
}

export function poolDeviceName(d: PoolDeviceConfig): string {
  return d.kind === 'file' ? d.path : d.uri;
}

export interface CacheConfig {
  cacheBytesMax: number;
  dirtyHighWatermarkPct: number;
  dirtyLowWatermarkPct: number;
  dirtyAgeMaxMs: number;
  destageConcurrency: number;
}

export interface ConfigLimits extends Limits {
  inflightPerClientMax: number;
  /** Reply bytes one client connection may leave unread before it is dropped. */
  replyBytesBufferedMax: number;
  /** Client connections open at once; more are dropped as they come. */
  clientConnectionsMax: number;
  /** Peer-port connections open at once (the partner's and strangers'); more are dropped as they come. */
  peerConnectionsMax: number;
  /** NBD connections open at once, TCP and unix socket together; more are dropped as they come. */
  nbdConnectionsMax: number;
  /**
   * Bytes a connection may send before it has authenticated (the WebSocket
   * upgrade and the handshake frames); more, and it is cut. Kept small, so a
   * stranger cannot make a controller buffer or decode large frames.
   */
  preAuthBytesMax: number;
  /** A connection that has not finished its handshake (upgrade, proofs, NBD options) within this is cut. */
  handshakeTimeoutMs: number;
  /** Unfinished handshakes one source address may hold at once on one listener. */
  handshakesPerSourceMax: number;
  /** Request payload plus reply bytes one NBD connection may have in flight; past it, reading from the socket pauses. */
  nbdBytesInFlightMax: number;
  /** Bytes queued to the partner and not yet taken by the socket; past it, the link is dropped (a partner that stopped reading). */
  peerBytesBufferedMax: number;
}

/**
 * Transport security. "off": plain TCP on every listener. "on": each TCP
 * listener takes TLS and plain connections both (the first byte tells them
 * apart; NBD clients ask for TLS with STARTTLS), and the controller dials its
 * partner with TLS. "require": plain connections are refused on every
 * listener. Keys are pre-shared (TLS-PSK), no certificates: the peer link's
 * key is derived from the pair secret, the client link's from the client
 * token, and NBD's come from pskFile (identity:hexkey lines, the format of
 * GnuTLS's psktool, as qemu-nbd and nbdkit read it).
 */
export interface TlsConfig {
  mode: 'off' | 'on' | 'require';
  /** Absolute; required when mode is not "off" and listen.nbd is given. */
  pskFile?: string;
}

export interface LogConfig {
  level: LogLevel;
  /** Absolute; absent means standard output. */
  file?: string;
}

/** What decides, and enforces, who carries on when the peer link is lost. */
export interface ArbitrationConfig {
  /** Carries on when both are alive but the link between them is cut. */
  preferredLetter: ControllerLetter;
  preferredNumber: ControllerNumber;
  /**
   * How a survivor stops a partner that went silent (it may only be paused):
   * "kill" sends SIGKILL to the pid the partner recorded in the mailbox (a
   * pair on one machine); "none" relies on the partner's lease and the epoch
   * record alone.
   */
  fenceAction: 'kill' | 'none';
}

/** How a controller acknowledges writes when it serves alone. */
export interface AloneConfig {
  /** "write-through": in the store and synced before the ack. ("journal", a local fsync'd journal, is not built yet.) */
  ackMode: 'write-through' | 'journal';
  /** Absolute; required for "journal". */
  journalPath?: string;
}

export interface ControllerConfig {
  /** Where the configuration came from (a path, or a name given by a test). */
  sourceName: string;
  idLetter: ControllerLetter;
  /** The controller id on the wire and in the store's mailbox. */
  idNumber: ControllerNumber;
  pairId: string;
  secret: string;
  clientToken: string;
  /** listen.nbd absent: no NBD server. */
  listen: { client: Endpoint; peer: Endpoint | null; nbd?: NbdListenConfig };
  mirroring: boolean;
  /** null only when mirroring is false and no partner was given. */
  partner: PartnerConfig | null;
  store: StoreConfig;
  cache: CacheConfig;
  /** The policies as written in the file (built-ins not included). */
  userPolicies: Policy[];
  /** Built-in and user policies by name. */
  policies: Map<string, Policy>;
  limits: ConfigLimits;
  heartbeatIntervalMs: number;
  partnerTimeoutMs: number;
  peerReconnectMs: number;
  arbitration: ArbitrationConfig;
  alone: AloneConfig;
  log: LogConfig;
  tls: TlsConfig;
  /**
   * Serve the test-only requests (C_TEST_CORRUPT, which makes the copies of
   * a page differ on purpose). Allowed only when every listener is on
   * loopback, so no one off this machine can reach them.
   */
  testHooks: boolean;
  /**
   * Test hook (only with testHooks): kill this process with SIGKILL as it is
   * about to make this many-plus-one-th write into the data area of a pool
   * member, so that a row's writes reach some members and not the others.
   * null: never.
   */
  testKillAfterDataWrites: number | null;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

export const CONFIG_DEFAULTS = Object.freeze({
  host: '127.0.0.1',
  mirroring: true,
  storeSizeBytes: 1 * GiB,
  tableEntriesMax: TABLE_ENTRIES_MAX_DEFAULT,
  cacheBytesMax: 256 * MiB,
  dirtyHighWatermarkPct: 60,
  dirtyLowWatermarkPct: 30,
  dirtyAgeMaxMs: 2000,
  destageConcurrency: 16,
  inflightPerClientMax: 256,
  replyBytesBufferedMax: REPLY_BYTES_BUFFERED_MAX_DEFAULT,
  clientConnectionsMax: CLIENT_CONNECTIONS_MAX_DEFAULT,
  peerConnectionsMax: 64,
  nbdConnectionsMax: 256,
  preAuthBytesMax: 64 * KiB,
  handshakeTimeoutMs: 5000,
  handshakesPerSourceMax: 4,
  nbdBytesInFlightMax: 64 * MiB,
  peerBytesBufferedMax: 256 * MiB,
  heartbeatIntervalMs: 100,
  partnerTimeoutMs: 500,
  peerReconnectMs: 100,
  logLevel: 'info' as LogLevel,
});

const LOG_LEVELS: readonly LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
const INFLIGHT_PER_CLIENT_MAX = 65536;
const SECRET_CHARS_MIN = 16;
/** sun_path holds 108 bytes with its terminating NUL on Linux. */
const UNIX_SOCKET_PATH_BYTES_MAX = 107;
const CLIENT_TOKEN_CHARS_MIN = 8;

/**
 * The secret and client token of the default pair, as controllers/a.json and
 * b.json ship them. Anyone with the source knows them, so they are accepted
 * only while every listener is on loopback (a unix socket is local anyway).
 */
export const SHIPPED_SECRETS: readonly string[] = ['change-me: shared peer secret of the default pair'];
export const SHIPPED_CLIENT_TOKENS: readonly string[] = ['default-pair-client-token'];
/** Environment variables that override secret and clientToken. */
export const SECRET_ENV = 'PAGEPAIR_SECRET';
export const CLIENT_TOKEN_ENV = 'PAGEPAIR_CLIENT_TOKEN';

// ------------------------------------------------------------ field reader

function show(v: unknown): string {
  if (v === undefined) return 'nothing';
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = row[j]!;
      row[j] = Math.min(up + 1, row[j - 1]! + 1, diag + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1));
      diag = up;
    }
  }
  return row[b.length]!;
}

/** Reads the fields of one JSON object, naming each by its full path. */
class Fields {
  constructor(
    private readonly src: string,
    private readonly path: string,
    private readonly values: Record<string, unknown>,
    allowed: readonly string[],
  ) {
    for (const key of Object.keys(values)) {
      if (allowed.includes(key)) continue;
      const near = allowed.find((k) => editDistance(k, key) <= Math.max(1, Math.floor(k.length / 4)));
      throw this.error(this.at(key), `is not a known field${near !== undefined ? ` (did you mean ${near}?)` : ''}`);
    }
  }

  static root(src: string, json: unknown, allowed: readonly string[]): Fields {
    if (typeof json !== 'object' || json === null || Array.isArray(json)) {
      throw new PagepairError('BAD_CONFIG', `${src}: the configuration must be a JSON object, got ${show(json)}`, '');
    }
    return new Fields(src, '', json as Record<string, unknown>, allowed);
  }

  at(key: string): string {
    return this.path === '' ? key : `${this.path}.${key}`;
  }

  error(field: string, what: string): PagepairError {
    return new PagepairError('BAD_CONFIG', `${this.src}: ${field} ${what}`, field);
  }

  fail(key: string, what: string): never {
    const v = this.values[key];
    throw this.error(this.at(key), `must be ${what}${v === undefined ? ' (missing)' : `, got ${show(v)}`}`);
  }

  has(key: string): boolean {
    return this.values[key] !== undefined;
  }

  raw(key: string): unknown {
    return this.values[key];
  }

  str(key: string, opts: { default?: string; minChars?: number; what?: string } = {}): string {
    const v = this.values[key];
    const minChars = opts.minChars ?? 1;
    const what = opts.what ?? (minChars > 1 ? `a string of at least ${minChars} characters` : 'a non-empty string');
    if (v === undefined && opts.default !== undefined) return opts.default;
    if (typeof v !== 'string' || v.length < minChars) this.fail(key, what);
    return v;
  }

  oneOf<T extends string>(key: string, values: readonly T[], dflt?: T): T {
    const v = this.values[key];
    if (v === undefined && dflt !== undefined) return dflt;
    if (typeof v !== 'string' || !values.includes(v as T)) this.fail(key, `one of ${values.map((x) => JSON.stringify(x)).join(', ')}`);
    return v as T;
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.values[key];
    if (v === undefined) return dflt;
    if (typeof v !== 'boolean') this.fail(key, 'true or false');
    return v;
  }

  int(key: string, min: number, max: number, dflt?: number): number {
    const v = this.values[key];
    if (v === undefined && dflt !== undefined) return dflt;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) this.fail(key, `an integer in ${min}..${max}`);
    return v;
  }

  /** A nested object; when absent, an empty one if optional, else an error. */
  obj(key: string, allowed: readonly string[], optional: boolean): Fields {
    const v = this.values[key];
    if (v === undefined && optional) return new Fields(this.src, this.at(key), {}, allowed);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail(key, 'an object');
    return new Fields(this.src, this.at(key), v as Record<string, unknown>, allowed);
  }
}

// ------------------------------------------------------------ parsing

const TOP_FIELDS = [
  'id',
  'pairId',
  'secret',
  'secretFile',
  'clientToken',
  'clientTokenFile',
  'listen',
  'partner',
  'mirroring',
  'store',
  'cache',
  'policies',
  'limits',
  'heartbeatIntervalMs',
  'partnerTimeoutMs',
  'peerReconnectMs',
  'arbitration',
  'alone',
  'log',
  'tls',
  'testHooks',
  'testKillAfterDataWrites',
] as const;
const ENDPOINT_FIELDS = ['host', 'port'] as const;
const POLICY_FIELDS = ['name', 'dataStructureBytes', 'pageSizeBytes', 'description'] as const;
const LIMIT_FIELDS = [...(Object.keys(DEFAULT_LIMITS) as (keyof Limits)[]),   'inflightPerClientMax',
  'replyBytesBufferedMax',
  'clientConnectionsMax',
  'peerConnectionsMax',
  'nbdConnectionsMax',
  'preAuthBytesMax',
  'handshakeTimeoutMs',
  'handshakesPerSourceMax',
  'nbdBytesInFlightMax',
  'peerBytesBufferedMax',
] as const;

function letterToNumber(l: ControllerLetter): ControllerNumber {
  return l === 'A' ? 1 : 2;
}

function endpoint(f: Fields, key: string, optional = false): Endpoint | null {
  if (optional && !f.has(key)) return null;
  const e = f.obj(key, ENDPOINT_FIELDS, false);
  return { host: e.str('host', { default: CONFIG_DEFAULTS.host }), port: e.int('port', 0, 65535) };
}

function sameListener(a: Endpoint, b: Endpoint): boolean {
  return a.port !== 0 && a.port === b.port && a.host === b.host;
}

/** listen.nbd: optional; a TCP endpoint and, if given, a unix socket. */
function nbdListen(listenF: Fields, cwd: string, others: { name: string; endpoint: Endpoint | null }[]): NbdListenConfig | undefined {
  if (!listenF.has('nbd')) return undefined;
  const f = listenF.obj('nbd', ['host', 'port', 'socket'], false);
  const nbd: NbdListenConfig = { host: f.str('host', { default: CONFIG_DEFAULTS.host }), port: f.int('port', 0, 65535) };
  for (const o of others) {
    if (o.endpoint !== null && sameListener(nbd, o.endpoint)) {
      throw f.error('listen.nbd.port', `must differ from ${o.name}.port (${o.endpoint.port} on ${o.endpoint.host})`);
    }
  }
  if (f.has('socket')) {
    const socket = resolve(cwd, f.str('socket', { what: 'a path (a non-empty string)' }));
    if (Buffer.byteLength(socket) > UNIX_SOCKET_PATH_BYTES_MAX) {
      throw f.error('listen.nbd.socket', `is too long for a unix socket: ${socket} is ${Buffer.byteLength(socket)} bytes resolved, at most ${UNIX_SOCKET_PATH_BYTES_MAX}`);
    }
    nbd.socket = socket;
  }
  return nbd;
}

/** A secret or token and where it came from, for messages. */
interface Credential {
  value: string;
  /** The field to name in an error about the value. */
  field: string;
  /** Where the value came from, when not the field itself: the variable or the file. */
  from?: string;
}

/**
 * secret or clientToken: from the environment variable when it is set, else
 * from the file named by fileKey, else from key itself. key and fileKey
 * together are refused: one of them would be silently ignored.
 */
function credential(
  top: Fields,
  key: string,
  fileKey: string,
  envName: string,
  minChars: number,
  cwd: string,
  env: NodeJS.ProcessEnv,
): Credential {
  const fromEnv = env[envName];
  if (fromEnv !== undefined) {
    if (fromEnv.length < minChars) throw top.error(key, `from ${envName} must be at least ${minChars} characters, got ${fromEnv.length}`);
    return { value: fromEnv, field: key, from: envName };
  }
  if (top.has(fileKey)) {
    if (top.has(key)) throw top.error(fileKey, `must not be given with ${key}: give one of them`);
    const path = resolve(cwd, top.str(fileKey, { what: 'a path (a non-empty string)' }));
    const text = readOwnerOnlyFile(path, {
      unreadable: (reason) => top.error(fileKey, `names a file that cannot be read: ${reason}`),
      openToOthers: (mode) => top.error(fileKey, `names ${path}, which other users may open (mode ${mode}); make it the owner's alone: chmod 600 ${path}`),
    });
    const value = text.trim();
    if (value.length < minChars) throw top.error(fileKey, `names ${path}, which must hold at least ${minChars} characters, got ${value.length}`);
    return { value, field: fileKey, from: path };
  }
  return { value: top.str(key, { minChars }), field: key };
}

const NBD_SCHEMES = ['nbd:', 'nbds:', 'nbd+unix:', 'nbds+unix:'];

/**
 * store.pool: the layout, its chunk size, the devices in slot order (paths,
 * resolved like store.path, or NBD URIs) and the size of file devices made
 * fresh. Each device is named by its index in messages.
 */
function poolConfig(sf: Fields, cwd: string, tableEntriesMax: number): PoolConfig {
  const pf = sf.obj('pool', ['layout', 'chunkBytes', 'devices', 'deviceBytes'], false);
  const layout = pf.oneOf<PoolLayout>('layout', POOL_LAYOUTS);
  if (layout === 'mirror' && pf.has('chunkBytes')) throw pf.error('store.pool.chunkBytes', 'applies to the parity layouts only: a mirror has no chunks');
  const chunkBytes = layout === 'mirror' ? 0 : pf.int('chunkBytes', 4096, 0xffff_f000, POOL_CHUNK_BYTES_DEFAULT);
  if (chunkBytes % 4096 !== 0) throw pf.error('store.pool.chunkBytes', `must be a multiple of 4096, got ${chunkBytes}`);
  const deviceBytes = pf.int('deviceBytes', 1, Number.MAX_SAFE_INTEGER, CONFIG_DEFAULTS.storeSizeBytes);
  const min = poolDevicesMin(layout);
  const given = pf.raw('devices');
  const raw: unknown[] = Array.isArray(given) ? given : pf.fail('devices', `a list of ${min} or more device paths or nbd:// URIs`);
  if (raw.length < min || raw.length > POOL_DEVICES_MAX) {
    throw pf.error('store.pool.devices', `must list ${min} to ${POOL_DEVICES_MAX} devices for a ${layout} pool, got ${raw.length}`);
  }
  const seen = new Map<string, number>();
  const devices = raw.map((v: unknown, i: number): PoolDeviceConfig => {
    const field = `store.pool.devices[${i}]`;
    if (typeof v !== 'string' || v.length === 0) throw pf.error(field, `must be a path or an nbd:// URI (a non-empty string), got ${show(v)}`);
    const scheme = /^([a-z][a-z0-9+.-]*:)\/\//i.exec(v)?.[1]?.toLowerCase();
    let d: PoolDeviceConfig;
    let key: string;
    if (scheme !== undefined) {
      if (!NBD_SCHEMES.includes(scheme)) throw pf.error(field, `names a ${scheme}// device: only paths and nbd://, nbds://, nbd+unix://, nbds+unix:// URIs are devices`);
      try {
        key = formatNbdUrl(parseNbdUrl(v));
      } catch (err) {
        if (!isPagepairError(err)) throw err;
        throw pf.error(field, `is not a usable NBD URI: ${err.message}`);
      }
      d = { kind: 'nbd', uri: v };
    } else {
      d = { kind: 'file', path: resolve(cwd, v) };
      key = d.path;
    }
    const before = seen.get(key);
    if (before !== undefined) throw pf.error(field, `names the same device as store.pool.devices[${before}] (${key}): each device fills one slot`);
    seen.set(key, i);
    return d;
  });
  try {
    planPool({ layout, devices: devices.length, chunkBytes: chunkBytes === 0 ? POOL_CHUNK_BYTES_DEFAULT : chunkBytes, deviceBytes, tableEntriesMax });
  } catch (err) {
    if (!isPagepairError(err)) throw err;
    const field = err.field === 'chunkBytes' ? 'store.pool.chunkBytes' : 'store.pool.deviceBytes';
    throw pf.error(field, `does not fit: ${err.message}`);
  }
  return { layout, chunkBytes, devices, deviceBytes };
}

/** The first listener another machine may reach, if any. */
function offLoopback(listeners: readonly [field: string, host: string][]): [string, string] | undefined {
  return listeners.find(([, host]) => !isLoopback(host));
}

/**
 * Validates a parsed JSON configuration and fills defaults. sourceName names
 * it in errors (the file path). cwd is where relative paths are resolved
 * (default: the process's current directory).
 */
export function parseConfig(json: unknown, sourceName: string, opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): ControllerConfig {
  const cwd = opts.cwd ?? process.cwd();
  const env = opts.env ?? process.env;
  const top = Fields.root(sourceName, json, TOP_FIELDS);

  const idLetter = top.oneOf<ControllerLetter>('id', ['A', 'B']);
  const pairId = top.str('pairId', { what: 'a uuid string' });
  if (!isUuid(pairId)) top.fail('pairId', 'a uuid string (8-4-4-4-12 hex digits)');
  const secretIn = credential(top, 'secret', 'secretFile', SECRET_ENV, SECRET_CHARS_MIN, cwd, env);
  const clientTokenIn = credential(top, 'clientToken', 'clientTokenFile', CLIENT_TOKEN_ENV, CLIENT_TOKEN_CHARS_MIN, cwd, env);
  const secret = secretIn.value;
  const clientToken = clientTokenIn.value;
  if (clientToken === secret) throw top.error('clientToken', 'must differ from secret: clients must not be able to act as the partner');
  const mirroring = top.bool('mirroring', CONFIG_DEFAULTS.mirroring);

  const listenF = top.obj('listen', ['client', 'peer', 'nbd'], false);
  const listenClient = endpoint(listenF, 'client')!;
  const listenPeer = endpoint(listenF, 'peer', !mirroring);
  if (listenPeer !== null && sameListener(listenClient, listenPeer)) {
    throw listenF.error('listen.peer.port', `must differ from listen.client.port (${listenClient.port} on ${listenClient.host})`);
  }
  const listenNbd = nbdListen(listenF, cwd, [
    { name: 'listen.client', endpoint: listenClient },
    { name: 'listen.peer', endpoint: listenPeer },
  ]);

  let partner: PartnerConfig | null = null;
  if (mirroring || top.has('partner')) {
    const pf = top.obj('partner', ['id', 'client', 'peer'], false);
    const partnerLetter = pf.oneOf<ControllerLetter>('id', ['A', 'B']);
    if (partnerLetter === idLetter) throw pf.error('partner.id', `must differ from id (both are ${JSON.stringify(idLetter)})`);
    const client = endpoint(pf, 'client')!;
    const peer = endpoint(pf, 'peer')!;
    if (listenPeer !== null && sameListener(listenPeer, peer)) {
      throw pf.error('partner.peer.port', `must differ from listen.peer.port: a controller cannot be its own partner`);
    }
    partner = { idLetter: partnerLetter, idNumber: letterToNumber(partnerLetter), client, peer };
  }

  const sf = top.obj('store', ['path', 'pool', 'sizeBytes', 'tableEntriesMax'], false);
  if (sf.has('path') && sf.has('pool')) throw sf.error('store.pool', 'must not be given with store.path: the store is one file (path) or a pool of devices (pool)');
  if (!sf.has('path') && !sf.has('pool')) sf.fail('path', 'a path (a non-empty string), or give store.pool instead');
  const tableEntriesMax = sf.int('tableEntriesMax', 1, 1_000_000, CONFIG_DEFAULTS.tableEntriesMax);
  let store: StoreConfig;
  if (sf.has('pool')) {
    if (sf.has('sizeBytes')) throw sf.error('store.sizeBytes', "must not be given with store.pool: a pool's size follows from its devices (store.pool.deviceBytes sizes file devices created fresh)");
    store = { path: null, pool: poolConfig(sf, cwd, tableEntriesMax), sizeBytes: 0, tableEntriesMax };
  } else {
    store = {
      path: resolve(cwd, sf.str('path')),
      pool: null,
      sizeBytes: sf.int('sizeBytes', 1, Number.MAX_SAFE_INTEGER, CONFIG_DEFAULTS.storeSizeBytes),
      tableEntriesMax,
    };
    try {
      computeGeometry({ deviceBytes: store.sizeBytes, tableEntriesMax: store.tableEntriesMax });
    } catch (err) {
      if (!isPagepairError(err)) throw err;
      throw sf.error('store.sizeBytes', `is too small: ${err.message}`);
    }
  }

  const cf = top.obj(
    'cache',
    ['cacheBytesMax', 'dirtyHighWatermarkPct', 'dirtyLowWatermarkPct', 'dirtyAgeMaxMs', 'destageConcurrency'],
    true,
  );
  const cache: CacheConfig = {
    cacheBytesMax: cf.int('cacheBytesMax', 64 * KiB, Number.MAX_SAFE_INTEGER, CONFIG_DEFAULTS.cacheBytesMax),
    dirtyHighWatermarkPct: cf.int('dirtyHighWatermarkPct', 1, 100, CONFIG_DEFAULTS.dirtyHighWatermarkPct),
    dirtyLowWatermarkPct: cf.int('dirtyLowWatermarkPct', 0, 99, CONFIG_DEFAULTS.dirtyLowWatermarkPct),
    dirtyAgeMaxMs: cf.int('dirtyAgeMaxMs', 1, 3_600_000, CONFIG_DEFAULTS.dirtyAgeMaxMs),
    destageConcurrency: cf.int('destageConcurrency', 1, 1024, CONFIG_DEFAULTS.destageConcurrency),
  };
  if (cache.dirtyLowWatermarkPct >= cache.dirtyHighWatermarkPct) {
    throw cf.error(
      'cache.dirtyLowWatermarkPct',
      `must be below cache.dirtyHighWatermarkPct (${cache.dirtyLowWatermarkPct} >= ${cache.dirtyHighWatermarkPct})`,
    );
  }

  const lf = top.obj('limits', LIMIT_FIELDS, true);
  const limits = { ...DEFAULT_LIMITS } as ConfigLimits;
  for (const key of Object.keys(DEFAULT_LIMITS) as (keyof Limits)[]) {
    limits[key] = lf.int(key, 1, HARD_LIMITS[key], DEFAULT_LIMITS[key]);
  }
  limits.inflightPerClientMax = lf.int('inflightPerClientMax', 1, INFLIGHT_PER_CLIENT_MAX, CONFIG_DEFAULTS.inflightPerClientMax);
  // At least two of the largest replies, so that one in the socket and one queued never trip it.
  const replyMin = 2 * limits.frameBytesMax;
  limits.replyBytesBufferedMax = lf.int('replyBytesBufferedMax', replyMin, 4 * 1024 * 1024 * 1024, Math.max(replyMin, CONFIG_DEFAULTS.replyBytesBufferedMax));
  limits.clientConnectionsMax = lf.int('clientConnectionsMax', 1, 65_536, CONFIG_DEFAULTS.clientConnectionsMax);
  limits.peerConnectionsMax = lf.int('peerConnectionsMax', 2, 65_536, CONFIG_DEFAULTS.peerConnectionsMax);
  limits.nbdConnectionsMax = lf.int('nbdConnectionsMax', 1, 65_536, CONFIG_DEFAULTS.nbdConnectionsMax);
  // The largest handshake frame (a HELLO or C_AUTH with its strings) and the upgrade request fit well within 4 KiB.
  limits.preAuthBytesMax = lf.int('preAuthBytesMax', 4 * KiB, 16 * MiB, CONFIG_DEFAULTS.preAuthBytesMax);
  limits.handshakeTimeoutMs = lf.int('handshakeTimeoutMs', 100, 600_000, CONFIG_DEFAULTS.handshakeTimeoutMs);
  limits.handshakesPerSourceMax = lf.int('handshakesPerSourceMax', 1, 1024, CONFIG_DEFAULTS.handshakesPerSourceMax);
  // At least two of the largest requests with their replies, so one request in flight never trips it.
  const nbdMin = 2 * limits.requestBytesMax;
  limits.nbdBytesInFlightMax = lf.int('nbdBytesInFlightMax', nbdMin, 4 * GiB, Math.max(nbdMin, CONFIG_DEFAULTS.nbdBytesInFlightMax));
  limits.peerBytesBufferedMax = lf.int('peerBytesBufferedMax', replyMin, 4 * GiB, Math.max(replyMin, CONFIG_DEFAULTS.peerBytesBufferedMax));
  const pageMax = limits.pageSizeBytesMax;
  if (pageMax < 512 || (pageMax & (pageMax - 1)) !== 0) lf.fail('pageSizeBytesMax', `a power of two in 512..${HARD_LIMITS.pageSizeBytesMax}`);
  if (limits.requestBytesMax > limits.frameBytesMax) {
    throw lf.error('limits.requestBytesMax', `must be at most limits.frameBytesMax (${limits.frameBytesMax})`);
  }
  if (pageMax > limits.requestBytesMax) {
    throw lf.error('limits.pageSizeBytesMax', `must be at most limits.requestBytesMax (${limits.requestBytesMax})`);
  }

  const rawPolicies = top.raw('policies') ?? [];
  if (!Array.isArray(rawPolicies)) top.fail('policies', 'an array of policies');
  const policyInputs = (rawPolicies as unknown[]).map((p, i): PolicyInput => {
    if (typeof p !== 'object' || p === null || Array.isArray(p)) {
      throw top.error(`policies[${i}]`, `must be an object, got ${show(p)}`);
    }
    // Only unknown fields here; resolvePolicies checks the values and names the field.
    new Fields(sourceName, `policies[${i}]`, p as Record<string, unknown>, POLICY_FIELDS);
    return p as PolicyInput;
  });
  let policies: Map<string, Policy>;
  try {
    policies = resolvePolicies(policyInputs);
  } catch (err) {
    if (!isPagepairError(err)) throw err;
    throw new PagepairError('BAD_CONFIG', `${sourceName}: ${err.message}`, err.field);
  }
  const userPolicies = policyInputs.map((p) => policies.get(p.name)!);
  userPolicies.forEach((p, i) => {
    if (p.pageSizeBytes > pageMax) {
      throw top.error(`policies[${i}].pageSizeBytes`, `must be at most limits.pageSizeBytesMax (${pageMax}), got ${p.pageSizeBytes}`);
    }
  });

  const heartbeatIntervalMs = top.int('heartbeatIntervalMs', 1, 60_000, CONFIG_DEFAULTS.heartbeatIntervalMs);
  const partnerTimeoutMs = top.int('partnerTimeoutMs', 1, 600_000, CONFIG_DEFAULTS.partnerTimeoutMs);
  if (partnerTimeoutMs < 2 * heartbeatIntervalMs) {
    throw top.error(
      'partnerTimeoutMs',
      `must be at least twice heartbeatIntervalMs (${2 * heartbeatIntervalMs}), got ${partnerTimeoutMs}: one late heartbeat must not lose the partner`,
    );
  }
  const peerReconnectMs = top.int('peerReconnectMs', 1, 60_000, CONFIG_DEFAULTS.peerReconnectMs);

  const af = top.obj('arbitration', ['preferred', 'fenceAction'], true);
  const preferredLetter = af.oneOf<ControllerLetter>('preferred', ['A', 'B'], 'A');
  const arbitration: ArbitrationConfig = {
    preferredLetter,
    preferredNumber: letterToNumber(preferredLetter),
    fenceAction: af.oneOf<'kill' | 'none'>('fenceAction', ['kill', 'none'], 'kill'),
  };

  const alF = top.obj('alone', ['ackMode', 'journalPath'], true);
  const alone: AloneConfig = { ackMode: alF.oneOf<'write-through' | 'journal'>('ackMode', ['write-through', 'journal'], 'write-through') };
  if (alF.has('journalPath')) alone.journalPath = resolve(cwd, alF.str('journalPath'));
  if (alone.ackMode === 'journal') {
    // Not built yet: a survivor acknowledges only what is in the store. Refuse
    // rather than accept a setting that would silently mean write-through.
    throw alF.error('alone.ackMode', 'is "journal", which is not built yet; use "write-through" (the default)');
  }

  // TCP listeners only: a unix socket cannot be reached from another machine.
  const listeners: [string, string][] = [['listen.client.host', listenClient.host]];
  if (listenPeer !== null) listeners.push(['listen.peer.host', listenPeer.host]);
  if (listenNbd !== undefined) listeners.push(['listen.nbd.host', listenNbd.host]);
  const exposed = offLoopback(listeners);

  if (exposed !== undefined) {
    const [field, host] = exposed;
    const shipped: [string, Credential, readonly string[], string, string][] = [
      ['secret', secretIn, SHIPPED_SECRETS, 'secretFile', SECRET_ENV],
      ['clientToken', clientTokenIn, SHIPPED_CLIENT_TOKENS, 'clientTokenFile', CLIENT_TOKEN_ENV],
    ];
    for (const [key, given, values, fileKey, envName] of shipped) {
      if (!values.includes(given.value)) continue;
      const where = given.from === undefined ? '' : ` (from ${given.from})`;
      throw top.error(
        given.field,
        `is the shipped default of the default pair${where}, which is public: anyone could use it, and ${field} is ${JSON.stringify(host)}, reachable from other machines; ` +
          `set your own ${key} (or ${fileKey}, or ${envName}) or listen on loopback only (127.0.0.1, ::1 or localhost)`,
      );
    }
  }

  const testHooks = top.bool('testHooks', false);
  if (testHooks && exposed !== undefined) {
    const [field, host] = exposed;
    throw top.error('testHooks', `is true, which needs every listener on loopback (127.0.0.1, ::1 or localhost); ${field} is ${JSON.stringify(host)}`);
  }
  const testKillAfterDataWrites = top.has('testKillAfterDataWrites') ? top.int('testKillAfterDataWrites', 0, 1_000_000, 0) : null;
  if (testKillAfterDataWrites !== null && !testHooks) throw top.error('testKillAfterDataWrites', 'is a test hook: it needs testHooks true');

  const tlsF = top.obj('tls', ['mode', 'pskFile'], true);
  const tls: TlsConfig = { mode: tlsF.oneOf<TlsConfig['mode']>('mode', ['off', 'on', 'require'], 'off') };
  if (tlsF.has('pskFile')) tls.pskFile = resolve(cwd, tlsF.str('pskFile', { what: 'a path (a non-empty string)' }));
  if (tls.mode !== 'off' && listenNbd !== undefined && tls.pskFile === undefined) {
    throw tlsF.error('tls.pskFile', `is missing: tls.mode is ${JSON.stringify(tls.mode)} and listen.nbd is given, and NBD clients need the keys (identity:hexkey lines, as psktool writes them)`);
  }
  // NBD has no authentication of its own: a plain listener another machine
  // can reach would let anyone read and write every volume.
  if (listenNbd !== undefined && !isLoopback(listenNbd.host) && tls.mode !== 'require') {
    throw tlsF.error(
      'tls.mode',
      `is ${JSON.stringify(tls.mode)}, and listen.nbd.host is ${JSON.stringify(listenNbd.host)}, reachable from other machines: NBD authenticates only through TLS-PSK; ` +
        'set tls.mode to "require" (with tls.pskFile) or listen.nbd.host to loopback (127.0.0.1, ::1 or localhost)',
    );
  }

  const logF = top.obj('log', ['level', 'file'], true);
  const log: LogConfig = { level: logF.oneOf('level', LOG_LEVELS, CONFIG_DEFAULTS.logLevel) };
  if (logF.has('file')) log.file = resolve(cwd, logF.str('file'));

  return {
    sourceName,
    idLetter,
    idNumber: letterToNumber(idLetter),
    pairId: pairId.toLowerCase(),
    secret,
    clientToken,
    listen: listenNbd === undefined ? { client: listenClient, peer: listenPeer } : { client: listenClient, peer: listenPeer, nbd: listenNbd },
    mirroring,
    partner,
    store,
    cache,
    userPolicies,
    policies,
    limits,
    heartbeatIntervalMs,
    partnerTimeoutMs,
    peerReconnectMs,
    arbitration,
    alone,
    log,
    tls,
    testHooks,
    testKillAfterDataWrites,
  };
}

/** Hosts that only this machine can reach. */
function isLoopback(host: string): boolean {
  // 127.0.0.0/8 is loopback as a whole, not only 127.0.0.1.
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host) || host === '::1' || host === '[::1]' || host === 'localhost';
}

/** Reads, parses and validates a controller's configuration file. */
export function loadConfig(path: string, opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): ControllerConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new PagepairError('BAD_CONFIG', `${path}: cannot read the configuration: ${(err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new PagepairError('BAD_CONFIG', `${path}: not valid JSON: ${(err as Error).message}`);
  }
  return parseConfig(json, path, opts);
}
