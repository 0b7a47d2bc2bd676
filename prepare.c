// prepare.c: ./prepare converts LLaVA JSON / JSONL data into zstd shards for ./train
// (the work is in data/prepare.c, which ./train calls too).
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/util.h"
#include "data/prepare.h"
#include "data/tiling.h"
#include "model/vit.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ./prepare --data FILE.json|FILE.jsonl --image-folder DIR --llm LLM_DIR --template NAME --out DIR\n"
            "                 [--max-seq-len N] [--image-tokens N] [--threads N] [--overlong truncate|skip]\n"
            "                 [--system TEXT] [--shard-size BYTES[K|M|G]] [--level N] [--allow-outside-images] [--quiet]\n"
            "                 [--image-format llava|internvl|idefics3] [--max-images N] [--vision DIR --max-tiles N]\n"
            "\n"
            "  --data FILE          LLaVA data: a JSON list of samples, or JSONL (one object per line)\n"
            "  --image-folder DIR   image file names in the data are relative to DIR (omit for text-only data)\n"
            "  --allow-outside-images  also read image names that leave DIR (absolute paths, ../), as LLaVA\n"
            "                       does; without it such a sample is skipped (image_outside_folder)\n"
            "  --llm DIR            the LLM's Hugging Face directory: tokenizer.json, config.json (eos id)\n"
            "  --template NAME      plain (stage 1), chatml (Qwen2), hyperclovax, vicuna_v1, hermes2, internvl2_5,\n"
            "                       idefics3, llava_hf, internvl_hf\n"
            "  --out DIR            output directory (written to DIR.tmp-HOST-PID, renamed when complete)\n"
            "  --max-seq-len N      tokens per sample with the image slot expanded (default 2048)\n"
            "  --image-tokens N     feature rows per tile: 144 for CLIP-L/14-336 + ldp (default), 576 for mlp2x_gelu\n"
            "  --image-format F     the image slot's marker tokens: llava (default: none), internvl, idefics3\n"
            "  --max-images N       images per sample at most (1..16, default 16); more: skipped (multiple_images)\n"
            "  --vision DIR         the vision tower, whose preprocessing decides the tile grids (with --max-tiles)\n"
            "  --max-tiles N        tiles per image (InternVL, Idefics3 towers; ./train's max_tiles); default 1\n"
            "  --threads N          worker threads (default: one per core); the output does not depend on it\n"
            "  --overlong MODE      truncate (default: cut text at the end) or skip samples over max-seq-len\n"
            "  --system TEXT        system prompt (default: the template's)\n"
            "  --shard-size N       bytes per shard file (default 512M)\n"
            "  --level N            zstd level (default 3)\n"
            "  --quiet              no progress line and no per-sample warnings\n"
            "A sample (a JSONL line or a JSON list element) may have at most 64 MiB of JSON; a longer one\n"
            "is read past without being held in memory and skipped (too_long).\n");
}


static int64_t parse_size(const char *opt, const char *v) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    double mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1024, end++;
    else if (*end == 'M' || *end == 'm') mul = 1024.0 * 1024, end++;
    else if (*end == 'G' || *end == 'g') mul = 1024.0 * 1024 * 1024, end++;
    if (errno || *end || end == v || x * mul < 1024 || x * mul > 4e12)
        fatal("%s: expected a size such as 512M (at least 1K), got \"%s\"", opt, v);
    return (int64_t)(x * mul);
}

int main(int argc, char **argv) {
    openmp_prefer_passive(argv);
    PrepareSpec s;
    prepare_spec_defaults(&s);
    const char *vision = NULL;
    int max_tiles = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--quiet")) {
            s.quiet = 1;
            continue;
        }
        if (!strcmp(a, "--allow-outside-images")) {
            s.allow_outside_images = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) fatal("unexpected argument \"%s\" (see ./prepare --help)", a);
        if (i + 1 >= argc) fatal("%s needs a value (see ./prepare --help)", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--data")) s.data = v;
        else if (!strcmp(a, "--image-folder")) s.image_folder = v;
        else if (!strcmp(a, "--llm")) s.llm_dir = v;
        else if (!strcmp(a, "--template")) s.template_name = v;
        else if (!strcmp(a, "--out")) s.out_dir = v;
        else if (!strcmp(a, "--system")) s.system = v;
        else if (!strcmp(a, "--max-seq-len")) s.max_seq_len = (int)cli_int(a, v, 2, 1 << 24);
        else if (!strcmp(a, "--image-tokens")) s.image_tokens = (int)cli_int(a, v, 1, 65536);
        else if (!strcmp(a, "--image-format")) s.image_format = v;
        else if (!strcmp(a, "--max-images")) s.max_images = (int)cli_int(a, v, 1, 16);
        else if (!strcmp(a, "--vision")) vision = v;
        else if (!strcmp(a, "--max-tiles")) max_tiles = (int)cli_int(a, v, 1, 64);
        else if (!strcmp(a, "--threads")) s.threads = (int)cli_int(a, v, 1, 1024);
        else if (!strcmp(a, "--level")) s.level = (int)cli_int(a, v, 1, 19);
        else if (!strcmp(a, "--shard-size")) s.shard_bytes = parse_size(a, v);
        else if (!strcmp(a, "--overlong")) {
            if (!strcmp(v, "truncate")) s.overlong_skip = 0;
            else if (!strcmp(v, "skip")) s.overlong_skip = 1;
            else fatal("--overlong: expected truncate or skip, got \"%s\"", v);
        } else {
            fatal("unknown option %s (see ./prepare --help)", a);
        }
    }
    if (!s.data || !s.llm_dir || !s.template_name || !s.out_dir) {
        usage(stderr);
        fatal("--data, --llm, --template and --out are required");
    }
    ImagePrep prep;
    if (max_tiles > 1 && !vision) fatal("--max-tiles needs --vision DIR (its preprocessing decides the grids)");
    if (vision) {  // the tower's preprocessing, as ./train reads it
        VitConfig vc;
        vit_config_load(&vc, vision);
        vit_image_prep(&vc, vision, &prep);
        prep.max_tiles = max_tiles;
        if (max_tiles > 1 && !image_prep_tiles(&prep))
            fatal("--max-tiles %d: the %s preprocessing of %s has no tiling (internvl and idefics3 do)", max_tiles,
                  image_prep_family_name(prep.family), vision);
        s.prep = &prep;
    }
    PrepareSummary sum;
    prepare_run(&s, &sum);
    prepare_print_summary(&s, &sum, stdout);
    return 0;
}
