#!/usr/bin/env python3
"""amg's inference in float32 against `--precision bf16`, measured in one run on this machine.

Usage:
    cargo build --release
    python3 tools/bench/precision.py [--archs tiny,small,base] [--batches 1,16] [--rounds 3]

For each (arch, batch) it runs `amg bench --arch A --batch-size B --json` in f32 and in bf16
(timm-shaped ViTs at 224x224, random weights), alternating them --rounds times and keeping each
one's best, and prints a Markdown table: img/s of each, the speed-up (best against best, and the
median and range of the per-round ratios), the unit the bfloat16 products ran on, and how
far the bfloat16 features are from float32's on the benchmark's input (largest element difference
of the unit-norm features, lowest cosine similarity). Needs only Python's standard library.
"""
import argparse
import json
import os
import subprocess

from common import cpu_model, paired

ap = argparse.ArgumentParser()
ap.add_argument("--amg", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "release", "amg"))
ap.add_argument("--archs", default="tiny,small,base")
ap.add_argument("--batches", default="1,16")
ap.add_argument("--iters", type=int, default=0, help="timed iterations (default: scaled to the model)")
ap.add_argument("--rounds", type=int, default=3)
args = ap.parse_args()


def bench(arch, b, iters, precision):
    cmd = [args.amg, "bench", "--arch", arch, "--batch-size", str(b), "--iters", str(iters), "--precision", precision, "--json"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores\n")
print("| model | batch | f32 img/s | bf16 img/s | bf16 / f32 | per round, median (range) | bf16 on | features vs f32: max diff, min cosine |")
print("|---|---|---|---|---|---|---|---|")
for arch in args.archs.split(","):
    for b in [int(x) for x in args.batches.split(",")]:
        iters = args.iters or max(5, {"tiny": 60, "small": 30, "base": 10}[arch] // max(1, b // 4))
        best = {"f32": 0.0, "bf16": 0.0}
        ratios = []
        last = None
        for _ in range(args.rounds):
            f = bench(arch, b, iters, "f32")["img_per_s"]
            last = bench(arch, b, iters, "bf16")
            ratios.append(last["img_per_s"] / f)
            best["f32"], best["bf16"] = max(best["f32"], f), max(best["bf16"], last["img_per_s"])
        d = last["vs_f32"]
        on = {"amx": "AMX tiles", "avx512_bf16": "AVX-512 BF16"}.get(last.get("bf16_unit"), "emulation (no bfloat16 unit)")
        print(f"| ViT-{arch}/16 | {b} | {best['f32']:.2f} | {best['bf16']:.2f} | {best['bf16'] / best['f32']:.2f}× | "
              f"{paired(ratios)} | {on} | {d['max_abs_diff']:.1e}, {d['min_cosine']:.6f} |", flush=True)
