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
  NbdOpt,
  NbdRep,
} from '../../protocol/nbd.js';
import { PSK_BYTES } from '../../transport/tls.js';
import { NbdServer } from '../../transport/nbd-server.js';
import { MemoryNbdBackend } from '../memory-nbd-backend.js';
import { countingLogger, MemorySocket } from './fakes.js';
import { mutate, mutationArb } from './frames.js';
import type { Mutation } from './frames.js';
import { chunksOf, OracleFailure } from './runner.js';
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

const request: fc.Arbitrary<Buffer> = fc
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
    if (type !== NbdCmd.WRITE) return nbdRequest(type, flags, cookie, offset, length);
    // Long payloads are never sent whole: the server must wait for the rest or drop it.
    const sent = payloadCut >= 0 ? Math.min(payloadCut, length) : Math.min(length, 8192);
    return nbdRequest(type, flags, cookie, offset, length, randomlessPayload(sent));
  });

function randomlessPayload(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + 7) & 0xff;
  return b;
}

interface NbdMeta {
  server: 'plain' | 'tls-required';
}

const validFlags = Buffer.from([0, 0, 0, NbdClientFlag.C_FIXED_NEWSTYLE | NbdClientFlag.C_NO_ZEROES]);

function nbdCase(server: NbdMeta['server'], head: Buffer[], tail: Buffer[], mutations: Mutation[], what: string): FuzzCase {
  // Mutations hit the tail only when the head is a valid handshake, so that most of them reach transmission.
  let bytes: Buffer = Buffer.concat(tail);
  for (const m of mutations) bytes = mutate(bytes, m);
  bytes = Buffer.concat([...head, bytes]);
  const meta: NbdMeta = { server };
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
  .record({ structured: fc.boolean(), byName: fc.boolean(), requests: fc.array(request, { minLength: 1, maxLength: 5 }), mutations: someMutations })
  .map(({ structured, byName, requests, mutations }) => {
    const head: Buffer[] = [validFlags];
    if (structured) head.push(nbdOption(NbdOpt.STRUCTURED_REPLY));
    head.push(byName ? nbdOption(NbdOpt.EXPORT_NAME, Buffer.from(NBD_VOLUME)) : nbdOption(NbdOpt.GO, infoData(NBD_VOLUME)));
    return nbdCase('plain', head, requests, mutations, `transmission${structured ? ' (structured)' : ''}: ${requests.length} requests`);
  });

export const nbdCases: fc.Arbitrary<FuzzCase> = fc.oneof(handshakeCases, transmissionCases);

// ---------------------------------------------------------------------------
// Checking the server's bytes

/** The greeting, then well-framed option replies up to the end or the choice of an export. */
export function checkHandshakeReplies(out: Buffer): void {
  if (out.length === 0) throw new OracleFailure('the server sent nothing, not even its greeting');
  if (out.length < NBD_GREETING_BYTES || out.toString('latin1', 0, 8) !== 'NBDMAGIC' || out.readUInt32BE(8) !== NBD_OPTS_MAGIC_HI) {
    throw new OracleFailure('the server did not start with its greeting');
  }
  let p = NBD_GREETING_BYTES;
  while (p < out.length) {
    if (out.length - p < 20 || out.readUInt32BE(p) !== NBD_REP_MAGIC_HI || out.readUInt32BE(p + 4) !== NBD_REP_MAGIC_LO) {
      // Past the option replies: an EXPORT_NAME reply or transmission replies, which start otherwise.
      return;
    }
    const type = out.readUInt32BE(p + 12);
    const len = out.readUInt32BE(p + 16);
    if (p + 20 + len > out.length) throw new OracleFailure(`option reply of ${len} bytes cut short at ${out.length - p - 20}`);
    const known = Object.values(NbdRep) as number[];
    if (!known.includes(type)) throw new OracleFailure(`option reply of unknown type 0x${type.toString(16)}`);
    p += 20 + len;
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
    for (const chunk of chunksOf(c.bytes, splits)) {
      sock.input(Buffer.from(chunk));
      // Each chunk its own read, as a socket would hand it over.
      await turns(1);
    }
    await settle(sock);
    checkHandshakeReplies(sock.output());
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
