// The process supervisor on real, short-lived node processes: start, wait
// until serving, kill, pause and resume, stop (and SIGKILL after the grace
// when SIGTERM is ignored), logs kept in memory or in a file, restarts, and
// the cleanup of whatever is left. Every wait is for an event or bounded by a
// generous timeout; nothing asserts how long anything took.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { killAllSupervised, liveSupervisedCount, settlesWithin, Supervised, waitUntil, WaitFailed, type LogCollection } from '../../src/runtime/supervisor.js';

const dir = mkdtempSync(join(tmpdir(), 'pagepair-supervisor-'));
const started: Supervised[] = [];

/** A node script as a supervised process (not started). */
function script(name: string, code: string, log: LogCollection = { keepLines: 100 }): Supervised {
  const p = new Supervised({ name, args: ['-e', code], log });
  started.push(p);
  return p;
}

/** Prints "ready", then a JSON record, then stays until signalled. */
const SERVER = `console.log('ready'); console.log(JSON.stringify({ msg: 'serving', n: 1 })); setInterval(() => {}, 1000);`;

/** A process's state letter from /proc (R, S, T for stopped, ...). */
function stateOf(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

afterEach(async () => {
  await Promise.all(started.splice(0).map((p) => p.stop(2000)));
});

afterAll(() => {
  killAllSupervised();
  rmSync(dir, { recursive: true, force: true });
});

describe('Supervised', () => {
  it('starts a process, waits for its log record, stops it with SIGTERM', async () => {
    const p = script('server', SERVER);
    expect(p.exitText).toBe('never started');
    p.start();
    expect(p.alive).toBe(true);
    expect(p.pid).toBeGreaterThan(0);
    const rec = await p.waitForRecord((r) => r.msg === 'serving', 10_000);
    expect(rec.n).toBe(1);
    expect(p.logLines()).toContain('ready');
    await p.stop(5000);
    expect(p.alive).toBe(false);
    expect(p.exitText).toBe('killed by SIGTERM');
    expect(liveSupervisedCount()).toBe(0);
  });

  it('kill() is SIGKILL and resolves once the process is gone', async () => {
    const p = script('victim', SERVER);
    p.start();
    await p.waitForRecord((r) => r.msg === 'serving', 10_000);
    await p.kill();
    expect(p.alive).toBe(false);
    expect(p.exitText).toBe('killed by SIGKILL');
  });

  it('pause() stops the process (SIGSTOP) and resume() lets it go on (SIGCONT)', async () => {
    const p = script('ticker', `let n = 0; setInterval(() => console.log(JSON.stringify({ msg: 'tick', n: n++ })), 20);`);
    p.start();
    await p.waitForRecord((r) => r.msg === 'tick', 10_000);
    p.pause();
    // The kernel's word for it (/proc/<pid>/stat, state T), not a quiet spell.
    await waitUntil(() => (stateOf(p.pid) === 'T' ? true : null), { what: 'stopped', timeoutMs: 10_000 });
    expect(p.alive).toBe(true);
    p.resume();
    await waitUntil(() => (stateOf(p.pid) !== 'T' ? true : null), { what: 'running again', timeoutMs: 10_000 });
    const seen = p.records().length;
    await p.waitForRecord((r) => r.msg === 'tick' && Number(r.n) >= seen, 10_000);
  });

  it('stop() SIGKILLs a process that ignores SIGTERM once the grace is over', async () => {
    const p = script('stubborn', `process.on('SIGTERM', () => console.log('ignored')); console.log(JSON.stringify({ msg: 'up' })); setInterval(() => {}, 1000);`);
    p.start();
    await p.waitForRecord((r) => r.msg === 'up', 10_000);
    await p.stop(300);
    expect(p.exitText).toBe('killed by SIGKILL');
  });

  it('stop(0) SIGKILLs at once and still resolves only once the process is gone', async () => {
    const p = script('now', `process.on('SIGTERM', () => undefined); console.log(JSON.stringify({ msg: 'up' })); setInterval(() => {}, 1000);`);
    p.start();
    await p.waitForRecord((r) => r.msg === 'up', 10_000);
    await p.stop(0);
    expect(p.alive).toBe(false);
    expect(p.exitText).toBe('killed by SIGKILL');
  });

  it('gives the child an IPC channel when asked', async () => {
    const p = new Supervised({ name: 'ipc', args: ['-e', `process.send({ port: 1234 }); process.on('disconnect', () => process.exit(0));`], log: { keepLines: 10 }, ipc: true });
    started.push(p);
    p.start();
    const m = await new Promise((resolve) => p.process!.once('message', resolve));
    expect(m).toEqual({ port: 1234 });
  });

  it('stop() ends a paused process too', async () => {
    const p = script('sleeper', SERVER);
    p.start();
    await p.waitForRecord((r) => r.msg === 'serving', 10_000);
    p.pause();
    await p.stop(5000);
    expect(p.exitText).toBe('killed by SIGTERM');
  });

  it('restarts after an exit, appending to its log file, and writes its pid file', async () => {
    const file = join(dir, 'restart.log');
    const pidFile = join(dir, 'restart.pid');
    const p = new Supervised({ name: 'once', args: ['-e', `console.log('run ' + process.pid); process.exit(3);`], log: { file }, pidFile });
    started.push(p);
    p.start();
    const first = p.pid;
    await p.exited;
    expect(p.exitText).toBe('exited with 3');
    expect(p.exitCode).toBe(3);
    p.start();
    await p.exited;
    expect(p.starts).toBe(2);
    expect(readFileSync(pidFile, 'utf8').trim()).toBe(String(p.pid));
    expect(p.logLines()).toEqual([`run ${first}`, `run ${p.pid}`]);
    expect(p.logTail(1)).toBe(`    run ${p.pid}`);
  });

  it('refuses a second start while running', async () => {
    const p = script('single', SERVER);
    p.start();
    expect(() => p.start()).toThrow(/running already/);
  });

  it('keeps at most keepLines lines', async () => {
    const p = script('chatty', `for (let i = 0; i < 50; i++) console.log('line ' + i);`, { keepLines: 5 });
    p.start();
    await p.exited;
    // Ended means its pipes are drained: every line is in.
    expect(p.logLines()).toEqual(['line 45', 'line 46', 'line 47', 'line 48', 'line 49']);
  });

  it('a program that cannot start is not alive and says why', async () => {
    const p = new Supervised({ name: 'missing', command: join(dir, 'no-such-program'), args: [], log: { keepLines: 10 } });
    started.push(p);
    p.start();
    await p.exited;
    expect(p.alive).toBe(false);
    expect(p.exitText).toMatch(/could not start \(.*ENOENT/);
  });

  it('waitForRecord fails at once when the process ends without the record', async () => {
    const p = script('quitter', `console.log('bye'); process.exit(2);`);
    p.start();
    const err = await p.waitForRecord((r) => r.msg === 'never', 10_000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WaitFailed);
    expect((err as WaitFailed).reason).toBe('exited');
    expect((err as WaitFailed).message).toMatch(/quitter exited with 2 before the log line came:\nbye/);
  });

  it('waitForRecord fails with a timeout when the record does not come', async () => {
    const p = script('silent', SERVER);
    p.start();
    const err = await p.waitForRecord((r) => r.msg === 'never', 100).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WaitFailed);
    expect((err as WaitFailed).reason).toBe('timeout');
  });

  it('killAllSupervised() SIGKILLs every process still running', async () => {
    const ps = [script('one', SERVER), script('two', SERVER)];
    for (const p of ps) p.start();
    await Promise.all(ps.map((p) => p.waitForRecord((r) => r.msg === 'serving', 10_000)));
    expect(liveSupervisedCount()).toBe(2);
    killAllSupervised();
    await Promise.all(ps.map((p) => p.exited));
    expect(ps.map((p) => p.exitText)).toEqual(['killed by SIGKILL', 'killed by SIGKILL']);
    expect(liveSupervisedCount()).toBe(0);
  });
});

describe('waitUntil', () => {
  it('resolves with the first value the probe returns', async () => {
    let n = 0;
    const v = await waitUntil(() => (++n >= 3 ? n : null), { what: 'three polls', timeoutMs: 10_000, pollMs: 1 });
    expect(v).toBe(3);
  });

  it('fails with a timeout naming what it waited for', async () => {
    const err = await waitUntil(() => null, { what: 'nothing', timeoutMs: 30, pollMs: 5 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WaitFailed);
    expect((err as WaitFailed).message).toBe('nothing: not within 30 ms');
  });

  it('fails at once when a watched process ends, with the end of its log', async () => {
    const p = script('dies', `console.log('last words'); process.exit(1);`);
    p.start();
    const err = await waitUntil(() => null, { what: 'serving', timeoutMs: 10_000, watch: [p] }).catch((e: unknown) => e);
    expect((err as WaitFailed).reason).toBe('exited');
    expect((err as WaitFailed).message).toBe('dies exited with 1 while it should be serving; its log ends:\n    last words');
  });

  it('uses the caller sleep between polls, so a caller can interrupt it', async () => {
    const err = await waitUntil(() => null, {
      what: 'interrupted',
      timeoutMs: 10_000,
      sleep: () => Promise.reject(new Error('interrupted by the caller')),
    }).catch((e: unknown) => e);
    expect((err as Error).message).toBe('interrupted by the caller');
  });
});

describe('settlesWithin', () => {
  it('is true for a promise that settles first and false when the time runs out', async () => {
    expect(await settlesWithin(Promise.resolve(), 10_000)).toBe(true);
    expect(await settlesWithin(new Promise(() => undefined), 10)).toBe(false);
  });
});
