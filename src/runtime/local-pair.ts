// Where the two controllers of a pair on this host listen and find each
// other, for the tools and tests that run a pair of their own (the kill
// tests, the NBD pair, the bench, the integration tests): free ports on
// 127.0.0.1, and the part of each configuration that follows from them.

import { freePorts } from './free-port.js';

export const LOCAL_HOST = '127.0.0.1';

export type PairLetter = 'A' | 'B';

/** One controller's ports; nbd only when it serves NBD. */
export interface LocalPorts {
  client: number;
  peer: number;
  nbd?: number;
}

export type LocalPairPorts = Record<PairLetter, LocalPorts>;

export function partnerOf(l: PairLetter): PairLetter {
  return l === 'A' ? 'B' : 'A';
}

/** Free client and peer ports for A and B, and NBD ports when asked. */
export async function freePairPorts(o: { nbd?: boolean } = {}): Promise<LocalPairPorts> {
  const per = o.nbd === true ? 3 : 2;
  const ports = await freePorts(2 * per);
  const one = (i: number): LocalPorts => ({ client: ports[i * per]!, peer: ports[i * per + 1]!, ...(o.nbd === true ? { nbd: ports[i * per + 2]! } : {}) });
  return { A: one(0), B: one(1) };
}

/**
 * The id, listen and partner sections of controller `id`'s configuration.
 * partnerPeerPort: where it dials its partner's peer link instead of the
 * partner's own port (a proxy that can cut it); nbdSocket: a unix socket for
 * its NBD server besides the port.
 */
export function pairPlacement(
  id: PairLetter,
  ports: LocalPairPorts,
  o: { partnerPeerPort?: number; nbdSocket?: string } = {},
): { id: PairLetter; listen: Record<string, unknown>; partner: Record<string, unknown> } {
  const self = ports[id];
  const other = partnerOf(id);
  const nbd = self.nbd !== undefined ? { nbd: { host: LOCAL_HOST, port: self.nbd, ...(o.nbdSocket !== undefined ? { socket: o.nbdSocket } : {}) } } : {};
  return {
    id,
    listen: { client: { host: LOCAL_HOST, port: self.client }, peer: { host: LOCAL_HOST, port: self.peer }, ...nbd },
    partner: { id: other, client: { host: LOCAL_HOST, port: ports[other].client }, peer: { host: LOCAL_HOST, port: o.partnerPeerPort ?? ports[other].peer } },
  };
}
