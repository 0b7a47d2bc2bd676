// fuzz_safetensors.c: libFuzzer harness for the safetensors reader (common/safetensors.c): the
// input is a .safetensors file; every tensor it declares is found by name and read as fp32 (or
// int32) when small. Refusals are fine; a crash, a sanitizer report or a hang is a finding.
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/safetensors.h"
#include "tests/fuzz/fuzz_common.h"

static const char *g_path;
static StFile f;  // global: a refused read leaves the file mapped, unmapped here (fuzz_common.h)

static void run(void *arg) {
    (void)arg;
    char err[512];
    if (st_open(&f, g_path, err, sizeof err) != 0) return;
    for (int i = 0; i < f.n; i++) {
        const StTensor *t = &f.tensors[i];
        if (st_find(&f, t->name) != t) abort();  // every declared tensor is found under its name
        int64_t n = st_numel(t);
        if (n < 0 || n > (1 << 16) || t->dtype == ST_BOOL) continue;  // BOOL: neither reader takes it
        if (t->dtype == ST_I64 || t->dtype == ST_I32 || t->dtype == ST_I16 || t->dtype == ST_I8 || t->dtype == ST_U8) {
            int32_t *d = malloc((size_t)(n ? n : 1) * sizeof *d);
            st_read_i32(&f, t, d);
            free(d);
        } else {
            float *d = malloc((size_t)(n ? n : 1) * sizeof *d);
            st_read_f32(&f, t, d);
            free(d);
        }
    }
    st_meta(&f, "format");
    st_close(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    g_path = fuzz_file("model.safetensors", data, n);
    memset(&f, 0, sizeof f);
    if (fuzz_guard(run, NULL) && f.map) munmap(f.map, f.size);  // st_read_i32 refused a value: f is open
    return 0;
}
