// --tls-psk-file and --tls-identity: the key an NBD client of a pagepair tool
// (workload and kill-test with --transport nbd) uses for NBD_OPT_STARTTLS.

import type { NbdTlsChoice } from '../client/nbd-client.js';

export const NBD_TLS_PSK_FILE_HELP =
  'with --transport nbd: NBD over TLS (STARTTLS) with a key from this psktool file (identity:hexkey lines, mode 0600); ' +
  'default: the configuration\'s tls.pskFile when its tls.mode is "require"';
export const NBD_TLS_IDENTITY_HELP = "which key of the --tls-psk-file (default: the file's first)";

/** The options as given; the file is read when an NBD client needs it (resolveNbdTls). */
export function nbdTlsChoice(opts: { tlsPskFile?: unknown; tlsIdentity?: unknown }): NbdTlsChoice | undefined {
  const c: NbdTlsChoice = {
    ...(typeof opts.tlsPskFile === 'string' ? { pskFile: opts.tlsPskFile } : {}),
    ...(typeof opts.tlsIdentity === 'string' ? { identity: opts.tlsIdentity } : {}),
  };
  return c.pskFile === undefined && c.identity === undefined ? undefined : c;
}
