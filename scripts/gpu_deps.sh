#!/bin/sh
# gpu_deps.sh: the C libraries svlm builds against, for a machine that can reach no package
# registry (the lent GPU machines). Here, where apt works:
#     sh scripts/gpu_deps.sh download      # .debs of the -dev packages and their libraries into .debs/
# then on the offline machine (carry .debs, e.g. the device tool's carry = [".debs"]):
#     eval "$(sh scripts/gpu_deps.sh unpack)"   # unpacks into .deps/ and exports CFLAGS, LDFLAGS,
#                                               # LD_LIBRARY_PATH and SKIP_DEPS=1 for make
#     make -j16 bench                            # or test-gpu
# Packages already present on the machine are used as they are: the unpacked headers and
# libraries only come first in the search paths.
set -eu
cd "$(dirname "$0")/.."
PKGS="libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libopenblas0 libcjson-dev libcjson1
      libpng-dev libpng16-16 libjpeg62-turbo-dev libjpeg62-turbo libzstd-dev libzstd1 libpcre2-dev
      libpcre2-8-0 libcmocka-dev libcmocka0 libgfortran5
      libopenmpi-dev libopenmpi3 openmpi-common libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7"
# (Open MPI: what libmpi.so.40 loads; one process without a launcher never calls MPI_Init, so its
# runtime plugins and mpirun are not carried: multi-rank runs there need the machine's own MPI)
case "${1:-}" in
download)
    mkdir -p .debs
    (cd .debs && apt-get download $PKGS >/dev/null)
    echo "gpu_deps: $(ls .debs | wc -l) packages in .debs ($(du -sh .debs | cut -f1))" >&2
    ;;
unpack)
    [ -d .debs ] || { echo "gpu_deps: no .debs folder: run 'sh scripts/gpu_deps.sh download' where apt works" >&2; exit 1; }
    p="$(pwd)/.deps"
    rm -rf "$p" && mkdir -p "$p"
    for f in .debs/*.deb; do dpkg-deb -x "$f" "$p" 2>/dev/null || dpkg -x "$f" "$p"; done
    lib="$p/usr/lib/x86_64-linux-gnu"
    # the -dev packages' .so links point through /etc/alternatives: point them at the unpacked files
    ln -sf openblas-pthread/libopenblas.so.0 "$lib/libopenblas.so.0" 2>/dev/null || true
    ln -sf libopenblas.so.0 "$lib/libopenblas.so" 2>/dev/null || true
    echo "export CFLAGS='-O2 -g -I$p/usr/include -I$p/usr/include/x86_64-linux-gnu -I$p/usr/include/x86_64-linux-gnu/openblas-pthread -I$lib/openmpi/include'"
    echo "export LDFLAGS='-L$lib -L$lib/openblas-pthread -L$lib/openmpi/lib -Wl,-rpath,$lib -Wl,-rpath,$lib/openblas-pthread'"
    echo "export LD_LIBRARY_PATH='$lib:$lib/openblas-pthread:${LD_LIBRARY_PATH:-}'"
    echo "export SKIP_DEPS=1"
    ;;
*)
    echo "usage: sh scripts/gpu_deps.sh download | unpack" >&2
    exit 2
    ;;
esac
