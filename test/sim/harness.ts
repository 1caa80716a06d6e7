// Two controller cores in one process: a seeded, ordered, delaying link that
// carries every frame as bytes through the real codec; one MemoryDevice under
// both cores' stores, with completions on the virtual clock; clients; ticks.
// A run is a function of its seed: failures print it.
//
// Faults: the link is cut (a partition, until heal()) or dropped by a core
// (the dialer makes it again); a controller is killed (kill -9) and
// restarted, paused (SIGSTOP: no ticks, frames, client requests or store
// completions reach it until resume(), then they all do), or crashed in the
// middle of one of its store writes, which may land torn.
//
// Watched as the run goes (Harness.violations): no data or table write of a
// controller lands after the partner took over in a newer epoch; no page
// version in the store goes back (a stale writer's page over a newer one);
// no two controllers are alone in one epoch; at most one acknowledges writes
// alone in any epoch; none acknowledges a write unless it serves (mirrored,
// alone or single); neither side ever finds the other breaking the ownership
// rules (a page both own, a stale grant, two contents at one version).

import { ControllerCore, type CoreStatus } from '../../src/core/controller.js';
import type { CoreConfig, CoreEnv, CoreLog } from '../../src/core/env.js';
import { resolvePolicies, type Policy, type PolicyInput } from '../../src/core/policy.js';
import { decode, encode } from '../../src/protocol/codec.js';
import { DEFAULT_LIMITS, type Limits } from '../../src/protocol/limits.js';
import { Role, type ClientRequest, type Message, type MessageKind } from '../../src/protocol/messages.js';
import { MemoryDevice, type PowerCutFate } from '../../src/store/memory-device.js';
import type { Device } from '../../src/store/types.js';
import { PageStore } from '../../src/store/page-store.js';
import { Prng } from './prng.js';
import { Scheduler } from './scheduler.js';
import { SimClient } from './sim-client.js';
import { runIo, storeLayout, type FenceActions } from '../../src/runtime/store-io.js';
import type { IoKind } from '../../src/core/io.js';
import { SimStore, TearableDevice, type Landing, type StoreWriteKind } from './sim-store.js';

export type NodeName = 'A' | 'B';
export type Direction = 'A->B' | 'B->A';

export const PAIR_ID = '3d5c0e8a-6b1f-4c2d-9e7a-1f2b3c4d5e6f';
const MiB = 1024 * 1024;

/** Small page sizes keep the simulated byte traffic cheap. */
export const SIM_POLICIES: PolicyInput[] = [
  { name: 'tiny', dataStructureBytes: 512, pageSizeBytes: 512 },
  { name: 'small', dataStructureBytes: 1024, pageSizeBytes: 1024 },
];

/**
 * Each controller's store over a device of its own (a pool object over
 * member devices the two share) instead of the one MemoryDevice. Power cuts
 * and torn writes of the one device do not apply then.
 */
export interface NodeDevices {
  /** The device the store is formatted on, before the controllers start. */
  format(): Promise<Device>;
  /** A controller's device, opened anew at each start ('view': openStoreView's). */
  open(name: NodeName | 'view', incarnation: number): Promise<Device>;
}

export interface SimOptions {
  seed: number;
  nodeDevices?: NodeDevices;
  /** false: one controller (A) alone, nothing mirrored. */
  mirroring?: boolean;
  /** Bring the link up and wait for both to be mirrored before returning (default true). */
  pair?: boolean;
  cacheBytesMax?: number;
  dirtyHighWatermarkPct?: number;
  dirtyLowWatermarkPct?: number;
  dirtyAgeMaxMs?: number;
  destageConcurrency?: number;
  heartbeatIntervalMs?: number;
  /** Partner silence (and link loss) after which arbitration decides who serves. */
  partnerTimeoutMs?: number;
  preferred?: 'A' | 'B';
  /** The survivor's fence action kills a silent partner (default true), as the runtime's "kill" does. */
  fenceKills?: boolean;
  peerRequestTimeoutMs?: number;
  pointerLeaseMs?: number;
  cacheFullWaitMs?: number;
  /** Virtual ms between ticks of each core; 0 turns ticking off. */
  tickIntervalMs?: number;
  /** Each frame is delayed 0..frameDelayMaxMs (order per direction kept). */
  frameDelayMaxMs?: number;
  /** Frames due at the same ms on one direction reach the core as one chunk, in one turn (default true). */
  chunkFrames?: boolean;
  /** Each store operation completes after 0..storeDelayMaxMs. */
  storeDelayMaxMs?: number;
  /** Each client request reaches its controller after 0..clientDelayMaxMs. */
  clientDelayMaxMs?: number;
  deviceBytes?: number;
  limits?: Partial<Limits>;
  /** Limits the client frames are decoded with on the way in (default: the cores' limits). */
  clientWireLimits?: Limits;
  policies?: PolicyInput[];
  /** Keep debug-level log records too. */
  debugLog?: boolean;
  /**
   * A paused controller's store operations that have not landed yet wait for
   * the resume (they sat in the thread pool) instead of landing during the
   * pause (in the kernel already). Only a fence action that kills the paused
   * process keeps such a write from landing after a takeover.
   */
  deferLandingWhilePaused?: boolean;
}

export interface LogRecord {
  node: NodeName;
  incarnation: number;
  atMs: number;
  level: 'debug' | 'info' | 'warn' | 'error';
  msg: string;
  obj: object;
}

export interface FrameRecord {
  atMs: number;
  dir: Direction;
  kind: MessageKind;
  msg: Message;
}

export interface SimNode {
  readonly name: NodeName;
  readonly id: 1 | 2;
  core: ControllerCore;
  store: SimStore;
  /** Grows at every restart; effects of an older incarnation are ignored. */
  incarnation: number;
  alive: boolean;
  flushScheduled: boolean;
  /** SIGSTOP'd: what would reach it waits in `queued` until resume(). */
  paused: boolean;
  queued: { source: string; run: () => void }[];
  /** Queued events a resume has scheduled and that have not run yet. */
  backlog: number;
  /** The same, per source: while a source has some, what else it delivers queues up behind them. */
  backlogBySource: Map<string, number>;
}

/** A store write seen landing, with who wrote it. */
export interface LandRecord extends Landing {
  atMs: number;
  node: NodeName;
  incarnation: number;
}

/** A write acknowledged to a client: by whom, in which role and epoch. */
export interface AckRecord {
  atMs: number;
  node: NodeName;
  incarnation: number;
  role: number;
  epoch: number;
}

interface Hold {
  match: (msg: Message) => boolean;
  frames: { frame: Buffer; kind: MessageKind }[];
}

export type Settled<T> = { ok: true; value: T } | { ok: false; error: Error };

export interface Tracked<T> {
  readonly promise: Promise<T>;
  settled: boolean;
  result: Settled<T> | undefined;
}

export class Harness {
  readonly sched: Scheduler;
  readonly rng: Prng;
  readonly device: MemoryDevice;
  readonly limits: Limits;
  readonly logs: LogRecord[] = [];
  /** Every frame delivered to a core, in delivery order. */
  readonly delivered: FrameRecord[] = [];
  readonly nodes: SimNode[] = [];
  readonly clients: SimClient[] = [];
  /** Invariants broken during the run (see the top of this file); a test asserts it is empty. */
  readonly violations: string[] = [];
  /** Every epoch record that landed whole, in landing order. */
  readonly epochRecords: LandRecord[] = [];
  /** Data and table writes that landed (page, table, clear), in landing order; torn ones flagged. */
  readonly dataWrites: LandRecord[] = [];
  /** Writes acknowledged to clients. */
  readonly acks: AckRecord[] = [];
  /** Every write that a crash tore. */
  readonly tornWrites: LandRecord[] = [];
  /** The device as the cores' stores see it: writes to it can be torn. */
  readonly tearable: TearableDevice;

  private readonly netRng: Prng;
  private readonly storeRng: Prng;
  private readonly guidRng: Prng;
  private readonly pauseRng: Prng;
  /** Draws which store operations fail while failStoreOps is on: a stream of its own, so other streams stay as they were. */
  private readonly storeFaultRng: Prng;
  /** Per controller: the store operations refused with EIO, and how often (failStoreOps). */
  private readonly storeFaults = new Map<NodeName, { kinds: ReadonlySet<IoKind>; rate: number }>();
  /** Store operations failed on purpose so far. */
  storeFaultsInjected = 0;
  private linkIsUp = false;
  /** cut() partitions the link until heal(); a drop by a core is redialled. */
  private partitioned = false;
  private redialScheduled = false;
  /** Epoch -> controller incarnations seen alone in it / acknowledging writes alone in it. */
  private readonly aloneIn = new Map<number, Set<string>>();
  private readonly aloneAcksIn = new Map<number, Set<string>>();
  /** The epoch record in effect: the last one that landed whole. */
  private effectiveEpoch: { epoch: number; activeId: number } | null = null;
  /** The newest version of each page ("guid:page") that landed whole in the store. */
  private readonly storedVersions = new Map<string, number>();
  private linkGen = 0;
  private readonly lastArrivalMs: Record<Direction, number> = { 'A->B': 0, 'B->A': 0 };
  private readonly lastClientArrivalMs = new Map<number, number>();
  private readonly holds: Partial<Record<Direction, Hold>> = {};
  /** The chunk each direction is filling: frames due at its ms join it. */
  private readonly openChunks: Partial<Record<Direction, { atMs: number; gen: number; frames: { frame: Buffer; kind: MessageKind }[] }>> = {};
  private nextConnId = 1;
  private readonly policies: ReadonlyMap<string, Policy>;

  private constructor(
    readonly opts: SimOptions,
    device: MemoryDevice,
  ) {
    this.rng = new Prng(opts.seed);
    this.netRng = this.rng.fork();
    this.storeRng = this.rng.fork();
    this.guidRng = this.rng.fork();
    // Forked last, so that the streams above stay what they were before pauses existed.
    this.pauseRng = this.rng.fork();
    this.storeFaultRng = new Prng((opts.seed ^ 0x5e1f_0e10) >>> 0);
    this.device = device;
    this.tearable = new TearableDevice(device);
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.policies = resolvePolicies(opts.policies ?? SIM_POLICIES);
    this.sched = new Scheduler(() => this.describe());
    this.sched.afterEachStep.push(() => this.sampleRoles());
  }

  /** Two cores over one fresh store; paired and mirrored unless opts.pair is false. */
  static async createPair(opts: SimOptions): Promise<Harness> {
    const device = new MemoryDevice(opts.deviceBytes ?? 8 * MiB);
    await PageStore.format(opts.nodeDevices === undefined ? device : await opts.nodeDevices.format(), { pairId: PAIR_ID, tableEntriesMax: 64, nowMs: 0 });
    const h = new Harness(opts, device);
    const mirroring = opts.mirroring ?? true;
    const names: NodeName[] = mirroring ? ['A', 'B'] : ['A'];
    for (const name of names) h.nodes.push(await h.makeNode(name, 0));
    h.startTicking();
    await h.run(Promise.all(h.nodes.map((n) => n.core.start())), 'cores started');
    if (mirroring && (opts.pair ?? true)) {
      h.heal();
      await h.waitMirrored();
    }
    return h;
  }

  /** One controller with mirroring switched off. */
  static createSingle(opts: SimOptions): Promise<Harness> {
    return Harness.createPair({ ...opts, mirroring: false });
  }

  get a(): SimNode {
    return this.node('A');
  }

  get b(): SimNode {
    return this.node('B');
  }

  node(name: NodeName): SimNode {
    const n = this.nodes.find((x) => x.name === name);
    if (n === undefined) throw new Error(`sim: no controller ${name}`);
    return n;
  }

  get nowMs(): number {
    return this.sched.nowMs;
  }

  get linkUp(): boolean {
    return this.linkIsUp;
  }

  describe(): string {
    return `seed ${this.opts.seed}, t=${this.sched.nowMs}ms, step ${this.sched.steps}`;
  }

  // ---------------------------------------------------------------- running

  /** Run the simulation until p settles; its value, or its error thrown. */
  async run<T>(p: Promise<T>, what = 'request', maxSteps?: number): Promise<T> {
    const r = await this.settle(p, what, maxSteps);
    if (r.ok) return r.value;
    throw r.error;
  }

  /** Run until p settles, without throwing its error. */
  async settle<T>(p: Promise<T>, what = 'request', maxSteps?: number): Promise<Settled<T>> {
    const t = this.track(p);
    await this.sched.runUntil(() => t.settled, `${what} settled`, maxSteps);
    return t.result!;
  }

  /** Watch a promise without awaiting it. */
  track<T>(promise: Promise<T>): Tracked<T> {
    const t: Tracked<T> = { promise, settled: false, result: undefined };
    promise.then(
      (value) => {
        t.settled = true;
        t.result = { ok: true, value };
      },
      (error: unknown) => {
        t.settled = true;
        t.result = { ok: false, error: error instanceof Error ? error : new Error(String(error)) };
      },
    );
    return t;
  }

  runUntil(pred: () => boolean, what: string, maxSteps?: number): Promise<void> {
    return this.sched.runUntil(pred, what, maxSteps);
  }

  /** Run until no frame, store completion or client request is in flight (ticks aside). */
  runUntilQuiet(maxSteps?: number): Promise<void> {
    return this.sched.runUntil(() => this.quiet(), 'quiet', maxSteps);
  }

  quiet(): boolean {
    return this.sched.pendingWork === 0 && this.clients.every((c) => c.outstanding === 0);
  }

  /** Let ms of virtual time pass, running everything due (ticks included). */
  advance(ms: number): Promise<void> {
    return this.sched.advance(ms);
  }

  async waitMirrored(maxSteps?: number): Promise<void> {
    await this.runUntil(
      () => this.nodes.every((n) => n.core.currentRole === Role.MIRRORED),
      'both controllers mirrored',
      maxSteps,
    );
  }

  // ---------------------------------------------------------------- link

  /**
   * The partition ends and the link comes up: both sides see it in the same
   * turn. With a controller paused, the dialer connects once it resumes.
   */
  heal(): void {
    this.partitioned = false;
    // A core that dropped the link has the dialer bring it back by itself.
    if (this.linkIsUp) return;
    for (const n of this.nodes) if (!n.alive) throw new Error(`sim: ${n.name} is not running`);
    if (this.nodes.some((n) => n.paused)) {
      this.scheduleRedial();
      return;
    }
    // A resumed controller reads what queued up on the old connection (its
    // end, its last frames) before a new one can be made: it has to run first.
    if (this.nodes.some((n) => n.backlog > 0)) {
      this.sched.after(0, 'heal after a resume backlog', () => {
        // Unless a partition or a kill came in between.
        if (!this.partitioned && this.nodes.every((n) => n.alive)) this.heal();
      });
      return;
    }
    this.linkIsUp = true;
    this.linkGen++;
    this.lastArrivalMs['A->B'] = this.sched.nowMs;
    this.lastArrivalMs['B->A'] = this.sched.nowMs;
    this.a.core.peerUp({ partnerPid: pidOf('B', this.b.incarnation) });
    this.b.core.peerUp({ partnerPid: pidOf('A', this.a.incarnation) });
  }

  /** A partition: the link drops (frames in flight and held are lost; both sides hear of it) and stays down until heal(). */
  cut(reason = 'link cut'): void {
    this.partitioned = true;
    this.dropLink(reason);
  }

  /** The connection breaks (not a partition): both sides hear of it, and the dialer makes it again. */
  drop(reason = 'link dropped'): void {
    if (!this.linkIsUp) return;
    this.dropLink(reason);
    this.scheduleRedial();
  }

  /** The link drops; a paused controller hears of it when it resumes. */
  private dropLink(reason: string): void {
    if (!this.linkIsUp) return;
    this.linkIsUp = false;
    this.linkGen++;
    delete this.holds['A->B'];
    delete this.holds['B->A'];
    for (const n of this.nodes) this.deliver(n, 'peer', () => n.core.peerDown(reason));
  }

  /** The runtime's dialer: dials every REDIAL_MS until the link is up, unless partitioned or a controller is down. */
  private scheduleRedial(): void {
    if (this.redialScheduled) return;
    this.redialScheduled = true;
    this.sched.after(REDIAL_MS, 'redial', () => {
      this.redialScheduled = false;
      if (this.linkIsUp || this.partitioned || !this.nodes.every((n) => n.alive)) return;
      // A stopped process accepts no connection; keep dialing.
      if (this.nodes.some((n) => n.paused)) this.scheduleRedial();
      else this.heal();
    });
  }

  /**
   * Hold frames on one direction from the first one `match` accepts: it and
   * every later frame wait (order is kept) until release().
   */
  hold(dir: Direction, match: (msg: Message) => boolean = () => true): void {
    this.holds[dir] = { match, frames: [] };
  }

  heldKinds(dir: Direction): MessageKind[] {
    return this.holds[dir]?.frames.map((f) => f.kind) ?? [];
  }

  release(dir: Direction): void {
    const hold = this.holds[dir];
    delete this.holds[dir];
    if (hold === undefined) return;
    for (const f of hold.frames) this.scheduleFrame(dir, f.frame, f.kind);
  }

  framesOf(kind: MessageKind, dir?: Direction): FrameRecord[] {
    return this.delivered.filter((f) => f.kind === kind && (dir === undefined || f.dir === dir));
  }

  // ---------------------------------------------------------------- controllers

  /** kill -9: the core stops, its clients lose their connections, the partner sees the link drop. */
  kill(name: NodeName): void {
    const n = this.node(name);
    if (!n.alive) return;
    n.alive = false;
    n.store.alive = false;
    n.queued = [];
    this.dropLink(`${name} killed`);
    for (const c of this.clients) if (c.controller === name && !c.closed) c.close();
  }

  /**
   * SIGSTOP: from now on nothing reaches the controller (ticks, frames,
   * client requests, store completions) until resume(). Its store writes
   * already issued still land (in the kernel), unless
   * opts.deferLandingWhilePaused.
   */
  pause(name: NodeName): void {
    const n = this.node(name);
    if (!n.alive || n.paused) return;
    n.paused = true;
    this.logs.push({ node: name, incarnation: n.incarnation, atMs: this.sched.nowMs, level: 'info', msg: 'sim: paused', obj: {} });
  }

  /**
   * SIGCONT: what queued up runs, each source (the peer link, every client
   * connection, every store completion) in its own order, the sources
   * interleaved by the seed. Timers (the core's tick) run after that, as in
   * Node's event loop for a process that was stopped while idle in its poll
   * phase (the common case), or, for a seeded share of resumes, first (it
   * was stopped elsewhere in the loop).
   */
  resume(name: NodeName, opts: { timersFirst?: boolean; clientsFirst?: boolean } = {}): void {
    const n = this.node(name);
    if (!n.alive || !n.paused) return;
    n.paused = false;
    const timersFirst = opts.timersFirst ?? this.pauseRng.chance(0.3);
    this.logs.push({ node: name, incarnation: n.incarnation, atMs: this.sched.nowMs, level: 'info', msg: 'sim: resumed', obj: { queued: n.queued.length, timersFirst } });
    if (timersFirst) n.core.tick();
    n.store.resumed();
    const bySource = new Map<string, (() => void)[]>();
    for (const q of n.queued) {
      let list = bySource.get(q.source);
      if (list === undefined) bySource.set(q.source, (list = []));
      list.push(q.run);
    }
    n.queued = [];
    const lists = [...bySource.entries()];
    while (lists.length > 0) {
      const client = lists.findIndex(([source]) => source.startsWith('client'));
      const i = opts.clientsFirst === true && client >= 0 ? client : this.pauseRng.int(lists.length);
      const [source, list] = lists[i]!;
      const run = list.shift()!;
      if (list.length === 0) lists.splice(i, 1);
      this.deliverLater(n, source, run, `${name} resumed: ${source}`);
    }
    if (!timersFirst) this.sched.after(0, `${name} resumed: timers`, () => this.deliver(n, 'timers', () => n.core.tick()));
  }

  isPaused(name: NodeName): boolean {
    return this.node(name).paused;
  }

  /**
   * The next store write of one of `kinds` by `name` crashes it as it lands:
   * if tearFraction is given and mayTear(kind) allows, only that fraction of
   * the write's bytes reach the device; else the write lands whole and the
   * controller dies before hearing of it.
   */
  crashAtNextWrite(
    name: NodeName,
    kinds: readonly StoreWriteKind[],
    opts: { tearFraction?: number; mayTear?: (kind: StoreWriteKind) => boolean } = {},
  ): void {
    const n = this.node(name);
    n.store.armCrash({
      kinds: new Set(kinds),
      keepFraction: opts.tearFraction ?? 0,
      mayTear: (kind) => opts.tearFraction !== undefined && (opts.mayTear?.(kind) ?? true),
      crash: (l) => {
        this.logs.push({
          node: name,
          incarnation: n.incarnation,
          atMs: this.sched.nowMs,
          level: 'info',
          msg: `sim: crashed during ${l.what}${l.torn === undefined ? '' : ` (torn at ${l.torn.keepFraction.toFixed(2)})`}`,
          obj: {},
        });
        this.kill(name);
      },
    });
  }

  /** Forget a crash armed with crashAtNextWrite that has not happened. */
  /**
   * From now on, each store operation of `kinds` that `name`'s core asks for
   * fails with EIO with probability `rate` (drawn by seed), before it reaches
   * the device; null stops it.
   */
  failStoreOps(name: NodeName, spec: { kinds: readonly IoKind[]; rate: number } | null): void {
    if (spec === null) this.storeFaults.delete(name);
    else this.storeFaults.set(name, { kinds: new Set(spec.kinds), rate: spec.rate });
  }

  disarmCrash(name: NodeName): void {
    this.node(name).store.disarmCrash();
  }

  /**
   * Power is cut under both controllers at once (one host, one store file):
   * both die as kill() has them die, and every store write not yet followed
   * by a completed sync is kept, dropped, or cut at a random byte (or, for a
   * share of them, left with a random set of its 512-byte sectors), as `rng`
   * decides. What the harness learnt from writes that landed (versions in the
   * store, the epoch record in effect, who was alone in which epoch) is
   * forgotten: the store holds what survived, and every incarnation that
   * acted on more is dead. Returns how many writes met each fate.
   */
  powerCut(rng: Prng, odds: { keep: number; drop: number } = { keep: 0.4, drop: 0.3 }): { kept: number; dropped: number; torn: number } {
    for (const n of this.nodes) this.kill(n.name);
    const tally = { kept: 0, dropped: 0, torn: 0 };
    this.device.powerCut((w): PowerCutFate => {
      const r = rng.next();
      if (r < odds.keep) {
        tally.kept++;
        return 'keep';
      }
      if (r < odds.keep + odds.drop) {
        tally.dropped++;
        return 'drop';
      }
      tally.torn++;
      if (rng.chance(0.75)) return { prefixBytes: rng.int(w.data.length) };
      const sectors = new Prng(rng.int(0x7fff_ffff));
      return { sectorBytes: 512, landed: () => sectors.chance(0.5) };
    });
    this.storedVersions.clear();
    this.effectiveEpoch = null;
    this.aloneIn.clear();
    this.aloneAcksIn.clear();
    this.logs.push({ node: 'A', incarnation: this.a.incarnation, atMs: this.sched.nowMs, level: 'info', msg: 'sim: power cut', obj: tally });
    return tally;
  }

  /** Both controllers, dead (a power cut), started again over the store, linked, and mirrored. */
  async restartBoth(): Promise<void> {
    for (const n of [...this.nodes]) await this.restart(n.name);
    this.heal();
    await this.waitMirrored();
  }

  /** A new core for a killed controller, over the same device; started, link still down. */
  async restart(name: NodeName): Promise<SimNode> {
    return this.run(this.beginRestart(name), `${name} restarted`);
  }

  /**
   * restart() for code already running inside the simulation (a chaos actor):
   * it does not drive the scheduler itself, the caller's run does.
   */
  async beginRestart(name: NodeName): Promise<SimNode> {
    const old = this.node(name);
    if (old.alive) this.kill(name);
    const n = await this.makeNode(name, old.incarnation + 1);
    this.nodes[this.nodes.indexOf(old)] = n;
    await n.core.start();
    return n;
  }

  /** The running incarnation of every controller, e.g. "A3 B1". */
  incarnations(): string {
    return this.nodes.map((n) => `${n.name}${n.incarnation}${n.alive ? '' : '(dead)'}${n.paused ? '(paused)' : ''}`).join(' ');
  }

  /** A promise that resolves after ms of virtual time. */
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.sched.after(ms, 'sleep', resolve));
  }

  /** A client connected to one controller. */
  client(name: NodeName): SimClient {
    const wireLimits = this.opts.clientWireLimits ?? this.limits;
    const c = new SimClient(
      this.nextConnId++,
      name,
      {
        submit: (connId, frame) => this.submitClient(name, connId, frame),
        timer: (ms, fn) => this.sched.after(ms, `client timeout`, fn, true),
      },
      wireLimits,
    );
    this.clients.push(c);
    return c;
  }

  status(name: NodeName): CoreStatus {
    return this.node(name).core.status();
  }

  /** A third, independent view of the store: what a restarted controller would read. */
  async openStoreView(): Promise<PageStore> {
    if (this.opts.nodeDevices !== undefined) return PageStore.open(await this.opts.nodeDevices.open('view', 0));
    return PageStore.open(this.device);
  }

  errorLogs(): LogRecord[] {
    return this.logs.filter((r) => r.level === 'error');
  }

  // ---------------------------------------------------------------- wiring

  private async makeNode(name: NodeName, incarnation: number): Promise<SimNode> {
    const id: 1 | 2 = name === 'A' ? 1 : 2;
    const mirroring = this.opts.mirroring ?? true;
    const own = this.opts.nodeDevices === undefined ? null : await this.opts.nodeDevices.open(name, incarnation);
    const inner = await PageStore.open(own ?? this.tearable, { pairId: PAIR_ID, name: `store-${name}` });
    const store = new SimStore(inner, this.sched, this.storeRng, this.opts.storeDelayMaxMs ?? 2, name, own === null ? this.tearable : null);
    store.deferLandingWhilePaused = this.opts.deferLandingWhilePaused ?? false;
    const cfg: CoreConfig = {
      selfId: id,
      partnerId: id === 1 ? 2 : 1,
      mirroring,
      cacheBytesMax: this.opts.cacheBytesMax ?? 4 * MiB,
      dirtyHighWatermarkPct: this.opts.dirtyHighWatermarkPct ?? 60,
      dirtyLowWatermarkPct: this.opts.dirtyLowWatermarkPct ?? 30,
      dirtyAgeMaxMs: this.opts.dirtyAgeMaxMs ?? 3_600_000,
      destageConcurrency: this.opts.destageConcurrency ?? 8,
      heartbeatIntervalMs: this.opts.heartbeatIntervalMs ?? 100,
      partnerTimeoutMs: this.opts.partnerTimeoutMs ?? 600,
      preferredId: this.opts.preferred === 'B' ? 2 : 1,
      resyncPagesPerSecMax: 100_000,
      peerRequestTimeoutMs: this.opts.peerRequestTimeoutMs ?? 60_000,
      pointerLeaseMs: this.opts.pointerLeaseMs ?? 600_000,
      cacheFullWaitMs: this.opts.cacheFullWaitMs ?? 5_000,
      limits: this.limits,
      policies: this.policies,
      store: storeLayout(store),
    };
    const node: SimNode = {
      name,
      id,
      core: undefined as unknown as ControllerCore,
      store,
      incarnation,
      alive: true,
      flushScheduled: false,
      paused: false,
      queued: [],
      backlog: 0,
      backlogBySource: new Map(),
    };
    const current = (): boolean => node.alive && this.nodes.includes(node);
    let storeOps = 0;
    store.hooks = {
      epochNow: () => node.core.currentEpoch,
      onLand: (l) => this.onLand(node, l),
      deliver: (fn) => this.deliver(node, `store ${storeOps++}`, fn),
      paused: () => node.paused,
    };
    const env: CoreEnv = {
      sendPeer: (msg) => {
        if (!current()) return;
        this.sendFrame(name === 'A' ? 'A->B' : 'B->A', msg);
      },
      replyClient: (connId, msg) => {
        if (!current()) return;
        if (msg.kind === 'C_WRITE_REPLY') this.onAck(node);
        const c = this.clients.find((x) => x.connId === connId);
        if (c === undefined || c.closed) return;
        c.onReply(encode(msg));
      },
      requestFlush: () => {
        if (node.flushScheduled) return;
        node.flushScheduled = true;
        this.sched.after(0, `${name} flush outbox`, () =>
          this.deliver(node, 'self', () => {
            node.flushScheduled = false;
            node.core.flushOutbox();
          }),
        );
      },
      nowMs: () => this.sched.nowMs,
      newGuid: () => this.guidRng.uuid(),
      // Drawn only by keyed allocations, so runs without them draw as before.
      randomBytes: (n) => this.guidRng.bytes(n),
      closePeer: (reason) => {
        if (!current()) return;
        this.dropLink(`${name}: ${reason}`);
        // The runtime's dialer dials again after peerReconnectMs.
        this.scheduleRedial();
      },
      startIo: (ioId, op) => {
        const fault = this.storeFaults.get(name);
        if (fault !== undefined && fault.kinds.has(op.kind) && this.storeFaultRng.chance(fault.rate)) {
          // Refused before it reaches the device, after a delay drawn by seed.
          this.storeFaultsInjected++;
          const error = new Error(`simulated EIO on ${op.kind}`);
          this.sched.after(this.storeFaultRng.int(3), `${name} store ${op.kind} fails`, () => this.deliver(node, 'store faults', () => node.core.onIoDone(ioId, { ok: false, error })));
          return;
        }
        // The store completes each operation after a delay drawn by seed (SimStore).
        void runIo(store, fence, op).then((outcome) => node.core.onIoDone(ioId, outcome));
      },
      pid: pidOf(name, incarnation),
      log: this.makeLog(name, incarnation),
    };
    const fence: FenceActions = {
      fencePartner: (pid) => {
        if (!current() || this.opts.fenceKills === false) return Promise.resolve(false);
        const victim = this.nodes.find((n) => pidOf(n.name, n.incarnation) === pid);
        if (victim !== undefined && victim.alive) {
          this.logs.push({ node: name, incarnation, atMs: this.sched.nowMs, level: 'warn', msg: `fence: killed ${victim.name}${victim.paused ? ' (paused)' : ''}`, obj: {} });
          this.kill(victim.name);
        }
        return Promise.resolve(true);
      },
      partnerGone: (pid) => {
        if (this.opts.fenceKills === false) return Promise.resolve(false);
        const n = this.nodes.find((x) => pidOf(x.name, x.incarnation) === pid);
        return Promise.resolve(n === undefined || !n.alive);
      },
    };
    node.core = new ControllerCore(cfg, env);
    return node;
  }

  private makeLog(node: NodeName, incarnation: number): CoreLog {
    const keepDebug = this.opts.debugLog ?? false;
    const rec =
      (level: LogRecord['level']) =>
      (obj: object, msg = ''): void => {
        if (level === 'debug' && !keepDebug) return;
        this.logs.push({ node, incarnation, atMs: this.sched.nowMs, level, msg, obj });
        // The two sides disagreeing on who owns a page, or on a page's bytes at one version, never happens when all is well.
        // Nor does a callback of the core's task queue throw (tasks.ts), nor a request fail inside the core.
        const bug = msg.startsWith('internal error');
        if (level === 'error' && (bug || msg.startsWith('ownership conflict') || msg.startsWith('refused a mirrored page'))) {
          this.violations.push(`${node}${incarnation} at ${this.sched.nowMs} ms: ${msg} ${JSON.stringify(obj)}`);
        }
      };
    return { debug: rec('debug'), info: rec('info'), warn: rec('warn'), error: rec('error') };
  }

  /**
   * Run fn in the controller now, or when it resumes if paused; never in a
   * dead or replaced one. Each source stays in order: what a source delivers
   * while the backlog a resume left of it has not run yet goes behind that
   * backlog (a resumed process reads its socket from where it stopped).
   */
  private deliver(n: SimNode, source: string, fn: () => void): void {
    if (!n.alive || !this.nodes.includes(n)) return;
    if (n.paused) n.queued.push({ source, run: fn });
    else if ((n.backlogBySource.get(source) ?? 0) > 0) this.deliverLater(n, source, fn, `${n.name} behind its backlog: ${source}`);
    else fn();
  }

  /**
   * deliver() for what the harness does not wire itself (an NBD backend in the
   * controller's process, its timers): false when the controller is dead or
   * replaced, and fn never runs.
   */
  deliverTo(n: SimNode, source: string, fn: () => void): boolean {
    if (!n.alive || !this.nodes.includes(n)) return false;
    this.deliver(n, source, fn);
    return true;
  }

  /** Deliver fn from `source` in an event of its own, behind what that source has waiting. */
  private deliverLater(n: SimNode, source: string, fn: () => void, label: string): void {
    n.backlog++;
    n.backlogBySource.set(source, (n.backlogBySource.get(source) ?? 0) + 1);
    this.sched.after(0, label, () => {
      n.backlog--;
      const left = (n.backlogBySource.get(source) ?? 1) - 1;
      if (left === 0) n.backlogBySource.delete(source);
      else n.backlogBySource.set(source, left);
      // Events of one ms run in the order they were scheduled: this one's turn in its source has come.
      if (!n.alive || !this.nodes.includes(n)) return;
      if (n.paused) n.queued.push({ source, run: fn });
      else fn();
    });
  }

  private onLand(n: SimNode, l: Landing): void {
    const rec: LandRecord = { ...l, atMs: this.sched.nowMs, node: n.name, incarnation: n.incarnation };
    if (l.torn !== undefined) this.tornWrites.push(rec);
    if (l.kind === 'epoch') {
      if (l.torn === undefined && l.record !== undefined) {
        this.epochRecords.push(rec);
        this.effectiveEpoch = l.record;
      }
      return;
    }
    if (l.kind !== 'page' && l.kind !== 'table' && l.kind !== 'clear') return;
    this.dataWrites.push(rec);
    if (l.page !== undefined && l.torn === undefined) {
      // Versions only grow: a page write older than what the store holds is a stale writer's.
      const key = `${l.page.guid}:${l.page.page}`;
      const stored = this.storedVersions.get(key) ?? 0;
      if (l.page.version < stored) {
        this.violations.push(
          `page version went back in the store: ${n.name}${n.incarnation} (epoch ${l.writerEpoch}) wrote page ${l.page.page} of ${l.page.guid} ` +
            `at version ${l.page.version} over version ${stored}, at ${this.sched.nowMs} ms`,
        );
      } else this.storedVersions.set(key, l.page.version);
    }
    const eff = this.effectiveEpoch;
    if (eff !== null && eff.activeId !== 0 && eff.activeId !== n.id && eff.epoch > l.writerEpoch) {
      this.violations.push(
        `store write from a superseded controller: ${n.name}${n.incarnation} (epoch ${l.writerEpoch}) ${l.what} landed at ${this.sched.nowMs} ms, ` +
          `after the epoch record gave epoch ${eff.epoch} to ${eff.activeId === 1 ? 'A' : 'B'}`,
      );
    }
  }

  private onAck(n: SimNode): void {
    const role = n.core.currentRole;
    const epoch = n.core.currentEpoch;
    this.acks.push({ atMs: this.sched.nowMs, node: n.name, incarnation: n.incarnation, role, epoch });
    if (role !== Role.MIRRORED && role !== Role.ALONE && role !== Role.SINGLE) {
      this.violations.push(`${n.name}${n.incarnation} acknowledged a write while ${n.core.status().role}, in epoch ${epoch} (at ${this.sched.nowMs} ms)`);
    }
    if (role !== Role.ALONE) return;
    let set = this.aloneAcksIn.get(epoch);
    if (set === undefined) this.aloneAcksIn.set(epoch, (set = new Set()));
    set.add(`${n.name}${n.incarnation}`);
    if (set.size === 2) this.violations.push(`two controllers acknowledged writes alone in epoch ${epoch}: ${[...set].join(', ')} (at ${this.sched.nowMs} ms)`);
  }

  /** After every step: no two controllers alone in one epoch. */
  private sampleRoles(): void {
    for (const n of this.nodes) {
      if (!n.alive || n.core.currentRole !== Role.ALONE) continue;
      const epoch = n.core.currentEpoch;
      let set = this.aloneIn.get(epoch);
      if (set === undefined) this.aloneIn.set(epoch, (set = new Set()));
      const who = `${n.name}${n.incarnation}`;
      if (set.has(who)) continue;
      set.add(who);
      if (set.size === 2) this.violations.push(`two controllers alone in epoch ${epoch}: ${[...set].join(', ')} (at ${this.sched.nowMs} ms)`);
    }
  }

  private startTicking(): void {
    const every = this.opts.tickIntervalMs ?? 10;
    if (every <= 0) return;
    const tick = (): void => {
      for (const n of this.nodes) if (n.alive && !n.paused) n.core.tick();
      this.sched.after(every, 'tick', tick, true);
    };
    this.sched.after(every, 'tick', tick, true);
  }

  private sendFrame(dir: Direction, msg: Message): void {
    if (!this.linkIsUp) return; // the core has not heard yet; the frame is lost like on a real cut
    const frame = encode(msg);
    const hold = this.holds[dir];
    if (hold !== undefined && (hold.frames.length > 0 || hold.match(msg))) {
      hold.frames.push({ frame, kind: msg.kind });
      return;
    }
    this.scheduleFrame(dir, frame, msg.kind);
  }

  /**
   * Frames that reach a core at the same virtual ms on one direction arrive
   * as one chunk: the core handles them one after another in one turn, with
   * no promise continuation in between, as a socket read delivers every
   * frame of a TCP segment synchronously (ws does). A core must act on each
   * frame as it is handled, in link order.
   */
  private scheduleFrame(dir: Direction, frame: Buffer, kind: MessageKind): void {
    const gen = this.linkGen;
    const arrival = Math.max(this.sched.nowMs + this.netRng.int((this.opts.frameDelayMaxMs ?? 2) + 1), this.lastArrivalMs[dir]);
    this.lastArrivalMs[dir] = arrival;
    const open = this.openChunks[dir];
    if ((this.opts.chunkFrames ?? true) && open !== undefined && open.atMs === arrival && open.gen === gen) {
      open.frames.push({ frame, kind });
      return;
    }
    const chunk = { atMs: arrival, gen, frames: [{ frame, kind }] };
    this.openChunks[dir] = chunk;
    this.sched.at(arrival, `${dir} ${kind}`, () => {
      if (this.openChunks[dir] === chunk) delete this.openChunks[dir];
      if (gen !== this.linkGen || !this.linkIsUp) return;
      const to = this.node(dir === 'A->B' ? 'B' : 'A');
      // A paused controller reads it from its socket when it resumes, unless
      // it closed that socket itself first (its timers run first and may
      // find the partner silent): then the unread bytes are gone.
      const queued = to.paused;
      this.deliver(to, 'peer', () => {
        for (const f of chunk.frames) {
          // A frame before this one in the chunk may have made the core drop the link.
          if (gen !== this.linkGen || !this.linkIsUp) return;
          if (queued && to.core.status().partner?.link !== 'up') return;
          const msg = decode(f.frame, this.limits);
          this.delivered.push({ atMs: this.sched.nowMs, dir, kind: msg.kind, msg });
          to.core.onPeerMessage(msg);
        }
      });
    });
  }

  private submitClient(name: NodeName, connId: number, frame: Buffer): void {
    const arrival = Math.max(this.sched.nowMs + this.netRng.int((this.opts.clientDelayMaxMs ?? 1) + 1), this.lastClientArrivalMs.get(connId) ?? 0);
    this.lastClientArrivalMs.set(connId, arrival);
    this.sched.at(arrival, `client ${connId} -> ${name}`, () => {
      const n = this.node(name);
      const c = this.clients.find((x) => x.connId === connId);
      if (c === undefined || c.closed) return;
      // Connecting to a controller that is down fails like a refused connection.
      if (!n.alive) {
        c.close();
        return;
      }
      this.deliver(n, `client ${connId}`, () => {
        if (c.closed) return;
        n.core.onClientRequest(connId, decode(frame, this.opts.clientWireLimits ?? this.limits) as ClientRequest);
      });
    });
  }
}

/** Deterministic page-sized contents that say who wrote them. */
export function tagged(bytes: number, tag: string): Buffer {
  const b = Buffer.alloc(bytes);
  const t = Buffer.from(`${tag}|`);
  for (let i = 0; i < bytes; i += t.length) t.copy(b, i, 0, Math.min(t.length, bytes - i));
  return b;
}

/** How soon the link comes back after a core dropped it (the runtime's peerReconnectMs). */
const REDIAL_MS = 100;

/** The pid a simulated controller records in the mailbox. */
function pidOf(name: NodeName, incarnation: number): number {
  return (name === 'A' ? 1000 : 2000) + incarnation;
}
