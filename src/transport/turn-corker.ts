// Corks a socket until the end of this event-loop turn, so that every message
// sent in the turn leaves in one write: the client endpoint's replies, the
// client's requests, and the bench's floors and Redis client.

import type { Socket } from 'node:net';

export class TurnCorker {
  private corked = false;

  constructor(private readonly socket: Socket | undefined) {}

  cork(): void {
    const socket = this.socket;
    if (this.corked || socket === undefined) return;
    this.corked = true;
    socket.cork();
    setImmediate(() => {
      this.corked = false;
      socket.uncork();
    });
  }
}
