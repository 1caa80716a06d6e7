// One running controller: the only place where the core meets the clock,
// timers, the store file, the peer link, the client endpoint and the logger.

import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { v4 as uuidv4 } from 'uuid';
import type pino from 'pino';
import { ControllerCore, roleName, type CoreStatus } from '../core/controller.js';
import type { CoreConfig, CoreEnv } from '../core/env.js';
import { errorReply } from '../protocol/codec.js';
import { PagepairError, invariant, isPagepairError } from '../protocol/errors.js';
import { Role, type ClientRequest, type Message } from '../protocol/messages.js';
import { openOrFormatFileStore } from '../store/open.js';
import { openMemberByName, openOrCreatePoolStore } from '../store/open-pool.js';
import type { PageStore } from '../store/page-store.js';
import type { Pool, PoolMember, PoolStatus } from '../store/pool.js';
import { POOL_LABEL_AREA_BYTES } from '../store/pool-label.js';
import { KillGate } from './kill-gate.js';
import { PoolJobRunner, poolJobRequestOf, type PoolJobStatus } from './pool-job.js';
import { runIo, storeLayout, type FenceActions } from './store-io.js';
import { ClientEndpoint } from '../transport/client-endpoint.js';
import { NBD_SERVER_DEFAULT_LIMITS, NbdServer } from '../transport/nbd-server.js';
import { readPskFile } from '../transport/tls.js';
import { PeerLink } from '../transport/peer-link.js';
import type { ListenerCounters } from '../transport/ws-listener.js';
import { storeName, type ControllerConfig } from './config.js';
import type { EscapeGuard } from './escape-guard.js';
import { CoreVolumes, NBD_PIECE_BYTES_DEFAULT } from './nbd-volumes.js';

/** How often the core gets a tick; heartbeats and destage ages are measured in these. */
const TICK_MS_MAX = 20;
const PEER_REQUEST_TIMEOUT_MS = 10_000;
const POINTER_LEASE_MS = 30_000;
const CACHE_FULL_WAIT_MS = 5_000;
/** A resync sends at most this many pages a second, so clients keep their speed. */
const RESYNC_PAGES_PER_SEC_MAX = 20_000;
const FENCE_WAIT_MS = 2_000;

/** On one machine: true when no pagepair process has that pid any more. */
async function pagepairProcessGone(pid: number): Promise<boolean> {
  if (pid <= 0 || pid === process.pid) return false;
  try {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    return !cmdline.includes('pagepair');
  } catch {
    return true;
  }
}

/**
 * The fence action for a pair on one machine: SIGKILL the pid the partner
 * recorded in the mailbox, after checking that the pid is still a pagepair
 * process (pids get reused), and wait until it is gone.
 */
async function killPartner(pid: number, log: pino.Logger): Promise<boolean> {
  if (pid <= 0 || pid === process.pid) return false;
  let cmdline: string;
  try {
    cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).replaceAll('\0', ' ');
  } catch {
    return true; // no such process: nothing left to stop
  }
  if (cmdline === '') return true; // a zombie: it has exited, only not been reaped
  if (!cmdline.includes('pagepair')) {
    log.warn({ pid, cmdline: cmdline.slice(0, 200) }, 'fence: the recorded pid is not a pagepair process now; not killing it');
    return true;
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return true;
  }
  log.warn({ pid }, 'fence: killed the partner process');
  const deadline = performance.now() + FENCE_WAIT_MS;
  while (performance.now() < deadline) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
    await sleep(10);
  }
  return false;
}

export interface RunningController {
  readonly config: ControllerConfig;
  readonly core: ControllerCore;
  /** Tell the partner we are going down with an error (called before exiting). */
  announceCrash(): void;
  readonly clientPort: number;
  readonly peerPort: number | null;
  /** The NBD server's TCP port (the real one when configured as 0); null without listen.nbd. */
  readonly nbdPort: number | null;
  status(): ControllerStatus;
  stop(): Promise<void>;
}

export interface ControllerStatus extends CoreStatus {
  pid: number;
  uptimeMs: number;
  rssBytes: number;
  listen: {
    client: string;
    peer: string | null;
    /** tcp: "nbd://host:port"; socket: the unix socket path, if any. */
    nbd: { tcp: string; socket: string | null } | null;
  };
  /** The store file, or the pool's layout and devices. */
  store: string;
  /** The pool under the store (store.pool), as this controller's pool object sees it; null over one file. */
  pool: PoolStatus | null;
  /** The last pool job (C_POOL_JOB: a device replace or a scrub while the pair serves), kept after it ends; null when none ran since start. */
  poolJob: PoolJobStatus | null;
  clients: number;
  /** tls.mode: "off", "on" (TLS and plain) or "require". */
  tls: 'off' | 'on' | 'require';
  /** Connections each WebSocket listener refused or cut, by reason, since start (a flood shows here). */
  refused: { client: ListenerRefusals | null; peer: ListenerRefusals | null };
  /** Errors that escaped every handler to the process (logged each); 0 unless there is a bug. */
  escapedErrors: number;
}

/** One listener's refusals (see ws-listener.ts), and its connections now. */
export type ListenerRefusals = Pick<
  ListenerCounters,
  'open' | 'handshaking' | 'overCap' | 'preAuthBytes' | 'handshakeTimeout' | 'perSource' | 'plainUnderRequire' | 'tlsUnderOff' | 'tlsFailed' | 'badUpgrade'
>;

function refusedOf(c: ListenerCounters | undefined): ListenerRefusals | null {
  if (c === undefined) return null;
  return {
    open: c.open,
    handshaking: c.handshaking,
    overCap: c.overCap,
    preAuthBytes: c.preAuthBytes,
    handshakeTimeout: c.handshakeTimeout,
    perSource: c.perSource,
    plainUnderRequire: c.plainUnderRequire,
    tlsUnderOff: c.tlsUnderOff,
    tlsFailed: c.tlsFailed,
    badUpgrade: c.badUpgrade,
  };
}

/** The store as configured: one file (store.path), or a pool of devices (store.pool) with the store over it. */
async function openStore(cfg: ControllerConfig, storeLog: pino.Logger): Promise<{ store: PageStore; pool: Pool | null }> {
  if (cfg.store.pool !== null) {
    const gate = cfg.testHooks && cfg.testKillAfterDataWrites !== null ? new KillGate(cfg.testKillAfterDataWrites) : null;
    const opened = await openOrCreatePoolStore(cfg.store.pool, {
      pairId: cfg.pairId,
      nowMs: Date.now(),
      tableEntriesMax: cfg.store.tableEntriesMax,
      onEvent: (what, detail) => storeLog.info(detail, what),
      ...(gate !== null ? { wrapMembers: (members: readonly PoolMember[]) => gate.wrap(members) } : {}),
    });
    if (gate !== null) {
      gate.dataFrom = POOL_LABEL_AREA_BYTES + opened.store.superblock.geometry.dataOffset;
      storeLog.warn({ afterWrites: cfg.testKillAfterDataWrites }, 'test hook: this controller kills itself in the middle of a data-area write');
    }
    return opened;
  }
  invariant(cfg.store.path !== null, 'a store without a pool has a path');
  const store = await openOrFormatFileStore(cfg.store.path, {
    pairId: cfg.pairId,
    sizeBytes: cfg.store.sizeBytes,
    nowMs: Date.now(),
    tableEntriesMax: cfg.store.tableEntriesMax,
  });
  return { store, pool: null };
}

export interface StartControllerOptions {
  /** The process-level guard counting escaped errors, shown in status. */
  escapeGuard?: EscapeGuard;
}

export async function startController(cfg: ControllerConfig, log: pino.Logger, opts: StartControllerOptions = {}): Promise<RunningController> {
  const startedMs = performance.now();
  // NBD's TLS keys, read once, before anything is opened: a bad key file stops the start (BAD_CONFIG).
  const nbdTlsKeys = cfg.listen.nbd !== undefined && cfg.tls.mode !== 'off' && cfg.tls.pskFile !== undefined ? readPskFile(cfg.tls.pskFile) : undefined;
  const storeLog = log.child({ component: 'store' });
  const { store, pool } = await openStore(cfg, storeLog);
  storeLog.info({ store: storeName(cfg.store), dataBytes: store.superblock.geometry.dataBytes, ...(pool !== null ? { pool: pool.status() } : {}) }, 'store open');

  // Where the core's replies go, by client connection id: network clients,
  // and the NBD backend's pseudo connection.
  const conns = new Map<number, { reply(msg: Message): void }>();
  let peer: PeerLink | null = null;
  let outFrames: Message[] = [];
  let flushScheduled = false;

  const coreCfg: CoreConfig = {
    selfId: cfg.idNumber,
    partnerId: cfg.partner?.idNumber ?? (cfg.idNumber === 1 ? 2 : 1),
    mirroring: cfg.mirroring,
    cacheBytesMax: cfg.cache.cacheBytesMax,
    dirtyHighWatermarkPct: cfg.cache.dirtyHighWatermarkPct,
    dirtyLowWatermarkPct: cfg.cache.dirtyLowWatermarkPct,
    dirtyAgeMaxMs: cfg.cache.dirtyAgeMaxMs,
    destageConcurrency: cfg.cache.destageConcurrency,
    heartbeatIntervalMs: cfg.heartbeatIntervalMs,
    partnerTimeoutMs: cfg.partnerTimeoutMs,
    preferredId: cfg.arbitration.preferredNumber,
    resyncPagesPerSecMax: RESYNC_PAGES_PER_SEC_MAX,
    peerRequestTimeoutMs: PEER_REQUEST_TIMEOUT_MS,
    pointerLeaseMs: POINTER_LEASE_MS,
    cacheFullWaitMs: CACHE_FULL_WAIT_MS,
    limits: cfg.limits,
    policies: cfg.policies,
    testHooks: cfg.testHooks,
    store: storeLayout(store),
  };
  const fence: FenceActions = {
    fencePartner: (pid) => (cfg.arbitration.fenceAction === 'kill' ? killPartner(pid, log) : Promise.resolve(false)),
    partnerGone: (pid) => (cfg.arbitration.fenceAction === 'kill' ? pagepairProcessGone(pid) : Promise.resolve(false)),
  };

  const env: CoreEnv = {
    sendPeer: (msg) => {
      outFrames.push(msg);
    },
    replyClient: (connId, msg) => conns.get(connId)?.reply(msg),
    requestFlush: () => {
      if (flushScheduled) return;
      flushScheduled = true;
      setImmediate(flush);
    },
    nowMs: () => performance.now(),
    newGuid: () => uuidv4(),
    randomBytes: (n) => randomBytes(n),
    closePeer: (reason) => peer?.drop(reason),
    startIo: (id, op) => {
      void runIo(store, fence, op).then((outcome) => core.onIoDone(id, outcome));
    },
    taskFault: (err) => opts.escapeGuard?.record('taskFault', err),
    pid: process.pid,
    log: log.child({ component: 'core' }),
  };
  const core = new ControllerCore(coreCfg, env);

  function flush(): void {
    flushScheduled = false;
    core.flushOutbox();
    if (outFrames.length === 0) return;
    const frames = outFrames;
    outFrames = [];
    try {
      peer?.sendMany(frames);
    } catch (err) {
      // The link fell between the core's check and the send; its onDown follows.
      log.debug({ err: String(err) }, 'frames dropped: peer link down');
    }
  }

  await core.start();

  if (cfg.mirroring) {
    if (cfg.partner === null || cfg.listen.peer === null) throw new PagepairError('BAD_CONFIG', `${cfg.sourceName}: mirroring needs listen.peer and partner`);
    peer = new PeerLink(
      {
        selfId: cfg.idNumber,
        partnerId: cfg.partner.idNumber,
        pairId: cfg.pairId,
        secret: cfg.secret,
        pid: process.pid,
        listen: cfg.listen.peer,
        partner: cfg.partner.peer,
        limits: cfg.limits,
        reconnectMs: cfg.peerReconnectMs,
        handshakeTimeoutMs: cfg.limits.handshakeTimeoutMs,
        bounds: {
          connectionsMax: cfg.limits.peerConnectionsMax,
          preAuthBytesMax: cfg.limits.preAuthBytesMax,
          handshakesPerSourceMax: cfg.limits.handshakesPerSourceMax,
        },
        bytesBufferedMax: cfg.limits.peerBytesBufferedMax,
        tlsMode: cfg.tls.mode,
        log: log.child({ component: 'peer' }),
      },
      {
        onUp: (info) => core.peerUp(info),
        onDown: (reason) => core.peerDown(reason),
        onMessage: (msg) => core.onPeerMessage(msg),
      },
    );
  }
  const peerPort = peer !== null ? (await peer.start()).port : null;

  const jobLog = log.child({ component: 'pool-job' });
  const poolJobs = new PoolJobRunner({
    pool,
    store,
    barrier: async () => {
      await core.poolBarrier();
    },
    openMember: (name, createBytes) => openMemberByName(name, { createBytes }),
    notServing: () => {
      const role = core.currentRole;
      return role === Role.MIRRORED || role === Role.ALONE || role === Role.SINGLE ? null : `controller ${cfg.idLetter} is ${roleName(role)}, not serving`;
    },
    onEvent: (what, detail) => jobLog.info(detail, what),
  });

  const clientLog = log.child({ component: 'clients' });
  let status: () => ControllerStatus;
  const endpoint = new ClientEndpoint({
    host: cfg.listen.client.host,
    port: cfg.listen.client.port,
    token: cfg.clientToken,
    controllerId: cfg.idNumber,
    pairId: cfg.pairId,
    limits: cfg.limits,
    inflightMax: cfg.limits.inflightPerClientMax,
    replyBytesBufferedMax: cfg.limits.replyBytesBufferedMax,
    connectionsMax: cfg.limits.clientConnectionsMax,
    helloTimeoutMs: cfg.limits.handshakeTimeoutMs,
    bounds: { preAuthBytesMax: cfg.limits.preAuthBytesMax, handshakesPerSourceMax: cfg.limits.handshakesPerSourceMax },
    tlsMode: cfg.tls.mode,
    log: clientLog,
    getRole: () => core.currentRole,
    onRequest: (conn, msg: ClientRequest) => {
      conns.set(conn.id, conn);
      if (msg.kind === 'C_STATUS') {
        // Status carries process facts the pure core does not know.
        conn.reply({ kind: 'C_STATUS_REPLY', json: JSON.stringify(status()), requestId: msg.requestId, epoch: core.currentEpoch, sender: cfg.idNumber, flags: 0 });
        return;
      }
      if (msg.kind === 'C_POOL_JOB') {
        // The pool is the runtime's, not the core's: the job runs here, its barrier through the core.
        poolJobs.start(poolJobRequestOf(msg)).then(
          (jobId) => conn.reply({ kind: 'C_POOL_JOB_REPLY', jobId, requestId: msg.requestId, epoch: core.currentEpoch, sender: cfg.idNumber, flags: 0 }),
          (err: unknown) => {
            const typed = isPagepairError(err) ? err : new PagepairError('INTERNAL', `pool job: ${err instanceof Error ? err.message : String(err)}`);
            if (!isPagepairError(err)) jobLog.error({ err: String(err) }, 'pool job request failed');
            conn.reply(errorReply(msg, typed, core.currentEpoch, cfg.idNumber));
          },
        );
        return;
      }
      core.onClientRequest(conn.id, msg);
    },
    onClose: (conn) => {
      conns.delete(conn.id);
      core.onClientGone(conn.id);
    },
  });
  const clientPort = (await endpoint.start()).port;

  let nbd: { server: NbdServer; volumes: CoreVolumes; port: number; listen: { tcp: string; socket: string | null } } | null = null;
  const nbdCfg = cfg.listen.nbd;
  if (nbdCfg !== undefined) {
    const volumes = new CoreVolumes({
      core,
      // The core refuses a write larger than half its cache, or than requestBytesMax; pieces stay under both.
      pieceBytes: Math.min(NBD_PIECE_BYTES_DEFAULT, Math.floor(cfg.cache.cacheBytesMax / 4), cfg.limits.requestBytesMax),
      log: log.child({ component: 'nbd' }),
    });
    conns.set(volumes.connId, volumes);
    // A request never needs more than the in-flight bound allows: the advertised maximum payload follows it down.
    // And no further than the longest write the backend takes as one request to the core, so that a snapshot
    // holds an NBD write whole or not at all (nbd-volumes.ts).
    const payloadBytesMax = Math.max(64 * 1024, Math.min(NBD_SERVER_DEFAULT_LIMITS.payloadBytesMax, cfg.limits.nbdBytesInFlightMax, volumes.writeBytesMax));
    const server = new NbdServer(
      {
        host: nbdCfg.host,
        port: nbdCfg.port,
        ...(nbdCfg.socket !== undefined ? { socketPath: nbdCfg.socket } : {}),
        limits: {
          payloadBytesMax,
          droppedPayloadBytesMax: Math.max(payloadBytesMax, NBD_SERVER_DEFAULT_LIMITS.droppedPayloadBytesMax),
          bytesInFlightMax: Math.max(payloadBytesMax, cfg.limits.nbdBytesInFlightMax),
          connectionsMax: cfg.limits.nbdConnectionsMax,
          handshakeTimeoutMs: cfg.limits.handshakeTimeoutMs,
          // An option is what a client sends before its export is open (and before TLS): at most preAuthBytesMax, with room for a full export name.
          optionBytesMax: Math.max(4096 + 64, cfg.limits.preAuthBytesMax),
        },
        tls: { mode: cfg.tls.mode, ...(nbdTlsKeys !== undefined ? { keys: nbdTlsKeys } : {}) },
        log: log.child({ component: 'nbd' }),
      },
      volumes,
    );
    let port: number;
    try {
      port = (await server.start()).port;
    } catch (err) {
      // Nothing is served yet: let go of what is open so the process can exit with the reason.
      await server.close().catch(() => undefined);
      await endpoint.close().catch(() => undefined);
      await peer?.close().catch(() => undefined);
      await store.close().catch(() => undefined);
      const where = `${nbdCfg.host}:${nbdCfg.port}${nbdCfg.socket !== undefined ? ` and ${nbdCfg.socket}` : ''}`;
      throw new PagepairError('IO_ERROR', `${cfg.sourceName}: cannot serve NBD on listen.nbd (${where}): ${err instanceof Error ? err.message : String(err)}`, 'listen.nbd');
    }
    // Under "require" only a TLS client gets in: the URL says so (the key goes in ?tls-psk-file=).
    const nbdScheme = cfg.tls.mode === 'require' ? 'nbds' : 'nbd';
    nbd = { server, volumes, port, listen: { tcp: `${nbdScheme}://${nbdCfg.host}:${port}`, socket: nbdCfg.socket ?? null } };
  }

  // "on" takes both; the URL names the scheme a client needs at least.
  const wsScheme = cfg.tls.mode === 'require' ? 'wss' : 'ws';
  status = () => ({
    ...core.status(),
    pid: process.pid,
    uptimeMs: Math.round(performance.now() - startedMs),
    rssBytes: process.memoryUsage.rss(),
    listen: {
      client: `${wsScheme}://${cfg.listen.client.host}:${clientPort}`,
      peer: peerPort === null || cfg.listen.peer === null ? null : `${wsScheme}://${cfg.listen.peer.host}:${peerPort}`,
      nbd: nbd?.listen ?? null,
    },
    store: storeName(cfg.store),
    pool: pool?.status() ?? null,
    poolJob: poolJobs.status(),
    clients: endpoint.connections,
    tls: cfg.tls.mode,
    refused: {
      client: refusedOf(endpoint.listenerCounters),
      peer: peer?.listenerCounters !== undefined ? refusedOf(peer.listenerCounters) : null,
    },
    escapedErrors: opts.escapeGuard?.count ?? 0,
  });

  const tick = setInterval(() => core.tick(), Math.min(TICK_MS_MAX, Math.max(1, Math.floor(cfg.heartbeatIntervalMs / 2))));

  // The mailbox slot records who we are and our pid; takeover will use it.
  await store.writeMailboxSlot({ controllerId: cfg.idNumber, epoch: core.currentEpoch, counter: 1, timeMs: Date.now(), pid: process.pid, role: core.currentRole });
  await store.sync();

  log.info(
    {
      clients: `${wsScheme}://${cfg.listen.client.host}:${clientPort}`,
      peer: peerPort,
      tls: cfg.tls.mode,
      ...(nbd !== null ? { nbd: nbd.listen.tcp, nbdPort: nbd.port, ...(nbd.listen.socket !== null ? { nbdSocket: nbd.listen.socket } : {}) } : {}),
      role: roleName(core.currentRole),
      pid: process.pid,
    },
    'controller listening',
  );

  let stopping: Promise<void> | null = null;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      log.info({}, 'controller stopping');
      // A rebuild cut short leaves its device labelled unfinished (stale); it must let go of the pool before the store closes.
      await poolJobs.stop();
      // NBD clients cannot fail over by themselves: their requests in flight
      // finish (the server waits a grace period) before the core stops serving.
      await nbd?.server.close();
      try {
        await core.shutdown();
      } catch (err) {
        log.error({ err: String(err) }, 'shutdown did not finish cleanly');
      }
      flush();
      clearInterval(tick);
      nbd?.volumes.close();
      await endpoint.close();
      await peer?.close();
      await store
        .writeMailboxSlot({ controllerId: cfg.idNumber, epoch: core.currentEpoch, counter: 2, timeMs: Date.now(), pid: process.pid, role: Role.STOPPING })
        .catch(() => undefined);
      await store.sync().catch(() => undefined);
      await store.close();
      log.info({}, 'controller stopped');
    })();
    return stopping;
  };

  const announceCrash = (): void => {
    core.announceCrash();
    flush();
  };

  return { config: cfg, core, clientPort, peerPort, nbdPort: nbd?.port ?? null, status: () => status(), stop, announceCrash };
}
