# Makefile: builds libsvlm (CPU backend always, CUDA backend when nvcc and the CUDA libraries work), the programs
# (train, export, generate, prepare, synth, evaluate), the tests and the benchmarks.
# Sources are found by wildcard: a new .c file in a library folder or a tests/test_*.c needs no edit here.

CC      ?= gcc
NVCC    ?= nvcc
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
# CUDA=auto|0|1: the CUDA backend when nvcc and its libraries link (auto), never (0), or required (1)
CUDA    ?= auto
# build/config.mk: the include and link flags of the libraries, written by scripts/install_deps.sh
# after it has compiled and linked a probe against each (installing the Debian packages that
# were missing). It is written again when the script, the compiler or the flags below change,
# and by `make deps`. CFLAGS and LDFLAGS may add -I / -L paths for libraries outside the system
# ones; the probes use them too.
DEPS_KEY := $(CC) $(CXX) $(CFLAGS) $(LDFLAGS) $(NVCC) CUDA=$(CUDA)
DEPS_ENV := CC='$(CC)' CXX='$(CXX)' CFLAGS='$(CFLAGS)' LDFLAGS='$(LDFLAGS)' NVCC='$(NVCC)' CUDA='$(CUDA)' CONFIG_KEY='$(DEPS_KEY)'
.DEFAULT_GOAL := all
# every goal but clean and deps needs the flags (deps writes them itself)
ifeq ($(MAKECMDGOALS),)
  include build/config.mk
else ifneq ($(filter-out clean deps,$(MAKECMDGOALS)),)
  include build/config.mk
endif
# SVLM_CFLAGS, not CFLAGS, gets the project's flags: sub-makes inherit CFLAGS as the user gave it
SVLM_CFLAGS = $(CFLAGS) -std=gnu11 -ffp-contract=off -Wall -Wextra -Wno-unused-parameter -fopenmp -I. $(DEPS_CFLAGS)
LDLIBS  := $(LDFLAGS) $(DEPS_LIBS)
# GCC's flow warnings misfire on sanitizer-instrumented code, so the ASan build leaves them to the normal one
ASAN    := -fsanitize=address,undefined -fno-omit-frame-pointer -Wno-array-bounds -Wno-format-overflow
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVFLAGS ?= -O3 -std=c++17 $(CUDA_ARCH) -I. --compiler-options -fPIC

LIB_SRC  := $(wildcard common/*.c kernels/*.c kernels/cpu/*.c model/*.c data/*.c eval/*.c trainer/*.c)
LIB_OBJ  := $(patsubst %.c,build/obj/%.o,$(LIB_SRC))
ASAN_OBJ := $(patsubst %.c,build/asan/%.o,$(LIB_SRC))
CU_SRC   := $(wildcard kernels/cuda/*.cu)
CU_OBJ   := $(patsubst %.cu,build/cuda/%.o,$(CU_SRC))
PROGS    := $(basename $(wildcard train.c export.c generate.c prepare.c synth.c evaluate.c))
TEST_SRC := $(wildcard tests/test_*.c)
TESTS    := $(patsubst tests/%.c,build/tests/%,$(TEST_SRC))
# tests that parse untrusted files also run under AddressSanitizer + UBSan
ASAN_TESTS := $(patsubst tests/%.c,build/tests/asan_%,$(wildcard tests/test_safetensors.c tests/test_hf_load.c tests/test_json.c tests/test_image.c tests/test_shards.c tests/test_tokenizer.c tests/test_template.c tests/test_synth.c tests/test_eval_metrics.c tests/test_chat_formats.c tests/test_vlm_dir.c))

# the CUDA emulator's build (tests/gpu/emu): plain, ASan (EMU_SAN=1) and TSan (EMU_TSAN=1) side by side
EMU_DIR := build/emu$(if $(EMU_SAN),-asan)$(if $(EMU_TSAN),-tsan)

# HAVE_CUDA, CUDA_HOME, CUDA_LIBS come from build/config.mk: 1 only when nvcc compiled and the
# CUDA runtime and cuBLAS(Lt) linked and loaded there (CUDA_LIBS carries an rpath to them)
HAVE_NVCC := $(if $(filter 1,$(HAVE_CUDA)),1)
ifeq ($(HAVE_NVCC)$(if $(CU_SRC),1),11)
  PROG_CUDA := $(CU_OBJ)
  PROG_LIBS := $(CUDA_LIBS)
else
  PROG_CUDA := build/obj/kernels/cuda/cuda_stub.o
  PROG_LIBS :=
endif

ifneq ($(CONFIG_KEY),$(DEPS_KEY))
  CONFIG_STALE := FORCE
endif
build/config.mk: scripts/install_deps.sh $(CONFIG_STALE)
	@$(DEPS_ENV) sh scripts/install_deps.sh --config $@
# checks (and installs) again, whatever config.mk says
deps:
	@$(DEPS_ENV) sh scripts/install_deps.sh --config build/config.mk
FORCE:

.PHONY: deps FORCE all test test-unit cuda-compile test-gpu test-gpu-emu test-train-emu clean-emu bench bench-cpu bench-data demo clean fixtures
all: $(PROGS)

build/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(SVLM_CFLAGS) -MMD -MP -c $< -o $@
build/asan/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(SVLM_CFLAGS) $(ASAN) -MMD -MP -c $< -o $@
build/cuda/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) $(CUDNN_NVFLAGS) -c $< -o $@
build/obj/kernels/cuda/cuda_stub.o: kernels/cuda/cuda_stub.c
	@mkdir -p $(dir $@)
	$(CC) $(SVLM_CFLAGS) -c $< -o $@

build/libsvlm.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^
build/libsvlm_asan.a: $(ASAN_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(PROGS): %: build/obj/%.o build/libsvlm.a $(PROG_CUDA)
	$(CC) $(SVLM_CFLAGS) $< $(PROG_CUDA) build/libsvlm.a -o $@ $(LDLIBS) $(PROG_LIBS)

build/tests/test_%: build/obj/tests/test_%.o build/obj/tests/testlib.o build/libsvlm.a build/obj/kernels/cuda/cuda_stub.o
	@mkdir -p $(dir $@)
	$(CC) $(SVLM_CFLAGS) $^ -o $@ $(TEST_LIBS) $(LDLIBS)
build/tests/asan_test_%: build/asan/tests/test_%.o build/asan/tests/testlib.o build/libsvlm_asan.a build/asan/kernels/cuda/cuda_stub.o
	@mkdir -p $(dir $@)
	$(CC) $(SVLM_CFLAGS) $(ASAN) $^ -o $@ $(TEST_LIBS) $(LDLIBS)
build/asan/kernels/cuda/cuda_stub.o: kernels/cuda/cuda_stub.c
	@mkdir -p $(dir $@)
	$(CC) $(SVLM_CFLAGS) $(ASAN) -c $< -o $@

# every CUDA source must compile on machines without a GPU
cuda-compile: $(if $(HAVE_NVCC),$(CU_OBJ))
ifneq ($(HAVE_NVCC),1)
	@echo "cuda-compile: CUDA sources not compiled ($(CUDA_WHY))"
endif

# issue 14's link-safe file operations and range checks run under ASan + UBSan as well
ASAN_TESTS += build/tests/asan_test_fs_safe

# test_gpu_emu: the CUDA kernels' source on the CPU emulator against the CPU backend (tests/gpu/emu);
# train_emu: ./train on them (tests/test_dist.c runs it data-parallel: ZeRO-1 with sharded masters);
# tsan_ops.sh: its op tests again under ThreadSanitizer (race detection)
test: cuda-compile $(TESTS) $(ASAN_TESTS) $(PROGS) $(EMU_DIR)/test_gpu_emu $(EMU_DIR)/train_emu $(if $(HAVE_NVCC),build/tests/gpu/cudnn_graphs)
	@$(MAKE) --no-print-directory EMU_TSAN=1 build/emu-tsan/test_gpu_emu
	@sh tests/run.sh tests/test_deps.sh $(TESTS) $(ASAN_TESTS) $(EMU_DIR)/test_gpu_emu tests/gpu/tsan_ops.sh tests/gpu/cudnn_graphs.sh
	@$(MAKE) --no-print-directory fuzz-smoke

# ---- fuzzing (tests/fuzz/): libFuzzer harnesses for every parser of untrusted files, built with
# clang under ASan + UBSan into build/fuzz/. `make fuzz` runs each for FUZZ_SECONDS (default 1800),
# FUZZ_JOBS at a time (default 2);
# `make test` runs each for FUZZ_SMOKE_SECONDS on its corpus (fuzz-smoke). Without clang's libFuzzer
# (Debian: clang and libclang-rt-14-dev) both say so and skip.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 1800
FUZZ_SMOKE_SECONDS ?= 3
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_CFLAGS  := -g -O1 -std=gnu11 -I. $(DEPS_CFLAGS) -Wall -Wno-unused-parameter \
                -Wno-unknown-pragmas $(FUZZ_SAN) -fsanitize=fuzzer-no-link
# fuzz_common.c tracks the streams and directories a refused input leaves open
FUZZ_WRAP    := -Wl,--wrap=fopen,--wrap=fdopen,--wrap=fclose,--wrap=opendir,--wrap=fdopendir,--wrap=closedir
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(filter-out tests/fuzz/fuzz_common.c,$(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_BINS    := $(patsubst %,build/fuzz/fuzz_%,$(FUZZ_TARGETS))
FUZZ_LIB_OBJ := $(patsubst %.c,build/fuzz/obj/%.o,$(filter common/% data/% model/% trainer/checkpoint_state.c trainer/train_config.c trainer/dist_launch.c,$(LIB_SRC)))
build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@
build/fuzz/libsvlm_fuzz.a: $(FUZZ_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^
build/fuzz/fuzz_%: build/fuzz/obj/tests/fuzz/fuzz_%.o build/fuzz/obj/tests/fuzz/fuzz_common.o build/fuzz/libsvlm_fuzz.a
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $^ -o $@ $(FUZZ_WRAP) $(LDLIBS)
.PHONY: fuzz fuzz-build fuzz-smoke
fuzz-build:
	@if sh tests/fuzz/fuzz.sh check; then $(MAKE) --no-print-directory $(FUZZ_BINS) prepare; \
	else echo "fuzz: skipped: $(FUZZ_CC) cannot link libFuzzer (-fsanitize=fuzzer); on Debian: apt-get install clang libclang-rt-14-dev"; fi
fuzz-smoke: fuzz-build
	@if [ -x build/fuzz/fuzz_config ]; then sh tests/fuzz/fuzz.sh corpus && sh tests/fuzz/fuzz.sh run $(FUZZ_SMOKE_SECONDS) $(FUZZ_BINS); fi
fuzz: fuzz-build
	@if [ -x build/fuzz/fuzz_config ]; then sh tests/fuzz/fuzz.sh corpus && sh tests/fuzz/fuzz.sh run $(FUZZ_SECONDS) $(FUZZ_BINS); fi

# bench_step: one training step timed on either backend (bench/bench_step.c --help); linked like
# the programs, so it has the CUDA backend whenever nvcc is present
build/bench_step: build/obj/bench/bench_step.o build/libsvlm.a $(PROG_CUDA)
	$(CC) $(SVLM_CFLAGS) $< $(PROG_CUDA) build/libsvlm.a -o $@ $(LDLIBS) $(PROG_LIBS)
# svlm against PyTorch on the CPU, alternating runs, one table (bench/bench_cpu.sh: RUNS, ROWS, PYTHON)
bench-cpu: build/bench_step
	@PYTHON=$(PYTHON) sh bench/bench_cpu.sh

# The GPU benchmark of issue 5: the reference recipe's shapes (CLIP ViT-L/14-336, ldp, Qwen2-0.5B,
# LoRA r 64 in stage 2), micro-batch 16, stage 1 then stage 2, svlm and then PyTorch
# (scripts/bench_torch.py: transformers + peft, bf16 autocast, SDPA) on the same batch and weights,
# then a comparison table. Everything it prints is also in $(BENCH_DIR)/bench.log; the batches,
# JSON results and random models (about 3.2 GB, written once) stay in $(BENCH_DIR).
# Without a GPU it says so and does nothing.
BENCH_PRESET ?= reference
BENCH_DIR   ?= build/bench/$(BENCH_PRESET)
BENCH_STEPS ?= 10
BENCH_BIN   ?= build/bench_step
BENCH_ARGS  ?=
BENCH_TORCH_ARGS ?=
PYTHON      ?= python3
BENCH_BUILD ?= 1
comma := ,
bench:
	@if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidia0 ]; then \
	  echo "bench: no NVIDIA GPU on this machine (no nvidia-smi, no /dev/nvidia0): nothing run. make bench-cpu times the CPU backend."; exit 0; fi; \
	if [ "$(HAVE_NVCC)" != 1 ] && [ "$(BENCH_BUILD)" = 1 ]; then \
	  echo "bench: svlm has no CUDA backend here ($(CUDA_WHY)): nothing run"; exit 0; fi; \
	command -v $(PYTHON) >/dev/null 2>&1 || { echo "bench: $(PYTHON) not found (the PyTorch side of the comparison; PYTHON=... names another)"; exit 1; }; \
	$(PYTHON) scripts/bench_torch.py --check-deps >/dev/null || exit 1; \
	if [ "$(BENCH_BUILD)" = 1 ]; then $(MAKE) --no-print-directory $(BENCH_BIN) || exit 1; fi; \
	./$(BENCH_BIN) --device cuda --probe >/dev/null; rc=$$?; \
	if [ $$rc = 77 ]; then \
	  echo "bench: no usable CUDA device (kernels_cuda() found none): nothing run. make bench-cpu times the CPU backend."; exit 0; fi; \
	if [ $$rc != 0 ]; then echo "bench: ./$(BENCH_BIN) --probe failed (exit $$rc)"; exit 1; fi; \
	export PYTHONUNBUFFERED=1; fail=0; d=$(BENCH_DIR); mkdir -p $$d; log=$$d/bench.log; : > $$log; \
	run() { echo "+ $$*" | tee -a $$log; { "$$@"; echo $$? > $$d/.rc; } 2>&1 | tee -a $$log; return $$(cat $$d/.rc); }; \
	{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader; \
	  echo "svlm $$(git rev-parse --short HEAD 2>/dev/null) $$(git status --short 2>/dev/null | wc -l) files changed"; } 2>&1 | tee -a $$log; \
	for s in 1 2; do \
	  rm -f $$d/batch_stage$$s.safetensors $$d/svlm_stage$$s.json $$d/torch_stage$$s.json; \
	  run ./$(BENCH_BIN) --device cuda --preset $(BENCH_PRESET) --stage $$s --steps $(BENCH_STEPS) --models $$d \
	    --save-batch $$d/batch_stage$$s.safetensors --result $$d/svlm_stage$$s.json $(BENCH_ARGS) \
	    || { fail=1; echo "bench: svlm stage $$s FAILED" | tee -a $$log; }; \
	  if [ -f $$d/batch_stage$$s.safetensors ]; then \
	    run $(PYTHON) scripts/bench_torch.py --batch $$d/batch_stage$$s.safetensors --device cuda --steps $(BENCH_STEPS) \
	      --result $$d/torch_stage$$s.json $(BENCH_TORCH_ARGS) || { fail=1; echo "bench: torch stage $$s FAILED" | tee -a $$log; }; \
	  fi; \
	done; \
	run $(PYTHON) scripts/bench_torch.py --table $$d/svlm_stage1.json $$d/torch_stage1.json $$d/svlm_stage2.json $$d/torch_stage2.json; \
	echo "bench: everything above is in $$log"; exit $$fail

# make bench-eval: decode tokens/s of batched generation (./generate --batch) at batch 1, 8 and 32 on the CPU
# against transformers' generate on the same random model and prompts (scripts/bench_eval.py: it writes the
# model once into build/bench/eval, runs svlm and transformers alternately, prints a table). Skipped with a
# message when BENCH_EVAL_PYTHON (default $(PYTHON)) cannot import torch and transformers.
BENCH_EVAL_PYTHON ?= $(PYTHON)
BENCH_EVAL_ARGS ?=
.PHONY: bench-eval
bench-eval: generate
	@if ! $(BENCH_EVAL_PYTHON) scripts/bench_eval.py --check-deps >/dev/null 2>&1; then \
	  echo "bench-eval: skipped: $(BENCH_EVAL_PYTHON) cannot import torch / transformers (BENCH_EVAL_PYTHON=path/to/venv/bin/python; scripts/requirements.txt)"; exit 0; fi; \
	$(BENCH_EVAL_PYTHON) scripts/bench_eval.py $(BENCH_EVAL_ARGS)

build/bench_data: build/obj/bench/bench_data.o build/libsvlm.a build/obj/kernels/cuda/cuda_stub.o
	$(CC) $(SVLM_CFLAGS) $^ -o $@ $(LDLIBS)
bench-data: build/bench_data
	./build/bench_data
# the step's GEMMs under svlm's thread split and under the BLAS's own threads (bench/bench_sgemm.c)
build/bench_sgemm: build/obj/bench/bench_sgemm.o build/libsvlm.a build/obj/kernels/cuda/cuda_stub.o
	$(CC) $(SVLM_CFLAGS) $^ -o $@ $(LDLIBS)

# the built-in default: synthetic data and tiny random models, both stages, export, generation,
# then ./evaluate on the held-out benchmarks (multiple choice by likelihood: the demo model answers
# in sentences, never with a letter; VQA without LLaVA's one-word instruction, for the same reason)
demo: $(PROGS)
	rm -rf demo/runs demo/export
	./synth demo
	./train configs/tiny_stage1.conf
	./train configs/tiny_stage2.conf
	./export demo/runs/stage2 demo/export
	@echo "held-out image demo/data/heldout_1.png; true answer: $$(grep -o '"Where is the cross?", *"answer": *"[^"]*"' demo/data/heldout.json | sed 's/.*"answer": *//')"
	./generate demo/export --image demo/data/heldout_1.png --prompt "Where is the cross?"
	./evaluate demo/export demo/data/bench_mc.jsonl --mc-score likelihood --out demo/eval/mc
	./evaluate demo/export demo/data/bench_vqa.jsonl --vqa-prompt "" --out demo/eval/vqa

# regenerates tests/fixtures (needs torch, transformers, peft: see README)
fixtures:
	$(PYTHON) scripts/make_fixtures.py --out tests/fixtures

# GPU tests: every CUDA op against the CPU backend, then the HF fixtures through the whole model
# on kernels_cuda(). Needs a CUDA device (exits 77, reported as skipped, without one); never part
# of `make test`. `make test-gpu-emu` runs the same program on a CPU emulation of the CUDA kernels
# (tests/gpu/emu, small shapes only), which needs no GPU and no nvcc.
$(CU_OBJ): kernels/cuda/common.cuh
build/tests/gpu/test_gpu: build/obj/tests/gpu/test_gpu.o build/obj/tests/testlib.o $(CU_OBJ) build/libsvlm.a
	@mkdir -p $(dir $@)
	$(CC) $(SVLM_CFLAGS) $^ -o $@ $(TEST_LIBS) $(LDLIBS) $(PROG_LIBS)
# cuDNN's verdict on svlm's attention graphs, without a GPU (tests/gpu/cudnn_graphs.c; run by
# tests/gpu/cudnn_graphs.sh, which gives cuDNN the toolkit's stub libcuda where no driver is installed)
build/tests/gpu/cudnn_graphs: build/obj/tests/gpu/cudnn_graphs.o build/obj/tests/testlib.o $(CU_OBJ) build/libsvlm.a
	@mkdir -p $(dir $@)
	$(CC) $(SVLM_CFLAGS) $^ -o $@ $(TEST_LIBS) $(LDLIBS) $(PROG_LIBS)
# then ./train on the GPU: learning, kill-and-resume bit-identical, the memory plan (tests/test_train.c),
# and NCCL with one rank against the run without Dist (tests/test_dist.c)
test-gpu: build/tests/gpu/test_gpu build/tests/test_train build/tests/test_dist $(PROGS)
	@./build/tests/gpu/test_gpu; rc=$$?; \
	if [ $$rc -eq 77 ]; then echo "test-gpu: skipped (no CUDA device)"; exit 0; fi; [ $$rc -eq 0 ] || exit $$rc; \
	SVLM_TEST_DEVICE=cuda ./build/tests/test_train && SVLM_TEST_DEVICE=cuda ./build/tests/test_dist

EMU_OBJ := $(patsubst kernels/cuda/%.cu,$(EMU_DIR)/%.o,$(CU_SRC)) $(EMU_DIR)/emu_runtime.o $(EMU_DIR)/cublaslt_emu.o
EMU_FLAGS := -std=c++17 -O2 -g -ffp-contract=off -DSVLM_CUDA_EMU -I. -Wall -Wextra -Wno-unused-parameter
# EMU_SAN=1: the emulated kernels under AddressSanitizer + UBSan (out-of-bounds device accesses)
EMU_SAN_OPTS := -fsanitize=address,undefined -fno-omit-frame-pointer
# EMU_TSAN=1: the emulated kernels under ThreadSanitizer, each CUDA thread a TSan fiber: a data race
# between the threads of a block (a missing __syncthreads or __syncwarp) is reported
EMU_SAN_FLAGS := $(if $(EMU_SAN),$(EMU_SAN_OPTS))$(if $(EMU_TSAN), -fsanitize=thread)
EMU_FLAGS += $(if $(EMU_TSAN),-DSVLM_EMU_TSAN)
# the emulator's own host code (scheduler, cuBLASLt) is not instrumented by TSan: its bookkeeping
# is not the kernels' business
EMU_HOST_FLAGS := $(EMU_FLAGS) $(if $(EMU_TSAN),,$(EMU_SAN_FLAGS))
$(EMU_DIR)/%.o: kernels/cuda/%.cu kernels/cuda/common.cuh tests/gpu/emu/cuda_emu.h tests/gpu/emu/cublaslt_emu.h
	@mkdir -p $(dir $@)
	$(CXX) -x c++ $(EMU_FLAGS) $(EMU_SAN_FLAGS) -c $< -o $@
$(EMU_DIR)/emu_runtime.o: tests/gpu/emu/emu_runtime.cpp tests/gpu/emu/cuda_emu.h
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_HOST_FLAGS) -c $< -o $@
$(EMU_DIR)/cublaslt_emu.o: tests/gpu/emu/cublaslt_emu.cpp tests/gpu/emu/cublaslt_emu.h
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_HOST_FLAGS) -c $< -o $@
$(EMU_DIR)/test_gpu_emu: build/obj/tests/gpu/test_gpu.o build/obj/tests/testlib.o $(EMU_OBJ) build/libsvlm.a
	$(CC) $(SVLM_CFLAGS) $(EMU_SAN_FLAGS) $^ -o $@ $(TEST_LIBS) $(LDLIBS) -lstdc++
# under TSan the CPU reference runs on one thread: libgomp is not instrumented, so TSan would take
# its workers' hand-offs for races
test-gpu-emu: $(EMU_DIR)/test_gpu_emu
	$(if $(EMU_TSAN),OMP_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 $(TSAN_OPTIONS)") ./$(EMU_DIR)/test_gpu_emu
clean-emu:
	rm -rf build/emu build/emu-*

# ./train on the emulated kernels (device = cuda runs them): `make test-train-emu` runs the GPU part
# of tests/test_train.c with it (kill-and-resume on the CUDA code path)
$(EMU_DIR)/train_emu: build/obj/train.o $(EMU_OBJ) build/libsvlm.a
	$(CC) $(SVLM_CFLAGS) $(EMU_SAN_FLAGS) $^ -o $@ $(LDLIBS) -lstdc++
test-train-emu: $(EMU_DIR)/train_emu build/tests/test_train $(PROGS)
	SVLM_TEST_DEVICE=cuda SVLM_TEST_TRAIN=$(EMU_DIR)/train_emu ./build/tests/test_train

# the same program on the CPU emulation of the CUDA kernels (tests/gpu/emu): checks bench_step's
# CUDA path (bf16 buffers, memory accounting) without a GPU, e.g. --device cuda --preset tiny
$(EMU_DIR)/bench_step_emu: build/obj/bench/bench_step.o $(EMU_OBJ) build/libsvlm.a
	$(CC) $(SVLM_CFLAGS) $(EMU_SAN_FLAGS) $^ -o $@ $(LDLIBS) -lstdc++

clean:
	rm -rf build $(PROGS)

-include $(shell find build -name '*.d' 2>/dev/null)
