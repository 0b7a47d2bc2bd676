// dist_launch.c: who this process is in a run, from the launcher's environment (Open MPI, Slurm,
// torchrun-style variables; see dist.h). Apart from the transports so that what only reads the
// configuration (train_config.c, the config fuzzer) needs no MPI or NCCL.
#include <stdio.h>
#include <stdlib.h>

#include "common/util.h"
#include "trainer/dist.h"

static int env_int(const char *name, int *out, int lo) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < lo || n > 1 << 20) fatal("environment: %s = \"%s\" is not a valid number here", name, v);
    *out = (int)n;
    return 1;
}

DistLaunch dist_detect(void) {
    DistLaunch l = {.rank = 0, .world = 1, .local_rank = 0};
    static const struct {
        const char *launcher, *rank, *world, *local;
    } kinds[] = {
        {"Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
        {"Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
        {"torchrun-style (RANK/WORLD_SIZE)", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
    };
    snprintf(l.launcher, sizeof l.launcher, "none");
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (!env_int(kinds[i].world, &l.world, 1)) continue;
        // Slurm sets SLURM_NTASKS in a batch script's own shell too: without SLURM_PROCID this is
        // not a task that srun started
        if (!env_int(kinds[i].rank, &l.rank, 0)) {
            if (i == 1) {
                l.world = 1;
                continue;
            }
            fatal("environment: %s is set but %s is not", kinds[i].world, kinds[i].rank);
        }
        if (!env_int(kinds[i].local, &l.local_rank, 0)) l.local_rank = l.rank;
        if (l.rank >= l.world) fatal("environment: %s = %d is not below %s = %d", kinds[i].rank, l.rank, kinds[i].world, l.world);
        snprintf(l.launcher, sizeof l.launcher, "%s", kinds[i].launcher);
        break;
    }
    return l;
}
