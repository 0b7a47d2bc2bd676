// run_setup.c: everything before the first step (see run.h): the backend and the ranks (with
// the checks that every rank runs the same program, config and data), the data (prepared once,
// by rank 0), the memory plan, the model, the loaders, and the resume or a fresh start.
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

#include "common/util.h"
#include "data/prepare.h"
#include "data/tiling.h"
#include "data/tokenizer.h"
#include "kernels/cpu/blas_core.h"
#include "model/memplan.h"
#include "model/vlm_dir.h"
#include "trainer/run.h"
#include "trainer/schedule.h"

volatile int run_stop_signal;

static void on_stop_signal(int sig) {
    if (run_stop_signal) _exit(128 + sig);  // a second signal: the user insists
    run_stop_signal = sig;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

// data may be a prepared shard directory, or LLaVA JSON/JSONL prepared once into cache/<name>
static void resolve_data(const TrainConfig *c, const char *data, const char *image_folder, const char *name,
                         int image_tokens, const char *image_format, const ImagePrep *prep, char *shards, size_t cap) {
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
    ps.image_format = image_format;
    ps.max_images = c->max_images;
    ps.prep = prep;
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
    if (c->pixel_shuffle) cJSON_AddNumberToObject(j, "pixel_shuffle", c->pixel_shuffle);
    cJSON *v = cJSON_AddObjectToObject(j, "vision");
    const VitConfig *vc = &m->vit.cfg;
    if (vc->type != VIT_CLIP) cJSON_AddStringToObject(v, "type", vit_type_name(vc));  // CLIP runs' signature as before
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


// the program's fingerprint: ranks running different builds would not compute the same step
static void program_text(char *out, size_t cap) {
    size_t n = 0;
    char *bin = file_read_all("/proc/self/exe", &n);
    snprintf(out, cap, "program: %zu bytes, fnv1a %016llx\n", n, bin ? (unsigned long long)dist_hash(bin, n, 0) : 0ULL);
    free(bin);
}

// the prepared data's description (meta.json: source, settings, counts) as the check sees it
static char *data_text(const char *shards) {
    char p[CFG_PATH + 80];
    snprintf(p, sizeof p, "%s/meta.json", shards);
    size_t n;
    char *s = file_read_all(p, &n);
    return s ? s : xstrdup("(no meta.json)");
}

// the resolved configuration as "key = value" lines
static char *config_text(const TrainConfig *c) {
    char *buf = NULL, val[4200];
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    for (int i = 0; i < n_train_keys; i++)
        fprintf(f, "%s = %s\n", train_keys[i].key, config_value(train_keys, n_train_keys, c, train_keys[i].key, val, sizeof val));
    fclose(f);
    return buf;
}

static const Kernels *choose_backend(const TrainConfig *c, const DistLaunch *l, char *gpu, size_t cap) {
    snprintf(gpu, cap, "cpu");
    if (!strcmp(c->device, "cpu")) return kernels_cpu();
    dist_cuda_select_device(l->local_rank, gpu, cap);  // GPU local_rank of the visible ones
    const Kernels *k = kernels_cuda();
    if (!k && !strcmp(c->device, "cuda")) fatal("device = cuda but no CUDA device is available (or svlm was built without nvcc)");
    if (!k) {
        snprintf(gpu, cap, "cpu");
        return kernels_cpu();
    }
    return k;
}

// the checkpoint to resume from (rank 0 decides: the others may look while it renames)
static int find_resume(const TrainConfig *c, char *ckpt, size_t cap) {
    if (!strcmp(c->resume, "never")) {
        if (checkpoint_latest(c->out_dir, ckpt, cap))
            fatal("resume = never but %s holds checkpoints (%s): use another out_dir or remove them", c->out_dir, ckpt);
        return 0;
    }
    if (!strcmp(c->resume, "auto")) return checkpoint_latest(c->out_dir, ckpt, cap);
    snprintf(ckpt, cap, "%s", c->resume);
    if (!dir_exists(ckpt)) fatal("resume = %s: no such checkpoint directory", ckpt);
    return 1;
}

// the step's gradient buckets, from the groups the model's backward finishes in turn
static void setup_buckets(Run *r) {
    const Vlm *m = &r->m;
    int cap = m->train.n ? m->train.n : 1, *first = xmalloc(2 * (size_t)cap * sizeof(int)), *count = first + cap;
    int n = vlm_grad_groups(m, first, count, cap);
    size_t slice = r->zero ? m->train.span / r->world : 0;
    grad_buckets_init(&r->buckets, r->dist, &m->train, first, count, n, r->c->grad_bucket_mb, slice);
    free(first);
    if (r->world > 1)
        printf("gradient reduction: %d bucket(s) of up to %g MiB, %s\n", r->buckets.n, r->c->grad_bucket_mb,
               r->c->grad_bucket_mb > 0 ? "started as the backward finishes them" : "after the backward");
}

void run_setup(Run *r, const TrainConfig *c, double t_start) {
    memset(r, 0, sizeof *r);
    r->c = c;
    r->t_start = t_start;
    r->first_val = r->last_val = r->first_bench = r->last_bench = NAN;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGXFSZ, SIG_IGN);  // a file size limit then shows as a failed write, handled as such
    signal(SIGPIPE, SIG_IGN);

    DistLaunch launch = dist_detect();
    char device[160];
    const Kernels *k = choose_backend(c, &launch, device, sizeof device);
    r->k = k;
    Dist *d = dist_open(&launch, strcmp(k->name, "cpu") != 0, c->dist_timeout, c->dist_init_dir);
    r->dist = d;
    r->rank = d->rank;
    r->world = d->world;
    int world = r->world;
    r->zero = train_zero_stage(c, world);  // 1 on one rank is allowed: it runs ZeRO's collectives (tests)
    if (strcmp(launch.launcher, "none")) {  // what the launcher's environment said
        char line[512];
        dist_describe(d, device, line, sizeof line);
        printf("%s\n", line);
        fflush(stdout);
    }
    if (world > 1) {
        // one voice: the other ranks' progress would repeat rank 0's (warnings and errors stay)
        if (r->rank != 0 && !freopen("/dev/null", "w", stdout)) fatal("cannot silence stdout: %s", strerror(errno));
        char *ct = config_text(c), pt[128];
        dist_check_same(d, "configurations", ct);
        free(ct);
        program_text(pt, sizeof pt);
        dist_check_same(d, "programs (./train builds)", pt);
    }
    if (r->rank == 0) {
        make_dirs(c->out_dir);
        checkpoint_clean_tmp(c->out_dir);
    }
    printf("svlm train: stage %d on %s, run directory %s\n", c->stage, k->name, c->out_dir);
    if (k == kernels_cpu()) {
        char blas[512];
        cpu_blas_describe(blas, sizeof blas);
        printf("cpu: %s\n", blas);
    }
    if (world > 1)
        printf("data parallel: %d ranks over %s, ZeRO-%d, dist_timeout %.0f s\n", world, d->ops->name, r->zero, c->dist_timeout);
    train_config_print(c);
    run_bench_open(r);  // a bad eval_data file stops the run here, before any data work

    // model shapes decide the image slot, which the prepared data depends on; both model
    // directories are checked before any data is prepared
    LlmConfig lcfg;
    llm_config_load(&lcfg, c->llm);
    VitConfig vcfg;
    vit_config_load(&vcfg, c->vision);
    ConnectorType ct = connector_type_parse(c->connector);
    int image_tokens = connector_tokens(ct, c->pixel_shuffle, vcfg.grid);
    // the images: the tower's preprocessing with the run's tiling, and the slot format that marks
    // them in the tokens (the connector's, or the config's image_format)
    ImagePrep prep;
    vit_image_prep(&vcfg, c->vision, &prep);
    prep.pad_to_square = !strcmp(c->image_aspect, "pad");
    prep.max_tiles = c->max_tiles;
    if (c->max_tiles > 1 && !image_prep_tiles(&prep))
        fatal("config: max_tiles = %d, but the %s image preprocessing has no tiling (internvl and idefics3 do)", c->max_tiles,
              image_prep_family_name(prep.family));
    if (prep.proc_tiles && c->max_tiles == 1)
        printf("note: %s/preprocessor_config.json tiles images; with max_tiles = 1 svlm gives each image one tile\n", c->vision);
    const char *fmt_name = c->image_format[0] ? c->image_format : connector_image_format(ct);
    ImageFormat fmt = (ImageFormat)image_format_parse(fmt_name);
    if (fmt == IMAGE_FORMAT_LLAVA && image_prep_tiles(&prep))
        fatal("config: max_tiles = %d with image_format llava: the llava slot cannot mark tiles (set image_format = internvl "
              "or idefics3)", c->max_tiles);
    {
        char tp[CFG_PATH + 32];
        path_join(tp, sizeof tp, c->llm, "tokenizer.json");
        Tokenizer *tok = tokenizer_load(tp);
        if (c->model[0]) {  // the model's config names its image token by the tokenizer's id
            VlmDir vd;
            vlm_dir_open(&vd, c->model);
            vlm_dir_check_image_token(&vd, tok);
        }
        image_slot_init(&r->slot, fmt, image_tokens, image_grid_max_side(&prep), tok, tp);
        tokenizer_free(tok);
    }
    // tiles per micro-batch at most (loader_max_tiles): the vision tower, the connector and the
    // pixel upload are planned for them
    int max_tiles = loader_max_tiles(c->batch_size, c->max_seq_len, image_tokens, c->packing, c->max_images, &prep);
    VlmSpec spec = {.vision_dir = c->vision, .vision_layer = c->vision_layer, .llm_dir = c->llm, .connector = ct,
                    .connector_scale = c->pixel_shuffle,
                    .max_B = c->batch_size, .max_T = c->max_seq_len, .max_images = max_tiles};
    if (c->stage == 2)
        spec.lora = (LoraConfig){.r = c->lora_r, .alpha = (float)c->lora_alpha, .rslora = c->rslora,
                                 .targets = lora_targets_parse(c->lora_targets), .dropout = (float)c->lora_dropout};
    if (r->zero) spec.opt_shards = world, spec.opt_shard = r->rank;
    size_t plan_total = plan_memory(c, k, &spec, world);
    // rank 0 prepares the data; the others then find it prepared (or, on a node that does not
    // see rank 0's data_cache, prepare their own copy)
    char train_shards[CFG_PATH + 64], val_shards[CFG_PATH + 64] = "";
    for (int pass = 0; pass < 2; pass++) {
        if ((pass == 0) == (r->rank == 0)) {
            resolve_data(c, c->data, c->image_folder, "train", image_tokens, fmt_name, &prep, train_shards, sizeof train_shards);
            if (c->val_data[0])
                resolve_data(c, c->val_data, c->val_image_folder, "val", image_tokens, fmt_name, &prep, val_shards, sizeof val_shards);
        }
        if (pass == 0) dist_barrier(d, 0);
    }
    if (world > 1) {
        char *dt = data_text(train_shards), *vt = val_shards[0] ? data_text(val_shards) : xstrdup("");
        char *both = xmalloc(strlen(dt) + strlen(vt) + 2);
        sprintf(both, "%s\n%s", dt, vt);
        dist_check_same(d, "data (prepared shards' meta.json)", both);
        free(dt);
        free(vt);
        free(both);
    }

    size_t mem_base;
    k->memory(&mem_base, NULL);
    Vlm *m = &r->m;
    vlm_init_reserved(m, k, &spec);
    CHECK(m->n_img_tokens == image_tokens, "image slot %d vs %d", m->n_img_tokens, image_tokens);
    setup_buckets(r);
    size_t n_conn = params_group_numel(&m->train, PARAM_GROUP_CONNECTOR), n_lora = params_group_numel(&m->train, PARAM_GROUP_LORA);
    printf("model: vision %d layers of %d run, %d image tokens per image | %s %d layers, hidden %d | trainable: "
           "connector %zu, LoRA %zu parameters\n",
           m->vit.n_run, vcfg.layers, image_tokens, m->llm.cfg.model_type, m->llm.cfg.layers, m->llm.cfg.hidden, n_conn, n_lora);

    int per_step = c->batch_size * world;  // global_batch is a multiple (train_config_load)
    r->accum = c->global_batch / per_step;
    LoaderSpec ls = {.shard_dir = train_shards, .batch_size = c->batch_size, .max_seq_len = c->max_seq_len,
                     .image_tokens = image_tokens, .slot = &r->slot, .max_tiles = max_tiles, .seed = c->seed, .rank = r->rank, .world = world,
                     .step_block = c->batch_size * r->accum, .packing = c->packing,
                     .threads = c->threads > 0 ? c->threads : (int)sysconf(_SC_NPROCESSORS_ONLN), .prefetch = c->prefetch,
                     .shuffle = 1, .pixels_bf16 = k->act_bytes == 2,
                     .host_alloc = k->host_alloc, .host_free = k->host_free, .host_ready = k->host_ready};
    ls.prep = prep;
    r->train = loader_open(&ls);
    if (val_shards[0]) {
        LoaderSpec vs = ls;
        vs.shard_dir = val_shards;
        vs.shuffle = 0;
        vs.packing = 0;
        vs.step_block = 0;
        vs.split_all = 1;  // every validation sample once, however many ranks
        r->val = loader_open(&vs);
    }

    size_t mem_now;
    k->memory(&mem_now, NULL);
    printf("memory: %zu bytes held on %s after setup (the plan: %zu)\n", mem_now - mem_base, k->name, plan_total);
    run_bench_init(r);  // the generator's cache: beside the plan, which covers training
    r->steps_per_epoch = loader_samples_per_rank(r->train) / ((int64_t)c->batch_size * r->accum);
    if (c->packing && c->max_steps == 0) fatal("config: with packing = true, set max_steps (steps per epoch vary)");
    int64_t total = c->max_steps > 0 ? c->max_steps : r->steps_per_epoch * c->epochs;
    if (total <= 0)
        fatal("data: %" PRId64 " samples is less than one global batch of %d: lower global_batch or add data",
              loader_samples(r->train), c->global_batch);
    r->total = total;
    r->warmup = schedule_warmup_steps((int)total, c->warmup_ratio);
    r->conn_lr = c->connector_lr > 0 ? c->connector_lr : c->lr;
    printf("schedule: %" PRId64 " steps (%" PRId64 " per epoch), global batch %d = %d x %d accumulation x %d process%s, "
           "warmup %d steps, lr %.3g (connector %.3g)\n",
           total, r->steps_per_epoch, c->global_batch, c->batch_size, r->accum, world, world > 1 ? "es" : "", r->warmup,
           c->lr, r->conn_lr);

    r->signature = model_signature(c, m);
    TrainState *st = &r->st;
    *st = (TrainState){.total_steps = total, .world = world};
    // what decides the order of the data: a resume with other values cannot replay the run (the
    // world size and batch_size do not: the order is global, a step's samples the same)
    snprintf(st->data_desc, sizeof st->data_desc, "%" PRId64 " samples, seed %" PRIu64 ", global_batch %d, max_seq_len %d, packing %d",
             loader_samples(r->train), c->seed, c->global_batch, c->max_seq_len, c->packing);
    char ckpt[CFG_PATH + 32] = "";
    int resumed = r->rank == 0 ? find_resume(c, ckpt, sizeof ckpt) : 0;
    dist_broadcast_host(d, &resumed, sizeof resumed, 0);
    dist_broadcast_host(d, ckpt, sizeof ckpt, 0);
    r->resumed = resumed;
    if (resumed) {
        char data_desc[sizeof st->data_desc];
        memcpy(data_desc, st->data_desc, sizeof data_desc);
        checkpoint_load(ckpt, st, &m->train, r->signature);  // every rank reads it (out_dir is shared)
        if (st->total_steps != total && r->rank == 0)
            warn("%s: the run was planned for %" PRId64 " steps, now %" PRId64 ": the schedule changes", ckpt, st->total_steps, total);
        if (st->step > total)
            fatal("%s: the checkpoint is at step %" PRId64 ", past this run's %" PRId64 " steps (max_steps / epochs)", ckpt, st->step, total);
        st->total_steps = total;
        if (strcmp(st->data_desc, data_desc) && r->rank == 0)
            warn("%s: saved with %s, this run has %s: training continues but no longer replays an uninterrupted run",
                 ckpt, st->data_desc[0] ? st->data_desc : "(no record)", data_desc);
        memcpy(st->data_desc, data_desc, sizeof data_desc);
        int64_t per_step = (int64_t)c->global_batch;
        if (st->data.index % per_step && !c->packing)
            fatal("%s: data position %" PRId64 " is not at a step boundary of global_batch %d (was global_batch changed?)", ckpt,
                  st->data.index, c->global_batch);
        if (st->world != world) printf("resume: saved by %d process(es), continued by %d\n", st->world, world);
        st->world = world;
        loader_seek(r->train, (LoaderPos){st->data.epoch, st->data.index / world});
        // only now, with the checkpoint loaded and every value of it checked, may it cost the
        // later checkpoints their place; every rank has read it before rank 0 moves them aside
        dist_barrier(d, 1);
        if (r->rank == 0) {
            int moved = checkpoint_set_aside_after(c->out_dir, st->step);
            if (moved) printf("resume: %d later checkpoint(s) of %s moved aside as abandoned_step_*\n", moved, c->out_dir);
        }
        printf("resume: %s (step %" PRId64 ")\n", ckpt, st->step);
    } else {
        vlm_init_trainable(m, c->seed);
        rng_init(&st->rng, c->seed ^ 0x7a11ULL);
        if (c->stage == 2 && c->init_from[0]) {
            char used[CFG_PATH + 64];
            checkpoint_load_connector(c->init_from, &m->train, used, sizeof used);
            printf("init: connector from %s\n", used);
        } else if (c->model[0]) {  // stage 1 re-aligns the shipped projector, stage 2 starts from it
            VlmDir vd;
            vlm_dir_open(&vd, c->model);
            int n = vlm_dir_load_connector(&vd, &m->train);
            printf("init: connector from %s's own projector (%d tensors, %s)\n", c->model, n, vlm_layout_name(vd.layout));
        } else if (c->stage == 2 && r->rank == 0) {
            warn("stage 2 without init_from: the connector starts from random weights");
        }
    }
    // sharded masters: the compute copy from them, as every step's update leaves it
    if (params_masters_sharded(&m->train)) run_share_weights(r);
    if (r->rank == 0) {
        char path[CFG_PATH + 32];
        snprintf(path, sizeof path, "%s/config.conf", c->out_dir);
        train_config_save(c, path);
        r->metrics = run_open_log(c->out_dir, "metrics.jsonl", resumed ? st->metrics_bytes : -1);
        r->timing = run_open_log(c->out_dir, "timing.jsonl", resumed ? INT64_MAX : -1);
    }
    r->first_step = st->step;
}

void run_teardown(Run *r) {
    if (r->metrics) fclose(r->metrics);
    if (r->timing) fclose(r->timing);
    free(r->signature);
    loader_close(r->train);
    if (r->val) loader_close(r->val);
    image_slot_free(&r->slot);
    grad_buckets_free(&r->buckets);
    run_bench_close(r);
    vlm_free(&r->m);
    dist_close(r->dist);
}
