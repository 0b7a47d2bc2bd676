// dist.c: the one-process transport, the watchdog that turns a lost
// rank into a clean stop, the NCCL id hand-over, and the checks that ranks agree (see dist.h;
// the launcher's environment is read in dist_launch.c).
#include "trainer/dist.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"

// ---------------------------------------------------------------- one process

static void solo_nop_f32(Dist *d, float *buf, size_t n) {}
static void solo_broadcast(Dist *d, void *buf, size_t bytes, int root) {}
static void solo_reduce_start(Dist *d, float *buf, size_t begin, size_t end, size_t slice) {}
static void solo_reduce_wait(Dist *d) {}
static void solo_allgather_bytes(Dist *d, void *buf, size_t bytes) {}
static void solo_allgather_host(Dist *d, const void *mine, void *all, size_t bytes) {
    if (all != mine) memmove(all, mine, bytes);
}
static void solo_barrier(Dist *d) {}
static void solo_close(Dist *d) {}
static const DistOps solo_ops = {
    .name = "solo",
    .allreduce_sum_f32 = solo_nop_f32,
    .reduce_scatter_sum_f32 = solo_nop_f32,
    .allgather_f32 = solo_nop_f32,
    .broadcast = solo_broadcast,
    .reduce_start = solo_reduce_start,
    .reduce_wait = solo_reduce_wait,
    .allgather_bytes = solo_allgather_bytes,
    .allgather_host = solo_allgather_host,
    .broadcast_host = solo_broadcast,
    .barrier = solo_barrier,
    .close = solo_close,
};

// ---------------------------------------------------------------- the watchdog

typedef struct {
    pthread_t thread;
    atomic_int busy, timed, stop;
    _Atomic double since;
    const char *_Atomic op;
} Watch;

// the state letter of /proc/PID/stat ('R', 'S', 'T' stopped, 'Z' zombie...), 'X' when the
// process is gone, '?' when /proc cannot tell
static char pid_state(int pid) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return 'X';
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *q = strrchr(buf, ')');  // "pid (comm) S ..."
    return q && q[1] == ' ' ? q[2] : '?';
}

// a lost rank: gone, or a zombie nobody has reaped yet
static int pid_gone(int pid) {
    char c = pid_state(pid);
    return c == 'X' || c == 'Z';
}

// at the timeout: which ranks could be to blame ("rank 1 (stopped) on node a; ranks 8-15 on
// other nodes")
static void suspects(const Dist *d, char *out, size_t cap) {
    size_t o = 0;
    int remote = 0;
    out[0] = 0;
    for (int r = 0; r < d->world && o < cap; r++) {
        if (r == d->rank) continue;
        if (strcmp(d->peers[r].node, d->node)) {
            remote++;
            continue;
        }
        char c = pid_state(d->peers[r].pid);
        if (c == 'T' || c == 't') o += snprintf(out + o, cap - o, "%srank %d (pid %d) is stopped", o ? ", " : "", r, d->peers[r].pid);
    }
    if (o < cap && remote) snprintf(out + o, cap - o, "%s%d rank(s) on other nodes cannot be checked from here", o ? "; " : "", remote);
    if (!out[0]) snprintf(out, cap, "every rank on this node is running");
}

static void *watch_main(void *arg) {
    Dist *d = arg;
    Watch *w = d->watch;
    while (!atomic_load(&w->stop)) {
        usleep(50000);
        if (!atomic_load(&w->busy)) continue;
        for (int r = 0; r < d->world; r++) {
            if (r == d->rank || strcmp(d->peers[r].node, d->node)) continue;
            if (pid_gone(d->peers[r].pid)) {
                fprintf(stderr, "svlm: error: dist: rank %d (pid %d on %s) is gone; rank %d stops (it was in %s)\n", r,
                        d->peers[r].pid, d->peers[r].node, d->rank, atomic_load(&w->op));
                fflush(stderr);
                // Stay a moment before exiting: the other ranks waiting in this collective look
                // every 50 ms, and should find the rank that was lost gone, not this one.
                if (d->world > 2) usleep(1000000);
                _exit(1);
            }
        }
        double waited = time_now() - atomic_load(&w->since);
        if (atomic_load(&w->timed) && waited > d->timeout_s) {
            char who[512];
            suspects(d, who, sizeof who);
            fprintf(stderr, "svlm: error: dist: rank %d got no answer in %s for %.0f s (dist_timeout): %s; stopping\n", d->rank,
                    atomic_load(&w->op), waited, who);
            _exit(1);
        }
    }
    return NULL;
}

void dist_reduce_wait(Dist *d);

static void enter(Dist *d, const char *op, int timed) {
    // collectives follow each other in one order on every rank: started reductions end first
    if (d->reducing) dist_reduce_wait(d);
    Watch *w = d->watch;
    if (!w) return;
    atomic_store(&w->op, op);
    atomic_store(&w->since, time_now());
    atomic_store(&w->timed, timed);
    atomic_store(&w->busy, 1);
}

static void leave(Dist *d) {
    Watch *w = d->watch;
    if (w) atomic_store(&w->busy, 0);
}

void dist_allreduce_sum_f32(Dist *d, float *buf, size_t n) {
    enter(d, "all-reduce", 1);
    d->ops->allreduce_sum_f32(d, buf, n);
    leave(d);
}
void dist_reduce_scatter_sum_f32(Dist *d, float *buf, size_t count) {
    enter(d, "reduce-scatter", 1);
    d->ops->reduce_scatter_sum_f32(d, buf, count);
    leave(d);
}
void dist_allgather_f32(Dist *d, float *buf, size_t count) {
    enter(d, "all-gather", 1);
    d->ops->allgather_f32(d, buf, count);
    leave(d);
}
void dist_broadcast(Dist *d, void *buf, size_t bytes, int root) {
    enter(d, "broadcast", 1);
    d->ops->broadcast(d, buf, bytes, root);
    leave(d);
}
void dist_reduce_start(Dist *d, float *buf, size_t begin, size_t end, size_t slice) {
    if (begin >= end) return;
    d->reducing = 0;  // more of the same: no wait before it
    enter(d, "gradient reduction", 1);
    d->ops->reduce_start(d, buf, begin, end, slice);
    leave(d);
    d->reducing = 1;
}
void dist_reduce_wait(Dist *d) {
    if (!d->reducing) return;
    d->reducing = 0;
    enter(d, "gradient reduction", 1);
    d->ops->reduce_wait(d);
    leave(d);
}
void dist_allgather_bytes(Dist *d, void *buf, size_t bytes) {
    enter(d, "all-gather", 1);
    d->ops->allgather_bytes(d, buf, bytes);
    leave(d);
}
void dist_allgather_host(Dist *d, const void *mine, void *all, size_t bytes) {
    enter(d, "all-gather", 1);
    d->ops->allgather_host(d, mine, all, bytes);
    leave(d);
}
void dist_broadcast_host(Dist *d, void *buf, size_t bytes, int root) {
    enter(d, "broadcast", 1);
    d->ops->broadcast_host(d, buf, bytes, root);
    leave(d);
}
void dist_barrier(Dist *d, int timed) {
    enter(d, "barrier", timed);
    d->ops->barrier(d);
    leave(d);
}

void dist_sum_f64(Dist *d, double *v, int n) {
    if (d->world == 1) return;
    double *all = xmalloc((size_t)d->world * n * sizeof(double));
    dist_allgather_host(d, v, all, (size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int r = 0; r < d->world; r++) s += all[(size_t)r * n + i];
        v[i] = s;
    }
    free(all);
}

// ---------------------------------------------------------------- opening

static void nccl_id_by_file(const DistLaunch *l, const char *init_dir, double timeout_s, void *id, size_t n) {
    if (!init_dir || !init_dir[0])
        fatal("config: dist_init_dir must name a directory every node sees: %d ranks were launched by %s without MPI, and "
              "NCCL's unique id travels through a file there", l->world, l->launcher);
    const char *job = getenv("SLURM_JOB_ID"), *stepid = getenv("SLURM_STEP_ID"), *run = getenv("TORCHELASTIC_RUN_ID");
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/svlm_nccl_id_%s_%s", init_dir, job ? job : run ? run : "run", stepid ? stepid : "0");
    if (l->rank == 0) {
        make_dirs(init_dir);
        snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
        FILE *f = fopen(tmp, "wb");
        if (!f || fwrite(id, 1, n, f) != n || fclose(f) != 0 || rename(tmp, path) != 0)
            fatal("%s: cannot write NCCL's unique id: %s", path, strerror(errno));
        return;
    }
    double t0 = time_now();
    for (;;) {
        FILE *f = fopen(path, "rb");
        if (f) {
            size_t got = fread(id, 1, n, f);
            fclose(f);
            if (got == n) return;
        }
        if (time_now() - t0 > timeout_s)
            fatal("%s: rank 0 wrote no NCCL unique id within dist_timeout (%.0f s): is dist_init_dir on a filesystem every "
                  "node sees?", path, timeout_s);
        usleep(100000);
    }
}

Dist *dist_open(const DistLaunch *l, int device_cuda, double timeout_s, const char *init_dir) {
    Dist *d;
    if (!strcmp(l->launcher, "none")) {
        d = xcalloc(1, sizeof *d);
        d->ops = &solo_ops;
        d->world = 1;
    } else if (device_cuda) {
        size_t n = dist_nccl_id_bytes();
        unsigned char id[512];
        CHECK(n <= sizeof id, "NCCL id of %zu bytes", n);
        if (!dist_nccl_available())
            fatal("%d processes were launched on CUDA, but this build of svlm has no NCCL (built without nvcc or NCCL)", l->world);
        Dist *host = NULL;
        if (!strcmp(l->launcher, "Open MPI") && dist_mpi_available()) host = dist_mpi_open(l);
        if (l->rank == 0 && dist_nccl_make_id(id) != 0) fatal("dist: NCCL could not make its unique id (ncclGetUniqueId)");
        if (host) {
            host->timeout_s = timeout_s;
            host->ops->broadcast_host(host, id, n, 0);
        } else {
            nccl_id_by_file(l, init_dir, timeout_s, id, n);
        }
        d = dist_nccl_open(l, id, host);
        CHECK(d, "dist_nccl_open");
    } else {
        if (!dist_mpi_available()) fatal("%d processes were launched by %s, but this build of svlm has no MPI", l->world, l->launcher);
        d = dist_mpi_open(l);
    }
    d->launch = *l;
    d->rank = l->rank;
    d->world = l->world;
    d->local_rank = l->local_rank;
    d->timeout_s = timeout_s;
    if (gethostname(d->node, sizeof d->node) != 0) snprintf(d->node, sizeof d->node, "?");
    d->node[sizeof d->node - 1] = 0;
    d->peers = xcalloc((size_t)d->world, sizeof *d->peers);
    DistPeer me = {.pid = (int)getpid()};
    snprintf(me.node, sizeof me.node, "%s", d->node);
    if (d->world > 1) {
        Watch *w = xcalloc(1, sizeof *w);
        d->watch = w;
        if (pthread_create(&w->thread, NULL, watch_main, d) != 0) fatal("dist: cannot start the watchdog thread");
    }
    dist_allgather_host(d, &me, d->peers, sizeof me);
    return d;
}

void dist_close(Dist *d) {
    if (!d) return;
    Watch *w = d->watch;
    if (w) {
        dist_barrier(d, 1);  // nobody leaves while another still needs it
        atomic_store(&w->stop, 1);
        pthread_join(w->thread, NULL);
        free(w);
        d->watch = NULL;
    }
    free(d->peers);
    d->ops->close(d);  // frees d
}

void dist_describe(const Dist *d, const char *device, char *out, size_t cap) {
    snprintf(out, cap, "rank %d of %d (%s), node %s, local rank %d, pid %d, %s", d->rank, d->world, d->launch.launcher,
             d->node, d->local_rank, (int)getpid(), device);
}

uint64_t dist_hash(const void *p, size_t n, uint64_t h) {
    const unsigned char *s = p;
    if (!h) h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return h;
}

// the first line of a that differs from b's (both NUL-terminated), as "`x` where rank 0 has `y`"
static void first_diff(const char *a, const char *b, char *out, size_t cap) {
    for (;;) {
        size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
        if (la != lb || memcmp(a, b, la)) {
            snprintf(out, cap, "`%.*s` where rank 0 has `%.*s`", (int)(la > 90 ? 90 : la), a, (int)(lb > 90 ? 90 : lb), b);
            return;
        }
        if (!a[la] || !b[lb]) break;
        a += la + 1;
        b += lb + 1;
    }
    snprintf(out, cap, "a different text");
}

void dist_check_same(Dist *d, const char *what, const char *text) {
    if (d->world == 1) return;
    uint64_t h = dist_hash(text, strlen(text), 0), *all = xmalloc((size_t)d->world * sizeof *all);
    dist_allgather_host(d, &h, all, sizeof h);
    int odd = -1;
    for (int r = 1; r < d->world && odd < 0; r++)
        if (all[r] != all[0]) odd = r;
    free(all);
    if (odd < 0) return;
    // what differs, line by line against rank 0's text
    uint64_t len = strlen(text);
    dist_broadcast_host(d, &len, sizeof len, 0);
    char *ref = xmalloc(len + 1);
    if (d->rank == 0) memcpy(ref, text, len);
    dist_broadcast_host(d, ref, len, 0);
    ref[len] = 0;
    enum { DESC = 240 };
    char mine[DESC], *descs = xmalloc((size_t)d->world * DESC);
    first_diff(text, ref, mine, sizeof mine);
    dist_allgather_host(d, mine, descs, DESC);
    if (d->rank == 0) {
        fprintf(stderr, "svlm: error: ranks were started with different %s: rank %d has %s\n", what, odd, descs + (size_t)odd * DESC);
        fflush(stderr);
    }
    free(ref);
    free(descs);
    dist_close(d);
    exit(1);
}
