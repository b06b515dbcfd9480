#!/usr/bin/env bash
# The second device call of a GPU loan, after the run kit (bench/gpu_check.sh): the probes that explain what the
# kit measured (bench/NOTES.md, session 16). At most ~330 s: issue it as soon as the kit's call returns, while the
# machine is still warm (idle_release_s, 30 s: the extension built by the kit is reused, ~5 s instead of ~75), with
# timeout_s = the device time left less ~15 s. Steps in order of value, so a cut call loses the least.
#
# Usage, from the repo root:
#   OUT=$OUT bash bench/gpu_followup.sh              on the GPU box (a fresh one: it builds the extension again)
#   bash bench/gpu_followup.sh --rehearse            here, on CPU: the probes that have a CPU rehearsal
# Steps, each under its own timeout, output appended to $OUT/followup.txt:
#   kit stages env, build, wait-build (GPU_KIT_STAGES; log, stages.csv, environment.txt, build.log)
#   pytest                the fp32 tensor-core tests (K = 63 failed in H200 run 1) and the involution tests
#   ncu (default cases)   Nsight Compute on the cuda tensor-core depthwise kernels, Triton's Toeplitz dots and an
#                         involution: which pipe bounds them (H200 run 1 measured them at the sum of the static
#                         model's terms, not their max) -> ncu_dwconv.csv
#   profile               host and GPU time of small layers per backend; auto's choices and its profile (auto lost
#                         to PyTorch at batch 1 and 8 on 7x7 maps)
#   ncu --involution      the bf16 cuda involution's six launches (RedNet-50 s1, s3: banded forward and s1
#                         grad-input, the FMA kernels on 16-bit tiles for the rest) -> ncu_involution.csv
#   involution            each cuda involution direction timed on RedNet-50's seven layers, bf16 and fp32
# At most 8 files come back: log, stages.csv, environment.txt, build.log, results.csv (the env stage's row),
# followup.txt, ncu_dwconv.csv, ncu_involution.csv.
set -uo pipefail
cd "$(dirname "$0")/.."

REHEARSE=0
if [ "${1:-}" = "--rehearse" ]; then REHEARSE=1; fi
if [ $REHEARSE = 1 ]; then
  DEST=${OUT:-bench/out/gpu_followup_rehearsal}
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  KIT_FLAGS=(--rehearse)
else
  DEST=${OUT:-bench/out/gpu_followup}
  PY=${PYTHON:-python3}
  KIT_FLAGS=()
fi
mkdir -p "$DEST"
TEXT="$DEST/followup.txt"
: > "$TEXT"

step() {  # step NAME SECONDS COMMAND...: COMMAND's output appended to followup.txt under a header
  local name=$1 budget=$2 rc
  shift 2
  echo "== $name: budget $budget s, started $(date -u +%H:%M:%S)" >> "$TEXT"
  timeout -k 5 "$budget" "$@" >> "$TEXT" 2>&1
  rc=$?
  echo "== $name: exit $rc" >> "$TEXT"
  printf '%-14s exit %s\n' "$name" "$rc"
}

KIT_TOTAL=$([ $REHEARSE = 1 ] && echo 150 || echo 120)
OUT="$DEST" PYTHON="$PY" GPU_KIT_STAGES=env,build,wait-build GPU_KIT_TOTAL=$KIT_TOTAL \
  bash bench/gpu_check.sh "${KIT_FLAGS[@]}" > /dev/null 2>&1
cat "$DEST/stages.csv" 2>/dev/null
if [ $REHEARSE = 1 ]; then  # the flow and one probe (tests/test_gpu_kit.py runs each probe's rehearsal on its own)
  step ncu-cases-involution 120 "$PY" bench/gpu_probe.py ncu-cases --rehearse --involution
else
  step pytest 45 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda_gpu.py -k "k63 or float32 or involution"
  step ncu 100 "$PY" bench/gpu_probe.py ncu "$DEST"
  mv -f "$DEST/ncu.csv" "$DEST/ncu_dwconv.csv" 2>/dev/null
  step profile 45 "$PY" bench/gpu_probe.py profile
  step ncu-involution 40 "$PY" bench/gpu_probe.py ncu "$DEST" --involution
  mv -f "$DEST/ncu.csv" "$DEST/ncu_involution.csv" 2>/dev/null
  step involution 60 "$PY" bench/gpu_probe.py involution
fi
exit 0
