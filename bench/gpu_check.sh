#!/usr/bin/env bash
# Everything a lent GPU is for, in one call (device time is scarce): build the CUDA extension, run the GPU tests,
# compute-sanitizer memcheck over small cases of every CUDA kernel, then the benchmark suites; short table last.
# Usage on the GPU box, from the repo root:
#   bash bench/gpu_check.sh                       build, GPU tests, memcheck, then the replknet31b suite
#   SKIP_TESTS=1 bash bench/gpu_check.sh SUITE [roofline args]   only (build and) a suite, e.g. rednet50 --append
# One device call may run at most 10 minutes: run the test part once, then the suites in separate calls
# (torch.compile of the involution reference alone takes minutes; `--no-compile` skips it).
# Logs and results go to $OUT (the device tool's output folder) or bench/out/gpu_check.
# Commit what it measured to bench/results/<gpu-name>/ afterwards.
set -uo pipefail
SUITE=${1:-replknet31b}
shift || true
EXTRA=("$@")
DEST=${OUT:-bench/out/gpu_check}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1

{
  date -u +%Y-%m-%dT%H:%MZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version | tail -1
} > "$DEST/environment.txt" 2>&1
cat "$DEST/environment.txt"

step() { echo "== $1"; }
status=()

step "build (make venv builds largeconv._C)"
if make venv > "$DEST/build.log" 2>&1; then status+=("build: ok"); else status+=("build: FAILED (build.log)"); fi
tail -3 "$DEST/build.log"

if [ "${SKIP_TESTS:-0}" != 1 ]; then
step "GPU tests"
.venv/bin/python -m pytest -m gpu -q tests 2>&1 | tee "$DEST/gpu_tests.log" | tail -15
status+=("gpu tests: $(tail -1 "$DEST/gpu_tests.log")")

step "compute-sanitizer memcheck"
compute-sanitizer --tool memcheck --error-exitcode 1 .venv/bin/python bench/sanitizer_cases.py \
  > "$DEST/sanitizer.log" 2>&1
status+=("memcheck: exit $? ($(grep -c 'Invalid' "$DEST/sanitizer.log") invalid accesses)")
tail -5 "$DEST/sanitizer.log"
fi

step "benchmark ($SUITE)"
.venv/bin/python bench/roofline.py --suite "$SUITE" --out "$DEST" --no-progress "${EXTRA[@]}" 2>&1 | tee "$DEST/bench.log" | tail -40
status+=("bench: $(ls "$DEST"/results.csv 2>/dev/null || echo 'no results.csv')")

echo "== summary"
printf '%s\n' "${status[@]}"
