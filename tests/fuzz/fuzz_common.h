// fuzz_common.h: what the libFuzzer harnesses of tests/fuzz/ share. svlm's fatal() exits by
// design (one line, status 1); a fuzzer must outlive it, so each harness runs the code under
// test through fuzz_guard(), which installs a fatal() handler (common/util.h: fatal_set_handler)
// that longjmps back. What the abandoned call held is then released, so that millions of
// refused inputs neither exhaust memory nor descriptors: every malloc made inside the guard is
// tracked (sanitizer malloc hooks) and freed, streams and directories it opened are closed
// (fopen/fdopen/opendir/fdopendir are wrapped at link time) and so are its new descriptors.
#pragma once
#include <stddef.h>
#include <stdint.h>

// Runs fn(arg). Returns 0 when it returned, 1 when it ended in fatal() (then cleaned up).
int fuzz_guard(void (*fn)(void *), void *arg);
// the harness's scratch directory (private, created on first use, removed at exit)
const char *fuzz_dir(void);
// writes data to fuzz_dir()/name; returns the full path (static buffer per call: copy it)
const char *fuzz_file(const char *name, const void *data, size_t n);
// a path under tests/fixtures (tests and fuzzers run from the repository root)
const char *fuzz_fixture(const char *name);
// Splits data at the separator "\n@@@@\n" into at most max parts (ptrs/lens); returns how many.
// Lets one input hold several files (a shard directory: meta.json, index.bin, a shard).
int fuzz_split(const uint8_t *data, size_t n, const uint8_t **ptrs, size_t *lens, int max);
#define FUZZ_SEP "\n@@@@\n"
