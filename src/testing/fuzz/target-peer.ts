// Fuzz target: the peer link's handshake, both sides, driven in process
// through PeerLink.serveOpenWs with a fake ws. The listening side (B) gets
// hostile HELLO/AUTH and anything else; the dialing side (A) hostile
// HELLO_REPLY/AUTH_REPLY. Some cases first complete a real handshake (the
// proof computed from the link's own nonce at run time) and then send
// hostile frames to the up link. Oracles, besides the runner's: every frame
// the link sends decodes and is a handshake frame or an ERROR; the link never
// comes up without a valid proof; once the fake socket closes, the link is
// down and nothing is left of the connection.

import fc from 'fast-check';
import { PagepairError } from '../../protocol/errors.js';
import { encode } from '../../protocol/codec.js';
import { authProof, helloProof } from '../../protocol/handshake.js';
import { DEFAULT_LIMITS } from '../../protocol/limits.js';
import { PROTOCOL_VERSION } from '../../protocol/messages.js';
import type { Message, MessageKind } from '../../protocol/messages.js';
import { PeerLink } from '../../transport/peer-link.js';
import { countingLogger, decodeSent, FakeWs } from './fakes.js';
import { ALL_KINDS, anyMessage, mutateFrame, mutationsArb } from './frames.js';
import { caseOfMessages, messagesOf, OracleFailure } from './runner.js';
import type { FuzzCase, FuzzTarget, Splits, TargetInstance } from './runner.js';

export const PEER_SECRET = 'fuzz-peer-secret-0123456789abcdef';
export const PEER_PAIR_ID = '6a1e0f4c-9a7b-4c1d-8e2f-0123456789ab';

export interface PeerMeta {
  /** Which side of the handshake the link plays. */
  side: 'listener' | 'dialer';
  /** Complete a real handshake first: the bytes go to the up link. */
  authFirst: boolean;
}

const HANDSHAKE_KINDS: readonly MessageKind[] = ['HELLO', 'HELLO_REPLY', 'AUTH', 'AUTH_REPLY', 'ERROR'];
const SENT_IN_HANDSHAKE: ReadonlySet<MessageKind> = new Set(['HELLO', 'HELLO_REPLY', 'AUTH', 'AUTH_REPLY', 'ERROR']);

const nonceArb = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((a) => Buffer.from(a));

/** HELLO and HELLO_REPLY that pass the field checks (right pair, right ids), with any nonce. */
const plausibleHello = fc.record({ nonce: nonceArb, pid: fc.nat(), requestId: fc.nat() }).map(
  ({ nonce, pid, requestId }): Message => ({ kind: 'HELLO', requestId, epoch: 0, sender: 1, flags: 0, protocolVersion: PROTOCOL_VERSION, pairId: PEER_PAIR_ID, controllerId: 1, nonce, pid }),
);
const plausibleHelloReply = fc.record({ nonce: nonceArb, pid: fc.nat(), requestId: fc.nat() }).map(
  ({ nonce, pid, requestId }): Message => ({ kind: 'HELLO_REPLY', requestId, epoch: 0, sender: 2, flags: 0, pairId: PEER_PAIR_ID, controllerId: 2, nonce, pid }),
);

const frameArb = (plausible: fc.Arbitrary<Message>): fc.Arbitrary<Buffer> =>
  fc.oneof(
    { weight: 3, arbitrary: plausible.map((m) => encode(m)) },
    { weight: 3, arbitrary: fc.tuple(plausible, mutationsArb).map(([m, p]) => mutateFrame(encode(m), p)) },
    { weight: 3, arbitrary: anyMessage(HANDSHAKE_KINDS).map((m) => encode(m)) },
    { weight: 2, arbitrary: fc.tuple(anyMessage(HANDSHAKE_KINDS), mutationsArb).map(([m, p]) => mutateFrame(encode(m), p)) },
    { weight: 2, arbitrary: anyMessage(ALL_KINDS).map((m) => encode(m)) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)) },
  );

function casesFor(side: PeerMeta['side']): fc.Arbitrary<FuzzCase> {
  const first = side === 'listener' ? plausibleHello : plausibleHelloReply;
  return fc
    .tuple(fc.boolean(), frameArb(first), fc.array(frameArb(first), { maxLength: 2 }), fc.array(fc.tuple(anyMessage(ALL_KINDS), fc.option(mutationsArb)), { minLength: 1, maxLength: 3 }))
    .map(([authFirst, head, rest, upFrames]) => {
      const frames = authFirst ? upFrames.map(([m, p]) => (p === null ? encode(m) : mutateFrame(encode(m), p))) : [head, ...rest];
      const meta: PeerMeta = { side, authFirst };
      return caseOfMessages(frames, `${side}${authFirst ? ' after auth' : ' handshake'}, ${frames.length} frames`, meta);
    });
}

export const peerCases: fc.Arbitrary<FuzzCase> = fc.oneof(casesFor('listener'), casesFor('dialer'));

/** Both sides of the pair, each a PeerLink not listening anywhere: connections come through serveOpenWs. */
export class PeerRig {
  readonly logged = countingLogger();
  ups = 0;
  downs = 0;
  readonly listener: PeerLink;
  readonly dialer: PeerLink;

  constructor() {
    const handlers = {
      onUp: () => void this.ups++,
      onDown: () => void this.downs++,
      onMessage: (msg: Message) => {
        // The core refuses some frames: the link answers them with a typed ERROR.
        if ((msg.requestId & 3) === 0) throw new PagepairError('BAD_FIELD', `refused ${msg.kind} ${JSON.stringify(msg).slice(0, 2000)}`);
      },
    };
    const common = { pairId: PEER_PAIR_ID, secret: PEER_SECRET, pid: 4242, limits: DEFAULT_LIMITS, reconnectMs: 60_000, handshakeTimeoutMs: 60_000, log: this.logged.log };
    // B (2) listens; A (1) would dial, but nothing here starts them: no sockets.
    this.listener = new PeerLink({ ...common, selfId: 2, partnerId: 1, listen: { host: '127.0.0.1', port: 0 }, partner: { host: '127.0.0.1', port: 1 } }, handlers);
    this.dialer = new PeerLink({ ...common, selfId: 1, partnerId: 2, listen: { host: '127.0.0.1', port: 0 }, partner: { host: '127.0.0.1', port: 1 } }, handlers);
  }

  /** A real handshake on ws; returns false if the link did not come up. */
  authenticate(side: PeerMeta['side'], ws: FakeWs): boolean {
    const before = this.ups;
    if (side === 'listener') {
      const nonce = Buffer.alloc(32, 7);
      ws.deliver(encode({ kind: 'HELLO', requestId: 1, epoch: 0, sender: 1, flags: 0, protocolVersion: PROTOCOL_VERSION, pairId: PEER_PAIR_ID, controllerId: 1, nonce, pid: 1 }));
      const reply = decodeSent(ws, 'the link').at(-1);
      if (reply?.kind !== 'HELLO_REPLY') return false;
      ws.deliver(encode({ kind: 'AUTH', requestId: 2, epoch: 0, sender: 1, flags: 0, proof: authProof(PEER_SECRET, PEER_PAIR_ID, 1, 2, nonce, reply.nonce) }));
    } else {
      const hello = decodeSent(ws, 'the link')[0];
      if (hello?.kind !== 'HELLO') return false;
      const nonce = Buffer.alloc(32, 9);
      ws.deliver(encode({ kind: 'HELLO_REPLY', requestId: 0, epoch: 0, sender: 2, flags: 0, pairId: PEER_PAIR_ID, controllerId: 2, nonce, pid: 2 }));
      if (decodeSent(ws, 'the link').at(-1)?.kind !== 'AUTH') return false;
      ws.deliver(encode({ kind: 'AUTH_REPLY', requestId: 0, epoch: 0, sender: 2, flags: 0, role: 1, proof: helloProof(PEER_SECRET, PEER_PAIR_ID, 1, 2, hello.nonce, nonce) }));
    }
    return this.ups === before + 1;
  }

  open(side: PeerMeta['side']): FakeWs {
    const ws = new FakeWs();
    (side === 'listener' ? this.listener : this.dialer).serveOpenWs(ws.asWs(), side === 'dialer');
    return ws;
  }

  async close(): Promise<void> {
    await this.listener.close();
    await this.dialer.close();
  }
}

class PeerInstance implements TargetInstance {
  readonly cases = peerCases;
  private readonly rig = new PeerRig();

  run(c: FuzzCase, splits: Splits): void {
    const meta = c.meta as PeerMeta;
    const rig = this.rig;
    const link = meta.side === 'listener' ? rig.listener : rig.dialer;
    const ws = rig.open(meta.side);
    if (meta.authFirst && !rig.authenticate(meta.side, ws)) throw new OracleFailure('a valid handshake did not bring the link up');
    const upsBefore = rig.ups;
    const sentBefore = ws.sent.length;
    // Frames that arrive after the link started closing are still handed over, as ws does.
    for (const m of messagesOf(c, splits)) ws.deliver(m);
    const closing = ws.closed;
    ws.settle();
    if (!meta.authFirst && rig.ups !== 0) throw new OracleFailure('the link came up without a valid proof');
    if (rig.ups !== upsBefore) throw new OracleFailure('a second link came up from hostile frames');
    const sent = decodeSent(ws, 'the link').slice(sentBefore);
    for (const m of sent) {
      if (meta.authFirst ? m.kind !== 'ERROR' : !SENT_IN_HANDSHAKE.has(m.kind)) throw new OracleFailure(`the link sent ${m.kind} in answer to hostile frames`);
    }
    // A refused handshake is an ERROR and a close, never an ERROR and a wait.
    if (!meta.authFirst && sent.some((m) => m.kind === 'ERROR') && !closing) throw new OracleFailure('the link refused the handshake but kept the connection');
    ws.hangUp();
    if (link.isUp) throw new OracleFailure('the link is still up after its socket closed');
    if (rig.downs !== rig.ups) throw new OracleFailure(`onUp ${rig.ups} times but onDown ${rig.downs}`);
    rig.ups = 0;
    rig.downs = 0;
  }

  async stillServes(): Promise<boolean> {
    const rig = this.rig;
    for (const side of ['listener', 'dialer'] as const) {
      const ws = rig.open(side);
      if (!rig.authenticate(side, ws)) return false;
      // A request the core refuses is answered with a typed ERROR, and the link stays up.
      ws.deliver(encode({ kind: 'RELEASE', requestId: 8, epoch: 1, sender: side === 'listener' ? 1 : 2, flags: 0, guid: PEER_PAIR_ID }));
      const last = decodeSent(ws, 'the link').at(-1);
      if (last?.kind !== 'ERROR' || last.requestId !== 8 || ws.closed) return false;
      ws.hangUp();
      rig.ups = 0;
      rig.downs = 0;
    }
    return true;
  }

  errorsLogged(): readonly string[] {
    return this.rig.logged.errors;
  }

  close(): Promise<void> {
    return this.rig.close();
  }
}

export const peerTarget: FuzzTarget = {
  name: 'peer-handshake',
  description: 'peer link, listener and dialer sides: hostile HELLO/HELLO_REPLY/AUTH/AUTH_REPLY, then frames to the up link',
  setup: async () => new PeerInstance(),
};
