#!/bin/sh
# install_deps.sh: checks that every library svlm builds against compiles AND links with the flags
# the build will use, installs the Debian packages that provide what is missing, and writes those
# flags to build/config.mk, which the Makefile includes (so the build uses exactly what was checked).
#
#   sh scripts/install_deps.sh            check, install what is missing (root or sudo), write config.mk
#   sh scripts/install_deps.sh --check    check only: name the packages that are missing, exit 1 if any
#   options: --config FILE (default build/config.mk)
#   environment: CC, CXX, CFLAGS, LDFLAGS (added to every probe as the Makefile adds them), NVCC,
#     CUDA=auto|0|1 (auto: the CUDA backend when nvcc and its libraries work, else CPU only with a
#     warning; 1: an error instead), CUDNN=auto|0 (auto: cuDNN's fused attention, SVLM_ATTN=cudnn,
#     when cuDNN 9 links next to CUDA; never required), SKIP_DEPS=1 (no check: write config.mk from pkg-config alone,
#     for machines prepared by hand, e.g. scripts/gpu_deps.sh), DEPS_TABLE (extra rows, for tests).
#
# A probe is a tiny C program that includes the header and takes the address of the library's
# symbols, compiled and linked: a header alone proves nothing (Debian's netlib libblas-dev ships a
# cblas.h without OpenBLAS). Machines that have the libraries from elsewhere (a module system,
# another distribution) pass untouched; only what fails is looked up as a Debian package.
set -eu

mode=install
config=build/config.mk
while [ $# -gt 0 ]; do
    case $1 in
        --check) mode=check ;;
        --config) config=$2; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install_deps: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

CC=${CC:-cc}
CXX=${CXX:-c++}
NVCC=${NVCC:-nvcc}
CUDA=${CUDA:-auto}
USER_CFLAGS=${CFLAGS:-}
USER_LDFLAGS=${LDFLAGS:-}
case $CUDA in auto|0|1) ;; *) echo "install_deps: CUDA=$CUDA: expected auto, 0 or 1" >&2; exit 2 ;; esac

# What the build links. One row per library:
#   name | Debian package(s) | pkg-config module | link flags | header | symbols the probe takes | macro the header must define | role
# role: lib (every program), test (the test programs). The pkg-config module, when the machine has
# it, contributes its include and library directories (OpenBLAS's own cblas.h lives in
# /usr/include/<triplet>/openblas-pthread on Debian, next to netlib's in /usr/include/<triplet>).
TABLE="
openblas | libopenblas-dev | openblas | -lopenblas | cblas.h | cblas_sgemm openblas_get_config | OPENBLAS_VERSION | lib
cjson | libcjson-dev | libcjson | -lcjson | cjson/cJSON.h | cJSON_Parse | - | lib
png | libpng-dev | libpng | -lpng | png.h | png_create_read_struct | - | lib
jpeg | libjpeg-dev | libjpeg | -ljpeg | jpeglib.h | jpeg_std_error | - | lib
zstd | libzstd-dev | libzstd | -lzstd | zstd.h | ZSTD_decompress | - | lib
pcre2 | libpcre2-dev | libpcre2-8 | -lpcre2-8 | pcre2.h | pcre2_compile pcre2_match | - | lib
cmocka | libcmocka-dev | cmocka | -lcmocka | cmocka.h | _cmocka_run_group_tests | - | test
mpi | libopenmpi-dev | ompi-c | -lmpi | mpi.h | MPI_Init MPI_Alltoallv | - | lib
${DEPS_TABLE:-}"

work=$(mktemp -d "${TMPDIR:-/tmp}/svlm-deps.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

say() { echo "install_deps: $*" >&2; }
trim() { echo "$1" | sed 's/^ *//; s/ *$//'; }
has_pc() { [ "$1" != - ] && command -v pkg-config >/dev/null 2>&1 && pkg-config --exists "$1" 2>/dev/null; }

# ---- tools: a C and C++ compiler (the CUDA emulator of the tests is C++), make, pkg-config, and
# mpirun (data-parallel runs; the tests launch several ranks with it)
tools_missing() {
    m=""
    command -v mpirun >/dev/null 2>&1 || m="$m openmpi-bin"
    command -v "$CC" >/dev/null 2>&1 || m="$m build-essential"
    command -v "$CXX" >/dev/null 2>&1 || m="$m build-essential"
    command -v make >/dev/null 2>&1 || m="$m make"
    command -v pkg-config >/dev/null 2>&1 || m="$m pkg-config"
    echo $m | tr ' ' '\n' | sort -u | tr '\n' ' '
}

# ---- the flags every probe (and then the Makefile) uses: the pkg-config directories of all rows
collect_flags() {
    DEPS_CFLAGS=""; DEPS_LDIRS=""; DEPS_LIBS=""; TEST_LIBS=""
    while IFS='|' read -r name pkgs pc libs header syms macro role; do
        name=$(trim "$name"); [ -n "$name" ] || continue
        pc=$(trim "$pc"); libs=$(trim "$libs"); role=$(trim "$role")
        if has_pc "$pc"; then
            DEPS_CFLAGS="$DEPS_CFLAGS $(pkg-config --cflags-only-I "$pc")"
            DEPS_LDIRS="$DEPS_LDIRS $(pkg-config --libs-only-L "$pc")"
        fi
        case $role in test) TEST_LIBS="$TEST_LIBS $libs" ;; *) DEPS_LIBS="$DEPS_LIBS $libs" ;; esac
    done <<EOF
$TABLE
EOF
    # one copy of each directory, first occurrence kept (the search order stays the table's)
    DEPS_CFLAGS=$(echo $DEPS_CFLAGS | tr ' ' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' ')
    DEPS_LDIRS=$(echo $DEPS_LDIRS | tr ' ' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' ')
    DEPS_LIBS="$(echo $DEPS_LDIRS $DEPS_LIBS) -lm -lpthread"
    TEST_LIBS=$(echo $TEST_LIBS)
}

# probe NAME HEADER SYMBOLS MACRO LIBS: compiles and links; on failure leaves the reason in $work/NAME.why
probe() {
    src=$work/$1.c
    {
        printf '#include <stddef.h>\n#include <stdarg.h>\n#include <setjmp.h>\n#include <stdio.h>\n#include <stdint.h>\n'
        printf '#define PCRE2_CODE_UNIT_WIDTH 8\n#include <%s>\n' "$2"
        if [ "$4" != - ]; then
            printf '#ifndef %s\n#error "%s: %s is not defined"\n#endif\n' "$4" "$2" "$4"
        fi
        printf 'int main(void) {\n    void *volatile p[] = {'
        for s in $3; do printf ' (void *)&%s,' "$s"; done
        printf ' 0 };\n    return p[0] == 0;\n}\n'
    } > "$src"
    # shellcheck disable=SC2086
    if ! $CC $USER_CFLAGS -std=gnu11 -fopenmp $DEPS_CFLAGS -c "$src" -o "$work/$1.o" 2>"$work/$1.err"; then
        if grep -q "$2: No such file" "$work/$1.err"; then
            echo "header <$2> not found" > "$work/$1.why"
        elif [ "$4" != - ] && grep -q "$4 is not defined" "$work/$1.err"; then
            found=$($CC $USER_CFLAGS -std=gnu11 $DEPS_CFLAGS -M "$src" 2>/dev/null | tr ' \\' '\n\n' | grep "/$2\$" | head -1)
            echo "<$2> found first is ${found:-?}, which does not define $4 (not the library's own header)" > "$work/$1.why"
        else
            echo "<$2> does not compile: $(grep -m1 -i 'error' "$work/$1.err")" > "$work/$1.why"
        fi
        return 1
    fi
    # shellcheck disable=SC2086
    if ! $CC $USER_CFLAGS -fopenmp "$work/$1.o" -o "$work/$1.bin" $USER_LDFLAGS $5 2>"$work/$1.err"; then
        echo "$(echo $5) does not link: $(grep -m1 -E 'cannot find|undefined reference|error' "$work/$1.err" | sed 's/^.*ld: //')" > "$work/$1.why"
        return 1
    fi
    return 0
}

# check_libs: probes every row; sets MISSING_PKGS and prints one line per failure to $work/report
check_libs() {
    collect_flags
    MISSING_PKGS=""; : > "$work/report"
    while IFS='|' read -r name pkgs pc libs header syms macro role; do
        name=$(trim "$name"); [ -n "$name" ] || continue
        pkgs=$(trim "$pkgs"); pc=$(trim "$pc"); libs=$(trim "$libs"); header=$(trim "$header")
        syms=$(trim "$syms"); macro=$(trim "$macro")
        ldirs=""; has_pc "$pc" && ldirs=$(pkg-config --libs-only-L "$pc")
        if ! probe "$name" "$header" "$syms" "$macro" "$ldirs $libs"; then
            echo "$name: $(cat "$work/$name.why") -> Debian package $pkgs" >> "$work/report"
            MISSING_PKGS="$MISSING_PKGS $pkgs"
        fi
    done <<EOF
$TABLE
EOF
    MISSING_PKGS=$(echo $MISSING_PKGS | tr ' ' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' ')
}

# ---- CUDA: nvcc present is not enough; the runtime, cuBLAS(Lt) and NCCL must link and load
# (the programs carry an rpath to the toolkit's libraries, which ld.so may not search)
cuda_flags() {
    CUDA_HOME=$(dirname "$(dirname "$(command -v "$NVCC")")")
    CUDA_LIBS="-L$CUDA_HOME/lib64 -Wl,-rpath,$CUDA_HOME/lib64 -lcudart -lcublasLt -lcublas -lnccl -lstdc++"
}
cuda_probe() {
    cuda_flags
    cat > "$work/cuda.cu" <<'EOF'
#include <cuda_runtime.h>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <nccl.h>
int main() {
    int n = 0, v = 0;
    cudaGetDeviceCount(&n);  // fails without a GPU, which is fine: this checks linking and loading
    ncclGetVersion(&v);
    return cublasLtGetVersion() == 0 || cublasGetCudartVersion() == 0 || v == 0;
}
EOF
    if ! "$NVCC" -std=c++17 -c "$work/cuda.cu" -o "$work/cuda.o" 2>"$work/cuda.err"; then
        CUDA_WHY="nvcc cannot compile against the CUDA headers: $(grep -m1 -i error "$work/cuda.err")"; return 1
    fi
    # shellcheck disable=SC2086
    if ! $CC "$work/cuda.o" -o "$work/cuda.bin" $USER_LDFLAGS $CUDA_LIBS 2>"$work/cuda.err"; then
        CUDA_WHY="the CUDA libraries do not link: $(grep -m1 -E 'cannot find|undefined' "$work/cuda.err" | sed 's/^.*ld: //')"; return 1
    fi
    if ! "$work/cuda.bin" 2>"$work/cuda.err" && grep -q "shared librar" "$work/cuda.err"; then
        CUDA_WHY="the CUDA libraries do not load: $(head -1 "$work/cuda.err")"; return 1
    fi
    return 0
}

# ---- cuDNN (optional: SVLM_ATTN=cudnn, kernels/cuda/attention_cudnn.cu): its header and library
# next to the CUDA ones, version 9 or newer (the backend graph API). Found: -lcudnn joins
# CUDA_LIBS and the .cu files compile with -DSVLM_HAVE_CUDNN; not found (or CUDNN=0): the cuDNN
# path is compiled out and SVLM_ATTN=cudnn says "not built" and runs the WMMA kernels. Not installed
# from here (NVIDIA's repository names it per CUDA release: libcudnn9-dev-cuda-12 ...).
cudnn_probe() {
    cat > "$work/cudnn.cu" <<'EOF2'
#include <cudnn.h>
#if CUDNN_MAJOR < 9
#error "cuDNN 9 or newer needed (the backend graph API of fused attention)"
#endif
int main() {
    cudnnBackendDescriptor_t d = 0;
    cudnnBackendCreateDescriptor(CUDNN_BACKEND_TENSOR_DESCRIPTOR, &d);  // needs no GPU
    return cudnnGetVersion() == 0;
}
EOF2
    if ! "$NVCC" -std=c++17 -c "$work/cudnn.cu" -o "$work/cudnn.o" 2>"$work/cudnn.err"; then
        CUDNN_WHY="no usable cudnn.h: $(grep -m1 -i error "$work/cudnn.err")"; return 1
    fi
    # shellcheck disable=SC2086
    if ! $CC "$work/cudnn.o" -o "$work/cudnn.bin" $USER_LDFLAGS $CUDA_LIBS -lcudnn 2>"$work/cudnn.err"; then
        CUDNN_WHY="libcudnn does not link: $(grep -m1 -E 'cannot find|undefined' "$work/cudnn.err" | sed 's/^.*ld: //')"; return 1
    fi
    if ! "$work/cudnn.bin" 2>"$work/cudnn.err" && grep -q "shared librar" "$work/cudnn.err"; then
        CUDNN_WHY="libcudnn does not load: $(head -1 "$work/cudnn.err")"; return 1
    fi
    return 0
}

# the NVIDIA packages for the libraries, named after nvcc's release (13.0 -> 13-0)
cuda_packages() {
    v=$("$NVCC" --version 2>/dev/null | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1-\2/p')
    echo "cuda-cudart-dev-$v libcublas-dev-$v libnccl-dev"
}

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        say "missing: $* (not a Debian system: install their equivalents, or point CFLAGS/LDFLAGS at them)"; return 1
    fi
    if [ "$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        say "missing: $* (run as root, or: apt-get install -y $*)"; return 1
    fi
    say "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "${APT_UPDATED:-}" ]; then
        $SUDO apt-get update -qq >"$work/apt.log" 2>&1 || { say "apt-get update failed: $(tail -1 "$work/apt.log")"; return 1; }
        APT_UPDATED=1
    fi
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends "$@" >"$work/apt.log" 2>&1 ||
        { say "apt-get install $* failed: $(grep -m1 -E '^E:' "$work/apt.log" || tail -1 "$work/apt.log")"; return 1; }
}

write_config() {
    mkdir -p "$(dirname "$config")"
    cat > "$config.tmp" <<EOF
# $config: written by scripts/install_deps.sh ($1); \`make deps\` checks again and rewrites it.
# The flags below are the ones the dependency probes compiled and linked with.
CONFIG_KEY := $CONFIG_KEY_IN
DEPS_CFLAGS := $(echo $DEPS_CFLAGS)
DEPS_LIBS := $DEPS_LIBS
TEST_LIBS := $TEST_LIBS
HAVE_CUDA := $HAVE_CUDA
CUDA_HOME := $CUDA_HOME
CUDA_LIBS := $CUDA_LIBS
CUDA_WHY := $CUDA_WHY
HAVE_CUDNN := $HAVE_CUDNN
CUDNN_NVFLAGS := $CUDNN_NVFLAGS
CUDNN_WHY := $CUDNN_WHY
EOF
    mv "$config.tmp" "$config"
}

CONFIG_KEY_IN=${CONFIG_KEY:-}
HAVE_CUDA=0; CUDA_HOME=; CUDA_LIBS=; CUDA_WHY=
HAVE_CUDNN=0; CUDNN_NVFLAGS=; CUDNN_WHY="not probed"; CUDNN=${CUDNN:-auto}

if [ "${SKIP_DEPS:-0}" = 1 ]; then
    collect_flags
    if [ "$CUDA" != 0 ] && command -v "$NVCC" >/dev/null 2>&1; then
        HAVE_CUDA=1; cuda_flags
        # cuDNN is optional, so its probe (a second's compile) runs even here
        if [ "$CUDNN" = 0 ]; then
            CUDNN_WHY="CUDNN=0"
        elif cudnn_probe; then
            HAVE_CUDNN=1; CUDNN_NVFLAGS=-DSVLM_HAVE_CUDNN; CUDNN_WHY=; CUDA_LIBS="$CUDA_LIBS -lcudnn"
        fi
    fi
    write_config "SKIP_DEPS=1: not checked"
    exit 0
fi

# 1. tools
missing=$(tools_missing)
if [ -n "$(echo $missing)" ]; then
    if [ $mode = check ]; then say "missing tools -> Debian packages: $missing"; exit 1; fi
    apt_install $missing || exit 1
fi

# 2. libraries
check_libs
if [ -n "$(echo $MISSING_PKGS)" ]; then
    sed 's/^/install_deps: /' "$work/report" >&2
    if [ $mode = check ]; then say "missing Debian packages: $MISSING_PKGS"; exit 1; fi
    apt_install $MISSING_PKGS || exit 1
    check_libs
    if [ -n "$(echo $MISSING_PKGS)" ]; then
        sed 's/^/install_deps: still failing after the install: /' "$work/report" >&2
        say "if another copy of a header comes first (CFLAGS -I, /usr/local/include), put the library's own first"
        exit 1
    fi
fi

# 3. CUDA (optional unless CUDA=1)
if [ "$CUDA" != 0 ]; then
    if ! command -v "$NVCC" >/dev/null 2>&1; then
        CUDA_WHY="nvcc not found"
        [ "$CUDA" = 1 ] && { say "CUDA=1 but $NVCC is not on PATH"; exit 1; }
    elif cuda_probe; then
        HAVE_CUDA=1
    else
        pk=$(cuda_packages)
        if [ $mode = install ] && command -v apt-cache >/dev/null 2>&1 &&
           [ -n "$(apt-cache policy $pk 2>/dev/null | grep 'Candidate: [0-9]')" ] &&
           apt_install $pk && cuda_probe; then
            HAVE_CUDA=1
        else
            msg="nvcc is here but $CUDA_WHY; the NVIDIA packages are $pk (NVIDIA's CUDA repository)"
            if [ "$CUDA" = 1 ]; then say "$msg"; exit 1; fi
            say "warning: $msg. Building the CPU backend only (CUDA=0 silences this, CUDA=1 makes it an error)"
            CUDA_HOME=; CUDA_LIBS=
        fi
    fi
    [ $mode = check ] && [ "$HAVE_CUDA" = 1 ] && say "CUDA: $CUDA_HOME links and loads"
    if [ "$HAVE_CUDA" = 1 ]; then
        if [ "$CUDNN" = 0 ]; then
            CUDNN_WHY="CUDNN=0"
        elif cudnn_probe; then
            HAVE_CUDNN=1; CUDNN_NVFLAGS=-DSVLM_HAVE_CUDNN; CUDNN_WHY=; CUDA_LIBS="$CUDA_LIBS -lcudnn"
            [ $mode = check ] && say "cuDNN: links and loads (SVLM_ATTN=cudnn available)"
        else
            say "note: $CUDNN_WHY: SVLM_ATTN=cudnn is not built (the WMMA attention is the default anyway)"
        fi
    fi
else
    CUDA_WHY="CUDA=0"
fi

# 4. libFuzzer (clang's), for the fuzz harnesses that `make test` runs briefly (tests/fuzz): optional,
# the fuzz step says so and skips without it
FUZZ_CC=${FUZZ_CC:-clang}
fuzz_probe() {
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }\n' > "$work/fuzz.c"
    "$FUZZ_CC" -fsanitize=fuzzer,address,undefined "$work/fuzz.c" -o "$work/fuzz.bin" >/dev/null 2>&1
}
if ! fuzz_probe; then
    if [ $mode = install ] && apt_install clang libclang-rt-dev && fuzz_probe; then :; else
        say "warning: $FUZZ_CC cannot link libFuzzer (-fsanitize=fuzzer; Debian: clang libclang-rt-dev): the fuzz step of make test will skip"
    fi
fi

# 5. everything together, in the order the Makefile links a test program
printf '#include <stdio.h>\nint main(void) { return 0; }\n' > "$work/all.c"
# shellcheck disable=SC2086
if ! $CC $USER_CFLAGS -std=gnu11 -fopenmp $DEPS_CFLAGS "$work/all.c" -o "$work/all.bin" $USER_LDFLAGS $TEST_LIBS $DEPS_LIBS 2>"$work/all.err"; then
    say "each library links alone but not together: $(grep -m1 -E 'cannot find|undefined|error' "$work/all.err")"; exit 1
fi

if [ $mode = check ]; then say "every library compiles and links"; exit 0; fi
write_config "checked $(date -u +%Y-%m-%dT%H:%MZ)"
