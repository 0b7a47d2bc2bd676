// test_gen_batch.c: batched generation (model/gen_batch.h: prompts prefilled together, decode
// steps batched) against the batch-1 path (gen_generate), conversation by conversation, on the
// parity fixtures' models (qwen2 + LoRA + ldp, llama + rsLoRA + mlp2x) on the CPU: prompts of 3
// to 150 tokens, with and without images, in one batch; greedy and sampled (same seed) tokens
// identical, and the same stop reasons and counts, when every conversation runs to
// max_new_tokens, when one stops on its own stop id while the others go on, when the longest
// fills its cache slot first, and with prefill blocks of 512, 16, 9 and 7 rows (prompts and
// image slots cut across blocks); and tiled, marked prompts (InternVL's slots, several tiles and
// images a prompt) batched as they are one at a time.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "model/gen_batch.h"
#include "tests/testlib.h"

#define NB 5

typedef struct {
    const char *file, *llm, *conn_file, *lora;
    ConnectorType ct;
} FixtureModel;

static const FixtureModel QWEN2_LORA = {"vlm_qwen2_ldp.safetensors", "qwen2", "ldp_qwen2.safetensors", "qwen2_lora", CONNECTOR_LDP};
static const FixtureModel LLAMA_RSLORA = {"vlm_llama_mlp2x.safetensors", "llama", "mlp2x_llama.safetensors", "llama_lora", CONNECTOR_MLP2X_GELU};

typedef struct {
    int *ids[NB], n_ids[NB], image_pos[NB];
    const float *pixels[NB];
} Prompts;

// prompts of very different lengths; conversations 1 and 3 have an image
static void make_prompts(Prompts *p, const VlmFixture *fx, int V, uint64_t seed) {
    static const int lens[NB] = {3, 60, 11, 150, 27};
    for (int i = 0; i < NB; i++) {
        p->n_ids[i] = lens[i];
        p->ids[i] = xmalloc((size_t)lens[i] * sizeof(int));
        for (int t = 0; t < lens[i]; t++) p->ids[i][t] = (int)(test_rand_u64(&seed) % (uint64_t)V);
        p->pixels[i] = i == 1 ? fx->pixels : i == 3 ? fx->pixels + (size_t)3 * fx->S * fx->S : NULL;
        p->image_pos[i] = i == 1 ? 0 : i == 3 ? 70 : -1;
    }
}

// runs both paths with o and max_len; checks tokens, counts and stop reasons; returns conversation
// 0's batch-1 tokens in first (room for max_new) and how many
static int compare(Vlm *m, const Prompts *p, const GenOptions *o, int max_len, int chunk, const char *what, int *first) {
    int cap = o->max_new_tokens;
    int *want[NB], n_want[NB], *got[NB], n_got[NB];
    GenStats sw[NB], sg[NB];
    Generator g;
    gen_init(&g, m, max_len, 0);
    for (int i = 0; i < NB; i++) {
        want[i] = xmalloc((size_t)cap * sizeof(int));
        got[i] = xmalloc((size_t)cap * sizeof(int));
        n_want[i] = gen_generate(&g, p->ids[i], p->n_ids[i], p->pixels[i], p->image_pos[i], o, want[i], &sw[i]);
    }
    gen_free(&g);
    GenBatch b;
    gen_batch_init(&b, m, NB + 2, max_len, chunk);  // room for more than are run
    GenPrompt gp[NB];
    int *gbuf[NB];
    for (int i = 0; i < NB; i++) gbuf[i] = gen_prompt_one_image(m, p->ids[i], p->n_ids[i], p->pixels[i], p->image_pos[i], &gp[i]);
    gen_batch_generate(&b, NB, gp, o, got, n_got, sg);
    printf("    %-44s", what);
    for (int i = 0; i < NB; i++) {
        printf(" [%d: %d tok, stop %d]", p->n_ids[i], n_got[i], sg[i].stop);
        assert_int_equal(n_got[i], n_want[i]);
        assert_memory_equal(got[i], want[i], (size_t)n_want[i] * sizeof(int));
        assert_int_equal(sg[i].stop, sw[i].stop);
        assert_int_equal(sg[i].n_decode, sw[i].n_decode);
        assert_int_equal(sg[i].n_prompt, sw[i].n_prompt);
    }
    printf("\n");
    // the same GenBatch again, fewer conversations: the slots are reused
    gen_batch_generate(&b, 2, gp + 3, o, got, n_got, sg);
    for (int i = 0; i < NB; i++) free(gbuf[i]);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(n_got[i], n_want[i + 3]);
        assert_memory_equal(got[i], want[i + 3], (size_t)n_want[i + 3] * sizeof(int));
    }
    gen_batch_free(&b);
    int n0 = n_want[0];
    memcpy(first, want[0], (size_t)n0 * sizeof(int));
    for (int i = 0; i < NB; i++) {
        free(want[i]);
        free(got[i]);
    }
    return n0;
}

static void check_model(const FixtureModel *fm) {
    VlmFixture fx;
    vlm_fixture_open(&fx, fm->file);
    Vlm m;
    fixture_model_open(&m, kernels_cpu(), fm->llm, fm->ct, fm->conn_file, fm->lora, 1, 1, 1, 0.0f);
    Prompts p;
    make_prompts(&p, &fx, fx.V, 15);
    int longest = 150 + m.n_img_tokens, first[40];
    char what[160];

    GenOptions o = {.max_new_tokens = 40};
    snprintf(what, sizeof what, "%s greedy, 40 new tokens:", fm->llm);
    int n0 = compare(&m, &p, &o, longest + 40, 0, what, first);
    assert_true(n0 == 40);
    // prefill blocks of 16, 9 and 7 rows (7 = max_batch, the fewest a block has): prompts and
    // image slots cut across blocks, several short prompts in one block
    const int chunks[3] = {16, 9, 7};
    for (int c = 0; c < 3; c++) {
        snprintf(what, sizeof what, "%s greedy, prefill blocks of %d rows:", fm->llm, chunks[c]);
        compare(&m, &p, &o, longest + 40, chunks[c], what, first);
    }

    // conversation 0 stops on a token of its own answer; the others go on
    int stop = first[6];
    GenOptions os = {.max_new_tokens = 40, .stop_ids = &stop, .n_stop = 1};
    snprintf(what, sizeof what, "%s greedy, stop id %d:", fm->llm, stop);
    n0 = compare(&m, &p, &os, longest + 40, 0, what, first);
    assert_true(n0 <= 6);

    // the longest prompt fills its slot after 10 tokens, the others reach 40
    snprintf(what, sizeof what, "%s greedy, cache of %d positions:", fm->llm, longest + 10);
    compare(&m, &p, &o, longest + 10, 0, what, first);

    GenOptions ot = {.max_new_tokens = 30, .temperature = 1.0f, .top_p = 0.9f, .seed = 11};
    snprintf(what, sizeof what, "%s sampled (T 1, top-p 0.9, seed 11):", fm->llm);
    compare(&m, &p, &ot, longest + 30, 0, what, first);

    for (int i = 0; i < NB; i++) free(p.ids[i]);
    vlm_free(&m);
    vlm_fixture_close(&fx);
}

// Tiled prompts (issue 17): the InternVL tiled fixture's rows, each with its own grid and slot
// (<img> <IMG_CONTEXT> x tiles </img>, one or two images, 1 to 4 tiles), plus a text-only one,
// through batched generation and one at a time (gen_generate_prompt): the same greedy tokens,
// with the tower run per prompt (a Vlm holding one prompt's tiles) and over the tiles of the whole
// batch at once (one holding them all), and with prefill blocks cutting through the tiles
static void test_tiled_batch_equals_batch1(void **state) {
    (void)state;
    VlmFixture fx;
    vlm_fixture_open(&fx, "vlm_qwen2_internvl_tiled.safetensors");
    static char vdir[1024];
    snprintf(vdir, sizeof vdir, "%s", fixture_path("internvl_vision"));
    const int T = fx.T, S = fx.S, np = fx.B + 1;
    GenPrompt p[8];
    int starts[8][16], most = 0, all_tiles = 0;
    CHECK(np <= 8, "fixture rows %d", fx.B);
    for (int r = 0; r < fx.B; r++) {
        int n = 0, first = -1;
        for (int i = 0; i < fx.n_img; i++)
            if (fx.img_row[i] == r) {
                if (first < 0) first = i;
                CHECK(i == first + n && n < 16, "row %d's tiles are not consecutive", r);
                starts[r][n++] = fx.img_start[i];
            }
        p[r] = (GenPrompt){.ids = fx.ids + (size_t)r * T, .n = T, .pixels = n ? fx.pixels + (size_t)first * 3 * S * S : NULL,
                           .n_tiles = n, .tile_start = starts[r]};
        if (n > most) most = n;
        all_tiles += n;
    }
    p[fx.B] = (GenPrompt){.ids = fx.ids + 5, .n = 9};  // text only
    printf("    %d prompts of %d positions, %d tiles in all, at most %d in one\n", np, T, all_tiles, most);
    assert_true(most >= 2);
    const int new_tokens = 12, max_len = T + new_tokens;
    GenOptions o = {.max_new_tokens = new_tokens};
    int *want[8], n_want[8], *got[8], n_got[8];
    GenStats sw[8], sg[8];
    const int holds[2] = {most, all_tiles};  // the tower per prompt, over the whole batch
    for (int h = 0; h < 2; h++) {
        VlmSpec spec = fixture_vlm_spec("qwen2", CONNECTOR_INTERNVL_HF, "qwen2_lora", 1, T, holds[h], 0.0f);
        spec.vision_dir = vdir;
        spec.vision_layer = -1;
        Vlm m;
        fixture_model_load(&m, kernels_cpu(), &spec, "internvl_hf_qwen2.safetensors", "qwen2_lora");
        if (h == 0) {
            Generator g;
            gen_init(&g, &m, max_len, 0);
            for (int i = 0; i < np; i++) {
                want[i] = xmalloc((size_t)new_tokens * sizeof(int));
                got[i] = xmalloc((size_t)new_tokens * sizeof(int));
                n_want[i] = gen_generate_prompt(&g, &p[i], &o, want[i], &sw[i]);
            }
            gen_free(&g);
        }
        const int chunks[3] = {0, 7, 40};
        for (int c = 0; c < 3; c++) {
            GenBatch b;
            gen_batch_init(&b, &m, np, max_len, chunks[c]);
            gen_batch_generate(&b, np, p, &o, got, n_got, sg);
            printf("    tower over %2d tiles at most, prefill blocks of %3d rows:", holds[h], b.rows_cap);
            for (int i = 0; i < np; i++) {
                printf(" [%d tiles: %d tok]", p[i].n_tiles, n_got[i]);
                assert_int_equal(n_got[i], n_want[i]);
                assert_int_equal(sg[i].n_prompt, sw[i].n_prompt);
                assert_int_equal(sg[i].stop, sw[i].stop);
                assert_memory_equal(got[i], want[i], (size_t)n_want[i] * sizeof(int));
            }
            printf(" tokens equal batch 1's\n");
            gen_batch_free(&b);
        }
        vlm_free(&m);
    }
    for (int i = 0; i < np; i++) {
        free(want[i]);
        free(got[i]);
    }
    vlm_fixture_close(&fx);
}

static void test_batch_equals_batch1_qwen2(void **state) { check_model(&QWEN2_LORA); }
static void test_batch_equals_batch1_llama(void **state) { check_model(&LLAMA_RSLORA); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_equals_batch1_qwen2),
        cmocka_unit_test(test_batch_equals_batch1_llama),
        cmocka_unit_test(test_tiled_batch_equals_batch1),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
