// testlib.c: implementations of the shared test helpers (see testlib.h).
#include "tests/testlib.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/json.h"
#include "common/util.h"

int run_child(void (*fn)(void *), void *arg, char *buf, size_t cap) {
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); exit(3); }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); exit(3); }
    if (pid == 0) {
        // libgomp's worker threads do not survive fork(): a child that runs an OpenMP region
        // with the parent's team size hangs, so it runs single-threaded
        omp_set_num_threads(1);
        close(fds[0]);
        dup2(fds[1], 2);
        close(fds[1]);
        if (!freopen("/dev/null", "w", stdout)) _exit(4);
        fn(arg);
        exit(0);
    }
    close(fds[1]);
    size_t len = 0;
    char tmp[4096];
    ssize_t r;
    while ((r = read(fds[0], tmp, sizeof tmp)) > 0) {
        size_t take = (size_t)r;
        if (len + take >= cap) take = cap - 1 - len;
        memcpy(buf + len, tmp, take);
        len += take;
    }
    buf[len] = 0;
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) return -WTERMSIG(status);
    return WEXITSTATUS(status);
}

void expect_fatal_(const char *file, int line, void (*fn)(void *), void *arg, ...) {
    static char buf[1 << 16];
    int st = run_child(fn, arg, buf, sizeof buf);
    if (st != 1) {
        print_error("%s:%d: child exited with %d (want 1 from fatal); stderr:\n%s\n", file, line, st, buf);
        fail();
    }
    size_t n = strlen(buf);
    const char *nl = strchr(buf, '\n');
    if (n == 0 || !nl || nl != buf + n - 1) {
        print_error("%s:%d: want exactly one line on stderr, got:\n%s\n", file, line, buf);
        fail();
    }
    printf("      -> %s", buf);  // the error line, for the log
    va_list ap;
    va_start(ap, arg);
    const char *needle;
    while ((needle = va_arg(ap, const char *)) != NULL) {
        if (!strstr(buf, needle)) {
            print_error("%s:%d: error line lacks \"%s\": %s", file, line, needle, buf);
            va_end(ap);
            fail();
        }
    }
    va_end(ap);
}

uint64_t test_rand_u64(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

float test_rand_uniform(uint64_t *s) { return (float)((test_rand_u64(s) >> 40) * (1.0 / 16777216.0)); }

void test_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t *s) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * test_rand_uniform(s);
}

double rel_err(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)ref[i]);
        if (isnan(d)) return NAN;  // so that any comparison against a tolerance fails
        if (d > num) num = d;
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    return den > 0 ? num / den : num;
}

float *test_randv(size_t n, float lo, float hi, uint64_t *state) {
    float *x = xmalloc((n ? n : 1) * sizeof(float));
    test_fill_uniform(x, n, lo, hi, state);
    return x;
}

float *test_zerov(size_t n) { return xcalloc(n ? n : 1, sizeof(float)); }

float *test_copyv(const float *x, size_t n) {
    float *y = xmalloc((n ? n : 1) * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}

float *test_nanv(size_t n) {
    float *x = xmalloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

void test_expect_close(const char *what, const float *a, const float *ref, size_t n, double tol) {
    double e = rel_err(a, ref, n);
    print_message("    %-52s rel err %.2e (tol %.0e)\n", what, e, tol);
    if (!(e <= tol)) fail_msg("%s: rel err %.3e > %.1e", what, e, tol);
}

void test_expect_same_bits(const char *what, const float *a, const float *b, size_t n) {
    if (memcmp(a, b, n * sizeof(float)) != 0) fail_msg("%s: results differ bitwise", what);
}

size_t test_select(struct CMUnitTest *out, const struct CMUnitTest *in, size_t n, const char *pattern) {
    int negate = pattern && pattern[0] == '!';
    if (negate) pattern++;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!pattern || (fnmatch(pattern, in[i].name, 0) == 0) != negate) out[k++] = in[i];
    return k;
}

const char *fixture_path(const char *name) {
    static char buf[8][1024];
    static int i;
    i = (i + 1) % 8;
    snprintf(buf[i], sizeof buf[i], "tests/fixtures/%s", name);
    return buf[i];
}

void make_temp_dir(char *out, size_t cap, const char *tag) {
    mkdir("build", 0755);
    mkdir("build/tmp", 0755);
    snprintf(out, cap, "build/tmp/%s-%d", tag, (int)getpid());
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", out);
    if (system(cmd) != 0) { fprintf(stderr, "cannot clear %s\n", out); exit(3); }
    if (mkdir(out, 0755) != 0) { perror(out); exit(3); }
}

float *fixture_f32(const StFile *f, const char *name, size_t *n) {
    const StTensor *t = st_find(f, name);
    if (!t) fail_msg("%s: fixture tensor %s missing", f->path, name);
    float *x = xmalloc(st_numel(t) * sizeof(float) + 1);
    st_read_f32(f, t, x);
    if (n) *n = (size_t)st_numel(t);
    return x;
}

int *fixture_i32(const StFile *f, const char *name) {
    const StTensor *t = st_find(f, name);
    if (!t) fail_msg("%s: fixture tensor %s missing", f->path, name);
    int *x = xmalloc(st_numel(t) * sizeof(int) + 1);
    st_read_i32(f, t, x);
    return x;
}

void vlm_fixture_open(VlmFixture *fx, const char *name) {
    memset(fx, 0, sizeof *fx);
    st_open_or_die(&fx->f, fixture_path(name));
    const StTensor *ids = st_find(&fx->f, "input_ids"), *lg = st_find(&fx->f, "logits");
    const StTensor *px = st_find(&fx->f, "pixel_values"), *rows = st_find(&fx->f, "img_row");
    if (!ids || !lg || !px || !rows) fail_msg("%s: not a VLM fixture", fx->f.path);
    fx->B = (int)ids->shape[0];
    fx->T = (int)ids->shape[1];
    fx->V = (int)lg->shape[2];
    const StTensor *cols = st_find(&fx->f, "logit_cols");
    if (cols) {  // a subset of the columns: the vocabulary's size is in the metadata
        const char *v = st_meta(&fx->f, "vocab_size");
        if (!v || atoi(v) <= 0) fail_msg("%s: logit_cols without a vocab_size in the metadata", fx->f.path);
        fx->n_cols = (int)st_numel(cols);
        if (fx->n_cols != fx->V) fail_msg("%s: %d logit_cols for logits of %d columns", fx->f.path, fx->n_cols, fx->V);
        fx->V = atoi(v);
        fx->cols = fixture_i32(&fx->f, "logit_cols");
        for (int i = 0; i < fx->n_cols; i++)
            if (fx->cols[i] < 0 || fx->cols[i] >= fx->V) fail_msg("%s: logit_cols[%d] out of range", fx->f.path, i);
    }
    fx->S = (int)px->shape[2];
    fx->n_img = (int)rows->shape[0];
    fx->ids = fixture_i32(&fx->f, "input_ids");
    fx->labels = fixture_i32(&fx->f, "labels");
    fx->img_row = fixture_i32(&fx->f, "img_row");
    fx->img_start = fixture_i32(&fx->f, "img_start");
    fx->pixels = fixture_f32(&fx->f, "pixel_values", NULL);
    int N = fx->B * fx->T;  // HF scores logits[t] against labels[t+1]
    fx->targets = xmalloc(N * sizeof(int));
    for (int b = 0; b < fx->B; b++)
        for (int t = 0; t < fx->T; t++) {
            int l = t + 1 < fx->T ? fx->labels[b * fx->T + t + 1] : -100;
            fx->targets[b * fx->T + t] = l == -100 ? -1 : l;
        }
    fx->batch = (VlmBatch){.B = fx->B, .T = fx->T, .ids = fx->ids, .targets = fx->targets, .n_img = fx->n_img,
                           .pixels = fx->pixels, .img_row = fx->img_row, .img_start = fx->img_start};
}

void vlm_fixture_expect_logits(const VlmFixture *fx, const float *got, const char *what, double tol) {
    size_t n;
    float *want = fixture_f32(&fx->f, "logits", &n);
    int C = fx->n_cols ? fx->n_cols : fx->V;
    assert_int_equal(n, (size_t)fx->B * fx->T * C);
    float *sel = xmalloc(n * sizeof(float));  // got's columns that the fixture holds
    for (size_t i = 0; i < (size_t)fx->B * fx->T; i++)
        for (int c = 0; c < C; c++) sel[i * C + c] = got[i * fx->V + (fx->cols ? fx->cols[c] : c)];
    test_expect_close(what, sel, want, n, tol);
    free(sel);
    free(want);
}

void vlm_fixture_close(VlmFixture *fx) {
    free(fx->cols);
    free(fx->ids);
    free(fx->labels);
    free(fx->targets);
    free(fx->img_row);
    free(fx->img_start);
    free(fx->pixels);
    st_close(&fx->f);
}

VlmSpec fixture_vlm_spec(const char *llm, ConnectorType ct, const char *lora_dir, int max_B, int max_T,
                         int max_images, float lora_dropout) {
    static char vdir[1024], ldir[1024];  // fixture_path's buffers are reused after 8 calls
    snprintf(vdir, sizeof vdir, "%s", fixture_path("clip"));
    snprintf(ldir, sizeof ldir, "%s", fixture_path(llm));
    VlmSpec spec = {.vision_dir = vdir, .vision_layer = -2, .llm_dir = ldir, .connector = ct, .max_B = max_B,
                    .max_T = max_T, .max_images = max_images};
    if (lora_dir) lora_config_load_peft(&spec.lora, fixture_path(lora_dir));
    spec.lora.dropout = lora_dropout;
    return spec;
}

void fixture_model_open(Vlm *m, const Kernels *k, const char *llm, ConnectorType ct, const char *conn_file,
                        const char *lora_dir, int max_B, int max_T, int max_images, float lora_dropout) {
    VlmSpec spec = fixture_vlm_spec(llm, ct, lora_dir, max_B, max_T, max_images, lora_dropout);
    fixture_model_load(m, k, &spec, conn_file, lora_dir);
}

void fixture_model_load(Vlm *m, const Kernels *k, const VlmSpec *spec, const char *conn_file, const char *lora_dir) {
    vlm_init(m, k, spec);
    int unmatched;
    int n = params_load_file(&m->train, fixture_path(conn_file), "", &unmatched);
    int n_conn = 0;  // every connector tensor of the type is in the file
    for (int i = 0; i < m->train.n; i++) n_conn += m->train.p[i].group == PARAM_GROUP_CONNECTOR;
    assert_int_equal(n, n_conn);
    assert_int_equal(unmatched, 0);
    if (lora_dir) {
        char path[512];
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", fixture_path(lora_dir));
        n = params_load_file(&m->train, path, "base_model.model.", &unmatched);
        assert_int_equal(n, 28);
        assert_int_equal(unmatched, 0);
    }
}

cJSON *fixture_json(const char *name) { return json_load_file(fixture_path(name)); }

const cJSON *fixture_item(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v) fail_msg("fixture lacks \"%s\"", k);
    return v;
}

char *test_slurp(const char *path, size_t *n) {
    char *s = file_read_all(path, n);
    if (!s) fail_msg("%s: cannot read", path);
    return s;
}

void test_write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) fail_msg("%s: cannot write", path);
}

void test_idefics3_tiled_dir(const char *dir) {
    const char *fixture = fixture_path("vlm_idefics3_dir");
    char src[1024], from[1400], to[1400];
    if (!realpath(fixture, src)) fail_msg("%s: cannot resolve: %s", fixture, strerror(errno));
    if (mkdir(dir, 0755) != 0) fail_msg("%s: cannot create: %s", dir, strerror(errno));
    DIR *d = opendir(src);
    if (!d) fail_msg("%s: cannot list: %s", src, strerror(errno));
    int n = 0;
    for (struct dirent *de; (de = readdir(d));) {
        if (de->d_name[0] == '.') continue;
        snprintf(from, sizeof from, "%s/%s", src, de->d_name);
        snprintf(to, sizeof to, "%s/%s", dir, de->d_name);
        if (symlink(from, to) != 0) fail_msg("%s: cannot link to %s: %s", to, from, strerror(errno));
        n++;
    }
    closedir(d);
    if (n == 0) fail_msg("%s: empty", src);
    snprintf(to, sizeof to, "%s/preprocessor_config.json", dir);
    if (access(to, F_OK) == 0) fail_msg("%s: the fixture has a preprocessor_config.json of its own", src);
    test_write_file(to, "{\"image_processor_type\": \"Idefics3ImageProcessor\", \"do_image_splitting\": true,\n"
                        " \"size\": {\"longest_edge\": 36}, \"max_image_size\": {\"longest_edge\": 12}}\n");
}

int test_spawn(char *const argv[], const char *out_log, const char *err_log) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        if (!freopen(out_log, "w", stdout) || !freopen(err_log, "w", stderr)) _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFSIGNALED(st) ? -WTERMSIG(st) : WEXITSTATUS(st);
}

int test_synth(const char *root, const char *synth_dir, int n_bench) {
    char o[1024], e[1024], nb[16];
    snprintf(o, sizeof o, "%s/synth.log", root);
    snprintf(e, sizeof e, "%s/synth.err", root);
    snprintf(nb, sizeof nb, "%d", n_bench);
    char *argv[] = {"./synth", (char *)synth_dir, "--train", "16", "--val", "4", "--heldout", "0", "--bench", nb,
                    "--quiet", NULL};
    if (test_spawn(argv, o, e) == 0) return 0;
    fprintf(stderr, "./synth failed, see %s\n", e);
    return -1;
}

void test_write_stage2_conf(const char *path, const char *synth_dir, const char *cache, const char *connector,
                            int max_seq_len, int max_steps, const char *extra) {
    FILE *f = fopen(path, "w");
    if (!f) fail_msg("%s: cannot write", path);
    fprintf(f,
            "stage = 2\nvision = %s/models/vision\nllm = %s/models/llm\nconnector = %s\ntemplate = chatml\n"
            "data = %s/data/stage2_train.json\nimage_folder = %s/data/images\ndata_cache = %s\n"
            "max_seq_len = %d\nbatch_size = 4\nglobal_batch = 4\nmax_steps = %d\nlr = 3e-3\nlora_r = 4\nlora_alpha = 8\n"
            "save_every = 0\nseed = 7\ndevice = cpu\nthreads = 2\n%s",
            synth_dir, synth_dir, connector, synth_dir, synth_dir, cache, max_seq_len, max_steps, extra ? extra : "");
    if (fclose(f) != 0) fail_msg("%s: cannot write", path);
}

int test_same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = test_slurp(a, &na), *y = test_slurp(b, &nb);
    int same = na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

void expect_same_run(const char *a, const char *b, int step) {
    char pa[900], pb[900], rel[64];
    const char *files[3] = {"trainable.safetensors", "optimizer.safetensors", "state.json"};
    for (int i = 0; i < 3; i++) {
        snprintf(rel, sizeof rel, "step_%08d/%s", step, files[i]);
        path_join(pa, sizeof pa, a, rel);
        path_join(pb, sizeof pb, b, rel);
        if (!test_same_file(pa, pb)) fail_msg("%s and %s differ", pa, pb);
    }
    path_join(pa, sizeof pa, a, "metrics.jsonl");
    path_join(pb, sizeof pb, b, "metrics.jsonl");
    if (!test_same_file(pa, pb)) fail_msg("%s and %s differ", pa, pb);
}

double test_step_seconds(const char *run_dir, double fallback) {
    char p[700];
    path_join(p, sizeof p, run_dir, "timing.jsonl");
    char *s = test_slurp(p, NULL);
    double first = -1, last = -1;
    int count = 0;
    for (char *q = s; (q = strstr(q, "\"elapsed_s\": ")); q++, count++) {
        last = atof(q + 13);
        if (first < 0) first = last;
    }
    free(s);
    return count > 1 ? (last - first) / (count - 1) : fallback;
}

// ---------------------------------------------------------------- data parallelism in one process

#include "trainer/grad_buckets.h"
#include "trainer/optimizer.h"

// the fake transport: rank 0 of 2 with equal gradients (the sum over ranks is the doubling)
static struct {
    const Kernels *k;
    int started;
    size_t covered;
} twin;

static void twin_reduce_start(Dist *d, float *buf, size_t begin, size_t end, size_t slice) {
    size_t a = begin, b = slice && end > slice ? slice : end;  // rank 0 receives its slice only
    if (a < b) twin.k->scale_f32(buf + a, 2.0f, b - a);
    twin.started++;
    twin.covered += end - begin;
}
static void twin_reduce_wait(Dist *d) {}
static const DistOps twin_ops = {.name = "twin", .reduce_start = twin_reduce_start, .reduce_wait = twin_reduce_wait};

void check_grad_buckets(const Kernels *k) {
    VlmFixture fx;
    vlm_fixture_open(&fx, "vlm_qwen2_ldp.safetensors");
    Vlm m;
    fixture_model_open(&m, k, "qwen2", CONNECTOR_LDP, "ldp_qwen2.safetensors", "qwen2_lora", fx.B, fx.T, fx.n_img, 0.0f);
    ParamSet *P = &m.train;
    int first[64], count[64];
    int ng = vlm_grad_groups(&m, first, count, 64);
    assert_int_equal(ng, m.llm.cfg.layers + 1);  // each layer's LoRA, top first, then the connector
    assert_int_equal(first[ng - 1], m.conn_first);
    for (int g = 1; g < ng - 1; g++) assert_true(first[g] < first[g - 1]);
    Dist d = {.rank = 0, .world = 2, .ops = &twin_ops};
    twin.k = k;
    size_t n = P->numel, span = P->span;
    float *want = xmalloc(span * sizeof(float)), *got = xmalloc(span * sizeof(float));
    const double sizes[3] = {1e-9, 1e3, 0};  // one group per bucket, one bucket, no buckets
    for (int zero = 0; zero <= 1; zero++) {
        size_t slice = zero ? span / 2 : 0, check = zero ? slice : n;  // what rank 0 receives
        // the reference: two micro-batches, then the sum over the ranks at once
        k->zero(P->grad, span * sizeof(float));
        vlm_forward_backward(&m, &fx.batch, 0.5f, NULL);
        vlm_forward_backward(&m, &fx.batch, 0.5f, NULL);
        k->scale_f32(P->grad, 2.0f, check);
        k->download(want, P->grad, check * sizeof(float));
        for (int s = 0; s < 3; s++) {
            GradBuckets gb;
            grad_buckets_init(&gb, &d, P, first, count, ng, sizes[s], slice);
            twin.started = 0;
            twin.covered = 0;
            // as run_step: no memset (the first writer of each gradient overwrites it), each
            // bucket settled as it starts, the rest before the last ones start
            k->grad_begin(P->grad, span);
            grad_buckets_begin(&gb);
            vlm_forward_backward(&m, &fx.batch, 0.5f, NULL);
            m.grads_ready = grad_buckets_hook(&gb);
            vlm_forward_backward(&m, &fx.batch, 0.5f, NULL);
            m.grads_ready = (GradsReady){0};
            int during = twin.started;
            k->grad_settle(P->grad, span);
            grad_buckets_finish(&gb);
            k->download(got, P->grad, check * sizeof(float));
            printf("    ZeRO-%d, buckets of %g MiB: %d bucket(s), %d started during the backward; %s\n", zero, sizes[s],
                   gb.n, during, memcmp(got, want, check * sizeof(float)) ? "DIFFERENT" : "bit-identical");
            assert_memory_equal(got, want, check * sizeof(float));
            assert_int_equal(twin.covered, zero ? span : n);  // every element once
            assert_int_equal(twin.started, gb.n);
            assert_int_equal(gb.n, s == 0 ? ng : 1);
            assert_int_equal(during, s == 0 ? ng : s == 1 ? 1 : 0);
            grad_buckets_free(&gb);
        }
    }
    free(want);
    free(got);
    vlm_free(&m);
    vlm_fixture_close(&fx);
}

// a few tensors of odd sizes (the slices cut through them), LoRA-like and a bias
static void declare_small(ParamSet *ps, const Kernels *k, int shards, int shard) {
    params_init(ps, k, 1);
    params_declare_group(ps, PARAM_GROUP_LORA);
    params_add(ps, 2, (int64_t[]){5, 7}, "a.weight");
    params_add(ps, 2, (int64_t[]){3, 11}, "b.weight");
    params_declare_group(ps, PARAM_GROUP_CONNECTOR);
    params_add(ps, 1, (int64_t[]){13}, "c.bias");
    params_add(ps, 2, (int64_t[]){4, 9}, "d.weight");
    if (shards > 1) params_shard_optimizer(ps, shards, shard);
    params_alloc(ps);
}

void check_sharded_masters(const Kernels *k) {
    enum { W = 2 };
    ParamSet one, r[W];
    declare_small(&one, k, 1, 0);
    for (int s = 0; s < W; s++) declare_small(&r[s], k, W, s);
    size_t n = one.numel, span = r[0].span, len = span / W;
    if (k->act_is_f32) {  // the masters are the compute weights: whole on every rank
        for (int s = 0; s < W; s++) assert_true(!params_masters_sharded(&r[s]) && r[s].master_len == span && r[s].master_begin == 0);
        params_free(&one);
        for (int s = 0; s < W; s++) params_free(&r[s]);
        return;
    }
    for (int s = 0; s < W; s++) {
        assert_true(params_masters_sharded(&r[s]));
        assert_int_equal(r[s].master_begin, len * s);
        assert_int_equal(r[s].master_len, len);
        // the grads whole; masters, m and v one slice; the compute copy whole (span long)
        assert_int_equal(params_bytes(&r[s]), (span + 3 * len) * sizeof(float) + span * k->act_bytes);
    }
    uint64_t seed = 99;
    float *h = xmalloc(span * sizeof(float)), *g = xcalloc(span, sizeof(float));
    for (int i = 0; i < one.n; i++) {
        test_fill_uniform(h, one.p[i].numel, -0.5f, 0.5f, &seed);
        params_upload(&one, i, h);
        for (int s = 0; s < W; s++) params_upload(&r[s], i, h);
    }
    TrainConfig c;
    memset(&c, 0, sizeof c);
    c.lr = 1e-2, c.connector_lr = 3e-3, c.min_lr = 0, c.adam_beta1 = 0.9, c.adam_beta2 = 0.999, c.adam_eps = 1e-8;
    c.weight_decay = 0.1;
    for (int t = 1; t <= 3; t++) {
        for (int i = 0; i < one.n; i++) test_fill_uniform(g + one.p[i].offset, one.p[i].numel, -1.0f, 1.0f, &seed);
        k->upload(one.grad, g, n * sizeof(float));
        optimizer_update_range(&one, &c, t - 1, 10, 2, t, 0, n);
        params_sync(&one);
        for (int s = 0; s < W; s++) {
            k->upload(r[s].grad, g, span * sizeof(float));
            size_t a = len * s, b = a + len < n ? a + len : n;
            optimizer_update_range(&r[s], &c, t - 1, 10, 2, t, a, b);
            params_sync(&r[s]);
        }
        for (int s = 0; s < W; s++)  // the all-gather of the compute copy's slices
            for (int o = 0; o < W; o++)
                if (o != s) k->copy(act_at(k, r[o].data, len * s), act_at(k, r[s].data, len * s), len * k->act_bytes);
    }
    float *want = xmalloc(span * sizeof(float)), *got = xmalloc(span * sizeof(float));
    k->download_act(want, one.data, n);
    for (int s = 0; s < W; s++) {
        k->download_act(got, r[s].data, n);
        assert_memory_equal(got, want, n * sizeof(float));
    }
    float *ws[3] = {one.master, one.m, one.v};
    for (int q = 0; q < 3; q++) {
        k->download(want, ws[q], n * sizeof(float));
        for (int s = 0; s < W; s++) {
            float *mine[3] = {r[s].master, r[s].m, r[s].v};
            size_t a = len * s, b = a + len < n ? a + len : n;
            k->download(got, mine[q], (b - a) * sizeof(float));
            assert_memory_equal(got, want + a, (b - a) * sizeof(float));
        }
    }
    printf("    ZeRO-1 with sharded masters (%zu of %zu per rank): 3 updates equal the unsharded set's, byte for byte\n", len, span);
    free(want);
    free(got);
    free(h);
    free(g);
    params_free(&one);
    for (int s = 0; s < W; s++) params_free(&r[s]);
}
