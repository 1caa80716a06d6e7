// What each row of the benchmark runs against, started once and measured many
// times: the two floors (forked ws scripts) and pagepair as a single
// controller or as a mirrored pair (real `pagepair start` processes on
// 127.0.0.1 from temporary configurations).

import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PagepairClient } from '../client/client.js';
import { PagepairError } from '../protocol/errors.js';
import type { ControllerStatus } from '../runtime/controller-process.js';
import { extentBytes } from '../store/layout.js';
import type { BenchConnection } from './driver.js';
import { FloorClient } from './floor-client.js';
import { frameSizes } from './frames.js';
import type { BenchChild, ChildGroup } from './processes.js';
import type { BenchConfigName, BenchOp } from './types.js';
import { freePort } from '../runtime/free-port.js';
import { freePairPorts, pairPlacement } from '../runtime/local-pair.js';
import { waitUntil, WaitFailed } from '../runtime/supervisor.js';

export interface Connected {
  conns: BenchConnection[];
  /** Where the connections went, for the report. */
  target: string;
  close(): Promise<void>;
}

export interface Rig {
  readonly config: BenchConfigName;
  connect(count: number, op: BenchOp): Promise<Connected>;
  /** The processes behind this row. */
  readonly processes: { name: string; pid: number }[];
  /**
   * Waits until the row has no work of its own left (dirty pages destaged),
   * so that nothing from one cell runs on into the next.
   */
  settle(): Promise<void>;
  /** Pages the row's controllers have read from the store so far (0 for the floors): a read that missed the cache. */
  pagesStaged(): Promise<number>;
  /** Each controller's status (pagepair rows only). */
  statuses(): Promise<{ controller: string; status: ControllerStatus }[]>;
}

export interface RigSettings {
  blockBytes: number;
  workingSetBytes: number;
  cacheBytesMax: number;
  mirroredTarget: 'A' | 'both';
  /** Node flags for controller processes (--cpu-prof ...). */
  controllerNodeFlags: string[];
  /** Where the temporary configurations and stores live. */
  dir: string;
  progress(line: string): void;
  /** Controllers with tls.mode "require", clients over TLS. */
  tls?: boolean;
  /** The controllers' store section instead of one file (a pool: scripts/bench-pool-clients.mjs). */
  store?: Record<string, unknown>;
  /** Settings of the cache section in place of the bench's own (dirtyAgeMaxMs, watermarks). */
  cache?: Record<string, number>;
  /** The pair's id, for a store that outlives one rig (the same pool started again degraded). */
  pairId?: string;
  /** Names the areas written (`<prefix>-a`), so that a second rig over the same store allocates its own. */
  areaPrefix?: string;
  /** In place of the bench's 500 ms: a controller creating or scrubbing a new pool on a loaded machine can miss heartbeats that long. */
  partnerTimeoutMs?: number;
}

const READY_TIMEOUT_MS = 30_000;
const CLIENT_TIMEOUT_MS = 10_000;
const PREWRITE_INFLIGHT = 32;
const CLIENT_TOKEN = 'bench-client-token';

// ---------------------------------------------------------------- floors

function floorConnections(clients: FloorClient[], blockBytes: number, pages: number): BenchConnection[] {
  const w = frameSizes('write', blockBytes);
  const r = frameSizes('read', blockBytes);
  return clients.map((c) => ({
    pages,
    write: () => c.request(w.requestBytes, w.replyBytes),
    read: () => c.request(r.requestBytes, r.replyBytes),
  }));
}

function floorRig(config: 'echo' | 'relay', port: number, s: RigSettings, processes: BenchChild[]): Rig {
  const pages = Math.max(1, Math.floor(s.workingSetBytes / s.blockBytes));
  return {
    config,
    processes: processes.map((p) => ({ name: p.name, pid: p.pid })),
    async connect(count) {
      const clients = await Promise.all(Array.from({ length: count }, () => FloorClient.connect(port)));
      return {
        conns: floorConnections(clients, s.blockBytes, pages),
        target: config === 'echo' ? 'echo' : 'A>B',
        close: async () => {
          await Promise.all(clients.map((c) => c.close()));
        },
      };
    },
    settle: () => Promise.resolve(),
    pagesStaged: () => Promise.resolve(0),
    statuses: () => Promise.resolve([]),
  };
}

export async function startEchoRig(group: ChildGroup, s: RigSettings): Promise<Rig> {
  const echo = await group.forkFloor('echo floor', 'echo-server', []);
  return floorRig('echo', echo.port, s, [echo.proc]);
}

export async function startRelayRig(group: ChildGroup, s: RigSettings): Promise<Rig> {
  const b = await group.forkFloor('relay floor B', 'echo-server', []);
  const a = await group.forkFloor('relay floor A', 'relay-server', [String(b.port)]);
  return floorRig('relay', a.port, s, [a.proc, b.proc]);
}

// ---------------------------------------------------------------- pagepair

interface ControllerSpec {
  letter: 'A' | 'B';
  clientPort: number;
  configPath: string;
  tls: boolean;
}

/** The configurations of a single controller or a pair; the default pair's settings, quieter logs. */
async function writeConfigs(mode: 'single' | 'mirrored', s: RigSettings): Promise<ControllerSpec[]> {
  const pairId = s.pairId ?? randomUUID();
  // Two slots per page (store format 2), headers included, and room to spare.
  const storeBytes = Math.max(256 * 1024 * 1024, 2 * extentBytes(4096, Math.ceil(s.workingSetBytes / 4096)) + 64 * 1024 * 1024);
  const common = {
    pairId,
    secret: `bench-peer-secret-${pairId}`,
    clientToken: CLIENT_TOKEN,
    store: s.store ?? { path: join(s.dir, `${mode}.store`), sizeBytes: storeBytes },
    cache: { cacheBytesMax: s.cacheBytesMax, dirtyHighWatermarkPct: 60, dirtyLowWatermarkPct: 30, dirtyAgeMaxMs: 2000, ...s.cache },
    heartbeatIntervalMs: 100,
    partnerTimeoutMs: s.partnerTimeoutMs ?? 500,
    log: { level: 'warn' },
    ...(s.tls === true ? { tls: { mode: 'require' } } : {}),
  };
  if (mode === 'single') {
    const clientPort = await freePort();
    const configPath = join(s.dir, 'single.json');
    writeFileSync(configPath, JSON.stringify({ id: 'A', ...common, mirroring: false, listen: { client: { host: '127.0.0.1', port: clientPort } } }, null, 2));
    return [{ letter: 'A', clientPort, configPath, tls: s.tls === true }];
  }
  const ports = await freePairPorts();
  return (['A', 'B'] as const).map((letter) => {
    const configPath = join(s.dir, `mirrored-${letter.toLowerCase()}.json`);
    const cfg = { ...pairPlacement(letter, ports), ...common, arbitration: { preferred: 'A', fenceAction: 'kill' } };
    writeFileSync(configPath, JSON.stringify(cfg, null, 2));
    return { letter, clientPort: ports[letter].client, configPath, tls: s.tls === true };
  });
}

function connectTo(spec: ControllerSpec, name: string): Promise<PagepairClient> {
  return PagepairClient.connect({ host: '127.0.0.1', port: spec.clientPort, token: CLIENT_TOKEN, tls: spec.tls === true, name, timeoutMs: CLIENT_TIMEOUT_MS });
}

async function statusOf(spec: ControllerSpec): Promise<ControllerStatus> {
  const c = await connectTo(spec, 'pagepair-bench-status');
  try {
    return (await c.status()) as ControllerStatus;
  } finally {
    await c.close();
  }
}

/** Until the controller reports `role`; it must stay up meanwhile. */
async function waitForRole(spec: ControllerSpec, role: string, proc: BenchChild): Promise<void> {
  let last = 'not reachable';
  const probe = async (): Promise<true | null> => {
    try {
      const s = await statusOf(spec);
      if (s.role === role) return true;
      last = `role ${s.role}`;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    return null;
  };
  try {
    await waitUntil(probe, { what: `controller ${spec.letter} ${role}`, timeoutMs: READY_TIMEOUT_MS, pollMs: 100, watch: [proc.supervised] });
  } catch (err) {
    if (!(err instanceof WaitFailed)) throw err;
    if (err.reason === 'exited') throw new PagepairError('INTERNAL', `while starting, ${err.message}`);
    throw new PagepairError('TIMEOUT', `${err.message} (${last}): ${proc.lastLines().join(' | ')}`);
  }
}

/** Writes every page once, so that later reads hit the cache and writes overwrite. */
async function prewrite(client: PagepairClient, guid: string, pages: number, blockBytes: number): Promise<void> {
  const data = Buffer.alloc(blockBytes, 0x5a);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < pages) {
      const page = next++;
      await client.write(guid, page * blockBytes, data);
    }
  };
  await Promise.all(Array.from({ length: PREWRITE_INFLIGHT }, () => worker()));
}

interface Area {
  spec: ControllerSpec;
  guid: string;
  pages: number;
}

export async function startPagepairRig(group: ChildGroup, mode: 'single' | 'mirrored', s: RigSettings): Promise<Rig> {
  const specs = await writeConfigs(mode, s);
  const procs = specs.map((spec) => group.spawnController(`${mode} controller ${spec.letter}`, spec.configPath, s.controllerNodeFlags));
  const role = mode === 'single' ? 'single' : 'mirrored';
  await Promise.all(specs.map((spec, i) => waitForRole(spec, role, procs[i]!)));
  s.progress(`${mode}: ${specs.length === 1 ? 'controller' : 'both controllers'} ${role} (pid ${procs.map((p) => p.pid).join(', ')})`);

  // Split mode: each controller writes its own allocation, so no write has to
  // take a page from the partner (LOCK_REQUEST) in the measured runs.
  const split = mode === 'mirrored' && s.mirroredTarget === 'both';
  const owners = split ? specs : [specs[0]!];
  const areaBytes = Math.floor(s.workingSetBytes / owners.length / s.blockBytes) * s.blockBytes;
  const areas: Area[] = [];
  for (const spec of owners) {
    const c = await connectTo(spec, 'pagepair-bench-setup');
    try {
      const info = await c.allocate(`${s.areaPrefix ?? 'bench'}-${spec.letter.toLowerCase()}`, areaBytes);
      if (info.pageSizeBytes !== s.blockBytes) {
        throw new PagepairError('BAD_FIELD', `the default policy's pages are ${info.pageSizeBytes} bytes; the benchmark writes whole ${s.blockBytes}-byte pages`, 'blockBytes');
      }
      const t0 = Date.now();
      await prewrite(c, info.guid, info.pageCount, s.blockBytes);
      s.progress(`${mode}: pre-wrote ${info.pageCount} pages through ${spec.letter} in ${Date.now() - t0} ms`);
      areas.push({ spec, guid: info.guid, pages: info.pageCount });
    } finally {
      await c.close();
    }
  }
  const settle = async (): Promise<void> => {
    // Each controller destages its own area: a flush through the other one
    // would first have to take the pages over.
    for (const area of areas) {
      const c = await connectTo(area.spec, 'pagepair-bench-flush');
      try {
        await c.flush(area.guid);
      } finally {
        await c.close();
      }
    }
  };
  const t0 = Date.now();
  await settle();
  s.progress(`${mode}: working set destaged in ${Date.now() - t0} ms`);

  const data = Buffer.alloc(s.blockBytes, 0x3c);
  return {
    config: mode,
    processes: procs.map((p) => ({ name: p.name, pid: p.pid })),
    async connect(count) {
      // One connection talks to A; more alternate over the areas (A, B, A, ...).
      const chosen = Array.from({ length: count }, (_, i) => areas[i % areas.length]!);
      const clients = await Promise.all(chosen.map((a) => connectTo(a.spec, 'pagepair-bench')));
      const conns: BenchConnection[] = clients.map((c, i) => {
        const area = chosen[i]!;
        return {
          pages: area.pages,
          write: (page) => c.write(area.guid, page * s.blockBytes, data),
          read: (page) => c.read(area.guid, page * s.blockBytes, s.blockBytes),
        };
      });
      const letters = [...new Set(chosen.map((a) => a.spec.letter))].join('+');
      return {
        conns,
        target: letters,
        close: async () => {
          await Promise.all(clients.map((c) => c.close()));
        },
      };
    },
    settle,
    async pagesStaged() {
      const all = await Promise.all(specs.map((spec) => statusOf(spec)));
      return all.reduce((sum, st) => sum + st.counters.pagesStaged, 0);
    },
    async statuses() {
      return Promise.all(specs.map(async (spec) => ({ controller: spec.letter, status: await statusOf(spec) })));
    },
  };
}
