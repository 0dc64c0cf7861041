#!/usr/bin/env bash
# Every GPU-only check in one command (run from the repo root on a GPU machine):
#   1. compiled-kernel tests (pytest -m gpu: Triton kernels vs references, bitwise batch invariance)
#   2. experiments/perf/kernel_timings.py (kernel timings vs XLA / cuDNN / ragged_dot)
#   3. experiments/perf/streaming.py on the GPU (engine step time / RTF), if ml_collections imports
#   4. thesis (only when STAGES names it): experiments/interaction_small/gpu_train.sh, the
#      reproduction recipe trained for $STEPS steps, checkpoints packed into $OUT
#   5. train: experiments/perf/train_throughput.py, small and small_moe at their own batch and
#      window (tokens/s, MFU against the device's peak)
#   6. invariant: model.batch_invariant's end-to-end cost, in training (train_throughput.py, small
#      off / on in one run) and in streaming (batch_invariant.py)
#   7. hf: streaming.py with its Hugging Face row, both on the GPU (skipped without torch)
# STAGES picks and orders them (default tests,kernels,stream; e.g. STAGES=thesis STEPS=12000, or
# issue 18's GPU rows: STAGES=train,invariant,hf).
# Packages the image lacks travel as wheels: `bash experiments/perf/gpu_wheels.sh` here fills .whl/,
# name `.whl` in the device call's carry, and this script installs them into /tmp/site first.
# Each stage has its own time limit so one hang cannot eat the others. Logs and JSON go to $OUT
# (default experiments/perf/results). PYTHON picks the interpreter (default: .venv/bin/python if
# present, else python3).
set -u
OUT=${OUT:-experiments/perf/results}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
T_TESTS=${T_TESTS:-200} T_KERNELS=${T_KERNELS:-200} T_STREAM=${T_STREAM:-120} T_THESIS=${T_THESIS:-540}
T_TRAIN=${T_TRAIN:-150} T_INVARIANT=${T_INVARIANT:-180} T_HF=${T_HF:-150}
STAGES=${STAGES:-tests,kernels,stream}
KNOWN="tests kernels stream thesis train invariant hf"
for stage in ${STAGES//,/ }; do  # every name checked before any work: a typo costs no device time
  case " $KNOWN " in
    *" $stage "*) ;;
    *) echo "gpu_run: unknown stage '$stage'; expected one of: ${KNOWN// /, }" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
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
stage_train() {
  timeout "$T_TRAIN" $PY experiments/perf/train_throughput.py --configs=small,small_moe --batch_size=0 --window=0 \
    --steps=5 --out="$OUT/train_throughput_gpu.json" 2>&1 | tee "$OUT/train_throughput_gpu.log"
}
stage_invariant() {
  timeout "$T_INVARIANT" $PY experiments/perf/train_throughput.py --configs=small,small@model.batch_invariant=True \
    --batch_size=0 --window=0 --steps=5 --out="$OUT/train_batch_invariant_gpu.json" 2>&1 \
    | tee "$OUT/train_batch_invariant_gpu.log"
  timeout "$T_INVARIANT" $PY experiments/perf/batch_invariant.py --configs=small --sessions=1,16 --lengths=0,60 \
    --ticks=10 --json="$OUT/batch_invariant_gpu.json" 2>&1 | tee "$OUT/batch_invariant_gpu.log"
}
stage_hf() {
  if $PY -c "import torch, transformers, ml_collections" 2>/dev/null; then
    timeout "$T_HF" $PY experiments/perf/streaming.py --configs=small,small_moe --sessions=1,4,16 --lengths=10,60 \
      --ticks=5 --hf --no-naive --json="$OUT/streaming_gpu_hf.json" 2>&1 | tee "$OUT/streaming_gpu_hf.log"
  else
    echo "torch, transformers or ml_collections missing: the Hugging Face row skipped" | tee "$OUT/streaming_gpu_hf.log"
  fi
}
for stage in ${STAGES//,/ }; do
  echo "== $stage"
  "stage_$stage"
done
