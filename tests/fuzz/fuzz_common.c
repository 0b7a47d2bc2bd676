// fuzz_common.c: fatal() survival and clean-up for the fuzz harnesses (see fuzz_common.h).
#include "tests/fuzz/fuzz_common.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sanitizer/allocator_interface.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fs_safe.h"
#include "common/util.h"

// ---- allocations made inside the guard: an open-addressing set, cleared by bumping gen ----
#define SLOTS (1u << 21)
typedef struct {
    const volatile void *p;
    uint32_t gen;
} Slot;
static Slot g_slots[SLOTS];
static uint32_t g_log[SLOTS / 2];  // the slots filled this generation, so clean-up need not scan them all
static uint32_t g_gen = 1;
static _Thread_local int t_active;  // this thread is inside the guard: only its blocks are tracked
static int g_overflow;
static size_t g_count;  // entries of g_log
static const volatile void *const TOMB = (const volatile void *)1;

static size_t slot_hash(const volatile void *p) { return (size_t)(((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull) & (SLOTS - 1); }

static void on_malloc(const volatile void *p, size_t n) {
    (void)n;
    if (!t_active || !p) return;
    if (g_count >= SLOTS / 2) {  // too many live blocks to track: those are leaked, not freed twice
        g_overflow = 1;
        return;
    }
    for (size_t i = slot_hash(p);; i = (i + 1) & (SLOTS - 1))
        if (g_slots[i].gen != g_gen || g_slots[i].p == TOMB) {
            g_slots[i].p = p;
            g_slots[i].gen = g_gen;
            g_log[g_count++] = (uint32_t)i;
            return;
        }
}

static void on_free(const volatile void *p) {
    if (!t_active || !p) return;
    for (size_t i = slot_hash(p); g_slots[i].gen == g_gen; i = (i + 1) & (SLOTS - 1))
        if (g_slots[i].p == p) {
            g_slots[i].p = TOMB;
            return;
        }
}

// ---- streams and directories opened inside the guard (the linker's --wrap) ----
#define MAX_OPEN 256
static FILE *g_files[MAX_OPEN];
static DIR *g_dirs[MAX_OPEN];

FILE *__real_fopen(const char *path, const char *mode);
FILE *__real_fdopen(int fd, const char *mode);
int __real_fclose(FILE *f);
DIR *__real_opendir(const char *path);
DIR *__real_fdopendir(int fd);
int __real_closedir(DIR *d);

static void remember(void **set, void *x) {
    if (!t_active || !x) return;
    for (int i = 0; i < MAX_OPEN; i++)
        if (!set[i]) {
            set[i] = x;
            return;
        }
}
static void forget(void **set, void *x) {
    for (int i = 0; i < MAX_OPEN; i++)
        if (set[i] == x) set[i] = NULL;
}

FILE *__wrap_fopen(const char *path, const char *mode) {
    FILE *f = __real_fopen(path, mode);
    remember((void **)g_files, f);
    return f;
}
FILE *__wrap_fdopen(int fd, const char *mode) {
    FILE *f = __real_fdopen(fd, mode);
    remember((void **)g_files, f);
    return f;
}
int __wrap_fclose(FILE *f) {
    forget((void **)g_files, f);
    return __real_fclose(f);
}
DIR *__wrap_opendir(const char *path) {
    DIR *d = __real_opendir(path);
    remember((void **)g_dirs, d);
    return d;
}
DIR *__wrap_fdopendir(int fd) {
    DIR *d = __real_fdopendir(fd);
    remember((void **)g_dirs, d);
    return d;
}
int __wrap_closedir(DIR *d) {
    forget((void **)g_dirs, d);
    return __real_closedir(d);
}

// ---- the guard ----
static jmp_buf g_env;

static void on_fatal(const char *line) {
    (void)line;
    longjmp(g_env, 1);
}

static void cleanup_after_fatal(const unsigned char *fd_was_open) {
    for (int i = 0; i < MAX_OPEN; i++) {
        if (g_files[i]) __real_fclose(g_files[i]), g_files[i] = NULL;
        if (g_dirs[i]) __real_closedir(g_dirs[i]), g_dirs[i] = NULL;
    }
    for (int fd = 0; fd < 256; fd++)
        if (!fd_was_open[fd] && fcntl(fd, F_GETFD) != -1) close(fd);
    // every block still live from the abandoned call; free() removes each from the set
    t_active = 0;  // the frees below must not touch the set while it is walked
    if (!g_overflow)
        for (size_t k = 0; k < g_count; k++) {
            Slot *sl = &g_slots[g_log[k]];
            if (sl->gen == g_gen && sl->p != TOMB) {  // a slot logged twice (reused) is freed once
                free((void *)sl->p);
                sl->p = TOMB;
            }
        }
}

int fuzz_guard(void (*fn)(void *), void *arg) {
    static int hooked;
    if (!hooked) {
        __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
        fatal_set_handler(on_fatal);
        warn_set_quiet(1);
        fflush(stdout);  // stdio's buffers exist before any tracked call could allocate them
        hooked = 1;
    }
    unsigned char fd_was_open[256];
    for (int fd = 0; fd < 256; fd++) fd_was_open[fd] = fcntl(fd, F_GETFD) != -1;
    memset(g_files, 0, sizeof g_files);
    memset(g_dirs, 0, sizeof g_dirs);
    g_gen++;
    g_count = 0;
    g_overflow = 0;
    t_active = 1;
    volatile int died = 0;
    if (setjmp(g_env) == 0) fn(arg);
    else died = 1;
    if (died) cleanup_after_fatal(fd_was_open);
    t_active = 0;
    return died;
}

// ---- files ----
static char g_dir[PATH_MAX];

static void remove_dir_at_exit(void) {
    if (g_dir[0]) fs_remove(g_dir);
}

const char *fuzz_dir(void) {
    if (!g_dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(g_dir, sizeof g_dir, "%s/svlm-fuzz-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(g_dir)) {
            perror("fuzz: mkdtemp");
            abort();
        }
        atexit(remove_dir_at_exit);
    }
    return g_dir;
}

const char *fuzz_file(const char *name, const void *data, size_t n) {
    static char path[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    FILE *f = __real_fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || __real_fclose(f) != 0) {
        perror(path);
        abort();
    }
    return path;
}

const char *fuzz_fixture(const char *name) {
    static char path[PATH_MAX];
    snprintf(path, sizeof path, "tests/fixtures/%s", name);
    return path;
}

int fuzz_split(const uint8_t *data, size_t n, const uint8_t **ptrs, size_t *lens, int max) {
    const size_t sl = sizeof FUZZ_SEP - 1;
    int k = 0;
    size_t start = 0;
    for (size_t i = 0; k + 1 < max && i + sl <= n; i++)
        if (memcmp(data + i, FUZZ_SEP, sl) == 0) {
            ptrs[k] = data + start;
            lens[k++] = i - start;
            start = i + sl;
            i = start - 1;
        }
    ptrs[k] = data + start;
    lens[k++] = n - start;
    return k;
}
