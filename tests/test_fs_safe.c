// test_fs_safe.c: the pieces of issue 14 below the programs: link-safe removal and replacement
// (common/fs_safe.c) never touch what a symbolic link points at, numbers read from JSON are
// range-checked before any cast (common/json.c: json_get_i64), and fatal()'s handler hook
// (common/util.c) that lets the fuzz harnesses survive refused inputs.
// Also built with AddressSanitizer + UBSan (build/tests/asan_test_fs_safe).
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fs_safe.h"
#include "common/json.h"
#include "common/util.h"
#include "tests/testlib.h"

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int has_text(const char *path, const char *text) {
    size_t n;
    char *s = file_read_all(path, &n);
    int ok = s && !strcmp(s, text);
    free(s);
    return ok;
}

// outside/ with two files; returns its absolute path
static void make_outside(const char *d, char *out, size_t cap) {
    char p[PATH_MAX + 16], abs[PATH_MAX];
    snprintf(p, sizeof p, "%s/outside", d);
    assert_int_equal(mkdir(p, 0755), 0);
    assert_non_null(realpath(p, abs));
    snprintf(out, cap, "%s", abs);
    snprintf(p, sizeof p, "%s/a.txt", abs);
    write_text(p, "keep a");
    snprintf(p, sizeof p, "%s/b.txt", abs);
    write_text(p, "keep b");
}

static void expect_outside_intact(const char *outside) {
    char p[PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/a.txt", outside);
    assert_true(has_text(p, "keep a"));
    snprintf(p, sizeof p, "%s/b.txt", outside);
    assert_true(has_text(p, "keep b"));
}

static void test_remove_tree_keeps_link_targets(void **state) {
    char d[512], outside[PATH_MAX], t[700], p[800];
    make_temp_dir(d, sizeof d, "fs-remove");
    make_outside(d, outside, sizeof outside);
    // tree/ holds files, a nested directory, a link to outside/ and a link to outside/a.txt
    snprintf(t, sizeof t, "%s/tree", d);
    assert_int_equal(mkdir(t, 0755), 0);
    snprintf(p, sizeof p, "%s/f", t);
    write_text(p, "x");
    snprintf(p, sizeof p, "%s/sub", t);
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s/sub/g", t);
    write_text(p, "y");
    snprintf(p, sizeof p, "%s/dirlink", t);
    assert_int_equal(symlink(outside, p), 0);
    snprintf(p, sizeof p, "%s/sub/filelink", t);
    char target[PATH_MAX + 8];
    snprintf(target, sizeof target, "%s/a.txt", outside);
    assert_int_equal(symlink(target, p), 0);
    assert_int_equal(fs_remove(t), 0);
    struct stat st;
    assert_int_not_equal(lstat(t, &st), 0);
    expect_outside_intact(outside);
    // a link given as the path itself: the link goes, its target stays
    snprintf(p, sizeof p, "%s/toplink", d);
    assert_int_equal(symlink(outside, p), 0);
    assert_int_equal(fs_remove(p), 0);
    assert_int_not_equal(lstat(p, &st), 0);
    expect_outside_intact(outside);
    // "link/" names the link too (removal never goes through it); an absent path is no error
    snprintf(p, sizeof p, "%s/toplink", d);
    assert_int_equal(symlink(outside, p), 0);
    strcat(p, "/");
    assert_int_equal(fs_remove(p), 0);
    expect_outside_intact(outside);
    assert_int_equal(fs_remove("build/tmp/no/such/thing"), 0);
    // names that are not entries of the directory are refused
    assert_int_equal(fs_remove_at(AT_FDCWD, ".."), -1);
    assert_int_equal(fs_remove_at(AT_FDCWD, "a/b"), -1);
}

static void test_replace_and_append_refuse_links(void **state) {
    char d[512], outside[PATH_MAX], p[700], q[760], target[PATH_MAX + 8];
    make_temp_dir(d, sizeof d, "fs-replace");
    make_outside(d, outside, sizeof outside);
    snprintf(target, sizeof target, "%s/a.txt", outside);
    snprintf(p, sizeof p, "%s/log.jsonl", d);
    assert_int_equal(symlink(target, p), 0);
    // appending through the link is refused
    errno = 0;
    assert_null(fs_open_append(p));
    assert_int_equal(errno, ELOOP);
    assert_null(fs_read_nofollow(p, 100, &(size_t){0}));
    // replacing puts a regular file in the link's place
    assert_int_equal(fs_replace(p, "new\n", 4), 0);
    assert_true(fs_is_file_nofollow(p));
    assert_true(has_text(p, "new\n"));
    expect_outside_intact(outside);
    // a link planted at the temporary name is not written through either
    snprintf(q, sizeof q, "%s.tmp-%d", p, (int)getpid());
    assert_int_equal(symlink(target, q), 0);
    assert_int_equal(fs_replace(p, "newer\n", 6), 0);
    assert_true(has_text(p, "newer\n"));
    expect_outside_intact(outside);
    FILE *f = fs_open_append(p);
    assert_non_null(f);
    fputs("more\n", f);
    fclose(f);
    assert_true(has_text(p, "newer\nmore\n"));
    size_t n;
    char *s = fs_read_nofollow(p, 3, &n);
    assert_non_null(s);
    assert_int_equal(n, 3);
    assert_string_equal(s, "new");
    free(s);
}

typedef struct {
    const char *json;
    const char *key;
    int64_t lo, hi;
} I64Arg;

static void get_i64_fn(void *arg) {
    I64Arg *a = arg;
    cJSON *j = cJSON_Parse(a->json);
    json_get_i64(j, a->key, a->lo, a->hi, "file.json");
    exit(0);
}

static void test_json_i64_range(void **state) {
    const char *bad[] = {"{\"n\": 1e300}", "{\"n\": -1e300}", "{\"n\": 2.5}", "{\"n\": -1}", "{\"n\": 11}",
                         "{\"n\": 1e999}", "{\"n\": 9007199254740994}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        I64Arg a = {bad[i], "n", 0, 10};
        expect_fatal(get_i64_fn, &a, "file.json", "key \"n\" must be an integer in [0, 10]");
    }
    I64Arg s = {"{\"n\": \"3\"}", "n", 0, 10};
    expect_fatal(get_i64_fn, &s, "file.json", "key \"n\" must be a number");
    I64Arg m = {"{}", "n", 0, 10};
    expect_fatal(get_i64_fn, &m, "file.json", "missing key \"n\"");
    cJSON *j = cJSON_Parse("{\"a\": 0, \"b\": 10, \"c\": -4, \"big\": 9007199254740992, \"x\": 1e300}");
    assert_int_equal(json_get_i64(j, "a", 0, 10, "f"), 0);
    assert_int_equal(json_get_i64(j, "b", 0, 10, "f"), 10);
    assert_int_equal(json_get_i64(j, "c", -5, 0, "f"), -4);
    assert_true(json_get_i64(j, "big", 0, JSON_INT_MAX, "f") == JSON_INT_MAX);
    assert_int_equal(json_get_i64_opt(j, "absent", 7, 0, 10, "f"), 7);
    int64_t v = 99;
    assert_false(json_is_i64(cJSON_GetObjectItem(j, "x"), INT64_MIN, INT64_MAX, &v));
    assert_int_equal(v, 99);
    cJSON_Delete(j);
}

static jmp_buf g_env;
static char g_line[256];
static void on_fatal(const char *line) {
    snprintf(g_line, sizeof g_line, "%s", line);
    longjmp(g_env, 1);
}

// the hook the fuzz harnesses use: fatal() hands its line over and does not exit
static void test_fatal_handler(void **state) {
    fatal_set_handler(on_fatal);
    volatile int caught = 0;
    if (setjmp(g_env) == 0) fatal("%s: key \"%s\" is bad", "x.json", "k");
    else caught = 1;
    fatal_set_handler(NULL);
    assert_true(caught);
    assert_string_equal(g_line, "x.json: key \"k\" is bad");
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_remove_tree_keeps_link_targets),
        cmocka_unit_test(test_replace_and_append_refuse_links),
        cmocka_unit_test(test_json_i64_range),
        cmocka_unit_test(test_fatal_handler),
    };
    struct CMUnitTest chosen[sizeof tests / sizeof tests[0]];
    size_t n = test_select(chosen, tests, sizeof tests / sizeof tests[0], argc > 1 ? argv[1] : NULL);
    return _cmocka_run_group_tests("tests", chosen, n, NULL, NULL);
}
