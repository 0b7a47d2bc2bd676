// choose.c: the backend a program's `device` option names (see kernels.h).
#include <string.h>

#include "common/util.h"
#include "kernels/kernels.h"

const Kernels *kernels_choose(const char *device, const char *what) {
    if (!strcmp(device, "cpu")) return kernels_cpu();
    if (strcmp(device, "cuda") && strcmp(device, "auto")) fatal("%s %s: want cpu, cuda or auto", what, device);
    const Kernels *k = kernels_cuda();
    if (!k && !strcmp(device, "cuda"))
        fatal("%s cuda: no CUDA device is available (or svlm was built without the CUDA backend)", what);
    return k ? k : kernels_cpu();
}
