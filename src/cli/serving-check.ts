// Is a controller serving the store? Commands that rewrite a pool with the
// pair stopped (`device replace`, `scrub`) must not run under a live
// controller: its writes to the rows being copied or repaired would not be
// held off (docs/pools.md, "Not built yet"). Two cheap looks:
//
// - The store's mailbox (docs/formats.md): every live controller writes its
//   heartbeat slot each heartbeatIntervalMs. The slots are read twice, a
//   little more than two heartbeats apart; a slot whose counter, pid or time
//   moved in between belongs to a live controller, whatever the clocks say.
//   A slot that did not move but whose time is recent and whose role is not
//   STOPPING (a controller stopped cleanly writes STOPPING last) is refused
//   too: the controller may be slow, fenced, or killed a moment ago, and
//   waiting a few seconds settles which.
// - The controllers' listening addresses: something that accepts a TCP
//   connection (or a unix socket) there is most likely a controller, even
//   one that is fenced or paused and writes no heartbeat.

import { connect as netConnect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Role } from '../protocol/messages.js';
import type { MailboxSlot } from '../protocol/store-records.js';
import type { ControllerConfig } from '../runtime/config.js';
import { roleName } from '../core/status.js';
import type { PageStore } from '../store/page-store.js';

export interface ControllerSighting {
  /** A or B. */
  controller: string;
  /** Why it looks alive, each piece of evidence in words. */
  evidence: string[];
}

export interface ServingCheck {
  /** The controllers that look alive; empty when none does. */
  alive: ControllerSighting[];
  /** What was seen of each controller that does not look alive. */
  notes: string[];
  /** The mailbox slots as last read, by controller id - 1 (to compare with afterwards). */
  slots: (MailboxSlot | null)[];
}

export interface ServingCheckOptions {
  /** How long to watch the heartbeat slots (default: from the configuration, a little over two heartbeats). */
  watchMs?: number;
  /** How long a connection attempt may take. */
  connectTimeoutMs?: number;
  nowMs?: () => number;
}

const CONNECT_TIMEOUT_MS_DEFAULT = 500;
/** Clocks of two machines may differ this much before a heartbeat "from the future" counts as recent anyway. */
const CLOCK_SKEW_MS_TOLERATED = 60_000;

const LETTERS = ['A', 'B'] as const;

/** How long to watch the heartbeat slots: a little over two heartbeats, at most two minutes. */
export function heartbeatWatchMs(cfg: ControllerConfig): number {
  return Math.min(120_000, 2 * cfg.heartbeatIntervalMs + 200);
}

/** How recent a still heartbeat must be to count as a controller that may be alive. */
function freshMs(cfg: ControllerConfig): number {
  return 2 * cfg.partnerTimeoutMs + 2 * cfg.heartbeatIntervalMs;
}

/**
 * Look for a live controller of the pair: the mailbox of `store` and the
 * listening addresses of `cfg` and (when known) of the partner's `partnerCfg`.
 */
export async function checkServing(store: PageStore, cfg: ControllerConfig, partnerCfg: ControllerConfig | undefined, opts: ServingCheckOptions = {}): Promise<ServingCheck> {
  const now = opts.nowMs ?? Date.now;
  const watchMs = opts.watchMs ?? heartbeatWatchMs(cfg);
  const [before, probes] = await Promise.all([store.readMailbox(), probeListeners(cfg, partnerCfg, opts.connectTimeoutMs ?? CONNECT_TIMEOUT_MS_DEFAULT)]);
  await sleep(watchMs);
  const after = await store.readMailbox();
  const alive: ControllerSighting[] = [];
  const notes: string[] = [];
  for (let i = 0; i < LETTERS.length; i++) {
    const letter = LETTERS[i]!;
    const evidence: string[] = [];
    const a = before.slots[i] ?? null;
    const b = after.slots[i] ?? null;
    if (b !== null && (a === null || a.counter !== b.counter || a.pid !== b.pid || a.timeMs !== b.timeMs)) {
      evidence.push(`its heartbeat in the store's mailbox moved while watched for ${watchMs} ms (counter ${a?.counter ?? 'none'} to ${b.counter}, pid ${b.pid}, ${roleName(b.role)})`);
    } else if (b !== null && b.role !== Role.STOPPING) {
      const ageMs = now() - b.timeMs;
      if (ageMs <= freshMs(cfg) && ageMs >= -CLOCK_SKEW_MS_TOLERATED) {
        evidence.push(`its heartbeat in the store's mailbox is ${Math.max(0, ageMs)} ms old (pid ${b.pid}, ${roleName(b.role)}), though it did not move for ${watchMs} ms: if it was stopped just now, try again in a few seconds`);
      } else {
        notes.push(`controller ${letter}: last heartbeat ${describeAge(ageMs)} (pid ${b.pid}, ${roleName(b.role)}), not moving: not running`);
      }
    } else if (b !== null) {
      notes.push(`controller ${letter}: stopped cleanly ${describeAge(now() - b.timeMs)} (pid ${b.pid})`);
    } else {
      notes.push(`controller ${letter}: no heartbeat in the store's mailbox`);
    }
    for (const p of probes) if (p.controller === letter && p.accepted) evidence.push(`${p.where} accepts connections`);
    if (evidence.length > 0) alive.push({ controller: letter, evidence });
  }
  return { alive, notes, slots: after.slots };
}

/** The slots whose heartbeat changed since `slots` were read: a controller started meanwhile. */
export async function heartbeatsSince(store: PageStore, slots: readonly (MailboxSlot | null)[]): Promise<string[]> {
  const now = await store.readMailbox();
  const moved: string[] = [];
  for (let i = 0; i < LETTERS.length; i++) {
    const a = slots[i] ?? null;
    const b = now.slots[i] ?? null;
    if (b !== null && (a === null || a.counter !== b.counter || a.pid !== b.pid || a.timeMs !== b.timeMs)) {
      moved.push(`controller ${LETTERS[i]} (pid ${b.pid}, ${roleName(b.role)})`);
    }
  }
  return moved;
}

/** The refusal's text: which controller looks alive, and why. */
export function describeServing(alive: readonly ControllerSighting[]): string {
  return alive.map((s) => `controller ${s.controller} looks alive: ${s.evidence.join('; ')}`).join('. ');
}

function describeAge(ageMs: number): string {
  if (ageMs < 0) return `${Math.round(-ageMs / 1000)} s in the future by this machine's clock`;
  if (ageMs < 120_000) return `${Math.round(ageMs / 1000)} s ago`;
  if (ageMs < 2 * 3_600_000) return `${Math.round(ageMs / 60_000)} min ago`;
  return `${Math.round(ageMs / 3_600_000)} h ago`;
}

interface Probe {
  controller: string;
  where: string;
  accepted: boolean;
}

/** Every address a controller of the pair listens on, as far as the configurations tell. */
function listenersOf(cfg: ControllerConfig, partnerCfg: ControllerConfig | undefined): { controller: string; where: string; target: { host: string; port: number } | { path: string } }[] {
  const out: { controller: string; where: string; target: { host: string; port: number } | { path: string } }[] = [];
  const add = (controller: string, where: string, host: string, port: number): void => {
    if (port === 0) return;
    const h = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' ? '::1' : host;
    if (!out.some((o) => 'host' in o.target && o.target.host === h && o.target.port === port)) out.push({ controller, where: `${where} (${h}:${port})`, target: { host: h, port } });
  };
  const own = (c: ControllerConfig): void => {
    add(c.idLetter, `controller ${c.idLetter}'s listen.client`, c.listen.client.host, c.listen.client.port);
    if (c.listen.peer !== null) add(c.idLetter, `controller ${c.idLetter}'s listen.peer`, c.listen.peer.host, c.listen.peer.port);
    if (c.listen.nbd !== undefined) {
      add(c.idLetter, `controller ${c.idLetter}'s listen.nbd`, c.listen.nbd.host, c.listen.nbd.port);
      if (c.listen.nbd.socket !== undefined) out.push({ controller: c.idLetter, where: `controller ${c.idLetter}'s listen.nbd.socket (${c.listen.nbd.socket})`, target: { path: c.listen.nbd.socket } });
    }
  };
  own(cfg);
  if (partnerCfg !== undefined) own(partnerCfg);
  if (cfg.partner !== null) {
    add(cfg.partner.idLetter, `controller ${cfg.partner.idLetter}'s partner.peer in ${cfg.sourceName}`, cfg.partner.peer.host, cfg.partner.peer.port);
    add(cfg.partner.idLetter, `controller ${cfg.partner.idLetter}'s partner.client in ${cfg.sourceName}`, cfg.partner.client.host, cfg.partner.client.port);
  }
  return out;
}

async function probeListeners(cfg: ControllerConfig, partnerCfg: ControllerConfig | undefined, timeoutMs: number): Promise<Probe[]> {
  return Promise.all(listenersOf(cfg, partnerCfg).map(async (l) => ({ controller: l.controller, where: l.where, accepted: await accepts(l.target, timeoutMs) })));
}

/** Whether a connection to `target` is accepted within timeoutMs (it is closed at once). */
function accepts(target: { host: string; port: number } | { path: string }, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    let socket: Socket;
    const done = (yes: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(yes);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket = 'path' in target ? netConnect({ path: target.path }) : netConnect({ host: target.host, port: target.port });
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}
