#!/usr/bin/env node
// Thin launcher: the compiled CLI lives in dist/ (npm run build).
import('../dist/cli/main.js').catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND') {
    console.error('pagepair: dist/ is missing; run `npm run build` first');
    process.exit(1);
  }
  throw err;
});
