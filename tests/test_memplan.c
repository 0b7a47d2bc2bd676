// test_memplan.c: the memory plan (model/memplan.h) against what setup really allocates on the
// CPU backend, the largest-micro-batch search against a brute-force scan, and size parsing.
// The CUDA backend's plan (bf16 buffers, scratch) is checked the same way by tests/gpu.
#include <stdio.h>
#include <string.h>

#include "common/config.h"
#include "kernels/kernels.h"
#include "model/memplan.h"
#include "testlib.h"

typedef struct {
    const char *llm, *lora_dir;
    ConnectorType ct;
    int B, T, images;
    float dropout;
    const char *vision;  // NULL: the clip fixture
    int vision_layer, scale;
} Case;

static const Case cases[] = {
    {"qwen2", NULL, CONNECTOR_LDP, 2, 40, 2, 0.0f, NULL, 0, 0},             // stage 1
    {"qwen2", "qwen2_lora", CONNECTOR_LDP, 3, 57, 3, 0.0f, NULL, 0, 0},     // stage 2
    {"llama", "llama_lora", CONNECTOR_MLP2X_GELU, 2, 33, 2, 0.3f, NULL, 0, 0},  // LoRA dropout buffers
    {"qwen2", "qwen2_lora", CONNECTOR_LDP, 2, 64, 6, 0.0f, NULL, 0, 0},     // packing: several images per row
    // no class token (SigLIP / Idefics3 vision, post-norm, pixel shuffle 3) and InternViT + mlp1
    {"llama", "llama_lora", CONNECTOR_IDEFICS3, 2, 97, 2, 0.0f, "idefics3_vision", -1, 3},
    {"qwen2", "qwen2_lora", CONNECTOR_INTERNVL, 2, 40, 2, 0.0f, "internvit", -1, 0},
};

static VlmSpec case_spec(const Case *c) {
    VlmSpec s = fixture_vlm_spec(c->llm, c->ct, c->lora_dir, c->B, c->T, c->images, c->dropout);
    static char vdir[1024];
    if (c->vision) {
        snprintf(vdir, sizeof vdir, "%s", fixture_path(c->vision));
        s.vision_dir = vdir;
        s.vision_layer = c->vision_layer;
        s.connector_scale = c->scale;
    }
    return s;
}

// The plan is what vlm_init_reserved then holds, to the byte, and its parts add up.
static void test_plan_equals_setup(void **state) {
    (void)state;
    const Kernels *k = kernels_cpu();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        VlmSpec spec = case_spec(&cases[i]);
        size_t before, after;
        k->memory(&before, NULL);
        MemPlan p;
        vlm_plan(&p, k, &spec);
        k->memory(&after, NULL);
        assert_int_equal(after, before);  // the dry run holds nothing
        assert_true(p.frozen_vision > 0 && p.frozen_llm > 0 && p.trainable > 0 && p.activations > 0);
        assert_int_equal(p.total, p.frozen_vision + p.frozen_llm + p.trainable + p.activations + p.workspace);

        Vlm m;
        vlm_init_reserved(&m, k, &spec);
        k->memory(&after, NULL);
        printf("    case %zu: plan %zu bytes (frozen %zu + %zu, trainable %zu, activations %zu, workspace %zu), "
               "setup holds %zu\n", i, p.total, p.frozen_vision, p.frozen_llm, p.trainable, p.activations, p.workspace,
               after - before);
        assert_int_equal(after - before, p.total);
        assert_int_equal(p.frozen_vision, params_bytes(&m.vit.w));
        assert_int_equal(p.frozen_llm, params_bytes(&m.llm.w));
        size_t n = 0;
        for (int j = 0; j < m.train.n; j++) n += m.train.p[j].numel;
        assert_int_equal(p.n_trainable, n);
        // the CPU keeps no compute copy: 4 fp32 arrays per trainable element (plus alignment padding)
        assert_true(p.trainable >= 16 * n && p.trainable < 16 * (n + 8 * (size_t)m.train.n + 1));
        vlm_free(&m);
        KernelsWork none;  // the ops' scratch outlives the model (the CPU's attention backward
        memset(&none, 0, sizeof none);  // chunks at T = 97): dropped, as the next plan starts clean
        k->workspace_reserve(&none);
        k->memory(&after, NULL);
        assert_int_equal(after, before);
    }
}

// Activations grow with the micro-batch; the parameters do not.
static void test_plan_scales_with_batch(void **state) {
    (void)state;
    const Kernels *k = kernels_cpu();
    VlmSpec spec = case_spec(&cases[1]);
    MemPlan p1, p2, p4;
    spec.max_B = spec.max_images = 1;
    vlm_plan(&p1, k, &spec);
    spec.max_B = spec.max_images = 2;
    vlm_plan(&p2, k, &spec);
    spec.max_B = spec.max_images = 4;
    vlm_plan(&p4, k, &spec);
    assert_int_equal(p1.frozen_llm, p4.frozen_llm);
    assert_int_equal(p1.trainable, p4.trainable);
    assert_true(p1.activations < p2.activations && p2.activations < p4.activations);
    // linear in B but for the logits chunk, which is fixed: equal steps from 1 to 2 and 2 to 4 per sample
    assert_int_equal(2 * (p2.activations - p1.activations), p4.activations - p2.activations);
}

// The bisection finds the same largest micro-batch as trying every size.
static void test_largest_batch(void **state) {
    (void)state;
    const Kernels *k = kernels_cpu();
    VlmSpec spec = case_spec(&cases[3]);  // 3 images per row: max_images scales along
    size_t need[41];
    for (int b = 1; b <= 40; b++) {
        VlmSpec s = spec;
        s.max_B = b;
        s.max_images = 3 * b;
        MemPlan p;
        vlm_plan(&p, k, &s);
        need[b] = p.total + p.margin;
        assert_true(b == 1 || need[b] > need[b - 1]);
    }
    size_t budgets[] = {need[1] - 1, need[1], need[7] + 1, need[13] - 1, need[40], need[40] * 2};
    for (size_t i = 0; i < sizeof budgets / sizeof budgets[0]; i++) {
        int want = 0;
        for (int b = 1; b <= 40; b++)
            if (need[b] <= budgets[i]) want = b;
        int got = vlm_plan_largest_batch(k, &spec, budgets[i], 40);
        printf("    budget %zu: largest %d (brute force %d)\n", budgets[i], got, want);
        assert_int_equal(got, want);
    }
}

static void test_parse_size(void **state) {
    (void)state;
    struct { const char *s; size_t v; } ok[] = {
        {"123", 123}, {"1B", 1}, {"2KB", 2000}, {"1.5GB", 1500000000}, {"80GiB", (size_t)80 << 30},
        {"512MiB", (size_t)512 << 20}, {"4K", 4096}, {"1T", (size_t)1 << 40}, {"2 GiB", (size_t)2 << 30},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        size_t v = 0;
        assert_true(config_parse_size(ok[i].s, &v));
        assert_int_equal(v, ok[i].v);
    }
    const char *bad[] = {"", "GiB", "12XB", "-1GiB", "1e30", "nan", "12 G iB", "1GiBs"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t v = 7;
        assert_false(config_parse_size(bad[i], &v));
        assert_int_equal(v, 7);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_equals_setup),
        cmocka_unit_test(test_plan_scales_with_batch),
        cmocka_unit_test(test_largest_batch),
        cmocka_unit_test(test_parse_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
