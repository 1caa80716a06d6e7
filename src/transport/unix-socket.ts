// A unix socket that only the user running the controller can reach. Anyone
// who can connect to the NBD socket reads and writes every volume, so the
// socket is made SOCKET_FILE_MODE once bound, and a directory made for it is
// SOCKET_DIR_MODE. bind() creates the socket file with the umask's mode, so
// between bind and chmod the directory is what keeps others out: a directory
// the controller makes is private from the start; one that already exists is
// left as its owner set it.

import { chmod, mkdir } from 'node:fs/promises';
import type net from 'node:net';
import { dirname } from 'node:path';

export const SOCKET_FILE_MODE = 0o600;
export const SOCKET_DIR_MODE = 0o700;

/** Makes the socket's directory (SOCKET_DIR_MODE) if it is missing. */
export async function makeSocketDir(socketPath: string): Promise<void> {
  await mkdir(dirname(socketPath), { recursive: true, mode: SOCKET_DIR_MODE });
}

/** Listens on socketPath: its directory made if missing, the socket file made SOCKET_FILE_MODE before this resolves. */
export async function listenPrivateSocket(server: net.Server, socketPath: string): Promise<void> {
  await makeSocketDir(socketPath);
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    server.listen({ path: socketPath }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  try {
    await chmod(socketPath, SOCKET_FILE_MODE);
  } catch (err) {
    // A socket that cannot be made private is not served.
    await new Promise<void>((resolve) => server.close(() => resolve()));
    throw err;
  }
}
