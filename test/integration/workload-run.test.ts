// The workload generator against a real pair: short jobs in this process and
// in worker processes, every read verified, the report and the chart written.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControllerAddress } from '../../src/client/client.js';
import { runReport } from '../../src/cli/report.js';
import { validateJob } from '../../src/workload/job.js';
import type { ProgressEvent } from '../../src/workload/progress.js';
import { parseReport, writeReportFiles } from '../../src/workload/report.js';
import { runWorkloadJob } from '../../src/workload/runner.js';
import { killAll, makePairFiles, startProcess, type PairFiles, type Proc } from './helpers.js';

let files: PairFiles;
let a: Proc;
let b: Proc;
let controllers: ControllerAddress[];

beforeAll(async () => {
  files = await makePairFiles();
  a = startProcess(['start', '--config', files.a]);
  b = startProcess(['start', '--config', files.b]);
  await Promise.all([a, b].map((p) => p.waitForLog((r) => r.msg === 'mirrored with partner', 20_000)));
  controllers = [
    { id: 'A', host: '127.0.0.1', port: files.ports.aClient, token: files.token },
    { id: 'B', host: '127.0.0.1', port: files.ports.bClient, token: files.token },
  ];
}, 60_000);

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  killAll();
  files?.cleanup();
}, 60_000);

describe('pagepair workload against a real pair', () => {
  it('a 2 s mixed job in two worker processes, both controllers: verified reads, a report and a chart', async () => {
    const job = validateJob(
      { pattern: 'randrw', blockSize: '4k:80,16k:20', size: '8MiB', clients: 2, workers: 2, inflight: 8, duration: 2, interval: '500ms', seed: 11 },
      { name: 'it-mixed' },
    );
    const progress: ProgressEvent[] = [];
    const report = await runWorkloadJob(controllers, job, { onProgress: (e) => progress.push(e) });

    expect(report.ok).toBe(true);
    expect(report.totals.verifyErrors).toBe(0);
    expect(report.totals.errors).toBe(0);
    expect(report.totals.readOps).toBeGreaterThan(0);
    expect(report.totals.writeOps).toBeGreaterThan(0);
    expect(report.totals.readsVerified).toBeGreaterThan(0);
    expect(report.latency.read.p99Us).toBeGreaterThan(0);
    expect(report.intervals.length).toBeGreaterThanOrEqual(3);
    expect(report.intervals.every((i) => i.ops > 0)).toBe(true);
    expect(report.pair.before).toEqual({ A: 'mirrored', B: 'mirrored' });
    // Live progress: phases, then one record per interval.
    expect(progress.filter((e) => e.type === 'interval').length).toBeGreaterThanOrEqual(3);
    expect(progress.some((e) => e.type === 'phase' && e.phase === 'release')).toBe(true);

    const paths = writeReportFiles(report, join(files.dir, 'reports', 'mixed'));
    expect(existsSync(paths.jsonPath)).toBe(true);
    expect(existsSync(paths.svgPath)).toBe(true);
    const back = parseReport(JSON.parse(readFileSync(paths.jsonPath, 'utf8')), paths.jsonPath);
    expect(back.totals.ops).toBe(report.totals.ops);
    expect(back.machine.node).toBe(process.version);
    expect(readFileSync(paths.svgPath, 'utf8')).toMatch(/^<\?xml[\s\S]*<svg[\s\S]*throughput \(ops\/s\)[\s\S]*<\/svg>\n$/);
    expect(await runReport([paths.jsonPath])).toMatch(/verification errors 0 of/);
  }, 30_000);

  it('a read job prefills its working set first and checks every read against it', async () => {
    const job = validateJob({ pattern: 'read', blockSize: '64k', size: '4MiB', inflight: 4, duration: 1, target: 'B' }, { name: 'it-read' });
    const report = await runWorkloadJob(controllers, job);
    expect(report.prefill).toMatchObject({ bytes: 4 * 1024 * 1024, errors: 0 });
    expect(report.totals.writeOps).toBe(0);
    expect(report.totals.readsVerified).toBe(report.totals.readOps);
    expect(report.totals.readOps).toBeGreaterThan(0);
    expect(report.totals.verifyErrors).toBe(0);
    expect(report.totals.errors).toBe(0);
  }, 30_000);
});
