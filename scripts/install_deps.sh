#!/bin/sh
# install_deps.sh: makes sure the C libraries svlm builds against are there, installing the Debian
# packages when something is missing. Used by `make deps` (and so by `make demo` and `make test`)
# and by .ci/run. What counts is whether each header compiles, not package names, so a machine
# that has the libraries from elsewhere (Ubuntu, RHEL, a module system) passes untouched.
# SKIP_DEPS=1 skips the check. nvcc / CUDA are optional: without them the CPU backend is built.
set -eu
[ "${SKIP_DEPS:-0}" = 1 ] && exit 0
CC=${CC:-cc}
# header  Debian package that provides it
need="
cblas.h libopenblas-dev
cjson/cJSON.h libcjson-dev
png.h libpng-dev
jpeglib.h libjpeg-dev
zstd.h libzstd-dev
pcre2.h libpcre2-dev
cmocka.h libcmocka-dev
"
has_header() {
    printf '#include <stddef.h>\n#include <stdarg.h>\n#include <setjmp.h>\n#include <stdio.h>\n#define PCRE2_CODE_UNIT_WIDTH 8\n#include <%s>\n' "$1" |
        "$CC" -E -x c - >/dev/null 2>&1
}
missing=""
command -v "$CC" >/dev/null 2>&1 || missing="build-essential"
# the CUDA emulator of the tests is C++
command -v "${CXX:-c++}" >/dev/null 2>&1 || missing="build-essential"
[ -n "$missing" ] || command -v pkg-config >/dev/null 2>&1 || missing="pkg-config"
echo "$need" | while read -r header pkg; do
    [ -n "$header" ] || continue
    has_header "$header" || echo "$pkg"
done > /tmp/svlm-missing.$$ || true
missing="$missing $(cat /tmp/svlm-missing.$$ | tr '\n' ' ')"
rm -f /tmp/svlm-missing.$$
missing=$(echo $missing)
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_deps: missing development files for: $missing (install their equivalents, or SKIP_DEPS=1)" >&2
    exit 1
fi
echo "install_deps: installing $missing"
if [ "$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "install_deps: run as root: apt-get install -y $missing" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
