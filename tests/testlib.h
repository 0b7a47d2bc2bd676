// testlib.h: helpers shared by the cmocka tests: running code that must fail cleanly in a child
// process, random fills, error measures and fixture paths.
#pragma once
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

// Runs fn(arg) in a forked child with stderr captured. Asserts that the child exited with status
// 1 (fatal()), not by a signal or by returning, that stderr holds exactly one line, and that the
// line contains every needle given (NULL-terminated list). Returns nothing; fails the test otherwise.
void expect_fatal_(const char *file, int line, void (*fn)(void *), void *arg, ...);
#define expect_fatal(fn, arg, ...) expect_fatal_(__FILE__, __LINE__, fn, arg, __VA_ARGS__, (const char *)0)

// Runs fn(arg) in a forked child; returns its exit status (>= 0), or -signal when it was killed.
// Captured stderr goes to buf (NUL-terminated, truncated to cap).
int run_child(void (*fn)(void *), void *arg, char *buf, size_t cap);

// xorshift64* generator so tests are reproducible everywhere
uint64_t test_rand_u64(uint64_t *state);
float test_rand_uniform(uint64_t *state);  // [0, 1)
void test_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t *state);

// max |a - ref| / max |ref|: the relative error used throughout the tests
double rel_err(const float *a, const float *ref, size_t n);

// malloc'd float vectors (room for at least one element, so n = 0 is fine): uniform in [lo, hi)
// from state, zeros, a copy of x, all NaN (to show what a kernel leaves unwritten)
float *test_randv(size_t n, float lo, float hi, uint64_t *state);
float *test_zerov(size_t n);
float *test_copyv(const float *x, size_t n);
float *test_nanv(size_t n);
// prints what and rel_err(a, ref, n), and fails the test when it is above tol (or NaN)
void test_expect_close(const char *what, const float *a, const float *ref, size_t n, double tol);
// fails the test unless a and b hold the same n floats bit for bit
void test_expect_same_bits(const char *what, const float *a, const float *b, size_t n);

// Copies into out (room for n) the tests of in whose names match pattern (fnmatch: *, ?, [...]),
// or, for "!pattern", those whose names do not; NULL selects all. Returns how many. For a group run
// with _cmocka_run_group_tests(name, out, count, setup, teardown).
size_t test_select(struct CMUnitTest *out, const struct CMUnitTest *in, size_t n, const char *pattern);

// tests run from the repository root; this prefixes tests/fixtures/
const char *fixture_path(const char *name);
// dir (new): the Idefics3 whole-model fixture (vlm_idefics3_dir) splitting images as SmolVLM does:
// its files linked by absolute path, plus a preprocessor_config.json of its own (longest edge to
// 36, tiles of the tower's 12 pixels), so a 64 x 64 image is 3 x 3 tiles + the global image and a
// 90 x 30 one 3 x 1 + global (36 x 12); the model's max_tiles is 9
void test_idefics3_tiled_dir(const char *dir);
// a fresh empty directory under build/tmp for this test; returns its path (static buffer per call site not kept)
void make_temp_dir(char *out, size_t cap, const char *tag);
// the whole file (NUL-terminated; *n its length when n is given), failing the test when unreadable
char *test_slurp(const char *path, size_t *n);
// 1 when the two files hold the same bytes
int test_same_file(const char *a, const char *b);
// writes text to path, failing the test when it cannot
void test_write_file(const char *path, const char *text);
// runs the program argv[0] (a path) with stdout into out_log and stderr into err_log, waits, and
// returns its exit status (minus the signal number when a signal ended it)
int test_spawn(char *const argv[], const char *out_log, const char *err_log);
// ./synth synth_dir with 16 training, 4 validation and n_bench benchmark samples, no held-out
// images; logs in root/synth.log and .err; returns 0, or -1 (saying where to look) when it failed
int test_synth(const char *root, const char *synth_dir, int n_bench);
// a tiny stage-2 config at path over ./synth's output in synth_dir (batch 4, LoRA r 4, lr 3e-3,
// seed 7, no saves, cpu with 2 threads), data cache in cache, plus the extra "key = value" lines
void test_write_stage2_conf(const char *path, const char *synth_dir, const char *cache, const char *connector,
                            int max_seq_len, int max_steps, const char *extra);
// two finished ./train runs agree byte for byte: step_<step>'s tensors, optimizer and state.json,
// and metrics.jsonl
void expect_same_run(const char *a, const char *b, int step);
// seconds per step of a finished ./train run (the elapsed_s of its timing.jsonl), fallback when it
// logged fewer than two steps
double test_step_seconds(const char *run_dir, double fallback);

// ---- the Hugging Face parity fixtures of scripts/make_fixtures.py (tests/fixtures/README.md) ----
#include "common/safetensors.h"
#include "model/vlm.h"

typedef struct {
    StFile f;
    int B, T, V, S, n_img;  // n_img: tiles (each tile is one of VlmBatch's images)
    int *ids, *labels, *img_row, *img_start;
    int n_cols, *cols;  // logits (B, T, n_cols) of these vocabulary columns (logit_cols, and V from the
                        // file's vocab_size metadata), so that a long batch stays small; 0, NULL: all V
    int *targets;   // labels shifted as HF scores them: targets[t] = labels[t+1], -1 for none
    float *pixels;  // (n_img, 3, S, S)
    VlmBatch batch;
} VlmFixture;

// a JSON fixture file (tests/fixtures/<name>), parsed; fatal() naming it when unreadable
#include <cjson/cJSON.h>
cJSON *fixture_json(const char *name);
// member k of a fixture object; fails the test when absent
const cJSON *fixture_item(const cJSON *o, const char *k);

// tensor `name` of f as fp32 / int32 (malloc'd); fails the test when absent; *n gets its size
float *fixture_f32(const StFile *f, const char *name, size_t *n);
int *fixture_i32(const StFile *f, const char *name);
void vlm_fixture_open(VlmFixture *fx, const char *name);
void vlm_fixture_close(VlmFixture *fx);
// got (B, T, V), svlm's logits on fx's batch, within tol (rel_err) of the fixture's logits: over
// the stored columns only where the fixture keeps a subset (n_cols)
void vlm_fixture_expect_logits(const VlmFixture *fx, const float *got, const char *what, double tol);
// The spec of the fixtures' VLM: clip + llm + connector [+ peft adapter lora_dir's LoRA config],
// for batches up to max_B x max_T with max_images. Its paths stay valid until the next call.
VlmSpec fixture_vlm_spec(const char *llm, ConnectorType ct, const char *lora_dir, int max_B, int max_T,
                         int max_images, float lora_dropout);
// vlm_init on spec, then the connector from fixture conn_file and (lora_dir not NULL) the adapter
void fixture_model_load(Vlm *m, const Kernels *k, const VlmSpec *spec, const char *conn_file, const char *lora_dir);
// Builds the fixtures' VLM (clip + llm + connector [+ peft adapter lora_dir]) on backend k for
// batches up to max_B x max_T with max_images, and loads the connector and adapter weights.
void fixture_model_open(Vlm *m, const Kernels *k, const char *llm, ConnectorType ct, const char *conn_file,
                        const char *lora_dir, int max_B, int max_T, int max_images, float lora_dropout);

// ---- the data-parallel step's pieces in one process (tests/test_zero.c on the CPU, test_gpu on
// CUDA or its emulator) ----
// Gradient buckets (trainer/grad_buckets.h) with the fixtures' VLM on backend k and a fake
// transport: rank 0 of two ranks with equal gradients, so a sum over ranks doubles. Two
// micro-batches, buckets started by the backward of the second: the gradients equal the
// doubled gradients of the same two micro-batches without buckets, bit for bit, for ZeRO-0 and
// ZeRO-1 (rank 0's slice), with buckets of one group each, of everything, and none (0 MiB);
// every element is summed once, and the one-group buckets start before the backward returns.
void check_grad_buckets(const Kernels *k);
// ZeRO-1's sharded masters (model/params.h) on backend k: two ranks' sets, each updating its
// slice (optimizer_update_range) and exchanging the compute copy's slices as the all-gather
// does, end with the compute copy, masters and moments of one unsharded set, byte for byte.
// Where the backend's compute copy is the fp32 masters (the CPU), asserts they stay whole.
void check_sharded_masters(const Kernels *k);
