// test_model_parity.c: the C model against Hugging Face transformers + peft on the fixtures of
// scripts/make_fixtures.py (CLIP: vision features, connector output, logits and loss to relative
// error < 1e-4) and scripts/make_family_fixtures.py (SigLIP, Idefics3 vision + connector: to
// 1e-5), connector and LoRA gradients < 1e-3 (fp32, CPU backend); and finite-difference checks
// of the whole model's loss with respect to connector and LoRA parameters.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/safetensors.h"
#include "common/util.h"
#include "model/vlm.h"
#include "tests/testlib.h"

// the fixture's model planned for the fixture's batch
static void model_open(Vlm *m, const VlmFixture *fx, const char *llm, ConnectorType ct, const char *conn_file,
                       const char *lora_dir, float dropout) {
    fixture_model_open(m, kernels_cpu(), llm, ct, conn_file, lora_dir, fx->B, fx->T, fx->n_img, dropout);
}

static void expect_close(const char *what, const float *got, const float *want, size_t n, double tol) {
    double e = rel_err(got, want, n);
    printf("    %-58s rel err %.2e (tol %.0e)\n", what, e, tol);
    if (!(e < tol)) fail_msg("%s: relative error %.3e above %.0e", what, e, tol);
}

// one tower fixture's features: pixel_values (2, 3, S, S) through the tower loaded at
// vision_layer (post-norm on or off) against the fixture tensor `want_name`
static void check_tower(const char *dir, const char *file, const char *want_name, int vision_layer, int post_norm,
                        int n_run, double tol) {
    StFile f;
    st_open_or_die(&f, fixture_path(file));
    size_t n, np;
    float *pix = fixture_f32(&f, "pixel_values", &np);
    float *want = fixture_f32(&f, want_name, &n);
    Vit v;
    const Kernels *k = kernels_cpu();
    vit_load(&v, k, fixture_path(dir), vision_layer, 2);
    vit_set_post_norm(&v, post_norm);
    assert_int_equal(v.n_run, n_run);
    assert_int_equal(np, (size_t)2 * 3 * v.cfg.image_size * v.cfg.image_size);
    assert_int_equal(n, (size_t)2 * v.cfg.n_patches * vit_feature_dim(&v.cfg));
    float *img = k->alloc(np * sizeof(float));
    k->upload_act(img, pix, np);
    float *feats = k->alloc(n * sizeof(float));
    vit_forward(&v, feats, img, 2);
    float *got = xmalloc(n * sizeof(float));
    k->download_act(got, feats, n);
    char what[128];
    snprintf(what, sizeof what, "%s %s", dir, want_name);
    expect_close(what, got, want, n, tol);
    k->free(img);
    k->free(feats);
    free(got);
    free(pix);
    free(want);
    vit_free(&v);
    st_close(&f);
}

// SiglipVisionModel (6x6 grid, no class token, gelu_pytorch_tanh): hidden_states[-2] and
// last_hidden_state (post_layernorm); Idefics3VisionTransformer's last_hidden_state (27x27, and
// 25x25 where its position ids are not 0..n-1)
static void test_siglip_features(void **state) {
    check_tower("siglip", "siglip_features.safetensors", "vision_features", -2, 0, 2, 1e-5);
    check_tower("siglip", "siglip_features.safetensors", "last_hidden_state", -1, 1, 3, 1e-5);
    check_tower("idefics3_vision", "vlm_llama_idefics3.safetensors", "vision_features", -1, 1, 2, 1e-5);
    // a 25x25 grid, where Idefics3's bucketized position ids skip rows (4, 4, 6, ...)
    check_tower("idefics3_vision_g25", "idefics3_g25_features.safetensors", "vision_features", -1, 1, 2, 1e-5);
}

static void post_norm_not_last(void *arg) {
    Vit v;
    vit_load(&v, kernels_cpu(), fixture_path(arg), -2, 1);
    vit_set_post_norm(&v, 1);
}

// the final norm is the last layer's, and CLIP's is not loaded
static void test_post_norm_refused(void **state) {
    expect_fatal(post_norm_not_last, "siglip", "vision_layer = -1");
    expect_fatal(post_norm_not_last, "clip", "clip vision tower has no final norm");
}

// CLIP (the tower of the VLM fixtures, and a whole CLIPModel directory): hidden_states[-2], CLS dropped
static void test_vision_features(void **state) {
    check_tower("clip", "vlm_qwen2_ldp.safetensors", "vision_features", -2, 0, 2, 1e-4);
    check_tower("clip_full", "clip_full_features.safetensors", "vision_features", -2, 0, 2, 1e-4);
}

// logits, loss and connector output to tol, and every gradient to 1e-3, of one fixture on the
// model m (freed)
static void check_vlm_model(Vlm *m, VlmFixture *fx, const char *fixture, double tol);
static void gradcheck_model(Vlm *m, VlmFixture *fx, float dropout, const char *what);

static void check_vlm(const char *fixture, const char *llm, ConnectorType ct, const char *conn_file, const char *lora_dir) {
    VlmFixture fx;
    vlm_fixture_open(&fx, fixture);
    Vlm m;
    model_open(&m, &fx, llm, ct, conn_file, lora_dir, 0.0f);
    check_vlm_model(&m, &fx, fixture, 1e-4);
}

// the Idefics3 fixtures' VLM: idefics3_vision (last_hidden_state) + pixel shuffle 3 + llama
static VlmSpec idefics3_spec(const VlmFixture *fx, const char *lora_dir, float dropout) {
    VlmSpec spec = fixture_vlm_spec("llama", CONNECTOR_IDEFICS3, lora_dir, fx->B, fx->T, fx->n_img, dropout);
    static char vdir[1024];
    snprintf(vdir, sizeof vdir, "%s", fixture_path("idefics3_vision"));
    spec.vision_dir = vdir;
    spec.vision_layer = -1;
    spec.connector_scale = 3;
    return spec;
}

static void check_idefics3(const char *fixture, const char *lora_dir) {
    VlmFixture fx;
    vlm_fixture_open(&fx, fixture);
    VlmSpec spec = idefics3_spec(&fx, lora_dir, 0.0f);
    Vlm m;
    fixture_model_load(&m, kernels_cpu(), &spec, "idefics3_llama.safetensors", lora_dir);
    assert_int_equal(m.n_img_tokens, 81);
    assert_int_equal(m.vit.post_norm, 1);
    check_vlm_model(&m, &fx, fixture, 1e-5);
}

// the InternVL fixtures' VLM: an InternViT tower (vision_layer -1, CLS dropped) + pixel shuffle
// 0.5 + mlp1 into qwen2; remote-code names (internvit, internvl) or native ones
static VlmSpec internvl_spec(const VlmFixture *fx, const char *tower, ConnectorType ct, const char *lora_dir) {
    VlmSpec spec = fixture_vlm_spec("qwen2", ct, lora_dir, fx->B, fx->T, fx->n_img, 0.0f);
    static char vdir[1024];
    snprintf(vdir, sizeof vdir, "%s", fixture_path(tower));
    spec.vision_dir = vdir;
    spec.vision_layer = -1;
    return spec;
}

static void check_internvl(const char *fixture, const char *lora_dir) {
    VlmFixture fx;
    vlm_fixture_open(&fx, fixture);
    VlmSpec spec = internvl_spec(&fx, "internvit", CONNECTOR_INTERNVL, lora_dir);
    Vlm m;
    fixture_model_load(&m, kernels_cpu(), &spec, "internvl_qwen2.safetensors", lora_dir);
    assert_int_equal(m.n_img_tokens, 25);
    check_vlm_model(&m, &fx, fixture, 1e-5);
}

// transformers' own InternVLForConditionalGeneration on tiles (scripts/make_tiled_fixtures.py):
// two images in one row (3 tiles, then 1) and 3 tiles in the other, <img> <IMG_CONTEXT>... </img>
// slots; svlm runs the tower over the 7 tiles and scatters each tile's rows at its start, the
// loader's layout: logits, loss and connector output to 1e-5, LoRA and projector gradients to 1e-3
static void test_qwen2_internvl_tiled(void **state) {
    (void)state;
    VlmFixture fx;
    vlm_fixture_open(&fx, "vlm_qwen2_internvl_tiled.safetensors");
    assert_int_equal(fx.n_img, 7);
    for (int t = 1; t < 3; t++) assert_int_equal(fx.img_start[t], fx.img_start[t - 1] + 25);  // one image's tiles back to back
    VlmSpec spec = internvl_spec(&fx, "internvl_vision", CONNECTOR_INTERNVL_HF, "qwen2_lora");
    Vlm m;
    fixture_model_load(&m, kernels_cpu(), &spec, "internvl_hf_qwen2.safetensors", "qwen2_lora");
    assert_int_equal(m.n_img_tokens, 25);
    check_vlm_model(&m, &fx, "vlm_qwen2_internvl_tiled.safetensors", 1e-5);
}

static void test_qwen2_internvl_lora(void **state) { check_internvl("vlm_qwen2_internvl.safetensors", "qwen2_lora"); }
static void test_qwen2_internvl_stage1(void **state) { check_internvl("vlm_qwen2_internvl_stage1.safetensors", NULL); }

// transformers' native naming of the same weights: the tower (internvl_vision) and the
// connector (internvl_hf) give the same features, connector output and logits
static void test_internvl_native_names(void **state) {
    check_tower("internvit", "vlm_qwen2_internvl.safetensors", "vision_features", -1, 0, 3, 1e-5);
    check_tower("internvl_vision", "vlm_qwen2_internvl.safetensors", "vision_features", -1, 0, 3, 1e-5);
    VlmFixture fx;
    vlm_fixture_open(&fx, "vlm_qwen2_internvl.safetensors");
    float *out[2], *logits[2], *grad[2];
    double loss[2];
    size_t n_out = 0, n_lg = (size_t)fx.B * fx.T * fx.V, n_grad = 0;
    for (int naming = 0; naming < 2; naming++) {
        VlmSpec spec = internvl_spec(&fx, naming ? "internvl_vision" : "internvit",
                                     naming ? CONNECTOR_INTERNVL_HF : CONNECTOR_INTERNVL, "qwen2_lora");
        Vlm m;
        fixture_model_load(&m, kernels_cpu(), &spec, naming ? "internvl_hf_qwen2.safetensors" : "internvl_qwen2.safetensors",
                           "qwen2_lora");
        logits[naming] = xmalloc(n_lg * sizeof(float));
        vlm_logits(&m, &fx.batch, logits[naming]);
        n_out = (size_t)fx.n_img * m.n_img_tokens * m.llm.cfg.hidden;
        out[naming] = xmalloc(n_out * sizeof(float));
        m.k->download_act(out[naming], m.img_emb, n_out);
        // the loss and every trainable gradient (connector in its naming's order, then LoRA)
        m.k->zero(m.train.grad, m.train.numel * sizeof(float));
        loss[naming] = vlm_forward_backward(&m, &fx.batch, 1.0f, NULL);
        n_grad = m.train.numel;
        grad[naming] = xmalloc(n_grad * sizeof(float));
        m.k->download(grad[naming], m.train.grad, n_grad * sizeof(float));
        vlm_free(&m);
    }
    float *want = fixture_f32(&fx.f, "logits", NULL);
    expect_close("internvl_hf + internvl_vision logits", logits[1], want, n_lg, 1e-5);
    // the same numbers in either naming: the layout is all that differs
    assert_memory_equal(out[0], out[1], n_out * sizeof(float));
    assert_memory_equal(logits[0], logits[1], n_lg * sizeof(float));
    assert_true(loss[0] == loss[1]);
    assert_memory_equal(grad[0], grad[1], n_grad * sizeof(float));
    for (int i = 0; i < 2; i++) free(out[i]), free(logits[i]), free(grad[i]);
    free(want);
    vlm_fixture_close(&fx);
}

// finite differences through mlp1's LayerNorm, Linears and LoRA
static void test_internvl_gradcheck(void **state) {
    VlmFixture fx;
    vlm_fixture_open(&fx, "vlm_qwen2_internvl.safetensors");
    VlmSpec spec = internvl_spec(&fx, "internvit", CONNECTOR_INTERNVL, "qwen2_lora");
    Vlm m;
    fixture_model_load(&m, kernels_cpu(), &spec, "internvl_qwen2.safetensors", "qwen2_lora");
    gradcheck_model(&m, &fx, 0.0f, "finite differences, internvl + qwen2");
}

// nanoVLM's names for the Idefics3 fixtures' tower and connector (nanovlm/: vision_encoder.*,
// fused qkv_proj, flat vit_* config; MP.proj.weight): the same features, connector output,
// logits, loss and gradients as under Idefics3's names, bit for bit, and so the transformers
// fixture's to 1e-5
static void test_nanovlm_names(void **state) {
    check_tower("nanovlm", "vlm_llama_idefics3.safetensors", "vision_features", -1, 1, 2, 1e-5);
    VlmFixture fx;
    vlm_fixture_open(&fx, "vlm_llama_idefics3.safetensors");
    size_t n_lg = (size_t)fx.B * fx.T * fx.V, n_out = 0, n_grad = 0;
    float *out[2], *logits[2], *grad[2];
    double loss[2];
    for (int naming = 0; naming < 2; naming++) {
        VlmSpec spec = idefics3_spec(&fx, "llama_lora", 0.0f);
        static char vdir[1024];
        snprintf(vdir, sizeof vdir, "%s", fixture_path(naming ? "nanovlm" : "idefics3_vision"));
        spec.vision_dir = vdir;
        spec.connector = naming ? CONNECTOR_NANOVLM : CONNECTOR_IDEFICS3;
        Vlm m;
        fixture_model_load(&m, kernels_cpu(), &spec, naming ? "nanovlm_llama.safetensors" : "idefics3_llama.safetensors",
                           "llama_lora");
        assert_string_equal(vit_type_name(&m.vit.cfg), naming ? "nanovlm" : "siglip");
        assert_int_equal(m.n_img_tokens, 81);
        logits[naming] = xmalloc(n_lg * sizeof(float));
        vlm_logits(&m, &fx.batch, logits[naming]);
        n_out = (size_t)fx.n_img * m.n_img_tokens * m.llm.cfg.hidden;
        out[naming] = xmalloc(n_out * sizeof(float));
        m.k->download_act(out[naming], m.img_emb, n_out);
        m.k->zero(m.train.grad, m.train.numel * sizeof(float));
        loss[naming] = vlm_forward_backward(&m, &fx.batch, 1.0f, NULL);
        int i = params_find(&m.train, naming ? "MP.proj.weight" : "model.connector.modality_projection.proj.weight");
        assert_true(i >= 0);
        n_grad = m.train.p[i].numel;
        grad[naming] = xmalloc(n_grad * sizeof(float));
        m.k->download(grad[naming], params_grad(&m.train, i), n_grad * sizeof(float));
        vlm_free(&m);
    }
    float *want = fixture_f32(&fx.f, "logits", NULL);
    expect_close("nanovlm + nanovlm connector logits", logits[1], want, n_lg, 1e-5);
    assert_memory_equal(out[0], out[1], n_out * sizeof(float));
    assert_memory_equal(logits[0], logits[1], n_lg * sizeof(float));
    assert_memory_equal(grad[0], grad[1], n_grad * sizeof(float));
    assert_true(loss[0] == loss[1]);
    for (int i = 0; i < 2; i++) free(out[i]), free(logits[i]), free(grad[i]);
    free(want);
    vlm_fixture_close(&fx);
}

static void test_llama_idefics3_lora(void **state) { check_idefics3("vlm_llama_idefics3.safetensors", "llama_lora"); }
static void test_llama_idefics3_stage1(void **state) { check_idefics3("vlm_llama_idefics3_stage1.safetensors", NULL); }

static void check_vlm_model(Vlm *m, VlmFixture *fx, const char *fixture, double tol) {
    const Kernels *k = m->k;
    char what[256];

    size_t n;
    float *want = fixture_f32(&fx->f, "logits", &n);
    assert_int_equal(n, (size_t)fx->B * fx->T * fx->V);
    float *got = xmalloc(n * sizeof(float));
    vlm_logits(m, &fx->batch, got);
    snprintf(what, sizeof what, "%s logits", fixture);
    expect_close(what, got, want, n, tol);
    free(want);
    free(got);

    want = fixture_f32(&fx->f, "connector_out", &n);
    got = xmalloc(n * sizeof(float));
    k->download_act(got, m->img_emb, n);
    snprintf(what, sizeof what, "%s connector output", fixture);
    expect_close(what, got, want, n, tol);
    free(want);
    free(got);

    k->zero(m->train.grad, m->train.numel * sizeof(float));
    int M = 0;
    for (int i = 0; i < fx->B * fx->T; i++) M += fx->targets[i] >= 0;
    int counted;
    double sum = vlm_forward_backward(m, &fx->batch, 1.0f / M, &counted);
    assert_int_equal(counted, M);
    float loss = (float)(sum / M);
    float *want_loss = fixture_f32(&fx->f, "loss", NULL);
    snprintf(what, sizeof what, "%s loss (%.6f vs %.6f)", fixture, loss, want_loss[0]);
    expect_close(what, &loss, want_loss, 1, tol);
    free(want_loss);

    int n_grads = 0;
    for (int t = 0; t < fx->f.n; t++) {
        const char *name = fx->f.tensors[t].name;
        if (strncmp(name, "grad.", 5) != 0) continue;
        int i = params_find(&m->train, name + 5);
        if (i < 0) fail_msg("%s: the model has no trainable tensor %s", fixture, name + 5);
        want = fixture_f32(&fx->f, name, &n);
        assert_int_equal(n, m->train.p[i].numel);
        got = xmalloc(n * sizeof(float));
        k->download(got, params_grad(&m->train, i), n * sizeof(float));
        double e = rel_err(got, want, n);
        if (!(e < 1e-3)) fail_msg("%s: gradient %s relative error %.3e above 1e-3", fixture, name + 5, e);
        free(want);
        free(got);
        n_grads++;
    }
    // every trainable tensor of the model has a reference gradient
    assert_int_equal(n_grads, m->train.n);
    printf("    %-58s all %d within 1e-3\n", "gradients", n_grads);
    vlm_free(m);
    vlm_fixture_close(fx);
}

static void test_qwen2_ldp_lora(void **state) {
    check_vlm("vlm_qwen2_ldp.safetensors", "qwen2", CONNECTOR_LDP, "ldp_qwen2.safetensors", "qwen2_lora");
}

static void test_qwen2_ldp_stage1(void **state) {
    check_vlm("vlm_qwen2_ldp_stage1.safetensors", "qwen2", CONNECTOR_LDP, "ldp_qwen2.safetensors", NULL);
}

static void test_llama_mlp2x_rslora(void **state) {
    check_vlm("vlm_llama_mlp2x.safetensors", "llama", CONNECTOR_MLP2X_GELU, "mlp2x_llama.safetensors", "llama_lora");
}

// the same model read from the sharded and the bf16/f16 copies
static void test_sharded_and_half_weights(void **state) {
    VlmFixture fx;
    vlm_fixture_open(&fx, "vlm_qwen2_ldp_stage1.safetensors");
    Vlm m;
    model_open(&m, &fx, "qwen2_sharded", CONNECTOR_LDP, "ldp_qwen2.safetensors", NULL, 0.0f);
    size_t n;
    float *want = fixture_f32(&fx.f, "logits", &n);
    float *got = xmalloc(n * sizeof(float));
    vlm_logits(&m, &fx.batch, got);
    expect_close("qwen2_sharded logits", got, want, n, 1e-4);
    vlm_free(&m);
    free(want);
    free(got);
    vlm_fixture_close(&fx);

    // bf16 and f16 files hold the rounded fp32 weights: each loaded value equals the rounding
    HfWeights full, half;
    hf_weights_open(&full, fixture_path("llama"));
    const char *dirs[2] = {"llama_bf16", "llama_f16"};
    for (int d = 0; d < 2; d++) {
        hf_weights_open(&half, fixture_path(dirs[d]));
        assert_int_equal(half.n, full.n);
        for (int t = 0; t < full.n; t++) {
            const StTensor *ft = full.tensors[t];
            size_t cnt = (size_t)st_numel(ft);
            float *a = xmalloc(cnt * sizeof(float)), *b = xmalloc(cnt * sizeof(float));
            hf_weights_read(&full, ft->name, ft->ndim, ft->shape, a);
            hf_weights_read(&half, ft->name, ft->ndim, ft->shape, b);
            for (size_t i = 0; i < cnt; i++) {
                float r = d == 0 ? bf16_to_f32(f32_to_bf16(a[i])) : f16_to_f32(f32_to_f16(a[i]));
                if (r != b[i]) fail_msg("%s %s[%zu]: %g, want %g", dirs[d], ft->name, i, b[i], r);
            }
            free(a);
            free(b);
        }
        hf_weights_close(&half);
    }
    hf_weights_close(&full);
}

// Central differences of the whole model's loss (fp32, summed in double) against the analytic
// gradient, on a sample of connector and LoRA elements. The error was measured to fall as h^2
// from h = 1e-2 (2e-4 without dropout, 9e-3 with LoRA dropout 0.3, whose 1/(1-p) scaling raises
// the curvature) to h = 2.5e-3 (1e-4 and 5e-4), where fp32 rounding (~1e-7 / h of an O(1) loss)
// still stays below; 5e-3 leaves a tenfold margin.

static void gradcheck(float dropout) {
    VlmFixture fx;
    vlm_fixture_open(&fx, "vlm_qwen2_ldp.safetensors");
    Vlm m;
    model_open(&m, &fx, "qwen2", CONNECTOR_LDP, "ldp_qwen2.safetensors", "qwen2_lora", dropout);
    gradcheck_model(&m, &fx, dropout, dropout > 0 ? "finite differences, LoRA dropout 0.3" : "finite differences of the loss");
}

// the same on the Idefics3 VLM: the pixel-shuffle connector's Linear and LoRA
static void test_idefics3_gradcheck(void **state) {
    VlmFixture fx;
    vlm_fixture_open(&fx, "vlm_llama_idefics3.safetensors");
    VlmSpec spec = idefics3_spec(&fx, "llama_lora", 0.0f);
    Vlm m;
    fixture_model_load(&m, kernels_cpu(), &spec, "idefics3_llama.safetensors", "llama_lora");
    gradcheck_model(&m, &fx, 0.0f, "finite differences, idefics3 + llama");
}

static void gradcheck_model(Vlm *m, VlmFixture *fx, float dropout, const char *what) {
    const Kernels *k = m->k;
    if (dropout > 0) {  // the masks are a function of the seed: the loss stays a function of the weights
        double off = vlm_forward_backward(m, &fx->batch, 0.0f, NULL);
        vlm_set_training(m, 1, 77);
        double on = vlm_forward_backward(m, &fx->batch, 0.0f, NULL);
        assert_true(on != off);
        assert_true(vlm_forward_backward(m, &fx->batch, 0.0f, NULL) == on);
    }
    int M = 0;
    for (int i = 0; i < fx->B * fx->T; i++) M += fx->targets[i] >= 0;
    k->zero(m->train.grad, m->train.numel * sizeof(float));
    vlm_forward_backward(m, &fx->batch, 1.0f / M, NULL);

    enum { PER_TENSOR = 3 };
    int ns = m->train.n * PER_TENSOR;
    float *fd = xmalloc(ns * sizeof(float)), *an = xmalloc(ns * sizeof(float));
    uint64_t rs = 12345;
    const float h = 2.5e-3f;
    for (int t = 0; t < m->train.n; t++)
        for (int j = 0; j < PER_TENSOR; j++) {
            size_t i = m->train.p[t].offset + test_rand_u64(&rs) % m->train.p[t].numel;
            float *w = m->train.master + i;
            float w0 = *w;
            *w = w0 + h;
            params_sync(&m->train);
            double lp = vlm_forward_backward(m, &fx->batch, 0.0f, NULL) / M;
            *w = w0 - h;
            params_sync(&m->train);
            double lm = vlm_forward_backward(m, &fx->batch, 0.0f, NULL) / M;
            *w = w0;
            params_sync(&m->train);
            fd[t * PER_TENSOR + j] = (float)((lp - lm) / (2 * h));
            an[t * PER_TENSOR + j] = m->train.grad[i];
        }
    double e = rel_err(an, fd, ns);
    printf("    %-58s rel err %.2e over %d elements\n", what, e, ns);
    if (!(e < 5e-3)) {
        for (int i = 0; i < ns; i++) print_error("  %s: analytic %g fd %g\n", m->train.p[i / PER_TENSOR].name, an[i], fd[i]);
        fail_msg("model gradient check: relative error %.3e", e);
    }
    free(fd);
    free(an);
    vlm_free(m);
    vlm_fixture_close(fx);
}

// LoRA on some projections only: q and v (a part of the fused q/k/v group, their A's side by
// side), up (a part of gate/up), none on o and down. The same model as the fixture's full adapter
// with the other projections' B set to zero, which runs every projection's LoRA path: the losses
// and the shared tensors' gradients must agree (with and without dropout, whose masks are per
// layer and projection in both). Catches a LoRA product added into another member's columns,
// which a finite-difference check alone would not (forward and backward would agree on it).
static void lora_subset(float dropout) {
    VlmFixture fx;
    vlm_fixture_open(&fx, "vlm_qwen2_ldp.safetensors");
    Vlm full, part;
    model_open(&full, &fx, "qwen2", CONNECTOR_LDP, "ldp_qwen2.safetensors", "qwen2_lora", dropout);
    VlmSpec spec = fixture_vlm_spec("qwen2", CONNECTOR_LDP, "qwen2_lora", fx.B, fx.T, fx.n_img, dropout);
    spec.lora.targets = (1u << PROJ_Q) | (1u << PROJ_V) | (1u << PROJ_UP);
    vlm_init(&part, kernels_cpu(), &spec);
    int unmatched;
    params_load_file(&part.train, fixture_path("ldp_qwen2.safetensors"), "", &unmatched);
    char path[512];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", fixture_path("qwen2_lora"));
    int n = params_load_file(&part.train, path, "base_model.model.", &unmatched);
    assert_int_equal(n, part.llm.cfg.layers * 3 * 2);
    for (int i = 0; i < full.train.n; i++) {  // the projections without LoRA in `part`: B = 0 in `full`
        const char *name = full.train.p[i].name;
        if (!strstr(name, ".lora_B.") || params_find(&part.train, name) >= 0) continue;
        float *z = xcalloc(full.train.p[i].numel, sizeof(float));
        params_upload(&full.train, i, z);
        free(z);
    }
    Vlm *ms[2] = {&full, &part};
    double loss[2];
    for (int j = 0; j < 2; j++) {
        if (dropout > 0) vlm_set_training(ms[j], 1, 77);
        ms[j]->k->zero(ms[j]->train.grad, ms[j]->train.numel * sizeof(float));
        loss[j] = vlm_forward_backward(ms[j], &fx.batch, 1.0f, NULL);
    }
    printf("    LoRA on q, v, up only%s: loss %.9g, full adapter with the others' B = 0: %.9g\n",
           dropout > 0 ? " (dropout 0.3)" : "", loss[1], loss[0]);
    if (!(fabs(loss[0] - loss[1]) <= 1e-5 * fabs(loss[0]))) fail_msg("losses differ: %.9g vs %.9g", loss[1], loss[0]);
    for (int i = 0; i < part.train.n; i++) {
        int j = params_find(&full.train, part.train.p[i].name);
        assert_true(j >= 0);
        char what[PARAM_NAME_MAX + 16];
        snprintf(what, sizeof what, "grad %s", part.train.p[i].name);
        double e = rel_err(params_grad(&part.train, i), params_grad(&full.train, j), part.train.p[i].numel);
        if (!(e < 1e-4)) fail_msg("%s: relative error %.3e", what, e);
    }
    vlm_free(&full);
    vlm_free(&part);
    vlm_fixture_close(&fx);
}
static void test_lora_subset(void **state) {
    lora_subset(0.0f);
    lora_subset(0.3f);
}

// The LLM runs each row only up to its last labelled position (vlm.c upload_batch): rows of
// different lengths become compact rows, attention in the B x T layout (LlmAttend.pad). A batch
// whose rows end at different places must give the loss and gradients of its rows run one at a
// time (each alone: no compaction), summed.
static void test_compact_rows(void **state) {
    VlmFixture fx;
    vlm_fixture_open(&fx, "vlm_qwen2_ldp.safetensors");
    assert_true(fx.B >= 2);
    int B = fx.B, T = fx.T, S = fx.S, cut = 0;
    int *targets = xmalloc((size_t)B * T * sizeof(int));
    memcpy(targets, fx.targets, (size_t)B * T * sizeof(int));
    for (int t = T - 1; t >= 0 && cut < T / 3; t--) {  // row 0 ends a third earlier: its last labels dropped
        cut++;
        targets[t] = -1;
    }
    VlmBatch all = fx.batch;
    all.targets = targets;
    Vlm m;
    model_open(&m, &fx, "qwen2", CONNECTOR_LDP, "ldp_qwen2.safetensors", "qwen2_lora", 0.0f);
    size_t np = m.train.numel;
    m.k->zero(m.train.grad, np * sizeof(float));
    int n_all = 0, n_rows = 0;
    double loss = vlm_forward_backward(&m, &all, 1.0f, &n_all);
    int rows_all = m.n_rows;
    assert_true(m.at.pad != NULL && rows_all < B * T);  // compact rows did run
    float *g_all = test_copyv(m.train.grad, np);
    m.k->zero(m.train.grad, np * sizeof(float));
    double sum = 0;
    for (int r = 0; r < B; r++) {
        int img[8], start[8], n = 0;
        float *px = xmalloc((size_t)fx.n_img * 3 * S * S * sizeof(float));
        for (int i = 0; i < fx.n_img; i++)
            if (fx.img_row[i] == r) {
                memcpy(px + (size_t)n * 3 * S * S, fx.pixels + (size_t)i * 3 * S * S, (size_t)3 * S * S * sizeof(float));
                img[n] = 0, start[n] = fx.img_start[i], n++;
            }
        VlmBatch one = {.B = 1, .T = T, .ids = fx.ids + (size_t)r * T, .targets = targets + (size_t)r * T, .n_img = n,
                        .pixels = px, .img_row = img, .img_start = start};
        int cnt = 0;
        sum += vlm_forward_backward(&m, &one, 1.0f, &cnt);
        assert_true(m.at.pad == NULL);
        n_rows += cnt;
        free(px);
    }
    printf("    rows cut at %d / %d positions: %d compact rows of %d; loss %.9g, rows alone %.9g\n", T - cut, T,
           rows_all, B * T, loss, sum);
    assert_int_equal(n_all, n_rows);
    if (!(fabs(loss - sum) <= 1e-6 * fabs(sum))) fail_msg("loss %.9g, rows alone %.9g", loss, sum);
    expect_close("gradients, compact batch vs rows alone", g_all, m.train.grad, np, 1e-5);
    free(g_all);
    free(targets);
    vlm_free(&m);
    vlm_fixture_close(&fx);
}

static void test_model_gradcheck(void **state) { gradcheck(0.0f); }
static void test_model_gradcheck_lora_dropout(void **state) { gradcheck(0.3f); }

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vision_features),
        cmocka_unit_test(test_qwen2_ldp_lora),
        cmocka_unit_test(test_qwen2_ldp_stage1),
        cmocka_unit_test(test_llama_mlp2x_rslora),
        cmocka_unit_test(test_sharded_and_half_weights),
        cmocka_unit_test(test_model_gradcheck),
        cmocka_unit_test(test_model_gradcheck_lora_dropout),
        cmocka_unit_test(test_lora_subset),
        cmocka_unit_test(test_siglip_features),
        cmocka_unit_test(test_post_norm_refused),
        cmocka_unit_test(test_llama_idefics3_lora),
        cmocka_unit_test(test_llama_idefics3_stage1),
        cmocka_unit_test(test_idefics3_gradcheck),
        cmocka_unit_test(test_nanovlm_names),
        cmocka_unit_test(test_qwen2_internvl_lora),
        cmocka_unit_test(test_qwen2_internvl_tiled),
        cmocka_unit_test(test_qwen2_internvl_stage1),
        cmocka_unit_test(test_internvl_native_names),
        cmocka_unit_test(test_internvl_gradcheck),
        cmocka_unit_test(test_compact_rows),
    };
    // a pattern (fnmatch, "!" to exclude) runs some of them
    struct CMUnitTest sel[sizeof tests / sizeof tests[0]];
    size_t n = test_select(sel, tests, sizeof tests / sizeof tests[0], argc > 1 ? argv[1] : NULL);
    return _cmocka_run_group_tests("test_model_parity", sel, n, NULL, NULL);
}
