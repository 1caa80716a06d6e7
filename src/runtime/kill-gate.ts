// A test hook (configuration testKillAfterDataWrites, only with testHooks):
// the controller kills itself with SIGKILL as it is about to make one more
// write into the data area of its pool's members than the number given. The
// writes of a row that went out before it may land; the rest never leave.
// So a real process dies in the middle of a row write, as the simulator's
// kill-mid-stripe test does by seed (test/sim/kill-mid-stripe.ts).

import type { PoolMember } from '../store/pool.js';
import type { Device } from '../store/types.js';

export class KillGate {
  /** Member offsets from here on are the data area; set once the store is open (nothing counts before). */
  dataFrom = Number.POSITIVE_INFINITY;
  private writes = 0;

  constructor(
    private readonly allow: number,
    private readonly die: () => void = () => process.kill(process.pid, 'SIGKILL'),
  ) {}

  /** The members, each behind the gate. */
  wrap(members: readonly PoolMember[]): PoolMember[] {
    return members.map((m) => ({ name: m.name, device: new GatedDevice(m.device, this) }));
  }

  /** A write at a member offset is about to go out: false when the process dies instead. */
  pass(offset: number): boolean {
    if (offset < this.dataFrom) return true;
    if (this.writes >= this.allow) {
      this.die();
      return false;
    }
    this.writes++;
    return true;
  }
}

interface PartsDevice extends Device {
  writeParts(offset: number, parts: readonly Buffer[]): Promise<void>;
}

class GatedDevice implements Device {
  constructor(
    private readonly inner: Device,
    private readonly gate: KillGate,
  ) {}

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.inner.read(offset, length);
  }

  write(offset: number, data: Buffer): Promise<void> {
    if (!this.gate.pass(offset)) return new Promise<void>(() => undefined);
    return this.inner.write(offset, data);
  }

  writeParts(offset: number, parts: readonly Buffer[]): Promise<void> {
    if (!this.gate.pass(offset)) return new Promise<void>(() => undefined);
    const inner = this.inner as Partial<PartsDevice>;
    return typeof inner.writeParts === 'function' ? inner.writeParts.call(this.inner, offset, parts) : this.inner.write(offset, Buffer.concat(parts));
  }

  sync(): Promise<void> {
    return this.inner.sync();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
