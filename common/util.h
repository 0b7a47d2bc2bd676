// util.h: error reporting, checked allocation and small file helpers shared by every layer.
// Two kinds of failure: fatal() for bad user input (one clean line naming the file and what is
// wrong, exit 1) and CHECK() for broken invariants inside svlm (file, line and a hint).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

// prints "svlm: error: <message>" on one line to stderr and exits with status 1; safe to reach
// from several threads at once (one reports and exits, the others wait)
__attribute__((noreturn, format(printf, 1, 2))) void fatal(const char *fmt, ...);
// prints "svlm: warning: <message>" to stderr and carries on
__attribute__((format(printf, 1, 2))) void warn(const char *fmt, ...);

// For harnesses that feed one process many bad inputs (tests/fuzz/): fatal() formats its line
// and calls h(line) instead of printing it and exiting; h must not return (it longjmps back to
// the harness; if it returns, fatal() prints and exits as usual). NULL restores the default.
// check_fail() is never routed: a broken invariant must still end the process (the fuzzer then
// reports it). warn_set_quiet(1) drops warnings (a fuzzer would print millions of them).
typedef void (*FatalHandler)(const char *line);
void fatal_set_handler(FatalHandler h);
void warn_set_quiet(int quiet);
__attribute__((noreturn, format(printf, 4, 5))) void check_fail(const char *file, int line,
                                                                const char *cond, const char *fmt, ...);

// internal invariant: prints file, line, the failed condition and a hint, then exits
#define CHECK(cond, ...) \
    do { if (!(cond)) check_fail(__FILE__, __LINE__, #cond, __VA_ARGS__); } while (0)

// never return NULL: fatal() when memory runs out
__attribute__((returns_nonnull, malloc, alloc_size(1))) void *xmalloc(size_t n);
__attribute__((returns_nonnull, malloc, alloc_size(1, 2))) void *xcalloc(size_t count, size_t size);
__attribute__((returns_nonnull, alloc_size(2))) void *xrealloc(void *p, size_t n);
__attribute__((returns_nonnull, malloc)) char *xstrdup(const char *s);

// whole file into a NUL-terminated buffer; NULL with errno set when it cannot be read
char *file_read_all(const char *path, size_t *len);
int file_exists(const char *path);
int dir_exists(const char *path);
// mkdir -p: path and its missing parents; fatal() naming the path when it cannot
void make_dirs(const char *path);
// dst = dir + "/" + name, fatal() if it does not fit
void path_join(char *dst, size_t cap, const char *dir, const char *name);

double time_now(void);  // monotonic seconds

// Programs call this first in main. libgomp reads OMP_WAIT_POLICY once, when it loads, and its
// default (workers spin after every parallel region) starves OpenBLAS's own threads and the
// loader's: 10x slower steps on small models. Unless the user chose a policy, the program
// re-executes itself with OMP_WAIT_POLICY=passive (and carries on as it is if that fails).
// Defined in kernels/choose.c: the same re-execution sets OpenBLAS's kernel (kernels/cpu/blas_core.c).
void openmp_prefer_passive(char **argv);
// bytes in binary units for messages ("512 B", "20.4 MiB", "1.53 GiB"); returns buf
const char *fmt_bytes(double bytes, char *buf, size_t cap);

// number formats found in Hugging Face files
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);  // round to nearest even, NaN kept NaN
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

#ifdef __cplusplus
}
#endif
