#!/usr/bin/env bash
# Speed-up of pruned ViT-Ti/16 models at 128x64 (33 tokens, the size where fixed per-step costs
# weigh most) against the honest MAC ratio, at batch 1 and 16. Random-weight model from timm (speed
# does not depend on the weights) and random plans with the kept fractions of the pruning
# experiment's models: 1 of 3 heads per layer; 19 of 32 key tokens per layer; 2 of 3 heads in 5
# layers + 24 of 32 key tokens.
# Usage: PY=/path/to/venv/bin/python tools/bench/pruned_small.sh [WORK_DIR=/tmp/amg-ti128]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
AMG=${AMG:-$HERE/../target/release/amg}
PY=${PY:-python3}
# A relative path to the interpreter (.peers/bin/python) still works after the cd below.
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac
W=${1:-/tmp/amg-ti128}
mkdir -p "$W" && cd "$W"
"$PY" - <<'PYEOF'
import json, os, random
import timm, torch
from safetensors.torch import save_file
torch.manual_seed(0)
if not os.path.exists("vit_tiny_128x64.safetensors"):
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=(128, 64))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, "vit_tiny_128x64.safetensors")
random.seed(0)
all_heads, all_tokens = [[0, 1, 2]] * 12, [list(range(33))] * 12
def tokens(keep):
    return [[0] + sorted(random.sample(range(1, 33), keep)) for _ in range(12)]
json.dump({"heads": [sorted(random.sample(range(3), 1)) for _ in range(12)], "tokens": all_tokens}, open("heads67.json", "w"))
json.dump({"heads": all_heads, "tokens": tokens(19)}, open("tokens40.json", "w"))
pruned = set(random.sample(range(12), 5))
json.dump({"heads": [sorted(random.sample(range(3), 2)) if l in pruned else [0, 1, 2] for l in range(12)], "tokens": tokens(24)}, open("heads15_tokens25.json", "w"))
PYEOF
"$AMG" import --from timm vit_tiny_128x64.safetensors --img-size 128x64 --checkpoint-img-size 128x64 --out ti --force
for p in heads67 tokens40 heads15_tokens25; do "$AMG" prune --model ti --plan $p.json --out $p --force; done
B1_ITERS=${B1_ITERS:-300} B16_ITERS=${B16_ITERS:-30} AMG=$AMG "$HERE"/pruned.sh ti heads67 tokens40 heads15_tokens25
