// Fuzz target: the client endpoint's handshake (CLIENT_HELLO) and the frames
// after it, driven in process through ClientEndpoint.serveOpenWs with a fake
// ws. The request handler stands in for the controller: it answers some
// requests, and refuses others with errors that echo their input (the path
// of issue 11's first finding). Oracles, besides the runner's: every frame
// sent decodes and answers something (a reply, or an ERROR); a connection
// is told CLIENT_HELLO_REPLY only when its bytes hold the token; once the
// socket closes the endpoint holds nothing of it.

import fc from 'fast-check';
import { PagepairError } from '../../protocol/errors.js';
import { encode } from '../../protocol/codec.js';
import { DEFAULT_LIMITS, HARD_LIMITS } from '../../protocol/limits.js';
import type { Limits } from '../../protocol/limits.js';
import { PROTOCOL_VERSION, Role } from '../../protocol/messages.js';
import type { ClientRequest, Message, MessageKind } from '../../protocol/messages.js';
import { ClientEndpoint } from '../../transport/client-endpoint.js';
import type { ClientConn } from '../../transport/client-endpoint.js';
import { countingLogger, decodeSent, fakeAccepted, FakeWs } from './fakes.js';
import { ALL_KINDS, anyMessage, mutateFrame, mutationsArb } from './frames.js';
import { caseOfMessages, messagesOf, OracleFailure } from './runner.js';
import type { FuzzCase, FuzzTarget, Splits, TargetInstance } from './runner.js';

export const CLIENT_TOKEN = 'fuzz-client-token-0123456789abcdef';
const PAIR_ID = '6a1e0f4c-9a7b-4c1d-8e2f-0123456789ab';

/**
 * Strings as long as the hard limit allows: an error that echoes one (in
 * invalid UTF-8, which grows threefold when decoded) is what once stopped a
 * controller (issue 11, finding 1).
 */
const ENDPOINT_LIMITS: Limits = { ...DEFAULT_LIMITS, stringBytesMax: HARD_LIMITS.stringBytesMax };

const CLIENT_KINDS = ALL_KINDS.filter((k) => k.startsWith('C_') && !k.endsWith('_REPLY')) as MessageKind[];

const hello = (token: string, requestId = 1): Message => ({ kind: 'CLIENT_HELLO', requestId, epoch: 0, sender: 0, flags: 0, protocolVersion: PROTOCOL_VERSION, token, clientName: 'fuzz' });

const helloArb: fc.Arbitrary<Message> = fc.oneof(
  fc.constant(hello(CLIENT_TOKEN)),
  fc.string({ maxLength: 40 }).map((t) => hello(t)),
  fc.record({ v: fc.integer({ min: 0, max: 0xffff }), rid: fc.nat() }).map(({ v, rid }) => ({ ...hello(CLIENT_TOKEN, rid), protocolVersion: v }) as Message),
);

const frame = (msgs: fc.Arbitrary<Message>): fc.Arbitrary<Buffer> =>
  fc.oneof(
    { weight: 3, arbitrary: msgs.map((m) => encode(m)) },
    { weight: 3, arbitrary: fc.tuple(msgs, mutationsArb).map(([m, p]) => mutateFrame(encode(m), p)) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)) },
  );

interface ClientMeta {
  authFirst: boolean;
  /** The client reads none of its replies (they pile up in bufferedAmount). */
  slowReader: boolean;
}

export const clientCases: fc.Arbitrary<FuzzCase> = fc
  .tuple(
    fc.boolean(),
    fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    frame(helloArb),
    fc.array(frame(fc.oneof({ weight: 4, arbitrary: anyMessage(CLIENT_KINDS, ENDPOINT_LIMITS) }, { weight: 1, arbitrary: anyMessage(ALL_KINDS, ENDPOINT_LIMITS) })), { minLength: 1, maxLength: 3 }),
  )
  .map(([authFirst, slowReader, first, rest]) => {
    const frames = authFirst ? rest : [first, ...rest];
    const meta: ClientMeta = { authFirst, slowReader };
    return caseOfMessages(frames, `client ${authFirst ? 'after hello' : 'handshake'}${slowReader ? ', slow reader' : ''}, ${frames.length} frames`, meta);
  });

/** The controller's side of a request: some answered, some refused with an echo of the input. */
function answer(conn: ClientConn, msg: ClientRequest): void {
  const head = { requestId: msg.requestId, epoch: 0, sender: 2, flags: 0 } as const;
  switch (msg.kind) {
    case 'C_STATUS':
      conn.reply({ kind: 'C_STATUS_REPLY', ...head, json: '{"role":"mirrored"}' });
      return;
    case 'C_ALLOCATE':
      // Echoes a name that may be as long as a string field allows.
      throw new PagepairError('BAD_FIELD', `policy ${JSON.stringify(msg.policy)} for ${JSON.stringify(msg.name)} does not exist`);
    case 'C_READ':
      // Answered later, as reads from the store are; shorter than asked, to keep the fuzzer fast.
      queueMicrotask(() => conn.reply({ kind: 'C_READ_REPLY', ...head, data: Buffer.alloc(Math.min(msg.length, 64 * 1024)) }));
      return;
    case 'C_WRITE':
      // Answered later, as the core answers once the partner has it.
      queueMicrotask(() => conn.reply({ kind: 'C_WRITE_REPLY', ...head }));
      return;
    default:
      throw new PagepairError('UNKNOWN_GUID', `${msg.kind} ${JSON.stringify(msg).slice(0, 3000)}`);
  }
}

class ClientInstance implements TargetInstance {
  readonly cases = clientCases;
  private readonly logged = countingLogger();
  private readonly endpoint = new ClientEndpoint({
    host: '127.0.0.1',
    port: 0,
    token: CLIENT_TOKEN,
    controllerId: 2,
    pairId: PAIR_ID,
    limits: ENDPOINT_LIMITS,
    inflightMax: 4,
    // Small, so that large reads wait for room and slow readers are dropped within a few frames.
    replyBytesBufferedMax: 1024 * 1024,
    log: this.logged.log,
    helloTimeoutMs: 60_000,
    getRole: () => Role.MIRRORED,
    onRequest: answer,
  });
  private readonly tokenBytes = Buffer.from(CLIENT_TOKEN, 'utf8');

  private open(): FakeWs {
    const ws = new FakeWs();
    this.endpoint.serveOpenWs(ws.asWs(), fakeAccepted());
    return ws;
  }

  async run(c: FuzzCase, splits: Splits): Promise<void> {
    const meta = c.meta as ClientMeta;
    const ws = this.open();
    ws.slowReader = meta.slowReader;
    if (meta.authFirst) {
      ws.deliver(encode(hello(CLIENT_TOKEN)));
      if (decodeSent(ws, 'the endpoint')[0]?.kind !== 'CLIENT_HELLO_REPLY') throw new OracleFailure('a valid CLIENT_HELLO was not answered');
    }
    // Frames that arrive after the endpoint started closing are still handed over, as ws does.
    const messages = messagesOf(c, splits);
    for (const m of messages) ws.deliver(m);
    // Replies made later (C_READ, C_WRITE) come on microtasks, and requests held for room after them.
    await new Promise((resolve) => setImmediate(resolve));
    const closing = ws.closed;
    ws.settle();
    {
      const sent = decodeSent(ws, 'the endpoint');
      if (!meta.authFirst && sent.some((m) => m.kind === 'CLIENT_HELLO_REPLY') && !c.bytes.includes(this.tokenBytes)) {
        throw new OracleFailure('CLIENT_HELLO_REPLY to a connection that never sent the token');
      }
      for (const m of sent) {
        if (m.kind !== 'ERROR' && !m.kind.endsWith('_REPLY')) throw new OracleFailure(`the endpoint sent ${m.kind}`);
      }
      // Before the hello is accepted, a refusal is an ERROR and a close, never an ERROR and a wait.
      if (!meta.authFirst && !sent.some((m) => m.kind === 'CLIENT_HELLO_REPLY') && sent.some((m) => m.kind === 'ERROR') && !closing) {
        throw new OracleFailure('the endpoint refused a connection before its hello but kept it open');
      }
      // On a connection that stays open after its hello, every message is answered once: none is lost, none held for ever.
      if (meta.authFirst && !closing && sent.length - 1 !== messages.length) {
        throw new OracleFailure(`${messages.length} messages after the hello got ${sent.length - 1} answers`);
      }
      ws.hangUp();
      if (this.endpoint.connections !== 0) throw new OracleFailure(`${this.endpoint.connections} connections left after the socket closed`);
    }
  }

  async stillServes(): Promise<boolean> {
    const ws = this.open();
    ws.deliver(encode(hello(CLIENT_TOKEN)));
    ws.deliver(encode({ kind: 'C_STATUS', requestId: 5, epoch: 0, sender: 0, flags: 0 }));
    const sent = decodeSent(ws, 'the endpoint');
    ws.hangUp();
    return sent[0]?.kind === 'CLIENT_HELLO_REPLY' && sent[1]?.kind === 'C_STATUS_REPLY' && sent[1].requestId === 5;
  }

  errorsLogged(): readonly string[] {
    return this.logged.errors;
  }

  close(): Promise<void> {
    return this.endpoint.close();
  }
}

export const clientTarget: FuzzTarget = {
  name: 'client-handshake',
  description: 'client endpoint: hostile CLIENT_HELLO, then post-auth frames of every kind, answered by a stand-in controller',
  setup: async () => new ClientInstance(),
};
