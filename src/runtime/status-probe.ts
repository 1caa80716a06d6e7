// A controller's status, asked again and again over one connection kept
// between asks (cheap enough for every 20 ms); a controller that does not
// answer is null, and the next ask dials again.

import { PagepairClient, type ControllerAddress } from '../client/client.js';
import type { ControllerStatus } from './controller-process.js';

export class StatusProbe {
  private client: PagepairClient | null = null;

  constructor(
    private readonly addr: ControllerAddress,
    /** The client name the controller logs. */
    private readonly clientName: string,
  ) {}

  /** null when the controller does not answer within timeoutMs. */
  async get(timeoutMs = 1000): Promise<ControllerStatus | null> {
    try {
      if (this.client === null || !this.client.isOpen) {
        this.client = null;
        this.client = await PagepairClient.connect({ host: this.addr.host, port: this.addr.port, token: this.addr.token, tls: this.addr.tls === true, name: this.clientName, timeoutMs });
      }
      return (await this.client.status()) as ControllerStatus;
    } catch {
      this.drop();
      return null;
    }
  }

  /** Forgets the connection without waiting for it to close. */
  drop(): void {
    const c = this.client;
    this.client = null;
    void c?.close().catch(() => undefined);
  }

  async close(): Promise<void> {
    const c = this.client;
    this.client = null;
    await c?.close().catch(() => undefined);
  }
}
