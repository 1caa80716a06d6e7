// A TCP relay that can be cut and healed: the kill test puts it on the peer
// link to make a partition (both controllers alive, the link between them
// gone) without touching either process.

import { createServer, connect, type Server, type Socket } from 'node:net';

export class TcpProxy {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  private cutNow = false;

  constructor(
    private readonly target: { host: string; port: number },
    private readonly listen: { host: string; port: number },
  ) {}

  async start(): Promise<number> {
    const server = createServer((inbound) => this.accept(inbound));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.listen.port, this.listen.host, () => resolve());
    });
    const addr = server.address();
    return typeof addr === 'object' && addr !== null ? addr.port : this.listen.port;
  }

  /** Drop every relayed connection and refuse new ones until heal(). */
  cut(): void {
    this.cutNow = true;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  heal(): void {
    this.cutNow = false;
  }

  get isCut(): boolean {
    return this.cutNow;
  }

  async close(): Promise<void> {
    this.cut();
    const server = this.server;
    this.server = null;
    if (server !== null) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private accept(inbound: Socket): void {
    if (this.cutNow) {
      inbound.destroy();
      return;
    }
    const outbound = connect(this.target.port, this.target.host);
    for (const s of [inbound, outbound]) {
      this.sockets.add(s);
      s.setNoDelay(true);
      s.on('error', () => undefined);
      s.on('close', () => {
        this.sockets.delete(s);
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  }
}
