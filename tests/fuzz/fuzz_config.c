// fuzz_config.c: libFuzzer harness for the `key = value` config parser (common/config.c) with
// ./train's table of keys (trainer/train_config.c): the input is a config file, parsed with
// two command-line overrides, then written back out and its sizes parsed as ./train does.
#include <stdio.h>

#include "common/config.h"
#include "tests/fuzz/fuzz_common.h"
#include "trainer/train_config.h"

static const char *g_path;

static void run(void *arg) {
    (void)arg;
    static TrainConfig c;
    char *args[] = {"seed=3", "device=cpu"};
    config_parse(train_keys, n_train_keys, &c, g_path, 2, args);
    FILE *f = fopen("/dev/null", "w");
    config_write(train_keys, n_train_keys, &c, f);
    fclose(f);
    size_t bytes;
    config_parse_size(c.memory_limit, &bytes);
    char buf[4200];
    for (int i = 0; i < n_train_keys; i++) config_value(train_keys, n_train_keys, &c, train_keys[i].key, buf, sizeof buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    g_path = fuzz_file("run.conf", data, n);
    fuzz_guard(run, NULL);
    return 0;
}
