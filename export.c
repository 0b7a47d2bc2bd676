// export.c: ./export RUN_DIR_OR_STEP_DIR OUT_DIR [--link]: a checkpoint as a Hugging Face LLM with
// LoRA merged, a peft adapter, the connector, the vision tower (copied, or linked with --link),
// svlm.json, and for mlp2x_gelu a LlavaForConditionalGeneration checkpoint (see trainer/export.h).
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "trainer/export.h"

static void usage(FILE *f) {
    fprintf(f, "usage: ./export RUN_DIR_OR_STEP_DIR OUT_DIR [--link]\n"
               "  writes OUT_DIR/llm (LoRA merged, loads in transformers), OUT_DIR/adapter (peft),\n"
               "  OUT_DIR/connector.safetensors, OUT_DIR/vision (a copy of the vision tower; --link: a\n"
               "  symbolic link to it instead), OUT_DIR/svlm.json (for ./generate and ./evaluate), and for the\n"
               "  mlp2x_gelu connector OUT_DIR/llava (LlavaForConditionalGeneration with its processor files)\n");
}

int main(int argc, char **argv) {
    openmp_prefer_passive(argv);
    const char *pos[2] = {NULL, NULL};
    int n = 0;
    ExportOptions o = {0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--link")) o.link_vision = 1;
        else if (argv[i][0] == '-' && argv[i][1]) fatal("unknown option %s (see ./export --help)", argv[i]);
        else if (n < 2) pos[n++] = argv[i];
        else fatal("unexpected argument \"%s\" (see ./export --help)", argv[i]);
    }
    if (n != 2) {
        usage(stderr);
        return 2;
    }
    export_run_with(pos[0], pos[1], &o);
    return 0;
}
