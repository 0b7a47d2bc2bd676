#!/bin/sh
# tsan_attention.sh: the attention tests of test_gpu on the CUDA emulator under ThreadSanitizer, as
# part of `make test`: the attention kernels' warp- and block-level barriers are the easiest to get
# wrong, and a missing one is reported as a data race (exit 66) whatever order the emulated threads
# ran in (tests/gpu/README.md, "Race detection"). The CPU reference runs on one thread: libgomp is
# not instrumented. A machine where the TSan runtime cannot start at all (it needs a memory layout
# that some kernels' address randomisation breaks) counts a skip, said on one line; a race never does.
bin=${1:-build/emu-tsan/test_gpu_emu}
log=$(mktemp)
OMP_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1" "$bin" ops 'test_attention*' > "$log" 2>&1
rc=$?
cat "$log"
if [ $rc -ne 0 ] && grep -q "FATAL: ThreadSanitizer" "$log" && ! grep -q '^\[ RUN' "$log"; then
    echo "tsan_attention: skipped: the ThreadSanitizer runtime could not start on this machine (see above)"
    rc=0
fi
rm -f "$log"
exit $rc
