#!/bin/sh
# cudnn_graphs.sh: runs tests/gpu/cudnn_graphs.c (cuDNN's verdict on svlm's attention graphs, no GPU
# needed) as part of `make test`. cuDNN's engine libraries load libcuda; on a machine without an
# NVIDIA driver they are given the CUDA toolkit's stub library (build/cuda-driver-stub), which is
# enough to build and judge graphs (nothing is run). Skipped, said on one line, without a CUDA build.
bin=${1:-build/tests/gpu/cudnn_graphs}
if [ ! -x "$bin" ]; then
    echo "cudnn_graphs: skipped: $bin not built (no CUDA backend in this build)"
    exit 0
fi
if ! { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q 'libcuda\.so\.1 '; then
    home=$(sed -n 's/^CUDA_HOME := //p' build/config.mk 2>/dev/null)
    stub=$home/lib64/stubs/libcuda.so
    if [ -n "$home" ] && [ -f "$stub" ]; then
        mkdir -p build/cuda-driver-stub
        ln -sf "$stub" build/cuda-driver-stub/libcuda.so.1
        LD_LIBRARY_PATH=$PWD/build/cuda-driver-stub${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        export LD_LIBRARY_PATH
    fi
fi
exec "$bin"
