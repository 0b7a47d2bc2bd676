#!/bin/sh
# run.sh: runs every test program given, prints one line per program and a summary; exit 1 if any failed.
# the same OpenMP wait policy the programs choose (common/util.h: openmp_prefer_passive)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
# the asan_test_* programs: undefined behaviour fails the program instead of a line in its log
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
pass=0; fail=0; ntests=0; failed=""
mkdir -p build/test-logs
for t in "$@"; do
    name=$(basename "$t")
    log=build/test-logs/$name.log
    start=$(date +%s)
    if "$t" >"$log" 2>&1; then
        status=ok; pass=$((pass + 1))
    else
        status=FAIL; fail=$((fail + 1)); failed="$failed $name"
    fi
    n=$(grep -o '^\[==========\] [0-9]* test(s) run' "$log" | awk '{s += $2} END {print s + 0}')
    ntests=$((ntests + n))
    printf '%-4s %-40s %4d tests %4ds\n' "$status" "$name" "$n" $(( $(date +%s) - start ))
    if [ $status = FAIL ]; then sed 's/^/    | /' "$log" | tail -40; fi
done
echo "summary: $pass programs passed, $fail failed, $ntests tests in all"
[ $fail -eq 0 ] || { echo "failed:$failed"; exit 1; }
