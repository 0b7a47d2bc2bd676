#!/bin/sh
# bench_cpu.sh: `make bench-cpu`: one training step of svlm (build/bench_step) against PyTorch +
# transformers + peft (scripts/bench_torch.py) on the CPU, same batch and weights, fp32, the runs
# alternating (svlm, torch, svlm, torch, ...) so that a change in the machine's load falls on both;
# then one table: ms/step (min and median over the runs of each run's mean step), the ratio of the
# medians, peak RSS, GFLOP/s, first-step losses, and the BLAS each side runs with its kernel.
#
#   sh bench/bench_cpu.sh            (make bench-cpu builds build/bench_step first)
#   environment: PYTHON (default python3; without torch, transformers and peft the torch runs are
#     skipped with a message), RUNS (alternating runs per row, default 5), ROWS (default
#     "mid:1:4 mid:2:4 reference:2:1", preset:stage:batch), THREADS (default: the cores online),
#     BENCH_DIR (batches, results, random models: default build/bench/cpu), BENCH_BIN (build/bench_step)
set -u
PYTHON=${PYTHON:-python3}
RUNS=${RUNS:-5}
ROWS=${ROWS:-"mid:1:4 mid:2:4 reference:2:1"}
THREADS=${THREADS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)}
DIR=${BENCH_DIR:-build/bench/cpu}
BIN=${BENCH_BIN:-build/bench_step}
mkdir -p "$DIR"
log=$DIR/bench.log
: > "$log"
say() { echo "bench-cpu: $*" | tee -a "$log"; }

[ -x "$BIN" ] || { say "$BIN not built (make build/bench_step)"; exit 1; }
have_torch=1
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    have_torch=0; why="$PYTHON not found"
elif ! "$PYTHON" -c "import torch, transformers, peft, safetensors" >/dev/null 2>&1; then
    have_torch=0; why="$PYTHON cannot import torch, transformers, peft and safetensors (see README: PyTorch comparison)"
fi
[ $have_torch = 1 ] || say "PyTorch runs skipped: $why; svlm alone"

# a number from a one-line JSON result file
jnum() { grep -o "\"$2\": *[-0-9.e+]*" "$1" 2>/dev/null | head -1 | sed 's/.*: *//'; }
# min and median of the numbers on stdin
stats() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) {print "- -"; exit} m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.0f %.0f\n", v[1], m}'; }

cpu=$(sed -n 's/^model name[^:]*: *//p' /proc/cpuinfo 2>/dev/null | head -1)
say "$(date -u '+%Y-%m-%d %H:%M UTC'), ${cpu:-unknown CPU}, $THREADS threads, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
say "svlm $(git rev-parse --short HEAD 2>/dev/null) ($(git status --short 2>/dev/null | wc -l) files changed), $RUNS alternating runs per row"
if [ $have_torch = 1 ]; then
    say "torch: $("$PYTHON" -c 'import torch, transformers, peft; c = torch.__config__.show(); import re; b = re.search(r"BLAS_INFO=(\w+)", c); print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "BLAS", b.group(1) if b else "?", "MKL" if torch.backends.mkl.is_available() else "")')"
fi

table=$DIR/table.txt
: > "$table"
fail=0
for row in $ROWS; do
    preset=$(echo "$row" | cut -d: -f1); stage=$(echo "$row" | cut -d: -f2); batch=$(echo "$row" | cut -d: -f3)
    steps=3; [ "$preset" = reference ] && steps=2
    tag=${preset}_s${stage}_b$batch
    batchf=$DIR/batch_$tag.safetensors
    rm -f "$DIR"/svlm_"$tag"_*.json "$DIR"/torch_"$tag"_*.json
    for r in $(seq "$RUNS"); do
        save=""; [ "$r" = 1 ] && save="--save-batch $batchf"
        say "$tag run $r/$RUNS: svlm"
        # shellcheck disable=SC2086
        OMP_NUM_THREADS=$THREADS "$BIN" --device cpu --preset "$preset" --stage "$stage" --batch "$batch" --steps $steps \
            --warmup 1 --phases 0 --models "build/bench/$preset" $save --result "$DIR/svlm_${tag}_$r.json" >> "$log" 2>&1 ||
            { say "$tag: svlm run $r FAILED (see $log)"; fail=1; }
        if [ $have_torch = 1 ] && [ -f "$batchf" ]; then
            say "$tag run $r/$RUNS: torch"
            "$PYTHON" scripts/bench_torch.py --batch "$batchf" --device cpu --threads "$THREADS" --steps $steps --warmup 1 \
                --result "$DIR/torch_${tag}_$r.json" >> "$log" 2>&1 || { say "$tag: torch run $r FAILED (see $log)"; fail=1; }
        fi
    done
    s=$(for f in "$DIR"/svlm_"$tag"_*.json; do jnum "$f" ms_mean; done | stats)
    t=$(for f in "$DIR"/torch_"$tag"_*.json; do jnum "$f" ms_mean; done | stats)
    sj=$(ls "$DIR"/svlm_"$tag"_*.json 2>/dev/null | head -1); tj=$(ls "$DIR"/torch_"$tag"_*.json 2>/dev/null | head -1)
    srss=$(for f in "$DIR"/svlm_"$tag"_*.json; do jnum "$f" rss_peak_bytes; done | sort -g | tail -1)
    trss=$(for f in "$DIR"/torch_"$tag"_*.json; do jnum "$f" peak_bytes; done | sort -g | tail -1)
    flops=$(jnum "$sj" model_flops)
    echo "$tag ${s% *} ${s#* } ${t% *} ${t#* } ${srss:--} ${trss:--} ${flops:--} $(jnum "$sj" loss_first) $(jnum "$tj" loss_first)" >> "$table"
    blas=$(grep -o '"blas": "[^"]*"' "$sj" 2>/dev/null | sed 's/"blas": "//; s/"$//')
done

echo | tee -a "$log"
[ -n "${blas:-}" ] && say "svlm: $blas"
awk 'function mib(x) { return x == "-" ? "-" : sprintf("%.0f", x / 1048576) }
     function gf(f, ms) { return (f == "-" || ms == "-") ? "-" : sprintf("%.1f", f / ms / 1e6) }
     BEGIN { print "| preset, stage, batch | svlm ms/step min / median | torch ms/step min / median | svlm speed vs torch (medians) | peak RSS MiB svlm / torch | GFLOP/s svlm / torch | first-step loss svlm / torch |"
             print "|---|---|---|---|---|---|---|" }
     { ratio = ($3 == "-" || $5 == "-") ? "-" : sprintf("%.2fx", $5 / $3)
       printf "| %s | %s / %s | %s / %s | %s | %s / %s | %s / %s | %s / %s |\n", $1, $2, $3, $4, $5, ratio, mib($6), mib($7), gf($8, $3), gf($8, $5), $9, ($10 == "" ? "-" : $10) }' "$table" | tee -a "$log"
say "everything above is in $log"
exit $fail
