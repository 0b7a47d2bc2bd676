// rng.h: a small deterministic random generator (xoshiro256**, seeded through splitmix64) whose
// whole state is four integers, so checkpoints can save it and resume exactly.
#pragma once
#include <stdint.h>

typedef struct {
    uint64_t s[4];
} Rng;

void rng_init(Rng *r, uint64_t seed);
uint64_t rng_u64(Rng *r);
float rng_uniform(Rng *r);  // [0, 1) with 24 random bits
double rng_uniform_f64(Rng *r);  // [0, 1) with 53 random bits
float rng_normal(Rng *r);   // standard normal (Box-Muller)
uint32_t rng_below(Rng *r, uint32_t n);  // uniform in [0, n), unbiased
