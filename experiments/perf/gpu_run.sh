#!/usr/bin/env bash
# Every GPU-only check in one command (run from the repo root on a GPU machine):
#   1. compiled-kernel tests (pytest -m gpu: Triton kernels vs references, bitwise batch invariance)
#   2. experiments/perf/kernel_timings.py (kernel timings vs XLA / cuDNN / ragged_dot)
#   3. experiments/perf/streaming.py on the GPU (engine step time / RTF), if ml_collections imports
#   4. thesis (only when STAGES names it): experiments/interaction_small/gpu_train.sh, the
#      reproduction recipe trained for $STEPS steps, checkpoints packed into $OUT
# STAGES picks and orders them (default tests,kernels,stream; e.g. STAGES=thesis STEPS=12000).
# Packages the image lacks travel as wheels: `bash experiments/perf/gpu_wheels.sh` here fills .whl/,
# name `.whl` in the device call's carry, and this script installs them into /tmp/site first.
# Each stage has its own time limit so one hang cannot eat the others. Logs and JSON go to $OUT
# (default experiments/perf/results). PYTHON picks the interpreter (default: .venv/bin/python if
# present, else python3).
set -u
OUT=${OUT:-experiments/perf/results}
mkdir -p "$OUT"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
T_TESTS=${T_TESTS:-200} T_KERNELS=${T_KERNELS:-200} T_STREAM=${T_STREAM:-120} T_THESIS=${T_THESIS:-540}
STAGES=${STAGES:-tests,kernels,stream}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site || echo "gpu_run: installing .whl/ failed" >&2
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu_info.txt"
$PY -c "import jax, jaxlib; print('jax', jax.__version__, 'backend', jax.default_backend(), jax.devices())" \
  2>&1 | tee -a "$OUT/gpu_info.txt"
git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$OUT/gpu_info.txt"

stage_tests() {
  timeout "$T_TESTS" $PY -m pytest -q -m gpu tests/kernels -rfE -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
}
stage_kernels() {
  timeout "$T_KERNELS" $PY experiments/perf/kernel_timings.py --out="$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.log"
}
stage_stream() {
  if $PY -c "import ml_collections" 2>/dev/null; then
    timeout "$T_STREAM" $PY experiments/perf/streaming.py --configs=${STREAM_CONFIGS:-tiny,small} --sessions=1,16 \
      --lengths=10,60 --ticks=5 --json="$OUT/streaming_gpu.json" 2>&1 | tee "$OUT/streaming_gpu.log"
  else
    echo "ml_collections missing: streaming skipped" | tee "$OUT/streaming_gpu.log"
  fi
}
stage_thesis() {
  OUT="$OUT" PYTHON="$PY" timeout "$T_THESIS" bash experiments/interaction_small/gpu_train.sh
}
for stage in ${STAGES//,/ }; do
  echo "== $stage"
  case "$stage" in
    tests|kernels|stream|thesis) "stage_$stage" ;;
    *) echo "gpu_run: unknown stage '$stage'; expected tests, kernels, stream or thesis" >&2; exit 2 ;;
  esac
done
