// Fuzz target: the NBD server, handshake phase (client flags, options with
// long or lying lengths, STARTTLS, unknown options) and transmission phase
// (requests with bad magic, types, flags, offsets and lengths, payloads cut
// short), driven in process through NbdServer.serveSocket over an in-memory
// socket, against a server with TLS off and one that requires it. Oracles,
// besides the runner's: the server's bytes start with its greeting and its
// option replies are well framed until the export is chosen; once the
// client goes away the server holds nothing of the connection.

import fc from 'fast-check';
import { randomBytes } from 'node:crypto';
import type pino from 'pino';
import {
  NBD_OPTS_MAGIC_HI,
  NBD_OPTS_MAGIC_LO,
  NBD_REP_MAGIC_HI,
  NBD_REP_MAGIC_LO,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NbdClientFlag,
  NbdCmd,
  NBD_STRUCTURED_REPLY_MAGIC,
  NbdErrno,
  NbdOpt,
  NbdRep,
  NbdReplyFlag,
  NbdReplyType,
} from '../../protocol/nbd.js';
import { PSK_BYTES } from '../../transport/tls.js';
import { NbdServer } from '../../transport/nbd-server.js';
import { MemoryNbdBackend } from '../memory-nbd-backend.js';
import { countingLogger, MemorySocket } from './fakes.js';
import { mutate, mutationArb } from './frames.js';
import type { Mutation } from './frames.js';
import { messagesOf, OracleFailure } from './runner.js';
import type { FuzzCase, FuzzTarget, Splits, TargetInstance } from './runner.js';

export const NBD_VOLUME = 'disk';
export const NBD_VOLUME_BYTES = 1024 * 1024;
const NBD_GREETING_BYTES = 18;

// ---------------------------------------------------------------------------
// Client bytes

export function nbdOption(option: number, data: Uint8Array = Buffer.alloc(0), lengthSaid = data.length): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(NBD_OPTS_MAGIC_HI, 0);
  b.writeUInt32BE(NBD_OPTS_MAGIC_LO, 4);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(lengthSaid >>> 0, 12);
  return Buffer.concat([b, data]);
}

/** NBD_OPT_GO/INFO data: the name, then the info requests. */
export function infoData(name: string, infos: readonly number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t & 0xffff, 6 + n.length + 2 * i));
  return b;
}

export function nbdRequest(type: number, flags: number, cookie: number, offset: bigint, length: number, payload?: Uint8Array): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags & 0xffff, 4);
  b.writeUInt16BE(type & 0xffff, 6);
  b.writeUInt32BE(0, 8);
  b.writeUInt32BE(cookie >>> 0, 12);
  b.writeBigUInt64BE(offset & 0xffff_ffff_ffff_ffffn, 16);
  b.writeUInt32BE(length >>> 0, 24);
  return payload === undefined ? b : Buffer.concat([b, payload]);
}

const clientFlags = fc
  .oneof(
    { weight: 8, arbitrary: fc.constant(NbdClientFlag.C_FIXED_NEWSTYLE | NbdClientFlag.C_NO_ZEROES) },
    { weight: 1, arbitrary: fc.constant(NbdClientFlag.C_FIXED_NEWSTYLE) },
    { weight: 1, arbitrary: fc.constantFrom(0, 4, 0xffff_ffff) },
  )
  .map((f) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(f >>> 0, 0);
    return b;
  });

const exportName = fc.oneof(
  { weight: 6, arbitrary: fc.constant(NBD_VOLUME) },
  { weight: 1, arbitrary: fc.constant('') },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
  { weight: 1, arbitrary: fc.constantFrom('x'.repeat(4096), 'y'.repeat(4097), 'a\0b') },
);

const LENGTH_LIES = [0, 1, 5, 6, 0xff, 0x1000, 0x1006, 0x10000, 0x10001, 0x7fff_ffff, 0xffff_ffff];

/** One option: the useful ones, STARTTLS with and without data, unknown, lying lengths, garbage. */
const option: fc.Arbitrary<Buffer> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ name: exportName, infos: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }) }).map(({ name, infos }) => nbdOption(NbdOpt.INFO, infoData(name, infos))) },
  { weight: 1, arbitrary: fc.constantFrom(NbdOpt.LIST, NbdOpt.STRUCTURED_REPLY, NbdOpt.STARTTLS, NbdOpt.ABORT).map((o) => nbdOption(o)) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom(NbdOpt.STARTTLS, NbdOpt.LIST, NbdOpt.STRUCTURED_REPLY), fc.uint8Array({ minLength: 1, maxLength: 8 })).map(([o, d]) => nbdOption(o, d)) },
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 0, max: 20 }), fc.uint8Array({ maxLength: 16 })).map(([o, d]) => nbdOption(o, d)) },
  { weight: 1, arbitrary: fc.tuple(fc.nat(), fc.uint8Array({ maxLength: 16 })).map(([o, d]) => nbdOption(o, d)) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom(NbdOpt.GO, NbdOpt.INFO, NbdOpt.STARTTLS, NbdOpt.EXPORT_NAME, 99), fc.constantFrom(...LENGTH_LIES), fc.uint8Array({ maxLength: 24 })).map(([o, lie, d]) => nbdOption(o, d, lie)) },
  { weight: 1, arbitrary: fc.tuple(exportName, fc.integer({ min: 0, max: 0xffff })).map(([name, count]) => { const d = infoData(name); d.writeUInt16BE(count, d.length - 2); return nbdOption(NbdOpt.GO, d); }) },
);

/** How the handshake ends: GO, EXPORT_NAME, or not at all. */
const choose: fc.Arbitrary<Buffer> = fc.oneof(
  { weight: 4, arbitrary: exportName.map((n) => nbdOption(NbdOpt.GO, infoData(n))) },
  { weight: 2, arbitrary: exportName.map((n) => nbdOption(NbdOpt.EXPORT_NAME, Buffer.from(n, 'utf8'))) },
  { weight: 1, arbitrary: fc.constant(Buffer.alloc(0)) },
);

const OFFSETS = [0n, 512n, BigInt(NBD_VOLUME_BYTES - 4096), BigInt(NBD_VOLUME_BYTES - 1), BigInt(NBD_VOLUME_BYTES), 1n << 32n, (1n << 53n) - 1n, 1n << 53n, (1n << 63n), (1n << 64n) - 1n];
const LENGTHS = [0, 1, 512, 4096, 65536, NBD_VOLUME_BYTES, 32 * 1024 * 1024, 32 * 1024 * 1024 + 1, 64 * 1024 * 1024 + 1, 0x7fff_ffff, 0xffff_ffff];

/** One request as generated: what its reply must answer. */
interface RequestSpec {
  bytes: Buffer;
  type: number;
  cookie: number;
  length: number;
}

const requestSpec: fc.Arbitrary<RequestSpec> = fc
  .record({
    type: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(NbdCmd.READ, NbdCmd.WRITE, NbdCmd.FLUSH, NbdCmd.TRIM, NbdCmd.WRITE_ZEROES, NbdCmd.DISC) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
    flags: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 2, arbitrary: fc.integer({ min: 0, max: 63 }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
    cookie: fc.nat(),
    offset: fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 0, max: NBD_VOLUME_BYTES }).map(BigInt) }, { weight: 2, arbitrary: fc.constantFrom(...OFFSETS) }, { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
    length: fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 0, max: 8192 }) }, { weight: 2, arbitrary: fc.constantFrom(...LENGTHS) }),
    /** For WRITE: the payload sent, all of it or cut short. */
    payloadCut: fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 64 })),
  })
  .map(({ type, flags, cookie, offset, length, payloadCut }) => {
    if (type !== NbdCmd.WRITE) return { bytes: nbdRequest(type, flags, cookie, offset, length), type, cookie, length };
    // Long payloads are never sent whole: the server must wait for the rest or drop it.
    const sent = payloadCut >= 0 ? Math.min(payloadCut, length) : Math.min(length, 8192);
    return { bytes: nbdRequest(type, flags, cookie, offset, length, randomlessPayload(sent)), type, cookie, length };
  });

const request: fc.Arbitrary<Buffer> = requestSpec.map((r) => r.bytes);

function randomlessPayload(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + 7) & 0xff;
  return b;
}

interface NbdMeta {
  server: 'plain' | 'tls-required';
  /** Transmission cases: the handshake is valid and the requests are these, unmutated (null otherwise). */
  transmission: { structured: boolean; byName: boolean; requests: { type: number; cookie: number; length: number }[] } | null;
}

const validFlags = Buffer.from([0, 0, 0, NbdClientFlag.C_FIXED_NEWSTYLE | NbdClientFlag.C_NO_ZEROES]);

function nbdCase(server: NbdMeta['server'], head: Buffer[], tail: Buffer[], mutations: Mutation[], what: string, transmission: NbdMeta['transmission'] = null): FuzzCase {
  // Mutations hit the tail only when the head is a valid handshake, so that most of them reach transmission.
  let bytes: Buffer = Buffer.concat(tail);
  for (const m of mutations) bytes = mutate(bytes, m);
  bytes = Buffer.concat([...head, bytes]);
  const meta: NbdMeta = { server, transmission: mutations.length === 0 ? transmission : null };
  return { bytes, boundaries: [], label: `nbd ${server}: ${what}${mutations.length > 0 ? `, mutated ${mutations.map((m) => m.op).join('/')}` : ''}`, meta };
}

const someMutations = fc.oneof({ weight: 3, arbitrary: fc.constant<Mutation[]>([]) }, { weight: 1, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 3 }) });

/** The handshake phase: flags, any options, maybe an export chosen, maybe requests; the whole thing may be mutated. */
const handshakeCases = fc
  .record({
    server: fc.constantFrom('plain' as const, 'tls-required' as const),
    flags: clientFlags,
    options: fc.array(option, { maxLength: 3 }),
    choose,
    requests: fc.array(request, { maxLength: 2 }),
    mutations: someMutations,
  })
  .map(({ server, flags, options, choose: ch, requests, mutations }) =>
    nbdCase(server, [], [flags, ...options, ch, ...requests], mutations, `handshake: ${options.length} options, ${ch.length > 0 ? 'export chosen' : 'no export'}, ${requests.length} requests`),
  );

/** The transmission phase: a valid handshake (structured replies or not), then requests, perhaps mutated. */
const transmissionCases = fc
  .record({ structured: fc.boolean(), byName: fc.boolean(), requests: fc.array(requestSpec, { minLength: 1, maxLength: 5 }), mutations: someMutations })
  .map(({ structured, byName, requests, mutations }) => {
    const head: Buffer[] = [validFlags];
    if (structured) head.push(nbdOption(NbdOpt.STRUCTURED_REPLY));
    head.push(byName ? nbdOption(NbdOpt.EXPORT_NAME, Buffer.from(NBD_VOLUME)) : nbdOption(NbdOpt.GO, infoData(NBD_VOLUME)));
    const specs = requests.map(({ type, cookie, length }) => ({ type, cookie, length }));
    return nbdCase('plain', head, requests.map((r) => r.bytes), mutations, `transmission${structured ? ' (structured)' : ''}: ${requests.length} requests`, { structured, byName, requests: specs });
  });

/** What a client sends once STARTTLS is acknowledged: noise, or records that look like TLS and are not. */
const afterStartTls: fc.Arbitrary<Buffer> = fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
  fc
    .record({ type: fc.constantFrom(0x16, 0x15, 0x17, 0x14), version: fc.constantFrom(0x0301, 0x0303, 0x0304, 0xffff), length: fc.integer({ min: 0, max: 0xffff }), body: fc.uint8Array({ maxLength: 48 }) })
    .map(({ type, version, length, body }) => {
      const head = Buffer.alloc(5);
      head[0] = type;
      head.writeUInt16BE(version, 1);
      head.writeUInt16BE(length, 3);
      return Buffer.concat([head, body]);
    }),
  // Options as if the upgrade had not happened.
  option,
);

/** STARTTLS on the server that requires TLS, answered by bytes that are no TLS handshake. */
const startTlsCases = fc.record({ server: fc.constantFrom('plain' as const, 'tls-required' as const), tail: afterStartTls }).map(({ server, tail }) => {
  const head = Buffer.concat([validFlags, nbdOption(NbdOpt.STARTTLS)]);
  const meta: NbdMeta = { server, transmission: null };
  // Cut after the option: a client waits for the ACK before its TLS handshake.
  return { bytes: Buffer.concat([head, tail]), boundaries: [head.length], label: `nbd ${server}: STARTTLS then ${tail.length} bytes that are no TLS handshake`, meta };
});

export const nbdCases: fc.Arbitrary<FuzzCase> = fc.oneof({ weight: 3, arbitrary: handshakeCases }, { weight: 3, arbitrary: transmissionCases }, { weight: 1, arbitrary: startTlsCases });

// ---------------------------------------------------------------------------
// Checking the server's bytes

/**
 * The greeting, then well-framed option replies up to the end or the choice
 * of an export. Returns where the option replies end.
 */
export function checkHandshakeReplies(out: Buffer): number {
  if (out.length === 0) throw new OracleFailure('the server sent nothing, not even its greeting');
  if (out.length < NBD_GREETING_BYTES || out.toString('latin1', 0, 8) !== 'NBDMAGIC' || out.readUInt32BE(8) !== NBD_OPTS_MAGIC_HI) {
    throw new OracleFailure('the server did not start with its greeting');
  }
  let p = NBD_GREETING_BYTES;
  while (p < out.length) {
    if (out.length - p < 20 || out.readUInt32BE(p) !== NBD_REP_MAGIC_HI || out.readUInt32BE(p + 4) !== NBD_REP_MAGIC_LO) {
      // Past the option replies: an EXPORT_NAME reply or transmission replies, which start otherwise.
      return p;
    }
    const type = out.readUInt32BE(p + 12);
    const len = out.readUInt32BE(p + 16);
    if (p + 20 + len > out.length) throw new OracleFailure(`option reply of ${len} bytes cut short at ${out.length - p - 20}`);
    const known = Object.values(NbdRep) as number[];
    if (!known.includes(type)) throw new OracleFailure(`option reply of unknown type 0x${type.toString(16)}`);
    p += 20 + len;
  }
  return p;
}

const KNOWN_ERRNOS: ReadonlySet<number> = new Set(Object.values(NbdErrno));

/**
 * The transmission replies of a valid handshake's requests: each a simple
 * reply (with the read's data when it succeeded) or structured chunks, for a
 * cookie that was sent, with a known errno, and no request answered twice.
 */
export function checkTransmissionReplies(out: Buffer, from: number, t: NonNullable<NbdMeta['transmission']>): void {
  const byCookie = new Map<number, { type: number; length: number }>();
  for (const r of t.requests) {
    // Two requests with one cookie cannot be told apart: such a case is not judged.
    if (byCookie.has(r.cookie)) return;
    byCookie.set(r.cookie, r);
  }
  const answered = new Set<number>();
  let p = from + (t.byName ? 10 : 0);
  while (p < out.length) {
    if (out.length - p < 16) throw new OracleFailure(`transmission reply cut short: ${out.length - p} bytes at ${p}`);
    const magic = out.readUInt32BE(p);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) {
      const errno = out.readUInt32BE(p + 4);
      const cookie = out.readUInt32BE(p + 12);
      const req = byCookie.get(cookie);
      if (out.readUInt32BE(p + 8) !== 0 || req === undefined) throw new OracleFailure(`simple reply for cookie ${cookie}, which no request had`);
      if (errno !== 0 && !KNOWN_ERRNOS.has(errno)) throw new OracleFailure(`simple reply with unknown errno ${errno}`);
      if (answered.has(cookie)) throw new OracleFailure(`request ${cookie} answered twice`);
      answered.add(cookie);
      p += 16 + (errno === 0 && req.type === NbdCmd.READ ? req.length : 0);
      continue;
    }
    if (magic === NBD_STRUCTURED_REPLY_MAGIC && t.structured) {
      if (out.length - p < 20) throw new OracleFailure('structured reply header cut short');
      const flags = out.readUInt16BE(p + 4);
      const type = out.readUInt16BE(p + 6);
      const cookie = out.readUInt32BE(p + 12);
      const len = out.readUInt32BE(p + 16);
      if (out.readUInt32BE(p + 8) !== 0 || !byCookie.has(cookie)) throw new OracleFailure(`structured reply for cookie ${cookie}, which no request had`);
      if (answered.has(cookie)) throw new OracleFailure(`request ${cookie} answered after its last chunk`);
      if (type === NbdReplyType.ERROR && (len < 6 || !KNOWN_ERRNOS.has(out.readUInt32BE(p + 20)))) throw new OracleFailure('error chunk without a known errno');
      if ((flags & NbdReplyFlag.DONE) !== 0) answered.add(cookie);
      p += 20 + len;
      continue;
    }
    throw new OracleFailure(`transmission reply with magic 0x${magic.toString(16)} at ${p}`);
  }
}

async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** Waits until the server stops sending (or the connection closes), at most maxTurns event-loop turns. */
async function settle(sock: MemorySocket, maxTurns = 50): Promise<void> {
  let last = -1;
  let still = 0;
  for (let i = 0; i < maxTurns && !sock.destroyed; i++) {
    await turns(1);
    if (sock.outBytes === last) {
      if (++still >= 2) return;
    } else {
      still = 0;
      last = sock.outBytes;
    }
  }
}

/** A write and a read back, on a fresh connection: the server still serves. */
export async function nbdServesWriteRead(open: () => MemorySocket): Promise<boolean> {
  const sock = open();
  const data = randomlessPayload(4096);
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(NbdClientFlag.C_FIXED_NEWSTYLE | NbdClientFlag.C_NO_ZEROES, 0);
  sock.input(Buffer.concat([flags, nbdOption(NbdOpt.GO, infoData(NBD_VOLUME))]));
  await settle(sock);
  const before = sock.outBytes;
  sock.input(Buffer.concat([nbdRequest(NbdCmd.WRITE, 0, 0x77, 8192n, 4096, data), nbdRequest(NbdCmd.READ, 0, 0x78, 8192n, 4096)]));
  await settle(sock);
  const out = sock.output().subarray(before);
  sock.destroy();
  // Two simple replies: the write's (16 bytes), then the read's (16 + data).
  if (out.length !== 16 + 16 + 4096) return false;
  if (out.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC || out.readUInt32BE(4) !== 0 || out.readUInt32BE(12) !== 0x77) return false;
  if (out.readUInt32BE(16) !== NBD_SIMPLE_REPLY_MAGIC || out.readUInt32BE(20) !== 0 || out.readUInt32BE(28) !== 0x78) return false;
  return out.subarray(32).equals(data);
}

export function nbdBackend(): MemoryNbdBackend {
  return new MemoryNbdBackend([
    { name: NBD_VOLUME, sizeBytes: NBD_VOLUME_BYTES },
    { name: 'small', sizeBytes: 64 * 1024, pageSizeBytes: 512 },
  ]);
}

/** A server with TLS off and one that requires it (a key of its own). */
export function nbdServers(log: pino.Logger, host = '127.0.0.1'): { plain: NbdServer; tlsRequired: NbdServer } {
  const limits = { closeGraceMs: 200, handshakeTimeoutMs: 60_000 };
  const plain = new NbdServer({ host, port: 0, limits, log }, nbdBackend());
  const keys = new Map([['fuzz', randomBytes(PSK_BYTES)]]);
  const tlsRequired = new NbdServer({ host, port: 0, limits, tls: { mode: 'require', keys }, log }, nbdBackend());
  return { plain, tlsRequired };
}

class NbdInstance implements TargetInstance {
  readonly cases = nbdCases;
  private readonly logged = countingLogger();
  private readonly servers = nbdServers(this.logged.log);

  private open(server: NbdServer): MemorySocket {
    const sock = new MemorySocket();
    server.serveSocket(sock.asSocket());
    return sock;
  }

  async run(c: FuzzCase, splits: Splits): Promise<void> {
    const meta = c.meta as NbdMeta;
    const server = meta.server === 'plain' ? this.servers.plain : this.servers.tlsRequired;
    const sock = this.open(server);
    for (const chunk of messagesOf(c, splits)) {
      sock.input(Buffer.from(chunk));
      // Each chunk its own read, as a socket would hand it over.
      await turns(1);
    }
    await settle(sock);
    const out = sock.output();
    const at = checkHandshakeReplies(out);
    if (meta.transmission !== null) checkTransmissionReplies(out, at, meta.transmission);
    sock.destroy();
    await turns(2);
    if (server.connections !== 0) {
      await settle(sock, 20);
      if (server.connections !== 0) throw new OracleFailure(`${server.connections} connections left after the client went away`);
    }
  }

  async stillServes(): Promise<boolean> {
    if (!(await nbdServesWriteRead(() => this.open(this.servers.plain)))) return false;
    // The server that requires TLS still answers an option, with the error that says so.
    const sock = this.open(this.servers.tlsRequired);
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(NbdClientFlag.C_FIXED_NEWSTYLE | NbdClientFlag.C_NO_ZEROES, 0);
    sock.input(Buffer.concat([flags, nbdOption(NbdOpt.LIST)]));
    await settle(sock);
    const out = sock.output();
    sock.destroy();
    return out.length >= NBD_GREETING_BYTES + 20 && out.readUInt32BE(NBD_GREETING_BYTES + 12) === NbdRep.ERR_TLS_REQD;
  }

  errorsLogged(): readonly string[] {
    return this.logged.errors;
  }

  async close(): Promise<void> {
    await this.servers.plain.close();
    await this.servers.tlsRequired.close();
  }
}

export const nbdTarget: FuzzTarget = {
  name: 'nbd',
  description: 'NBD server: client flags, options (long/lying lengths, STARTTLS, unknown), then requests (bad magic, types, flags, offsets, lengths)',
  setup: async () => new NbdInstance(),
};
