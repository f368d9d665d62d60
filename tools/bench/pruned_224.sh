#!/usr/bin/env bash
# Speed-up of ≈30 %-MAC-saving prunes of ViT-S/16 and ViT-B/16 at 224x224 against the MAC ratio.
# Random-weight models from timm (speed does not depend on the weights) and random plans that keep
# 2 of 6 / 1 of 6 heads (ViT-S) or 4 of 12 (ViT-B) per layer and 98 of 196 key tokens.
# Usage: PY=/path/to/venv/bin/python tools/bench/pruned_224.sh [WORK_DIR=/tmp/amg-224]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
AMG=${AMG:-$HERE/../target/release/amg}
PY=${PY:-python3}
# A relative path to the interpreter (.peers/bin/python) still works after the cd below.
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac
W=${1:-/tmp/amg-224}
mkdir -p "$W" && cd "$W"
"$PY" - <<'PYEOF'
import json, os, random
import timm, torch
from safetensors.torch import save_file
torch.manual_seed(0)
for arch in ["vit_small_patch16_224", "vit_base_patch16_224"]:
    if not os.path.exists(f"{arch}.safetensors"):
        m = timm.create_model(arch, pretrained=False, num_classes=0)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, f"{arch}.safetensors")
random.seed(0)
def plan(heads, keep_heads, keep_tokens):
    return {"heads": [sorted(random.sample(range(heads), keep_heads)) for _ in range(12)],
            "tokens": [[0] + sorted(random.sample(range(1, 197), keep_tokens)) for _ in range(12)]}
json.dump(plan(6, 2, 98), open("s_h4of6_t50.json", "w"))
json.dump(plan(6, 1, 98), open("s_h5of6_t50.json", "w"))
json.dump(plan(12, 4, 98), open("b_h8of12_t50.json", "w"))
PYEOF
"$AMG" import --from timm vit_small_patch16_224.safetensors --out s --force
"$AMG" import --from timm vit_base_patch16_224.safetensors --out b --force
for p in s_h4of6_t50 s_h5of6_t50; do "$AMG" prune --model s --plan $p.json --out $p --force; done
"$AMG" prune --model b --plan b_h8of12_t50.json --out b_h8of12_t50 --force
AMG=$AMG "$HERE"/pruned.sh s s_h4of6_t50 s_h5of6_t50
AMG=$AMG "$HERE"/pruned.sh b b_h8of12_t50 | tail -1
