// Reading what fio leaves: its JSON report behind the notes and verify errors
// it prints to the same stream, and its verify state file.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fioVerifyStatePath, parseFioJob, readFioVerifyState } from '../../src/runtime/fio.js';

const REPORT = JSON.stringify(
  {
    'fio version': 'fio-3.33',
    jobs: [
      {
        jobname: 'kt',
        error: 0,
        total_err: 3,
        read: {
          io_bytes: 8192,
          total_ios: 2,
          iops: 100.5,
          runtime: 20,
          clat_ns: { mean: 1500, percentile: { '50.000000': 1000, '99.000000': 9000 } },
          lat_ns: { mean: 2500, percentile: { '50.000000': 2000, '99.000000': 10000 } },
        },
        write: { io_bytes: 0, total_ios: 0, iops: 0, runtime: 0, clat_ns: { mean: 0, percentile: { '50.000000': 0, '99.000000': 0 } } },
      },
    ],
  },
  null,
  2,
);

describe('parseFioJob', () => {
  it('finds the report after notes, even when it starts in the middle of a verify line', () => {
    const out = `fio: connected to NBD server\nverify: bad magic header 0, wanted acca at file kt.0.0 offset 4096, length ${REPORT}\n`;
    const job = parseFioJob(out, 'kt');
    expect(job).toEqual({
      jobname: 'kt',
      error: 0,
      totalErrors: 3,
      read: { totalIos: 2, ioBytes: 8192, iops: 100.5, runtimeMs: 20, clat: { p50Us: 1, p99Us: 9, meanUs: 1.5 }, lat: { p50Us: 2, p99Us: 10, meanUs: 2.5 } },
      write: { totalIos: 0, ioBytes: 0, iops: 0, runtimeMs: 0, clat: null, lat: null },
    });
  });

  it('gives fio an error of -1 as -1, not as an unsigned 32-bit number', () => {
    const out = REPORT.replace('"error": 0', '"error": 4294967295');
    expect(parseFioJob(out, 'kt').error).toBe(-1);
  });

  it('says what is missing, with fio\'s last words', () => {
    expect(() => parseFioJob('fio: connected to NBD server\n', 'kt', 'fio: nbd_poll: recv: Connection reset by peer')).toThrow(/no JSON report.*\n.*Connection reset by peer/);
    expect(() => parseFioJob(REPORT, 'other')).toThrow(/no job "other"/);
    expect(() => parseFioJob(REPORT.slice(0, 100), 'kt')).toThrow(/does not parse/);
  });
});

describe('readFioVerifyState', () => {
  function stateFile(numberio: number, depth: number, offsets: number[]): Buffer {
    const list = Buffer.alloc(8 + 4 + 4 + 8 + 8 + 56 + 64 + 16 * offsets.length);
    list.writeBigUInt64LE(BigInt(offsets.length), 0);
    list.writeUInt32LE(depth, 8);
    list.writeUInt32LE(1, 12);
    list.writeBigUInt64LE(BigInt(numberio), 16);
    list.write('kt', 88);
    offsets.forEach((o, i) => list.writeBigUInt64LE(BigInt(o), 152 + 16 * i + 8));
    const header = Buffer.alloc(24);
    header.writeBigUInt64LE(3n, 0);
    header.writeBigUInt64LE(BigInt(list.length), 8);
    return Buffer.concat([header, list]);
  }

  it('reads writes issued, depth and the completed offsets; null when absent or of another version', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pagepair-fio-state-'));
    try {
      const path = fioVerifyStatePath(dir, 'kt');
      expect(path).toBe(join(dir, 'local-kt-0-verify.state'));
      expect(readFioVerifyState(path)).toBeNull();
      writeFileSync(path, stateFile(5433, 32, [4096, 65536, 131072]));
      expect(readFioVerifyState(path)).toEqual({ writesIssued: 5433, depth: 32, completedOffsets: [4096, 65536, 131072] });
      const other = stateFile(1, 1, []);
      other.writeBigUInt64LE(2n, 0);
      writeFileSync(path, other);
      expect(readFioVerifyState(path)).toBeNull();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
