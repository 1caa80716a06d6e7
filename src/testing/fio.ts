// Moved to src/runtime/fio.ts (the kill tests and the bench use it, and
// nothing outside src/testing imports src/testing). This path stays for the
// scripts that load it from dist/ (scripts/*.mjs).
export * from '../runtime/fio.js';
