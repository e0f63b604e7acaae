#!/usr/bin/env bash
# The checks to run when a GPU is lent (issue 13), as one table for bench/RESULTS.md: the CUDA-only tests,
# trainer images/s (ResNet-50, 224 px, bf16 + channels_last) against a plain fp32 loop, the decoded-data
# path's images/s on the GPU, and four 0.25-GPU trials beside one trial alone. Under 8 minutes on one GPU.
#
#   bash bench/gpu_check.sh              # on the GPU machine, from the repository root or anywhere
#   bash bench/gpu_check.sh --smoke      # CPU only, tiny sizes: what tests/test_gpu_check.py runs
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export RAY_USAGE_STATS_ENABLED=0
exec timeout 470 "$PYTHON" bench/gpu.py "$@"
