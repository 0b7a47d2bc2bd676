#!/bin/sh
# install_deps.sh: installs the Debian packages svlm builds against, when any is missing.
# Used by `make deps` (and so by `make demo` and `make test`) and by .ci/run. Needs root (or
# sudo) only when something is missing. nvcc / CUDA are optional: without them only the CPU
# backend is built.
set -eu
PKGS="build-essential pkg-config libopenblas-dev libcjson-dev libpng-dev libjpeg62-turbo-dev libzstd-dev libpcre2-dev libcmocka-dev"
missing=""
for p in $PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install_deps: installing$missing"
if [ "$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else
    echo "install_deps: run as root: apt-get install -y$missing" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
