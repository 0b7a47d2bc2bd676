// test_modules.c: the facts the vision tower and the connector state about themselves (token
// counts, names, declared tensors and their groups, class token, weights bound by name), and
// that the optimizer groups tensors by their tag rather than their name.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "model/connector.h"
#include "model/params.h"
#include "model/vit.h"
#include "model/vlm.h"
#include "tests/testlib.h"
#include "trainer/optimizer.h"

static char tmp[1024];

// ------------------------------------------------------------------------------ the connector

// ldp pools 2x2 (grid^2 / 4 tokens), mlp2x_gelu keeps every patch (grid^2), at the grids of
// CLIP-L/14 at 224 (16), 336 (24) and 448 (32), of the fixtures (6) and a small one (2)
static void test_connector_tokens(void **state) {
    const int grids[] = {2, 6, 16, 24, 32};
    const int ldp[] = {1, 9, 64, 144, 256}, mlp[] = {4, 36, 256, 576, 1024};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(connector_tokens(CONNECTOR_LDP, 0, grids[i]), ldp[i]);
        assert_int_equal(connector_tokens(CONNECTOR_MLP2X_GELU, 0, grids[i]), mlp[i]);
        assert_int_equal(connector_tokens(CONNECTOR_IDEFICS3, 0, grids[i]), ldp[i]);  // scale_factor 2 by default
    }
    assert_int_equal(connector_tokens(CONNECTOR_MLP2X_GELU, 0, 7), 49);  // any grid suits mlp2x_gelu
    assert_int_equal(connector_tokens(CONNECTOR_LDP, 2, 6), 9);  // its own scale may be stated
    // Idefics3 / SmolVLM: SigLIP-so400m/14 at 384 (27) by 3, SigLIP-base/16 at 512 (32) by 4
    assert_int_equal(connector_tokens(CONNECTOR_IDEFICS3, 3, 27), 81);
    assert_int_equal(connector_tokens(CONNECTOR_IDEFICS3, 4, 32), 64);
    assert_int_equal(connector_tokens(CONNECTOR_IDEFICS3, 3, 6), 4);
    // nanoVLM: VLMConfig's factor 4 by default (SigLIP2-B/16 at 512: 32 -> 64), nanoVLM-222M's 2 on 14
    assert_int_equal(connector_tokens(CONNECTOR_NANOVLM, 0, 32), 64);
    assert_int_equal(connector_tokens(CONNECTOR_NANOVLM, 2, 14), 49);
}

static void ldp_tokens_7(void *arg) { connector_tokens(CONNECTOR_LDP, 0, 7); }
static void idefics3_by4_on_6(void *arg) { connector_tokens(CONNECTOR_IDEFICS3, 4, 6); }
static void ldp_by3(void *arg) { connector_tokens(CONNECTOR_LDP, 3, 6); }
static void idefics3_by0(void *arg) { connector_tokens(CONNECTOR_IDEFICS3, -1, 6); }

// one line each: a grid the scale does not divide, a scale for a type with a fixed one
static void test_connector_odd_grid_refused(void **state) {
    expect_fatal(ldp_tokens_7, NULL, "connector ldp", "even patch grid", "7x7");
    expect_fatal(idefics3_by4_on_6, NULL, "connector idefics3", "divisible by 4", "6x6");
    expect_fatal(ldp_by3, NULL, "connector ldp", "fixed 2x2", "pixel_shuffle = 3");
    expect_fatal(idefics3_by0, NULL, "connector idefics3", "pixel_shuffle = -1");
}

// every type has its own name, and the name parses back to the type
static void test_connector_names(void **state) {
    for (int t = 0; t < N_CONNECTOR_TYPES; t++) {
        const char *name = connector_type_name((ConnectorType)t);
        assert_int_equal(connector_type_parse(name), t);
        for (int u = 0; u < t; u++) assert_string_not_equal(name, connector_type_name((ConnectorType)u));
    }
    assert_string_equal(connector_type_name(CONNECTOR_LDP), "ldp");
    assert_string_equal(connector_type_name(CONNECTOR_MLP2X_GELU), "mlp2x_gelu");
    assert_string_equal(connector_type_name(CONNECTOR_IDEFICS3), "idefics3");
}

static void parse_bogus(void *arg) { connector_type_parse("pixel_shufle"); }

static void test_connector_unknown_refused(void **state) {
    expect_fatal(parse_bogus, NULL, "\"pixel_shufle\"", "ldp", "mlp2x_gelu");
}

// the declared tensors: LLaVA / MobileVLM / Idefics3 names and shapes, every one in the
// connector group, and the set's declaration group back to frozen afterwards
static void test_connector_declaration(void **state) {
    const int in = 40, out = 32;
    for (int s = 2; s <= 3; s++) {  // Idefics3: one Linear(s*s*Cv, H) without bias
        ParamSet ps;
        params_init(&ps, kernels_cpu(), 1);
        ConnectorParams ix;
        connector_declare_params(&ps, CONNECTOR_IDEFICS3, s, in, out, &ix);
        assert_int_equal(ps.n, 1);
        assert_string_equal(ps.p[ix.w1].name, "model.connector.modality_projection.proj.weight");
        assert_int_equal(ps.p[ix.w1].shape[0], out);
        assert_int_equal(ps.p[ix.w1].shape[1], s * s * in);
        assert_int_equal(ps.p[0].group, PARAM_GROUP_CONNECTOR);
        assert_int_equal(ix.b1, -1);
        assert_int_equal(ix.w2, -1);
        assert_int_equal(params_group_numel(&ps, PARAM_GROUP_CONNECTOR), (size_t)s * s * in * out);
        params_free(&ps);
    }
    {  // nanoVLM: the same Linear as MP.proj.weight
        ParamSet ps;
        params_init(&ps, kernels_cpu(), 1);
        ConnectorParams ix;
        connector_declare_params(&ps, CONNECTOR_NANOVLM, 0, in, out, &ix);
        assert_int_equal(ps.n, 1);
        assert_string_equal(ps.p[ix.w1].name, "MP.proj.weight");
        assert_int_equal(ps.p[ix.w1].shape[1], 16 * in);
        assert_int_equal(ps.p[0].group, PARAM_GROUP_CONNECTOR);
        params_free(&ps);
    }
    // InternVL: LayerNorm(4Cv), Linear(4Cv, H), Linear(H, H) as mlp1.{0,1,3} or the native names
    for (int t = CONNECTOR_INTERNVL; t <= CONNECTOR_INTERNVL_HF; t++) {
        ParamSet ps;
        params_init(&ps, kernels_cpu(), 1);
        ConnectorParams ix;
        connector_declare_params(&ps, (ConnectorType)t, 0, in, out, &ix);
        int hf = t == CONNECTOR_INTERNVL_HF;
        assert_int_equal(ps.n, 6);
        assert_string_equal(ps.p[ix.lnw].name, hf ? "model.multi_modal_projector.layer_norm.weight" : "mlp1.0.weight");
        assert_string_equal(ps.p[ix.w1].name, hf ? "model.multi_modal_projector.linear_1.weight" : "mlp1.1.weight");
        assert_string_equal(ps.p[ix.b2].name, hf ? "model.multi_modal_projector.linear_2.bias" : "mlp1.3.bias");
        assert_int_equal(ps.p[ix.lnb].shape[0], 4 * in);
        assert_int_equal(ps.p[ix.w1].shape[1], 4 * in);
        assert_int_equal(ps.p[ix.w1].shape[0], out);
        assert_int_equal(ps.p[ix.w2].shape[1], out);
        assert_int_equal(ix.cw, -1);
        size_t want = 8 * (size_t)in + (size_t)out * 4 * in + out + (size_t)out * out + out;
        assert_int_equal(params_group_numel(&ps, PARAM_GROUP_CONNECTOR), want);
        params_free(&ps);
    }
    for (int t = 0; t <= CONNECTOR_MLP2X_GELU; t++) {
        ParamSet ps;
        params_init(&ps, kernels_cpu(), 1);
        ConnectorParams ix;
        connector_declare_params(&ps, (ConnectorType)t, 0, in, out, &ix);
        int after = params_add(&ps, 1, (int64_t[]){3}, "something.else");
        int ldp = t == CONNECTOR_LDP;
        assert_int_equal(ps.n, ldp ? 7 : 5);
        for (int i = 0; i < ps.n - 1; i++) assert_int_equal(ps.p[i].group, PARAM_GROUP_CONNECTOR);
        assert_int_equal(ps.p[after].group, PARAM_GROUP_FROZEN);
        assert_string_equal(ps.p[ix.w1].name, ldp ? "model.mm_projector.mlp.mlp.0.weight" : "model.mm_projector.0.weight");
        assert_int_equal(ps.p[ix.w1].shape[0], out);
        assert_int_equal(ps.p[ix.w1].shape[1], in);
        assert_int_equal(ps.p[ix.w2].shape[1], out);
        if (ldp) {
            assert_string_equal(ps.p[ix.cw].name, "model.mm_projector.peg.peg.0.weight");
            assert_int_equal(ps.p[ix.cw].ndim, 4);
        } else {
            assert_int_equal(ix.cw, -1);
            assert_int_equal(ix.cb, -1);
        }
        size_t want = (size_t)out * in + out + (size_t)out * out + out + (ldp ? (size_t)out * 9 + out : 0);
        assert_int_equal(params_group_numel(&ps, PARAM_GROUP_CONNECTOR), want);
        params_free(&ps);
    }
}

// ------------------------------------------------------------------------------ groups

// the learning rate follows the tag given at declaration: a tensor with a connector's name but
// the LoRA tag gets lr, one with a LoRA name but the connector tag gets connector_lr
static void test_group_follows_tag_not_name(void **state) {
    TrainConfig c;
    memset(&c, 0, sizeof c);
    c.lr = 1e-3;
    c.connector_lr = 2e-4;
    ParamSet ps;
    params_init(&ps, kernels_cpu(), 1);
    params_declare_group(&ps, PARAM_GROUP_LORA);
    int a = params_add(&ps, 1, (int64_t[]){4}, "model.mm_projector.0.weight");
    params_declare_group(&ps, PARAM_GROUP_CONNECTOR);
    int b = params_add(&ps, 1, (int64_t[]){4}, "model.layers.0.self_attn.q_proj.lora_A.weight");
    int d = params_add(&ps, 1, (int64_t[]){4}, "anything");
    const int warm = 0, total = 10;  // no warmup: step 0 runs at the peak
    assert_true(optimizer_lr(&c, &ps.p[a], 0, total, warm) == 1e-3);
    assert_true(optimizer_lr(&c, &ps.p[b], 0, total, warm) == 2e-4);
    assert_true(optimizer_lr(&c, &ps.p[d], 0, total, warm) == 2e-4);
    c.connector_lr = 0;  // 0: the connector follows lr
    assert_true(optimizer_lr(&c, &ps.p[b], 0, total, warm) == 1e-3);
    assert_int_equal(params_group_numel(&ps, PARAM_GROUP_CONNECTOR), 8);
    assert_int_equal(params_group_numel(&ps, PARAM_GROUP_LORA), 4);
    assert_string_equal(param_group_name(PARAM_GROUP_CONNECTOR), "connector");
    params_free(&ps);
}

// the fixture VLM's trainable set: the connector's tensors tagged connector, LoRA's tagged lora,
// nothing else; the image slot is the connector's count for the tower's grid
static void test_vlm_trainable_groups(void **state) {
    for (int t = 0; t < N_CONNECTOR_TYPES; t++) {
        if (connector_family((ConnectorType)t)->vision_post_norm) continue;  // not on CLIP (test_model_parity)
        VlmSpec spec = fixture_vlm_spec("qwen2", (ConnectorType)t, "qwen2_lora", 1, 8, 1, 0.0f);
        Vlm m;
        vlm_init(&m, kernels_dry_run(kernels_cpu()), &spec);
        int n_conn = 0, n_lora = 0;
        for (int i = 0; i < m.train.n; i++) {
            const Param *p = &m.train.p[i];
            int lora = strstr(p->name, ".lora_") != NULL;
            assert_int_equal(p->group, lora ? PARAM_GROUP_LORA : PARAM_GROUP_CONNECTOR);
            n_conn += !lora;
            n_lora += lora;
        }
        // mlp2x_gelu and llava_hf: two Linears; ldp and internvl: 6
        assert_int_equal(n_conn, t == CONNECTOR_MLP2X_GELU || t == CONNECTOR_LLAVA_HF ? 4 : 6);
        assert_true(n_lora > 0);
        assert_int_equal(m.n_img_tokens, connector_tokens((ConnectorType)t, 0, m.vit.cfg.grid));
        vlm_free(&m);
    }
}

// ------------------------------------------------------------------------------ the vision tower

static void write_config(const char *dir, const char *text) {
    char path[1200];
    make_dirs(dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void load_config(void *dir) {
    VitConfig c;
    vit_config_load(&c, dir);
}

// an unknown model_type stops with one line naming the file, the key and the value
static void test_vision_unknown_type_refused(void **state) {
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/siglip2", tmp);  // SigLIP2's NaFlex form (variable resolution)
    write_config(dir, "{\"model_type\": \"siglip2_vision_model\", \"hidden_size\": 32, \"num_patches\": 16, \"patch_size\": 8}\n");
    expect_fatal(load_config, dir, "siglip2/config.json", "model_type", "\"siglip2_vision_model\"", "clip_vision_model",
                 "siglip_vision_model", "idefics3_vision");
    snprintf(dir, sizeof dir, "%s/pixtral", tmp);
    write_config(dir, "{\"model_type\": \"llava\", \"vision_config\": {\"model_type\": \"pixtral\"}}\n");
    expect_fatal(load_config, dir, "pixtral/config.json", "vision_config.model_type", "\"pixtral\"");
    // InternViT-6B (RMSNorm, qk-normalisation: InternVisionConfig's defaults) is refused by its keys
    snprintf(dir, sizeof dir, "%s/internvit6b", tmp);
    write_config(dir, "{\"model_type\": \"internvl_chat\", \"vision_config\": {\"model_type\": \"intern_vit_6b\"}}\n");
    expect_fatal(load_config, dir, "internvit6b/config.json", "norm_type", "\"rms_norm\"");
    snprintf(dir, sizeof dir, "%s/internvit_qkn", tmp);
    write_config(dir, "{\"model_type\": \"intern_vit_6b\", \"norm_type\": \"layer_norm\", \"qk_normalization\": true}\n");
    expect_fatal(load_config, dir, "internvit_qkn/config.json", "qk_normalization");
    snprintf(dir, sizeof dir, "%s/internvl_rect", tmp);
    write_config(dir, "{\"model_type\": \"internvl_vision\", \"image_size\": [448, 224]}\n");
    expect_fatal(load_config, dir, "internvl_rect/config.json", "image_size", "[n, n]");
    // nanoVLM's ViT with a class token hands only that token on: refused
    snprintf(dir, sizeof dir, "%s/nanovlm_cls", tmp);
    write_config(dir, "{\"vit_hidden_dim\": 32, \"vit_n_heads\": 4, \"vit_cls_flag\": true}\n");
    expect_fatal(load_config, dir, "nanovlm_cls/config.json", "vit_cls_flag");
}

// nanoVLM's flat config (no model_type, vit_* keys) is read as its family's, with its keys
static void test_vision_nanovlm_config(void **state) {
    VitConfig c;
    vit_config_load(&c, fixture_path("nanovlm"));
    assert_string_equal(vit_type_name(&c), "nanovlm");
    assert_int_equal(c.hidden, 24);
    assert_int_equal(c.mlp, 40);
    assert_int_equal(c.layers, 2);
    assert_int_equal(c.heads, 2);
    assert_int_equal(c.image_size, 27);
    assert_int_equal(c.grid, 27);
    assert_int_equal(vit_has_cls(&c), 0);
    assert_int_equal(c.act, VIT_ACT_GELU_TANH);
    assert_int_equal(c.prep, IMAGE_PREP_NANOVLM);
    assert_null(c.position_ids);  // nanoVLM adds its positions in order (no bucketing)
    assert_true(c.eps == 1e-6f);
    char dir[1100];  // VLMConfig's defaults for keys not given: SigLIP2-B/16 at 512
    snprintf(dir, sizeof dir, "%s/nanovlm_defaults", tmp);
    write_config(dir, "{\"vit_hidden_dim\": 768, \"lm_hidden_dim\": 960}\n");
    vit_config_load(&c, dir);
    assert_string_equal(vit_type_name(&c), "nanovlm");
    assert_int_equal(c.image_size, 512);
    assert_int_equal(c.grid, 32);
    assert_int_equal(c.layers, 12);
    assert_int_equal(c.mlp, 3072);
}

// the CLIP fixture (24 px, patch 4, 3 layers, width 40): its facts, and its weights bound by name
static void test_vision_facts(void **state) {
    VitConfig c;
    vit_config_load(&c, fixture_path("clip"));
    assert_string_equal(vit_type_name(&c), "clip");
    assert_int_equal(c.image_size, 24);
    assert_int_equal(c.grid, 6);
    assert_int_equal(vit_has_cls(&c), 1);
    assert_int_equal(vit_seq_len(&c), 37);
    assert_int_equal(vit_feature_dim(&c), 40);
    assert_int_equal(vit_layers_run(&c, -2), 2);
    assert_int_equal(vit_layers_run(&c, -1), 3);
    assert_int_equal(vit_layers_run(&c, 0), 0);

    Vit v;
    vit_load(&v, kernels_cpu(), fixture_path("clip"), -1, 1);
    const ParamSet *w = &v.w;
    assert_ptr_equal(v.patch_w, params_act(w, params_find(w, "embeddings.patch_embedding.weight")));
    assert_ptr_equal(v.pos, params_act(w, params_find(w, "embeddings.position_embedding.weight")));
    assert_int_equal(w->p[params_find(w, "embeddings.position_embedding.weight")].shape[0], vit_seq_len(&c));
    assert_ptr_equal(v.pre_b, params_act(w, params_find(w, "pre_layrnorm.bias")));
    char name[128];
    for (int l = 0; l < v.n_run; l++) {
        snprintf(name, sizeof name, "encoder.layers.%d.self_attn.k_proj.weight", l);
        assert_ptr_equal(v.layer[l].k_w, params_act(w, params_find(w, name)));
        snprintf(name, sizeof name, "encoder.layers.%d.mlp.fc2.bias", l);
        assert_ptr_equal(v.layer[l].fc2_b, params_act(w, params_find(w, name)));
        snprintf(name, sizeof name, "encoder.layers.%d.layer_norm2.weight", l);
        assert_ptr_equal(v.layer[l].ln2_w, params_act(w, params_find(w, name)));
    }
    vit_free(&v);
}

// Idefics3 / SmolVLM bucketize patch coordinates into position rows: svlm's table equals the
// module's (tests/fixtures/idefics3_position_ids.txt, scripts/make_family_fixtures.py) at every
// grid 2..64, among them grids where it is not 0..n*n-1; SigLIP's is 0..n*n-1
static void test_vision_position_ids(void **state) {
    VitConfig c, sig;
    vit_config_load(&c, fixture_path("idefics3_vision"));
    vit_config_load(&sig, fixture_path("siglip"));
    assert_non_null(c.position_ids);
    assert_null(sig.position_ids);
    FILE *f = fopen(fixture_path("idefics3_position_ids.txt"), "r");
    assert_non_null(f);
    char line[4096];
    int grids = 0, not_arange = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char *p = line, *end;
        int n = (int)strtol(p, &end, 10);
        assert_true(end != p && n == grids + 2);
        int *b = xmalloc((size_t)n * sizeof(int)), *ids = xmalloc((size_t)n * n * sizeof(int));
        for (int i = 0; i < n; i++) {
            p = end;
            b[i] = (int)strtol(p, &end, 10);
            assert_true(end != p);
        }
        c.grid = sig.grid = n;
        c.n_patches = sig.n_patches = n * n;
        vit_position_ids(&c, ids);
        int arange = 1;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                int want = b[i] * n + b[j];
                if (ids[i * n + j] != want) fail_msg("grid %d: patch (%d, %d) adds row %d, the module %d", n, i, j, ids[i * n + j], want);
                arange &= want == i * n + j;
            }
        not_arange += !arange;
        vit_position_ids(&sig, ids);
        for (int p2 = 0; p2 < n * n; p2++) assert_int_equal(ids[p2], p2);
        free(b);
        free(ids);
        grids++;
    }
    fclose(f);
    assert_int_equal(grids, 63);
    printf("    idefics3 position ids equal the module's at grids 2..64 (%d of them not 0..n*n-1)\n", not_arange);
    assert_true(not_arange >= 10);
}

int main(int argc, char **argv) {
    make_temp_dir(tmp, sizeof tmp, "modules");
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_connector_tokens),
        cmocka_unit_test(test_connector_odd_grid_refused),
        cmocka_unit_test(test_connector_names),
        cmocka_unit_test(test_connector_unknown_refused),
        cmocka_unit_test(test_connector_declaration),
        cmocka_unit_test(test_group_follows_tag_not_name),
        cmocka_unit_test(test_vlm_trainable_groups),
        cmocka_unit_test(test_vision_unknown_type_refused),
        cmocka_unit_test(test_vision_facts),
        cmocka_unit_test(test_vision_position_ids),
        cmocka_unit_test(test_vision_nanovlm_config),
    };
    struct CMUnitTest sel[sizeof all / sizeof all[0]];
    size_t n = test_select(sel, all, sizeof all / sizeof all[0], argc > 1 ? argv[1] : NULL);
    return _cmocka_run_group_tests("test_modules", sel, n, NULL, NULL);
}
