// The NBD volume layer (src/runtime/nbd-volumes.ts, CoreVolumes) on a
// simulated controller, as the runtime wires it: one CoreVolumes per
// controller process, its requests going into the core as client requests on
// a connection id of its own, the core's answers routed back to it. It runs on
// the simulator's virtual clock (its retry pauses are scheduler events).
//
// What an NBD client sees of it: a request crosses the socket to the
// controller after a seeded delay and is handled there like any event of
// that process (it waits while the controller is paused; a killed one
// refuses it); the answer crosses back after another delay. When the
// controller is killed, every request not answered yet fails with
// CONNECTION_LOST, as the NBD socket breaks.

import { decode } from '../../src/protocol/codec.js';
import type { Message } from '../../src/protocol/messages.js';
import { CoreVolumes, NBD_CONN_ID, type VolumeCore } from '../../src/runtime/nbd-volumes.js';
import type { NbdVolume } from '../../src/transport/nbd-backend.js';
import type { Harness, NodeName, SimNode } from './harness.js';
import type { Prng } from './prng.js';
import { SimClient } from './sim-client.js';

export interface NbdEndpointOptions {
  /** Each request reaches the controller, and each answer the client, after 0..socketDelayMaxMs. */
  socketDelayMaxMs: number;
  pieceBytes: number;
  readPieceBytes: number;
  piecesInFlight: number;
  /** Log every request into the core and every refusal it answers (in Harness.logs), for a failure's trace. */
  trace?: boolean;
}

/** What an NBD client sees when the controller's socket breaks (or a dead one refuses the connection). */
export class ConnectionLost extends Error {
  constructor(readonly controller: NodeName) {
    super(`NBD connection to ${controller} lost`);
  }
}

function connectionLost(name: NodeName): ConnectionLost {
  return new ConnectionLost(name);
}

/**
 * Runs fn in the controller as the harness delivers its own events: now, or
 * when it resumes if paused, in order per source; false when it is dead or
 * replaced.
 */
export function runIn(h: Harness, n: SimNode, source: string, fn: () => void): boolean {
  return h.deliverTo(n, source, fn);
}

/**
 * The harness routes a core's answers to the client connection with their
 * connection id, encoded: this one decodes them for its CoreVolumes. Killing
 * the controller closes it (Harness.kill closes its clients).
 */
class NbdConnection extends SimClient {
  volumes: CoreVolumes | null = null;
  /** Run when the connection breaks: requests and retry pauses that would otherwise wait for ever. */
  readonly onClose = new Set<() => void>();

  constructor(
    connId: number,
    controller: NodeName,
    private readonly decodeLimits: Harness['limits'],
    private readonly traceReply: ((msg: Message) => void) | null,
  ) {
    super(
      connId,
      controller,
      {
        submit: () => {
          throw new Error('an NBD connection sends nothing through the client endpoint');
        },
      },
      decodeLimits,
    );
  }

  override get outstanding(): number {
    return this.volumes?.inflight ?? 0;
  }

  override onReply(frame: Buffer): void {
    const msg: Message = decode(frame, this.decodeLimits);
    this.traceReply?.(msg);
    this.volumes?.reply(msg);
  }

  override close(): void {
    if (this.closed) return;
    super.close();
    this.volumes?.close();
    const waiting = [...this.onClose];
    this.onClose.clear();
    for (const f of waiting) f();
  }
}

/** One controller incarnation's NBD server backend. */
export class NbdEndpoint {
  readonly volumes: CoreVolumes;
  private readonly conn: NbdConnection;

  constructor(
    private readonly h: Harness,
    readonly node: SimNode,
    connId: number,
    private readonly rng: Prng,
    private readonly opts: NbdEndpointOptions,
  ) {
    this.conn = new NbdConnection(connId, node.name, h.limits, opts.trace === true ? (msg) => this.log(`sim: nbd answer ${msg.kind} #${msg.requestId}${msg.kind === 'ERROR' ? ` ${msg.code} ${msg.message}` : ''}`) : null);
    const core: VolumeCore = {
      get currentRole() {
        return node.core.currentRole;
      },
      onClientRequest: (id, msg) => {
        if (!node.alive || !h.nodes.includes(node)) return;
        if (opts.trace === true && msg.kind !== 'C_LIST') {
          const at = 'offset' in msg ? ` ${msg.offset}+${msg.kind === 'C_WRITE' ? msg.data.length : msg.kind === 'C_READ' ? msg.length : 0}` : '';
          this.log(`sim: nbd ${msg.kind} #${msg.requestId}${at}`);
        }
        node.core.onClientRequest(id, msg);
      },
    };
    this.volumes = new CoreVolumes({
      core,
      connId,
      // Retry tags must be the run's own, not random: a seed replays exactly.
      clientId: 0x4e42_0000 + connId,
      pieceBytes: opts.pieceBytes,
      readPieceBytes: opts.readPieceBytes,
      piecesInFlight: opts.piecesInFlight,
      nowMs: () => h.nowMs,
      sleep: (ms) => this.sleep(ms),
    });
    this.conn.volumes = this.volumes;
    h.clients.push(this.conn);
  }

  get name(): NodeName {
    return this.node.name;
  }

  /** Broken: the controller was killed (or replaced). */
  get closed(): boolean {
    return this.conn.closed || !this.node.alive || !this.h.nodes.includes(this.node);
  }

  /**
   * One NBD request: it crosses the socket, the NBD server hands it to the
   * backend in the controller's process, and the answer crosses back.
   */
  call<T>(what: string, fn: (v: CoreVolumes) => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(connectionLost(this.name));
    return new Promise<T>((resolve, reject) => {
      const lost = (): void => reject(connectionLost(this.name));
      this.conn.onClose.add(lost);
      this.h.sched.after(this.rng.int(this.opts.socketDelayMaxMs + 1), `nbd ${what} -> ${this.name}`, () => {
        const handed = runIn(this.h, this.node, `nbd ${this.conn.connId}`, () => {
          if (this.conn.closed) return;
          this.conn.onClose.delete(lost);
          let p: Promise<T>;
          try {
            p = fn(this.volumes);
          } catch (err) {
            p = Promise.reject(err instanceof Error ? err : new Error(String(err)));
          }
          const back = (settle: () => void): void => this.h.sched.after(this.rng.int(this.opts.socketDelayMaxMs + 1), `nbd ${what} <- ${this.name}`, settle);
          p.then(
            (value) => back(() => resolve(value)),
            (err: unknown) => back(() => reject(err instanceof Error ? err : new Error(String(err)))),
          );
        });
        if (!handed) {
          this.conn.onClose.delete(lost);
          lost();
        }
      });
    });
  }

  /** The export, looked up by name as the NBD handshake does. */
  findVolume(name: string): NbdVolume | undefined {
    return this.volumes.findVolume(name);
  }

  private log(msg: string): void {
    this.h.logs.push({ node: this.node.name, incarnation: this.node.incarnation, atMs: this.h.nowMs, level: 'info', msg, obj: {} });
  }

  /** A retry pause of CoreVolumes: a timer of the controller's process. */
  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const wake = (): void => {
        this.conn.onClose.delete(wake);
        resolve();
      };
      this.conn.onClose.add(wake);
      this.h.sched.after(ms, `nbd retry pause on ${this.name}`, () => {
        // A dead controller's pause ends at once: CoreVolumes is closed then and fails the request.
        if (!runIn(this.h, this.node, 'timers', wake)) wake();
      });
    });
  }
}

/** Connection ids for NBD backends: one per controller incarnation, far above the client endpoint's. */
export function nbdConnIds(): () => number {
  let next = NBD_CONN_ID;
  return () => next++;
}
