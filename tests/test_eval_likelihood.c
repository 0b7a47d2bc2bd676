// test_eval_likelihood.c: --mc-score likelihood's log-likelihoods (eval/bench_run.c:
// bench_option_logprobs: one cached prefill of the question, then each option over the cache)
// equal transformers + peft's, computed over the whole prompt + option in one pass, to 1e-5, on
// the parity fixtures' VLMs (qwen2 + ldp + LoRA; llama + mlp2x_gelu + rsLoRA), with the image
// first, inside the prompt, or absent, and options of 1 to 6 tokens
// (scripts/make_likelihood_fixtures.py, tests/fixtures/eval/likelihood.json).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "eval/bench_run.h"
#include "tests/testlib.h"

static int *int_list(const cJSON *a, int *n) {
    *n = cJSON_GetArraySize(a);
    int *v = xmalloc((size_t)(*n + 1) * sizeof(int)), i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) v[i++] = e->valueint;
    return v;
}

static void test_likelihood_matches_transformers(void **state) {
    cJSON *root = fixture_json("eval/likelihood.json");
    const cJSON *models = fixture_item(root, "models"), *mj;
    double worst = 0;
    int checked = 0;
    cJSON_ArrayForEach(mj, models) {
        const char *name = fixture_item(mj, "name")->valuestring;
        ConnectorType ct = connector_type_parse(fixture_item(mj, "connector_type")->valuestring);
        Vlm m;
        fixture_model_open(&m, kernels_cpu(), fixture_item(mj, "llm")->valuestring, ct,
                           fixture_item(mj, "connector")->valuestring, fixture_item(mj, "lora")->valuestring, 1, 1, 1, 0.0f);
        assert_int_equal(m.n_img_tokens, fixture_item(mj, "image_tokens")->valueint);
        VlmFixture fx;
        vlm_fixture_open(&fx, fixture_item(mj, "vlm_fixture")->valuestring);
        int V = m.llm.cfg.vocab;
        Generator g;
        gen_init(&g, &m, 64, 0);
        float *all = xmalloc((size_t)8 * V * sizeof(float)), *base = xmalloc((size_t)V * sizeof(float));
        const cJSON *cj;
        cJSON_ArrayForEach(cj, fixture_item(mj, "cases")) {
            int n_ids, n_opt = cJSON_GetArraySize(fixture_item(cj, "options"));
            int *ids = int_list(fixture_item(cj, "prompt"), &n_ids);
            int image = fixture_item(cj, "image")->valueint, image_pos = fixture_item(cj, "image_pos")->valueint;
            const float *px = image >= 0 ? fx.pixels + (size_t)image * 3 * fx.S * fx.S : NULL;
            int *opt[26], n_o[26];
            double logp[26], want[26];
            const cJSON *oj;
            int j = 0;
            cJSON_ArrayForEach(oj, fixture_item(cj, "options")) {
                opt[j] = int_list(oj, &n_o[j]);
                want[j] = cJSON_GetArrayItem(fixture_item(cj, "logp"), j)->valuedouble;
                j++;
            }
            GenPrompt gp;
            int *gbuf = gen_prompt_one_image(&m, ids, n_ids, px, image_pos, &gp);
            int P = bench_option_logprobs(&g, &gp, (const int *const *)opt, n_o, n_opt, all, base, logp, NULL);
            free(gbuf);
            assert_int_equal(P, n_ids + (px ? m.n_img_tokens : 0));
            int best = 0, best_want = 0;
            for (j = 0; j < n_opt; j++) {
                double d = fabs(logp[j] - want[j]);
                if (d > worst) worst = d;
                if (d > 1e-5)
                    fail_msg("%s, %d-token prompt%s, option %d (%d tokens): log-likelihood %.9f, transformers %.9f (diff %.2e)",
                             name, n_ids, px ? " + image" : "", j, n_o[j], logp[j], want[j], d);
                if (logp[j] > logp[best]) best = j;
                if (want[j] > want[best_want]) best_want = j;
                checked++;
            }
            assert_int_equal(best, best_want);
            for (j = 0; j < n_opt; j++) free(opt[j]);
            free(ids);
        }
        free(all);
        free(base);
        gen_free(&g);
        vlm_fixture_close(&fx);
        vlm_free(&m);
    }
    printf("    %d option log-likelihoods equal transformers + peft's (%s): largest difference %.2e\n", checked,
           fixture_item(fixture_item(root, "versions"), "transformers")->valuestring, worst);
    cJSON_Delete(root);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_likelihood_matches_transformers),
    };
    struct CMUnitTest chosen[sizeof tests / sizeof tests[0]];
    size_t n = test_select(chosen, tests, sizeof tests / sizeof tests[0], argc > 1 ? argv[1] : NULL);
    return _cmocka_run_group_tests("tests", chosen, n, NULL, NULL);
}
