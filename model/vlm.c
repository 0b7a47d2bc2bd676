// vlm.c: joins vision encoder, connector and LLM into one trainable model (see vlm.h).
#include "model/vlm.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

const char *const vlm_stage_names[N_VLM_STAGES] = {"upload batch", "embed tokens", "vision forward",
                                                   "connector forward", "LLM forward", "loss (labelled rows)",
                                                   "LLM backward", "connector backward"};

static void stage_done(const Vlm *m, int stage) {
    if (m->stage_hook) m->stage_hook(m->stage_ctx, stage);
}

void vlm_init(Vlm *m, const Kernels *k, const VlmSpec *spec) {
    memset(m, 0, sizeof *m);
    m->k = k;
    m->max_B = spec->max_B;
    m->max_T = spec->max_T;
    m->max_images = spec->max_images;
    VitConfig vcfg;  // settle what the configs alone can refuse before loading any weight
    vit_config_load(&vcfg, spec->vision_dir);
    connector_tokens(spec->connector, spec->connector_scale, vcfg.grid);  // fatal() when the grid does not suit it
    vit_load(&m->vit, k, spec->vision_dir, spec->vision_layer, spec->max_images);
    // a connector trained on the tower's final-norm output (Idefics3) gets it
    if (connector_family(spec->connector)->vision_post_norm) vit_set_post_norm(&m->vit, 1);
    params_init(&m->train, k, 1);
    llm_load(&m->llm, k, spec->llm_dir, &spec->lora, &m->train);
    if (m->llm.cfg.sliding_window > 0 && spec->max_T > m->llm.cfg.sliding_window)
        fatal("%s: sliding_window %d is shorter than max_seq_len %d; svlm has no sliding-window attention, "
              "so set max_seq_len <= %d", spec->llm_dir, m->llm.cfg.sliding_window, spec->max_T, m->llm.cfg.sliding_window);
    const VitConfig *vc = &m->vit.cfg;
    m->conn_first = m->train.n;
    connector_declare(&m->conn, &m->train, spec->connector, spec->connector_scale, vit_feature_dim(vc), m->llm.cfg.hidden, vc->grid,
                      spec->max_images);
    m->conn_n = m->train.n - m->conn_first;
    if (spec->opt_shards > 1) params_shard_optimizer(&m->train, spec->opt_shards, spec->opt_shard);
    params_alloc(&m->train);
    connector_setup(&m->conn);
    llm_setup(&m->llm, spec->max_B, spec->max_T);
    m->n_img_tokens = m->conn.n_out;

    size_t I = spec->max_images, N = (size_t)spec->max_B * spec->max_T, ab = k->act_bytes;
    size_t S = vc->image_size, H = m->llm.cfg.hidden;
    m->pixels = k->alloc(I * 3 * S * S * ab);
    m->feats = k->alloc(I * vc->n_patches * vit_feature_dim(vc) * ab);
    m->img_emb = k->alloc(I * m->n_img_tokens * H * ab);
    m->dimg = k->alloc(I * m->n_img_tokens * H * ab);
    m->ids = k->alloc(N * sizeof(int));
    m->pos = k->alloc(N * sizeof(int));
    m->seg = k->alloc(N * sizeof(int));
    m->lab_idx = k->alloc(N * sizeof(int));
    m->lab_tgt = k->alloc(N * sizeof(int));
    m->img_idx = k->alloc(I * m->n_img_tokens * sizeof(int));
    m->pad_idx = k->alloc(N * sizeof(int));
    m->row_idx = k->alloc(N * sizeof(int));
    m->keep_pos = k->alloc(N * sizeof(int));
    m->pad_keep = k->alloc(N * sizeof(int));
    m->row_keep = k->alloc(N * sizeof(int));
    m->stats = k->alloc(VLM_N_STATS * sizeof(double));
    for (int s = 0; s < 2; s++) m->h_set[s] = k->host_alloc((10 * N + I * m->n_img_tokens) * sizeof(int));
    m->h_cur = 1;
    m->h_slot = xmalloc(N);
    m->h_len = xmalloc((size_t)spec->max_B * sizeof(int));
}

void vlm_free(Vlm *m) {
    const Kernels *k = m->k;
    void *bufs[] = {m->pixels, m->feats, m->img_emb, m->dimg, m->ids, m->pos, m->seg, m->lab_idx, m->lab_tgt, m->img_idx,
                    m->pad_idx, m->row_idx, m->keep_pos, m->pad_keep, m->row_keep, m->stats};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) k->free(bufs[i]);
    for (int s = 0; s < 2; s++) k->host_free(m->h_set[s]);
    free(m->h_slot);
    free(m->h_len);
    connector_free(&m->conn);
    llm_free(&m->llm);
    vit_free(&m->vit);
    params_free(&m->train);
    memset(m, 0, sizeof *m);
}

void vlm_init_trainable(Vlm *m, uint64_t seed) {
    connector_init(&m->conn, seed);
    llm_lora_init(&m->llm, seed ^ 0x5eed10a4ULL);
}

void vlm_set_training(Vlm *m, int training, uint64_t seed) {
    m->llm.training = training;
    m->llm.dropout_seed = seed;
}

// How many positions of each row the step runs (h_len): with `trim`, up to the row's last
// labelled position and the end of its last image slot (what comes after changes no loss: the
// attention is causal), else all T. Returns the longest.
static int row_lengths(Vlm *m, const VlmBatch *b, int trim) {
    int B = b->B, T = b->T, nt = m->n_img_tokens, T_run = 0;
    for (int r = 0; r < B; r++) {
        int len = trim ? 0 : T;
        for (int t = len; t < T; t++)
            if (b->targets[r * T + t] >= 0) len = t + 1;
        m->h_len[r] = len;
    }
    for (int i = 0; trim && i < b->n_img; i++)
        if (m->h_len[b->img_row[i]] < b->img_start[i] + nt) m->h_len[b->img_row[i]] = b->img_start[i] + nt;
    for (int r = 0; r < B; r++)
        if (m->h_len[r] > T_run) T_run = m->h_len[r];
    return T_run;
}

// checks the batch against the plan and uploads tokens, positions, segments and images: the
// LLM's rows are the B x T_run positions (m->at), or, when rows end at different lengths, only
// each row's first h_len positions back to back (compact, m->n_rows of them; LlmAttend.pad).
// Leaves the labelled rows in h_idx/h_tgt and returns their count.
static int upload_batch(Vlm *m, const VlmBatch *b, int trim) {
    const Kernels *k = m->k;
    int B = b->B, T = b->T, N = B * T, V = m->llm.cfg.vocab, nt = m->n_img_tokens;
    if (B < 1 || T < 1 || B > m->max_B || T > m->max_T)
        fatal("batch of %d x %d tokens exceeds the planned %d x %d (batch_size x max_seq_len)", B, T, m->max_B, m->max_T);
    if (b->n_img < 0 || b->n_img > m->max_images)
        fatal("batch has %d images, more than the planned %d", b->n_img, m->max_images);
    // the other set of host arrays, once the device has read what was uploaded from it
    m->h_cur ^= 1;
    k->host_ready(m->h_set[m->h_cur]);
    size_t NN = (size_t)m->max_B * m->max_T;
    m->h_ids = m->h_set[m->h_cur];
    m->h_pos = m->h_ids + NN;
    m->h_idx = m->h_pos + NN;
    m->h_tgt = m->h_idx + NN;
    m->h_seg = m->h_tgt + NN;
    m->h_pad = m->h_seg + NN;
    m->h_row = m->h_pad + NN;
    m->h_keep_pos = m->h_row + NN;
    m->h_pad_keep = m->h_keep_pos + NN;
    m->h_row_keep = m->h_pad_keep + NN;
    m->h_img_idx = m->h_row_keep + NN;
    memset(m->h_slot, 0, (size_t)N);
    for (int i = 0; i < b->n_img; i++) {
        int r = b->img_row[i], s = b->img_start[i];
        if (r < 0 || r >= B || s < 0 || s + nt > T)
            fatal("image %d: slot at row %d position %d with %d tokens does not fit a %d x %d batch", i, r, s, nt, B, T);
        for (int j = 0; j < nt; j++) {
            if (m->h_slot[r * T + s + j]) fatal("image %d: its slot overlaps another image's", i);
            m->h_slot[r * T + s + j] = 1;
        }
    }
    for (int i = 0; i < N; i++) {
        if (!m->h_slot[i] && (b->ids[i] < 0 || b->ids[i] >= V))
            fatal("token id %d at row %d position %d is outside the vocabulary (%d)", b->ids[i], i / T, i % T, V);
        int t = b->targets[i];
        if (t < -1 || t >= V) fatal("target id %d at row %d position %d is outside the vocabulary (%d)", t, i / T, i % T, V);
    }
    int TR = row_lengths(m, b, trim), n = 0, M = 0, compact = 0;
    for (int r = 0; r < B; r++) compact |= m->h_len[r] != TR;
    // the attention's positions (B, TR) and the compact rows: h_pad[r * TR + t] = compact row or
    // -1, h_row[c] = r * TR + t
    for (int r = 0; r < B; r++)
        for (int t = 0; t < TR; t++) {
            int i = r * T + t, a = r * TR + t, in = t < m->h_len[r] || !compact;
            m->h_pos[a] = b->pos ? b->pos[i] : t;
            if (b->seg) m->h_seg[a] = b->seg[i];
            m->h_pad[a] = in ? n : -1;
            if (!in) continue;
            m->h_row[n] = a;
            m->h_ids[n] = m->h_slot[i] ? -1 : b->ids[i];  // -1: embedding row left for image features
            if (b->targets[i] >= 0) {
                m->h_idx[M] = n;
                m->h_tgt[M] = b->targets[i];
                M++;
            }
            n++;
        }
    for (int i = 0; i < b->n_img; i++) {
        int r = b->img_row[i], s = b->img_start[i];
        for (int j = 0; j < nt; j++) m->h_img_idx[i * nt + j] = m->h_pad[r * TR + s + j];  // inside h_len: >= 0
    }
    m->n_rows = n;
    m->at = (LlmAttend){.B = B, .T = TR, .seg = b->seg ? m->seg : NULL, .pad = compact ? m->pad_idx : NULL,
                        .rows = compact ? m->row_idx : NULL};
    if (n == 0) return 0;
    int NA = B * TR;
    // the step's loss reads the labelled rows only: the last layer runs them alone after its
    // attention (LlmAttend.keep), unless every row is labelled
    int keep = trim && M > 0 && M < n;
    if (keep) {
        for (int a = 0; a < NA; a++) m->h_pad_keep[a] = -1;
        for (int c = 0; c < n; c++) m->h_row_keep[c] = -1;
        for (int j = 0; j < M; j++) {
            int c = m->h_idx[j], a = m->h_row[c];  // h_row[c] == c when not compact
            m->h_keep_pos[j] = a;
            m->h_pad_keep[a] = j;
            m->h_row_keep[c] = j;
        }
        m->at.keep = m->lab_idx;
        m->at.keep_pos = m->keep_pos;
        m->at.pad_keep = m->pad_keep;
        m->at.row_keep = m->row_keep;
        m->at.n_keep = M;
    }
    k->upload(m->ids, m->h_ids, (size_t)n * sizeof(int));
    k->upload(m->pos, m->h_pos, (size_t)NA * sizeof(int));
    if (b->seg) k->upload(m->seg, m->h_seg, (size_t)NA * sizeof(int));
    if (compact) {
        k->upload(m->pad_idx, m->h_pad, (size_t)NA * sizeof(int));
        k->upload(m->row_idx, m->h_row, (size_t)n * sizeof(int));
    }
    k->upload(m->lab_idx, m->h_idx, (size_t)M * sizeof(int));
    k->upload(m->lab_tgt, m->h_tgt, (size_t)M * sizeof(int));
    if (keep) {
        k->upload(m->keep_pos, m->h_keep_pos, (size_t)M * sizeof(int));
        k->upload(m->pad_keep, m->h_pad_keep, (size_t)NA * sizeof(int));
        k->upload(m->row_keep, m->h_row_keep, (size_t)n * sizeof(int));
    }
    if (b->n_img) {
        const VitConfig *vc = &m->vit.cfg;
        size_t np = (size_t)b->n_img * 3 * vc->image_size * vc->image_size;
        if (b->pixels_bf16 && k->act_bytes == sizeof(uint16_t)) k->upload(m->pixels, b->pixels_bf16, np * sizeof(uint16_t));
        else k->upload_act(m->pixels, b->pixels, np);
        k->upload(m->img_idx, m->h_img_idx, (size_t)b->n_img * nt * sizeof(int));
    }
    return M;
}

static void forward(Vlm *m, const VlmBatch *b) {
    const Kernels *k = m->k;
    int N = m->n_rows, H = m->llm.cfg.hidden;
    act_t *x0 = m->llm.acts[0].x;
    llm_embed(&m->llm, x0, m->ids, N);
    stage_done(m, VLM_STAGE_EMBED);
    if (b->n_img) {
        vit_forward(&m->vit, m->feats, m->pixels, b->n_img);
        stage_done(m, VLM_STAGE_VISION);
        connector_forward(&m->conn, m->img_emb, m->feats, b->n_img);
        k->scatter_rows(x0, m->img_emb, m->img_idx, b->n_img * m->n_img_tokens, H);
        stage_done(m, VLM_STAGE_CONNECTOR_F);
    }
    llm_forward(&m->llm, &m->at, N, m->pos);
    stage_done(m, VLM_STAGE_LLM_F);
}

void vlm_forward_backward_acc(Vlm *m, const VlmBatch *b, float grad_scale, double *loss_sum, int accumulate,
                              int *n_labelled) {
    const Kernels *k = m->k;
    int M = 0;
    if (b->B > 0) {  // B 0: every sample of the batch was dropped by the loader
        M = upload_batch(m, b, 1);
        stage_done(m, VLM_STAGE_UPLOAD);
    }
    if (n_labelled) *n_labelled = M;
    if (M == 0) {  // nothing to learn from: no forward needed
        if (!accumulate) k->zero(loss_sum, sizeof(double));
        return;
    }
    forward(m, b);
    int backward = grad_scale != 0.0f;
    llm_loss(&m->llm, m->n_rows, m->lab_idx, m->lab_tgt, M, grad_scale, backward);
    k->sum_f64(loss_sum, m->llm.losses, (size_t)M, 0, accumulate);
    stage_done(m, VLM_STAGE_LOSS);
    if (backward) {
        m->llm.grads_ready = m->grads_ready;
        llm_backward(&m->llm, &m->at, m->n_rows, m->pos);
        m->llm.grads_ready = (GradsReady){0};
        stage_done(m, VLM_STAGE_LLM_B);
        if (b->n_img) {
            int rows = b->n_img * m->n_img_tokens;
            k->gather_rows(m->dimg, m->llm.dx, m->img_idx, rows, m->llm.cfg.hidden);
            connector_backward(&m->conn, m->dimg, m->feats, b->n_img);
            if (m->conn_n && m->grads_ready.fn) m->grads_ready.fn(m->grads_ready.ctx, m->conn_first, m->conn_n);
            stage_done(m, VLM_STAGE_CONNECTOR_B);
        }
    }
}

double vlm_forward_backward(Vlm *m, const VlmBatch *b, float grad_scale, int *n_labelled) {
    if (b->B == 0) {
        if (n_labelled) *n_labelled = 0;
        return 0.0;
    }
    double *acc = m->stats + VLM_STAT_LOSS, sum;
    vlm_forward_backward_acc(m, b, grad_scale, acc, 0, n_labelled);
    m->k->download(&sum, acc, sizeof sum);
    return sum;
}

int vlm_grad_groups(const Vlm *m, int *first, int *n, int cap) {
    int g = 0;
    for (int l = m->llm.cfg.layers - 1; l >= 0; l--) {  // the order of llm_backward
        int f, c = llm_lora_range(&m->llm, l, &f);
        if (c && g < cap) first[g] = f, n[g++] = c;
    }
    if (m->conn_n && g < cap) first[g] = m->conn_first, n[g++] = m->conn_n;
    return g;
}

void vlm_logits(Vlm *m, const VlmBatch *b, float *logits) {
    const Kernels *k = m->k;
    upload_batch(m, b, 0);  // every position: logits (B, T, V)
    forward(m, b);
    size_t N = (size_t)b->B * b->T, V = m->llm.cfg.vocab;
    act_t *out = k->alloc(N * V * k->act_bytes);
    llm_logits(&m->llm, out, (int)N);
    k->download_act(logits, out, N * V);
    k->free(out);
}
