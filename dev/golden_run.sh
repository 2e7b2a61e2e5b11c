#!/usr/bin/env bash
# Golden run of issue 11: simulated + Bridge episodes through `curate run` with all three engines.
#   dev/golden_run.sh OUT_DIR [SIM_SOURCE_DIR]
# Simulates a small Meta-World dataset (unless SIM_SOURCE_DIR, an earlier one, is given), then runs
# `curate run` on it and on the shared Bridge episodes with the local, Beam and Ray engines. Compare
# two such runs with `python dev/golden.py record|compare`.
set -euo pipefail
export MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa TF_CPP_MIN_LOG_LEVEL=2
OUT=$(realpath -m "$1")
CURATE=${CURATE:-.venv/bin/curate}
BRIDGE=${BRIDGE:-$(realpath ../shared/data/openx/bridge_dataset/1.0.0 2>/dev/null || echo /work/shared/data/openx/bridge_dataset/1.0.0)}
mkdir -p "$OUT/runs" "$OUT/logs"
if [ -n "${2:-}" ]; then
  SIM=$2
else
  timeout 900 $CURATE simulate --task pick-place-v3 --task drawer-open-v3 --episodes 2 --size 64 \
    --max-steps 40 --out "$OUT/src" --json > "$OUT/logs/simulate.json"
  SIM=$OUT/src/metaworld_sim/1.0.0
fi
for engine in local beam ray; do
  for name in sim bridge; do
    src=$SIM; [ "$name" = bridge ] && src=$BRIDGE
    rm -rf "$OUT/runs/$name-$engine"
    timeout 900 $CURATE run "$src" --out "$OUT/runs/$name-$engine" --runner "$engine" --workers 2 \
      --no-progress --json > "$OUT/logs/run-$name-$engine.json"
    echo "$name-$engine done"
  done
done
