// cuda_stub.c: stands in for the CUDA backend in builds without nvcc and in the CPU-only tests.
#include "kernels/kernels.h"

const Kernels *kernels_cuda(void) { return NULL; }
