// Watches both controllers while a workload runs: asks each for its status
// through a connection of its own every pollIntervalMs, and turns what
// changes into events (down and up, takeover, fenced, resync progress,
// mirrored again) so the progress output and the chart can show them where
// they happened. A controller that does not answer is simply "down".

import { performance } from 'node:perf_hooks';
import { PagepairClient, type ControllerAddress } from '../client/client.js';
import { isPagepairError } from '../protocol/errors.js';

export type PairEventKind =
  | 'down'
  | 'up'
  | 'takeover'
  | 'fenced'
  | 'arbitrating'
  | 'joining'
  | 'starting'
  /** A resync started (the survivor sends its partner what it missed). */
  | 'resync'
  | 'resync-progress'
  | 'resync-done'
  | 'mirrored'
  | 'role'
  | 'failover'
  /** Marked by the caller (the kill test): it killed, paused, cut off, restarted or resumed a controller, or healed the link. */
  | 'kill'
  | 'pause'
  | 'partition'
  | 'restart'
  | 'resume'
  | 'heal'
  | 'note';

export interface PairEvent {
  /** ms since the epoch (performance clock). */
  atEpochMs: number;
  /** ms since the run's start; negative before it (prefill). Filled in by the runner. */
  tMs: number;
  controller: string | null;
  kind: PairEventKind;
  /** The controller's role after the event, when known. */
  role: string | null;
  detail: string;
  resync?: { pagesSent: number; pagesToSend: number };
}

/** The part of a controller's status the monitor reads. */
interface StatusView {
  role?: string;
  epoch?: number;
  resync?: { authoritative?: boolean | null; pagesToSend?: number; pagesSent?: number; done?: boolean } | null;
}

interface Watched {
  addr: ControllerAddress;
  client: PagepairClient | null;
  polling: Promise<void> | null;
  /** Status requests in a row that got no answer in time. */
  timeouts: number;
  up: boolean | null;
  role: string | null;
  resyncing: boolean;
  resyncReportedMs: number;
  resyncSent: number;
}

export interface PairMonitorOptions {
  pollIntervalMs?: number;
  /** A status that takes longer counts as no answer. */
  timeoutMs?: number;
  /** At most one resync progress event per controller this often. */
  resyncEveryMs?: number;
  onEvent(e: PairEvent): void;
}

export function epochNowMs(): number {
  return performance.timeOrigin + performance.now();
}

const ROLE_EVENT: Record<string, PairEventKind> = {
  alone: 'takeover',
  fenced: 'fenced',
  arbitrating: 'arbitrating',
  joining: 'joining',
  starting: 'starting',
  mirrored: 'mirrored',
};

export class PairMonitor {
  private readonly watched: Watched[];
  private timer: NodeJS.Timeout | undefined;
  private readonly pollIntervalMs: number;
  private readonly timeoutMs: number;
  private readonly resyncEveryMs: number;
  private stopped = false;

  constructor(
    controllers: readonly ControllerAddress[],
    private readonly opts: PairMonitorOptions,
  ) {
    this.pollIntervalMs = opts.pollIntervalMs ?? 250;
    this.timeoutMs = opts.timeoutMs ?? 1500;
    this.resyncEveryMs = opts.resyncEveryMs ?? 1000;
    this.watched = controllers.map((addr) => ({
      addr,
      client: null,
      polling: null,
      timeouts: 0,
      up: null,
      role: null,
      resyncing: false,
      resyncReportedMs: 0,
      resyncSent: -1,
    }));
  }

  /** Takes a first look at every controller (so the starting roles are known), then polls. */
  async start(): Promise<void> {
    await Promise.all(this.watched.map((w) => this.poll(w)));
    this.timer = setInterval(() => {
      for (const w of this.watched) if (w.polling === null) void this.poll(w);
    }, this.pollIntervalMs);
    this.timer.unref();
  }

  /** Each controller's role as last seen; null when it did not answer. */
  roles(): Record<string, string | null> {
    return Object.fromEntries(this.watched.map((w) => [w.addr.id, w.up === true ? w.role : null]));
  }

  /**
   * A role someone else saw first (the kill test polls faster): taken as
   * seen, so a later poll that finds it does not report it again. True when
   * it is news to the monitor.
   */
  noteRole(id: string, role: string): boolean {
    const w = this.watched.find((x) => x.addr.id === id);
    if (w === undefined) return true;
    if (w.up === true && w.role === role) return false;
    w.up = true;
    w.role = role;
    return true;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    // A poll still connecting would otherwise leave a connection open behind us.
    await Promise.all(this.watched.map((w) => w.polling));
    await Promise.all(this.watched.map((w) => w.client?.close().catch(() => undefined)));
    for (const w of this.watched) w.client = null;
  }

  private poll(w: Watched): Promise<void> {
    const p = this.pollOnce(w).finally(() => {
      w.polling = null;
    });
    w.polling = p;
    return p;
  }

  private async pollOnce(w: Watched): Promise<void> {
    if (this.stopped) return;
    let status: StatusView;
    try {
      if (w.client === null || !w.client.isOpen) {
        w.client = await PagepairClient.connect({ ...w.addr, name: 'pagepair-workload-monitor', timeoutMs: this.timeoutMs });
      }
      if (this.stopped) return;
      status = (await w.client.status()) as StatusView;
      w.timeouts = 0;
    } catch (err) {
      if (this.stopped) return;
      // A busy controller may miss one deadline; a closed or refused connection is down at once.
      if (isPagepairError(err, 'TIMEOUT') && w.client !== null && w.client.isOpen && ++w.timeouts < 2) return;
      const c = w.client;
      w.client = null;
      w.timeouts = 0;
      void c?.close().catch(() => undefined);
      if (w.up !== false) {
        const first = w.up === null;
        w.up = false;
        w.resyncing = false;
        this.emit(w, 'down', null, first ? `${w.addr.id} does not answer at the start` : `${w.addr.id} does not answer (${err instanceof Error ? err.message : String(err)})`);
      }
      return;
    }
    this.observe(w, status);
  }

  private observe(w: Watched, s: StatusView): void {
    const role = typeof s.role === 'string' ? s.role : 'unknown';
    const id = w.addr.id;
    if (w.up === false) {
      w.up = true;
      this.emit(w, 'up', role, `${id} answers again (${role})`);
      w.role = role;
    } else if (w.up === null) {
      w.up = true;
      w.role = role;
    } else if (role !== w.role) {
      const kind = ROLE_EVENT[role] ?? 'role';
      const epoch = typeof s.epoch === 'number' ? `, epoch ${s.epoch}` : '';
      const detail =
        kind === 'takeover'
          ? `${id} serves alone${epoch}`
          : kind === 'mirrored'
            ? `${id} mirrored again${epoch}`
            : kind === 'fenced'
              ? `${id} fenced itself${epoch}`
              : `${id} ${role}${epoch}`;
      w.role = role;
      this.emit(w, kind, role, detail);
    }

    const r = s.resync ?? null;
    const sending = r !== null && (r.authoritative === true || (r.pagesToSend ?? 0) > 0);
    if (!sending) {
      w.resyncing = false;
      return;
    }
    const sent = r.pagesSent ?? 0;
    const toSend = r.pagesToSend ?? 0;
    const now = epochNowMs();
    if (!w.resyncing) {
      w.resyncing = true;
      w.resyncSent = sent;
      w.resyncReportedMs = now;
      this.emit(w, 'resync', role, `${id} resyncs its partner: ${sent} of ${toSend} pages`, { pagesSent: sent, pagesToSend: toSend });
      return;
    }
    if (r.done === true && w.resyncSent !== -2) {
      w.resyncSent = -2;
      this.emit(w, 'resync-done', role, `${id} sent its partner all ${toSend} pages`, { pagesSent: sent, pagesToSend: toSend });
      return;
    }
    if (w.resyncSent >= 0 && sent !== w.resyncSent && now - w.resyncReportedMs >= this.resyncEveryMs) {
      w.resyncSent = sent;
      w.resyncReportedMs = now;
      this.emit(w, 'resync-progress', role, `${id} resync: ${sent} of ${toSend} pages`, { pagesSent: sent, pagesToSend: toSend });
    }
  }

  private emit(w: Watched, kind: PairEventKind, role: string | null, detail: string, resync?: PairEvent['resync']): void {
    this.opts.onEvent({ atEpochMs: epochNowMs(), tMs: 0, controller: w.addr.id, kind, role, detail, ...(resync !== undefined ? { resync } : {}) });
  }
}
