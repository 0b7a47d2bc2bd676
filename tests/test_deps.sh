#!/bin/sh
# test_deps.sh: the dependency check (scripts/install_deps.sh) against prepared environments where
# a header exists but its library does not, and the Python scripts' module checks. Every case
# runs --check, which never installs. Output in cmocka's format so tests/run.sh counts the cases.
cd "$(dirname "$0")/.." || exit 1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/svlm-test-deps.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0; skip=0; run=0
CC=${CC:-cc}

# expect NAME WANT_RC PATTERN...: the last command's exit status and output ($tmp/out) against the expectation
start() { run=$((run + 1)); name=$1; echo "[ RUN      ] $name"; }
ok() { pass=$((pass + 1)); echo "[       OK ] $name"; }
bad() { fail=$((fail + 1)); echo "    $*"; sed 's/^/    | /' "$tmp/out"; echo "[  FAILED  ] $name"; }
skipped() { skip=$((skip + 1)); echo "    skipped: $*"; echo "[  SKIPPED ] $name"; }
check() {  # check RC WANT_RC PATTERN [PATTERN...]: every pattern must be in the output
    rc=$1; want=$2; shift 2
    [ "$rc" = "$want" ] || { bad "exit status $rc, expected $want"; return; }
    for p in "$@"; do grep -q -- "$p" "$tmp/out" || { bad "output lacks: $p"; return; }; done
    ok
}
deps_check() { CUDA=0 sh scripts/install_deps.sh --check "$@" >"$tmp/out" 2>&1; }

# 1. A header in a temporary include dir, its library nowhere on the link path: the package that
#    provides it is reported, and nothing else (this machine has the real libraries).
start header_without_library
mkdir -p "$tmp/inc1"
printf 'void cblas_sgemm(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int);\n' > "$tmp/inc1/fake_cblas.h"
DEPS_TABLE="fakeblas | svlm-test-fakeblas-dev | - | -lsvlm_test_fakeblas | fake_cblas.h | cblas_sgemm | - | lib" \
    CFLAGS="-I$tmp/inc1" deps_check
rc=$?
if grep -q "install_deps: openblas\|install_deps: cjson\|install_deps: cmocka" "$tmp/out"; then
    bad "real libraries reported missing: run sh scripts/install_deps.sh first"
else
    check $rc 1 "fakeblas: -lsvlm_test_fakeblas does not link" "cannot find -lsvlm_test_fakeblas" \
        "missing Debian packages: svlm-test-fakeblas-dev"
fi

# 2. The header missing altogether is reported as such, with its package.
start header_missing
DEPS_TABLE="fakezip | svlm-test-fakezip-dev | - | -lsvlm_test_fakezip | svlm_no_such_header.h | fakezip_open | - | lib" deps_check
check $? 1 "header <svlm_no_such_header.h> not found" "svlm-test-fakezip-dev"

# 3. A cblas.h that is not OpenBLAS's found first (netlib's reference BLAS declares cblas_sgemm
#    too): refused, naming the file found, so the build cannot mix one BLAS's header with another.
start netlib_cblas_first
mkdir -p "$tmp/inc3"
printf '/* a reference-BLAS cblas.h: the calls, no OPENBLAS_VERSION */\n' > "$tmp/inc3/cblas.h"
printf 'void cblas_sgemm(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int);\n' >> "$tmp/inc3/cblas.h"
CFLAGS="-I$tmp/inc3" deps_check
check $? 1 "found first is $tmp/inc3/cblas.h, which does not define OPENBLAS_VERSION" "libopenblas-dev"

# hidden DIRS -- LIB CMD...: runs CMD in a private mount namespace where each of DIRS is an empty
# tmpfs (the machine's files are untouched), after checking that -lLIB no longer links there.
# Exit 90/91/92: no namespace here / cannot mount / LIB still links (the caller skips).
hidden() {
    dirs=""; while [ "$1" != -- ]; do dirs="$dirs $1"; shift; done; shift
    lib=$1; shift
    { for d in $dirs; do echo "mount -t tmpfs none '$d' || exit 91"; done
      echo "printf 'int main(void){return 0;}\n' > '$tmp/p.c'"
      echo "if $CC '$tmp/p.c' -o '$tmp/p' -l$lib 2>/dev/null; then exit 92; fi"
      echo 'exec "$@"'; } > "$tmp/hide.sh"
    if unshare -m true 2>/dev/null; then unshare -m sh "$tmp/hide.sh" "$@"
    elif unshare -rm true 2>/dev/null; then unshare -rm sh "$tmp/hide.sh" "$@"
    else return 90; fi
}
# the directory that holds the file -lLIB links against, found the way the linker looks
lib_dir() {
    printf 'int main(void){return 0;}\n' > "$tmp/q.c"
    f=$($CC "$tmp/q.c" -o "$tmp/q" -l"$1" -Wl,--trace 2>/dev/null | grep "lib$1\.so" | head -1)
    [ -n "$f" ] && dirname "$f"
}
hidden_check() {  # hidden_check WANT_RC PATTERN...: the verdict for a hidden() run whose status is $rc
    case $rc in
        90) skipped "mount namespaces not allowed here (unshare -m)" ;;
        91) skipped "cannot mount in the namespace" ;;
        92) skipped "the library still links with its directories hidden" ;;
        *) check $rc "$@" ;;
    esac
}

# 4. The real case of a fresh Debian machine: OpenBLAS's cblas.h is on the include path but
#    OpenBLAS itself is not installed (Debian's OpenBLAS directories hidden).
start openblas_header_without_openblas
multiarch=$($CC -print-multiarch 2>/dev/null)
ob_inc=$(pkg-config --variable=includedir openblas 2>/dev/null)
ob_dirs=$(ls -d /usr/lib/"$multiarch"/openblas-* /usr/include/"$multiarch"/openblas-* 2>/dev/null)
if [ -z "$ob_inc" ] || [ ! -f "$ob_inc/cblas.h" ] || [ -z "$ob_dirs" ]; then
    skipped "no Debian OpenBLAS layout here (pkg-config openblas, /usr/lib/$multiarch/openblas-*)"
else
    mkdir -p "$tmp/inc4"
    cp "$ob_inc"/cblas.h "$ob_inc"/openblas_config.h "$tmp/inc4/"
    # shellcheck disable=SC2086
    CFLAGS="-I$tmp/inc4" CUDA=0 hidden $ob_dirs -- openblas sh scripts/install_deps.sh --check >"$tmp/out" 2>&1
    rc=$?
    hidden_check 1 "openblas: .*-lopenblas does not link: cannot find -lopenblas" "missing Debian packages: libopenblas-dev"
fi

# 5. This machine, as prepared: everything compiles and links, and install mode (nothing to
#    install) writes a config whose flags are the probes'.
start prepared_machine_passes
deps_check
check $? 0 "every library compiles and links"
start config_written
CUDA=0 sh scripts/install_deps.sh --config "$tmp/config.mk" >"$tmp/out" 2>&1
rc=$?
cat "$tmp/config.mk" >> "$tmp/out" 2>/dev/null
check $rc 0 "^DEPS_LIBS := .*-lopenblas .*-lcjson .*-lpcre2-8" "^TEST_LIBS := -lcmocka" "^HAVE_CUDA := 0" "^CUDA_WHY := CUDA=0"

# 6. nvcc present but the CUDA libraries missing (a toolkit with only the compiler; the library
#    directories hidden): a warning and a CPU-only build with CUDA=auto, an error with CUDA=1.
start cuda_libraries_missing
nvcc=$(command -v "${NVCC:-nvcc}")
if [ -z "$nvcc" ]; then
    skipped "no nvcc here"
else
    # CUDA images set LIBRARY_PATH to the toolkit's libraries and link them into /usr/local/lib*
    cuda_dirs="$(readlink -f "$(dirname "$nvcc")/../lib64") $(unset LIBRARY_PATH; lib_dir cublasLt) $(unset LIBRARY_PATH; lib_dir cudart)"
    cuda_dirs=$(echo $cuda_dirs | tr ' ' '\n' | sort -u | tr '\n' ' ')
    # shellcheck disable=SC2086
    (unset LIBRARY_PATH; CUDA=auto hidden $cuda_dirs -- cublasLt sh scripts/install_deps.sh --check) >"$tmp/out" 2>&1
    rc=$?
    hidden_check 0 "warning: nvcc is here but the CUDA libraries do not link" "Building the CPU backend only" "libcublas-dev-"
    start cuda_required
    # shellcheck disable=SC2086
    (unset LIBRARY_PATH; CUDA=1 hidden $cuda_dirs -- cublasLt sh scripts/install_deps.sh --check) >"$tmp/out" 2>&1
    rc=$?
    hidden_check 1 "nvcc is here but the CUDA libraries do not link"
fi

# 7. Python scripts name the modules they lack (and how to get them) before doing anything; -S
#    hides site-packages, so torch and numpy are missing whatever this machine has.
for script in bench_torch.py make_fixtures.py check_export.py; do
    start "python_modules_$script"
    if ! command -v python3 >/dev/null 2>&1; then skipped "no python3"; continue; fi
    python3 -E -S "scripts/$script" --check-deps >"$tmp/out" 2>&1
    check $? 1 "$script: missing Python modules: .*torch" "pip install -r scripts/requirements.txt"
done

echo "[==========] $run test(s) run."
echo "[  PASSED  ] $pass test(s)."
[ $skip = 0 ] || echo "[  SKIPPED ] $skip test(s)."
[ $fail = 0 ] || { echo "[  FAILED  ] $fail test(s)."; exit 1; }
