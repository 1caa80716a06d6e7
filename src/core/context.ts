// The hub of the core: what every room reaches the others through. Each
// room is a class with one job (the file it lives in says which), given this
// hub at construction; ControllerCore (controller.ts) extends it with the
// events the runtime calls, and routes each to the room whose job it is.

import type { CoreConfig, CoreEnv } from './env.js';
import { PageCache } from './page-cache.js';
import { PeerOutbox } from './peer-outbox.js';
import { newCounters, type CoreCounters } from './status.js';
import { Scheduler } from './tasks.js';
import { StoreIo } from './io.js';
import { Membership } from './membership.js';
import { Join } from './join.js';
import { PeerRequests } from './peer-requests.js';
import { Ownership } from './ownership.js';
import { WritePath } from './write-path.js';
import { MirrorIn } from './mirror-in.js';
import { ReadPath } from './read-path.js';
import { RetryTags } from './retry-tags.js';
import { Destager } from './destager.js';
import { Allocator } from './allocator.js';
import { Pointers } from './pointers.js';
import { Verifier } from './verifier.js';
import { Waits } from './waits.js';
import { PoolSync } from './pool-sync.js';
import { AccessKeys } from './access-keys.js';
import { Snapshots } from './snapshots.js';

export class CoreRooms {
  readonly selfId: 1 | 2;
  readonly partnerId: 1 | 2;
  readonly cache: PageCache;
  /** Every frame to the partner leaves through it, in order. */
  readonly outbox: PeerOutbox;
  readonly counters: CoreCounters = newCounters();
  /** Runs the core's tasks; every event is one turn of it. */
  readonly tasks: Scheduler;
  /** Store operations in flight, as effects. */
  readonly io: StoreIo;

  readonly membership: Membership;
  readonly joining: Join;
  readonly requests: PeerRequests;
  readonly ownership: Ownership;
  readonly writes: WritePath;
  readonly mirrorIn: MirrorIn;
  readonly reads: ReadPath;
  readonly tags: RetryTags;
  readonly destager: Destager;
  readonly allocator: Allocator;
  readonly pointers: Pointers;
  readonly verifier: Verifier;
  readonly waits: Waits;
  readonly poolSync: PoolSync;
  readonly access: AccessKeys;
  readonly snapshots: Snapshots;

  constructor(
    readonly cfg: CoreConfig,
    readonly env: CoreEnv,
  ) {
    this.selfId = cfg.selfId;
    this.partnerId = cfg.partnerId;
    this.cache = new PageCache(cfg.cacheBytesMax);
    this.outbox = new PeerOutbox(cfg.limits, () => env.requestFlush());
    this.tasks = new Scheduler((err) => {
      env.log.error({ err: err instanceof Error ? err.stack : String(err) }, 'internal error in a core task');
      env.taskFault?.(err);
    });
    this.io = new StoreIo(this);
    this.waits = new Waits(this);
    this.membership = new Membership(this);
    this.joining = new Join(this);
    this.requests = new PeerRequests(this);
    this.ownership = new Ownership(this);
    this.writes = new WritePath(this);
    this.mirrorIn = new MirrorIn(this);
    this.reads = new ReadPath(this);
    this.tags = new RetryTags();
    this.destager = new Destager(this);
    this.allocator = new Allocator(this);
    this.pointers = new Pointers(this);
    this.verifier = new Verifier(this);
    this.poolSync = new PoolSync(this);
    this.access = new AccessKeys(this);
    this.snapshots = new Snapshots(this);
  }
}

/** What a room sees of the others. */
export type Core = CoreRooms;
