// blas_core.h: the BLAS the CPU backend runs on, the kernel (core type) it picked, and a better
// one when the CPU has it. No cblas.h here: common/util.c includes this.
#pragma once
#include <stddef.h>

// the instruction sets the GEMM kernels are ranked by
typedef enum { CPU_ISA_UNKNOWN = 0, CPU_ISA_SSE = 1, CPU_ISA_AVX = 2, CPU_ISA_AVX2 = 3, CPU_ISA_AVX512 = 4 } CpuIsa;

// the best of these this CPU and its OS support (cpuid, xgetbv); CPU_ISA_UNKNOWN off x86-64
CpuIsa cpu_isa(void);
const char *cpu_isa_name(CpuIsa isa);
// the ISA an OpenBLAS core type's kernels use (case-insensitive); CPU_ISA_UNKNOWN for a name not known
CpuIsa blas_core_isa(const char *core);
// the OpenBLAS core type to ask for when `picked` uses less than `have`, else NULL
const char *blas_core_upgrade(const char *picked, CpuIsa have);
// before the programs re-execute themselves (openmp_prefer_passive): sets OPENBLAS_CORETYPE when
// OpenBLAS picked a kernel below this CPU and the user did not choose one; returns 1 when it did
int blas_prefer_best_core(void);
// once, at the backend's first use: the BLAS single-threaded (the matmuls split work in OpenMP)
void cpu_blas_init(void);
// one line: the library, its build, its kernel, the CPU's ISA, and a warning when the kernel is below it
void cpu_blas_describe(char *buf, size_t cap);
