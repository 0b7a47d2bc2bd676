// test_safetensors.c: the safetensors reader and writer: round trips of every dtype, and each
// kind of damaged file failing with one line that names the file (and the tensor where there is one).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/safetensors.h"
#include "common/util.h"
#include "tests/testlib.h"

static char dir[512];

static const char *tmp_path(const char *name) {
    static char buf[4][1024];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", dir, name);
    return buf[i];
}

// writes 8-byte length (declared, or the real one when declared < 0), header text, then nbytes of data
static void write_raw(const char *path, const char *header, long long declared, size_t nbytes) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    unsigned long long len = declared < 0 ? strlen(header) : (unsigned long long)declared;
    for (int i = 0; i < 8; i++) fputc((int)((len >> (8 * i)) & 0xff), f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < nbytes; i++) fputc((int)(i * 7 + 1), f);
    fclose(f);
}

static void test_roundtrip(void **state) {
    float f32[6] = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 1e-30f};
    uint16_t bf[3] = {f32_to_bf16(1.0f), f32_to_bf16(-3.5f), f32_to_bf16(0.15625f)};
    uint16_t hf[3] = {f32_to_f16(1.0f), f32_to_f16(-3.5f), f32_to_f16(6.0e-8f)};
    int32_t i32[4] = {-7, 0, 123456, 2147483647};
    int64_t i64[2] = {-5, 1LL << 40};
    float scalar = 42.0f;
    StWriter *w = st_writer_new();
    st_writer_add(w, "a.f32", ST_F32, 2, (int64_t[]){2, 3}, f32);
    st_writer_add(w, "b.bf16", ST_BF16, 1, (int64_t[]){3}, bf);
    st_writer_add(w, "c.f16", ST_F16, 1, (int64_t[]){3}, hf);
    st_writer_add(w, "d.i32", ST_I32, 2, (int64_t[]){2, 2}, i32);
    st_writer_add(w, "e.i64", ST_I64, 1, (int64_t[]){2}, i64);
    st_writer_add(w, "f.scalar", ST_F32, 0, NULL, &scalar);
    st_writer_add(w, "g.empty", ST_F32, 2, (int64_t[]){0, 5}, NULL);
    st_writer_meta(w, "format", "pt");
    char err[512];
    assert_int_equal(st_writer_save(w, tmp_path("rt.safetensors"), err, sizeof err), 0);
    st_writer_free(w);

    StFile f;
    int rc = st_open(&f, tmp_path("rt.safetensors"), err, sizeof err);
    if (rc) print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_int_equal(f.n, 7);
    assert_string_equal(st_meta(&f, "format"), "pt");
    assert_null(st_meta(&f, "nope"));
    assert_int_equal(f.data_start % 8, 0);  // header padded so the data is aligned
    float out[6];
    st_read_f32(&f, st_find(&f, "a.f32"), out);
    assert_memory_equal(out, f32, sizeof f32);
    st_read_f32(&f, st_find(&f, "b.bf16"), out);
    assert_true(out[0] == 1.0f && out[1] == -3.5f && out[2] == 0.15625f);
    st_read_f32(&f, st_find(&f, "c.f16"), out);
    assert_true(out[0] == 1.0f && out[1] == -3.5f);
    assert_true(fabsf(out[2] - 5.96046448e-8f) < 1e-12f);  // f16 subnormal survives
    int32_t iout[4];
    st_read_i32(&f, st_find(&f, "d.i32"), iout);
    assert_memory_equal(iout, i32, sizeof i32);
    const StTensor *t = st_find(&f, "f.scalar");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(st_numel(t), 1);
    st_read_f32(&f, t, out);
    assert_true(out[0] == 42.0f);
    assert_int_equal(st_numel(st_find(&f, "g.empty")), 0);
    assert_null(st_find(&f, "missing"));
    st_close(&f);
}

static void test_f16_bf16_conversions(void **state) {
    // exhaustive over all 65536 half patterns: decode then encode gives the pattern back
    // (NaNs compared as NaN, since the payload may be quieted)
    for (uint32_t h = 0; h < 65536; h++) {
        float f = f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            assert_true(isnan(f16_to_f32(f32_to_f16(f))));
            continue;
        }
        assert_int_equal(f32_to_f16(f), h);
        float g = bf16_to_f32((uint16_t)h);
        if (!isnan(g)) assert_int_equal(f32_to_bf16(g), h);
    }
    // rounding to nearest even
    assert_int_equal(f32_to_bf16(bf16_to_f32(0x3f80) + 0.5f * 0.0078125f), 0x3f80);  // tie to even (down)
    assert_int_equal(f32_to_f16(65520.0f), 0x7c00);                                   // overflows to inf
    assert_int_equal(f32_to_f16(65504.0f), 0x7bff);
}

typedef struct {
    const char *name;    // file name under dir
    const char *header;  // JSON header
    long long declared;  // header length written, -1 for the true one
    size_t nbytes;       // data bytes after the header
    const char *needle;  // must appear in the error line
} BadCase;

static const BadCase bad_cases[] = {
    {"trunc_header.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 500, 8, "exceeds the file size"},
    {"huge_header.st", "{}", 1LL << 60, 0, "exceeds the file size"},
    {"bad_json.st", "{\"a\":{\"dtype\":\"F32\" \"shape\":[2]}}", -1, 0, "malformed JSON at byte 20"},
    {"not_object.st", "[1, 2, 3]", -1, 0, "not a JSON object"},
    {"bad_dtype.st", "{\"w\":{\"dtype\":\"F8_E9\",\"shape\":[2],\"data_offsets\":[0,2]}}", -1, 2, "tensor w: unsupported dtype"},
    {"size_mismatch.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", -1, 20, "tensor w: data_offsets span 20 bytes but F32 [2, 3] needs 24"},
    {"beyond.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", -1, 12, "tensor w: data_offsets [0, 16] beyond the data section (12 bytes)"},
    {"overlap.st", "{\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", -1, 12, "tensor v overlaps tensor u"},
    {"hole.st", "{\"u\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"v\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", -1, 12, "tensor v: 4 unused bytes"},
    {"trailing.st", "{\"u\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 9, "5 bytes after the last tensor"},
    {"reversed.st", "{\"u\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", -1, 4, "tensor u: data_offsets [4, 0] end before"},
    {"neg_shape.st", "{\"u\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", -1, 4, "tensor u: shape entry 0"},
    {"float_shape.st", "{\"u\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", -1, 4, "tensor u: shape entry 0"},
    {"offsets_arity.st", "{\"u\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", -1, 4, "tensor u: data_offsets must be two"},
    {"no_dtype.st", "{\"u\":{\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4, "tensor u: missing or non-string dtype"},
    {"dup.st", "{\"u\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"u\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", -1, 8, "tensor u appears twice"},
    {"garbage_after.st", "{\"u\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}xy", -1, 4, "malformed JSON at byte"},
    {"bad_meta.st", "{\"__metadata__\":{\"k\":1}}", -1, 0, "__metadata__ value of \"k\""},
    {"too_many_dims.st", "{\"u\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", -1, 4, "tensor u: 9 dimensions"},
    {"shape_overflow.st", "{\"u\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,4]}}", -1, 4, "tensor u: shape too large"},
};

static const BadCase *die_case;
static void open_or_die(void *arg) {
    StFile f;
    st_open_or_die(&f, tmp_path(die_case->name));
}

static void test_bad_files(void **state) {
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const BadCase *c = &bad_cases[i];
        write_raw(tmp_path(c->name), c->header, c->declared, c->nbytes);
        StFile f;
        char err[1024] = "";
        int rc = st_open(&f, tmp_path(c->name), err, sizeof err);
        if (rc != -1 || !strstr(err, c->needle) || !strstr(err, c->name)) {
            print_error("case %s: rc %d, error \"%s\", want \"%s\"\n", c->name, rc, err, c->needle);
            fail();
        }
        assert_null(strchr(err, '\n'));
        die_case = c;
        expect_fatal(open_or_die, NULL, c->name, c->needle);
    }
}

static void test_tiny_and_missing_files(void **state) {
    StFile f;
    char err[512];
    FILE *fp = fopen(tmp_path("empty.st"), "wb");
    fclose(fp);
    assert_int_equal(st_open(&f, tmp_path("empty.st"), err, sizeof err), -1);
    assert_non_null(strstr(err, "too small"));
    fp = fopen(tmp_path("five.st"), "wb");
    fwrite("\x02\0\0\0\0", 1, 5, fp);
    fclose(fp);
    assert_int_equal(st_open(&f, tmp_path("five.st"), err, sizeof err), -1);
    assert_non_null(strstr(err, "five.st"));
    assert_int_equal(st_open(&f, tmp_path("no_such_file.st"), err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot open"));
    assert_int_equal(st_open(&f, dir, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a regular file"));
}

// a valid file cut at every length must fail cleanly, never crash (ASan build checks reads)
static void test_truncated_everywhere(void **state) {
    float data[10];
    for (int i = 0; i < 10; i++) data[i] = (float)i;
    StWriter *w = st_writer_new();
    st_writer_add(w, "x", ST_F32, 1, (int64_t[]){6}, data);
    st_writer_add(w, "y", ST_F32, 2, (int64_t[]){2, 2}, data + 6);
    char err[512];
    assert_int_equal(st_writer_save(w, tmp_path("full.st"), err, sizeof err), 0);
    st_writer_free(w);
    size_t len;
    char *bytes = file_read_all(tmp_path("full.st"), &len);
    assert_non_null(bytes);
    for (size_t cut = 0; cut < len; cut++) {
        FILE *fp = fopen(tmp_path("cut.st"), "wb");
        fwrite(bytes, 1, cut, fp);
        fclose(fp);
        StFile f;
        assert_int_equal(st_open(&f, tmp_path("cut.st"), err, sizeof err), -1);
    }
    free(bytes);
}

static void test_write_failure(void **state) {
    // /dev/full accepts the open and fails every write with ENOSPC, like a full disk
    float x[4] = {0};
    StWriter *w = st_writer_new();
    st_writer_add(w, "x", ST_F32, 1, (int64_t[]){4}, x);
    char err[512];
    FILE *probe = fopen("/dev/full", "wb");
    if (probe) {
        fclose(probe);
        assert_int_equal(st_writer_save(w, "/dev/full", err, sizeof err), -1);
        assert_non_null(strstr(err, "/dev/full"));
        assert_non_null(strstr(err, "write failed"));
    }
    assert_int_equal(st_writer_save(w, "/nonexistent-dir/x.safetensors", err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot create"));
    st_writer_free(w);
}

int main(void) {
    make_temp_dir(dir, sizeof dir, "safetensors");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_f16_bf16_conversions),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_tiny_and_missing_files),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_write_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
