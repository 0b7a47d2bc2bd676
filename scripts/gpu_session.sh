#!/bin/sh
# gpu_session.sh: what a lent GPU machine should run, split into calls that fit the device tool's
# 10-minute limit, every log written to $OUT (the device keeps nothing). Here, first:
#     sh scripts/gpu_deps.sh download                  # the C libraries as .debs (ignored folder)
# then one device call per phase, each with carry = [".debs"]:
#     sh scripts/gpu_session.sh check   # build; test-gpu: ops, HF fixtures, ./train learning,
#                                       # kill-and-resume, memory plan, NCCL world 1 against no
#                                       # Dist; the cuDNN attention (SVLM_ATTN=cudnn) against the
#                                       # CPU and WMMA, required to run; op timings incl. cuDNN
#                                       # (~7 min)
#     sh scripts/gpu_session.sh bench   # make bench: svlm vs PyTorch at the reference shapes,
#                                       # stages 1 and 2; the memory plan there; stage 2 on the
#                                       # cuDNN attention, then on the FMA attention (~9 min)
#     sh scripts/gpu_session.sh sanitize  # compute-sanitizer over the op tests: memcheck (bad
#                                       # accesses), racecheck and synccheck (shared-memory races,
#                                       # divergent barriers) on the attention kernels (~8 min; when
#                                       # device time is left)
# Each step runs under its own timeout so a hang still leaves the earlier logs. Exit status: the
# number of steps that failed.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-build/gpu-session}"
mkdir -p "$OUT"
eval "$(sh scripts/gpu_deps.sh unpack)" || exit 1
failed=0
step() {  # step NAME SECONDS command...: runs it, log in $OUT/NAME.log, one summary line
    name=$1 secs=$2
    shift 2
    start=$(date +%s)
    timeout "$secs" sh -c "$*" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "gpu_session: $name: exit $rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.log"
    [ $rc -eq 0 ] || { failed=$((failed + 1)); tail -30 "$OUT/$name.log"; }
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  nvcc --version | tail -2; echo "svlm $(git rev-parse --short HEAD 2>/dev/null)"; } > "$OUT/machine.log" 2>&1
cat "$OUT/machine.log"
case "${1:-}" in
check)
    step build 240 "make -j16 all build/tests/gpu/test_gpu build/tests/test_train build/tests/test_dist build/bench_step"
    grep -E '^(HAVE_CUDNN|CUDNN_WHY)' build/config.mk | tee -a "$OUT/machine.log"
    step test-gpu-model 120 "./build/tests/gpu/test_gpu model"
    step test-gpu-ops 120 "./build/tests/gpu/test_gpu ops '!test_attention_cudnn'"
    # cuDNN fused attention (kernels/cuda/attention_cudnn.cu): forward and backward against the CPU
    # and the WMMA kernels, determinism; must run on cuDNN (no silent fallback), so it fails when
    # cuDNN was not built or declined a shape (its stderr line says why)
    step test-gpu-cudnn 240 "SVLM_REQUIRE_CUDNN=1 ./build/tests/gpu/test_gpu ops test_attention_cudnn"
    step op-timings 90 "./build/tests/gpu/test_gpu bench"
    # NCCL with one rank (torchrun-style launch, no mpirun needed) equals the run without Dist
    step test-dist-cuda 120 "SVLM_TEST_DEVICE=cuda ./build/tests/test_dist"
    # last: the longest, and what is left of the call's 10 minutes after the rest
    step test-train-cuda 240 "SVLM_TEST_DEVICE=cuda ./build/tests/test_train"
    ;;
bench)
    step bench 480 "make -j16 bench"
    cp build/bench/reference/*.json "$OUT/" 2>/dev/null
    step plan-reference 60 "./build/bench_step --device cuda --preset reference --stage 2 --plan-only --models build/bench/reference"
    # the step time with cuDNN's fused attention against the WMMA default of the bench step above
    step bench-attn-cudnn 100 "SVLM_ATTN=cudnn ./build/bench_step --device cuda --preset reference --stage 2 --steps 5 --models build/bench/reference"
    step bench-attn-fma 100 "SVLM_ATTN=fma ./build/bench_step --device cuda --preset reference --stage 2 --steps 5 --models build/bench/reference"
    ;;
sanitize)
    step build 240 "make -j16 build/tests/gpu/test_gpu"
    step memcheck 150 "compute-sanitizer --tool memcheck --error-exitcode 1 ./build/tests/gpu/test_gpu ops"
    step racecheck 120 "compute-sanitizer --tool racecheck --error-exitcode 1 ./build/tests/gpu/test_gpu ops 'test_attention*'"
    step synccheck 60 "compute-sanitizer --tool synccheck --error-exitcode 1 ./build/tests/gpu/test_gpu ops 'test_attention'"
    ;;
*)
    echo "usage: sh scripts/gpu_session.sh check | bench | sanitize" >&2
    exit 2
    ;;
esac
exit $failed
