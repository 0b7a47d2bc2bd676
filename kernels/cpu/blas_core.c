// blas_core.c: which OpenBLAS kernel runs the GEMMs, and a better one when the CPU has it.
// Debian's OpenBLAS is built with DYNAMIC_ARCH: when it loads it picks the kernels of the core it
// recognises from cpuid, and on a CPU newer than the library (0.3.21 on Emerald Rapids) it falls
// back to the generic Prescott (SSE3) kernels, about 4x slower than its SkylakeX (AVX-512) ones.
// OPENBLAS_CORETYPE, read only while the library initialises, overrides the choice. So the
// programs, which execute themselves again once anyway for libgomp's wait policy
// (openmp_prefer_passive in common/util.c), set it there to the best core type whose
// instructions this CPU and its OS really support (cpuid, and xgetbv for the register state), and
// only when the user has not set it.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <omp.h>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/blas_core.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static unsigned long long xgetbv0(void) {
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

CpuIsa cpu_isa(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return CPU_ISA_UNKNOWN;
    int sse3 = c & bit_SSE3, avx = c & bit_AVX, fma = c & bit_FMA, osxsave = c & bit_OSXSAVE;
    CpuIsa isa = sse3 ? CPU_ISA_SSE : CPU_ISA_UNKNOWN;
    if (!avx || !osxsave) return isa;
    unsigned long long xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return isa;  // the OS does not save the ymm registers
    isa = CPU_ISA_AVX;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return isa;
    if (!(b & bit_AVX2) || !fma) return isa;
    isa = CPU_ISA_AVX2;
    unsigned int avx512 = bit_AVX512F | bit_AVX512CD | bit_AVX512BW | bit_AVX512DQ | bit_AVX512VL;
    if ((b & avx512) == avx512 && (xcr0 & 0xe6) == 0xe6) isa = CPU_ISA_AVX512;  // opmask and zmm state
    return isa;
}
#else
CpuIsa cpu_isa(void) { return CPU_ISA_UNKNOWN; }  // aarch64: OpenBLAS knows its cores by MIDR, NEON everywhere
#endif

const char *cpu_isa_name(CpuIsa isa) {
    static const char *names[] = {"unknown", "SSE3", "AVX", "AVX2+FMA", "AVX-512"};
    return names[isa];
}

// OpenBLAS 0.3.21's x86-64 core types by the instructions of their SGEMM kernels
static const struct {
    const char *core;
    CpuIsa isa;
} cores[] = {
    {"katmai", CPU_ISA_SSE}, {"coppermine", CPU_ISA_SSE}, {"northwood", CPU_ISA_SSE}, {"prescott", CPU_ISA_SSE},
    {"banias", CPU_ISA_SSE}, {"atom", CPU_ISA_SSE}, {"core2", CPU_ISA_SSE}, {"penryn", CPU_ISA_SSE},
    {"dunnington", CPU_ISA_SSE}, {"nehalem", CPU_ISA_SSE}, {"athlon", CPU_ISA_SSE}, {"opteron", CPU_ISA_SSE},
    {"opteron_sse3", CPU_ISA_SSE}, {"barcelona", CPU_ISA_SSE}, {"nano", CPU_ISA_SSE}, {"bobcat", CPU_ISA_SSE},
    {"sandybridge", CPU_ISA_AVX}, {"bulldozer", CPU_ISA_AVX}, {"piledriver", CPU_ISA_AVX},
    {"haswell", CPU_ISA_AVX2}, {"steamroller", CPU_ISA_AVX2}, {"excavator", CPU_ISA_AVX2}, {"zen", CPU_ISA_AVX2},
    {"skylakex", CPU_ISA_AVX512}, {"cooperlake", CPU_ISA_AVX512}, {"sapphirerapids", CPU_ISA_AVX512},
};

CpuIsa blas_core_isa(const char *core) {
    for (size_t i = 0; core && i < sizeof cores / sizeof cores[0]; i++)
        if (!strcasecmp(core, cores[i].core)) return cores[i].isa;
    return CPU_ISA_UNKNOWN;
}

const char *blas_core_upgrade(const char *picked, CpuIsa have) {
    CpuIsa used = blas_core_isa(picked);
    if (used == CPU_ISA_UNKNOWN || used >= have) return NULL;  // a name we do not know is left alone
    switch (have) {
    case CPU_ISA_AVX512: return "SkylakeX";  // AVX-512 F, CD, BW, DQ, VL: what its kernels use
    case CPU_ISA_AVX2: return "Haswell";
    case CPU_ISA_AVX: return "Sandybridge";
    default: return NULL;
    }
}

int blas_prefer_best_core(void) {
    if (getenv("OPENBLAS_CORETYPE")) return 0;
    const char *picked = openblas_get_corename();
    const char *want = blas_core_upgrade(picked, cpu_isa());
    if (!want) return 0;
    setenv("SVLM_BLAS_PICKED", picked, 1);  // for cpu_blas_describe in the program run again
    setenv("OPENBLAS_CORETYPE", want, 1);
    return 1;
}

void cpu_blas_init(void) {
    static int done;
    if (done) return;
    done = 1;
    // OpenBLAS's OpenMP build (libopenblas0-openmp, when it is the system's libopenblas.so.0)
    // implements this as omp_set_num_threads(1) too, which would leave svlm's own parallel
    // regions on one thread: give OpenMP its count back. The BLAS stays single-threaded (its
    // thread count is its own variable; inside svlm's parallel regions it runs sequentially anyway).
    int n = omp_get_max_threads();
    openblas_set_num_threads(1);
    omp_set_num_threads(n);
}

void cpu_blas_describe(char *buf, size_t cap) {
    char version[32] = "?";
    sscanf(openblas_get_config(), "OpenBLAS %31s", version);  // "OpenBLAS 0.3.21 DYNAMIC_ARCH ..."
    static const char *builds[] = {"sequential", "pthreads", "OpenMP"};
    int par = openblas_get_parallel();
    const char *core = openblas_get_corename(), *picked = getenv("SVLM_BLAS_PICKED"), *env = getenv("OPENBLAS_CORETYPE");
    CpuIsa have = cpu_isa();
    char why[160] = "";
    if (picked && env)
        snprintf(why, sizeof why, " (svlm set OPENBLAS_CORETYPE=%s: the library picked %s for this CPU)", env, picked);
    else if (env)
        snprintf(why, sizeof why, " (OPENBLAS_CORETYPE=%s)", env);
    const char *better = blas_core_upgrade(core, have);
    snprintf(buf, cap, "BLAS OpenBLAS %s (%s build, single-threaded under %d OpenMP threads), kernel %s%s; CPU %s%s%s%s", version,
             par >= 0 && par <= 2 ? builds[par] : "?", omp_get_max_threads(), core, why, cpu_isa_name(have),
             better ? "; warning: the kernel is below this CPU, GEMMs run slower than they could (OPENBLAS_CORETYPE=" : "",
             better ? better : "", better ? " may help)" : "");
}
