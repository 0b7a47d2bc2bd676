// fuzz_state.c: libFuzzer harness for a checkpoint's state.json (trainer/checkpoint_state.c),
// read as resume reads it from out_dir/step_00000004/. Whatever it accepts must be usable as is:
// the step within [0, total_steps] and equal to the directory's, counts non-negative.
#include <stdio.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz_common.h"
#include "trainer/checkpoint.h"

// the model description of the seed checkpoints (tests/fuzz/corpus/state)
#define SIGNATURE "{\"stage\":2,\"connector\":\"ldp\"}"

static char g_dir[4200];

static void run(void *arg) {
    (void)arg;
    TrainState st;
    checkpoint_read_state(g_dir, &st, SIGNATURE);
    if (st.step < 0 || st.step > st.total_steps || st.step != 4 || st.metrics_bytes < 0 || st.world < 1 ||
        st.skipped_steps < 0 || st.skipped_steps > st.step || st.tokens < 0 || st.data.epoch < 0 || st.data.index < 0)
        __builtin_trap();  // accepted a state that resume cannot use
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    snprintf(g_dir, sizeof g_dir, "%s/step_00000004", fuzz_dir());
    mkdir(g_dir, 0755);
    fuzz_file("step_00000004/state.json", data, n);
    fuzz_guard(run, NULL);
    return 0;
}
