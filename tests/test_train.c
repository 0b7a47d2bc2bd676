// test_train.c: ./train and ./export end to end on the synthetic data and tiny models of
// ./synth: exact resume after SIGKILL at random instants and after SIGTERM, gradient
// accumulation equal to one big batch, the merged export equal to the unmerged model, and every
// kind of bad input (config, model directory, foreign or corrupt checkpoint, NaN loss, full disk).
// SVLM_TEST_DEVICE=cuda (make test-gpu) runs the device-independent part on the GPU: learning,
// the resumes (bit-identical there too) and the memory plan; SVLM_TEST_TRAIN names another
// ./train binary (the emulated CUDA build, build/emu/train_emu).
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/util.h"
#include "data/image.h"
#include "data/loader.h"
#include "model/model_dir.h"
#include "model/vlm.h"
#include "tests/testlib.h"
#include "trainer/checkpoint.h"
#include "trainer/export.h"
#include "trainer/optimizer.h"

static char root[512];  // build/tmp/train-PID
static char base_conf[600];
static const char *device = "cpu", *train_bin = "./train";

// runs argv (NULL-terminated) with stdout/stderr into log; file size limit when fsize > 0;
// returns the pid without waiting when nowait, else the exit status (-signal when killed)
static int spawn(char *const argv[], const char *log, long fsize, int nowait) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        FILE *f = freopen(log, "a", stdout);
        if (!f || dup2(fileno(stdout), 2) < 0) _exit(126);
        if (fsize > 0) {
            struct rlimit rl = {(rlim_t)fsize, (rlim_t)fsize};
            setrlimit(RLIMIT_FSIZE, &rl);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    if (nowait) return pid;
    int st;
    waitpid(pid, &st, 0);
    return WIFSIGNALED(st) ? -WTERMSIG(st) : WEXITSTATUS(st);
}

// a copy kept aside to compare with later (cp's messages go to log)
static void copy_file(char *src, char *dst, const char *log) {
    char *argv[] = {"/bin/cp", src, dst, NULL};
    assert_int_equal(spawn(argv, log, 0, 0), 0);
}

// ./train base.conf out_dir=<dir> extra...; returns the exit status
static int train(const char *dir, const char *log, long fsize, const char *extra1, const char *extra2, const char *extra3) {
    char out[700];
    snprintf(out, sizeof out, "out_dir=%s", dir);
    char *argv[8] = {(char *)train_bin, base_conf, out, NULL, NULL, NULL, NULL, NULL};
    int a = 3;
    if (extra1) argv[a++] = (char *)extra1;
    if (extra2) argv[a++] = (char *)extra2;
    if (extra3) argv[a++] = (char *)extra3;
    return spawn(argv, log, fsize, 0);
}

static int log_has(const char *log, const char *needle) {
    size_t n;
    char *s = test_slurp(log, &n);
    int has = strstr(s, needle) != NULL;
    if (!has) printf("    %s lacks \"%s\"; it holds:\n%s\n", log, needle, s);
    free(s);
    return has;
}

// "svlm: error:" lines the log holds so far (a refused run adds exactly one)
static int count_errors(const char *log) {
    size_t n;
    char *s = file_read_all(log, &n);
    if (!s) return 0;
    int k = 0;
    for (char *q = s; (q = strstr(q, "svlm: error:")); q++) k += q == s || q[-1] == '\n';
    free(s);
    return k;
}

// progress lines ("step N/M | loss ...") the log holds so far
static int count_steps(const char *log) {
    size_t n;
    char *s = file_read_all(log, &n);
    if (!s) return 0;
    int k = 0;
    for (char *q = s; (q = strstr(q, "| loss ")); q++) k++;
    free(s);
    return k;
}

static double step_s = 0.15;  // seconds per step of the reference run (setup)

// Waits until the log shows `more` progress lines beyond `before`, or the process exits (then
// returns 1 with its status in *st). Keyed on progress, not on time, so a slow machine still
// gets its kills in the middle of training rather than all during start-up.
static int wait_progress(pid_t pid, const char *log, int before, int more, int *st) {
    int polls = (int)((120 + 4 * more * step_s) * 100);  // 2 minutes plus the steps' time at most
    for (int i = 0; i < polls; i++) {
        if (waitpid(pid, st, WNOHANG) == pid) return 1;
        if (count_steps(log) >= before + more) return 0;
        usleep(10000);
    }
    fail_msg("no progress in %s", log);
    return 0;
}

static int setup(void **state) {
    make_temp_dir(root, sizeof root, "train");
    char synth_dir[600], log[600];
    snprintf(synth_dir, sizeof synth_dir, "%s/synth", root);
    snprintf(log, sizeof log, "%s/synth.log", root);
    char *argv[] = {"./synth", synth_dir, "--train", "64", "--val", "16", "--heldout", "1", "--quiet", NULL};
    if (spawn(argv, log, 0, 0) != 0) {
        fprintf(stderr, "./synth failed, see %s\n", log);
        return -1;
    }
    // stage 2 exercises everything: connector and LoRA, chatml, validation
    snprintf(base_conf, sizeof base_conf, "%s/base.conf", root);
    FILE *f = fopen(base_conf, "w");
    fprintf(f,
            "stage = 2\nvision = %s/models/vision\nllm = %s/models/llm\nconnector = ldp\n"
            "data = %s/data/stage2_train.json\nimage_folder = %s/data/images\nval_data = %s/data/stage2_val.json\n"
            "data_cache = %s/cache\nmax_seq_len = 96\nbatch_size = 4\nglobal_batch = 8\nmax_steps = 10\n"
            "lr = 3e-3\nwarmup_ratio = 0.1\nlora_r = 4\nlora_alpha = 8\nlora_dropout = 0.05\nsave_every = 2\nkeep_last = 2\n"
            "eval_every = 5\nseed = 7\ndevice = %s\nthreads = 2\n",
            synth_dir, synth_dir, synth_dir, synth_dir, synth_dir, root, device);
    fclose(f);
    // prepares the shared data cache once
    char dir[600];
    snprintf(dir, sizeof dir, "%s/reference", root);
    snprintf(log, sizeof log, "%s/reference.log", root);
    if (train(dir, log, 0, NULL, NULL, NULL) != 0) {
        fprintf(stderr, "reference run failed, see %s\n", log);
        return -1;
    }
    // seconds per step of the reference run, so kills land anywhere in a step whatever the
    // backend's speed (the emulated CUDA kernels take seconds per step)
    step_s = test_step_seconds(dir, 0.15);
    return 0;
}

static void test_reference_run_learns(void **state) {
    char p[700];
    path_join(p, sizeof p, root, "reference/metrics.jsonl");
    size_t n;
    char *s = test_slurp(p, &n);
    // validation at step 0 and at the end: the loss must have gone down
    double first = NAN, last = NAN;
    for (char *q = s; (q = strstr(q, "\"val_loss\": ")); q++) {
        double v = atof(q + 12);
        if (isnan(first)) first = v;
        last = v;
    }
    free(s);
    printf("    validation loss %.4f -> %.4f in 10 steps\n", first, last);
    assert_true(first > 0 && last < first);
    path_join(p, sizeof p, root, "reference/step_00000008");  // keep_last = 2: steps 8 and 10 remain
    assert_true(dir_exists(p));
    path_join(p, sizeof p, root, "reference/step_00000006");
    assert_false(dir_exists(p));
}

static void test_resume_after_sigkill(void **state) {
    char dir[600], log[600], ref[600];
    snprintf(dir, sizeof dir, "%s/killed", root);
    snprintf(log, sizeof log, "%s/killed.log", root);
    snprintf(ref, sizeof ref, "%s/reference", root);
    char out[700];
    snprintf(out, sizeof out, "out_dir=%s", dir);
    char *argv[] = {(char *)train_bin, base_conf, out, NULL};
    uint64_t rs = (uint64_t)time(NULL) | 1;
    int kills = 0, done = 0;
    useconds_t step_us = (useconds_t)(step_s * 1e6) + 1;
    // Up to MAX_KILLS kills, then one run left to finish: the last step's validation and final
    // checkpoint take longer than the kill window, so kills aimed there could otherwise go on
    // until the attempts run out (seen: 35 restarts from step 8, none finishing)
    enum { MAX_KILLS = 20 };
    for (int attempt = 0; attempt <= MAX_KILLS && !done; attempt++) {
        int before = count_steps(log), st;
        pid_t pid = spawn(argv, log, 0, 1);
        // a random instant: after 0-2 more steps, then up to one step's time into the next
        // step, which may be loading, a forward/backward, validation or a checkpoint being written
        if (kills == MAX_KILLS) {
            waitpid(pid, &st, 0);
        } else if (wait_progress(pid, log, before, (int)(test_rand_u64(&rs) % 3), &st) == 0) {
            usleep((useconds_t)(test_rand_u64(&rs) % step_us));
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
        }
        if (WIFEXITED(st)) {  // it finished
            assert_int_equal(WEXITSTATUS(st), 0);
            done = 1;
        } else {
            kills++;
        }
    }
    assert_true(done);
    // the kills must have fallen mid-run: count the restarts that resumed from a checkpoint
    size_t n;
    char *text = test_slurp(log, &n);
    int resumes = 0;
    for (char *q = text; (q = strstr(q, "\nresume: ")); q++) resumes++;
    free(text);
    printf("    %d SIGKILLs at random instants, %d restarts resumed from a checkpoint\n", kills, resumes);
    assert_true(kills >= 3);
    assert_true(resumes >= 2);
    expect_same_run(ref, dir, 10);
}

static void test_resume_after_sigterm(void **state) {
    char dir[600], log[600], ref[600];
    snprintf(dir, sizeof dir, "%s/terminated", root);
    snprintf(log, sizeof log, "%s/terminated.log", root);
    snprintf(ref, sizeof ref, "%s/reference", root);
    char out[700];
    snprintf(out, sizeof out, "out_dir=%s", dir);
    char *argv[] = {(char *)train_bin, base_conf, out, "save_every=100", NULL};  // only SIGTERM saves mid-run
    int terms = 0, done = 0;
    for (int attempt = 0; attempt < 20 && !done; attempt++) {
        int before = count_steps(log), st;
        pid_t pid = spawn(argv, log, 0, 1);
        if (wait_progress(pid, log, before, 2, &st) == 0) {
            kill(pid, SIGTERM);
            waitpid(pid, &st, 0);
            terms++;
        }
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);  // preemption is a clean exit
        char p[700];
        path_join(p, sizeof p, dir, "step_00000010/state.json");
        done = file_exists(p);
    }
    assert_true(done);
    assert_true(log_has(log, "received SIGTERM: checkpoint step_"));
    printf("    %d SIGTERMs, each saved a checkpoint and exited 0\n", terms);
    assert_true(terms >= 2);
    // save_every differs from the reference run, so the checkpoints kept differ; the end agrees
    expect_same_run(ref, dir, 10);
}

// batch_size 2 x 4 accumulation against batch_size 8 x 1 on the same 8 samples
static void test_gradient_accumulation(void **state) {
    char vision[600], llm[600], shards[600];
    snprintf(vision, sizeof vision, "%s/synth/models/vision", root);
    snprintf(llm, sizeof llm, "%s/synth/models/llm", root);
    snprintf(shards, sizeof shards, "%s/cache/train", root);
    VitConfig vc;
    vit_config_load(&vc, vision);
    VlmSpec spec = {.vision_dir = vision, .vision_layer = -2, .llm_dir = llm, .connector = CONNECTOR_LDP,
                    .lora = {.r = 4, .alpha = 8, .targets = 0x7f}, .max_B = 8, .max_T = 96, .max_images = 8};
    Vlm m;
    vlm_init(&m, kernels_cpu(), &spec);
    vlm_init_trainable(&m, 3);
    // LoRA B starts at zero; make it non-zero so every path carries gradient
    float *b = m.train.master;
    uint64_t rs = 99;
    for (size_t i = 0; i < m.train.numel; i++) b[i] += 0.01f * (test_rand_uniform(&rs) - 0.5f);
    params_sync(&m.train);
    size_t n = m.train.numel;
    float *grad[2];
    double loss[2];
    int sizes[2] = {8, 2};
    for (int c = 0; c < 2; c++) {
        LoaderSpec ls = {.shard_dir = shards, .batch_size = sizes[c], .max_seq_len = 96, .image_tokens = m.n_img_tokens,
                         .seed = 5, .world = 1, .threads = 2, .prefetch = 2, .shuffle = 1};
        vit_image_prep(&vc, vision, &ls.prep);
        ls.prep.pad_to_square = 1;
        Loader *l = loader_open(&ls);
        memset(m.train.grad, 0, n * sizeof(float));
        double sum = 0;
        int lab_total = 0;
        for (int a = 0; a < 8 / sizes[c]; a++) {
            LoaderBatch lb;
            loader_next(l, &lb);
            VlmBatch vb = {.B = lb.B, .T = lb.T, .ids = lb.ids, .targets = lb.targets, .pos = lb.pos, .seg = lb.seg,
                           .n_img = lb.n_img, .pixels = lb.pixels, .img_row = lb.img_row, .img_start = lb.img_start};
            int lab;
            sum += vlm_forward_backward(&m, &vb, 1.0f, &lab);
            lab_total += lab;
        }
        loader_close(l);
        m.k->scale_f32(m.train.grad, 1.0f / lab_total, n);
        grad[c] = xmalloc(n * sizeof(float));
        memcpy(grad[c], m.train.grad, n * sizeof(float));
        loss[c] = sum / lab_total;
    }
    double eg = rel_err(grad[1], grad[0], n), el = fabs(loss[1] - loss[0]) / loss[0];
    printf("    loss %.7f vs %.7f (rel %.1e), gradients rel err %.2e\n", loss[1], loss[0], el, eg);
    assert_true(el < 1e-6);
    assert_true(eg < 1e-5);
    // and the update they give
    TrainConfig c = {.lr = 1e-3, .grad_clip = 1.0, .adam_beta1 = 0.9, .adam_beta2 = 0.999, .adam_eps = 1e-8};
    // The update is read off weights that start at zero: subtracted from weights of order 0.1
    // it would lose its low bits to cancellation. Second moments are set as in a run under way
    // (v = 1e-4, step 10): Adam's very first step, lr * g / (|g| + eps), would amplify the
    // rounding of gradient entries near eps instead of showing how the batchings compare.
    float *after[2];
    for (int k = 0; k < 2; k++) {
        memset(m.train.master, 0, n * sizeof(float));
        for (size_t i = 0; i < n; i++) m.train.m[i] = 0, m.train.v[i] = 1e-4f;
        memcpy(m.train.grad, grad[k], n * sizeof(float));
        double norm;
        assert_int_equal(optimizer_step(&m.train, &c, 5, 10, 0, 10, &norm), 0);
        after[k] = xmalloc(n * sizeof(float));
        memcpy(after[k], m.train.master, n * sizeof(float));
    }
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)after[1][i] - after[0][i];
        num += d * d;
        den += (double)after[0][i] * after[0][i];
    }
    double eu = sqrt(num / den), em = rel_err(after[1], after[0], n);
    printf("    update rel err %.2e (2-norm), %.2e (max)\n", eu, em);
    assert_true(em < 1e-5);
    assert_true(den > 0 && eu < 1e-5);
    for (int k = 0; k < 2; k++) free(grad[k]), free(after[k]);
    vlm_free(&m);
}

// a model directory (run or export) as a VLM planned for one row of T tokens
static void open_model_dir(Vlm *m, ModelDirSpec *d, const char *dir, int T) {
    model_dir_resolve(d, dir);
    VlmSpec s = {.vision_dir = d->vision_dir, .vision_layer = d->vision_layer, .llm_dir = d->llm_dir,
                 .connector = d->connector, .connector_scale = d->connector_scale, .lora = d->lora, .max_B = 1,
                 .max_T = T, .max_images = 1};
    vlm_init(m, kernels_cpu(), &s);
    int unmatched;
    int n = params_load_file(&m->train, d->weights, "", &unmatched);
    assert_int_equal(n, m->train.n);
    assert_int_equal(unmatched, 0);
}

static void test_export_matches_unmerged(void **state) {
    char run[600], out[600], p[700];
    snprintf(run, sizeof run, "%s/reference", root);
    snprintf(out, sizeof out, "%s/export/", root);  // a trailing slash, twice: the second replaces the first
    export_run(run, out);
    export_run(run, out);
    out[strlen(out) - 1] = 0;
    const char *files[4] = {"llm/model.safetensors", "llm/tokenizer.json", "adapter/adapter_config.json", "connector.safetensors"};
    for (int i = 0; i < 4; i++) {
        path_join(p, sizeof p, out, files[i]);
        assert_true(file_exists(p));
    }
    enum { T = 24 };
    Vlm a, b;
    ModelDirSpec da, db;
    open_model_dir(&a, &da, run, T);
    open_model_dir(&b, &db, out, T);
    assert_true(da.lora.r == 4 && db.lora.r == 0);  // the export's LoRA lives in llm/'s weights
    int ids[T], tgt[T], row = 0, start = 2;
    for (int i = 0; i < T; i++) ids[i] = 3 + (i * 7) % 200, tgt[i] = -1;
    size_t np = 3 * (size_t)a.vit.cfg.image_size * a.vit.cfg.image_size;
    float *pix = xmalloc(np * sizeof(float));
    uint64_t rs = 11;
    test_fill_uniform(pix, np, -1.5f, 1.5f, &rs);
    VlmBatch vb = {.B = 1, .T = T, .ids = ids, .targets = tgt, .n_img = 1, .pixels = pix, .img_row = &row, .img_start = &start};
    size_t V = a.llm.cfg.vocab;
    float *la = xmalloc(T * V * sizeof(float)), *lb = xmalloc(T * V * sizeof(float));
    vlm_logits(&a, &vb, la);
    vlm_logits(&b, &vb, lb);
    double e = rel_err(lb, la, T * V);
    printf("    merged export vs unmerged LoRA: logits rel err %.2e\n", e);
    assert_true(e < 1e-5);
    free(la);
    free(lb);
    free(pix);
    vlm_free(&a);
    vlm_free(&b);
}

// the first and last validation loss of a run's metrics.jsonl
static void val_losses(const char *run, double *first, double *last) {
    char p[700];
    path_join(p, sizeof p, run, "metrics.jsonl");
    char *s = test_slurp(p, NULL);
    *first = *last = NAN;
    for (char *q = s; (q = strstr(q, "\"val_loss\": ")); q++) {
        double v = atof(q + 12);
        if (isnan(*first)) *first = v;
        *last = v;
    }
    free(s);
}

// Runs argv (a ./train run into dir) killed with SIGKILL after 3 more progress lines, up to
// max_kills times, then restarted until it finishes step `last` (dir/step_<last>/state.json);
// fails unless it finished and was killed at least once
static void run_killed(char *const argv[], const char *log, const char *dir, int last, int max_kills) {
    char p[900], step[64];
    snprintf(step, sizeof step, "step_%08d/state.json", last);
    path_join(p, sizeof p, dir, step);
    int kills = 0, done = 0;
    for (int attempt = 0; attempt < 10 && !done; attempt++) {
        int before = count_steps(log), st = 0;
        pid_t pid = spawn(argv, log, 0, 1);
        // exited: wait_progress reaped it; else it runs on, to be killed or (kills spent) waited
        // for, so that no two runs ever share dir
        int exited = kills < max_kills && wait_progress(pid, log, before, 3, &st) != 0;
        if (!exited && kills < max_kills) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            kills++;
        } else if (!exited && waitpid(pid, &st, 0) != pid) {
            fail_msg("lost the run's process");
        }
        done = file_exists(p);
    }
    assert_true(done);
    assert_true(kills >= 1);
}

// The other vision tower families end to end on ./synth's data with a tiny random tower of the
// family (--vision): stage 1 and stage 2 (from the stage-1 connector) learn, a stage-2 run
// killed with SIGKILL and restarted ends bit-identical to an uninterrupted one, and the export
// generates text from an image. extra: more config lines (the synth tower's 8x8 grid needs a
// pixel shuffle of 2 where the connector's default is another).
static void family_end_to_end(const char *family, const char *connector, const char *extra) {
    char dir[600], log[600], conf[700], s1[700], s2[700], killed[700], exp[700];
    snprintf(dir, sizeof dir, "%s/family_%s", root, family);
    snprintf(log, sizeof log, "%s/family_%s.log", root, family);
    char *sargv[] = {"./synth", dir, "--train", "32", "--val", "8", "--heldout", "1", "--bench", "0", "--vision",
                     (char *)family, "--quiet", NULL};
    assert_int_equal(spawn(sargv, log, 0, 0), 0);
    snprintf(conf, sizeof conf, "%s/family.conf", dir);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f,
            "stage = 1\nvision = %s/models/vision\nllm = %s/models/llm\nconnector = %s\nvision_layer = -1\n"
            "data = %s/data/stage1_train.json\nimage_folder = %s/data/images\nval_data = %s/data/stage1_val.json\n"
            "data_cache = %s/cache\nmax_seq_len = 96\nbatch_size = 4\nglobal_batch = 8\nmax_steps = 8\nlr = 3e-3\n"
            "warmup_ratio = 0.1\nsave_every = 2\nkeep_last = 2\neval_every = 4\nseed = 7\ndevice = %s\nthreads = 2\n%s",
            dir, dir, connector, dir, dir, dir, dir, device, extra);
    fclose(f);
    snprintf(s1, sizeof s1, "%s/stage1", dir);
    snprintf(s2, sizeof s2, "%s/stage2", dir);
    snprintf(killed, sizeof killed, "%s/stage2_killed", dir);
    char o1[800], o2[800], ok[800], init[800], d2[800], v2[800];
    snprintf(o1, sizeof o1, "out_dir=%s", s1);
    snprintf(o2, sizeof o2, "out_dir=%s", s2);
    snprintf(ok, sizeof ok, "out_dir=%s", killed);
    snprintf(init, sizeof init, "init_from=%s", s1);
    snprintf(d2, sizeof d2, "data=%s/data/stage2_train.json", dir);
    snprintf(v2, sizeof v2, "val_data=%s/data/stage2_val.json", dir);
    char *a1[] = {(char *)train_bin, conf, o1, NULL};
    assert_int_equal(spawn(a1, log, 0, 0), 0);
    char *a2[] = {(char *)train_bin, conf, o2, "stage=2", init, d2, v2, "lora_r=4", "lora_alpha=8", NULL};
    assert_int_equal(spawn(a2, log, 0, 0), 0);
    double f1, l1, f2, l2;
    val_losses(s1, &f1, &l1);
    val_losses(s2, &f2, &l2);
    printf("    %s + %s: validation loss stage 1 %.4f -> %.4f, stage 2 %.4f -> %.4f\n", family, connector, f1, l1, f2,
           l2);
    assert_true(l1 < f1 && l2 < f2);

    // SIGKILL after a checkpoint, then restarts until done: the same run to the bit
    char *ak[] = {(char *)train_bin, conf, ok, "stage=2", init, d2, v2, "lora_r=4", "lora_alpha=8", NULL};
    run_killed(ak, log, killed, 8, 2);
    expect_same_run(s2, killed, 8);

    snprintf(exp, sizeof exp, "%s/export", dir);
    export_run(s2, exp);
    char img[800], out[800];
    snprintf(img, sizeof img, "%s/data/images/img_00000.png", dir);
    snprintf(out, sizeof out, "%s/generate.log", dir);
    char *ag[] = {"./generate", exp, "--image", img, "--prompt", "What is in the picture?", "--max-new-tokens", "4",
                  "--device", (char *)device, NULL};
    assert_int_equal(spawn(ag, out, 0, 0), 0);
    assert_true(log_has(out, "(16 image tokens; vision encoder + connector"));  // 8x8 patches, pixel shuffle 2
    assert_true(log_has(out, "| decode: "));
}

static void test_siglip_idefics3_end_to_end(void **state) { family_end_to_end("siglip", "idefics3", ""); }
static void test_internvit_internvl_end_to_end(void **state) { family_end_to_end("internvit", "internvl", ""); }
// InternViT and mlp1 under transformers' native names (internvl_vision, model.multi_modal_projector)
static void test_internvl_native_end_to_end(void **state) { family_end_to_end("internvl_vision", "internvl_hf", ""); }
// nanoVLM's names and flat config (vit_*), MP.proj.weight; its default pixel shuffle is 4
static void test_nanovlm_end_to_end(void **state) { family_end_to_end("nanovlm", "nanovlm", "pixel_shuffle = 2\n"); }

// InternVL's dynamic tiling through the whole run: images of several aspect ratios cut into up to
// 4 tiles + thumbnail, samples with two images, the <img> <IMG_CONTEXT> ... </img> slots; stage 2
// learns, and a run killed and resumed is the same run to the bit
static void write_tiled_data(const char *dir) {
    static const int sizes[][2] = {{128, 64}, {64, 192}, {130, 130}, {64, 64}, {100, 37}};
    char p[800];
    for (int i = 0; i < 5; i++) {
        int w = sizes[i][0], h = sizes[i][1];
        uint8_t *rgb = xmalloc((size_t)w * h * 3);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < 3; c++) rgb[((size_t)y * w + x) * 3 + c] = (uint8_t)((x * (c + 1) * 7 + y * (3 - c) * 5 + i * 40) & 255);
        snprintf(p, sizeof p, "%s/tiled/img%d.jpg", dir, i);
        image_write_jpeg(p, rgb, w, h, 90, 1);
        free(rgb);
    }
    static const char *words[] = {"red", "blue", "green", "wide", "tall", "square", "small", "large"};
    for (int split = 0; split < 2; split++) {
        snprintf(p, sizeof p, "%s/tiled/%s.json", dir, split ? "val" : "train");
        FILE *f = fopen(p, "w");
        assert_non_null(f);
        fprintf(f, "[");
        int n = split ? 8 : 32;
        for (int k = 0; k < n; k++) {
            int a = (k + split) % 5, b = (k * 3 + 1 + split) % 5;
            if (k % 3 == 0)  // two images, one placeholder each, in order
                fprintf(f, "%s{\"id\": \"t%d\", \"image\": [\"img%d.jpg\", \"img%d.jpg\"], \"conversations\": [{\"from\": \"human\", "
                        "\"value\": \"<image>\\n<image>\\nCompare them.\"}, {\"from\": \"gpt\", \"value\": \"%s and %s\"}]}",
                        k ? ", " : "", k, a, b, words[a], words[b + 3 > 7 ? 7 : b + 3]);
            else
                fprintf(f, "%s{\"id\": \"t%d\", \"image\": \"img%d.jpg\", \"conversations\": [{\"from\": \"human\", "
                        "\"value\": \"<image>\\nWhat is it?\"}, {\"from\": \"gpt\", \"value\": \"%s\"}]}",
                        k ? ", " : "", k, a, words[a]);
        }
        fprintf(f, "]\n");
        fclose(f);
    }
}

static void test_internvl_tiled_end_to_end(void **state) {
    (void)state;
    char dir[600], log[600], conf[700], p[800], s2[800], killed[800];
    snprintf(dir, sizeof dir, "%s/tiled", root);
    snprintf(log, sizeof log, "%s/tiled.log", root);
    char *sargv[] = {"./synth", dir, "--train", "8", "--val", "4", "--heldout", "1", "--bench", "0", "--vision", "internvit",
                     "--quiet", NULL};
    assert_int_equal(spawn(sargv, log, 0, 0), 0);
    snprintf(p, sizeof p, "%s/tiled", dir);
    mkdir(p, 0755);
    write_tiled_data(dir);
    snprintf(conf, sizeof conf, "%s/tiled.conf", dir);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f,
            "stage = 2\nvision = %s/models/vision\nllm = %s/models/llm\nconnector = internvl\nvision_layer = -1\n"
            "max_tiles = 4\nmax_images = 2\nimage_aspect = crop\nlora_r = 4\nlora_alpha = 8\n"
            "data = %s/tiled/train.json\nimage_folder = %s/tiled\nval_data = %s/tiled/val.json\n"
            "data_cache = %s/cache\nmax_seq_len = 256\nbatch_size = 4\nglobal_batch = 8\nmax_steps = 8\nlr = 3e-3\n"
            "warmup_ratio = 0.1\nsave_every = 2\nkeep_last = 2\neval_every = 4\nseed = 7\ndevice = %s\nthreads = 2\n",
            dir, dir, dir, dir, dir, dir, device);
    fclose(f);
    snprintf(s2, sizeof s2, "%s/run", dir);
    snprintf(killed, sizeof killed, "%s/run_killed", dir);
    char o2[900], ok[900];
    snprintf(o2, sizeof o2, "out_dir=%s", s2);
    snprintf(ok, sizeof ok, "out_dir=%s", killed);
    char *a2[] = {(char *)train_bin, conf, o2, NULL};
    assert_int_equal(spawn(a2, log, 0, 0), 0);
    // every sample prepared: 32 of them, 11 with two images (grids 2x1, 1x3, 2x2 + thumbnails)
    assert_true(log_has(log, "wrote 32 of 32 samples"));
    assert_true(log_has(log, "images: 43 "));
    double f2, l2;
    val_losses(s2, &f2, &l2);
    printf("    internvl tiled: validation loss %.4f -> %.4f\n", f2, l2);
    assert_true(l2 < f2);
    char *ak[] = {(char *)train_bin, conf, ok, NULL};
    run_killed(ak, log, killed, 8, 1);
    expect_same_run(s2, killed, 8);

    // export (svlm.json keeps max_tiles) and generate from a 128 x 64 image: 2 tiles + thumbnail
    char exp[900], img[900], out[900];
    snprintf(exp, sizeof exp, "%s/export", dir);
    export_run(s2, exp);
    snprintf(img, sizeof img, "%s/tiled/img0.jpg", dir);
    snprintf(out, sizeof out, "%s/generate.log", dir);
    char *ag[] = {"./generate", exp, "--image", img, "--prompt", "What is it?", "--max-new-tokens", "4", "--device",
                  (char *)device, NULL};
    assert_int_equal(spawn(ag, out, 0, 0), 0);
    assert_true(log_has(out, "(48 image tokens in 3 tiles; vision encoder + connector"));
    char *ar[] = {"./generate", s2, "--image", img, "--prompt", "What is it?", "--max-new-tokens", "4", "--device",
                  (char *)device, NULL};  // the run directory itself: its config.conf's max_tiles
    assert_int_equal(spawn(ar, out, 0, 0), 0);
    assert_true(log_has(out, "(48 image tokens in 3 tiles"));
}

// Idefics3 / SmolVLM as it ships (model = DIR, test_idefics3_tiled_dir) on its own splitting: the
// synth set's 64 x 64 images are 3 x 3 tiles + the global image each, 10 tiles an image; stage 2
// from the shipped projector, and a run killed and resumed is the same run to the bit
static void test_idefics3_whole_tiled_resume(void **state) {
    char dir[600], log[700], conf[700], model[700], synth[700], ref[800], killed[800];
    snprintf(dir, sizeof dir, "%s/idefics3_tiled", root);
    mkdir(dir, 0755);
    snprintf(model, sizeof model, "%s/model", dir);
    test_idefics3_tiled_dir(model);
    snprintf(log, sizeof log, "%s/run.log", dir);
    snprintf(synth, sizeof synth, "%s/synth", root);
    snprintf(conf, sizeof conf, "%s/run.conf", dir);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f,
            "stage = 2\nmodel = %s\ndata = %s/data/stage2_train.json\nimage_folder = %s/data/images\n"
            "val_data = %s/data/stage2_val.json\ndata_cache = %s/cache\nmax_seq_len = 320\nbatch_size = 4\n"
            "global_batch = 8\nmax_steps = 8\nlr = 3e-2\nwarmup_ratio = 0.1\nlora_r = 4\nlora_alpha = 8\n"
            "save_every = 2\nkeep_last = 2\neval_every = 4\nseed = 7\ndevice = %s\nthreads = 2\n",
            model, synth, synth, synth, dir, device);
    fclose(f);
    snprintf(ref, sizeof ref, "%s/run", dir);
    snprintf(killed, sizeof killed, "%s/run_killed", dir);
    char o[900], ok[900];
    snprintf(o, sizeof o, "out_dir=%s", ref);
    snprintf(ok, sizeof ok, "out_dir=%s", killed);
    char *a[] = {(char *)train_bin, conf, o, NULL};
    assert_int_equal(spawn(a, log, 0, 0), 0);
    assert_true(log_has(log, "own projector"));
    snprintf(o, sizeof o, "%s/config.conf", ref);  // max_tiles 0 (auto) resolved to the model's 9
    assert_true(log_has(o, "max_tiles      = 9 "));
    assert_true(log_has(log, " tiles, 10.00 per image"));
    char *ak[] = {(char *)train_bin, conf, ok, NULL};
    run_killed(ak, log, killed, 8, 2);
    expect_same_run(ref, killed, 8);
    double first, last;
    val_losses(ref, &first, &last);
    printf("    idefics3 whole model, 3 x 3 + global tiles: validation loss %.4f -> %.4f, resumed run identical\n", first, last);
}

// resuming from an older checkpoint replaces the history after it (moved aside, not mixed in)
static void test_resume_from_older_checkpoint(void **state) {
    char dir[600], log[600], p[700], ref[700], ck[700];
    snprintf(dir, sizeof dir, "%s/older", root);
    snprintf(log, sizeof log, "%s/older.log", root);
    assert_int_equal(train(dir, log, 0, "keep_last=10", NULL, NULL), 0);
    path_join(p, sizeof p, dir, "step_00000010/trainable.safetensors");
    snprintf(ref, sizeof ref, "%s/older_step10.safetensors", root);
    copy_file(p, ref, log);
    // the same configuration from step 4: the run is deterministic, so step 10 comes out the same
    snprintf(ck, sizeof ck, "resume=%s/step_00000004", dir);
    assert_int_equal(train(dir, log, 0, "keep_last=10", ck, NULL), 0);
    assert_true(log_has(log, "3 later checkpoint(s)"));
    path_join(p, sizeof p, dir, "abandoned_step_00000010_0/state.json");
    assert_true(file_exists(p));
    path_join(p, sizeof p, dir, "step_00000010/trainable.safetensors");
    assert_true(test_same_file(p, ref));
    path_join(p, sizeof p, dir, "step_00000006/state.json");  // rewritten by the resumed run, not kept from before
    assert_true(file_exists(p));
    path_join(p, sizeof p, dir, "metrics.jsonl");
    char refm[700];
    path_join(refm, sizeof refm, root, "reference/metrics.jsonl");
    assert_true(test_same_file(p, refm));
}

static void test_bad_config(void **state) {
    char log[600], dir[600];
    snprintf(log, sizeof log, "%s/badconf.log", root);
    snprintf(dir, sizeof dir, "%s/badconf", root);
    assert_int_equal(train(dir, log, 0, "learning_rate=1e-3", NULL, NULL), 1);
    assert_true(log_has(log, "unknown key \"learning_rate\""));
    assert_int_equal(train(dir, log, 0, "lr=fast", NULL, NULL), 1);
    assert_true(log_has(log, "lr = \"fast\" is not a number"));
    assert_int_equal(train(dir, log, 0, "connector=qformer", NULL, NULL), 1);
    assert_true(log_has(log, "connector \"qformer\" is not known"));
    assert_int_equal(train(dir, log, 0, "llm=/nonexistent/llm", NULL, NULL), 1);
    assert_true(log_has(log, "/nonexistent/llm: language model directory not found"));
    assert_int_equal(train(dir, log, 0, "vision=/nonexistent/clip", NULL, NULL), 1);
    assert_true(log_has(log, "/nonexistent/clip: vision model directory not found"));
    // the synth tower's 8x8 patch grid does not split into 3x3 pixel-shuffle tokens: one line
    int errors = count_errors(log);
    assert_int_equal(train(dir, log, 0, "connector=idefics3", "pixel_shuffle=3", "vision_layer=-1"), 1);
    assert_int_equal(count_errors(log), errors + 1);
    assert_true(log_has(log, "connector idefics3 takes 3x3 patches per token and needs a patch grid divisible by 3; "
                             "the vision encoder gives 8x8"));
    assert_int_equal(train(dir, log, 0, "pixel_shuffle=4", NULL, NULL), 1);  // ldp pools 2x2, no other
    assert_true(log_has(log, "connector ldp has a fixed 2x2 pooling: pixel_shuffle = 4 is not for it"));
    // a vision tower of a family svlm does not know
    char vdir[700], vconf[800], vopt[800];
    snprintf(vdir, sizeof vdir, "%s/pixtral", root);
    make_dirs(vdir);
    snprintf(vconf, sizeof vconf, "%s/config.json", vdir);
    FILE *f = fopen(vconf, "w");
    assert_non_null(f);
    fputs("{\"model_type\": \"pixtral\", \"hidden_size\": 64}\n", f);
    fclose(f);
    snprintf(vopt, sizeof vopt, "vision=%s", vdir);
    errors = count_errors(log);
    assert_int_equal(train(dir, log, 0, vopt, NULL, NULL), 1);
    assert_int_equal(count_errors(log), errors + 1);
    assert_true(log_has(log, "pixtral/config.json: model_type \"pixtral\" is not a vision tower svlm knows"));
    char *argv[] = {"./train", "/nonexistent.conf", NULL};
    assert_int_equal(spawn(argv, log, 0, 0), 1);
    assert_true(log_has(log, "/nonexistent.conf: config file not found"));
}

static void test_foreign_and_corrupt_checkpoints(void **state) {
    char dir[600], log[600], p[700];
    snprintf(dir, sizeof dir, "%s/foreign", root);
    snprintf(log, sizeof log, "%s/foreign.log", root);
    assert_int_equal(train(dir, log, 0, "max_steps=2", NULL, NULL), 0);
    // another LoRA rank: the checkpoint's tensors mean something else
    assert_int_equal(train(dir, log, 0, "max_steps=4", "lora_r=8", NULL), 1);
    assert_true(log_has(log, "checkpoint is from another configuration"));
    assert_true(log_has(log, "lora.r: checkpoint 4, this run 8"));
    assert_int_equal(train(dir, log, 0, "max_steps=4", "connector=mlp2x_gelu", NULL), 1);
    assert_true(log_has(log, "connector: checkpoint \"ldp\", this run \"mlp2x_gelu\""));
    // a damaged file in the newest checkpoint
    path_join(p, sizeof p, dir, "step_00000002/trainable.safetensors");
    assert_int_equal(truncate(p, 100), 0);
    assert_int_equal(train(dir, log, 0, "max_steps=4", NULL, NULL), 1);
    assert_true(log_has(log, "step_00000002/trainable.safetensors"));
    // resume = never on a directory with checkpoints is refused, not overwritten
    assert_int_equal(train(dir, log, 0, "resume=never", NULL, NULL), 1);
    assert_true(log_has(log, "resume = never but"));
}

// ---- issue 14: a damaged checkpoint or a hostile out_dir never costs the good checkpoints ----

// every entry of dir (names joined, sorted by readdir order is not stable: sorted here)
static void list_dir(const char *dir, char *out, size_t cap) {
    char cmd[800];
    snprintf(cmd, sizeof cmd, "ls -A '%s'", dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    pclose(p);
}

// state.json of dir/step_00000004 with `key` set to the raw JSON text val, or removed (val NULL)
static void damage_state(const char *good, const char *dst, const char *key, const char *val) {
    size_t n;
    char *t = test_slurp(good, &n);
    cJSON *j = cJSON_Parse(t);
    free(t);
    assert_non_null(j);
    if (val) cJSON_ReplaceItemInObjectCaseSensitive(j, key, cJSON_CreateRaw(val));
    else cJSON_DeleteItemFromObjectCaseSensitive(j, key);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    FILE *f = fopen(dst, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    free(text);
}

// Every number of state.json is range-checked, and a refused checkpoint moves nothing: before,
// "step": -5 or 1e300 set every checkpoint aside as abandoned_step_* (1e300 then trained for
// ~2^63 steps), and "metrics_bytes": -1 emptied metrics.jsonl.
static void test_damaged_state_refused(void **state) {
    char dir[600], log[600], p[700], good[700], metrics[700], before[4096], after[4096];
    snprintf(dir, sizeof dir, "%s/damaged", root);
    snprintf(log, sizeof log, "%s/damaged.log", root);
    assert_int_equal(train(dir, log, 0, "max_steps=4", "keep_last=10", NULL), 0);
    path_join(p, sizeof p, dir, "step_00000004/state.json");
    snprintf(good, sizeof good, "%s/damaged_state.good", root);
    copy_file(p, good, log);
    path_join(metrics, sizeof metrics, dir, "metrics.jsonl");
    char metrics_good[700];
    snprintf(metrics_good, sizeof metrics_good, "%s/damaged_metrics.good", root);
    copy_file(metrics, metrics_good, log);
    list_dir(dir, before, sizeof before);
    static const struct {
        const char *key, *val, *needle;
    } cases[] = {
        {"step", "-5", "key \"step\" must be an integer in [0, "},
        {"step", "1e300", "key \"step\" must be an integer in [0, "},
        {"step", "2.5", "key \"step\" must be an integer in [0, "},
        {"step", "NaN", "malformed JSON"},  // not JSON: refused by the parser
        {"step", "1e999", "key \"step\" must be an integer in [0, "},  // inf
        {"step", "2", "key \"step\" is 2 but the directory is step_00000004"},
        {"step", "\"4\"", "key \"step\" must be a number"},
        {"step", NULL, "missing key \"step\""},
        {"total_steps", "0", "key \"total_steps\" must be an integer in [1, "},
        {"total_steps", "3", "key \"step\" must be an integer in [0, 3]"},
        {"metrics_bytes", "-1", "key \"metrics_bytes\" must be an integer in [0, "},
        {"metrics_bytes", NULL, "missing key \"metrics_bytes\""},
        {"data_index", "-3", "key \"data_index\" must be an integer in [0, "},
        {"data_epoch", "1e20", "key \"data_epoch\" must be an integer in [0, "},
        {"world_size", "0", "key \"world_size\" must be an integer in [1, "},
        {"skipped_steps", "5", "key \"skipped_steps\" must be an integer in [0, 4]"},
        {"tokens", "-1", "key \"tokens\" must be an integer in [0, "},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        damage_state(good, p, cases[i].key, cases[i].val);
        int rc = train(dir, log, 0, "max_steps=6", "keep_last=10", NULL);
        if (rc != 1 || !log_has(log, cases[i].needle) || !log_has(log, "step_00000004/state.json"))
            fail_msg("%s = %s: exit %d, not refused with \"%s\"", cases[i].key, cases[i].val ? cases[i].val : "(absent)", rc,
                     cases[i].needle);
        list_dir(dir, after, sizeof after);  // nothing moved, nothing added, nothing removed
        if (strcmp(before, after)) fail_msg("%s = %s: out_dir changed:\n%s\nwas:\n%s", cases[i].key, cases[i].val, after, before);
        assert_true(test_same_file(metrics, metrics_good));
    }
    // restored, the run resumes from step 4 as before
    copy_file(good, p, log);
    assert_int_equal(train(dir, log, 0, "max_steps=6", "keep_last=10", NULL), 0);
    assert_true(log_has(log, "resume: "));
    path_join(p, sizeof p, dir, "step_00000006/state.json");
    assert_true(file_exists(p));
}

// a directory outside out_dir holding files that must survive; returns its path in out
static void make_victim(const char *name, char *out, size_t cap) {
    snprintf(out, cap, "%s/victim_%s", root, name);
    mkdir(out, 0755);
    char p[800];
    const char *files[] = {"state.json", "trainable.safetensors", "precious.txt"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", out, files[i]);
        FILE *f = fopen(p, "w");
        assert_non_null(f);
        fputs("{\"precious\": true}\n", f);
        fclose(f);
    }
}

static void expect_victim_intact(const char *victim) {
    char p[800];
    const char *files[] = {"state.json", "trainable.safetensors", "precious.txt"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", victim, files[i]);
        if (!file_exists(p)) fail_msg("%s was deleted through a symbolic link", p);
        assert_true(log_has(p, "{\"precious\": true}"));
    }
}

// Nothing svlm deletes or truncates is reached through a symbolic link: a step_N.tmp link (the
// start-up clean-up), a step_N link holding a state.json (keep_last pruning) and a metrics.jsonl
// link (truncated on resume) all leave their targets as they were.
static void test_out_dir_links_not_followed(void **state) {
    char dir[600], log[600], p[700], victim_tmp[700], victim_step[700], victim_file[700];
    snprintf(dir, sizeof dir, "%s/links", root);
    snprintf(log, sizeof log, "%s/links.log", root);
    assert_int_equal(train(dir, log, 0, "max_steps=2", "keep_last=1", NULL), 0);
    make_victim("tmp", victim_tmp, sizeof victim_tmp);
    make_victim("step", victim_step, sizeof victim_step);
    snprintf(victim_file, sizeof victim_file, "%s/victim_metrics.jsonl", root);
    FILE *f = fopen(victim_file, "w");
    assert_non_null(f);
    for (int i = 0; i < 2000; i++) fputs("{\"precious\": true}\n", f);  // longer than the run's metrics
    fclose(f);
    size_t victim_len;
    free(test_slurp(victim_file, &victim_len));
    char target[800];
    path_join(p, sizeof p, dir, "step_00000003.tmp");
    assert_int_equal(symlink(realpath(victim_tmp, target), p), 0);
    path_join(p, sizeof p, dir, "step_00000001");  // older than the checkpoint: pruned by keep_last = 1
    assert_int_equal(symlink(realpath(victim_step, target), p), 0);
    path_join(p, sizeof p, dir, "metrics.jsonl");
    unlink(p);
    assert_int_equal(symlink(realpath(victim_file, target), p), 0);
    // resumes from step 2, saves 4, prunes down to one checkpoint
    assert_int_equal(train(dir, log, 0, "max_steps=4", "keep_last=1", NULL), 0);
    expect_victim_intact(victim_tmp);
    expect_victim_intact(victim_step);
    size_t n;
    char *text = test_slurp(victim_file, &n);
    assert_int_equal(n, victim_len);
    free(text);
    struct stat st;
    path_join(p, sizeof p, dir, "step_00000003.tmp");
    assert_int_not_equal(lstat(p, &st), 0);  // the link itself removed
    path_join(p, sizeof p, dir, "step_00000001");
    assert_int_equal(lstat(p, &st), 0);  // not svlm's: left as it is
    assert_true(S_ISLNK(st.st_mode));
    path_join(p, sizeof p, dir, "metrics.jsonl");  // replaced by a regular file
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_true(log_has(log, "metrics.jsonl is not a regular file"));
    path_join(p, sizeof p, dir, "step_00000004/state.json");
    assert_true(file_exists(p));
    path_join(p, sizeof p, dir, "step_00000002");
    assert_false(dir_exists(p));  // pruned as usual
    // a fresh run (resume = never in a new out_dir) over a linked metrics.jsonl: not truncated
    snprintf(dir, sizeof dir, "%s/links_fresh", root);
    mkdir(dir, 0755);
    path_join(p, sizeof p, dir, "metrics.jsonl");
    assert_int_equal(symlink(realpath(victim_file, target), p), 0);
    assert_int_equal(train(dir, log, 0, "max_steps=2", NULL, NULL), 0);
    text = test_slurp(victim_file, &n);
    assert_int_equal(n, victim_len);
    free(text);
}

static void test_nan_loss(void **state) {
    char dir[600], log[600], p[700];
    snprintf(dir, sizeof dir, "%s/nan", root);
    snprintf(log, sizeof log, "%s/nan.log", root);
    // an absurd learning rate blows the weights up after the first update
    assert_int_equal(train(dir, log, 0, "lr=1e30", "warmup_ratio=0", NULL), 1);
    assert_true(log_has(log, "non-finite loss or gradient"));
    assert_true(log_has(log, "nan_policy = skip"));
    snprintf(dir, sizeof dir, "%s/nan_skip", root);
    assert_int_equal(train(dir, log, 0, "lr=1e30", "warmup_ratio=0", "nan_policy=skip"), 0);
    assert_true(log_has(log, "update skipped"));
    path_join(p, sizeof p, dir, "metrics.jsonl");
    assert_true(log_has(p, "\"skipped_steps\": 9"));
    assert_true(log_has(p, "\"loss\": null"));  // JSON has no NaN: the file stays parseable
    size_t n;
    char *text = test_slurp(p, &n);
    assert_null(strstr(text, "nan"));
    free(text);
}

static void test_disk_full_during_checkpoint(void **state) {
    char dir[600], log[600], p[700], before[700];
    snprintf(dir, sizeof dir, "%s/diskfull", root);
    snprintf(log, sizeof log, "%s/diskfull.log", root);
    assert_int_equal(train(dir, log, 0, "max_steps=2", NULL, NULL), 0);
    path_join(p, sizeof p, dir, "step_00000002/trainable.safetensors");
    snprintf(before, sizeof before, "%s/trainable.before", root);
    copy_file(p, before, log);
    // files may not grow past 20 KB: the logs fit, the next checkpoint's tensors do not
    assert_int_equal(train(dir, log, 20000, "max_steps=4", NULL, NULL), 1);
    assert_true(log_has(log, "checkpoint of step 4 failed"));
    assert_true(log_has(log, "the previous checkpoint is intact"));
    assert_true(test_same_file(p, before));
    path_join(p, sizeof p, dir, "step_00000004.tmp");
    assert_false(dir_exists(p));
    path_join(p, sizeof p, dir, "step_00000004");
    assert_false(dir_exists(p));
    // and the run resumes from it once there is room again
    assert_int_equal(train(dir, log, 0, "max_steps=4", NULL, NULL), 0);
    path_join(p, sizeof p, dir, "step_00000004/state.json");
    assert_true(file_exists(p));
}

// The plan printed at start is what setup holds, to the byte; a memory_limit below it stops the
// run before anything is allocated, naming the largest micro-batch that fits.
static void test_memory_plan(void **state) {
    char log[600], dir[600], arg[64];
    snprintf(log, sizeof log, "%s/reference.log", root);
    size_t n;
    char *s = test_slurp(log, &n);
    const char *q = strstr(s, "\nmemory: ");  // "memory: N bytes held on DEVICE after setup (the plan: M)"
    assert_non_null(q);
    assert_non_null(strstr(q, " after setup (the plan: "));
    unsigned long long held = strtoull(q + 9, NULL, 10), plan = strtoull(strstr(q, "the plan: ") + 10, NULL, 10);
    printf("    setup held %llu bytes, the plan said %llu\n", held, plan);
    assert_true(held > 0);
    assert_int_equal(held, plan);
    assert_non_null(strstr(s, "largest micro-batch that fits: "));
    free(s);

    snprintf(log, sizeof log, "%s/memlimit.log", root);
    snprintf(dir, sizeof dir, "%s/memlimit", root);
    snprintf(arg, sizeof arg, "memory_limit=%llu", plan / 2);
    assert_int_equal(train(dir, log, 0, arg, NULL, NULL), 1);
    s = test_slurp(log, &n);
    q = strstr(s, "the largest micro-batch that fits is ");
    if (!q && strcmp(device, "cpu")) {
        // CUDA counts up to 2 MiB of rounding per block: for these tiny models that slack is
        // most of the need, and a micro-batch of 1 does not fit half the plan either
        printf("    memory_limit %llu: not even batch_size 1 fits\n", plan / 2);
        assert_true(log_has(log, "memory plan: even batch_size 1 x max_seq_len 96 needs more than"));
    } else {
        assert_true(log_has(log, "memory plan: batch_size 4 x max_seq_len 96 needs "));
        assert_non_null(q);
        int largest = atoi(q + 37), set = atoi(strstr(q, "set batch_size = ") + 17);
        printf("    memory_limit %llu: largest %d, suggested batch_size %d\n", plan / 2, largest, set);
        assert_true(largest >= 1 && largest < 4 && set >= 1 && set <= largest && 8 % set == 0);
    }
    free(s);
    char p[700];
    path_join(p, sizeof p, dir, "step_00000002");
    assert_false(dir_exists(p));
    assert_int_equal(train(dir, log, 0, "memory_limit=1KB", NULL, NULL), 1);
    assert_true(log_has(log, "even batch_size 1 x max_seq_len 96 needs more than the 1000 B available (memory_limit = 1KB)"));
    assert_int_equal(train(dir, log, 0, "memory_limit=lots", NULL, NULL), 1);
    assert_true(log_has(log, "memory_limit = \"lots\" is not a size"));
}

// an argument runs only the tests whose names match it (a shell pattern), or with a leading "!"
// those whose names do not (test_select); the reference run of setup is always made
int main(int argc, char **argv) {
    const char *d = getenv("SVLM_TEST_DEVICE"), *t = getenv("SVLM_TEST_TRAIN");
    if (d && *d) device = d;
    if (t && *t) train_bin = t;
    const char *pattern = argc > 1 ? argv[1] : NULL;
    if (strcmp(device, "cpu")) {  // bf16 on the GPU: the fp32 tolerances of the other tests do not apply
        const struct CMUnitTest gpu_tests[] = {
            cmocka_unit_test(test_reference_run_learns),
            cmocka_unit_test(test_resume_after_sigkill),
            cmocka_unit_test(test_resume_after_sigterm),
            cmocka_unit_test(test_resume_from_older_checkpoint),
            cmocka_unit_test(test_memory_plan),
            cmocka_unit_test(test_nan_loss),  // the non-finite check reads device reductions
            cmocka_unit_test(test_disk_full_during_checkpoint),  // the checkpoint copies from the device
        };
        struct CMUnitTest chosen[sizeof gpu_tests / sizeof gpu_tests[0]];
        size_t n = test_select(chosen, gpu_tests, sizeof gpu_tests / sizeof gpu_tests[0], pattern);
        return _cmocka_run_group_tests("gpu_tests", chosen, n, setup, NULL);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_run_learns),
        cmocka_unit_test(test_resume_after_sigkill),
        cmocka_unit_test(test_resume_after_sigterm),
        cmocka_unit_test(test_gradient_accumulation),
        cmocka_unit_test(test_export_matches_unmerged),
        cmocka_unit_test(test_resume_from_older_checkpoint),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_memory_plan),
        cmocka_unit_test(test_foreign_and_corrupt_checkpoints),
        cmocka_unit_test(test_nan_loss),
        cmocka_unit_test(test_disk_full_during_checkpoint),
        cmocka_unit_test(test_damaged_state_refused),
        cmocka_unit_test(test_out_dir_links_not_followed),
        cmocka_unit_test(test_siglip_idefics3_end_to_end),
        cmocka_unit_test(test_internvit_internvl_end_to_end),
        cmocka_unit_test(test_internvl_native_end_to_end),
        cmocka_unit_test(test_nanovlm_end_to_end),
        cmocka_unit_test(test_internvl_tiled_end_to_end),
        cmocka_unit_test(test_idefics3_whole_tiled_resume),
    };
    struct CMUnitTest chosen[sizeof tests / sizeof tests[0]];
    size_t n = test_select(chosen, tests, sizeof tests / sizeof tests[0], pattern);
    return _cmocka_run_group_tests("tests", chosen, n, setup, NULL);
}
