// A Device that is a remote NBD export (issue 14: a pool's member may be
// nbdkit, qemu-nbd, another pagepair pair or rbd-nbd, on another machine).
// Reads and writes larger than the export's largest payload are split;
// sync is NBD_CMD_FLUSH, so the export's server must offer it (a server
// without flush cannot promise durability and is refused at connect).

import { NbdClient, type NbdAddress, type NbdClientOptions } from '../client/nbd-client.js';
import { NbdFlag } from '../protocol/nbd.js';
import { PagepairError } from '../protocol/errors.js';
import type { Device } from './types.js';

export class NbdDevice implements Device {
  readonly sizeBytes: number;
  private readonly chunkBytes: number;

  private constructor(private readonly client: NbdClient) {
    this.sizeBytes = client.sizeBytes;
    this.chunkBytes = Math.max(4096, Math.min(client.info.maximumPayloadBytes, 1024 * 1024));
  }

  /** Connect to the export at `where` (nbd://host:port/name, nbd+unix:///name?socket=..., or an address). */
  static async connect(where: NbdAddress | string, options: NbdClientOptions = {}): Promise<NbdDevice> {
    const client = await NbdClient.connect(where, options);
    if ((client.info.transmissionFlags & NbdFlag.SEND_FLUSH) === 0) {
      client.destroy();
      throw new PagepairError('BAD_CONFIG', `NBD export ${typeof where === 'string' ? where : where.exportName} offers no flush: its writes cannot be made durable`, 'devices');
    }
    if ((client.info.transmissionFlags & NbdFlag.READ_ONLY) !== 0) {
      client.destroy();
      throw new PagepairError('BAD_CONFIG', `NBD export ${typeof where === 'string' ? where : where.exportName} is read-only`, 'devices');
    }
    return new NbdDevice(client);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    if (length <= this.chunkBytes) return this.client.read(offset, length);
    const parts: Promise<Buffer>[] = [];
    for (let at = 0; at < length; at += this.chunkBytes) parts.push(this.client.read(offset + at, Math.min(this.chunkBytes, length - at)));
    return Buffer.concat(await Promise.all(parts));
  }

  async write(offset: number, data: Buffer): Promise<void> {
    if (data.length <= this.chunkBytes) return this.client.write(offset, data);
    const parts: Promise<void>[] = [];
    for (let at = 0; at < data.length; at += this.chunkBytes) parts.push(this.client.write(offset + at, data.subarray(at, Math.min(at + this.chunkBytes, data.length))));
    await Promise.all(parts);
  }

  sync(): Promise<void> {
    return this.client.flush();
  }

  close(): Promise<void> {
    return this.client.close();
  }
}
