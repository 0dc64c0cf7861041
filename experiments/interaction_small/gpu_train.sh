#!/usr/bin/env bash
# The reproduction recipe trained for longer on one GPU: training budget is what moves the speak
# decision (README, "What does move the speak decision is training longer"), and the 2-core CPU
# trains 3,000 steps in about 93 minutes (results.json, `wall_seconds.train`). This renders the
# training mix on the machine's cores, trains config.py for $STEPS steps and packs the
# checkpoints into $OUT for evaluation on a CPU.
#
# On the GPU machine, from the repo root (through experiments/perf/gpu_run.sh, which first
# installs the carried wheels of experiments/perf/gpu_wheels.sh):
#   STAGES=thesis STEPS=12000 bash experiments/perf/gpu_run.sh
# Back here, with the files it returned in FILES:
#   mkdir -p runs/interaction_small_long/run && cat FILES/ckpt.tar.part-* | tar x -C runs/interaction_small_long/run
#   python experiments/interaction_small/run.py --workdir=runs/interaction_small_long \
#       --config.train.num_steps=12000 --stages=select,evaluate,curve,report \
#       --curve_every=4000 --results=experiments/interaction_small/results_long.json
#
# Checkpoints every STEPS/3 steps, the last 3 kept (what a device call can return: at most
# 8 files of 16 MiB); train.log beside them. WORK (default /tmp/interaction_small_long) holds
# the rendered data, which stays on the machine.
set -euo pipefail
OUT=${OUT:-runs/gpu_out}
STEPS=${STEPS:-12000}
WORK=${WORK:-/tmp/interaction_small_long}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
case "$STEPS" in ''|*[!0-9]*) echo "gpu_train: STEPS must be a positive integer, got '$STEPS'" >&2; exit 2 ;; esac
[ "$STEPS" -ge 3 ] || { echo "gpu_train: STEPS must be at least 3, got $STEPS" >&2; exit 2; }
mkdir -p "$OUT"
$PY experiments/interaction_small/run.py --workdir="$WORK" --stages=prepare,train \
    --config.train.num_steps="$STEPS" --config.train.checkpoint_every=$((STEPS / 3)) \
    --config.train.keep_last=3 ${EXTRA_FLAGS:-} 2>&1 | tee "$OUT/train.log"
(cd "$WORK/run" && tar cf - checkpoints) | split -b 15m - "$OUT/ckpt.tar.part-"
ls -la "$OUT"
