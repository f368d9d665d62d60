#!/usr/bin/env bash
# Makes the converged base model `amg demo` starts from (assets/demo-base/): a ViT-Ti with
# LA-Transformer's head at 128x64, pretrained on a larger non-occluded synthetic set of other
# people (a stand-in for ImageNet weights, which cannot be downloaded here), then trained on the
# demo's occluded benchmark until its validation mAP is flat. About 40 minutes on 2 quiet cores.
#
# Usage: tools/experiments/demo_base.sh [WORK_DIR=demo-base-work]
# Environment: AMG (the binary, default target/release/amg), PY (a python3 with numpy and
# safetensors, for the float16 copy; default .peers/bin/python).
# Writes WORK_DIR/base/ (every epoch's metrics in metrics.jsonl) and WORK_DIR/demo-base/, what is
# committed as assets/demo-base/: the base's last epoch in float16, its config.json (paths under
# WORK_DIR written as WORK_DIR) and benchmark.json, the record of the benchmark it was trained on.
# Each step is skipped when its output is complete, and a killed training run continues where it
# stopped.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
AMG=${AMG:-$ROOT/target/release/amg}
PY=${PY:-$ROOT/.peers/bin/python}
W=${1:-demo-base-work}
mkdir -p "$W"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# The demo's benchmark (amg demo generates the same bytes: same options, seed 0): 151 training
# identities, whose images the base learns from; the test identities' query and gallery are what
# the demo evaluates on, never seen in training.
[ -f "$W/data/synth.json" ] || "$AMG" synth --out "$W/data" --occluded --ids 300 --images-per-id 16 --seed 0 --size 128x64 --force
# Pretraining data: 1000 other identities, not occluded (seed 1).
[ -f "$W/pretrain-data/synth.json" ] || "$AMG" synth --out "$W/pretrain-data" --ids 1000 --images-per-id 16 --seed 1 --size 128x64 --force

# amg train, or its --resume when a run of it was stopped; nothing when it has finished.
train() { # run dir, epochs, args...
  local out=$1 epochs=$2; shift 2
  local state="$out/last/train_state.json"
  if [ -f "$state" ]; then
    if "$PY" -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))['epochs_done'] >= int(sys.argv[2]) else 1)" "$state" "$epochs"; then
      return
    fi
    local data; data=$(printf '%s\n' "$@" | sed -n '/^--data$/{n;p;}')
    "$AMG" train --data "$data" --out "$out" --epochs "$epochs" --resume
  else
    "$AMG" train --out "$out" --epochs "$epochs" --force "$@"
  fi
}
log "pretraining"
train "$W/pretrain" 16 --data "$W/pretrain-data" --arch tiny --img-size 128x64 --batch-size 64 --lr 1e-3 --warmup-epochs 1 --eval-every 4 --seed 0
log "training the base"
train "$W/base" 24 --data "$W/data" --init "$W/pretrain/last" --img-size 128x64 --batch-size 64 --lr 5e-4 --warmup-epochs 1 --eval-every 2 --seed 0

log "float16 copy"
rm -rf "$W/demo-base" && mkdir -p "$W/demo-base"
sed "s#$W#WORK_DIR#g" "$W/base/last/config.json" > "$W/demo-base/config.json"
cp "$W/data/synth.json" "$W/demo-base/benchmark.json"
"$PY" - "$W/base/last/model.safetensors" "$W/demo-base/model.safetensors" <<'PYEOF'
import sys
import numpy as np
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in t.items()}, sys.argv[2])
PYEOF
ls -l "$W/demo-base"
