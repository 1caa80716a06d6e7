import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { compareReports, runReport } from '../../src/cli/report.js';
import { degradedSpans, renderChart } from '../../src/workload/chart.js';
import { validateJob, type JobInput } from '../../src/workload/job.js';
import type { PairEvent } from '../../src/workload/pair-monitor.js';
import {
  attachCheck,
  attachFaults,
  buildReport,
  formatReportSummary,
  parseReport,
  resolveReportBase,
  writeReportFiles,
  type FaultsReport,
  type WorkloadReport,
} from '../../src/workload/report.js';
import { newHistogram, summarizeHistogram, type IntervalSample } from '../../src/workload/stats.js';
import { TimeSeries, type IntervalRecord } from '../../src/workload/timeseries.js';

function sample(index: number, readOps: number, latUs: number, durationMs = 1000): IntervalSample {
  const readHist = newHistogram();
  for (let i = 0; i < readOps; i++) readHist.recordValue(latUs);
  return { index, durationMs, readOps, writeOps: 0, readBytes: readOps * 4096, writeBytes: 0, errors: 0, verifyErrors: 0, failovers: 0, readHist, writeHist: newHistogram() };
}

function event(tMs: number, controller: string, kind: PairEvent['kind'], role: string | null): PairEvent {
  return { atEpochMs: 0, tMs, controller, kind, role, detail: `${controller} ${kind}` };
}

/** A report as a run around a kill of B would leave it: a dip at 3 s, mirrored again at 5 s. */
function fakeReport(jobInput: JobInput = {}, opsPerSec = 1000, p99Us = 800): WorkloadReport {
  const job = validateJob({ duration: 8, ...jobInput }, { name: 'fake' });
  const series = new TimeSeries(1, 1000, 0);
  for (let i = 0; i < 8; i++) series.add(sample(i, i === 3 ? opsPerSec / 10 : opsPerSec, i === 3 ? 600_000 : p99Us));
  const readHist = newHistogram();
  const n = opsPerSec * 8;
  for (let i = 1; i <= n; i++) readHist.recordValue(Math.ceil((i * p99Us) / (0.99 * n)));
  return buildReport({
    version: 'test',
    job,
    startedAtEpochMs: Date.UTC(2026, 10, 22, 12, 0, 0),
    controllers: [
      { id: 'A', host: '127.0.0.1', port: 1 },
      { id: 'B', host: '127.0.0.1', port: 2 },
    ],
    allocations: [{ name: 'wl', guid: 'g', usedBytes: job.sizeBytes, pageSizeBytes: 4096, reused: false }],
    prefill: null,
    measured: {
      readOps: opsPerSec * 8,
      writeOps: 0,
      readBytes: opsPerSec * 8 * 4096,
      writeBytes: 0,
      elapsedS: 8,
      errors: 0,
      errorCodes: {},
      verifyErrors: 0,
      verifyFailures: [],
      readsVerified: opsPerSec * 8,
      failovers: 1,
    },
    readHist,
    writeHist: newHistogram(),
    intervals: series.finish(),
    events: [
      event(3000, 'B', 'kill', null),
      event(3050, 'B', 'down', null),
      event(3600, 'A', 'takeover', 'alone'),
      event(4200, 'B', 'up', 'joining'),
      event(4300, 'A', 'resync', 'alone'),
      event(4400, 'A', 'resync-progress', 'alone'),
      event(4900, 'B', 'mirrored', 'mirrored'),
      event(5000, 'A', 'mirrored', 'mirrored'),
    ],
    pair: { before: { A: 'mirrored', B: 'mirrored' }, after: { A: 'mirrored', B: 'mirrored' } },
  });
}

function fakeReportWith(extra: { readBack?: Parameters<typeof buildReport>[0]['readBack'] }): WorkloadReport {
  const r = fakeReport();
  return buildReport({
    version: 'test',
    job: r.job,
    startedAtEpochMs: Date.parse(r.startedAt),
    controllers: r.target.controllers,
    allocations: r.allocations,
    prefill: null,
    measured: { ...r.totals, elapsedS: r.totals.elapsedS },
    readHist: newHistogram(),
    writeHist: newHistogram(),
    intervals: r.intervals,
    events: r.events,
    pair: r.pair,
    ...extra,
  });
}

/** The fake run as a kill test leaves it: read back, its history checked, one kill cycle measured. */
function killTestReport(): WorkloadReport {
  const r = fakeReportWith({ readBack: { bytes: 32 * 1024 * 1024, reads: 32, errors: 0, errorCodes: {}, verifyErrors: 0, verifyFailures: [], elapsedMs: 412 } });
  attachCheck(r, { historyPath: '/tmp/h.jsonl', ops: 16_000, verdict: 'linearizable', byKind: { 'lost-write': 0, 'stale-read': 0 }, violations: [], inconclusiveKeys: 0 });
  const faults: FaultsReport = {
    mode: 'kill',
    seed: 7,
    cycles: [{ cycle: 1, mode: 'kill', victim: 'B', survivor: 'A', stallMs: 210, takeoverMs: 160, resyncMs: 900, epoch: 2, ops: 1200, errors: 0, problems: [] }],
    totals: { cycles: 1, stallMedianMs: 210, stallMaxMs: 210, takeoverMedianMs: 160, takeoverMaxMs: 160, resyncMedianMs: 900, resyncMaxMs: 900 },
    problems: [],
  };
  attachFaults(r, faults);
  return r;
}

/** Tags nest, attributes are quoted, text holds no bare < or &: enough to know a browser parses it as XML. */
function checkWellFormed(xml: string): string[] {
  const body = xml.replace(/^<\?xml[^?]*\?>\s*/, '');
  const stack: string[] = [];
  const names: string[] = [];
  const re = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|([^<]+)/gy;
  let m: RegExpExecArray | null;
  let at = 0;
  while ((m = re.exec(body)) !== null) {
    at = re.lastIndex;
    if (m[5] !== undefined) {
      if (/&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(m[5])) throw new Error(`bare & in text: ${m[5].slice(0, 40)}`);
      continue;
    }
    const [, close, name, , selfClose] = m;
    if (close === '/') {
      if (stack.pop() !== name) throw new Error(`</${name}> closes the wrong element`);
    } else {
      names.push(name!);
      if (selfClose !== '/') stack.push(name!);
    }
  }
  if (at !== body.length) throw new Error(`not XML at ${at}: ${body.slice(at, at + 60)}`);
  if (stack.length !== 0) throw new Error(`unclosed: ${stack.join(', ')}`);
  return names;
}

describe('latency histograms', () => {
  it('summarize to p50, p90, p99, p99.9, max and mean in microseconds', () => {
    const h = newHistogram();
    for (let us = 1; us <= 1000; us++) h.recordValue(us);
    expect(summarizeHistogram(h)).toEqual({ count: 1000, meanUs: 500.5, minUs: 1, p50Us: 500, p90Us: 900, p99Us: 990, p999Us: 999, maxUs: 1000 });
    expect(summarizeHistogram(newHistogram()).count).toBe(0);
  });
});

describe('the time series', () => {
  it("merges every engine's sample of an interval and hands records on in order", () => {
    const seen: IntervalRecord[] = [];
    const ts = new TimeSeries(2, 1000, 1000, (r) => seen.push(r));
    ts.add(sample(0, 100, 50));
    ts.add(sample(1, 100, 50));
    expect(seen).toHaveLength(0);
    ts.add(sample(0, 300, 5000));
    expect(seen.map((r) => r.index)).toEqual([0]);
    expect(seen[0]).toMatchObject({ ops: 400, opsPerSec: 400, bytesPerSec: 400 * 4096, warmup: true });
    expect(seen[0]!.p50Us).toBeGreaterThan(4000);
    ts.add(sample(1, 100, 50));
    expect(seen[1]).toMatchObject({ index: 1, ops: 200, warmup: false, p99Us: 50 });
  });

  it('an interval with no answers is a zero, not a gap in time', () => {
    const ts = new TimeSeries(1, 1000, 0);
    ts.add(sample(0, 10, 100));
    ts.add(sample(1, 0, 0));
    ts.add(sample(2, 10, 100));
    const r = ts.finish();
    expect(r.map((x) => x.opsPerSec)).toEqual([10, 0, 10]);
    expect(r[1]!.p99Us).toBeNull();
  });

  it('folds a last fragment shorter than half an interval into the interval before it', () => {
    const ts = new TimeSeries(1, 1000, 0);
    ts.add(sample(0, 1000, 100));
    ts.add(sample(1, 1000, 100));
    ts.add(sample(2, 30, 100, 20));
    const r = ts.finish();
    expect(r).toHaveLength(2);
    expect(r[1]).toMatchObject({ index: 1, ops: 1030, durationS: 1.02, opsPerSec: Math.round(1030 / 1.02) });
  });
});

describe('the chart', () => {
  it('is well-formed, self-contained SVG with both panels, axes, legend and the pair events marked', () => {
    const svg = renderChart(fakeReport());
    const names = checkWellFormed(svg);
    expect(names[0]).toBe('svg');
    expect(names).not.toContain('script');
    expect(svg).not.toMatch(/href=|url\(|@import/);
    for (const s of ['throughput (ops/s)', 'MiB/s', 'latency (log scale)', 'time since start (s)', 'p99', 'p50', 'not mirrored']) expect(svg).toContain(`>${s}<`);
    for (const label of ['kill B', 'takeover A', 'up B', 'resync A', 'mirrored B', 'mirrored A']) expect(svg).toContain(`>${label}<`);
    // B's silence right after it was killed says nothing the kill did not.
    expect(svg).not.toContain('>down B<');
    // Progress of a resync is in the report, not a marker of its own.
    expect(svg.match(/>resync A</g)).toHaveLength(1);
    expect(svg).toContain('not mirrored 3.00–5.00 s');
    // Latency ticks on a log scale, in readable units.
    expect(svg).toMatch(/>100 µs<|>1 ms</);
    expect(svg).toContain('>1 s<');
  });

  it('the stretch without mirroring runs from the kill to the moment both are mirrored again', () => {
    expect(degradedSpans(fakeReport(), 8)).toEqual([[3, 5]]);
    const r = fakeReport();
    r.events = r.events.filter((e) => e.kind !== 'mirrored');
    expect(degradedSpans(r, 8)).toEqual([[3, 8]]);
  });

  it('marks warm-up and a second throughput line for a mix of block sizes', () => {
    const svg = renderChart(fakeReport({ warmup: 2, blockSize: '4k:70,64k:30' }));
    checkWellFormed(svg);
    expect(svg).toContain('warm-up (not counted)');
    expect(svg).toContain('stroke-dasharray="6 3"');
  });

  it('a controller going down on its own is marked; events of one kind within 60 ms share a marker', () => {
    const r = fakeReport();
    r.events = r.events.filter((e) => e.kind !== 'kill');
    r.events.push(event(5050, 'B', 'mirrored', 'mirrored'));
    r.events = r.events.filter((e) => !(e.kind === 'mirrored' && e.tMs === 4900));
    const svg = renderChart(r);
    checkWellFormed(svg);
    expect(svg).toContain('>down B<');
    expect(svg).toContain('>mirrored A+B<');
    expect(svg).not.toContain('>mirrored B<');
  });

  it('a kill test: its title, its measurements and the verdict on its history, in red when it failed', () => {
    const r = killTestReport();
    const svg = renderChart(r);
    checkWellFormed(svg);
    expect(svg).toContain('>pagepair kill-test · 1 × kill (seed 7)<');
    expect(svg).toMatch(/stall 210 ms \(210 ms\) · takeover 160 ms \(160 ms\) · resync 900 ms \(900 ms\) · history of 16,000 ops linearizable, 0 violations</);
    attachCheck(r, { ...r.check!, verdict: 'violations', byKind: { 'lost-write': 1 }, violations: ['lost-write on chunk 3: ...'] });
    expect(r.ok).toBe(false);
    expect(renderChart(r)).toMatch(/fill="#c00000" font-weight="bold">[^<]*history of 16,000 ops NOT linearizable: 1 violations \(lost-write 1\) · FAILED</);
  });

  it('escapes what a job description or an event detail may hold', () => {
    const r = fakeReport();
    r.events.push({ atEpochMs: 0, tMs: 6000, controller: null, kind: 'note', role: null, detail: 'a <b> & "c"' });
    r.summary = 'x < y & z';
    const svg = renderChart(r);
    checkWellFormed(svg);
    expect(svg).toContain('a &lt;b&gt; &amp; &quot;c&quot;');
  });
});

describe('reports', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pagepair-report-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("a kill test's report says what each cycle measured, what the read-back found and what the checker said", () => {
    const r = killTestReport();
    expect(r.ok).toBe(true);
    const text = formatReportSummary(r);
    expect(text).toMatch(/read back 32\.0 MiB in 32 reads \(0\.4 s\): errors 0, verification errors 0/);
    expect(text).toMatch(/history 16,000 ops \(\/tmp\/h\.jsonl\): linearizable, violations 0/);
    expect(text).toMatch(/1 kill cycles \(seed 7\): stall median 210 ms, max 210 ms; takeover median 160 ms/);
    expect(text).toMatch(/cycle +1 +victim B +stall +210 ms +takeover +160 ms +resync +900 ms/);
    const bad = killTestReport();
    attachFaults(bad, { ...bad.faults!, problems: ['cycle 1: did not recover'] });
    expect(bad.ok).toBe(false);
  });

  it('a read-back that found a wrong block makes the run fail', () => {
    const r = fakeReportWith({ readBack: { bytes: 4096, reads: 1, errors: 0, errorCodes: {}, verifyErrors: 1, verifyFailures: ['read-back: wl offset 0 via A: read write #3, expected #4'], elapsedMs: 5 } });
    expect(r.ok).toBe(false);
    expect(formatReportSummary(r)).toMatch(/! read-back: wl offset 0 via A: read write #3, expected #4/);
  });

  it('reads back reports written before read-back, checks and faults existed', () => {
    const old = JSON.parse(JSON.stringify(fakeReport())) as Record<string, unknown>;
    delete old.readBack;
    delete old.check;
    delete old.faults;
    expect(parseReport(old, 'old.json')).toMatchObject({ readBack: null, check: null, faults: null });
  });

  it('the files go to a base path, or into a directory under their default name', () => {
    expect(resolveReportBase(undefined, 'workload-reports/x-1')).toBe('workload-reports/x-1');
    expect(resolveReportBase('out/run', 'workload-reports/x-1')).toBe('out/run');
    expect(resolveReportBase('out/', 'workload-reports/x-1')).toBe(join('out', 'x-1'));
    expect(resolveReportBase(dir, 'workload-reports/x-1')).toBe(join(dir, 'x-1'));
  });

  it('summarize in text with the totals, the latency per operation and the pair events', () => {
    const text = formatReportSummary(fakeReport());
    expect(text).toMatch(/8,000 ops in 8\.0 s = 1,000 ops\/s/);
    expect(text).toMatch(/reads +8,000 ops +mean .* p50 .* p90 .* p99 .* p99\.9 .* max/);
    expect(text).toMatch(/3\.00 s +kill +B kill/);
    expect(text).not.toMatch(/resync-progress/);
  });

  it('compare side by side with ratios that say which way is better', () => {
    const a = fakeReport({ inflight: 16 }, 1000, 800);
    const b = fakeReport({ inflight: 32 }, 1500, 1600);
    const rows = compareReports(a, b);
    expect(rows.find((r) => r.metric === 'ops/s')).toMatchObject({ a: 1000, b: 1500, ratio: 1.5 });
    const p99 = rows.find((r) => r.metric === 'read p99 µs')!;
    expect(p99.ratio!).toBeGreaterThan(1.9);
    expect(p99.higherIsBetter).toBe(false);
  });

  it('pagepair report: one file summarized, two compared, a non-report refused', async () => {
    const pa = writeReportFiles(fakeReport({ inflight: 16 }, 1000, 800), join(dir, 'a'));
    const pb = writeReportFiles(fakeReport({ inflight: 32 }, 1500, 1600), join(dir, 'b.json'));
    expect(pb.svgPath).toBe(join(dir, 'b.svg'));
    checkWellFormed(readFileSync(pa.svgPath, 'utf8'));

    const one = await runReport([pa.jsonPath]);
    expect(one).toMatch(/job fake: randrw 4k/);
    expect(one).toMatch(/8 intervals of 1000 ms/);

    const two = await runReport([pa.jsonPath, pb.jsonPath]);
    expect(two).toMatch(/job settings that differ: inflight: 16 -> 32/);
    expect(two).toMatch(/ops\/s +1,000 +1,500 +1\.50x +better/);
    expect(two).toMatch(/read p99 µs .* worse/);

    const asJson = JSON.parse(await runReport([pa.jsonPath, pb.jsonPath], { json: true })) as { rows: { metric: string; ratio: number }[] };
    expect(asJson.rows.find((r) => r.metric === 'ops/s')!.ratio).toBe(1.5);

    const bogus = join(dir, 'bogus.json');
    writeFileSync(bogus, '{"hello": 1}');
    await expect(runReport([bogus])).rejects.toThrow(/is not a workload report/);
    await expect(runReport([])).rejects.toThrow(/one report to summarize or two to compare/);
  });
});
