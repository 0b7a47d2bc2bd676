#!/bin/sh
# tsan_ops.sh: the op tests of test_gpu on the CUDA emulator under ThreadSanitizer, as part of
# `make test`: every kernel's warp- and block-level barriers checked, a missing one reported as a
# data race (exit 66) whatever order the emulated threads ran in (tests/gpu/README.md, "Race
# detection"). Two processes side by side: the attention tests (the longest, ~3 min) and all the
# other op tests (~1.5 min). The model tests run the same kernels again at other shapes and are
# left to `make EMU_TSAN=1 test-gpu-emu` (~8 min). The CPU reference runs on one thread: libgomp is
# not instrumented. A machine where the TSan runtime cannot start at all (it needs a memory layout
# that some kernels' address randomisation breaks) counts a skip, said on one line; a race never does.
bin=${1:-build/emu-tsan/test_gpu_emu}
log_a=$(mktemp)
log_b=$(mktemp)
export OMP_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1"
"$bin" ops 'test_attention*' > "$log_a" 2>&1 &
pid_a=$!
"$bin" ops '!test_attention*' > "$log_b" 2>&1
rc_b=$?
wait $pid_a
rc_a=$?
cat "$log_a" "$log_b"
# the exit status that counts for one process (status, log): 0 for a runtime that could not start
verdict() {
    if [ "$1" -ne 0 ] && grep -q "FATAL: ThreadSanitizer" "$2" && ! grep -q '^\[ RUN' "$2"; then
        echo "tsan_ops: skipped: the ThreadSanitizer runtime could not start on this machine (see above)" >&2
        echo 0
    else
        echo "$1"
    fi
}
rc=$(verdict $rc_a "$log_a")
[ "$rc" -eq 0 ] && rc=$(verdict $rc_b "$log_b")
rm -f "$log_a" "$log_b"
exit $rc
