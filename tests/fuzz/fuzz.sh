#!/bin/sh
# fuzz.sh: the libFuzzer targets of tests/fuzz/ (built by the Makefile into build/fuzz/).
#   fuzz.sh check                 exit 0 when clang links libFuzzer (-fsanitize=fuzzer), else 1
#   fuzz.sh corpus                (re)makes the seed corpora build/fuzz/seeds/<target>/ from tests/fixtures
#   fuzz.sh run SECONDS BIN...    runs each target (FUZZ_JOBS at a time, default 2) for SECONDS on its corpus (build/fuzz/corpus/<target>,
#                                 seeded from the fixtures; what the fuzzer finds new is kept there);
#                                 one line per target with runs and coverage; exit 1 on any finding
# A finding leaves its input as build/fuzz/crash-<target>-* and the report in build/fuzz/<target>.log.
# fatal() is no finding: the harnesses catch it (tests/fuzz/fuzz_common.h). Leak detection is on.
set -u
FUZZ_CC=${FUZZ_CC:-clang}
B=build/fuzz
case "${1:-}" in
check)
    t=$(mktemp -d) || exit 1
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }\n' > "$t/f.c"
    "$FUZZ_CC" -fsanitize=fuzzer,address,undefined "$t/f.c" -o "$t/f" >/dev/null 2>&1
    rc=$?
    rm -rf "$t"
    exit $rc
    ;;
corpus)
    F=tests/fixtures
    S=$B/seeds
    rm -rf "$S"
    mkdir -p "$S/safetensors" "$S/tokenizer" "$S/llava" "$S/image" "$S/shards" "$S/config" "$S/hf_config" "$S/state"
    for f in $F/*.safetensors $F/*/model.safetensors $F/*/adapter_model.safetensors; do
        [ -f "$f" ] && cp "$f" "$S/safetensors/$(echo "$f" | tr / _)"
    done
    # tokenizer: even first byte = text to encode, odd = a tokenizer.json
    i=0
    for f in data/corpus/*.txt; do i=$((i + 1)); { printf '\000'; head -c 2000 "$f"; } > "$S/tokenizer/text$i"; done
    printf '\001' > "$S/tokenizer/x"; cat $F/templates/tokenizer.json >> "$S/tokenizer/x"
    { printf '\003'; cat $F/data/llm/tokenizer.json; } > "$S/tokenizer/data_llm"
    # llava: first byte: bit 0 JSON list, bits 1-2 the template
    for k in 0 1 2 3; do
        { printf "\\$(printf %o $((k * 2)))"; cat $F/data/train.jsonl; } > "$S/llava/jsonl$k"
        { printf "\\$(printf %o $((k * 2 + 1)))"; cat $F/data/train.json; } > "$S/llava/json$k"
    done
    # image: first byte = options, second = family and filter (cycled over the files)
    i=0
    for f in $F/images/*.png $F/images/*.jpg $F/data/images/*; do
        [ -f "$f" ] || continue
        [ "$(wc -c < "$f")" -gt 65536 ] && continue
        { printf '\006'; printf "\\$(printf %o $((i % 20)))"; cat "$f"; } > "$S/image/$(basename "$f")"
        i=$((i + 1))
    done
    # shards: meta.json, index.bin, shard-00000.zst of the fixtures' data, prepared by ./prepare
    if [ -x ./prepare ]; then
        d=$(mktemp -d)
        if ./prepare --data $F/data/train.jsonl --image-folder $F/data/images --llm $F/data/llm --template chatml \
            --out "$d/out" --quiet >/dev/null 2>&1; then
            { cat "$d/out/meta.json"; printf '\n@@@@\n'; cat "$d/out/index.bin"; printf '\n@@@@\n'; cat "$d/out/shard-00000.zst"; } > "$S/shards/fixture"
        fi
        rm -rf "$d"
    fi
    printf 'R' > "$S/shards/record"
    # config: the shipped configs
    for f in configs/*.conf; do cp "$f" "$S/config/"; done
    # hf_config: every config.json, preprocessor/adapter config and chat_template.json of the fixtures
    for f in $F/*/config.json $F/*/adapter_config.json $F/*/preprocessor_config.json $F/*/chat_template.json; do
        [ -f "$f" ] && cp "$f" "$S/hf_config/$(echo "$f" | tr / _)"
    done
    # inputs that once found a bug (tests/fuzz/regressions/<target>/): rerun by every run
    for d in tests/fuzz/regressions/*/; do
        [ -d "$d" ] && cp "$d"* "$S/$(basename "$d")/" 2>/dev/null
    done
    # state: the state.json a checkpoint at step 4 holds (as trainer/checkpoint_state.c writes it)
    cat > "$S/state/step4" <<'JSON'
{
	"format":	"svlm-checkpoint-1",
	"step":	4,
	"total_steps":	10,
	"data_epoch":	0,
	"data_index":	32,
	"rng":	["1", "2", "3", "18446744073709551615"],
	"world_size":	1,
	"metrics_bytes":	812,
	"skipped_steps":	0,
	"tokens":	2048,
	"data":	"64 samples, seed 7, batch_size 4, global_batch 8, max_seq_len 96, packing 0",
	"model":	{"stage": 2, "connector": "ldp"}
}
JSON
    exit 0
    ;;
run)
    secs=$2
    shift 2
    [ -d $B/seeds ] || sh "$0" corpus || exit 1
    jobs=${FUZZ_JOBS:-2}  # targets run side by side (each one process)
    run_one() {
        t=$(basename "$1" | sed 's/^fuzz_//')
        mkdir -p $B/corpus/$t
        start=$(date +%s)
        # -rss_limit_mb: a parser must not need more for one input of at most -max_len bytes
        "$1" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 \
            -artifact_prefix=$B/crash-$t- $B/corpus/$t $B/seeds/$t > $B/$t.log 2>&1
        echo $? > $B/$t.rc
        echo $(( $(date +%s) - start )) > $B/$t.secs
    }
    k=0
    for bin in "$@"; do
        run_one "$bin" &
        k=$((k + 1))
        [ $((k % jobs)) -eq 0 ] && wait
    done
    wait
    fail=0
    for bin in "$@"; do
        t=$(basename "$bin" | sed 's/^fuzz_//')
        rc=$(cat $B/$t.rc)
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' $B/$t.log | grep -o '[0-9]*$')
        cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' $B/$t.log | tail -1)
        status=ok
        if [ "$rc" != 0 ]; then status=FAIL; fail=1; fi
        printf '%-4s fuzz_%-14s %8s runs %4ss  %s\n' $status "$t" "${runs:-?}" "$(cat $B/$t.secs)" "$cov"
        if [ "$rc" != 0 ]; then grep -A25 '==ERROR\|SUMMARY\|Test unit written\|deadly signal' $B/$t.log | head -60 | sed 's/^/    | /'; fi
    done
    exit $fail
    ;;
*)
    echo "usage: $0 check | corpus | run SECONDS BIN..." >&2
    exit 2
    ;;
esac
