// `pagepair workload --transport nbd` against a real pair: clients reach the
// volume through each controller's NBD export (found in the configurations'
// listen.nbd). A recorded history run of issue 10: 6 clients spread over both
// controllers on 16 blocks, every write unique, reads through either
// controller, checked by the project's checker. Then a run that loses a
// controller: its clients go on through the other one.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PagepairClient } from '../../src/client/index.js';
import { loadConfig } from '../../src/runtime/config.js';
import { runWorkloadCommand } from '../../src/workload/command.js';
import { makePairFiles, runCli, startMirroredPair, stopPair, type PairFiles, type Proc } from './helpers.js';

let files: PairFiles;
let procs: [Proc, Proc];

beforeAll(async () => {
  files = await makePairFiles({}, { nbd: true });
  procs = await startMirroredPair(files);
}, 60_000);

afterAll(() => stopPair(procs, files), 60_000);

async function allocations(): Promise<string[]> {
  const c = await PagepairClient.connect({ host: '127.0.0.1', port: files.ports.aClient, token: files.token });
  try {
    return (await c.list()).map((a) => a.name);
  } finally {
    await c.close();
  }
}

describe('pagepair workload --transport nbd', () => {
  it('--history --contend: 6 clients split over A and B on the same 16 blocks at once, every write unique, linearizable with 0 violations', async () => {
    const lines: string[] = [];
    const historyPath = join(files.dir, 'nbd-history.jsonl');
    const r = await runWorkloadCommand({
      cfg: loadConfig(files.a),
      partnerCfg: loadConfig(files.b),
      input: { transport: 'nbd', contend: true, pattern: 'randrw', blockSize: '4k', size: '64KiB', clients: 6, inflight: 2, target: 'both', spread: 'split', duration: 3, interval: '500ms', seed: 10 },
      history: historyPath,
      out: join(files.dir, 'reports', 'nbd-history'),
      print: (l) => lines.push(l),
      signal: new AbortController().signal,
    });
    const t = r.report.totals;
    console.log(`NBD history run: ${t.ops} ops (${t.readOps} reads, ${t.writeOps} writes), ${r.report.check?.ops ?? 0} history ops, ${r.report.check?.verdict}, violations ${JSON.stringify(r.report.check?.byKind)}`);
    expect(r.exitCode, r.text).toBe(0);
    expect(r.report.job.transport).toBe('nbd');
    expect(r.report.check).toMatchObject({ verdict: 'linearizable', historyPath });
    expect(r.report.check!.violations).toEqual([]);
    expect(t.errors).toBe(0);
    expect(t.verifyErrors).toBe(0);
    expect(t.writeOps).toBeGreaterThan(500);
    expect(t.readsVerified).toBeGreaterThan(500);
    expect(r.report.readBack).toMatchObject({ bytes: 64 * 1024, errors: 0, verifyErrors: 0 });
    expect(existsSync(r.svgPath)).toBe(true);
    expect(JSON.parse(readFileSync(r.jsonPath, 'utf8')).job.transport).toBe('nbd');
    // The volume was created for the run and released after it.
    expect((await allocations()).filter((n) => n.startsWith('wl-'))).toEqual([]);
  }, 60_000);

  it('the CLI: --transport nbd --target B --spread is refused, round-robin clients over both run, --keep keeps the volume', async () => {
    const bad = await runCli(['workload', '-c', files.a, '--transport', 'nbd', '--target', 'B', '--spread', 'split', '-d', '1'], 30_000);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr + bad.stdout).toMatch(/spread applies to target both only/);
    const out = join(files.dir, 'reports', 'nbd-cli');
    const ok = await runCli(
      ['workload', '-c', files.a, '--partner-config', files.b, '--transport', 'nbd', '--spread', 'round-robin', '--clients', '3', '-s', '1MiB', '-d', '1', '--name', 'nbd-kept', '--keep', '--out', out, '--json'],
      60_000,
    );
    expect(ok.code, ok.stderr).toBe(0);
    const report = JSON.parse(ok.stdout) as { ok: boolean; job: { transport: string }; totals: { ops: number; verifyErrors: number; errors: number } };
    expect(report).toMatchObject({ ok: true, job: { transport: 'nbd' }, totals: { verifyErrors: 0, errors: 0 } });
    expect(report.totals.ops).toBeGreaterThan(0);
    expect(await allocations()).toContain('nbd-kept');
  }, 90_000);

  it('without the partner\'s NBD address, a run over both controllers is refused by name', async () => {
    await expect(
      runWorkloadCommand({
        cfg: loadConfig(files.a),
        input: { transport: 'nbd', duration: 1 },
        print: () => undefined,
        signal: new AbortController().signal,
      }),
    ).rejects.toThrow(/no NBD address for controller B/);
  }, 30_000);
});
