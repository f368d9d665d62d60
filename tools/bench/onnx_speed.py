#!/usr/bin/env python3
"""Do the savings survive the export? ViT-S/16 and ViT-B/16 at 224x224 (random timm weights; speed
does not depend on them), pruned by explicit plans to about 30 % fewer honest MACs, exported with
`amg export`, and timed in ONNX Runtime (CPU, default session options) against their unpruned
exports; and amg's unpruned export against `torch.onnx.export` of the same timm model. All models of
one architecture are timed in turn, `--rounds` times (the order rotating every round), each
keeping its best median.

Usage:
    python3 -m venv .peers && .peers/bin/pip install torch timm onnx onnxruntime safetensors
    cargo build --release
    .peers/bin/python tools/bench/onnx_speed.py [--archs small,base] [--batches 1,16] [--rounds 6]

Prints the CPU and one Markdown table per question.
"""
import argparse
import json
import os
import random
import subprocess
import time

import numpy as np
import onnxruntime as ort
import timm
import torch
from safetensors.torch import save_file

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--amg", default=os.path.join(here, "..", "..", "target", "release", "amg"))
ap.add_argument("--work", default="/tmp/amg-onnx-speed")
ap.add_argument("--archs", default="small,base")
ap.add_argument("--batches", default="1,16")
ap.add_argument("--rounds", type=int, default=6)
args = ap.parse_args()
os.makedirs(args.work, exist_ok=True)
W = lambda *p: os.path.join(args.work, *p)


def amg(*a):
    return subprocess.run([args.amg, *a], check=True, capture_output=True, text=True).stdout


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


# Plans keeping 2 of 6 (ViT-S) or 4 of 12 (ViT-B) heads and half the 196 patch keys in every
# layer: about 30 % of the honest MACs.
random.seed(0)
heads = {"small": (6, 2), "base": (12, 4)}


def plan(total, keep):
    return {"heads": [sorted(random.sample(range(total), keep)) for _ in range(12)], "tokens": [[0] + sorted(random.sample(range(1, 197), 98)) for _ in range(12)]}


def median_time(sess, x, reps):
    sess.run(None, {"images": x})
    sess.run(None, {"images": x})
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(None, {sess.get_inputs()[0].name: x})
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; onnxruntime {ort.__version__}, torch {torch.__version__}\n")
savings, peers = [], []
for arch in args.archs.split(","):
    name = f"vit_{arch}_patch16_224"
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=0).eval()
    st = W(f"{arch}.safetensors")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, st)
    amg("import", "--from", "timm", st, "--out", W(arch), "--force")
    json.dump(plan(*heads[arch]), open(W(f"{arch}-plan.json"), "w"))
    amg("prune", "--model", W(arch), "--plan", W(f"{arch}-plan.json"), "--out", W(f"{arch}-pruned"), "--force")
    for d in (arch, f"{arch}-pruned"):
        amg("export", "--model", W(d), "--out", W(f"{d}.onnx"), "--force")
    torch.onnx.export(m, torch.randn(1, 3, 224, 224), W(f"{arch}-torch.onnx"), input_names=["images"], output_names=["features"],
                      dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, opset_version=17, dynamo=False)
    macs = {d: json.loads(amg("inspect", "--model", W(d), "--json"))["cost"]["macs"] for d in (arch, f"{arch}-pruned")}
    sessions = {k: ort.InferenceSession(W(f"{k}.onnx"), providers=["CPUExecutionProvider"]) for k in (arch, f"{arch}-pruned", f"{arch}-torch")}
    for b in [int(x) for x in args.batches.split(",")]:
        x = np.random.default_rng(0).standard_normal((b, 3, 224, 224), dtype=np.float32)
        reps = max(5, 24 // b) if arch == "base" else max(5, 48 // b)
        best = {k: 0.0 for k in sessions}
        # Rotate the order every round: in a fixed order the model timed first in a round runs a few
        # per cent slower here than the same model timed later (measured both ways), which would bias
        # the comparison. Use a multiple of 3 rounds so each model takes each place equally often.
        keys = list(sessions)
        for r in range(args.rounds):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                best[k] = max(best[k], b / median_time(sessions[k], x, reps))
        ratio = macs[arch] / macs[f"{arch}-pruned"]
        speedup = best[f"{arch}-pruned"] / best[arch]
        savings.append((arch, b, 100 * (1 - 1 / ratio), ratio, best[arch], best[f"{arch}-pruned"], speedup, speedup >= 0.9 * ratio))
        peers.append((arch, b, best[arch], best[f"{arch}-torch"], best[arch] / best[f"{arch}-torch"]))
        print(f"{arch} b={b}: amg export {best[arch]:.2f}, pruned {best[f'{arch}-pruned']:.2f}, torch.onnx.export {best[f'{arch}-torch']:.2f} img/s", flush=True)

print("\n| model in ONNX Runtime | batch | honest MACs saved | MAC ratio | unpruned img/s | pruned img/s | speed-up | ≥ 0.9 × ratio |")
print("|---|---|---|---|---|---|---|---|")
for arch, b, saved, ratio, u, p, s, ok in savings:
    print(f"| ViT-{arch[0].upper()}/16 224 | {b} | {saved:.1f} % | {ratio:.2f} | {u:.2f} | {p:.2f} | {s:.2f}× | {'yes' if ok else 'no'} |")
print("\n| unpruned model in ONNX Runtime | batch | amg export img/s | torch.onnx.export img/s | amg / torch export |")
print("|---|---|---|---|---|")
for arch, b, a, t, r in peers:
    print(f"| ViT-{arch[0].upper()}/16 224 | {b} | {a:.2f} | {t:.2f} | {r:.2f}× |")
