// `pagepair status`: what one controller says of itself and of its partner.

import { PagepairClient, controllerAddresses } from '../client/index.js';
import { PagepairError } from '../errors.js';
import type { ControllerConfig } from '../runtime/config.js';
import type { ControllerStatus } from '../runtime/controller-process.js';
import { formatBytes, formatDuration } from './units.js';

export async function fetchStatus(cfg: ControllerConfig, which: 'self' | 'A' | 'B', timeoutMs = 5000): Promise<ControllerStatus> {
  let addr = { host: cfg.listen.client.host, port: cfg.listen.client.port, token: cfg.clientToken };
  if (which !== 'self' && which !== cfg.idLetter) {
    if (cfg.partner === null) throw new PagepairError('BAD_FIELD', `${cfg.sourceName} names no partner ${which}`, 'controller');
    const a = controllerAddresses({ id: cfg.idLetter, clientToken: cfg.clientToken, listen: cfg.listen, partner: { id: cfg.partner.idLetter, client: cfg.partner.client } });
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
    ...(s.listen.nbd != null ? [['nbd', `${s.listen.nbd.tcp}/<volume>${s.listen.nbd.socket !== null ? `   nbd+unix:///<volume>?socket=${s.listen.nbd.socket}` : ''}`] as [string, string]] : []),
    ['store', s.store],
    ['allocations', String(s.allocations)],
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
  rows.push(['escaped', escapedText(s.escapedErrors as number | undefined)]);
  rows.push(['copies', copiesText(s.lastVerify)]);
  if (s.senseCode !== 0) rows.push(['sense code', String(s.senseCode)]);
  return rows.map(([k, v]) => `${k.padEnd(13)} ${v}`).join('\n');
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
