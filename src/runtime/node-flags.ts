// Node flags a controller process runs with; whatever spawns `pagepair
// start` passes them (the pair supervisor, the kill tests, the bench, test
// helpers). The bench's floors get them too, so every row runs under the same
// V8 settings.
//
// A young generation of at most 8 MiB a semispace: with the default (16 MiB)
// V8's heuristics start marking the whole old generation again and again
// under a steady stream of writes (its free room stays below the young
// generation's size), about 80 full collections in 10 s, and mirrored writes
// ran at half speed. Scavenges get more frequent and stay cheap.
export const CONTROLLER_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8'];
