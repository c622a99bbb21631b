#!/usr/bin/env bash
# Kernel speed (src/kernels): dequantization and qmatmul on a 4096 x 4096 int4:g128 and
# fp4_e2m1:g32 matrix at n = 1 and n = 64, for every SIMD level this CPU supports, with the
# speedup over the scalar kernels in the same run, next to fp32 torch::matmul and OpenBLAS
# sgemv/sgemm. One thread throughout. Prints one markdown table (Google Benchmark's log goes to
# stderr, silenced here).
#
#   bench/kernels.sh [--quick] [--rows N --cols N]      (BUILD=<build dir>, default build)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
log=$(mktemp)
if ! cmake --build "$BUILD" --target kernels_bench -j2 >"$log" 2>&1; then cat "$log"; rm -f "$log"; exit 1; fi
rm -f "$log"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores," \
     "load average $(cut -d' ' -f1 /proc/loadavg) at the start"
"$BUILD/kernels_bench" "$@" 2>/dev/null
