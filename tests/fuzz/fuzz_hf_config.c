// fuzz_hf_config.c: libFuzzer harness for the Hugging Face JSON files svlm reads besides
// tokenizer.json: the input is written as config.json, preprocessor_config.json and
// adapter_config.json (and chat_template.json) of one directory, which is then loaded as a
// language model config (model/llm.c), a vision config and its preprocessing (model/vit.c), a
// peft adapter config (model/lora.c) and a whole VLM with its chat format (model/vlm_dir.c). Each
// loader runs in its own guard: one refusing does not hide the others.
#include <stdio.h>

#include "model/llm.h"
#include "model/vit.h"
#include "model/vlm_dir.h"
#include "tests/fuzz/fuzz_common.h"

static void run_llm(void *arg) {
    LlmConfig c;
    llm_config_load(&c, fuzz_dir());
    (void)arg;
}

static void run_vit(void *arg) {
    VitConfig c;
    vit_config_load(&c, fuzz_dir());
    ImagePrep p;
    vit_image_prep(&c, fuzz_dir(), &p);
    (void)arg;
}

static void run_lora(void *arg) {
    LoraConfig l;
    lora_config_load_peft(&l, fuzz_dir());
    (void)arg;
}

static void run_vlm_dir(void *arg) {
    VlmDir d;
    vlm_dir_is(fuzz_dir());
    vlm_dir_open(&d, fuzz_dir());
    const char *system;
    vlm_dir_template(&d, &system);
    (void)arg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_file("config.json", data, n);
    fuzz_file("preprocessor_config.json", data, n);
    fuzz_file("adapter_config.json", data, n);
    fuzz_file("chat_template.json", data, n);
    fuzz_guard(run_llm, NULL);
    fuzz_guard(run_vit, NULL);
    fuzz_guard(run_lora, NULL);
    fuzz_guard(run_vlm_dir, NULL);
    return 0;
}
