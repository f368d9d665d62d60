#!/usr/bin/env bash
# Makes the converged base model `amg demo` starts from: a ViT-Ti with LA-Transformer's head at
# 128x64, pretrained on a larger non-occluded synthetic set of other people (a stand-in for
# ImageNet weights, which cannot be downloaded here), then trained on the demo's occluded benchmark
# until its validation mAP is flat. About 40 minutes on 2 cores.
#
# Usage: tools/experiments/demo_base.sh [WORK_DIR=demo-base-work]
# Environment: AMG (the binary, default target/release/amg), PY (a python3 with numpy and
# safetensors, for the float16 copy; default .peers/bin/python).
# Writes WORK_DIR/base/ (every epoch's metrics in metrics.jsonl) and WORK_DIR/demo-base/, the
# float16 copy of the base's last epoch that is committed as assets/demo-base/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
AMG=${AMG:-$ROOT/target/release/amg}
PY=${PY:-$ROOT/.peers/bin/python}
W=${1:-demo-base-work}
mkdir -p "$W"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# The demo's benchmark (amg demo generates the same bytes: same options, seed 0): 150 training
# identities, whose images the base learns from; the 150 test identities' query and gallery are
# what the demo evaluates on, never seen in training.
[ -f "$W/data/synth.json" ] || "$AMG" synth --out "$W/data" --occluded --ids 300 --images-per-id 16 --seed 0 --size 128x64
# Pretraining data: 1000 other identities, not occluded (seed 1).
[ -f "$W/pretrain-data/synth.json" ] || "$AMG" synth --out "$W/pretrain-data" --ids 1000 --images-per-id 16 --seed 1 --size 128x64

log "pretraining"
[ -f "$W/pretrain/last/config.json" ] || "$AMG" train --data "$W/pretrain-data" --out "$W/pretrain" --arch tiny --img-size 128x64 \
  --batch-size 64 --lr 1e-3 --warmup-epochs 1 --epochs 16 --eval-every 4 --seed 0
log "training the base"
[ -f "$W/base/last/config.json" ] || "$AMG" train --data "$W/data" --out "$W/base" --init "$W/pretrain/last" --img-size 128x64 \
  --batch-size 64 --lr 5e-4 --warmup-epochs 1 --epochs 24 --eval-every 2 --seed 0

log "float16 copy"
rm -rf "$W/demo-base" && mkdir -p "$W/demo-base"
cp "$W/base/last/config.json" "$W/demo-base/config.json"
"$PY" - "$W/base/last/model.safetensors" "$W/demo-base/model.safetensors" <<'PYEOF'
import sys
import numpy as np
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in t.items()}, sys.argv[2])
PYEOF
ls -l "$W/demo-base"
