// test_gen_batch.c: batched generation (model/gen_batch.h: prompts prefilled together, decode
// steps batched) against the batch-1 path (gen_generate), conversation by conversation, on the
// parity fixtures' models (qwen2 + LoRA + ldp, llama + rsLoRA + mlp2x) on the CPU: prompts of 3
// to 150 tokens, with and without images, in one batch; greedy and sampled (same seed) tokens
// identical, and the same stop reasons and counts, when every conversation runs to
// max_new_tokens, when one stops on its own stop id while the others go on, when the longest
// fills its cache slot first, and with prefill blocks of 512, 16, 9 and 7 rows (prompts and
// image slots cut across blocks).
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
    gen_batch_generate(&b, NB, (const int *const *)p->ids, p->n_ids, p->pixels, p->image_pos, o, got, n_got, sg);
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
    gen_batch_generate(&b, 2, (const int *const *)p->ids + 3, p->n_ids + 3, p->pixels + 3, p->image_pos + 3, o, got, n_got, sg);
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

static void test_batch_equals_batch1_qwen2(void **state) { check_model(&QWEN2_LORA); }
static void test_batch_equals_batch1_llama(void **state) { check_model(&LLAMA_RSLORA); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_equals_batch1_qwen2),
        cmocka_unit_test(test_batch_equals_batch1_llama),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
