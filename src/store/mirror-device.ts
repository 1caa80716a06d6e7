// A Device over N devices holding the same bytes (issue 14, the mirror
// layout; first step: not yet reachable from the configuration). Each
// member starts with a pool label (pool-label.ts); the pool's bytes follow.
//
// - A write goes to every healthy member and succeeds when one of them took
//   it. A member that fails is marked failed, and the pool's generation is
//   written (and synced) to the members left before that write is answered:
//   a failed member that comes back later is seen to be stale and is not
//   trusted, however long it was away.
// - A read goes to the healthy members in turn; one that fails is marked
//   failed and the next is tried.
// - A sync syncs every healthy member; members that fail it are marked failed.
// - Opening checks every label: another pool, another layout, a member in
//   another slot or a pool of another size is refused with a message naming
//   the device; a member with an older generation opens as stale (unused).
//
// Not built yet: replacing a device and rebuilding it, scrub, parity
// layouts, remote (NBD) members, and `pagepair status` showing the pool.

import { randomUUID } from 'node:crypto';
import { PagepairError } from '../protocol/errors.js';
import { POOL_LABEL_AREA_BYTES, encodePoolLabel, labelCopyFor, newestPoolLabel, type PoolLabel } from './pool-label.js';
import type { Device } from './types.js';

export interface PoolDevice {
  /** What messages call it (a path, later a URI). */
  name: string;
  device: Device;
}

export type MemberState = 'healthy' | 'failed' | 'stale';

export interface MemberStatus {
  slot: number;
  name: string;
  state: MemberState;
  /** Why it is not healthy. */
  reason: string | null;
}

interface Member extends PoolDevice {
  slot: number;
  state: MemberState;
  reason: string | null;
}

interface PartsCapable {
  writeParts(offset: number, parts: readonly Buffer[]): Promise<void>;
}

function hasWriteParts(d: Device): d is Device & PartsCapable {
  return typeof (d as Partial<PartsCapable>).writeParts === 'function';
}

export class MirrorDevice implements Device {
  readonly sizeBytes: number;
  private nextRead = 0;
  /** Label writes after a member failed, one at a time. */
  private labelChain: Promise<void> = Promise.resolve();

  private constructor(
    private readonly members: Member[],
    readonly poolId: string,
    private generation: number,
  ) {
    this.sizeBytes = Math.min(...members.map((m) => m.device.sizeBytes)) - POOL_LABEL_AREA_BYTES;
  }

  /** Label `devices` as a new mirror pool (generation 1) and open it. Whatever they held is the pool's now. */
  static async create(devices: readonly PoolDevice[], poolId: string = randomUUID()): Promise<MirrorDevice> {
    if (devices.length < 2) throw new PagepairError('BAD_CONFIG', `a mirror pool needs 2 devices or more, got ${devices.length}`, 'devices');
    const dataBytes = Math.min(...devices.map((d) => d.device.sizeBytes)) - POOL_LABEL_AREA_BYTES;
    if (dataBytes <= 0) throw new PagepairError('BAD_CONFIG', `the smallest device (${Math.min(...devices.map((d) => d.device.sizeBytes))} bytes) has no room after the pool labels`, 'devices');
    await Promise.all(
      devices.map(async (d, slot) => {
        const label = encodePoolLabel({ poolId, layout: 'mirror', slot, devices: devices.length, generation: 1, dataBytes });
        await d.device.write(labelCopyFor(1) * 4096, label);
        await d.device.sync();
      }),
    );
    return MirrorDevice.open(devices);
  }

  /** Open a mirror pool from its devices, in slot order. */
  static async open(devices: readonly PoolDevice[]): Promise<MirrorDevice> {
    const labels = await Promise.all(
      devices.map(async (d) => {
        const [c0, c1] = await Promise.all([d.device.read(0, 64), d.device.read(4096, 64)]);
        return newestPoolLabel(Buffer.from(c0), Buffer.from(c1));
      }),
    );
    const first = labels.find((l): l is PoolLabel => typeof l !== 'string');
    if (first === undefined) throw new PagepairError('STORE_MISMATCH', `no device holds a pool label: ${devices.map((d, i) => `${d.name}: ${labels[i]}`).join('; ')}`, 'devices');
    const generation = Math.max(...labels.map((l) => (typeof l === 'string' ? 0 : l.generation)));
    const members: Member[] = devices.map((d, slot) => {
      const l = labels[slot]!;
      if (typeof l === 'string') throw new PagepairError('STORE_MISMATCH', `device ${d.name}: ${l}`, 'devices');
      if (l.poolId !== first.poolId) throw new PagepairError('STORE_MISMATCH', `device ${d.name} belongs to pool ${l.poolId}, not ${first.poolId}`, 'devices');
      if (l.layout !== 'mirror') throw new PagepairError('STORE_MISMATCH', `device ${d.name} is labelled for a ${l.layout} pool`, 'devices');
      if (l.devices !== devices.length) throw new PagepairError('STORE_MISMATCH', `device ${d.name} is one of a pool of ${l.devices} devices, ${devices.length} were given`, 'devices');
      if (l.slot !== slot) throw new PagepairError('STORE_MISMATCH', `device ${d.name} fills slot ${l.slot} of the pool, it was given as slot ${slot}: list the devices in slot order`, 'devices');
      const stale = l.generation < generation;
      return { ...d, slot, state: stale ? 'stale' : 'healthy', reason: stale ? `stale: pool generation ${l.generation}, the others are at ${generation}` : null };
    });
    if (!members.some((m) => m.state === 'healthy')) throw new PagepairError('IO_ERROR', 'no device of the pool is current', 'devices');
    return new MirrorDevice(members, first.poolId, generation);
  }

  /** Each member's slot, name and state. */
  status(): MemberStatus[] {
    return this.members.map((m) => ({ slot: m.slot, name: m.name, state: m.state, reason: m.reason }));
  }

  get poolGeneration(): number {
    return this.generation;
  }

  /** Serving with fewer devices than it has. */
  get degraded(): boolean {
    return this.members.some((m) => m.state !== 'healthy');
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    // Members in turn from where the last read began: each read tries every member once.
    const start = this.nextRead++;
    for (let i = 0; i < this.members.length; i++) {
      const m = this.members[(start + i) % this.members.length]!;
      if (m.state !== 'healthy') continue;
      try {
        return await m.device.read(POOL_LABEL_AREA_BYTES + offset, length);
      } catch (err) {
        await this.fail(m, `read failed: ${String(err)}`);
      }
    }
    throw this.noneLeft('read');
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.writeParts(offset, [data]);
  }

  async writeParts(offset: number, parts: readonly Buffer[]): Promise<void> {
    this.checkRange(offset, parts.reduce((n, p) => n + p.length, 0));
    await this.onEach('write', (m) => (hasWriteParts(m.device) ? m.device.writeParts(POOL_LABEL_AREA_BYTES + offset, parts) : m.device.write(POOL_LABEL_AREA_BYTES + offset, Buffer.concat(parts))));
  }

  sync(): Promise<void> {
    return this.onEach('sync', (m) => m.device.sync());
  }

  async close(): Promise<void> {
    await this.labelChain;
    await Promise.all(this.members.map((m) => m.device.close().catch(() => undefined)));
  }

  /** Run op on every healthy member; the members it fails on are marked failed (durably) before this settles. */
  private async onEach(what: string, op: (m: Member) => Promise<void>): Promise<void> {
    const healthy = this.members.filter((m) => m.state === 'healthy');
    const results = await Promise.allSettled(healthy.map(op));
    let ok = 0;
    for (let i = 0; i < healthy.length; i++) {
      const r = results[i]!;
      if (r.status === 'fulfilled') ok++;
      else await this.fail(healthy[i]!, `${what} failed: ${String(r.reason)}`);
    }
    if (ok === 0) throw this.noneLeft(what);
  }

  /** Mark a member failed and write the next generation to the members left (synced) before going on. */
  private fail(m: Member, reason: string): Promise<void> {
    if (m.state !== 'healthy') return this.labelChain;
    m.state = 'failed';
    m.reason = reason;
    const run = this.labelChain.then(() => this.writeGeneration());
    this.labelChain = run.catch(() => undefined);
    return run;
  }

  private async writeGeneration(): Promise<void> {
    for (;;) {
      const generation = this.generation + 1;
      const left = this.members.filter((m) => m.state === 'healthy');
      if (left.length === 0) return;
      const results = await Promise.allSettled(
        left.map(async (m) => {
          const label = encodePoolLabel({ poolId: this.poolId, layout: 'mirror', slot: m.slot, devices: this.members.length, generation, dataBytes: this.sizeBytes });
          await m.device.write(labelCopyFor(generation) * 4096, label);
          await m.device.sync();
        }),
      );
      this.generation = generation;
      // A member that cannot take the label fails too, and the next generation names it stale.
      let failedNow = 0;
      results.forEach((r, i) => {
        if (r.status === 'fulfilled') return;
        const m = left[i]!;
        m.state = 'failed';
        m.reason = `label write failed: ${String(r.reason)}`;
        failedNow++;
      });
      if (failedNow === 0) return;
    }
  }

  private noneLeft(what: string): PagepairError {
    return new PagepairError('IO_ERROR', `pool ${this.poolId}: ${what} failed on every device (${this.members.map((m) => `${m.name}: ${m.reason ?? m.state}`).join('; ')})`);
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || offset + length > this.sizeBytes) {
      throw new PagepairError('OUT_OF_RANGE', `pool ${this.poolId}: ${length} bytes at ${offset} are outside its ${this.sizeBytes} bytes`);
    }
  }
}
