// A lock over byte ranges of one pool object, shared or exclusive. Writes
// hold their range shared (they do not exclude each other: who may write
// what is the core's business); a rebuild or scrub copying a chunk holds
// it exclusive, so a write cannot land between the copy's read from one
// member and its write to another and be lost on the copy. Requests are
// granted in arrival order where they conflict, so a stream of writes
// cannot starve a copy.
//
// It serialises only within this process's object: the partner writes
// through its own.

interface Request {
  start: number;
  end: number;
  exclusive: boolean;
  grant: () => void;
}

function conflicts(a: { start: number; end: number; exclusive: boolean }, b: { start: number; end: number; exclusive: boolean }): boolean {
  return (a.exclusive || b.exclusive) && a.start < b.end && b.start < a.end;
}

export class RangeLock {
  private readonly held = new Set<Request>();
  private waiting: Request[] = [];

  /** Resolves, once [offset, offset + length) is ours, with the function that gives it back. */
  acquire(offset: number, length: number, exclusive: boolean): Promise<() => void> {
    return new Promise((resolve) => {
      const req: Request = { start: offset, end: offset + length, exclusive, grant: () => undefined };
      req.grant = () => {
        this.held.add(req);
        let released = false;
        resolve(() => {
          if (released) return;
          released = true;
          this.held.delete(req);
          this.grantWaiting();
        });
      };
      if (this.grantable(req, this.waiting.length)) req.grant();
      else this.waiting.push(req);
    });
  }

  /** Nothing held or waited for (tests). */
  get idle(): boolean {
    return this.held.size === 0 && this.waiting.length === 0;
  }

  /** Free of what is held and of the conflicting requests that came before it (the first `before` waiting). */
  private grantable(req: Request, before: number): boolean {
    for (const h of this.held) if (conflicts(h, req)) return false;
    for (let i = 0; i < before; i++) if (conflicts(this.waiting[i]!, req)) return false;
    return true;
  }

  private grantWaiting(): void {
    for (let i = 0; i < this.waiting.length; ) {
      const req = this.waiting[i]!;
      if (this.grantable(req, i)) {
        this.waiting.splice(i, 1);
        req.grant();
      } else {
        i++;
      }
    }
  }
}
