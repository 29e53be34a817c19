#!/usr/bin/env bash
# The first thing to run on a machine with an NVIDIA GPU (torch with CUDA, CuPy, nvcc,
# compute-sanitizer; no network), from anywhere: bash tests/gpu/run.sh [REPORT]
# Runs every gpu-marked test, the torch op on CUDA for every dtype against torch,
# compute-sanitizer memcheck and racecheck over tests/gpu/harness.cu, and the GPU benchmark;
# writes everything to one report file (default gpu-report.txt) and exits non-zero if any
# part failed.  Without a GPU it exits at once with status 3.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
REPORT="$(realpath -m "${1:-gpu-report.txt}")"
PYTHON="${PYTHON:-python3}"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "tests/gpu/run.sh: no NVIDIA GPU here (nvidia-smi missing or finds no device); nothing run" >&2
  exit 3
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "tests/gpu/run.sh: PyTorch cannot use the GPU (torch missing or a CPU build); nothing run" >&2
  exit 3
fi
cd "$ROOT"
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
failed=0
section() {  # section TITLE SECONDS COMMAND...: run with a time limit, log, remember a failure
  local title="$1" seconds="$2"; shift 2
  echo "== $title ($(date -u +%H:%M:%S), limit ${seconds}s)"
  local start=$SECONDS
  timeout "$seconds" "$@"
  local status=$?
  echo "== $title: exit $status after $((SECONDS - start)) s"
  echo
  [ "$status" -eq 0 ] || failed=1
}
{
  echo "gradsmith GPU report, $(date -u), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi -L
  nvcc --version | tail -1
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  echo
  # Limits sum to 8 minutes.
  section "gpu-marked tests" 120 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider \
    --ignore=tests/test_torch_cuda.py tests
  section "torch op on CUDA, every dtype, against torch" 60 "$PYTHON" -m pytest -q \
    -p no:cacheprovider tests/test_torch_cuda.py
  arch="sm_$("$PYTHON" -c "import torch; print(''.join(map(str, torch.cuda.get_device_capability())))")"
  section "build the sanitizer harness ($arch)" 100 nvcc -std=c++17 -O1 -lineinfo -arch="$arch" \
    -o "$BUILD/harness" tests/gpu/harness.cu generated/cuda/gradsmith_ce.cu
  section "compute-sanitizer memcheck" 40 compute-sanitizer --tool memcheck --error-exitcode 1 \
    --leak-check full "$BUILD/harness"
  section "compute-sanitizer racecheck" 50 compute-sanitizer --tool racecheck \
    --error-exitcode 1 "$BUILD/harness"
  section "GPU benchmark" 110 "$PYTHON" tests/gpu/bench.py
  echo "overall: $([ "$failed" -eq 0 ] && echo PASS || echo FAIL)"
} > "$REPORT" 2>&1
echo "tests/gpu/run.sh: report in $REPORT ($([ "$failed" -eq 0 ] && echo PASS || echo FAIL))"
exit "$failed"
