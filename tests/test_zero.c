// test_zero.c: the data-parallel step's pieces in one process on the CPU (tests/testlib.c has
// the checks, which test_gpu runs on CUDA and its emulator too): gradient buckets started by the
// backward sum exactly as one reduction after it, and ZeRO-1's sharded masters update exactly as
// a whole set. The CPU's masters are its compute weights, so they stay whole there; a CPU table
// with a separate (fp32) compute copy runs the sharded path.
#include <stdio.h>
#include <string.h>

#include "tests/testlib.h"

static void cast_copy(act_t *dst, const float *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }

// the CPU backend with a compute copy apart from the masters, as on CUDA (fp32 here, so the
// results are those of the CPU)
static const Kernels *cpu_with_copy(void) {
    static Kernels t;
    t = *kernels_cpu();
    t.name = "cpu-with-copy";
    t.act_is_f32 = 0;
    t.cast_to_act = cast_copy;
    return &t;
}

static void test_grad_buckets_cpu(void **state) { check_grad_buckets(kernels_cpu()); }
static void test_grad_buckets_cpu_copy(void **state) { check_grad_buckets(cpu_with_copy()); }
static void test_masters_whole_on_cpu(void **state) { check_sharded_masters(kernels_cpu()); }
static void test_sharded_masters(void **state) { check_sharded_masters(cpu_with_copy()); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_buckets_cpu),
        cmocka_unit_test(test_grad_buckets_cpu_copy),
        cmocka_unit_test(test_masters_whole_on_cpu),
        cmocka_unit_test(test_sharded_masters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
