// Ports for a pair's configuration: all different, and free once handed out.

import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { freePorts } from '../../src/runtime/free-port.js';
import { freePairPorts } from '../../src/runtime/local-pair.js';

describe('freePorts', () => {
  it('hands out distinct ports, each of which can be listened on afterwards', async () => {
    const ports = await freePorts(24);
    expect(new Set(ports).size).toBe(24);
    for (const port of ports.slice(0, 4)) {
      const srv = createServer();
      await new Promise<void>((resolve, reject) => srv.once('error', reject).listen(port, '127.0.0.1', () => resolve()));
      await new Promise<void>((resolve) => srv.close(() => resolve()));
    }
  });

  it('gives a pair six different ports with NBD', async () => {
    const p = await freePairPorts({ nbd: true });
    const all = [p.A.client, p.A.peer, p.A.nbd, p.B.client, p.B.peer, p.B.nbd];
    expect(new Set(all).size).toBe(6);
  });
});
