// test_dist.c: data-parallel ./train on the CPU through Open MPI (mpirun --oversubscribe), on the
// synthetic data and tiny models of ./synth: 1, 2 and 3 ranks with the same global batch agree;
// ZeRO-1 equals ZeRO-0 bit for bit, and gradient buckets started during the backward equal one
// sum after it; a rank killed at random instants stops the others with a
// line naming it and the run then resumes bit-identically; SIGTERM to every rank or to one makes
// one checkpoint and every rank exits 0; a world-2 checkpoint resumes on 3 ranks and on 1, each
// sample of the epoch seen once; ranks with different configs are refused with one line; ./train
// on the emulated CUDA kernels (build/emu/train_emu) runs ZeRO-1 with sharded fp32 masters.
// SVLM_TEST_DEVICE=cuda (make test-gpu): NCCL with one rank equals the run without Dist (no
// mpirun needed).
// Every process runs one OpenMP / OpenBLAS thread, so 1 rank and N ranks do the same arithmetic
// per micro-batch (the CPU backend's results depend on the thread count).
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/safetensors.h"
#include "common/util.h"
#include "tests/testlib.h"
#include "trainer/dist.h"

static char root[512];  // build/tmp/dist-PID
static char base_conf[600];

// runs argv (NULL-terminated, looked up in PATH) with stdout/stderr appended to log; returns the
// pid when nowait, else the exit status (-signal when killed)
static int spawn(char *const argv[], const char *log, int nowait) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        FILE *f = freopen(log, "a", stdout);
        if (!f || dup2(fileno(stdout), 2) < 0) _exit(126);
        execvp(argv[0], argv);
        _exit(127);
    }
    if (nowait) return pid;
    int st;
    waitpid(pid, &st, 0);
    return WIFSIGNALED(st) ? -WTERMSIG(st) : WEXITSTATUS(st);
}

static int status_of(int st) { return WIFSIGNALED(st) ? -WTERMSIG(st) : WEXITSTATUS(st); }

// argv of `mpirun ... -np N ./train base.conf out_dir=DIR extra...` (N = 0: ./train alone)
static void train_argv(char **argv, char *np, char *out, int n, const char *dir, const char *const *extra) {
    int a = 0;
    if (n > 0) {
        argv[a++] = "mpirun";
        argv[a++] = "--oversubscribe";
        argv[a++] = "--bind-to";
        argv[a++] = "none";
        argv[a++] = "-np";
        snprintf(np, 16, "%d", n);
        argv[a++] = np;
    }
    argv[a++] = "./train";
    argv[a++] = base_conf;
    snprintf(out, 700, "out_dir=%s", dir);
    argv[a++] = out;
    for (int i = 0; extra && extra[i]; i++) argv[a++] = (char *)extra[i];
    argv[a] = NULL;
}

// runs the training with n ranks (0: without mpirun) into dir; returns the exit status
static int train_n(int n, const char *dir, const char *log, const char *const *extra) {
    char *argv[32], np[16], out[700];
    train_argv(argv, np, out, n, dir, extra);
    return spawn(argv, log, 0);
}

static size_t file_size(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (size_t)sb.st_size : 0;
}

// the log's text from byte `from` on
static char *log_from(const char *log, size_t from) {
    size_t n;
    char *s = file_read_all(log, &n);
    if (!s) return xstrdup("");
    if (from > n) from = n;
    memmove(s, s + from, n - from + 1);
    return s;
}

static int count_in(const char *s, const char *needle) {
    int k = 0;
    for (const char *q = s; (q = strstr(q, needle)); q++) k++;
    return k;
}

// the pids of the ranks' startup lines ("rank R of W (...), ..., pid P, ...") after byte `from`
static int rank_pids(const char *log, size_t from, int *pids, int world) {
    char *s = log_from(log, from);
    int found = 0;
    for (int r = 0; r < world; r++) pids[r] = 0;
    for (char *q = s; (q = strstr(q, "rank ")); q++) {
        int rk, w, pid;
        char *p = strstr(q, ", pid ");
        char *nl = strchr(q, '\n');
        if (!p || (nl && p > nl)) continue;
        if (sscanf(q, "rank %d of %d", &rk, &w) == 2 && w == world && rk >= 0 && rk < world && sscanf(p, ", pid %d", &pid) == 1 &&
            !pids[rk]) {
            pids[rk] = pid;
            found++;
        }
    }
    free(s);
    return found;
}

static int pid_gone(int pid) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return 1;
    char p[64], buf[256];
    snprintf(p, sizeof p, "/proc/%d/stat", pid);
    FILE *f = fopen(p, "r");
    if (!f) return 1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *q = strrchr(buf, ')');
    return q && (q[2] == 'Z' || q[2] == 'X');
}

// Compares two metrics.jsonl files: the same text except numbers, which must agree within tol
// relative (each number with the other file's at the same place). Returns the largest
// relative difference seen, or fails.
static double compare_metrics(const char *a, const char *b, double tol) {
    size_t na, nb;
    char *x = test_slurp(a, &na), *y = test_slurp(b, &nb), *p = x, *q = y;
    double worst = 0;
    while (*p && *q) {
        int num_p = (*p >= '0' && *p <= '9') || (*p == '-' && p[1] >= '0' && p[1] <= '9');
        int num_q = (*q >= '0' && *q <= '9') || (*q == '-' && q[1] >= '0' && q[1] <= '9');
        if (num_p && num_q) {
            char *ep, *eq;
            double u = strtod(p, &ep), v = strtod(q, &eq);
            double d = fabs(u - v) / (fabs(v) > 1e-30 ? fabs(v) : 1.0);
            if (d > worst) worst = d;
            if (!(d <= tol)) fail_msg("%s and %s: %.9g vs %.9g (relative %.2e) at ...%.60s", a, b, u, v, d, p > x + 40 ? p - 40 : x);
            p = ep;
            q = eq;
            continue;
        }
        if (*p != *q) fail_msg("%s and %s differ in text at ...%.60s / ...%.60s", a, b, p, q);
        p++;
        q++;
    }
    if (*p || *q) fail_msg("%s and %s differ in length", a, b);
    free(x);
    free(y);
    return worst;
}

// How far the trainable weights of two checkpoints are apart: *max_rel gets rel_err over the whole
// set (largest element difference / largest weight); returns the 2-norm relative difference
// ||a - b|| / ||b||
static double compare_weights(const char *a, const char *b, double *max_rel) {
    StFile fa, fb;
    st_open_or_die(&fa, a);
    st_open_or_die(&fb, b);
    assert_int_equal(fa.n, fb.n);
    double num = 0, den = 0, dmax = 0, wmax = 0;
    for (int i = 0; i < fa.n; i++) {
        const StTensor *ta = &fa.tensors[i], *tb = st_find(&fb, ta->name);
        assert_non_null(tb);
        size_t n = (size_t)st_numel(ta);
        assert_int_equal(n, (size_t)st_numel(tb));
        float *xa = xmalloc(n * sizeof(float)), *xb = xmalloc(n * sizeof(float));
        st_read_f32(&fa, ta, xa);
        st_read_f32(&fb, tb, xb);
        for (size_t j = 0; j < n; j++) {
            double d = (double)xa[j] - xb[j];
            if (isnan(d)) fail_msg("%s: %s[%zu] is NaN", a, ta->name, j);
            num += d * d;
            den += (double)xb[j] * xb[j];
            if (fabs(d) > dmax) dmax = fabs(d);
            if (fabs(xb[j]) > wmax) wmax = fabs(xb[j]);
        }
        free(xa);
        free(xb);
    }
    st_close(&fa);
    st_close(&fb);
    *max_rel = wmax > 0 ? dmax / wmax : dmax;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

enum { STEPS = 10, PER_EPOCH = 5, GLOBAL = 12 };

static double ref_step_s = 0.2;  // seconds per step of the world-2 run

static const char *device = "cpu";

static int setup_common(void) {
    // the same arithmetic in every process (see the top); mpirun as root in CI containers
    setenv("OMP_NUM_THREADS", "1", 1);
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    make_temp_dir(root, sizeof root, "dist");
    char synth_dir[600], log[600];
    snprintf(synth_dir, sizeof synth_dir, "%s/synth", root);
    snprintf(log, sizeof log, "%s/synth.log", root);
    char *argv[] = {"./synth", synth_dir, "--train", "64", "--val", "16", "--heldout", "1", "--quiet", NULL};
    if (spawn(argv, log, 0) != 0) {
        fprintf(stderr, "./synth failed, see %s\n", log);
        return -1;
    }
    // global batch 12 = 2 x 6 x 1 = 2 x 3 x 2 = 2 x 2 x 3; 64 samples: 5 steps per epoch, 2 epochs
    snprintf(base_conf, sizeof base_conf, "%s/base.conf", root);
    FILE *f = fopen(base_conf, "w");
    fprintf(f,
            "stage = 2\nvision = %s/models/vision\nllm = %s/models/llm\nconnector = ldp\n"
            "data = %s/data/stage2_train.json\nimage_folder = %s/data/images\nval_data = %s/data/stage2_val.json\n"
            "data_cache = %s/cache\nmax_seq_len = 96\nbatch_size = 2\nglobal_batch = %d\nmax_steps = %d\n"
            "lr = 3e-3\nwarmup_ratio = 0.1\nlora_r = 4\nlora_alpha = 8\nlora_dropout = 0.05\nsave_every = 2\nkeep_last = 10\n"
            "eval_every = 5\nseed = 7\ndevice = %s\nthreads = 1\nlog_samples = true\ndist_timeout = 30\n",
            synth_dir, synth_dir, synth_dir, synth_dir, synth_dir, root, GLOBAL, STEPS, device);
    fclose(f);
    return 0;
}

static int have_mpirun(void) {
    char log[600];
    snprintf(log, sizeof log, "%s/which.log", root);
    char *which[] = {"sh", "-c", "command -v mpirun", NULL};
    return spawn(which, log, 0) == 0;
}

static int setup(void **state) {
    if (setup_common() != 0) return -1;
    if (!have_mpirun()) {
        fprintf(stderr, "mpirun not found: the data-parallel tests need Open MPI (openmpi-bin)\n");
        return -1;
    }
    char log[600];
    // the references: 1 rank (no launcher), 2 and 3 ranks (ZeRO-1, the default there)
    for (int n = 1; n <= 3; n++) {
        char dir[600];
        snprintf(dir, sizeof dir, "%s/ref%d", root, n);
        snprintf(log, sizeof log, "%s/ref%d.log", root, n);
        double t0 = time_now();
        if (train_n(n == 1 ? 0 : n, dir, log, NULL) != 0) {
            fprintf(stderr, "reference run with %d rank(s) failed, see %s\n", n, log);
            return -1;
        }
        printf("    reference run, %d rank(s): %.1f s\n", n, time_now() - t0);
        if (n == 2) ref_step_s = test_step_seconds(dir, 0.2);
    }
    return 0;
}

// 1. two and three ranks equal one with the same global batch
static void test_world_sizes_agree(void **state) {
    char a[700], b[700];
    for (int n = 2; n <= 3; n++) {
        char dir[600];
        snprintf(dir, sizeof dir, "%s/ref%d", root, n);
        path_join(a, sizeof a, dir, "metrics.jsonl");
        path_join(b, sizeof b, root, "ref1/metrics.jsonl");
        double em = compare_metrics(a, b, 1e-6);
        path_join(a, sizeof a, dir, "step_00000010/trainable.safetensors");
        path_join(b, sizeof b, root, "ref1/step_00000010/trainable.safetensors");
        double emax, ew = compare_weights(a, b, &emax);
        printf("    %d ranks vs 1: metrics (losses, norms, sample ids) within %.2e; final weights within %.2e (2-norm), "
               "%.2e (largest element difference / largest weight); %s\n", n, em, ew, emax,
               test_same_file(a, b) ? "bit-identical" : "not bit-identical");
        assert_true(ew <= 1e-6);
    }
}

// 2. ZeRO-1 (the references with 2 and 3 ranks) equals ZeRO-0, byte for byte
static void test_zero1_equals_zero0(void **state) {
    for (int n = 2; n <= 3; n++) {
        char dir[600], log[600], ref[600];
        snprintf(dir, sizeof dir, "%s/zero0_%d", root, n);
        snprintf(log, sizeof log, "%s/zero0_%d.log", root, n);
        snprintf(ref, sizeof ref, "%s/ref%d", root, n);
        const char *extra[] = {"zero_stage=0", NULL};
        assert_int_equal(train_n(n, dir, log, extra), 0);
        expect_same_run(ref, dir, STEPS);
        char r0[700];
        path_join(r0, sizeof r0, root, "ref2.log");
        size_t z;
        char *s0 = test_slurp(r0, &z);
        assert_non_null(strstr(s0, "AdamW m and v for 1/2 of them (ZeRO-1, this rank's share)"));
        // the plan of the sharded state is what setup then holds, to the byte
        // (mpirun forwards stdout and stderr separately: a warning may share the line)
        const char *q = s0;
        while ((q = strstr(q, "memory: ")) && !(q[8] >= '0' && q[8] <= '9')) q++;
        assert_non_null(q);
        unsigned long long held = strtoull(q + 8, NULL, 10), plan = strtoull(strstr(q, "the plan: ") + 10, NULL, 10);
        assert_true(held > 0);
        assert_int_equal(held, plan);
        free(s0);
        printf("    %d ranks: ZeRO-1 and ZeRO-0 checkpoints and metrics identical\n", n);
    }
    // one rank under mpirun with ZeRO-1's collectives equals the run without any launcher
    char dir[600], log[600], ref[600];
    snprintf(dir, sizeof dir, "%s/mpi1", root);
    snprintf(log, sizeof log, "%s/mpi1.log", root);
    snprintf(ref, sizeof ref, "%s/ref1", root);
    const char *extra[] = {"zero_stage=1", NULL};
    assert_int_equal(train_n(1, dir, log, extra), 0);
    char *s = log_from(log, 0);
    assert_non_null(strstr(s, "rank 0 of 1 (Open MPI), node "));
    free(s);
    expect_same_run(ref, dir, STEPS);
    printf("    1 rank under mpirun, ZeRO-1: identical to the run without a launcher\n");
}

// The gradient sum in buckets started during the backward (one per layer and the connector
// here) equals one sum at its end, byte for byte, for ZeRO-1 and ZeRO-0 (the references use the
// default 25 MiB: one bucket, started when the connector's gradients are final)
static void test_buckets_equal_one_reduction(void **state) {
    // (one sum after the backward: test_emulated_cuda_zero1)
    const char *runs[2][3] = {{"buckets_layer", "grad_bucket_mb=1e-6", NULL},
                              {"buckets_layer_zero0", "grad_bucket_mb=1e-6", "zero_stage=0"}};
    for (int i = 0; i < 2; i++) {
        char dir[600], log[600], ref[600];
        snprintf(dir, sizeof dir, "%s/%s", root, runs[i][0]);
        snprintf(log, sizeof log, "%s/%s.log", root, runs[i][0]);
        snprintf(ref, sizeof ref, "%s/ref3", root);  // ZeRO-1 and ZeRO-0 agree byte for byte (above)
        const char *extra[] = {runs[i][1], runs[i][2], NULL};
        assert_int_equal(train_n(3, dir, log, extra), 0);
        char *s = log_from(log, 0), *q = strstr(s, "gradient reduction: ");
        assert_non_null(q);
        int nb = atoi(q + 20);
        assert_true(nb >= 3 && strstr(q, "started as the backward finishes them"));
        free(s);
        expect_same_run(ref, dir, STEPS);
        printf("    3 ranks, ZeRO-%d, %d buckets started layer by layer during the backward: identical to one bucket "
               "started at its end\n", 1 - i, nb);
    }
}

// ZeRO-1 on the CUDA code path, through ./train on the emulated kernels (build/emu/train_emu;
// the emulator's device memory is host memory, so MPI carries its collectives): the fp32 masters
// are sharded there (the compute copy is bf16), the updated slices all-gathered into the copy.
// Two ranks with sharded masters and one bucket per layer equal ZeRO-0 with whole masters and one
// sum after the backward, byte for byte; the memory plan prints and holds the sharded share; a
// checkpoint (gathered to rank 0) resumed on two ranks continues byte for byte.
static void test_emulated_cuda_zero1(void **state) {
    const char *emu = getenv("SVLM_TEST_TRAIN_EMU") ? getenv("SVLM_TEST_TRAIN_EMU") : "build/emu/train_emu";
    if (!file_exists(emu)) fail_msg("%s is missing: make build/emu/train_emu (make test builds it)", emu);
    const char *run[3] = {"emu_zero1", "emu_zero0", "emu_resumed"};
    char *dir[3], log[600], resume[700];
    for (int i = 0; i < 3; i++) {
        dir[i] = xmalloc(600);
        snprintf(dir[i], 600, "%s/%s", root, run[i]);
    }
    snprintf(log, sizeof log, "%s/emu.log", root);
    snprintf(resume, sizeof resume, "resume=%s/step_00000001", dir[2]);
    const char *extra[3][8] = {{"zero_stage=1", "grad_bucket_mb=1e-6", NULL},
                               {"zero_stage=0", "grad_bucket_mb=0", NULL},
                               {"zero_stage=1", resume, NULL}};
    for (int i = 0; i < 3; i++) {
        if (i == 2) {
            char *cp[] = {"cp", "-r", dir[0], dir[2], NULL};
            assert_int_equal(spawn(cp, log, 0), 0);
        }
        char *argv[32], np[16], out[700];
        train_argv(argv, np, out, 2, dir[i], NULL);
        int a = 0;
        while (argv[a]) a++;
        const char *common[] = {"device=cuda", "max_steps=2", "batch_size=1", "global_batch=2",
                                "save_every=1", "val_data=", NULL};
        for (int j = 0; common[j]; j++) argv[a++] = (char *)common[j];
        for (int j = 0; extra[i][j]; j++) argv[a++] = (char *)extra[i][j];
        argv[a] = NULL;
        argv[6] = (char *)emu;  // in place of ./train
        size_t from = file_size(log);
        double t0 = time_now();
        assert_int_equal(spawn(argv, log, 0), 0);
        char *s = log_from(log, from);
        if (i == 0) {
            assert_non_null(strstr(s, "gradients and compute copy, fp32 weights and AdamW m and v for 1/2 of them (ZeRO-1, "
                                      "this rank's share)"));
            const char *q = s;
            while ((q = strstr(q, "memory: ")) && !(q[8] >= '0' && q[8] <= '9')) q++;
            assert_non_null(q);
            assert_int_equal(strtoull(q + 8, NULL, 10), strtoull(strstr(q, "the plan: ") + 10, NULL, 10));
        }
        if (i == 2) assert_non_null(strstr(s, "resume: "));
        free(s);
        printf("    emulated CUDA, 2 ranks, %s: %.1f s\n", run[i], time_now() - t0);
    }
    expect_same_run(dir[0], dir[1], 2);
    expect_same_run(dir[0], dir[2], 2);
    printf("    sharded fp32 masters (ZeRO-1, buckets per layer) equal ZeRO-0 byte for byte; resumed from a gathered "
           "checkpoint, byte for byte\n");
    for (int i = 0; i < 3; i++) free(dir[i]);
}

// waits until the log holds `more` progress lines after byte `from`, or mpirun exits (returns 1)
static int wait_progress(pid_t pid, const char *log, size_t from, int more, int *st) {
    for (int i = 0; i < 12000; i++) {
        if (waitpid(pid, st, WNOHANG) == pid) return 1;
        char *s = log_from(log, from);
        int k = count_in(s, "| loss ");
        free(s);
        if (k >= more) return 0;
        usleep(10000);
    }
    fail_msg("no progress in %s", log);
    return 0;
}

// 3. SIGKILL of one rank: the others stop naming it, nothing is left behind, and the same
// command resumes to the uninterrupted run's result
static void test_sigkill_one_rank(void **state) {
    enum { W = 3, MAX_KILLS = 12, KSTEPS = 40 };
    char dir[600], log[600], ref[600];
    snprintf(dir, sizeof dir, "%s/killed", root);
    snprintf(log, sizeof log, "%s/killed.log", root);
    snprintf(ref, sizeof ref, "%s/killed_ref", root);
    // four times the steps of the other tests (8 epochs), so that a dozen kills fall before the end
    const char *extra[] = {"max_steps=40", NULL};
    assert_int_equal(train_n(W, ref, log, extra), 0);
    ref_step_s = test_step_seconds(ref, 0.2);
    char *argv[32], np[16], out[700];
    train_argv(argv, np, out, W, dir, extra);
    uint64_t rs = (uint64_t)time(NULL) | 1;
    int kills = 0, done = 0, named = 0, named_by_all = 0;
    double worst = 0;
    useconds_t step_us = (useconds_t)(ref_step_s * 1e6) + 1;
    for (int attempt = 0; attempt <= 3 * MAX_KILLS && !done; attempt++) {
        size_t from = file_size(log);
        int st, pids[W];
        pid_t pid = spawn(argv, log, 1);
        if (kills >= MAX_KILLS) {
            waitpid(pid, &st, 0);
        } else if (wait_progress(pid, log, from, (int)(test_rand_u64(&rs) % 3), &st) == 0) {
            // a random instant: after 0-2 steps of this attempt (0: in start-up, once every rank
            // has said who it is: MPI, model, data, resume), then up to one step's time more
            for (int i = 0; i < 3000 && rank_pids(log, from, pids, W) < W && waitpid(pid, &st, WNOHANG) != pid; i++)
                usleep(10000);
            assert_int_equal(rank_pids(log, from, pids, W), W);
            usleep((useconds_t)(test_rand_u64(&rs) % step_us));
            int victim = (int)(test_rand_u64(&rs) % W);
            double t0 = time_now();
            kill(pids[victim], SIGKILL);
            waitpid(pid, &st, 0);
            double took = time_now() - t0;
            if (took > worst) worst = took;
            if (status_of(st) == 0) {  // it had finished already
                done = 1;
                break;
            }
            kills++;
            assert_true(took < 30 + 10);  // dist_timeout 30 s, and mpirun's own clean-up
            // the survivors named the lost rank (or mpirun stopped them first, naming it too)
            char *s = log_from(log, from), needle[96], needle2[96];
            snprintf(needle, sizeof needle, "dist: rank %d (pid %d on ", victim, pids[victim]);
            snprintf(needle2, sizeof needle2, "process rank %d with PID", victim);
            // each survivor that stopped by itself printed the line (mpirun may kill a slower one first)
            int lines = count_in(s, needle);
            if (lines != count_in(s, "is gone; rank ")) fail_msg("after kill %d a survivor named another rank than %d:\n%s", kills, victim, s);
            if (lines) named++;
            if (lines == W - 1) named_by_all++;
            if (!lines && !strstr(s, needle2)) fail_msg("the log after kill %d names no lost rank %d:\n%s", kills, victim, s);
            free(s);
            for (int r = 0; r < W; r++) {  // no rank left behind
                for (int i = 0; i < 200 && !pid_gone(pids[r]); i++) usleep(10000);
                if (!pid_gone(pids[r])) fail_msg("rank %d (pid %d) still runs after mpirun returned", r, pids[r]);
            }
            continue;
        }
        assert_int_equal(status_of(st), 0);
        done = 1;
    }
    assert_true(done);
    char *text = log_from(log, 0);
    int resumes = count_in(text, "\nresume: /");
    free(text);
    printf("    %d SIGKILLs of one of %d ranks at random instants: every run stopped within %.1f s; the lost rank named by "
           "a survivor's own line after %d kills, by both survivors after %d; %d restarts resumed\n", kills, W, worst, named,
           named_by_all, resumes);
    assert_true(kills >= 10);
    assert_true(named >= kills / 2);
    assert_true(resumes >= 2);
    expect_same_run(ref, dir, KSTEPS);
}

// 4. SIGTERM to every rank, and to one rank only: one checkpoint, all exit 0, the resume is exact
static void test_sigterm(void **state) {
    enum { W = 2 };
    char ref[600];
    snprintf(ref, sizeof ref, "%s/ref%d", root, W);
    for (int all = 1; all >= 0; all--) {
        char dir[600], log[600];
        snprintf(dir, sizeof dir, "%s/term_%s", root, all ? "all" : "one");
        snprintf(log, sizeof log, "%s/term_%s.log", root, all ? "all" : "one");
        char *argv[32], np[16], out[700];
        const char *extra[] = {"save_every=100", NULL};  // only the stop saves mid-run
        train_argv(argv, np, out, W, dir, extra);
        int terms = 0, done = 0;
        for (int attempt = 0; attempt < 10 && !done; attempt++) {
            size_t from = file_size(log);
            int st, pids[W];
            pid_t pid = spawn(argv, log, 1);
            if (wait_progress(pid, log, from, 1, &st) == 0) {
                assert_int_equal(rank_pids(log, from, pids, W), W);
                if (all)
                    for (int r = 0; r < W; r++) kill(pids[r], SIGTERM);
                else
                    kill(pids[1 + attempt % (W - 1)], SIGTERM);  // never rank 0: the others must agree with it
                waitpid(pid, &st, 0);
                terms++;
                char *s = log_from(log, from);
                assert_int_equal(count_in(s, ": checkpoint step_"), 1);  // one checkpoint, announced once
                free(s);
            }
            assert_int_equal(status_of(st), 0);  // preemption is a clean exit for every rank
            char p[700];
            path_join(p, sizeof p, dir, "step_00000010/state.json");
            done = file_exists(p);
        }
        assert_true(done);
        printf("    SIGTERM to %s: %d stops, each one checkpoint and exit 0; the resumed run equals the uninterrupted one\n",
               all ? "every rank" : "rank 1 only", terms);
        assert_true(terms >= 2);
        expect_same_run(ref, dir, STEPS);
    }
}

// every sample id of each epoch exactly once, in the step records of metrics.jsonl
static void expect_each_sample_once(const char *metrics) {
    size_t n;
    char *s = test_slurp(metrics, &n);
    int seen[2][512] = {{0}}, count[2] = {0};
    for (char *q = s; (q = strstr(q, "\"epoch\": ")); q++) {
        int e = atoi(q + 9);
        char *l = strstr(q, "\"samples\": [");
        assert_non_null(l);
        assert_true(e >= 0 && e < 2);
        for (char *p = l + 12; *p != ']';) {
            long id = strtol(p, &p, 10);
            assert_true(id >= 0 && id < 512);
            seen[e][id]++;
            count[e]++;
            if (*p == ',') p++;
        }
    }
    free(s);
    for (int e = 0; e < 2; e++) {
        assert_int_equal(count[e], PER_EPOCH * GLOBAL);
        for (int i = 0; i < 512; i++) assert_true(seen[e][i] <= 1);
    }
}

// 5. the world-2 checkpoint of step 2 resumed on 3 ranks and on 1
static void test_resume_on_other_world(void **state) {
    for (int n = 3; n >= 1; n -= 2) {
        char dir[600], log[600], p[700], q[700], arg[700];
        snprintf(dir, sizeof dir, "%s/from2to%d", root, n);
        snprintf(log, sizeof log, "%s/from2to%d.log", root, n);
        char src[600];
        snprintf(src, sizeof src, "%s/ref2", root);
        char *cp[] = {"cp", "-r", src, dir, NULL};
        assert_int_equal(spawn(cp, log, 0), 0);
        snprintf(arg, sizeof arg, "resume=%s/step_00000002", dir);
        const char *extra[] = {arg, NULL};
        assert_int_equal(train_n(n == 1 ? 0 : n, dir, log, extra), 0);
        char *s = log_from(log, 0);
        assert_non_null(strstr(s, "resume: saved by 2 process(es), continued by "));
        free(s);
        path_join(p, sizeof p, dir, "metrics.jsonl");
        expect_each_sample_once(p);
        path_join(q, sizeof q, root, "ref1/metrics.jsonl");
        double em = compare_metrics(p, q, 1e-6);
        path_join(p, sizeof p, dir, "step_00000010/trainable.safetensors");
        path_join(q, sizeof q, root, "ref1/step_00000010/trainable.safetensors");
        double emax, ew = compare_weights(p, q, &emax);
        printf("    2 ranks to step 2, then %d: every sample of each epoch once; metrics within %.2e, weights within %.2e "
               "(2-norm; %.2e largest element) of the 1-rank run\n", n, em, ew, emax);
        assert_true(ew <= 1e-6);
    }
}

// 6. ranks started with different configurations are refused with one line
static void test_mismatched_configs(void **state) {
    char dir[600], log[600], out[700];
    snprintf(dir, sizeof dir, "%s/mismatch", root);
    snprintf(log, sizeof log, "%s/mismatch.log", root);
    snprintf(out, sizeof out, "out_dir=%s", dir);
    char *argv[] = {"mpirun", "--oversubscribe", "--bind-to", "none", "-np", "1", "./train", base_conf, out, ":",
                    "-np", "1", "./train", base_conf, out, "lr=1e-3", NULL};
    int rc = spawn(argv, log, 0);
    assert_true(rc != 0);
    char *s = log_from(log, 0);
    assert_int_equal(count_in(s, "svlm: error"), 1);
    assert_non_null(strstr(s, "svlm: error: ranks were started with different configurations: rank 1 has `lr = 0.001` where "
                              "rank 0 has `lr = 0.0030000000000000001`"));
    assert_null(strstr(s, "| loss "));
    free(s);
    char p[700];
    path_join(p, sizeof p, dir, "metrics.jsonl");
    assert_false(file_exists(p));
    // and another build of ./train on one rank (here: the same program with one byte appended)
    char other[600], log2[600];
    snprintf(other, sizeof other, "%s/train_other", root);
    snprintf(log2, sizeof log2, "%s/mismatch_program.log", root);
    char *cp[] = {"cp", "./train", other, NULL};
    assert_int_equal(spawn(cp, log2, 0), 0);
    FILE *f = fopen(other, "ab");
    assert_non_null(f);
    fputc(0, f);
    fclose(f);
    char *argv2[] = {"mpirun", "--oversubscribe", "--bind-to", "none", "-np", "1", "./train", base_conf, out, ":",
                     "-np", "1", other, base_conf, out, NULL};
    assert_true(spawn(argv2, log2, 0) != 0);
    s = log_from(log2, 0);
    assert_int_equal(count_in(s, "svlm: error"), 1);
    assert_non_null(strstr(s, "svlm: error: ranks were started with different programs (./train builds): rank 1 has `program: "));
    free(s);
}

// a rank that stops answering without dying (SIGSTOP) stops the others after dist_timeout,
// named; nothing is left behind
static void test_stalled_rank(void **state) {
    enum { W = 2 };
    char dir[600], log[600];
    snprintf(dir, sizeof dir, "%s/stalled", root);
    snprintf(log, sizeof log, "%s/stalled.log", root);
    char *argv[32], np[16], out[700];
    const char *extra[] = {"dist_timeout=3", "max_steps=40", NULL};
    train_argv(argv, np, out, W, dir, extra);
    int st, pids[W];
    pid_t pid = spawn(argv, log, 1);
    assert_int_equal(wait_progress(pid, log, 0, 1, &st), 0);
    assert_int_equal(rank_pids(log, 0, pids, W), W);
    double t0 = time_now();
    kill(pids[1], SIGSTOP);
    waitpid(pid, &st, 0);
    double took = time_now() - t0;
    for (int r = 0; r < W; r++) {
        for (int i = 0; i < 200 && !pid_gone(pids[r]); i++) usleep(10000);
        if (!pid_gone(pids[r])) {
            kill(pids[r], SIGKILL);
            fail_msg("rank %d (pid %d) still ran after mpirun returned", r, pids[r]);
        }
    }
    assert_true(status_of(st) != 0);
    char needle[128];
    snprintf(needle, sizeof needle, "(dist_timeout): rank 1 (pid %d) is stopped; stopping", pids[1]);
    char *s = log_from(log, 0);
    if (!strstr(s, needle)) fail_msg("the log lacks \"%s\":\n%s", needle, s);
    free(s);
    printf("    rank 1 stopped (SIGSTOP): rank 0 named it and mpirun returned after %.1f s (dist_timeout 3 s)\n", took);
    assert_true(took >= 3 && took < 3 + 10);
}

static void set_env(const char *const *kv) {
    const char *all[] = {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_PROCID",
                         "SLURM_NTASKS", "SLURM_LOCALID", "RANK", "WORLD_SIZE", "LOCAL_RANK", NULL};
    for (int i = 0; all[i]; i++) unsetenv(all[i]);
    for (int i = 0; kv[i]; i += 2) setenv(kv[i], kv[i + 1], 1);
}

static void detect_child(void *arg) { dist_detect(); }

// the launchers' environments, and what is refused
static void test_launcher_env(void **state) {
    const char *none[] = {NULL};
    set_env(none);
    DistLaunch l = dist_detect();
    assert_int_equal(l.world, 1);
    assert_string_equal(l.launcher, "none");
    const char *ompi[] = {"OMPI_COMM_WORLD_RANK", "5", "OMPI_COMM_WORLD_SIZE", "16", "OMPI_COMM_WORLD_LOCAL_RANK", "1",
                          "SLURM_PROCID", "0", "SLURM_NTASKS", "4", NULL};
    set_env(ompi);  // mpirun inside a Slurm allocation: Open MPI's own variables win
    l = dist_detect();
    assert_true(l.rank == 5 && l.world == 16 && l.local_rank == 1);
    assert_string_equal(l.launcher, "Open MPI");
    const char *slurm[] = {"SLURM_PROCID", "11", "SLURM_NTASKS", "16", "SLURM_LOCALID", "3", NULL};
    set_env(slurm);
    l = dist_detect();
    assert_true(l.rank == 11 && l.world == 16 && l.local_rank == 3);
    assert_string_equal(l.launcher, "Slurm");
    const char *batch[] = {"SLURM_NTASKS", "16", NULL};  // a batch script's own shell: not a task
    set_env(batch);
    assert_int_equal(dist_detect().world, 1);
    const char *torch[] = {"RANK", "2", "WORLD_SIZE", "4", "LOCAL_RANK", "2", NULL};
    set_env(torch);
    l = dist_detect();
    assert_true(l.rank == 2 && l.world == 4 && l.local_rank == 2);
    assert_string_equal(l.launcher, "torchrun-style (RANK/WORLD_SIZE)");
    const char *bad[] = {"RANK", "4", "WORLD_SIZE", "4", NULL};
    set_env(bad);
    expect_fatal(detect_child, NULL, "RANK = 4 is not below WORLD_SIZE = 4");
    const char *junk[] = {"SLURM_PROCID", "x1", "SLURM_NTASKS", "2", NULL};
    set_env(junk);
    expect_fatal(detect_child, NULL, "SLURM_PROCID = \"x1\" is not a valid number");
    set_env(none);
}

// 7, on a GPU (make test-gpu): NCCL with one rank equals the run without any launcher, byte for
// byte: launched torchrun-style (RANK/WORLD_SIZE/LOCAL_RANK; NCCL's id through dist_init_dir and
// the host calls through NCCL: no MPI needed, as on the lent GPU machines) with ZeRO-1 and
// ZeRO-0 and gradient buckets of one layer each on the second stream, and under mpirun -np 1
// where there is one
static void test_nccl_world1(void **state) {
    char solo[600], log[600], init[700];
    snprintf(solo, sizeof solo, "%s/gpu_solo", root);
    snprintf(log, sizeof log, "%s/gpu.log", root);
    snprintf(init, sizeof init, "dist_init_dir=%s/init", root);
    assert_int_equal(train_n(0, solo, log, NULL), 0);
    for (int zero = 1; zero >= 0; zero--) {
        char dir[600], z[32];
        snprintf(dir, sizeof dir, "%s/gpu_nccl_zero%d", root, zero);
        snprintf(z, sizeof z, "zero_stage=%d", zero);
        const char *extra[] = {z, "grad_bucket_mb=1e-6", init, NULL};
        size_t from = file_size(log);
        setenv("RANK", "0", 1);
        setenv("WORLD_SIZE", "1", 1);
        setenv("LOCAL_RANK", "0", 1);
        int rc = train_n(0, dir, log, extra);
        unsetenv("RANK");
        unsetenv("WORLD_SIZE");
        unsetenv("LOCAL_RANK");
        assert_int_equal(rc, 0);
        char *s = log_from(log, from);
        assert_non_null(strstr(s, "rank 0 of 1 (torchrun-style"));
        free(s);
        expect_same_run(solo, dir, STEPS);
        printf("    NCCL world 1 (torchrun-style launch), ZeRO-%d, one bucket per layer: equals the run without Dist, byte for byte\n", zero);
    }
    if (!have_mpirun()) {
        printf("    no mpirun here: the NCCL run under mpirun -np 1 is left out\n");
        return;
    }
    char nccl[600];
    snprintf(nccl, sizeof nccl, "%s/gpu_nccl", root);
    const char *extra[] = {"zero_stage=1", NULL};
    size_t from = file_size(log);
    assert_int_equal(train_n(1, nccl, log, extra), 0);
    char *s = log_from(log, from);
    assert_non_null(strstr(s, "rank 0 of 1 (Open MPI)"));
    free(s);
    expect_same_run(solo, nccl, STEPS);
    printf("    NCCL world 1 under mpirun (ZeRO-1 collectives) equals the run without Dist, byte for byte\n");
}

static int setup_gpu(void **state) { return setup_common(); }

int main(int argc, char **argv) {
    const char *d = getenv("SVLM_TEST_DEVICE");
    if (d && *d) device = d;
    if (strcmp(device, "cpu")) {
        const struct CMUnitTest gpu_tests[] = {cmocka_unit_test(test_nccl_world1)};
        return _cmocka_run_group_tests("gpu_tests", gpu_tests, 1, setup_gpu, NULL);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_world_sizes_agree),
        cmocka_unit_test(test_zero1_equals_zero0),
        cmocka_unit_test(test_buckets_equal_one_reduction),
        cmocka_unit_test(test_emulated_cuda_zero1),
        cmocka_unit_test(test_mismatched_configs),
        cmocka_unit_test(test_sigterm),
        cmocka_unit_test(test_resume_on_other_world),
        cmocka_unit_test(test_sigkill_one_rank),
        cmocka_unit_test(test_stalled_rank),
        cmocka_unit_test(test_launcher_env),
    };
    struct CMUnitTest chosen[sizeof tests / sizeof tests[0]];
    size_t n = test_select(chosen, tests, sizeof tests / sizeof tests[0], argc > 1 ? argv[1] : NULL);
    return _cmocka_run_group_tests("tests", chosen, n, setup, NULL);
}
