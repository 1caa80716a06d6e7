// `pagepair pair` (what `npm start` runs): both controllers of the default
// pair as child processes, their logs shown as readable lines, until Ctrl-C.

import { loadConfig, storeName } from '../runtime/config.js';
import { superviseController } from '../runtime/spawn-controller.js';

/** Lines of each controller's output kept (they are printed as they come). */
const LINES_KEPT = 100;
const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO ', 40: 'WARN ', 50: 'ERROR', 60: 'FATAL' };
const SKIP_KEYS = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'controller', 'component']);

/** One pino JSON line as a line a person reads. */
export function prettyLogLine(line: string): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const time = typeof rec.time === 'string' ? rec.time.slice(11, 23) : '';
  const extra = Object.entries(rec)
    .filter(([k]) => !SKIP_KEYS.has(k))
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${time} ${String(rec.controller ?? '?')} ${LEVELS[Number(rec.level)] ?? String(rec.level)} ${String(rec.component ?? '').padEnd(7)} ${String(rec.msg ?? '')}${extra ? `  ${extra}` : ''}`;
}

export async function runPair(configPaths: [string, string]): Promise<number> {
  const configs = configPaths.map((p) => loadConfig(p));
  const listening = new Set<string>();
  /** What each controller's 'controller listening' line says (the real ports, when configured as 0). */
  const listened = new Map<string, Record<string, unknown>>();
  let stopping = false;
  let allListening: () => void = () => undefined;
  const started = new Promise<void>((resolveAll) => (allListening = resolveAll));

  const children = configs.map((cfg, i) => {
    const onLine = (line: string): void => {
      if (line.includes('"controller listening"')) {
        try {
          listened.set(cfg.idLetter, JSON.parse(line) as Record<string, unknown>);
        } catch {
          // not JSON after all: the addresses come from the configuration
        }
        listening.add(cfg.idLetter);
        if (listening.size === configs.length) allListening();
      }
      if (line.startsWith('{')) console.log(prettyLogLine(line));
      else console.log(`${cfg.idLetter} | ${line}`);
    };
    const child = superviseController(cfg.idLetter, configPaths[i]!, { keepLines: LINES_KEPT, onLine });
    child.start();
    void child.exited.then(() => {
      if (!stopping) console.log(`pagepair: controller ${cfg.idLetter} ${child.exitText}`);
    });
    return child;
  });

  void started.then(() => {
    console.log('');
    console.log('pagepair: the pair is up.');
    for (const c of configs) {
      const rec = listened.get(c.idLetter) ?? {};
      const clients = typeof rec.clients === 'string' ? rec.clients : `ws://${c.listen.client.host}:${c.listen.client.port}`;
      console.log(`  controller ${c.idLetter}: clients at ${clients}, store ${storeName(c.store)}`);
      if (typeof rec.nbd === 'string') {
        console.log(`    NBD at ${rec.nbd}/<volume>${typeof rec.nbdSocket === 'string' ? ` and nbd+unix:///<volume>?socket=${rec.nbdSocket}` : ''}`);
      }
    }
    console.log('  try, in another terminal:');
    console.log(`    npx pagepair workload --config ${configPaths[0]} --duration 10`);
    console.log(`    npx pagepair status --config ${configPaths[0]}   (and --config ${configPaths[1]})`);
    if (configs.some((c) => c.listen.nbd !== undefined)) {
      const first = listened.get(configs[0]!.idLetter)?.nbd;
      console.log(`    npx pagepair volume create --name vol0 --size 1GiB --config ${configPaths[0]}`);
      if (typeof first === 'string') console.log(`    qemu-io -f raw ${first}/vol0 -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'`);
    }
    console.log('  Ctrl-C stops both; each destages its dirty pages first.');
    console.log('');
  });

  const exited = Promise.all(children.map((c) => c.exited.then(() => c.exitCode ?? 1)));
  const stop = (): void => {
    if (stopping) {
      for (const c of children) c.signal('SIGKILL');
      return;
    }
    stopping = true;
    console.log('pagepair: stopping both controllers (Ctrl-C again to kill them)');
    for (const c of children) c.signal('SIGTERM');
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const codes = await exited;
  return codes.every((c) => c === 0) ? 0 : 1;
}
