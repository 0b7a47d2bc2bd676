// choose.c: the backend a program's `device` option names (see kernels.h), and the environment
// the libraries under the backends read once, when they load (openmp_prefer_passive).
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "kernels/cpu/blas_core.h"
#include "kernels/kernels.h"

const Kernels *kernels_choose(const char *device, const char *what) {
    if (!strcmp(device, "cpu")) return kernels_cpu();
    if (strcmp(device, "cuda") && strcmp(device, "auto")) fatal("%s %s: want cpu, cuda or auto", what, device);
    const Kernels *k = kernels_cuda();
    if (!k && !strcmp(device, "cuda"))
        fatal("%s cuda: no CUDA device is available (or svlm was built without the CUDA backend)", what);
    return k ? k : kernels_cpu();
}

// see common/util.h: one re-execution for libgomp's wait policy and OpenBLAS's kernel
void openmp_prefer_passive(char **argv) {
    int again = 0;
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        again = 1;
    }
    again |= blas_prefer_best_core();
    if (again) execv("/proc/self/exe", argv);
}
