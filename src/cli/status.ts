// `pagepair status`: what one controller says of itself and of its partner.

import { PagepairClient, controllerAddresses } from '../client/index.js';
import { PagepairError } from '../protocol/errors.js';
import type { ControllerConfig } from '../runtime/config.js';
import type { ControllerStatus } from '../runtime/controller-process.js';
import type { PoolJobStatus } from '../runtime/pool-job.js';
import { formatBytes, formatDuration } from '../workload/units.js';
import { poolLines } from './pool.js';

/** --tls of the tools that connect to a controller. */
export const CLIENT_TLS_HELP = 'connect with TLS (wss://, TLS-PSK keyed by the client token); always so when the configuration\'s tls.mode is "require"';

/**
 * The configuration as a client tool sees it: with --tls its clients connect
 * with TLS, as they must when tls.mode is "require" (the controllers' own
 * settings are not changed: the tool only reads them).
 */
export function clientView(cfg: ControllerConfig, tls: boolean | undefined): ControllerConfig {
  return tls === true && cfg.tls.mode !== 'require' ? { ...cfg, tls: { ...cfg.tls, mode: 'require' } } : cfg;
}

export async function fetchStatus(cfg: ControllerConfig, which: 'self' | 'A' | 'B', timeoutMs = 5000): Promise<ControllerStatus> {
  let addr: { host: string; port: number; token: string; tls?: boolean } = { host: cfg.listen.client.host, port: cfg.listen.client.port, token: cfg.clientToken, tls: cfg.tls.mode === 'require' };
  if (which !== 'self' && which !== cfg.idLetter) {
    if (cfg.partner === null) throw new PagepairError('BAD_FIELD', `${cfg.sourceName} names no partner ${which}`, 'controller');
    const a = controllerAddresses({ id: cfg.idLetter, clientToken: cfg.clientToken, listen: cfg.listen, partner: { id: cfg.partner.idLetter, client: cfg.partner.client }, tls: cfg.tls });
    addr = a.partner;
  } else if (addr.host === '0.0.0.0') {
    addr = { ...addr, host: '127.0.0.1' };
  }
  const client = await PagepairClient.connect({ ...addr, name: 'pagepair-status', timeoutMs });
  try {
    return (await client.status()) as ControllerStatus;
  } finally {
    await client.close();
  }
}

export function formatStatus(s: ControllerStatus): string {
  const rows: [string, string][] = [
    ['controller', `${s.controller}   role ${s.role}   epoch ${s.epoch}   pid ${s.pid}   up ${formatDuration(s.uptimeMs)}`],
    [
      'partner',
      s.partner === null
        ? 'none (mirroring off)'
        : `link ${s.partner.link}` +
          (s.partner.role !== null ? `, role ${s.partner.role}` : '') +
          (s.partner.lastHeardMsAgo !== null ? `, heard ${s.partner.lastHeardMsAgo} ms ago` : ''),
    ],
    ['listening', `clients ${s.listen.client}${s.listen.peer !== null ? `   peer ${s.listen.peer}` : ''}   (${s.clients} connected)`],
    ['tls', tlsText(s.tls)],
    ['refused', refusedText(s.refused)],
    ...(s.listen.nbd != null ? [['nbd', `${s.listen.nbd.tcp}/<volume>${s.listen.nbd.socket !== null ? `   ${s.listen.nbd.tcp.startsWith('nbds:') ? 'nbds' : 'nbd'}+unix:///<volume>?socket=${s.listen.nbd.socket}` : ''}`] as [string, string]] : []),
    ['store', s.store],
    // A controller of an older version, or over one file, reports no pool.
    ...(s.pool != null ? poolLines(s.pool) : []),
    ...(s.poolJob != null ? [['pool job', poolJobText(s.poolJob, Date.now())] as [string, string]] : []),
    ['allocations', String(s.allocations)],
    // A controller of an older version reports no space.
    ...(s.space != null ? [['space', spaceText(s.space)] as [string, string]] : []),
    ['cache', `${s.cachedPages} pages, ${formatBytes(s.cachedBytes)} of ${formatBytes(s.cacheBytesMax)}; RSS ${formatBytes(s.rssBytes)}`],
    ['dirty', `${s.dirtyPages} pages, ${formatBytes(s.dirtyBytes)}`],
    ['destage', `queue ${s.destageQueue}, in flight ${s.destageInFlight}; ${s.counters.pagesDestaged} pages destaged`],
    ['pointers', String(s.openPointers)],
    ...(s.resync !== null
      ? [
          [
            'resync',
            `${s.resync.authoritative === true ? 'sending our state' : s.resync.authoritative === false ? 'receiving the partner\'s state' : 'starting'}: ` +
              `${s.resync.pagesSent} of ${s.resync.pagesToSend} pages sent${s.resync.done ? ', our part done' : ''}${s.resync.partnerDone ? ', partner done' : ''}`,
          ] as [string, string],
        ]
      : []),
    ...(s.lease !== null
      ? [
          [
            'store lease',
            `${s.lease.valid ? 'valid' : 'not held'}; epoch record: ${
              s.lease.epochRecord === null ? 'none' : `epoch ${s.lease.epochRecord.epoch}, ${s.lease.epochRecord.activeId === 0 ? 'both serve' : `only ${s.lease.epochRecord.activeId === 1 ? 'A' : 'B'} serves`}`
            }`,
          ] as [string, string],
        ]
      : []),
    ['table digest', withPartner(s.digests.table, s.partner?.digests?.table)],
    ['dirty digest', withPartner(s.digests.dirty, s.partner?.digests?.dirty)],
    [
      'counters',
      `writes ${s.counters.clientWrites}, reads ${s.counters.clientReads}, pages mirrored out ${s.counters.pagesMirroredOut} / in ${s.counters.pagesMirroredIn}, ` +
        `staged ${s.counters.pagesStaged}, lock requests ${s.counters.lockRequestsSent}, grants ${s.counters.lockGrants}, refused ${s.counters.lockRefusals}`,
    ],
    [
      'conflicts',
      s.counters.ownershipConflicts === 0
        ? 'none: the partner never broke the ownership rules'
        : `${s.counters.ownershipConflicts} ownership conflicts with the partner (pages both claimed, or two contents at one version); see the log`,
    ],
  ];
  rows.push([
    'torn slots',
    s.counters.tornSlotsRecovered === 0
      ? 'none found'
      : `${s.counters.tornSlotsRecovered} page reads found one slot damaged (a write cut by a crash) and used the page's other copy; see the log`,
  ]);
  rows.push(['escaped', escapedText(s.escapedErrors as number | undefined)]);
  rows.push(['copies', copiesText(s.lastVerify)]);
  if (s.senseCode !== 0) rows.push(['sense code', String(s.senseCode)]);
  return rows.map(([k, v]) => `${k.padEnd(13)} ${v}`).join('\n');
}

/** The controller's last pool job (a device replace or a scrub while the pair serves): what, how far, how it ended. */
export function poolJobText(j: PoolJobStatus, nowMs: number): string {
  const what = j.kind === 'replace' ? `replace of slot ${j.slot ?? '?'} onto ${j.device ?? '?'}` : j.repair ? 'scrub with repair' : 'scrub';
  const pct = j.totalBytes === 0 ? 0 : Math.floor((100 * j.doneBytes) / j.totalBytes);
  const phase = j.kind === 'scrub' ? (j.phase === 'pool' ? "the pool's redundancy" : "the pages' CRCs") : 'copied';
  if (j.state === 'running') {
    return `job ${j.id}, ${what}: running, ${phase} ${pct}% (${formatBytes(j.doneBytes)} of ${formatBytes(j.totalBytes)}), for ${formatDuration(nowMs - j.startedAtMs)}`;
  }
  const ago = j.endedAtMs !== null ? `, ended ${formatDuration(Math.max(0, nowMs - j.endedAtMs))} ago after ${formatDuration(j.endedAtMs - j.startedAtMs)}` : '';
  if (j.state === 'failed') return `job ${j.id}, ${what}: FAILED at ${phase} ${pct}%: ${j.error?.code ?? '?'}: ${j.error?.message ?? 'no reason given'}${ago}`;
  const r = j.report;
  let result = 'done';
  if (r?.kind === 'replace') result = `done, ${formatBytes(r.bytesCopied)} rebuilt (was ${r.old})`;
  else if (r?.kind === 'scrub') {
    result =
      `done: ${r.pool.mismatches} mismatch${r.pool.mismatches === 1 ? '' : 'es'}, ${r.pool.repaired} repaired, ${r.pool.unreadable} unreadable; ` +
      `${r.pages.pagesChecked} pages, ${r.pages.checksumMismatches} failing their CRC, ${r.pages.unreadablePages} unreadable`;
  }
  return `job ${j.id}, ${what}: ${result}${ago}`;
}

/** The listeners' TLS mode (absent from an older controller's status). */
/** What each kind of allocation holds of the store, and what is free. */
export function spaceText(sp: NonNullable<ControllerStatus['space']>): string {
  const kinds = (
    [
      ['volumes', sp.volumes],
      ['snapshots', sp.snapshots],
      ['regions', sp.regions],
      ['keyed', sp.keyed],
    ] as const
  ).map(([name, k]) => `${name} ${k.count} ${formatBytes(k.bytes)}`);
  return `${kinds.join(', ')}; free ${formatBytes(sp.freeBytes)} of ${formatBytes(sp.dataBytes)}`;
}

export function tlsText(mode: ControllerStatus['tls'] | undefined): string {
  if (mode === undefined) return 'not reported (an older version)';
  if (mode === 'off') return 'off: plain connections only';
  if (mode === 'on') return 'on: TLS-PSK and plain connections';
  return 'require: TLS-PSK only, plain connections refused';
}

/** What each WebSocket listener refused since start, by reason: a flood or a misconfigured client shows here. */
export function refusedText(r: ControllerStatus['refused'] | undefined): string {
  if (r === undefined) return 'not counted by this controller (an older version)';
  const one = (name: string, c: NonNullable<ControllerStatus['refused']['client']>): string => {
    const parts: [string, number][] = [
      ['over the connection cap', c.overCap],
      ['pre-auth bytes', c.preAuthBytes],
      ['handshake timeout', c.handshakeTimeout],
      ['per-source slots', c.perSource],
      ['plain under require', c.plainUnderRequire],
      ['TLS under off', c.tlsUnderOff],
      ['TLS failed', c.tlsFailed],
      ['bad upgrade', c.badUpgrade],
    ];
    const hits = parts.filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`);
    return `${name}: ${hits.length === 0 ? 'none' : hits.join(', ')} (${c.open} open, ${c.handshaking} in handshake)`;
  };
  return [r.client !== null ? one('clients', r.client) : null, r.peer !== null ? one('peer', r.peer) : null].filter((x) => x !== null).join('; ');
}

/** Errors that escaped every handler to the process: each is a bug, logged when it happened. */
export function escapedText(n: number | undefined): string {
  if (n === undefined) return 'not counted by this controller (an older version)';
  if (n === 0) return 'no error escaped a handler';
  return `${n} error${n === 1 ? '' : 's'} escaped every handler (a bug each); see the log`;
}

/** When `pagepair verify` last compared both copies of every page, and what it found: the digests cover dirty pages only. */
export function copiesText(v: ControllerStatus['lastVerify'] | undefined): string {
  if (v === null || v === undefined) return 'never verified (pagepair verify compares both copies of every page)';
  let text = `verified ${v.pagesChecked} pages ${formatDuration(v.msAgo)} ago, `;
  if (v.repaired > 0) text += `${v.mismatches} differed, ${v.repaired} repaired, ${v.mismatches - v.repaired} differ`;
  else text += `${v.mismatches} differ`;
  if (v.unsettled > 0) text += `, ${v.unsettled} busy page${v.unsettled === 1 ? '' : 's'} not judged`;
  return text;
}

/** Our digest beside the partner's (from its answer to our last heartbeat): they differ while writes are in flight, and stay different when the copies do. */
function withPartner(ours: string, partners: string | undefined): string {
  if (partners === undefined) return ours;
  return `${ours}   partner ${partners === ours ? 'the same' : `${partners} (differs)`}`;
}
