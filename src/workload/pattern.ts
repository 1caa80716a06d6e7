// Self-describing data. Every chunk a write puts down starts with a header
// naming the chunk and the write, and the rest is a 16-byte motif derived
// from both, repeated with Buffer.fill (native, memset speed), so making and
// checking the data costs next to nothing beside the I/O it measures. A
// chunk that holds another chunk's or another write's bytes, or half of
// one, never passes.

export const PATTERN_MAGIC = 0x4c575050; // "PPWL"
export const PATTERN_HEADER_BYTES = 16;
/** Write number of a chunk never written in this run: all zeros. */
export const WRITE_ZERO = 0;

function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

export type ChunkCheck = { writeNo: number } | { corrupt: string };

export class PatternMaker {
  private readonly motif = Buffer.allocUnsafe(16);
  private readonly expected: Buffer;
  private readonly zeros: Buffer;

  constructor(
    /** Tells this run's data from a kept allocation's older data. */
    readonly runTag: number,
    readonly chunkBytes: number,
  ) {
    this.expected = Buffer.allocUnsafe(chunkBytes);
    this.zeros = Buffer.alloc(chunkBytes);
  }

  /** Fills buf[off, off+bytes) with the chunks from firstChunk on, as write writeNo leaves them. */
  fill(buf: Buffer, off: number, bytes: number, firstChunk: number, writeNo: number): void {
    const n = bytes / this.chunkBytes;
    for (let i = 0; i < n; i++) this.fillChunk(buf, off + i * this.chunkBytes, firstChunk + i, writeNo);
  }

  private fillChunk(buf: Buffer, at: number, chunk: number, writeNo: number): void {
    const end = at + this.chunkBytes;
    if (writeNo === WRITE_ZERO) {
      buf.fill(0, at, end);
      return;
    }
    let h = mix32(this.runTag ^ Math.imul(chunk >>> 0, 0x9e3779b1) ^ Math.imul(writeNo, 0x27d4eb2f));
    const m = this.motif;
    for (let i = 0; i < 16; i += 4) {
      h = mix32(h + 0x6d2b79f5);
      m.writeUInt32LE(h, i);
    }
    buf.fill(m, at, end);
    buf.writeUInt32LE(PATTERN_MAGIC, at);
    buf.writeUInt32LE(chunk >>> 0, at + 4);
    buf.writeUInt32LE(writeNo >>> 0, at + 8);
    buf.writeUInt32LE(this.runTag, at + 12);
  }

  /** Which write chunk `chunk`'s bytes at data[at..] hold, or why they hold none. */
  check(data: Buffer, at: number, chunk: number): ChunkCheck {
    if (data.length < at + this.chunkBytes) return { corrupt: `short read: ${data.length - at} bytes where a chunk has ${this.chunkBytes}` };
    const magic = data.readUInt32LE(at);
    if (magic !== PATTERN_MAGIC) {
      if (data.compare(this.zeros, 0, this.chunkBytes, at, at + this.chunkBytes) === 0) return { writeNo: WRITE_ZERO };
      return { corrupt: 'no header and not zeros' };
    }
    const holds = data.readUInt32LE(at + 4);
    const writeNo = data.readUInt32LE(at + 8);
    const tag = data.readUInt32LE(at + 12);
    if (tag !== this.runTag) return { corrupt: `holds data of another run (tag ${hex(tag)}, write #${writeNo})` };
    if (holds !== chunk >>> 0) return { corrupt: `holds chunk ${holds}'s data (write #${writeNo})` };
    if (writeNo === WRITE_ZERO) return { corrupt: 'header names write #0' };
    this.fillChunk(this.expected, 0, chunk, writeNo);
    if (data.compare(this.expected, 0, this.chunkBytes, at, at + this.chunkBytes) !== 0) {
      let i = 0;
      while (i < this.chunkBytes && data[at + i] === this.expected[i]) i++;
      return { corrupt: `header says write #${writeNo} but byte ${i} differs (torn or mixed data)` };
    }
    return { writeNo };
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}
