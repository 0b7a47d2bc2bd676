// bench_step.c: times one training step of svlm (zero gradients, forward + backward, AdamW as
// the trainer does it) on either backend, at three model sizes, on a deterministic batch of
// LLaVA-like lengths; optionally writes that batch and the initial trainable tensors so that
// scripts/bench_torch.py times the same step in PyTorch on the same data and weights.
//
//   ./build/bench_step --device cuda --preset reference --stage 2 --save-batch b.safetensors
//   ./build/bench_step --help
//
// Random weights are written as Hugging Face directories (model/hf_random.h) under --models and
// reused by later runs (and by the PyTorch script).
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common/rng.h"
#include "common/safetensors.h"
#include "common/util.h"
#include "common/config.h"
#include "kernels/cuda/counters.h"
#include "kernels/cpu/blas_core.h"
#include "model/hf_random.h"
#include "model/memplan.h"
#include "model/vlm.h"
#include "trainer/optimizer.h"

// ---------------------------------------------------------------- presets

typedef struct {
    const char *name;
    VitConfig vc;
    LlmConfig lc;
    float llm_init_std;
    int lora_r;
    float lora_alpha;
    int batch, steps;  // defaults
    ConnectorType connector;
    int connector_scale;  // 0: the connector's default
    int vision_layer;
} Preset;

static const Preset presets[] = {
    // fixture-like sizes: every code path, milliseconds per step on a CPU
    {.name = "tiny",
     .vc = {.hidden = 64, .layers = 2, .heads = 4, .head_dim = 16, .mlp = 128, .image_size = 64, .patch = 8,
            .grid = 8, .n_patches = 64, .eps = 1e-5f, .act = VIT_ACT_QUICK_GELU},
     .lc = {.model_type = "qwen2", .vocab = 1000, .hidden = 96, .layers = 2, .heads = 6, .kv_heads = 2, .head_dim = 16,
            .mlp = 160, .max_pos = 4096, .eps = 1e-6f, .rope_theta = 1e6f, .qkv_bias = 1, .tied = 1, .bos_id = -1,
            .eos_id = -1},
     .llm_init_std = 0.1f, .lora_r = 8, .lora_alpha = 16, .batch = 2, .steps = 5, .connector = CONNECTOR_LDP,
     .vision_layer = -2},
    // the former bench_cpu model: a CPU step of a few seconds
    {.name = "mid",
     .vc = {.hidden = 384, .layers = 6, .heads = 6, .head_dim = 64, .mlp = 1536, .image_size = 224, .patch = 14,
            .grid = 16, .n_patches = 256, .eps = 1e-5f, .act = VIT_ACT_QUICK_GELU},
     .lc = {.model_type = "llama", .vocab = 16000, .hidden = 512, .layers = 8, .heads = 8, .kv_heads = 2, .head_dim = 64,
            .mlp = 1536, .max_pos = 4096, .eps = 1e-6f, .rope_theta = 1e6f, .tied = 1, .bos_id = -1, .eos_id = -1},
     .llm_init_std = 0.02f, .lora_r = 16, .lora_alpha = 32, .batch = 4, .steps = 3, .connector = CONNECTOR_LDP,
     .vision_layer = -2},
    // the reference recipe: CLIP ViT-L/14-336 + ldp + Qwen2-0.5B, LoRA r 64 alpha 16
    {.name = "reference",
     .vc = {.hidden = 1024, .layers = 24, .heads = 16, .head_dim = 64, .mlp = 4096, .image_size = 336, .patch = 14,
            .grid = 24, .n_patches = 576, .eps = 1e-5f, .act = VIT_ACT_QUICK_GELU},
     .lc = {.model_type = "qwen2", .vocab = 151936, .hidden = 896, .layers = 24, .heads = 14, .kv_heads = 2,
            .head_dim = 64, .mlp = 4864, .max_pos = 32768, .eps = 1e-6f, .rope_theta = 1e6f, .qkv_bias = 1, .tied = 1,
            .bos_id = -1, .eos_id = -1},
     .llm_init_std = 0.02f, .lora_r = 64, .lora_alpha = 16, .batch = 16, .steps = 10, .connector = CONNECTOR_LDP,
     .vision_layer = -2},
    // the families below at tiny's sizes (odd head counts), for checking scripts/bench_torch.py's
    // first-step loss against svlm's on a CPU in seconds
    {.name = "tiny_internvit",
     .vc = {.type = VIT_INTERNVIT, .hidden = 60, .layers = 2, .heads = 5, .head_dim = 12, .mlp = 112, .image_size = 64,
            .patch = 8, .grid = 8, .n_patches = 64, .eps = 1e-6f, .act = VIT_ACT_GELU, .qkv_bias = 1},
     .lc = {.model_type = "qwen2", .vocab = 1000, .hidden = 96, .layers = 2, .heads = 6, .kv_heads = 2, .head_dim = 16,
            .mlp = 160, .max_pos = 4096, .eps = 1e-6f, .rope_theta = 1e6f, .qkv_bias = 1, .tied = 1, .bos_id = -1,
            .eos_id = -1},
     .llm_init_std = 0.1f, .lora_r = 8, .lora_alpha = 16, .batch = 2, .steps = 5, .connector = CONNECTOR_INTERNVL,
     .vision_layer = -1},
    {.name = "tiny_siglip",
     .vc = {.type = VIT_SIGLIP, .hidden = 48, .layers = 2, .heads = 3, .head_dim = 16, .mlp = 112, .image_size = 64,
            .patch = 8, .grid = 8, .n_patches = 64, .eps = 1e-6f, .act = VIT_ACT_GELU_TANH, .qkv_bias = 1},
     .lc = {.model_type = "llama", .vocab = 1000, .hidden = 96, .layers = 2, .heads = 6, .kv_heads = 2, .head_dim = 16,
            .mlp = 160, .max_pos = 4096, .eps = 1e-5f, .rope_theta = 1e5f, .tied = 1, .bos_id = -1, .eos_id = -1},
     .llm_init_std = 0.1f, .lora_r = 8, .lora_alpha = 16, .batch = 2, .steps = 5, .connector = CONNECTOR_IDEFICS3,
     .connector_scale = 2, .vision_layer = -1},
    // Vintern-1B / InternVL2-1B: InternViT-300M-448px (remote-code names) + pixel shuffle + mlp1
    // (256 tokens) + Qwen2-0.5B
    {.name = "internvit",
     .vc = {.type = VIT_INTERNVIT, .hidden = 1024, .layers = 24, .heads = 16, .head_dim = 64, .mlp = 4096,
            .image_size = 448, .patch = 14, .grid = 32, .n_patches = 1024, .eps = 1e-6f, .act = VIT_ACT_GELU,
            .qkv_bias = 1},
     .lc = {.model_type = "qwen2", .vocab = 151936, .hidden = 896, .layers = 24, .heads = 14, .kv_heads = 2,
            .head_dim = 64, .mlp = 4864, .max_pos = 32768, .eps = 1e-6f, .rope_theta = 1e6f, .qkv_bias = 1, .tied = 1,
            .bos_id = -1, .eos_id = -1},
     .llm_init_std = 0.02f, .lora_r = 64, .lora_alpha = 16, .batch = 16, .steps = 10, .connector = CONNECTOR_INTERNVL,
     .vision_layer = -1},
    // SmolVLM-500M's shapes: SigLIP-base-patch16-512 + Idefics3 pixel shuffle by 4 (64 tokens) +
    // SmolLM2-360M
    {.name = "siglip",
     .vc = {.type = VIT_SIGLIP, .hidden = 768, .layers = 12, .heads = 12, .head_dim = 64, .mlp = 3072,
            .image_size = 512, .patch = 16, .grid = 32, .n_patches = 1024, .eps = 1e-6f, .act = VIT_ACT_GELU_TANH,
            .qkv_bias = 1},
     .lc = {.model_type = "llama", .vocab = 49152, .hidden = 960, .layers = 32, .heads = 15, .kv_heads = 5,
            .head_dim = 64, .mlp = 2560, .max_pos = 8192, .eps = 1e-5f, .rope_theta = 1e5f, .tied = 1, .bos_id = -1,
            .eos_id = -1},
     .llm_init_std = 0.02f, .lora_r = 64, .lora_alpha = 16, .batch = 16, .steps = 10, .connector = CONNECTOR_IDEFICS3,
     .connector_scale = 4, .vision_layer = -1},
};

// stage 1 trains the connector at lr 1e-3; stage 2 LoRA at 2e-4 and the connector at 2e-5
// (LLaVA's settings); weight decay 0, clipping at 1, torch.optim.AdamW's defaults otherwise
static void bench_train_config(TrainConfig *c, int stage) {
    memset(c, 0, sizeof *c);
    c->stage = stage;
    c->lr = stage == 1 ? 1e-3 : 2e-4;
    c->connector_lr = stage == 1 ? 0 : 2e-5;
    c->min_lr = 0;
    c->weight_decay = 0;
    c->grad_clip = 1.0;
    c->adam_beta1 = 0.9;
    c->adam_beta2 = 0.999;
    c->adam_eps = 1e-8;
}
#define SCHEDULE_STEPS 1000000  // a long schedule without warm-up: the factor stays ~1

// ---------------------------------------------------------------- the batch

typedef struct {
    int B, T, n_img, S, slot;
    int *ids, *labels, *targets, *lens, *img_row, *img_start;  // labels: HF's unshifted form
    float *pixels;
    int64_t tokens, labelled;  // non-pad positions (image slots included); HF-labelled positions
} Batch;

// One image per sample, its slot after `prompt` text tokens; then stage 1: a caption of 16-64
// tokens and an end token, all labelled; stage 2: 64-640 text tokens alternating user spans
// (8-40 tokens, unlabelled) and assistant spans (16-56, labelled: about 60% of the text).
// Rows are padded to the longest with id 0 and no label. Token ids are uniform in [1, V).
static void make_batch(Batch *b, int stage, int B, int slot, int S, int V, uint64_t seed) {
    memset(b, 0, sizeof *b);
    Rng rng;
    rng_init(&rng, seed * 1000003ULL + (uint64_t)stage);
    int *prompt = xmalloc(B * sizeof(int)), *text = xmalloc(B * sizeof(int));
    b->B = B;
    b->n_img = B;
    b->S = S;
    b->slot = slot;
    b->lens = xmalloc(B * sizeof(int));
    for (int r = 0; r < B; r++) {
        prompt[r] = 4 + (int)rng_below(&rng, 5);
        text[r] = stage == 1 ? 16 + (int)rng_below(&rng, 49) + 1 : 64 + (int)rng_below(&rng, 577);
        b->lens[r] = prompt[r] + slot + text[r];
        if (b->lens[r] > b->T) b->T = b->lens[r];
    }
    int T = b->T;
    size_t N = (size_t)B * T;
    b->ids = xcalloc(N, sizeof(int));
    b->labels = xmalloc(N * sizeof(int));
    b->targets = xmalloc(N * sizeof(int));
    b->img_row = xmalloc(B * sizeof(int));
    b->img_start = xmalloc(B * sizeof(int));
    for (size_t i = 0; i < N; i++) b->labels[i] = -100;
    for (int r = 0; r < B; r++) {
        int *ids = b->ids + (size_t)r * T, *lab = b->labels + (size_t)r * T;
        b->img_row[r] = r;
        b->img_start[r] = prompt[r];
        for (int t = 0; t < prompt[r]; t++) ids[t] = 1 + (int)rng_below(&rng, V - 1);
        int t0 = prompt[r] + slot, end = t0 + text[r];
        int assistant = stage == 1, left = stage == 1 ? text[r] : 8 + (int)rng_below(&rng, 33);
        for (int t = t0; t < end; t++) {
            if (left == 0) {
                assistant = !assistant;
                left = assistant ? 16 + (int)rng_below(&rng, 41) : 8 + (int)rng_below(&rng, 33);
            }
            left--;
            ids[t] = 1 + (int)rng_below(&rng, V - 1);
            if (assistant) lab[t] = ids[t];
        }
        b->tokens += b->lens[r];
    }
    // svlm's targets: position t predicts the label of t + 1
    for (int r = 0; r < B; r++)
        for (int t = 0; t < T; t++) {
            int next = t + 1 < T ? b->labels[(size_t)r * T + t + 1] : -100;
            b->targets[(size_t)r * T + t] = next == -100 ? -1 : next;
            if (next != -100) b->labelled++;
        }
    size_t np = (size_t)B * 3 * S * S;
    b->pixels = xmalloc(np * sizeof(float));
    for (size_t i = 0; i < np; i++) b->pixels[i] = rng_normal(&rng);
    free(prompt);
    free(text);
}

static void batch_free(Batch *b) {
    free(b->ids);
    free(b->labels);
    free(b->targets);
    free(b->lens);
    free(b->img_row);
    free(b->img_start);
    free(b->pixels);
}

// ---------------------------------------------------------------- FLOPs

// Model FLOPs of one step on the tokens in `len` (pass the padded length T for every row to get
// what the padded batch computes). Matmul FLOPs are 2*M*N*K. Forward counts every matmul of the
// vision tower (the layers run), connector and LLM, attention as QK^T and PV (the LLM's causal
// half only, per sample), and the vocabulary projection at labelled rows only. Backward through
// the frozen LLM computes input gradients only: one more pass of each matmul (no weight
// gradients), plus LoRA's weight gradients and attention's four products (dP, dS.K, dS^T.Q,
// P^T.dO) against its two. The connector's backward has weight gradients for both linears and
// the conv, and input gradients for all but the first linear. Elementwise ops, norms, softmax,
// the optimizer and attention's recomputation in a fused backward are not counted. The vision
// tower has no backward.
typedef struct {
    double vision, connector, llm, total;
} Flops;

static Flops step_flops(const Vlm *m, int B, const int *len, int n_img, int64_t M) {
    const VitConfig *v = &m->vit.cfg;
    const LlmConfig *c = &m->llm.cfg;
    Flops f;
    double Tv = vit_seq_len(v), Cv = vit_feature_dim(v);
    f.vision = 2.0 * n_img * v->n_patches * (3.0 * v->patch * v->patch) * Cv;
    f.vision += m->vit.n_run * (double)n_img * (2.0 * Tv * (4 * Cv * Cv + 2 * Cv * v->mlp) + 4.0 * Tv * Tv * Cv);
    double H = c->hidden, conn_f, conn_first;
    m->conn.fam->flops(&m->conn, &conn_f, &conn_first);
    // no gradient into the vision features: the first layer has no input gradient
    f.connector = n_img * (conn_f + 2.0 * conn_f - conn_first);
    double QD = (double)c->heads * c->head_dim, KD = (double)c->kv_heads * c->head_dim, I = c->mlp;
    double proj = H * QD + 2 * H * KD + QD * H + 3 * H * I;  // weights per layer
    double r = m->llm.lora.r, lora = 0;
    if (r > 0) {
        unsigned tg = m->llm.lora.targets;
        double in_out[N_PROJ] = {H + QD, H + KD, H + KD, QD + H, H + I, H + I, I + H};
        for (int p = 0; p < N_PROJ; p++)
            if (tg & (1u << p)) lora += r * in_out[p];
    }
    double N = 0, att_f = 0;
    for (int b = 0; b < B; b++) {
        N += len[b];
        att_f += 2.0 * 2.0 * c->heads * (len[b] * (len[b] + 1.0) / 2.0) * c->head_dim;
    }
    double head = 2.0 * (double)M * H * c->vocab;
    double llm_f = c->layers * (2.0 * N * (proj + lora) + att_f) + head;
    double llm_b = c->layers * (2.0 * N * proj + 2.0 * 2.0 * N * lora + 2.0 * att_f) + head;
    f.llm = llm_f + llm_b;
    f.total = f.vision + f.connector + f.llm;
    return f;
}

// ---------------------------------------------------------------- files

static void config_signature(const Preset *p, char *buf, size_t cap) {
    const VitConfig *v = &p->vc;
    const LlmConfig *l = &p->lc;
    snprintf(buf, cap,
             "svlm bench models v1 preset %s | vision %d %d %d %d %d %d %d %g %s %d | llm %s %d %d %d %d %d %d %d %d %g %g %d %d %g\n",
             p->name, v->hidden, v->layers, v->heads, v->head_dim, v->mlp, v->image_size, v->patch, (double)v->eps,
             vit_type_name(v), (int)v->act, l->model_type, l->vocab, l->hidden, l->layers, l->heads, l->kv_heads, l->head_dim, l->mlp,
             l->max_pos, (double)l->eps, (double)l->rope_theta, l->qkv_bias, l->tied, (double)p->llm_init_std);
}

// writes dir/vision and dir/llm unless dir/stamp.txt (written last) says they hold this preset
static void ensure_models(const Preset *p, const char *dir) {
    char stamp[2048], want[1024];
    config_signature(p, want, sizeof want);
    path_join(stamp, sizeof stamp, dir, "stamp.txt");
    size_t len;
    char *have = file_read_all(stamp, &len);
    if (have && strcmp(have, want) == 0) {
        printf("bench: reusing the random models in %s\n", dir);
        free(have);
        return;
    }
    free(have);
    make_dirs(dir);
    remove(stamp);
    char vdir[2048], ldir[2048];
    path_join(vdir, sizeof vdir, dir, "vision");
    path_join(ldir, sizeof ldir, dir, "llm");
    double t0 = time_now();
    printf("bench: writing random models (fp32 safetensors) to %s ...\n", dir);
    fflush(stdout);
    hf_random_vision(vdir, &p->vc, 1);
    hf_random_llm(ldir, &p->lc, p->llm_init_std, 2);
    FILE *f = fopen(stamp, "w");
    if (!f || fputs(want, f) < 0 || fclose(f) != 0) fatal("%s: cannot write: %s", stamp, strerror(errno));
    printf("bench: models written in %.1f s\n", time_now() - t0);
}

static void save_or_die(StWriter *w, const char *path) {
    char err[2300];
    if (st_writer_save(w, path, err, sizeof err) != 0) fatal("%s", err);
    st_writer_free(w);
}

// path of the initial trainable tensors written next to the batch file
static void trainable_path(const char *batch_path, char *out, size_t cap) {
    size_t n = strlen(batch_path);
    const char *ext = ".safetensors";
    size_t e = strlen(ext);
    if (n > e && strcmp(batch_path + n - e, ext) == 0) n -= e;
    if (n + 32 > cap) fatal("%s: path too long", batch_path);
    snprintf(out, cap, "%.*s.trainable.safetensors", (int)n, batch_path);
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

// ---------------------------------------------------------------- phases

// One step of the model's own vlm_forward_backward, synchronised at each of its stage boundaries
// (its stage hook, model/vlm.h) so the time of each stage shows, then the optimizer.
enum { PH_OPT = N_VLM_STAGES, N_PH };

typedef struct {
    const Kernels *k;
    double t0, *ms;
} PhaseClock;

static void phase_mark(void *ctx, int stage) {
    PhaseClock *c = ctx;
    c->k->synchronize();
    double t1 = time_now();
    c->ms[stage] = (t1 - c->t0) * 1e3;
    c->t0 = t1;
}

static double bench_update(Vlm *m, const TrainConfig *tc, int s, int lab, double *norm_out);

static const char *ph_name(int i) { return i < N_VLM_STAGES ? vlm_stage_names[i] : "optimizer"; }

static void phase_step(Vlm *m, const VlmBatch *vb, const TrainConfig *tc, int t, double *ms) {
    const Kernels *k = m->k;
    ParamSet *P = &m->train;
    PhaseClock clock = {.k = k, .ms = ms};
    for (int i = 0; i < N_PH; i++) ms[i] = 0;
    k->synchronize();
    clock.t0 = time_now();
    k->grad_begin(P->grad, P->numel);
    m->stage_hook = phase_mark;
    m->stage_ctx = &clock;
    int M;
    vlm_forward_backward_acc(m, vb, 1.0f, m->stats + VLM_STAT_LOSS, 0, &M);
    m->stage_hook = NULL;
    m->stage_ctx = NULL;
    double norm;
    bench_update(m, tc, t - 1, M, &norm);
    phase_mark(&clock, PH_OPT);
}

// ---------------------------------------------------------------- one step

// the optimizer half of trainer/run_step.c's step on one rank (gradients scaled by 1 / lab, the
// norm and the loss kept on the backend, AdamW as one launch) and its one wait for the device, at
// the end; returns the mean loss, the gradient norm in *norm
static double bench_update(Vlm *m, const TrainConfig *tc, int s, int lab, double *norm_out) {
    const Kernels *k = m->k;
    ParamSet *P = &m->train;
    double *stats = m->stats;
    k->grad_settle(P->grad, P->numel);
    k->scale_f32(P->grad, (float)(1.0 / lab), P->numel);
    k->sum_f64(stats + VLM_STAT_SUMSQ, P->grad, P->numel, 1, 0);
    optimizer_update_span(P, tc, s, SCHEDULE_STEPS, 0, s + 1, 0, P->numel, stats + VLM_STAT_SUMSQ,
                          stats + VLM_STAT_LOSS);
    params_sync(P);
    double st[VLM_N_STATS];
    k->download(st, stats, sizeof st);
    double loss = st[VLM_STAT_LOSS] / lab, norm = sqrt(st[VLM_STAT_SUMSQ]);
    if (!isfinite(loss) || !isfinite(norm)) fatal("step %d: non-finite loss %g or gradient norm %g", s + 1, loss, norm);
    *norm_out = norm;
    return loss;
}

// what trainer/run_step.c does per optimizer step with one micro-batch on one rank; step s
// (0-based). Returns the mean loss and the gradient norm in *norm.
static double bench_one_step(Vlm *m, const VlmBatch *vb, const TrainConfig *tc, int s, uint64_t seed,
                             int64_t labelled, double *norm) {
    const Kernels *k = m->k;
    k->grad_begin(m->train.grad, m->train.numel);  // as run_step: no memset of the gradients
    vlm_set_training(m, 1, seed * 0x9e3779b97f4a7c15ULL + (uint64_t)s * 4096);
    int lab;
    vlm_forward_backward_acc(m, vb, 1.0f, m->stats + VLM_STAT_LOSS, 0, &lab);
    CHECK(lab == labelled, "labelled %d vs %" PRId64, lab, labelled);
    return bench_update(m, tc, s, lab, norm);
}

// --counts: one warm-up step (plans, first-call setup), then one counted step
static void print_counts(Vlm *m, const VlmBatch *vb, const TrainConfig *tc, uint64_t seed, int64_t labelled,
                         const char *preset, int stage) {
    double norm;
    bench_one_step(m, vb, tc, 0, seed, labelled, &norm);
    m->k->synchronize();
    cuda_counters_reset();
    bench_one_step(m, vb, tc, 1, seed, labelled, &norm);
    CudaCounters c;
    CHECK(cuda_counters_read(&c), "counters not available");
    printf("bench: counts per step (preset %s, stage %d, B=%d, T=%d, %s, not executed): kernel launches %ld, "
           "GEMMs %ld, host synchronisations %ld, memset %zu bytes, host->device %zu bytes, device->host %zu bytes, "
           "device->device %zu bytes; of host->device, %zu bytes staged (memcpy'd by the host into the pinned ring)\n",
           preset, stage, vb->B, vb->T, m->k->name, c.launches, c.gemms, c.syncs, c.memset_bytes, c.h2d_bytes,
           c.d2h_bytes, c.d2d_bytes, c.staged_bytes);
}

// ---------------------------------------------------------------- main

static void usage(void) {
    printf("usage: bench_step [options]\n"
           "  --device cpu|cuda      backend (default cpu)\n"
           "  --preset tiny|mid|reference|internvit|siglip|tiny_internvit|tiny_siglip   model sizes (default mid);\n"
           "                         reference = CLIP\n"
           "                         ViT-L/14-336 + ldp + Qwen2-0.5B, LoRA r 64 alpha 16 on q,k,v,o,gate,up,down in\n"
           "                         stage 2; internvit = InternViT-300M-448px + InternVL mlp1 + Qwen2-0.5B;\n"
           "                         siglip = SigLIP-base-patch16-512 + Idefics3 pixel shuffle 4 + SmolLM2-360M;\n"
           "                         tiny_internvit, tiny_siglip: those families at tiny's sizes\n"
           "  --stage 1|2            1: connector only; 2: connector + LoRA (default 2)\n"
           "  --batch B              micro-batch (default 16 reference, 4 mid, 2 tiny)\n"
           "  --steps N              timed steps (default 10 reference, 3 mid, 5 tiny)\n"
           "  --warmup N             untimed steps before them (default 2)\n"
           "  --seed S               batch and trainable init (default 1234)\n"
           "  --models DIR           random HF model directories, written once and reused (default build/bench/<preset>)\n"
           "  --save-batch PATH      write the batch (safetensors) and the initial trainable tensors next to it\n"
           "                         (PATH minus .safetensors + .trainable.safetensors) for scripts/bench_torch.py\n"
           "  --result PATH          write the measurements as JSON\n"
           "  --peak-tflops X        the device's dense bf16 peak for MFU (default 989: H100/H200 SXM)\n"
           "  --lora-b-std X         LoRA B drawn N(0, X) instead of peft's zeros (parity checks: LoRA then shapes the loss)\n"
           "  --phases N             after the timed steps, N steps split into synchronised stages (default 3; 0: none)\n"
           "  --probe                exit 0 when the device is usable, 77 when it is not\n"
           "  --plan-only            print the memory plan and the largest micro-batch that fits, then exit\n"
           "  --counts               (the emulated CUDA backend, build/emu/bench_step_emu --device cuda) count one step's\n"
           "                         kernel launches, GEMMs, host synchronisations, memset and copied bytes without\n"
           "                         executing anything (tests/gpu/emu), then exit\n"
           "  --budget SIZE          the memory the plan may use (e.g. 80GiB; default: free on the device)\n");
}

int main(int argc, char **argv) {
    openmp_prefer_passive(argv);
    const char *device = "cpu", *preset_name = "mid", *models = NULL, *save = NULL, *result = NULL;
    int stage = 2, B = 0, steps = -1, warmup = 2, n_phase = 3, probe = 0, plan_only = 0, counts = 0;
    size_t budget = 0;
    uint64_t seed = 1234;
    double peak_tflops = 989, lora_b_std = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 0;
        }
        if (!strcmp(a, "--plan-only")) {
            plan_only = 1;
            continue;
        }
        if (!strcmp(a, "--counts")) {
            counts = 1;
            continue;
        }
        if (!strcmp(a, "--probe")) {
            probe = 1;
            continue;
        }
        if (i + 1 >= argc) fatal("%s: needs a value (see --help)", a);
        const char *v = argv[++i];
        char *end;
        if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--preset")) preset_name = v;
        else if (!strcmp(a, "--models")) models = v;
        else if (!strcmp(a, "--save-batch")) save = v;
        else if (!strcmp(a, "--result")) result = v;
        else if (!strcmp(a, "--budget")) {
            if (!config_parse_size(v, &budget) || !budget) fatal("--budget %s: not a size (e.g. 80GiB)", v);
        }
        else if (!strcmp(a, "--stage") || !strcmp(a, "--batch") || !strcmp(a, "--steps") || !strcmp(a, "--warmup") ||
                 !strcmp(a, "--phases") || !strcmp(a, "--seed")) {
            errno = 0;
            long x = strtol(v, &end, 10);
            if (errno || *end || end == v || x < 0 || x > 1000000) fatal("%s %s: not a count", a, v);
            if (!strcmp(a, "--stage")) stage = (int)x;
            else if (!strcmp(a, "--batch")) B = (int)x;
            else if (!strcmp(a, "--steps")) steps = (int)x;
            else if (!strcmp(a, "--warmup")) warmup = (int)x;
            else if (!strcmp(a, "--phases")) n_phase = (int)x;
            else seed = (uint64_t)x;
        } else if (!strcmp(a, "--peak-tflops") || !strcmp(a, "--lora-b-std")) {
            double x = strtod(v, &end);
            if (*end || end == v || !(x >= 0)) fatal("%s %s: not a non-negative number", a, v);
            if (!strcmp(a, "--peak-tflops")) peak_tflops = x;
            else lora_b_std = x;
        } else {
            fatal("unknown option %s (see --help)", a);
        }
    }
    const Kernels *k = NULL;
    if (!strcmp(device, "cpu")) k = kernels_cpu();
    else if (!strcmp(device, "cuda")) k = kernels_cuda();
    else fatal("--device %s: cpu or cuda", device);
    if (probe) {
        printf("bench_step: device %s %s\n", device, k ? "available" : "not available");
        return k ? 0 : 77;
    }
    if (!k) fatal("--device cuda: no CUDA device visible, or svlm was built without nvcc");
    const Preset *p = NULL;
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++)
        if (!strcmp(presets[i].name, preset_name)) p = &presets[i];
    if (!p) fatal("--preset %s: tiny, mid, reference, internvit, siglip, tiny_internvit or tiny_siglip", preset_name);
    if (stage != 1 && stage != 2) fatal("--stage %d: 1 or 2", stage);
    if (B == 0) B = p->batch;
    if (steps < 0) steps = p->steps;
    if (steps < 1) fatal("--steps must be at least 1");
    char mdir[1024], vdir[2048], ldir[2048];
    snprintf(mdir, sizeof mdir, "%s", models ? models : "");
    if (!models) snprintf(mdir, sizeof mdir, "build/bench/%s", p->name);
    ensure_models(p, mdir);
    path_join(vdir, sizeof vdir, mdir, "vision");
    path_join(ldir, sizeof ldir, mdir, "llm");

    // the batch first (its size plans the model's buffers)
    int slot = connector_tokens(p->connector, p->connector_scale, p->vc.grid);
    Batch bt;
    make_batch(&bt, stage, B, slot, p->vc.image_size, p->lc.vocab, seed);

    double t_load = time_now();
    VlmSpec spec = {.vision_dir = vdir, .vision_layer = p->vision_layer, .llm_dir = ldir, .connector = p->connector,
                    .connector_scale = p->connector_scale,
                    .lora = {.r = stage == 2 ? p->lora_r : 0, .alpha = p->lora_alpha, .targets = 0x7f},
                    .max_B = B, .max_T = bt.T, .max_images = bt.n_img};
    // the memory plan, checked against what setup and the steps then hold
    MemPlan plan;
    vlm_plan(&plan, k, &spec);
    size_t dev_free, dev_total;
    k->available(&dev_free, &dev_total);
    if (!budget) budget = dev_free;
    memplan_print(&plan, &spec, k->name, budget, budget == dev_free ? "free on the device" : "--budget");
    int largest = vlm_plan_largest_batch(k, &spec, budget, 4096);
    printf("  largest micro-batch that fits: %d (rows of %d tokens, %d image per row)\n", largest, bt.T,
           bt.n_img / B);
    if (plan_only) return 0;
    if (counts && !cuda_count_only())
        fatal("--counts: counting needs the emulated CUDA backend (build/emu/bench_step_emu --device cuda)");
    size_t mem_base;
    k->memory(&mem_base, NULL);
    Vlm m;
    vlm_init_reserved(&m, k, &spec);
    CHECK(m.n_img_tokens == slot, "slot %d vs %d", m.n_img_tokens, slot);
    vlm_init_trainable(&m, seed);
    if (lora_b_std > 0) {  // LoRA B from N(0, std): the forward then depends on LoRA
        Rng rng;
        rng_init(&rng, seed ^ 0xb0b0ULL);
        for (int i = 0; i < m.train.n; i++) {
            const Param *q = &m.train.p[i];
            if (!strstr(q->name, ".lora_B.")) continue;
            float *x = xmalloc(q->numel * sizeof(float));
            for (size_t j = 0; j < q->numel; j++) x[j] = (float)lora_b_std * rng_normal(&rng);
            params_upload(&m.train, i, x);
            free(x);
        }
        params_sync(&m.train);
    }
    k->synchronize();
    t_load = time_now() - t_load;

    size_t n_conn = params_group_numel(&m.train, PARAM_GROUP_CONNECTOR), n_lora = params_group_numel(&m.train, PARAM_GROUP_LORA);
    const VitConfig *vc = &m.vit.cfg;
    const LlmConfig *lc = &m.llm.cfg;
    printf("bench: preset %s, stage %d, device %s: vision %s %dx%d/%d, %d of %d layers, width %d | %s (%d tokens) | %s "
           "width %d, %d layers, %d/%d heads, mlp %d, vocab %d | ",
           p->name, stage, k->name, vit_type_name(vc), vc->image_size, vc->image_size, vc->patch, m.vit.n_run, vc->layers,
           vc->hidden, connector_type_name(p->connector), slot, lc->model_type, lc->hidden, lc->layers, lc->heads, lc->kv_heads, lc->mlp, lc->vocab);
    if (stage == 2) printf("LoRA r %d alpha %g on 7 projections\n", p->lora_r, (double)p->lora_alpha);
    else printf("no LoRA\n");
    printf("bench: trainable: connector %zu, LoRA %zu parameters; model loaded in %.1f s\n", n_conn, n_lora, t_load);
    char blas[512] = "";
    if (!strcmp(k->name, "cpu")) {
        cpu_blas_describe(blas, sizeof blas);
        printf("bench: %s\n", blas);
    }
    int lmin = bt.lens[0], lmax = 0;
    for (int r = 0; r < B; r++) {
        if (bt.lens[r] < lmin) lmin = bt.lens[r];
        if (bt.lens[r] > lmax) lmax = bt.lens[r];
    }
    printf("bench: batch %d x %d (padded), rows of %d-%d tokens, %" PRId64 " non-pad tokens (%d image tokens each "
           "included), %" PRId64 " labelled positions, seed %" PRIu64 "\n",
           B, bt.T, lmin, lmax, bt.tokens, slot, bt.labelled, seed);

    int *padded = xmalloc(B * sizeof(int));
    for (int r = 0; r < B; r++) padded[r] = bt.T;
    Flops fl = step_flops(&m, B, bt.lens, bt.n_img, bt.labelled);
    Flops fp = step_flops(&m, B, padded, bt.n_img, bt.labelled);
    free(padded);
    printf("bench: model FLOPs per step %.4g TFLOP on the non-pad tokens (vision %.4g, connector %.4g, LLM %.4g); "
           "%.4g TFLOP with the padding (see step_flops in bench/bench_step.c)\n",
           fl.total / 1e12, fl.vision / 1e12, fl.connector / 1e12, fl.llm / 1e12, fp.total / 1e12);

    TrainConfig tc;
    bench_train_config(&tc, stage);
    if (save) {
        StWriter *w = st_writer_new();
        int64_t sh2[2] = {B, bt.T}, sh1[1] = {B}, sh4[4] = {bt.n_img, 3, bt.S, bt.S};
        st_writer_add(w, "input_ids", ST_I32, 2, sh2, bt.ids);
        st_writer_add(w, "labels", ST_I32, 2, sh2, bt.labels);
        st_writer_add(w, "img_row", ST_I32, 1, sh1, bt.img_row);
        st_writer_add(w, "img_start", ST_I32, 1, sh1, bt.img_start);
        st_writer_add(w, "lengths", ST_I32, 1, sh1, bt.lens);
        st_writer_add(w, "pixel_values", ST_F32, 4, sh4, bt.pixels);
        char tpath[2048], num[128];
        trainable_path(save, tpath, sizeof tpath);
        st_writer_meta(w, "format", "pt");
        st_writer_meta(w, "preset", p->name);
        snprintf(num, sizeof num, "%d", stage);
        st_writer_meta(w, "stage", num);
        st_writer_meta(w, "vision_dir", vdir);
        st_writer_meta(w, "llm_dir", ldir);
        snprintf(num, sizeof num, "%d", p->vision_layer);
        st_writer_meta(w, "vision_layer", num);
        st_writer_meta(w, "connector", connector_type_name(p->connector));
        snprintf(num, sizeof num, "%d", stage == 2 ? p->lora_r : 0);
        st_writer_meta(w, "lora_r", num);
        snprintf(num, sizeof num, "%g", (double)p->lora_alpha);
        st_writer_meta(w, "lora_alpha", num);
        st_writer_meta(w, "lora_targets", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
        st_writer_meta(w, "trainable_file", base_name(tpath));
        snprintf(num, sizeof num, "%.17g", tc.lr);
        st_writer_meta(w, "lr", num);
        snprintf(num, sizeof num, "%.17g", tc.connector_lr > 0 ? tc.connector_lr : tc.lr);
        st_writer_meta(w, "connector_lr", num);
        snprintf(num, sizeof num, "%.17g", tc.weight_decay);
        st_writer_meta(w, "weight_decay", num);
        snprintf(num, sizeof num, "%.17g", tc.grad_clip);
        st_writer_meta(w, "grad_clip", num);
        snprintf(num, sizeof num, "%.17g,%.17g,%.17g", tc.adam_beta1, tc.adam_beta2, tc.adam_eps);
        st_writer_meta(w, "adam_betas_eps", num);
        snprintf(num, sizeof num, "%" PRId64, bt.tokens);
        st_writer_meta(w, "tokens", num);
        snprintf(num, sizeof num, "%" PRId64, bt.labelled);
        st_writer_meta(w, "labelled", num);
        snprintf(num, sizeof num, "%d", slot);
        st_writer_meta(w, "image_tokens", num);
        snprintf(num, sizeof num, "%.17g", fl.total);
        st_writer_meta(w, "model_flops", num);
        snprintf(num, sizeof num, "%d", warmup);
        st_writer_meta(w, "warmup", num);
        snprintf(num, sizeof num, "%d", steps);
        st_writer_meta(w, "steps", num);
        snprintf(num, sizeof num, "%" PRIu64, seed);
        st_writer_meta(w, "seed", num);
        save_or_die(w, save);
        // the initial trainable tensors (fp32 masters) under svlm's checkpoint names
        w = st_writer_new();
        float *host = xmalloc(m.train.numel * sizeof(float));
        for (int i = 0; i < m.train.n; i++) {
            const Param *q = &m.train.p[i];
            params_download(&m.train, i, host + q->offset);
            st_writer_add(w, q->name, ST_F32, q->ndim, q->shape, host + q->offset);
        }
        st_writer_meta(w, "format", "pt");
        save_or_die(w, tpath);
        free(host);
        printf("bench: batch written to %s, initial trainable tensors to %s\n", save, tpath);
    }

    // bf16 pixels where the backend computes in bf16, rounded once here as the trainer's loader
    // threads round them (data/loader.h), not in the step, into the backend's host memory as the
    // loader's batches are (pinned on CUDA: uploaded in place, not through the staging ring)
    uint16_t *pixels16 = NULL;
    if (k->act_bytes == 2) {
        size_t np = (size_t)bt.n_img * 3 * bt.S * bt.S;
        pixels16 = k->host_alloc(np * sizeof(uint16_t));
        for (size_t i = 0; i < np; i++) pixels16[i] = f32_to_bf16(bt.pixels[i]);
    }
    VlmBatch vb = {.B = B, .T = bt.T, .ids = bt.ids, .targets = bt.targets, .n_img = bt.n_img, .pixels = bt.pixels,
                   .pixels_bf16 = pixels16, .img_row = bt.img_row, .img_start = bt.img_start};
    if (counts) {
        print_counts(&m, &vb, &tc, seed, bt.labelled, p->name, stage);
        if (pixels16) k->host_free(pixels16);
        vlm_free(&m);
        batch_free(&bt);
        return 0;
    }
    double best = 1e30, total = 0, loss0 = NAN;
    int n_total = warmup + steps;
    double *losses = xmalloc(n_total * sizeof(double));
    for (int s = 0; s < n_total; s++) {
        k->synchronize();
        double t0 = time_now();
        double norm, loss = bench_one_step(&m, &vb, &tc, s, seed, bt.labelled, &norm);
        k->synchronize();
        double dt = time_now() - t0;
        losses[s] = loss;
        if (s == 0) loss0 = losses[s];
        printf("bench: step %d/%d%s: loss %.6f, grad norm %.4g, %.1f ms\n", s + 1, n_total, s < warmup ? " (warm-up)" : "",
               losses[s], norm, dt * 1e3);
        if (s >= warmup) {
            total += dt;
            if (dt < best) best = dt;
        }
    }
    double mean = total / steps;
    size_t in_use = 0, peak = 0;
    k->memory(&in_use, &peak);
    printf("bench: memory plan %zu bytes; held after setup and %d steps %zu, peak %zu (from %zu before setup)%s\n",
           plan.total, n_total, in_use - mem_base, peak - mem_base, mem_base,
           peak - mem_base == plan.total ? "" : ": NOT THE PLAN");

    double ph_best[N_PH];
    for (int i = 0; i < N_PH; i++) ph_best[i] = 1e30;
    for (int r = 0; r < n_phase; r++) {
        double ms[N_PH];
        phase_step(&m, &vb, &tc, n_total + r + 1, ms);
        for (int i = 0; i < N_PH; i++)
            if (ms[i] < ph_best[i]) ph_best[i] = ms[i];
    }
    if (n_phase > 0) {
        double sum = 0;
        for (int i = 0; i < N_PH; i++) sum += ph_best[i];
        printf("bench: where the time goes (best of %d steps split into stages, synchronised after each):\n", n_phase);
        for (int i = 0; i < N_PH; i++)
            printf("bench:   %-22s %9.2f ms  %5.1f%%\n", ph_name(i), ph_best[i], 100 * ph_best[i] / sum);
        printf("bench:   %-22s %9.2f ms  (mean timed step %.2f ms)\n", "sum", sum, mean * 1e3);
    }

    char pk[32];
    double sps = B / mean, tps = bt.tokens / mean, tflops = fl.total / mean / 1e12;
    const char *peak_what = strcmp(k->name, "cpu") ? "" : " (CPU allocations)";
    printf("bench: svlm first-step loss %.6f over %" PRId64 " labelled positions\n", loss0, bt.labelled);
    printf("bench: step %.1f ms best, %.1f ms mean of %d (after %d warm-up), %.1f GFLOP/s; throughput from the mean; "
           "tokens/s counts non-pad tokens, image tokens included; peak = memory held through the backend's allocations%s\n",
           best * 1e3, mean * 1e3, steps, warmup, fl.total / mean / 1e9, peak_what);
    printf("bench: svlm stage %d %s %s B=%d: %.1f ms/step, %.1f samples/s, %.0f tokens/s, peak %s, %.3g TFLOP/s, MFU %.3g%%\n",
           stage, p->name, k->name, B, mean * 1e3, sps, tps, fmt_bytes((double)peak, pk, sizeof pk), tflops,
           100 * tflops / peak_tflops);
    if (result) {
        FILE *f = fopen(result, "w");
        if (!f) fatal("%s: cannot create: %s", result, strerror(errno));
        fprintf(f, "{\"impl\": \"svlm\", \"preset\": \"%s\", \"stage\": %d, \"device\": \"%s\", \"batch\": %d, \"T\": %d, "
                "\"tokens\": %" PRId64 ", \"labelled\": %" PRId64 ", \"warmup\": %d, \"steps\": %d, "
                "\"ms_best\": %.4f, \"ms_mean\": %.4f, \"samples_per_s\": %.4f, \"tokens_per_s\": %.2f, "
                "\"peak_bytes\": %zu, \"model_flops\": %.6g, \"tflops\": %.6g, \"peak_tflops\": %g, \"mfu\": %.6g, "
                "\"loss_first\": %.9g, \"losses\": [",
                p->name, stage, k->name, B, bt.T, bt.tokens, bt.labelled, warmup, steps, best * 1e3, mean * 1e3, sps, tps,
                peak, fl.total, tflops, peak_tflops, tflops / peak_tflops, loss0);
        for (int s = 0; s < n_total; s++) fprintf(f, "%s%.9g", s ? ", " : "", losses[s]);
        fprintf(f, "]");
        struct rusage ru;
        if (!getrusage(RUSAGE_SELF, &ru)) fprintf(f, ", \"rss_peak_bytes\": %lld", (long long)ru.ru_maxrss * 1024);
        if (blas[0]) fprintf(f, ", \"blas\": \"%s\"", blas);
        if (n_phase > 0) {
            fprintf(f, ", \"phases_ms\": {");
            for (int i = 0; i < N_PH; i++) fprintf(f, "%s\"%s\": %.4f", i ? ", " : "", ph_name(i), ph_best[i]);
            fprintf(f, "}");
        }
        fprintf(f, "}\n");
        if (fclose(f) != 0) fatal("%s: write failed: %s", result, strerror(errno));
    }
    free(losses);
    if (pixels16) k->host_free(pixels16);
    vlm_free(&m);
    batch_free(&bt);
    return 0;
}
