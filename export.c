// export.c: ./export RUN_DIR_OR_STEP_DIR OUT_DIR: a checkpoint as a Hugging Face LLM with LoRA
// merged, a peft adapter, the connector and svlm.json (see train/export.h).
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "trainer/export.h"

int main(int argc, char **argv) {
    openmp_prefer_passive(argv);
    if (argc != 3 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(stderr, "usage: ./export RUN_DIR_OR_STEP_DIR OUT_DIR\n"
                        "  writes OUT_DIR/llm (LoRA merged, loads in transformers), OUT_DIR/adapter (peft),\n"
                        "  OUT_DIR/connector.safetensors and OUT_DIR/svlm.json (for ./generate)\n");
        return argc == 3 ? 0 : 2;
    }
    export_run(argv[1], argv[2]);
    return 0;
}
