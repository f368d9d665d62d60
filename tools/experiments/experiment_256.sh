#!/usr/bin/env bash
# AMG against random pruning and an unpruned control at Re-ID's usual 256x128 input (129 tokens),
# on the occluded synthetic benchmark, with 3 seeds per cell. See docs/experiment_256.md for the
# design, what each stage costs on 2 cores and the results.
#
# Usage: tools/experiments/experiment_256.sh [WORK_DIR] [STAGE...]
#   WORK_DIR  default /tmp/amg-exp256 (about 2 GB)
#   STAGE     base | seed0 | seed1 | seed2 | report | all (default: all, in that order)
#
# Resumable: a finished cell (its report.json / eval.json) is skipped; a killed training run or
# pruning run continues from its last finished epoch / iteration. Environment: AMG (the binary,
# default target/release/amg), PY (a python3 with matplotlib for the plot; default: a venv made
# under WORK_DIR on first use), JOBS (cells of a seed stage run at once, default 1: on a machine
# with more cores, JOBS=8 on 16 cores ran a stage about 4x faster; each cell gets cores/JOBS
# threads and its output goes to WORK_DIR/logs/CELL.log; the speed-ups such cells measure are
# contended and the report leaves them out).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
AMG=${AMG:-$ROOT/target/release/amg}
W=${1:-/tmp/amg-exp256}
shift || true
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(all)
JOBS=${JOBS:-1}
mkdir -p "$W/cells"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
timed() { # name, command...: runs the command, appends its wall time to $W/times.tsv
  local name=$1; shift   # (to times-parallel.tsv for a cell run beside others: not comparable)
  local t0; t0=$(date +%s)
  "$@"
  echo -e "$name\t$(( $(date +%s) - t0 ))" >> "$W/times${IN_PARALLEL:+-parallel}.tsv"
}

# --- the base -------------------------------------------------------------------------------
# An "ImageNet stand-in" pretraining stage on a larger, non-occluded synthetic set of other people
# (seed 1), at 128x64 where an epoch is 4x cheaper; then the base: the pretrained backbone moved to
# 256x128 (position embedding resampled), trained on the occluded benchmark's training split until
# its validation mAP is flat.
PRE_EPOCHS=16
BASE_EPOCHS=20
stage_base() {
  [ -f "$W/data/synth.json" ] || timed synth-benchmark "$AMG" synth --out "$W/data" --occluded --seed 0 --size 256x128 --force
  [ -f "$W/pretrain-data/synth.json" ] || timed synth-pretrain "$AMG" synth --out "$W/pretrain-data" --ids 1000 --images-per-id 16 --seed 1 --size 128x64 --force
  train_resumable pretrain "$W/pretrain" "$PRE_EPOCHS" --data "$W/pretrain-data" --arch tiny --img-size 128x64 --batch-size 64 \
    --lr 1e-3 --warmup-epochs 1 --eval-every 4 --seed 0
  train_resumable base "$W/base" "$BASE_EPOCHS" --data "$W/data" --init "$W/pretrain/last" --img-size 256x128 --batch-size 64 \
    --lr 5e-4 --warmup-epochs 1 --eval-every 2 --seed 0
}

# amg train, or its --resume when an earlier run of it was killed; skipped when finished.
train_resumable() { # name, run dir, epochs, args...
  local name=$1 out=$2 epochs=$3; shift 3
  local state="$out/last/train_state.json"
  if [ -f "$state" ] && python3 -c "import json,sys; s=json.load(open(sys.argv[1])); sys.exit(0 if s['epochs_done'] >= int(sys.argv[2]) else 1)" "$state" "$epochs"; then
    return
  fi
  local data t teacher=()
  data=$(printf '%s\n' "$@" | sed -n '/^--data$/{n;p;}')
  t=$(printf '%s\n' "$@" | sed -n '/^--teacher$/{n;p;}')
  [ -z "$t" ] || teacher=(--teacher "$t")
  if [ -f "$state" ]; then
    log "$name: continuing $out"
    timed "$name" "$AMG" train --data "$data" --out "$out" --epochs "$epochs" "${teacher[@]}" --resume
  else
    log "$name: training $out"
    timed "$name" "$AMG" train --out "$out" --epochs "$epochs" --force "$@"
  fi
}

# --- the cells ------------------------------------------------------------------------------
# Every pruned model and the control get the same fine-tuning: the reference recipe (Adam, L2 weight
# decay 1e-3, lr 1e-4, StepLR 3 epochs γ 0.7), soft distillation from the base (α 0.2, τ 1), batch 64,
# FT_EPOCHS epochs. One pruning round; AMG calibrates on 512 training images.
FT_EPOCHS=2
FT=(--distill soft --alpha 0.2 --tau 1 --batch-size 64 --lr 1e-4 --weight-decay 1e-3)
# name heads tokens: heads and key tokens together at three budgets, and each alone at ≈ 30 %
# (in the paper's FLOP convention; honest-MAC savings are in the report).
BUDGETS=(
  "ht12 0.17 0.25"
  "ht21 0.34 0.50"
  "ht29 0.50 0.75"
  "heads26 0.67 0"
  "tokens18 0 0.75"
)

prune_cell() { # criterion, name, heads, tokens, seed
  local crit=$1 name=$2 heads=$3 tokens=$4 seed=$5
  local out="$W/cells/$crit-$name-s$seed"
  [ -f "$out/report.json" ] && return
  local again=(--force)
  [ -d "$out.partial" ] && again=(--resume)
  log "$crit $name seed $seed → $out"
  timed "$crit-$name-s$seed" "$AMG" prune --model "$W/base/last" --data "$W/data" --out "$out" --criterion "$crit" \
    --heads "$heads" --tokens "$tokens" --iters 1 --final-epochs "$FT_EPOCHS" --calib-limit 512 --seed "$seed" "${FT[@]}" "${again[@]}"
}

control_cell() { # seed: the unpruned base fine-tuned exactly as the pruned models are
  local seed=$1 out="$W/cells/control-s$1"
  [ -f "$out/eval.json" ] && return
  train_resumable "control-s$seed" "$out" "$FT_EPOCHS" --data "$W/data" --init "$W/base/last" --teacher "$W/base/last" "${FT[@]}" \
    --optimizer adam --scheduler step --step-size 3 --gamma 0.7 --warmup-epochs 0 --dropout 0.5 --eval-every 0 --seed "$seed"
  "$AMG" eval --model "$out/last" --data "$W/data" --json > "$out/eval.json.tmp"
  mv "$out/eval.json.tmp" "$out/eval.json"
}

# One cell: in the foreground, or with JOBS > 1 in the background (at most JOBS at a time), with
# its share of the cores, its output in logs/CELL.log and a marker saying its speed was measured
# beside other cells.
PIDS=()
run_cell() { # cell name, command...
  local cell=$1; shift
  if [ "$JOBS" -le 1 ]; then "$@"; return; fi
  # Throttle only; failures are counted by wait_cells, which waits for every cell by its pid
  # (bash keeps a reaped background job's status for a later `wait PID`).
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  mkdir -p "$W/logs"
  (
    export RAYON_NUM_THREADS=$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 )) IN_PARALLEL=1
    local before; before=$(ls "$W/cells/$cell/report.json" "$W/cells/$cell/eval.json" 2>/dev/null || true)
    "$@" > "$W/logs/$cell.log" 2>&1   # set -e: a failure ends this subshell, counted by wait_cells
    [ -n "$before" ] || echo "JOBS=$JOBS" > "$W/cells/$cell/measured-in-parallel"
  ) &
  PIDS+=($!)
}
wait_cells() {
  local failed=0 p
  for p in "${PIDS[@]}"; do wait "$p" || failed=$((failed + 1)); done
  PIDS=()
  [ "$failed" -eq 0 ] || { log "cells failed: $failed (see $W/logs)"; exit 1; }
}

stage_seed() { # seed
  local seed=$1
  [ -f "$W/base/last/model.safetensors" ] || { log "stage seed$seed needs the base: run stage base first"; exit 1; }
  run_cell "control-s$seed" control_cell "$seed"
  for b in "${BUDGETS[@]}"; do
    read -r name heads tokens <<< "$b"
    run_cell "amg-$name-s$seed" prune_cell amg "$name" "$heads" "$tokens" "$seed"
    run_cell "random-$name-s$seed" prune_cell random "$name" "$heads" "$tokens" "$seed"
  done
  wait_cells
}

stage_report() {
  local py=${PY:-}
  if [ -z "$py" ]; then
    if python3 -c "import matplotlib" 2>/dev/null; then py=python3; else
      [ -x "$W/venv/bin/python" ] || { python3 -m venv "$W/venv" && "$W/venv/bin/pip" install -q matplotlib; }
      py="$W/venv/bin/python"
    fi
  fi
  "$py" "$ROOT/tools/experiments/experiment_256_report.py" "$W" --out-dir "${REPORT_DIR:-$W}"
}

for s in "${STAGES[@]}"; do
  case $s in
    base) stage_base ;;
    seed[0-9]*) stage_seed "${s#seed}" ;;
    report) stage_report ;;
    all) stage_base; stage_seed 0; stage_seed 1; stage_seed 2; stage_report ;;
    *) echo "unknown stage $s: expected base, seedN, report or all" >&2; exit 2 ;;
  esac
done
