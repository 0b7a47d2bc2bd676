// bench_data.c: the data pipeline's two hot loops on one thread: tokenizer MB/s (encoding the
// corpus in data/corpus/ paragraph by paragraph, as prepare encodes sample texts) and images/s
// (a 640x480 JPEG decoded and turned into each vision family's normalised tensor at its real
// size, as the loader does: CLIP 336, SigLIP 384, InternVL 448, Idefics3 364 via 1456).
// Then, when Python has tokenizers, Pillow and transformers, scripts/bench_data.py measures HF
// `tokenizers` and Pillow + each family's processor on the same inputs and prints the ratios.
//
//   build/bench_data [TOKENIZER_JSON]     (or SVLM_BENCH_TOKENIZER=...; default: the fixture
//                                          tests/fixtures/tokenizer/qwen2.json, vocab 3000)
#define _GNU_SOURCE  // memmem
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>


#include "common/rng.h"
#include "common/util.h"
#include "data/image_prep.h"
#include "data/tokenizer.h"

#define OUT_DIR "build/bench/data"
#define JPEG_PATH OUT_DIR "/photo_640x480.jpg"
#define MIN_SECONDS 1.5

typedef struct {
    const char *p;
    size_t n;
} Text;

// every data/corpus/*.txt split on "\n\n" (empty pieces dropped): scripts/bench_data.py splits
// the same way
static int load_texts(Text **out, char ***bufs_out, int *nbufs, size_t *bytes) {
    glob_t g;
    if (glob("data/corpus/*.txt", 0, NULL, &g) != 0) fatal("bench_data: no data/corpus/*.txt (run from the repository root)");
    Text *t = NULL;
    int n = 0, cap = 0;
    char **bufs = xmalloc(g.gl_pathc * sizeof *bufs);
    *bytes = 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        size_t len;
        char *s = file_read_all(g.gl_pathv[i], &len);
        if (!s) fatal("%s: cannot read", g.gl_pathv[i]);
        bufs[i] = s;
        for (size_t a = 0; a < len;) {
            char *e = memmem(s + a, len - a, "\n\n", 2);
            size_t b = e ? (size_t)(e - s) : len;
            if (b > a) {
                if (n == cap) t = xrealloc(t, (size_t)(cap = cap ? cap * 2 : 256) * sizeof *t);
                t[n++] = (Text){s + a, b - a};
                *bytes += b - a;
            }
            a = b + 2;
        }
    }
    *nbufs = (int)g.gl_pathc;
    globfree(&g);
    *out = t;
    *bufs_out = bufs;
    return n;
}

// a photo-like 640x480 picture (smooth shapes, edges and noise), JPEG quality 90, 4:2:0
static void write_jpeg(const char *path) {
    const int W = 640, H = 480;
    uint8_t *rgb = xmalloc((size_t)W * H * 3);
    Rng r;
    rng_init(&r, 7);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            float fx = x / (float)W, fy = y / (float)H;
            int disc = (x - 400) * (x - 400) + (y - 200) * (y - 200) < 90 * 90;
            float v[3] = {200 * fx + 30 * (disc ? 1 : 0), 160 * fy + 40 * ((x / 40 + y / 40) & 1), 120 + 100 * fx * fy};
            for (int c = 0; c < 3; c++) {
                float n = (rng_uniform(&r) - 0.5f) * 24;
                int q = (int)(v[c] + n);
                rgb[((size_t)y * W + x) * 3 + c] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
            }
        }
    image_write_jpeg(path, rgb, W, H, 90, 0);
    free(rgb);
}

int main(int argc, char **argv) {
    openmp_prefer_passive(argv);
    const char *tok_path = argc > 1 ? argv[1] : getenv("SVLM_BENCH_TOKENIZER");
    if (!tok_path || !tok_path[0]) tok_path = "tests/fixtures/tokenizer/qwen2.json";
    mkdir("build", 0755);
    mkdir("build/bench", 0755);
    mkdir(OUT_DIR, 0755);

    // ---- tokenizer
    Tokenizer *tok = tokenizer_load(tok_path);
    Text *texts;
    char **bufs;
    int nbufs;
    size_t bytes;
    int nt = load_texts(&texts, &bufs, &nbufs, &bytes);
    long long ntok = 0;
    for (int i = 0; i < nt; i++) {  // warm-up pass (fills the word cache, as a long run does)
        int *ids;
        ntok += tokenizer_encode(tok, texts[i].p, texts[i].n, 1, &ids);
        free(ids);
    }
    int passes = 0;
    double t0 = time_now(), el;
    do {
        for (int i = 0; i < nt; i++) {
            int *ids;
            tokenizer_encode(tok, texts[i].p, texts[i].n, 1, &ids);
            free(ids);
        }
        passes++;
    } while ((el = time_now() - t0) < MIN_SECONDS);
    double tok_mbs = (double)bytes * passes / el / 1e6;
    printf("bench-data: tokenizer %s (vocab %d): %d texts, %zu bytes, %lld tokens per pass\n", tok_path,
           tokenizer_vocab_size(tok), nt, bytes, ntok);
    printf("bench-data: svlm tokenizer: %.2f MB/s (one thread, %d passes)\n", tok_mbs, passes);
    tokenizer_free(tok);
    for (int i = 0; i < nbufs; i++) free(bufs[i]);
    free(bufs);
    free(texts);

    // ---- images
    write_jpeg(JPEG_PATH);
    size_t jn;
    uint8_t *jpg = (uint8_t *)file_read_all(JPEG_PATH, &jn);
    if (!jpg) fatal("%s: cannot read", JPEG_PATH);
    static const struct { ImagePrepFamily f; int size; } fams[] = {
        {IMAGE_PREP_CLIP, 336}, {IMAGE_PREP_SIGLIP, 384}, {IMAGE_PREP_INTERNVL, 448}, {IMAGE_PREP_IDEFICS3, 364}};
    char rates[256] = "";
    for (size_t k = 0; k < sizeof fams / sizeof *fams; k++) {
        ImagePrep prep;
        image_prep_preset(&prep, fams[k].f, fams[k].size);
        float *out = xmalloc((size_t)3 * prep.size * prep.size * sizeof(float));
        int n_img = 0;
        t0 = time_now();
        do {
            Image im;
            char err[128];
            if (image_prep_decode(&prep, jpg, jn, &im, err, sizeof err) != 0) fatal("%s: %s", JPEG_PATH, err);
            image_preprocess(&im, &prep, out);
            image_free(&im);
            n_img++;
        } while ((el = time_now() - t0) < MIN_SECONDS);
        const char *name = image_prep_family_name(fams[k].f);
        printf("bench-data: svlm images %s: %.1f images/s (one thread, decode + %s resize%s to 3x%dx%d + normalise)\n", name,
               n_img / el, image_filter_name(prep.filter),
               prep.rule == IMAGE_RESIZE_SHORTEST_CROP ? " + crop" : prep.rule == IMAGE_RESIZE_LONGEST_SQUARE ? " x2 (1456 long side)" : "",
               prep.size, prep.size);
        snprintf(rates + strlen(rates), sizeof rates - strlen(rates), " --svlm-prep %s=%.4f", name, n_img / el);
        free(out);
    }
    printf("bench-data: image %s (%zu bytes)\n", JPEG_PATH, jn);
    free(jpg);

    // ---- the reference in Python, when it is there
    if (system("python3 -c 'import tokenizers, PIL, transformers' >/dev/null 2>&1") != 0) {
        printf("bench-data: note: python3 with tokenizers, Pillow and transformers not found: HF comparison skipped\n");
        return 0;
    }
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "python3 scripts/bench_data.py --tokenizer '%s' --image '%s' --svlm-tokenizer-mbs %.4f%s", tok_path, JPEG_PATH,
             tok_mbs, rates);
    fflush(stdout);
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "bench-data: scripts/bench_data.py failed (status %d)\n", rc);
    return rc != 0;
}
