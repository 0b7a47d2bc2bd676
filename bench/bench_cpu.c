// bench_cpu.c: forward+backward milliseconds per step and GFLOP/s of the CPU backend on a
// mid-size VLM (random weights written as HF directories under build/bench), with the FLOP
// count it assumes printed beside the result.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/rng.h"
#include "common/util.h"
#include "model/hf_random.h"
#include "model/vlm.h"

// Matmul FLOPs are 2*M*N*K. Forward counts every matmul of the vision tower (layers run),
// connector and LLM, attention as QK^T and PV (the LLM's causal half only), and the vocabulary
// projection at labelled rows only. Backward through the frozen LLM computes input gradients
// only: one more pass of each matmul (no weight gradients), plus LoRA's weight gradients and
// attention's four products (dP, dS.K, dS^T.Q, P^T.dO) against its two. Elementwise ops are
// not counted. The vision tower has no backward.
static double step_flops(const Vlm *m, int B, int T, int n_img, int M) {
    const VitConfig *v = &m->vit.cfg;
    const LlmConfig *c = &m->llm.cfg;
    double Tv = v->n_patches + 1, Cv = v->hidden, N = (double)B * T;
    double vit = 2.0 * n_img * v->n_patches * (3.0 * v->patch * v->patch) * Cv;
    vit += m->vit.n_run * n_img * (2.0 * Tv * (4 * Cv * Cv + 2 * Cv * v->mlp) + 4.0 * Tv * Tv * Cv);
    double H = c->hidden, np = m->conn.n_in, no = m->conn.n_out;
    double conn_f = 2.0 * n_img * np * (Cv * H + H * H) + 2.0 * n_img * no * 9 * H;
    double conn_b = 2.0 * conn_f - 2.0 * n_img * np * Cv * H;  // no gradient into the vision features
    double QD = (double)c->heads * c->head_dim, KD = (double)c->kv_heads * c->head_dim, I = c->mlp;
    double proj = H * QD + 2 * H * KD + QD * H + 3 * H * I;  // weights per layer
    double r = m->llm.lora.r, lora = 0;
    if (r > 0) lora = r * ((H + QD) + 2 * (H + KD) + (QD + H) + 2 * (H + I) + (I + H));
    double att_f = 2.0 * 2.0 * B * c->heads * (T * (T + 1) / 2.0) * c->head_dim;
    double llm_f = c->layers * (2.0 * N * (proj + lora) + att_f) + 2.0 * M * H * c->vocab;
    double llm_b = c->layers * (2.0 * N * proj + 2.0 * 2.0 * N * lora + 2.0 * att_f) + 2.0 * M * H * c->vocab;
    return vit + conn_f + conn_b + llm_f + llm_b;
}

int main(int argc, char **argv) {
    openmp_prefer_passive(argv);
    int steps = argc > 1 ? atoi(argv[1]) : 3;
    mkdir("build", 0755);
    mkdir("build/bench", 0755);
    VitConfig vc = {.hidden = 384, .layers = 6, .heads = 6, .head_dim = 64, .mlp = 1536, .image_size = 224,
                    .patch = 14, .grid = 16, .n_patches = 256, .eps = 1e-5f, .quick_gelu = 1};
    LlmConfig lc = {.model_type = "llama", .vocab = 16000, .hidden = 512, .layers = 8, .heads = 8, .kv_heads = 2,
                    .head_dim = 64, .mlp = 1536, .max_pos = 4096, .eps = 1e-6f, .rope_theta = 1e6f, .tied = 1,
                    .bos_id = -1, .eos_id = -1};
    hf_random_vision("build/bench/vision", &vc, 1);
    hf_random_llm("build/bench/llm", &lc, 0.02f, 2);
    int B = 4, T = 256, n_img = 4;
    VlmSpec spec = {.vision_dir = "build/bench/vision", .vision_layer = -2, .llm_dir = "build/bench/llm",
                    .connector = CONNECTOR_LDP, .lora = {.r = 16, .alpha = 32, .targets = 0x7f},
                    .max_B = B, .max_T = T, .max_images = n_img};
    Vlm m;
    vlm_init(&m, kernels_cpu(), &spec);
    vlm_init_trainable(&m, 3);
    // each row: 4 text tokens, the 64-token image slot, then text with every other token labelled
    Rng rng;
    rng_init(&rng, 4);
    int N = B * T, *ids = xmalloc(N * sizeof(int)), *tgt = xmalloc(N * sizeof(int)), row[4], start[4];
    for (int i = 0; i < N; i++) {
        ids[i] = (int)rng_below(&rng, lc.vocab);
        int t = i % T;
        tgt[i] = (t >= 4 + m.n_img_tokens && t % 2 == 0 && t < T - 1) ? (int)rng_below(&rng, lc.vocab) : -1;
    }
    for (int i = 0; i < n_img; i++) row[i] = i, start[i] = 4;
    size_t npix = (size_t)n_img * 3 * vc.image_size * vc.image_size;
    float *pix = xmalloc(npix * sizeof(float));
    for (size_t i = 0; i < npix; i++) pix[i] = rng_normal(&rng);
    VlmBatch b = {.B = B, .T = T, .ids = ids, .targets = tgt, .n_img = n_img, .pixels = pix, .img_row = row, .img_start = start};
    int M;
    vlm_forward_backward(&m, &b, 1.0f, &M);  // warm-up
    double best = 1e30, total = 0;
    for (int s = 0; s < steps; s++) {
        m.k->zero(m.train.grad, m.train.numel * sizeof(float));
        double t0 = time_now();
        vlm_forward_backward(&m, &b, 1.0f / M, NULL);
        double dt = time_now() - t0;
        total += dt;
        if (dt < best) best = dt;
    }
    double flops = step_flops(&m, B, T, n_img, M);
    printf("bench-cpu: vision %dx%d/%d, %d of %d layers, width %d | ldp | llama width %d, %d layers, %d/%d heads, "
           "mlp %d, vocab %d | LoRA r %d on 7 projections\n",
           vc.image_size, vc.image_size, vc.patch, m.vit.n_run, vc.layers, vc.hidden, lc.hidden, lc.layers, lc.heads,
           lc.kv_heads, lc.mlp, lc.vocab, spec.lora.r);
    printf("bench-cpu: batch %d x %d tokens, %d images (%d tokens each), %d labelled positions\n", B, T, n_img,
           m.n_img_tokens, M);
    printf("bench-cpu: assumed %.2f GFLOP per forward+backward step (see step_flops in bench/bench_cpu.c)\n", flops / 1e9);
    printf("bench-cpu: forward+backward %.1f ms/step (best of %d; mean %.1f), %.1f GFLOP/s\n", best * 1e3, steps,
           total / steps * 1e3, flops / best / 1e9);
    vlm_free(&m);
    free(ids);
    free(tgt);
    free(pix);
    return 0;
}
