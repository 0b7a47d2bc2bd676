// synth.c: writes the built-in synthetic dataset and tiny random models (data/synth.h).
//
//   ./synth OUT_DIR [--seed N] [--train N] [--val N] [--heldout N] [--bench N] [--quiet]
//
// make demo runs `./synth demo`, then trains, exports and generates on what it wrote.
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/util.h"
#include "data/synth.h"

static void usage(void) {
    fprintf(stderr,
            "usage: ./synth OUT_DIR [--seed N] [--train N] [--val N] [--heldout N] [--bench N] [--vision FAMILY] [--quiet]\n"
            "  writes OUT_DIR/data (images, stage1/stage2 LLaVA JSON, held-out images) and\n"
            "  OUT_DIR/models/{vision,llm} (tiny random Hugging Face models and tokenizer);\n"
            "  --bench N: images of the held-out benchmarks data/bench_{mc,vqa}.jsonl (default 200, 0: none)\n"
            "  --vision FAMILY: the random vision tower: clip (default), siglip, internvit, internvl_vision\n");
}


int main(int argc, char **argv) {
    openmp_prefer_passive(argv);
    SynthSpec spec;
    synth_spec_defaults(&spec);
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage();
            return 0;
        } else if (strcmp(a, "--seed") == 0) spec.seed = (uint64_t)cli_int(a, cli_value(argc, argv, &i, "./synth"), 0, INT64_MAX);
        else if (strcmp(a, "--train") == 0) spec.n_train = (int)cli_int(a, cli_value(argc, argv, &i, "./synth"), 1, 1000000);
        else if (strcmp(a, "--val") == 0) spec.n_val = (int)cli_int(a, cli_value(argc, argv, &i, "./synth"), 1, 1000000);
        else if (strcmp(a, "--heldout") == 0) spec.n_heldout = (int)cli_int(a, cli_value(argc, argv, &i, "./synth"), 0, 1000);
        else if (strcmp(a, "--bench") == 0) spec.n_bench = (int)cli_int(a, cli_value(argc, argv, &i, "./synth"), 0, 100000);
        else if (strcmp(a, "--quiet") == 0) spec.quiet = 1;
        else if (strcmp(a, "--vision") == 0) vit_family_parse(spec.vision = cli_value(argc, argv, &i, "./synth"));
        else if (a[0] == '-') {
            usage();
            fatal("synth: unknown option %s", a);
        } else if (out) {
            usage();
            fatal("synth: more than one output directory (%s, %s)", out, a);
        } else out = a;
    }
    if (!out) {
        usage();
        fatal("synth: no output directory given");
    }
    spec.out_dir = out;
    SynthSummary s;
    synth_run(&spec, &s);
    if (!spec.quiet)
        printf("synth: wrote %s/data: %d training and %d validation images (64x64, %d of them JPEG), one stage-1 "
               "caption and one stage-2 conversation each plus %d text-only conversations, %d held-out images "
               "with answers (heldout.json), %d benchmark images (bench_mc.jsonl, bench_vqa.jsonl); %s/models: vision (%s, %.2fM parameters) and llm (Qwen2, %.2fM "
               "parameters, byte-level BPE tokenizer of %d tokens covering %d words as single tokens); seed %" PRIu64
               ", %.2f s\n",
               out, s.n_train, s.n_val, s.n_jpeg, s.n_stage2_text_only, s.n_heldout, s.n_bench, out, s.vision_title, s.vision_params / 1e6,
               s.llm_params / 1e6, s.vocab, s.n_words, spec.seed, s.seconds);
    return 0;
}
