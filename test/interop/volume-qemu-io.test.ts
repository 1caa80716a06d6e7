// A volume made with `pagepair volume create` on a real pair, and qemu-io
// reading through one controller what it wrote through the other, over TCP
// and over the unix socket. The CLI side of volumes is
// test/integration/volume.test.ts.

import { afterAll, beforeAll, describe } from 'vitest';
import { itWithTools } from '../tools.js';
import { stopPair, type PairFiles, type Proc } from '../integration/helpers.js';
import { qemuIo, startServingPair, tcpUrl, unixUrl } from './clients.js';

const VOLUME = { name: 'vol0', sizeBytes: 64 * 1024 * 1024 };

let files: PairFiles;
let a: Proc;
let b: Proc;

/** qemu-io on one controller's export of the volume; every command's pattern is checked. */
function qemuIoAt(url: (files: PairFiles, id: 'A' | 'B', volume: string) => string, id: 'A' | 'B', commands: string[]): Promise<string> {
  return qemuIo(['-f', 'raw', url(files, id, VOLUME.name)], commands, 20_000);
}

describe('qemu-io on a volume of a real pair', () => {
  beforeAll(async () => {
    ({ files, a, b } = await startServingPair({}, [VOLUME]));
  }, 60_000);

  afterAll(() => stopPair([a, b], files), 60_000);

  itWithTools(['qemu-io'], 'qemu-io writes through A and reads the same bytes through B; an unaligned write through B reads back through A', async () => {
    await qemuIoAt(tcpUrl, 'A', ['write -P 0xab 0 1M']);
    await qemuIoAt(tcpUrl, 'B', ['read -P 0xab 0 1M']);

    // Unaligned and across pages, through B's unix socket; read through A's TCP port.
    await qemuIoAt(unixUrl, 'B', ['write -P 0xcd 4097 10000']);
    await qemuIoAt(tcpUrl, 'A', ['read -P 0xab 0 4097', 'read -P 0xcd 4097 10000', 'read -P 0xab 14097 1034479']);

    // FUA, write-zeroes and flush, through B; read through A.
    await qemuIoAt(tcpUrl, 'B', ['write -f -P 0x11 2M 64k', 'write -z 2M 4k', 'flush']);
    await qemuIoAt(tcpUrl, 'A', ['read -P 0x00 2M 4k', 'read -P 0x11 2052k 60k']);
  });
});
