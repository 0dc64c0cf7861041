#!/usr/bin/env bash
# Wheels of the packages the GPU machine's image lacks (or holds at other versions), for carrying
# to it (nothing can be installed from the network there). Run here, from the repo root:
#   bash experiments/perf/gpu_wheels.sh          # -> .whl/ (ignored: .gitignore)
# gpu_run.sh installs them with `pip install --no-index --no-deps --target` when .whl/ is present.
# Versions come from constraints.txt (the tested lock file); the image's own jax / jaxlib (0.11)
# and its GPU plugin are kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
PKGS="ml_collections grain array_record etils espeakng-loader webrtcvad-wheels librosa soundfile cffi pycparser
      soxr audioread pooch platformdirs decorator flax orbax-checkpoint optax simplejson humanize treescope
      portpicker tensorstore"
PY=${PYTHON:-python3}
mkdir -p .whl
for p in $PKGS; do
  v=$(grep -i -E "^${p//[-_]/[-_]}==" constraints.txt | head -1 | cut -d= -f3)
  [ -n "$v" ] || { echo "gpu_wheels: $p is not pinned in constraints.txt" >&2; exit 2; }
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$p==$v"
done
du -sh .whl && ls .whl
