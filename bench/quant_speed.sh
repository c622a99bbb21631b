#!/usr/bin/env bash
# Layer quantizer speed: GPTQ (int4:g128, fused and tensor column loops) vs MoFQ-RTN (int4:g128 vs fp4_e2m1:g128, weight MSE)
# on a synthetic 4096 x 4096 layer whose Hessian comes from 128 x 2048 correlated tokens; both
# timed in the same run (fastest of 3). Prints a markdown table. Extra arguments go to the binary
# (e.g. --cols 11008 for an MLP down projection, --threads 1).
#   BUILD=build-quant bench/quant_speed.sh
# OMP_WAIT_POLICY=passive: on a shared machine, OpenMP threads that spin while waiting for a
# descheduled partner made every 2-thread op up to 100x slower (measured); passive waiting fixes it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
cmake --build "$BUILD" --target quant_speed -j2 >/dev/null
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} "$BUILD/quant_speed" "$@"
