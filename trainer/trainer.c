// trainer.c: the training run (see trainer.h).
#include "trainer/trainer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fs_safe.h"
#include "common/util.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/template.h"
#include "model/memplan.h"
#include "model/vlm.h"
#include "trainer/checkpoint.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"

static volatile sig_atomic_t g_stop_signal;

static void on_stop_signal(int sig) {
    if (g_stop_signal) _exit(128 + sig);  // a second signal: the user insists
    g_stop_signal = sig;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

// data may be a prepared shard directory, or LLaVA JSON/JSONL prepared once into cache/<name>
static void resolve_data(const TrainConfig *c, const char *data, const char *image_folder, const char *name,
                         int image_tokens, char *shards, size_t cap) {
    if (dir_exists(data)) {
        snprintf(shards, cap, "%s", data);
        return;
    }
    if (!file_exists(data)) fatal("data = %s: no such file or directory", data);
    if (!ends_with(data, ".json") && !ends_with(data, ".jsonl"))
        fatal("data = %s: expected a .json or .jsonl file, or a shard directory made by ./prepare", data);
    make_dirs(c->data_cache);
    snprintf(shards, cap, "%s/%s", c->data_cache, name);
    PrepareSpec ps;
    prepare_spec_defaults(&ps);
    ps.data = data;
    ps.image_folder = image_folder[0] ? image_folder : NULL;
    ps.allow_outside_images = c->allow_outside_images;
    ps.llm_dir = c->llm;
    ps.template_name = c->template_;
    ps.out_dir = shards;
    ps.system = strcmp(c->system, "default") ? c->system : NULL;
    ps.max_seq_len = c->max_seq_len;
    ps.image_tokens = image_tokens;
    ps.threads = c->threads;
    char why[512];
    if (prepare_is_current(shards, &ps, why, sizeof why)) {
        printf("data: %s is prepared already in %s\n", data, shards);
        return;
    }
    printf("data: preparing %s into %s (%s)\n", data, shards, why);
    PrepareSummary sum;
    prepare_run(&ps, &sum);
    prepare_print_summary(&ps, &sum, stdout);
}

// one line of JSON that pins what a checkpoint's tensors mean
static char *model_signature(const TrainConfig *c, const Vlm *m) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "stage", c->stage);
    cJSON_AddStringToObject(j, "connector", c->connector);
    cJSON *v = cJSON_AddObjectToObject(j, "vision");
    const VitConfig *vc = &m->vit.cfg;
    cJSON_AddNumberToObject(v, "hidden", vc->hidden);
    cJSON_AddNumberToObject(v, "layers_run", m->vit.n_run);
    cJSON_AddNumberToObject(v, "image_size", vc->image_size);
    cJSON_AddNumberToObject(v, "patch", vc->patch);
    cJSON *l = cJSON_AddObjectToObject(j, "llm");
    const LlmConfig *lc = &m->llm.cfg;
    cJSON_AddStringToObject(l, "model_type", lc->model_type);
    cJSON_AddNumberToObject(l, "hidden", lc->hidden);
    cJSON_AddNumberToObject(l, "layers", lc->layers);
    cJSON_AddNumberToObject(l, "heads", lc->heads);
    cJSON_AddNumberToObject(l, "kv_heads", lc->kv_heads);
    cJSON_AddNumberToObject(l, "head_dim", lc->head_dim);
    cJSON_AddNumberToObject(l, "mlp", lc->mlp);
    cJSON_AddNumberToObject(l, "vocab", lc->vocab);
    cJSON *lo = cJSON_AddObjectToObject(j, "lora");
    cJSON_AddNumberToObject(lo, "r", m->llm.lora.r);
    cJSON_AddNumberToObject(lo, "alpha", m->llm.lora.alpha);
    cJSON_AddNumberToObject(lo, "targets", m->llm.lora.targets);
    cJSON_AddBoolToObject(lo, "rslora", m->llm.lora.rslora);
    cJSON *t = cJSON_AddArrayToObject(j, "trainable");
    char buf[PARAM_NAME_MAX + 64];
    for (int i = 0; i < m->train.n; i++) {
        const Param *p = &m->train.p[i];
        char shape[64];
        st_shape_str(p->ndim, p->shape, shape, sizeof shape);
        snprintf(buf, sizeof buf, "%s %s", p->name, shape);
        cJSON_AddItemToArray(t, cJSON_CreateString(buf));
    }
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

static void fmt_duration(double s, char *buf, size_t cap) {
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%ldh%02ldm%02lds", t / 3600, t / 60 % 60, t % 60);
    else if (t >= 60) snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, cap, "%lds", t);
}

// a JSON number, or null where the value is not finite (JSON has no NaN)
static const char *jnum(double v, char *buf) {
    if (!isfinite(v)) return "null";
    snprintf(buf, 32, "%.9g", v);
    return buf;
}

static VlmBatch to_vlm_batch(const LoaderBatch *b) {
    return (VlmBatch){.B = b->B, .T = b->T, .ids = b->ids, .targets = b->targets, .pos = b->pos, .seg = b->seg,
                      .n_img = b->n_img, .pixels = b->pixels, .img_row = b->img_row, .img_start = b->img_start};
}

// mean loss over the whole validation set (this rank's slice), in file order
static double evaluate(Vlm *m, Loader *val, int64_t *count) {
    vlm_set_training(m, 0, 0);
    loader_seek(val, (LoaderPos){0, 0});
    int64_t n = loader_samples_per_rank(val), done = 0, tokens = 0;
    double sum = 0;
    LoaderBatch b;
    while (done < n) {
        loader_next(val, &b);
        done += b.n_samples + b.n_skipped;
        VlmBatch vb = to_vlm_batch(&b);
        int lab;
        sum += vlm_forward_backward(m, &vb, 0.0f, &lab);
        tokens += lab;
    }
    *count = tokens;
    return tokens ? sum / tokens : NAN;
}

// keep_bytes < 0: a fresh file; otherwise the file cut to keep_bytes (a resumed run logs again
// what was logged after its checkpoint) or, with INT64_MAX, kept whole. A fresh or cut file is
// written anew and renamed over the old one (common/fs_safe.h), so a symbolic link planted there
// is replaced as an entry and what it points to is never truncated; appending refuses links.
static FILE *open_log(const char *out_dir, const char *name, int64_t keep_bytes) {
    char path[CFG_PATH + 32];
    snprintf(path, sizeof path, "%s/%s", out_dir, name);
    struct stat sb;
    int present = lstat(path, &sb) == 0, regular = present && S_ISREG(sb.st_mode);
    if (keep_bytes != INT64_MAX || (present && !regular)) {
        char *keep = NULL;
        size_t n = 0;
        if (present && !regular)
            warn("%s is not a regular file (a symbolic link?): replaced by one; what it pointed to is left as it was%s",
                 path, keep_bytes > 0 ? ", and the records before the checkpoint are not carried over" : "");
        else if (keep_bytes > 0 && present) {
            keep = fs_read_nofollow(path, (size_t)keep_bytes, &n);
            if (!keep) fatal("%s: cannot read: %s", path, strerror(errno));
            if ((int64_t)n < keep_bytes)  // lost lines are not made up: keep what is there
                warn("%s: shorter (%zu bytes) than at the checkpoint (%lld): earlier records are missing", path, n,
                     (long long)keep_bytes);
        }
        if (fs_replace(path, keep ? keep : "", n) != 0) fatal("%s: cannot write: %s", path, strerror(errno));
        free(keep);
    }
    FILE *f = fs_open_append(path);
    if (!f) fatal("%s: cannot open: %s", path, strerror(errno));
    return f;
}

// The memory plan, before anything is allocated: printed, and fatal with the largest micro-batch
// that fits when the configured one does not. Returns its total.
static size_t plan_memory(const TrainConfig *c, const Kernels *k, const VlmSpec *spec, int world) {
    MemPlan p;
    vlm_plan(&p, k, spec);
    size_t free_b, total_b, budget;
    k->available(&free_b, &total_b);
    char what[128], b[4][32];
    if (c->memory_limit_bytes) {
        budget = c->memory_limit_bytes;
        snprintf(what, sizeof what, "memory_limit = %s", c->memory_limit);
    } else {
        budget = free_b;
        snprintf(what, sizeof what, "free on %s at start, of %s", k->name, fmt_bytes(total_b, b[0], 32));
    }
    memplan_print(&p, spec, k->name, budget, what);
    // micro-batches beyond 4096 rows or 2^27 tokens are not searched (int token indices)
    int cap = (int)(((size_t)1 << 27) / (size_t)c->max_seq_len);
    if (cap > 4096) cap = 4096;
    int largest = vlm_plan_largest_batch(k, spec, budget, cap);
    if (p.total + p.margin <= budget) {
        printf("  largest micro-batch that fits: %d%s (batch_size is %d)\n", largest, largest == cap ? " or more" : "",
               c->batch_size);
        return p.total;
    }
    if (largest == 0)
        fatal("memory plan: even batch_size 1 x max_seq_len %d needs more than the %s available (%s): lower "
              "max_seq_len or use a device with more memory", c->max_seq_len, fmt_bytes(budget, b[0], 32), what);
    int per_rank = c->global_batch / world, fit = largest;  // a divisor of per_rank keeps global_batch exact
    while (fit > 1 && per_rank % fit) fit--;
    fatal("memory plan: batch_size %d x max_seq_len %d needs %s (+ up to %s allocation slack) on %s, more than the "
          "%s available (%s); the largest micro-batch that fits is %d: set batch_size = %d (global_batch %d "
          "stays, through gradient accumulation)", c->batch_size, c->max_seq_len, fmt_bytes(p.total, b[0], 32),
          fmt_bytes(p.margin, b[1], 32), k->name, fmt_bytes(budget, b[2], 32), what, largest, fit, c->global_batch);
}

int trainer_run(const TrainConfig *c) {
    double t_start = time_now();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGXFSZ, SIG_IGN);  // a file size limit then shows as a failed write, handled as such
    signal(SIGPIPE, SIG_IGN);

    const Kernels *k = NULL;
    if (!strcmp(c->device, "cpu")) {
        k = kernels_cpu();
    } else {
        k = kernels_cuda();
        if (!k && !strcmp(c->device, "cuda")) fatal("device = cuda but no CUDA device is available (or svlm was built without nvcc)");
        if (!k) k = kernels_cpu();
    }
    int world = train_world_size();
    if (world > 1) fatal("%d processes were launched, but multi-process training is not available yet in this build", world);
    make_dirs(c->out_dir);
    checkpoint_clean_tmp(c->out_dir);
    printf("svlm train: stage %d on %s, run directory %s\n", c->stage, k->name, c->out_dir);
    train_config_print(c);

    // model shapes decide the image slot, which the prepared data depends on; both model
    // directories are checked before any data is prepared
    LlmConfig lcfg;
    llm_config_load(&lcfg, c->llm);
    VitConfig vcfg;
    vit_config_load(&vcfg, c->vision);
    ConnectorType ct = connector_type_parse(c->connector);
    connector_check_grid(ct, vcfg.grid);
    int image_tokens = ct == CONNECTOR_LDP ? vcfg.n_patches / 4 : vcfg.n_patches;
    VlmSpec spec = {.vision_dir = c->vision, .vision_layer = c->vision_layer, .llm_dir = c->llm, .connector = ct,
                    .max_B = c->batch_size, .max_T = c->max_seq_len, .max_images = c->batch_size};
    if (c->packing) spec.max_images = c->batch_size * (c->max_seq_len / (image_tokens + 1) > 1 ? c->max_seq_len / (image_tokens + 1) : 1);
    if (c->stage == 2)
        spec.lora = (LoraConfig){.r = c->lora_r, .alpha = (float)c->lora_alpha, .rslora = c->rslora,
                                 .targets = lora_targets_parse(c->lora_targets), .dropout = (float)c->lora_dropout};
    size_t plan_total = plan_memory(c, k, &spec, world);
    char train_shards[CFG_PATH + 64], val_shards[CFG_PATH + 64] = "";
    resolve_data(c, c->data, c->image_folder, "train", image_tokens, train_shards, sizeof train_shards);
    if (c->val_data[0]) resolve_data(c, c->val_data, c->val_image_folder, "val", image_tokens, val_shards, sizeof val_shards);

    size_t mem_base;
    k->memory(&mem_base, NULL);
    Vlm m;
    vlm_init_reserved(&m, k, &spec);
    CHECK(m.n_img_tokens == image_tokens, "image slot %d vs %d", m.n_img_tokens, image_tokens);
    size_t n_conn = 0, n_lora = 0;
    for (int i = 0; i < m.train.n; i++)
        *(strncmp(m.train.p[i].name, "model.mm_projector.", 19) ? &n_lora : &n_conn) += m.train.p[i].numel;
    printf("model: vision %d layers of %d run, %d image tokens per image | %s %d layers, hidden %d | trainable: "
           "connector %zu, LoRA %zu parameters\n",
           m.vit.n_run, vcfg.layers, image_tokens, m.llm.cfg.model_type, m.llm.cfg.layers, m.llm.cfg.hidden, n_conn, n_lora);

    LoaderSpec ls = {.shard_dir = train_shards, .batch_size = c->batch_size, .max_seq_len = c->max_seq_len,
                     .image_tokens = image_tokens, .image_size = vcfg.image_size,
                     .pad_to_square = !strcmp(c->image_aspect, "pad"), .seed = c->seed, .rank = 0, .world = world,
                     .packing = c->packing, .threads = c->threads > 0 ? c->threads : (int)sysconf(_SC_NPROCESSORS_ONLN),
                     .prefetch = c->prefetch, .shuffle = 1};
    vit_preprocess_config(c->vision, vcfg.image_size, &ls.image_size, ls.mean, ls.std);
    Loader *train = loader_open(&ls);
    Loader *val = NULL;
    if (val_shards[0]) {
        LoaderSpec vs = ls;
        vs.shard_dir = val_shards;
        vs.shuffle = 0;
        vs.packing = 0;
        val = loader_open(&vs);
    }

    size_t mem_now;
    k->memory(&mem_now, NULL);
    printf("memory: %zu bytes held on %s after setup (the plan: %zu)\n", mem_now - mem_base, k->name, plan_total);
    int per_step = c->batch_size * world;  // global_batch is a multiple (train_config_load)
    int accum = c->global_batch / per_step;
    int64_t steps_per_epoch = loader_samples_per_rank(train) / ((int64_t)c->batch_size * accum);
    if (c->packing && c->max_steps == 0) fatal("config: with packing = true, set max_steps (steps per epoch vary)");
    int64_t total = c->max_steps > 0 ? c->max_steps : steps_per_epoch * c->epochs;
    if (total <= 0)
        fatal("data: %" PRId64 " samples is less than one global batch of %d: lower global_batch or add data",
              loader_samples(train), c->global_batch);
    int warmup = schedule_warmup_steps((int)total, c->warmup_ratio);
    double conn_lr = c->connector_lr > 0 ? c->connector_lr : c->lr;
    printf("schedule: %" PRId64 " steps (%" PRId64 " per epoch), global batch %d = %d x %d accumulation x %d process, "
           "warmup %d steps, lr %.3g (connector %.3g)\n",
           total, steps_per_epoch, c->global_batch, c->batch_size, accum, world, warmup, c->lr, conn_lr);

    char *signature = model_signature(c, &m);
    TrainState st = {.total_steps = total, .world = world};
    // what decides the order of the data: a resume with other values cannot replay the run
    char data_desc[sizeof st.data_desc];
    snprintf(data_desc, sizeof data_desc,
             "%" PRId64 " samples, seed %" PRIu64 ", batch_size %d, global_batch %d, max_seq_len %d, packing %d",
             loader_samples(train), c->seed, c->batch_size, c->global_batch, c->max_seq_len, c->packing);
    memcpy(st.data_desc, data_desc, sizeof data_desc);
    char ckpt[CFG_PATH + 32];
    int resumed = 0;
    if (!strcmp(c->resume, "never")) {
        if (checkpoint_latest(c->out_dir, ckpt, sizeof ckpt))
            fatal("resume = never but %s holds checkpoints (%s): use another out_dir or remove them", c->out_dir, ckpt);
    } else if (!strcmp(c->resume, "auto")) {
        resumed = checkpoint_latest(c->out_dir, ckpt, sizeof ckpt);
    } else {
        snprintf(ckpt, sizeof ckpt, "%s", c->resume);
        if (!dir_exists(ckpt)) fatal("resume = %s: no such checkpoint directory", ckpt);
        resumed = 1;
    }
    if (resumed) {
        checkpoint_load(ckpt, &st, &m.train, signature);
        if (st.world != world) fatal("%s: saved with %d processes, this run has %d (the data order would differ)", ckpt, st.world, world);
        if (st.total_steps != total)
            warn("%s: the run was planned for %" PRId64 " steps, now %" PRId64 ": the schedule changes", ckpt, st.total_steps, total);
        if (st.step > total)
            fatal("%s: the checkpoint is at step %" PRId64 ", past this run's %" PRId64 " steps (max_steps / epochs)", ckpt, st.step, total);
        st.total_steps = total;
        if (strcmp(st.data_desc, data_desc))
            warn("%s: saved with %s, this run has %s: training continues but no longer replays an uninterrupted run",
                 ckpt, st.data_desc[0] ? st.data_desc : "(no record)", data_desc);
        loader_seek(train, st.data);
        // only now, with the checkpoint loaded and every value of it checked, may it cost the
        // later checkpoints their place
        int moved = checkpoint_set_aside_after(c->out_dir, st.step);
        if (moved) printf("resume: %d later checkpoint(s) of %s moved aside as abandoned_step_*\n", moved, c->out_dir);
        printf("resume: %s (step %" PRId64 ")\n", ckpt, st.step);
    } else {
        vlm_init_trainable(&m, c->seed);
        rng_init(&st.rng, c->seed ^ 0x7a11ULL);
        if (c->stage == 2 && c->init_from[0]) {
            char used[CFG_PATH + 64];
            checkpoint_load_connector(c->init_from, &m.train, used, sizeof used);
            printf("init: connector from %s\n", used);
        } else if (c->stage == 2) {
            warn("stage 2 without init_from: the connector starts from random weights");
        }
    }
    char path[CFG_PATH + 32];
    snprintf(path, sizeof path, "%s/config.conf", c->out_dir);
    train_config_save(c, path);
    FILE *metrics = open_log(c->out_dir, "metrics.jsonl", resumed ? st.metrics_bytes : -1);
    FILE *timing = open_log(c->out_dir, "timing.jsonl", resumed ? INT64_MAX : -1);
    const Kernels *kk = m.k;
    ParamSet *P = &m.train;
    double first_val = NAN;
    if (val && !resumed) {  // where validation starts, so the curve has its origin
        int64_t vt;
        first_val = evaluate(&m, val, &vt);
        printf("step 0/%" PRId64 " | validation loss %.4f over %" PRId64 " tokens\n", total, first_val, vt);
        char nb[32];
        fprintf(metrics, "{\"step\": 0, \"val_loss\": %s, \"val_tokens\": %" PRId64 "}\n", jnum(first_val, nb), vt);
        fflush(metrics);
    }

    int64_t first_step = st.step;
    double t_loop = time_now(), last_val = NAN;
    int64_t tokens_window = 0;
    double t_window = t_loop;
    LoaderBatch lb;
    while (st.step < total) {
        int64_t step = st.step;
        kk->zero(P->grad, P->numel * sizeof(float));
        double loss_sum = 0;
        int64_t n_lab = 0, n_tok = 0, epoch = 0;
        for (int a = 0; a < accum; a++) {
            epoch = loader_next(train, &lb);
            vlm_set_training(&m, 1, c->seed * 0x9e3779b97f4a7c15ULL + (uint64_t)step * 4096 + (uint64_t)a);
            VlmBatch vb = to_vlm_batch(&lb);
            int lab;
            loss_sum += vlm_forward_backward(&m, &vb, 1.0f, &lab);
            n_lab += lab;
            n_tok += (int64_t)lb.B * lb.T;
        }
        // every micro-batch contributed its summed loss: dividing by the step's labelled count
        // makes the update the gradient of the mean, however the batch was split
        double loss = n_lab ? loss_sum / n_lab : NAN;
        if (n_lab) kk->scale_f32(P->grad, (float)(1.0 / n_lab), P->numel);
        double norm = NAN, factor = schedule_factor((int)step, (int)total, warmup, c->min_lr / c->lr);
        int t = (int)(step - st.skipped_steps + 1);  // AdamW's own step count skips dropped updates
        if (!isfinite(loss) || optimizer_step(P, c, step, total, warmup, t, &norm) != 0) {
            if (!strcmp(c->nan_policy, "stop"))
                fatal("step %" PRId64 ": %s (loss %g, gradient norm %g); stopping. The last checkpoint is intact; "
                      "lower lr, or set nan_policy = skip to skip such steps",
                      step + 1, n_lab ? "non-finite loss or gradient" : "no labelled token in the batch", loss, norm);
            st.skipped_steps++;
            warn("step %" PRId64 ": non-finite loss or gradient (loss %g, norm %g): update skipped (%" PRId64 " so far)",
                 step + 1, loss, norm, st.skipped_steps);
        } else {
            st.tokens += n_lab;
        }
        st.step = step + 1;
        st.data = loader_tell(train);
        tokens_window += n_tok;

        int last = st.step == total;
        if (st.step % c->log_every == 0 || last) {
            double now = time_now(), tps = tokens_window / (now - t_window + 1e-9);
            double rate = (st.step - first_step) / (now - t_loop + 1e-9);
            char el[32], eta[32];
            fmt_duration(now - t_start, el, sizeof el);
            fmt_duration((total - st.step) / (rate > 0 ? rate : 1e-9), eta, sizeof eta);
            printf("step %" PRId64 "/%" PRId64 " | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | %s elapsed | ETA %s\n",
                   st.step, total, loss, c->lr * factor, norm, tps, el, eta);
            fflush(stdout);
            char b1[32], b2[32];
            fprintf(metrics, "{\"step\": %" PRId64 ", \"epoch\": %" PRId64 ", \"loss\": %s, \"lr\": %.9g, \"connector_lr\": %.9g, "
                    "\"grad_norm\": %s, \"labelled\": %" PRId64 ", \"skipped_steps\": %" PRId64 "}\n",
                    st.step, epoch, jnum(loss, b1), c->lr * factor, conn_lr * factor, jnum(norm, b2), n_lab, st.skipped_steps);
            fprintf(timing, "{\"step\": %" PRId64 ", \"tokens_per_s\": %.1f, \"elapsed_s\": %.3f}\n", st.step, tps, now - t_start);
            fflush(metrics);
            fflush(timing);
            tokens_window = 0;
            t_window = now;
        }
        // a preempted job saves first: its grace period may be shorter than a validation pass
        if (val && !g_stop_signal && ((c->eval_every && st.step % c->eval_every == 0) || last)) {
            int64_t vt;
            char nb[32];
            double vl = evaluate(&m, val, &vt);
            last_val = vl;
            printf("step %" PRId64 "/%" PRId64 " | validation loss %.4f over %" PRId64 " tokens\n", st.step, total, vl, vt);
            fprintf(metrics, "{\"step\": %" PRId64 ", \"val_loss\": %s, \"val_tokens\": %" PRId64 "}\n", st.step, jnum(vl, nb), vt);
            fflush(metrics);
        }
        int stop = g_stop_signal != 0;
        if ((c->save_every && st.step % c->save_every == 0) || last || stop) {
            if (fflush(metrics) != 0 || ferror(metrics) || fsync(fileno(metrics)) != 0)
                fatal("%s/metrics.jsonl: write failed: %s; the previous checkpoint is intact", c->out_dir, strerror(errno));
            st.metrics_bytes = ftell(metrics);
            char err[2300];
            if (checkpoint_save(c->out_dir, &st, P, signature, c->keep_last, err, sizeof err) != 0) {
                char prev[CFG_PATH + 32];
                int have = checkpoint_latest(c->out_dir, prev, sizeof prev);
                fatal("checkpoint of step %" PRId64 " failed: %s; %s", st.step, err,
                      have ? "the previous checkpoint is intact" : "no earlier checkpoint exists");
            }
        }
        if (stop) {
            printf("received %s: checkpoint step_%08" PRId64 " saved in %s; run %s to resume\n",
                   g_stop_signal == SIGTERM ? "SIGTERM" : "SIGINT", st.step, c->out_dir,
                   strcmp(c->resume, "auto") ? "the same command with resume=auto" : "the same command");
            break;
        }
    }
    if (st.step == total && !g_stop_signal) {
        char el[32];
        fmt_duration(time_now() - t_start, el, sizeof el);
        printf("done: %" PRId64 " steps in %s", total, el);
        if (!isnan(first_val)) printf(", validation loss %.4f -> %.4f", first_val, last_val);
        printf("; checkpoint %s/step_%08" PRId64 "\n", c->out_dir, st.step);
    }
    fclose(metrics);
    fclose(timing);
    free(signature);
    loader_close(train);
    if (val) loader_close(val);
    vlm_free(&m);
    return 0;
}
