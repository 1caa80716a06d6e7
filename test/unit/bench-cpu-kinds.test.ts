import { describe, expect, it } from 'vitest';
import { workByWindow, workKindOf, type CpuProfile } from '../../src/bench/cpu-profile.js';
import { formatBench } from '../../src/bench/format.js';
import { benchSettings } from '../../src/bench/run.js';
import type { BenchReport } from '../../src/bench/types.js';

const at = (functionName: string, url = ''): { functionName: string; url: string } => ({ functionName, url });
const DIST = 'file:///work/main/dist';

describe('kinds of work in a CPU profile', () => {
  it('names a JavaScript frame by its module', () => {
    expect(workKindOf([at('decodeChecked', `${DIST}/protocol/codec.js`)])).toBe('codec (encode/decode)');
    expect(workKindOf([at('crc32cRange', `${DIST}/protocol/crc32c.js`)])).toBe('crc32c');
    expect(workKindOf([at('onWritePage', `${DIST}/core/controller.js`)])).toBe('core');
    expect(workKindOf([at('getData', 'file:///work/main/node_modules/ws/lib/receiver.js')])).toBe('ws framing');
    expect(workKindOf([at('processTicksAndRejections', 'node:internal/process/task_queues')])).toBe('promise hops/timers');
    expect(workKindOf([at('(garbage collector)')])).toBe('garbage collector');
    expect(workKindOf([at('(idle)')])).toBe('idle');
  });

  it('gives a native call, or node’s own helper, to whoever made it', () => {
    const socketWrite = [at('writev'), at('Socket._writev', 'node:net'), at('sendMany', `${DIST}/transport/peer-link.js`)];
    expect(workKindOf(socketWrite)).toBe('socket syscalls');
    const storeRead = [at('read'), at('read', 'node:internal/fs/promises'), at('readRun', `${DIST}/store/file-device.js`)];
    expect(workKindOf(storeRead)).toBe('store I/O (fs calls)');
    const copy = [at('copy'), at('_copyActual', 'node:buffer'), at('writeDirty', `${DIST}/core/page-cache.js`)];
    expect(workKindOf(copy)).toBe('buffer copies/allocation');
    expect(workKindOf([at('validateInteger', 'node:internal/validators'), at('issueQueuedReads', `${DIST}/store/file-device.js`)])).toBe('store (js)');
    expect(workKindOf([at('mystery')])).toBe('other');
  });

  it('adds up each window’s samples by kind, idle left out', () => {
    const p: CpuProfile = {
      nodes: [
        { id: 1, callFrame: { functionName: '(root)', url: '', lineNumber: 0 }, children: [2, 3, 4] },
        { id: 2, callFrame: { functionName: '(idle)', url: '', lineNumber: 0 } },
        { id: 3, callFrame: { functionName: 'encode', url: `${DIST}/protocol/codec.js`, lineNumber: 0 } },
        { id: 4, callFrame: { functionName: 'writeNow', url: `${DIST}/core/controller.js`, lineNumber: 0 } },
      ],
      startTime: 0,
      endTime: 100,
      // Samples at 10, 20, 30, 40, 50 µs; the span after each is charged to it.
      samples: [3, 4, 2, 3, 4],
      timeDeltas: [10, 10, 10, 10, 10],
    };
    const [first, second] = workByWindow(p, [
      [0, 25],
      [26, 60],
    ]);
    expect(Object.fromEntries(first!)).toEqual({ 'codec (encode/decode)': 10, core: 10 });
    expect(Object.fromEntries(second!)).toEqual({ 'codec (encode/decode)': 10, core: 0 });
  });
});

describe('the per-operation table', () => {
  it('adds up the pair’s controllers by kind of work, one column per cell', () => {
    const summary = { totalMs: 1, idleMs: 0, busyMs: 1, functions: [], files: [] };
    const proc = (name: string, core: number, codec: number): BenchReport['profiles'][number] => ({
      process: name,
      pid: 1,
      file: `/tmp/${name}.cpuprofile`,
      summary,
      perOp: [
        { op: 'write', inflight: 1, ops: 100, usPerOp: { core, 'codec (encode/decode)': codec } },
        { op: 'write', inflight: 32, ops: 1000, usPerOp: { core: core / 2 } },
      ],
    });
    const report: BenchReport = {
      version: 1,
      startedAt: '',
      finishedAt: '',
      settings: { ...benchSettings({ ops: ['write'], configs: ['mirrored'] }), cpuProfDir: '/tmp' },
      machine: { hostname: 'h', platform: 'linux', cpus: 2, cpuModel: 'cpu', totalMemBytes: 1, node: 'v20', ws: '8', loadAvgStart: [], loadAvgEnd: [], busyBeforeStartPct: 0, waitedForQuietSeconds: 0 },
      cells: [],
      targets: [],
      memory: [],
      notes: [],
      profiles: [proc('mirrored controller A', 20, 5), proc('mirrored controller B', 10, 4)],
    };
    const lines = formatBench(report).split('\n');
    expect(lines.find((l) => l.startsWith('profiled CPU µs per operation'))).toContain('mirrored controller A + mirrored controller B');
    expect(lines.find((l) => l.startsWith('kind of work'))).toMatch(/write x1\s+\|\s+write x32/);
    expect(lines.find((l) => l.startsWith('core '))).toMatch(/\|\s+30\.0\s+\|\s+15\.0$/);
    expect(lines.find((l) => l.startsWith('codec'))).toMatch(/\|\s+9\.0\s+\|\s+0\.0$/);
    expect(lines.find((l) => l.startsWith('all: mirrored controller B'))).toMatch(/\|\s+14\.0\s+\|\s+5\.0$/);
    expect(lines.find((l) => l.startsWith('all  '))).toMatch(/\|\s+39\.0\s+\|\s+15\.0$/);
    // Kinds with nothing in any column stay out.
    expect(lines.some((l) => l.startsWith('ws framing'))).toBe(false);
  });
});
