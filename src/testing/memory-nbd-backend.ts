// An NbdBackend over plain Buffers, for tests of the NBD server: volumes in
// memory, a record of every call, and knobs a test turns to hold operations
// (to complete them in an order it chooses), fail them with a given error, or
// stop serving.

import { PagepairError } from '../protocol/errors.js';
import type { ErrorCodeName } from '../protocol/errors.js';
import type { NbdBackend, NbdVolume } from '../transport/nbd-backend.js';

export interface MemoryVolumeSpec {
  name: string;
  sizeBytes: number;
  pageSizeBytes?: number;
}

export type MemoryNbdOp = 'read' | 'write' | 'writeZeroes' | 'flush';

export interface MemoryNbdCall {
  op: MemoryNbdOp;
  volume: string;
  offsetBytes: number;
  lengthBytes: number;
  fua: boolean;
}

/** An operation waiting for the test to let it run. */
export interface HeldOperation {
  readonly call: MemoryNbdCall;
  release(): void;
}

export class MemoryNbdBackend implements NbdBackend {
  readonly calls: MemoryNbdCall[] = [];
  /** Operations waiting, oldest first, while `holding` is on. */
  readonly held: HeldOperation[] = [];
  holding = false;
  servingNow = true;
  /** The next operation (of any kind) rejects with this, once. */
  failNext: PagepairError | Error | null = null;
  private readonly volumes = new Map<string, { volume: NbdVolume; bytes: Buffer }>();

  constructor(specs: readonly MemoryVolumeSpec[]) {
    let n = 0;
    for (const s of specs) {
      n++;
      const volume: NbdVolume = {
        name: s.name,
        guid: `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`,
        sizeBytes: s.sizeBytes,
        pageSizeBytes: s.pageSizeBytes ?? 4096,
      };
      this.volumes.set(s.name, { volume, bytes: Buffer.alloc(s.sizeBytes) });
    }
  }

  /** The volume's contents (live, not a copy). */
  bytesOf(name: string): Buffer {
    const v = this.volumes.get(name);
    if (v === undefined) throw new Error(`no volume ${name}`);
    return v.bytes;
  }

  failWith(code: ErrorCodeName, message = `injected ${code}`): void {
    this.failNext = new PagepairError(code, message);
  }

  /** Lets every held operation run, oldest first. */
  releaseAll(): void {
    for (const h of this.held.splice(0)) h.release();
  }

  listVolumes(): readonly NbdVolume[] {
    return [...this.volumes.values()].map((v) => v.volume);
  }

  findVolume(name: string): NbdVolume | undefined {
    return this.volumes.get(name)?.volume;
  }

  serving(): boolean {
    return this.servingNow;
  }

  async read(volume: NbdVolume, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const bytes = await this.begin({ op: 'read', volume: volume.name, offsetBytes, lengthBytes, fua: false });
    return Buffer.from(bytes.subarray(offsetBytes, offsetBytes + lengthBytes));
  }

  async write(volume: NbdVolume, offsetBytes: number, data: Buffer, fua: boolean): Promise<void> {
    // Copied now: the server's buffer is the client's, valid for this call.
    const copy = Buffer.from(data);
    const bytes = await this.begin({ op: 'write', volume: volume.name, offsetBytes, lengthBytes: data.length, fua });
    copy.copy(bytes, offsetBytes);
  }

  async writeZeroes(volume: NbdVolume, offsetBytes: number, lengthBytes: number, fua: boolean): Promise<void> {
    const bytes = await this.begin({ op: 'writeZeroes', volume: volume.name, offsetBytes, lengthBytes, fua });
    bytes.fill(0, offsetBytes, offsetBytes + lengthBytes);
  }

  async flush(volume: NbdVolume): Promise<void> {
    await this.begin({ op: 'flush', volume: volume.name, offsetBytes: 0, lengthBytes: 0, fua: false });
  }

  /** Records the call, checks it the way a real backend would, waits if holding; resolves with the volume's bytes. */
  private async begin(call: MemoryNbdCall): Promise<Buffer> {
    this.calls.push(call);
    const v = this.volumes.get(call.volume);
    if (v === undefined) throw new PagepairError('UNKNOWN_GUID', `no volume ${call.volume}`);
    if (call.offsetBytes + call.lengthBytes > v.volume.sizeBytes) {
      throw new PagepairError('OUT_OF_RANGE', `${call.op} ${call.offsetBytes}+${call.lengthBytes} past ${v.volume.sizeBytes}`);
    }
    if (this.holding) await new Promise<void>((release) => this.held.push({ call, release }));
    const fail = this.failNext;
    if (fail !== null) {
      this.failNext = null;
      throw fail;
    }
    return v.bytes;
  }
}
