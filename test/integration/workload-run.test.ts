// The workload generator against a real pair: short jobs in this process and
// in worker processes, every read verified, the report and the chart written;
// a recorded run whose history the checker judges.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControllerAddress } from '../../src/client/client.js';
import { runCheck } from '../../src/cli/check.js';
import { runReport } from '../../src/cli/report.js';
import { loadConfig } from '../../src/runtime/config.js';
import { runWorkloadCommand } from '../../src/workload/command.js';
import { validateJob } from '../../src/workload/job.js';
import type { ProgressEvent } from '../../src/workload/progress.js';
import { parseReport, writeReportFiles } from '../../src/workload/report.js';
import { runWorkloadJob } from '../../src/workload/runner.js';
import { makePairFiles, startMirroredPair, stopPair, type PairFiles, type Proc } from './helpers.js';

let files: PairFiles;
let a: Proc;
let b: Proc;
let controllers: ControllerAddress[];

beforeAll(async () => {
  files = await makePairFiles();
  [a, b] = await startMirroredPair(files);
  controllers = [
    { id: 'A', host: '127.0.0.1', port: files.ports.aClient, token: files.token },
    { id: 'B', host: '127.0.0.1', port: files.ports.bClient, token: files.token },
  ];
}, 60_000);

afterAll(() => stopPair([a, b], files), 60_000);

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

  it('--history: a mixed-size job recorded chunk by chunk, read back at the end, the history checked and left for `pagepair check`', async () => {
    const lines: string[] = [];
    const historyPath = join(files.dir, 'recorded.jsonl');
    const r = await runWorkloadCommand({
      cfg: loadConfig(files.a),
      input: { pattern: 'randrw', blockSize: '4k:50,8k:50', size: '2MiB', clients: 2, inflight: 4, duration: 1.5, interval: '500ms', seed: 5 },
      history: historyPath,
      out: join(files.dir, 'reports') + '/',
      print: (l) => lines.push(l),
      signal: new AbortController().signal,
    });
    expect(r.exitCode, r.text).toBe(0);
    expect(r.report.check).toMatchObject({ verdict: 'linearizable', historyPath });
    expect(r.report.readBack).toMatchObject({ bytes: 2 * 1024 * 1024, errors: 0, verifyErrors: 0 });
    expect(r.report.totals.readsVerified).toBeGreaterThan(0);
    expect(r.jsonPath.startsWith(join(files.dir, 'reports', 'cli-'))).toBe(true);
    expect(existsSync(r.svgPath)).toBe(true);
    expect(lines.some((l) => l.startsWith('-- readback: '))).toBe(true);
    expect(r.text).toMatch(/history \d[\d,]* ops \(.*recorded\.jsonl\): linearizable, violations 0/);
    const checked = await runCheck(historyPath, { json: true });
    expect(checked.exitCode).toBe(0);
    expect(JSON.parse(checked.text)).toMatchObject({ result: { verdict: 'linearizable' } });
  }, 30_000);

  it('--history needs the run in this process, with verified reads', async () => {
    const base = { cfg: loadConfig(files.a), history: join(files.dir, 'never.jsonl'), print: () => undefined, signal: new AbortController().signal };
    await expect(runWorkloadCommand({ ...base, input: { clients: 2, workers: 2, duration: 1 } })).rejects.toThrow(/recorded history is kept in this process: workers must be 1/);
    await expect(runWorkloadCommand({ ...base, input: { verify: false, duration: 1 } })).rejects.toThrow(/needs verified reads/);
    expect(existsSync(base.history)).toBe(false);
  }, 30_000);
});
