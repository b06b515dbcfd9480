#!/usr/bin/env bash
# The GPU run kit: every number a lent GPU can give, in one device call of at most 9 minutes (issue #10).
#
# Usage, from the repo root:
#   bash bench/gpu_check.sh              on the GPU box, in one device call with timeout_s about 600
#   bash bench/gpu_check.sh --rehearse   here, on CPU: every stage on tiny shapes (Triton interpreter), GPU-only
#                                        steps recorded as skipped; tests/test_gpu_kit.py runs it
# Stages, in order of value, each under its own `timeout` (budgets in BUDGET below, seconds of wall time on one
# H100 box with 16 cores; how they were sized: bench/NOTES.md, "GPU run kit: budgets and device protocol" and
# "GPU run kit after its first run", "... after its second run"). The fixed budgets sum to 513 of the 540 s, so
# pytest gets >= 25 s plus what the stages before it leave (92 s in the H200's first run; it took 40 s). After
# that run, timings-cuda got 25 s more (35 -> 60: it had stopped before RedNet-50's stages 2-4, the banded
# involution's first timings), from timings-triton (160 -> 145) and auto (95 -> 85).
# A stage that fails or runs out is recorded and the next one starts.
#   build           (background, from the start) the CUDA extension for the visible arch only, all cores
#   env             GPU, driver, clocks, versions; makes largeconv importable (editable, system torch/triton)
#   smoke-triton    every Triton kernel x direction x fp32/tf32/fp16/bf16/fp64 x NCHW/channels_last on RepLKNet,
#                   SLaK and RedNet shapes at batch 1, and dwconv1d (Conformer K=31, stride-2 dilation-2), against
#                   float64, outputs NaN-poisoned, one tile config each; the fused involution too (see below)
#   timings-triton  peaks; headline cases (bench/NOTES.md) fwd/bwd/fwdbwd vs PyTorch NCHW, channels_last (cuDNN,
#                   cudnn.benchmark) and torch.compile of the involution reference (one case); dwconv1d K=31 at
#                   (32,512,1000) and (8,1024,4000), fp32/bf16, fwd and fwdbwd vs F.conv1d and cuDNN channels_last,
#                   then at (32,512,1000) each direction alone and the host's time to issue one fwdbwd (suite
#                   conv1d_launches, ~1 s: is a fwdbwd the kernels' time or the host's?);
#                   the fused involution's RedNet-50 layers (see below)
#   wait-build      waits for the background build
#   smoke-cuda, timings-cuda   the same for the cuda backend (timings-cuda: RepLKNet-31B stage 1 also on
#                   channels_last inputs, backend "cuda_cl", right after it in NCHW; PyTorch NCHW and channels_last
#                   on the RepLKNet-31B stages timings-triton did not reach)
#   sanitizer       compute-sanitizer memcheck (25 s) on bench/sanitizer_cases.py (last, the fused involution's
#                   Triton kernels on one small case), racecheck (35 s) on one case per op of the cuda backend
#   auto            auto's choices and its ratio to the best of PyTorch on the weak-spot shapes
#   model           bench/models.py: RepLKNet-31B, then RedNet-50, training step and inference, with and without
#                   largeconv.convert
#   pytest          `pytest -m gpu`, cheapest tests first, with the time left; a test that crashes the process is
#                   named and deselected, and the run restarted (at most 3 times)
#   summary         the table: stage, status, seconds; then headline case, backend, dtype, ms, x PyTorch, % roof
# The fused involution (largeconv.involution2d_fused, Involution2d(fused=True); Triton kernels only, so in the
# Triton stages): smoke-triton checks its output and its four grads (x, reduced, span weight, span bias) on RedNet-50
# stage-1 (1,64,56,56) and stage-2 stride-2 (1,128,56,56) layers, K=7, G=C/16, Cr=C/4, fp32/fp16/bf16 x NCHW/
# channels_last, against its torch backend in float64 (the kit's bounds, outputs NaN-poisoned; 60 results).
# timings-triton times Involution2d(fused=True) against fused=False (same parameters, both on triton, then both on
# auto), forward+backward of the whole layer, batch 64: (64,64,56,56) fp32/bf16, the stride-2 (64,128,56,56)
# fp32/bf16, (64,256,14,14) fp32; suite "fused_involution", the ratio in the summary's own table against the
# target fused >= 2x (bench/results/cpu/fused_involution.md's bytes model predicts 2.0x at stride 1, 1.33x at
# stride 2); the fused output and grad x are checked against the unfused layer's. After the first layer pair, each
# of its four fused launches alone (suite "fused_launches", ~1 s: where the fused time goes). It runs after the dwconv1d timings, its prewarm (each config of the
# fused kernels, 5 layer-dtypes x 4 config jobs over the workers) in the stage's prewarm, and it starts no layer
# after 30 s (FUSED_CAP_S; rows "skipped"). sanitizer: bench/sanitizer_cases.py ends its memcheck run with one
# small fused case (fp32, NCHW, first tile configs), only while 8 s of memcheck's 25 are left.
# Added GPU time, estimated from sm_90 compiles here (bench/sm90.py, triton 3.8, 2026-11-27: 0.76 s CPU per fused
# kernel, 2.2-3.9 s for the four kernels of one shape-dtype-layout, 8-11.5 s for all 12 configs of one shape-dtype)
# and the kit's timing rules: smoke-triton +7-9 s (its slowest worker, fp32 NCHW, compiles 8 more kernels: 6.3 s),
# timings-triton +17-26 s (prewarm: ~60 s of CPU with duplicates, at most 2 jobs of 4 compiles per worker, +5-8 s;
# in the process ~2-3 s per layer-dtype of autotuning, sanity and peak-memory calls and 4 do_bench runs of 60 ms,
# 12-18 s), sanitizer +4-6 s. timings-triton already overruns its budget (bench/NOTES.md), so its seconds come off
# the end of its plan (the lowest-value headline rows), not off the total.
# Every stage appends rows to $OUT/results.csv (bench/roofline.py's columns) and its output to $OUT/log as it
# goes, so a call cut at its limit still brings back what was measured. Files in $OUT (the device tool brings back
# at most 8): results.csv, log, stages.csv, environment.txt, peaks.json, build.log, summary.txt, autotune.json (the
# tile config each autotuned Triton kernel picked per key).
# Knobs: OUT (default bench/out/gpu_check, or bench/out/gpu_rehearsal), PYTHON (default python3; .venv/bin/python
# when rehearsing), GPU_KIT_TOTAL (540), GPU_KIT_BUDGET_<STAGE> (e.g. GPU_KIT_BUDGET_SMOKE_TRITON=60),
# GPU_KIT_REHEARSE_SCALE (4: a rehearsal's budgets and total are 4x the GPU's), GPU_KIT_STAGES (comma-separated
# subset), GPU_KIT_HANG=<stage>[:ignore-term] (test hook: that stage never returns).
set -uo pipefail
cd "$(dirname "$0")/.."

REHEARSE=0
if [ "${1:-}" = "--rehearse" ]; then REHEARSE=1; fi
if [ $REHEARSE = 1 ]; then
  DEST=${OUT:-bench/out/gpu_rehearsal}
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  export TRITON_INTERPRET=1  # before triton is imported: the kernels run on CPU tensors
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny shapes: one thread, no spinning barriers on a busy CPU
  KIT=(--rehearse --workers 2)
else
  DEST=${OUT:-bench/out/gpu_check}
  PY=${PYTHON:-python3}
  KIT=()
fi
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1  # no network on the GPU box: fail fast
mkdir -p "$DEST"
rm -f "$DEST"/{results.csv,log,stages.csv,environment.txt,peaks.json,build.log,summary.txt,autotune.json}
LOG=$DEST/log
STAGES=$DEST/stages.csv
echo "stage,status,seconds,budget" > "$STAGES"

TOTAL=${GPU_KIT_TOTAL:-540}
declare -A BUDGET=([build]=240 [env]=33 [smoke-triton]=48 [timings-triton]=145 [wait-build]=5 [smoke-cuda]=30
                   [timings-cuda]=60 [sanitizer]=60 [auto]=85 [model]=40 [pytest]=rest [summary]=7)
# A rehearsal checks the code, not the time: on a busy 2-core CPU its stages get GPU_KIT_REHEARSE_SCALE x the budgets.
SCALE=1
if [ $REHEARSE = 1 ]; then SCALE=${GPU_KIT_REHEARSE_SCALE:-4}; fi
TOTAL=$((TOTAL * SCALE))
for stage in "${!BUDGET[@]}"; do  # GPU_KIT_BUDGET_SMOKE_TRITON=60 overrides smoke-triton's budget
  if [ "${BUDGET[$stage]}" != rest ]; then BUDGET[$stage]=$((BUDGET[$stage] * SCALE)); fi
  var=GPU_KIT_BUDGET_$(echo "$stage" | tr 'a-z-' 'A-Z_')
  if [ -n "${!var:-}" ]; then BUDGET[$stage]=${!var}; fi
done
START=$(date +%s)
DEADLINE=$((START + TOTAL))

wanted() { [ -z "${GPU_KIT_STAGES:-}" ] || [[ ",$GPU_KIT_STAGES," == *",$1,"* ]]; }

# run_stage NAME LOGFILE COMMAND...: COMMAND under `timeout` (its budget, at most the time left), output to LOGFILE,
# one row to stages.csv, one line to the console.
run_stage() {
  local name=$1 log=$2 budget=${BUDGET[$1]}
  shift 2
  wanted "$name" || return 0
  local left=$((DEADLINE - $(date +%s)))
  if [ "$budget" = rest ]; then budget=$((left - BUDGET[summary])); fi
  if [ "$name" != summary ] && [ "$budget" -gt "$left" ]; then budget=$left; fi
  if [ "$budget" -lt 1 ]; then
    echo "$name,skipped (no time left),0,$budget" >> "$STAGES"
    printf '%-16s skipped: no time left\n' "$name"
    return 0
  fi
  echo "== $name: budget ${budget} s, started $(date -u +%H:%M:%S), $(( $(date +%s) - START )) s into the run" >> "$log"
  local t0 rc status seconds
  t0=$(date +%s.%N)
  GPU_KIT_STAGE_BUDGET=$budget timeout -k 5 "$budget" "$@" >> "$log" 2>&1
  rc=$?
  seconds=$(echo "$t0 $(date +%s.%N)" | awk '{printf "%.1f", $2 - $1}')
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status="failed (exit $rc)" ;;
  esac
  echo "== $name: $status after $seconds s" >> "$log"
  echo "$name,$status,$seconds,$budget" >> "$STAGES"
  printf '%-16s %-18s %7s s  (budget %s s)\n' "$name" "$status" "$seconds" "$budget"
}

stage() {  # a Python stage of bench/gpu_kit.py
  local name=$1
  shift
  run_stage "$name" "$LOG" "$PY" bench/gpu_kit.py "$@" --out "$DEST" "${KIT[@]}"
}

# The build starts at once and overlaps the Triton stages: the visible GPU's arch only, one compile job per core.
if [ $REHEARSE = 1 ]; then
  # Compiling csrc/ here takes minutes on 2 cores (CI compiles it in tests/test_cuda_build.py): check instead that
  # setup.py loads with these settings and takes the build command.
  BUILD="TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$(nproc) $PY setup.py build_ext --inplace --help > /dev/null && echo 'rehearsal: setup.py build_ext --inplace accepted (no compile)'"
else
  BUILD="ARCH=\$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1); echo \"arch \$ARCH\";
         TORCH_CUDA_ARCH_LIST=\$ARCH MAX_JOBS=$(nproc) FORCE_CUDA=1 $PY setup.py build_ext --inplace"
fi
BUILD_PID=
if wanted build; then
  run_stage build "$DEST/build.log" bash -c "$BUILD" &
  BUILD_PID=$!
fi

stage env env
stage smoke-triton smoke --backend triton
stage timings-triton timings --backend triton
[ -z "$BUILD_PID" ] || run_stage wait-build "$LOG" bash -c "while kill -0 $BUILD_PID 2>/dev/null; do sleep 1; done"
stage smoke-cuda smoke --backend cuda
stage timings-cuda timings --backend cuda
stage sanitizer sanitizer
stage auto auto
stage model model
stage pytest pytest
if [ -n "$BUILD_PID" ]; then kill "$BUILD_PID" 2>/dev/null; wait "$BUILD_PID" 2>/dev/null; fi
echo "== build.log (tail)" >> "$LOG"
tail -n 20 "$DEST/build.log" >> "$LOG" 2>/dev/null
echo "== summary"
wanted summary && timeout -k 5 "${BUDGET[summary]}" "$PY" bench/gpu_kit.py summary --out "$DEST" 2>&1 | tee -a "$LOG"
exit 0
