#!/usr/bin/env bash
# The pruning experiment: a tiny ViT trained from scratch on the occluded synthetic benchmark,
# then AMG heads / tokens / heads+tokens against random pruning at the same budgets.
# Usage: tools/experiments/experiment_prune.sh [WORK_DIR=/tmp/amg-exp] [BASE_EPOCHS=12]   (30–45 minutes on 2 cores)
set -euo pipefail
AMG=${AMG:-$(dirname "$0")/../../target/release/amg}
W=${1:-/tmp/amg-exp}
EPOCHS=${2:-12}
mkdir -p "$W"
[ -d "$W/data" ] || "$AMG" synth --out "$W/data" --occluded --seed 0
[ -f "$W/base/last/model.safetensors" ] || "$AMG" train --data "$W/data" --out "$W/base" --arch tiny --img-size 128x64 \
    --epochs "$EPOCHS" --batch-size 64 --lr 1e-3 --eval-every 6 --force
FT="--distill soft --alpha 0.2 --tau 1 --batch-size 64 --lr 1e-4 --weight-decay 1e-3"
run() { # name, criterion, extra args...
  local name=$1 crit=$2; shift 2
  [ -f "$W/$name/report.json" ] || "$AMG" prune --model "$W/base/last" --data "$W/data" --out "$W/$name" --criterion "$crit" $FT --force "$@"
}
run amg-heads67      amg    --heads 0.67 --iters 4 --finetune-epochs 1 --final-epochs 4
run random-heads67   random --heads 0.67 --iters 4 --finetune-epochs 1 --final-epochs 4
run amg-tokens40     amg    --tokens 0.40 --iters 1 --final-epochs 4
run random-tokens40  random --tokens 0.40 --iters 1 --final-epochs 4
run amg-h15-t25      amg    --heads 0.15 --tokens 0.25 --iters 1 --final-epochs 4
run random-h15-t25   random --heads 0.15 --tokens 0.25 --iters 1 --final-epochs 4
python3 - "$W" <<'PY'
import json, sys, os
w = sys.argv[1]
rows = []
for name in ["amg-heads67", "random-heads67", "amg-tokens40", "random-tokens40", "amg-h15-t25", "random-h15-t25"]:
    r = json.load(open(os.path.join(w, name, "report.json")))
    rows.append((name, r))
o = rows[0][1]["original"]
print("| model | heads | key tokens | MSA params | MACs (honest) | FLOPs (paper) | img/s b1 | img/s b16 | Rank-1 % | mAP % | mINP % |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
fmt = lambda m: f"| {m['heads']} | {m['key_tokens']} | {m['msa_params']/1e6:.2f}M | {m['macs']/1e9:.3f}G | {m['paper_flops']/1e9:.3f}G | {m['img_per_s_b1']:.1f} | {m['img_per_s_b16']:.1f} | {100*m['rank1']:.2f} | {100*m['mAP']:.2f} | {100*m['mINP']:.2f} |"
print("| unpruned " + fmt(o))
for name, r in rows:
    p = r["pruned"]
    print(f"| {name} (MACs −{100*r['mac_saving']:.1f} %, paper FLOPs −{100*r['paper_flop_saving']:.1f} %, speed-up {r['speedup_b1']:.2f}× / {r['speedup_b16']:.2f}×) " + fmt(p))
PY
