// fuzz_shards.c: libFuzzer harness for prepared shard directories (data/shards.c). The input is
// up to three files joined by FUZZ_SEP: meta.json, index.bin and shard-00000.zst (a fourth part,
// if any, becomes shard-00001.zst). The directory is opened as the loader opens it and every
// record (at most 256) is read, decompressed and checked. A first byte 'R' instead hands the
// rest to shards_record_parse alone (one decompressed record).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/shards.h"
#include "tests/fuzz/fuzz_common.h"

static char g_dir[4200];
static const uint8_t *g_data;
static size_t g_n;

static void run_dir(void *arg) {
    (void)arg;
    Shards *s = shards_open(g_dir);
    ShardReadBuf b = {0};
    int64_t n = shards_count(s);
    for (int64_t i = 0; i < n && i < 256; i++) {
        ShardRecord rec;
        char err[512];
        shards_entry(s, i);
        shards_read(s, i, &b, &rec, err, sizeof err);
    }
    shard_readbuf_free(&b);
    shards_close(s);
}

static void run_record(void *arg) {
    (void)arg;
    // copied so that ids are 4-byte aligned as shards_read's buffer makes them
    static uint32_t buf[(1 << 20) / 4];
    size_t n = g_n < sizeof buf ? g_n : sizeof buf;
    memcpy(buf, g_data, n);
    ShardRecord rec;
    char err[512];
    if (shards_record_parse((const uint8_t *)buf, n, &rec, err, sizeof err) == 0) {
        size_t len;
        uint8_t *again = shards_record_pack(&rec, &len);  // what parses packs back the same
        if (len != n || memcmp(again, buf, n) != 0) __builtin_trap();
        free(again);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n > 0 && data[0] == 'R') {
        g_data = data + 1;
        g_n = n - 1;
        fuzz_guard(run_record, NULL);
        return 0;
    }
    const uint8_t *p[4];
    size_t len[4];
    int k = fuzz_split(data, n, p, len, 4);
    static const char *names[4] = {"meta.json", "index.bin", "shard-00000.zst", "shard-00001.zst"};
    snprintf(g_dir, sizeof g_dir, "%s", fuzz_dir());
    char path[4300];
    for (int i = 0; i < 4; i++) {  // absent parts are absent files
        snprintf(path, sizeof path, "%s/%s", g_dir, names[i]);
        remove(path);
    }
    for (int i = 0; i < k; i++) fuzz_file(names[i], p[i], len[i]);
    fuzz_guard(run_dir, NULL);
    return 0;
}
