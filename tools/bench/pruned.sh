#!/usr/bin/env bash
# Measured speed-up of pruned models over their unpruned original, against the honest MAC ratio,
# at batch 1 and 16, alternating the models in one run.
# Usage: [B1_ITERS=30] [B16_ITERS=6] [ROUNDS=3] tools/bench/pruned.sh ORIGINAL_DIR PRUNED_DIR [PRUNED_DIR ...]
# (more iterations for small models: a ViT-Ti at 128x64 runs a batch of 1 in ~5 ms; on a machine
# whose speed swings within seconds, more rounds of fewer iterations give each model more chances
# at a quiet moment)
set -euo pipefail
AMG=${AMG:-$(dirname "$0")/../../target/release/amg}
orig=$1; shift
B1_ITERS=${B1_ITERS:-30}
B16_ITERS=${B16_ITERS:-6}
ROUNDS=${ROUNDS:-3}
ips() { "$AMG" bench --model "$1" --batch-size "$2" --iters "$3" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["img_per_s"])'; }
macs() { "$AMG" inspect --model "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["cost"]["macs"])'; }
m0=$(macs "$orig")
echo "| pruned model | MAC ratio | speed-up b1 | speed-up b16 | b1 ≥ 0.9×ratio | b16 ≥ 0.9×ratio |"
echo "|---|---|---|---|---|---|"
for p in "$@"; do
  m1=$(macs "$p")
  # Alternate original and pruned, ROUNDS rounds, and keep the best of each (least disturbed).
  best() { python3 -c 'import sys; print(max(float(x) for x in sys.argv[1:]))' "$@"; }
  o1=(); p1=(); o16=(); p16=()
  for _ in $(seq "$ROUNDS"); do
    o1+=($(ips "$orig" 1 "$B1_ITERS")); p1+=($(ips "$p" 1 "$B1_ITERS")); o16+=($(ips "$orig" 16 "$B16_ITERS")); p16+=($(ips "$p" 16 "$B16_ITERS"))
  done
  python3 - "$p" "$m0" "$m1" "$(best "${o1[@]}")" "$(best "${p1[@]}")" "$(best "${o16[@]}")" "$(best "${p16[@]}")" <<'PY'
import sys
name, m0, m1, o1, p1, o16, p16 = sys.argv[1], *map(float, sys.argv[2:])
r = m0 / m1
s1, s16 = p1 / o1, p16 / o16
ok = lambda s: "yes" if s >= 0.9 * r else "no"
print(f"| {name} | {r:.2f} | {s1:.2f}× | {s16:.2f}× | {ok(s1)} | {ok(s16)} |")
PY
done
