#!/usr/bin/env python3
"""amg's ONNX exports against the outside world: each test fixture is imported and exported with
amg, checked by `onnx.checker` (full check: the model and its inferred shapes), run in ONNX
Runtime — and in OpenVINO, when it is installed — on the fixture's reference input, and compared
with the PyTorch outputs that tools/make_fixtures.py and tools/make_transreid_fixtures.py recorded
(timm / LA-Transformer / the AMG reference computation / the TransReID reference, whose SIE models
take each image's camera as a second input, `cameras`).

Usage:
    python3 -m venv .peers && .peers/bin/pip install onnx onnxruntime safetensors numpy openvino
    cargo build --release
    .peers/bin/python tools/onnx_check.py [--amg target/release/amg] [--work /tmp/amg-onnx-check]

Prints a Markdown table; exits 1 if any difference exceeds 1e-4.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

try:
    import openvino
except ImportError:
    openvino = None

here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.join(here, "..", "tests", "fixtures")
ap = argparse.ArgumentParser()
ap.add_argument("--amg", default=os.path.join(here, "..", "target", "release", "amg"))
ap.add_argument("--work", default="/tmp/amg-onnx-check")
args = ap.parse_args()
os.makedirs(args.work, exist_ok=True)


def amg(*a):
    subprocess.run([args.amg, *a], check=True, capture_output=True, text=True)


def fixture(name):
    return os.path.join(fixtures, name)


# (name, import arguments, plan to apply or None, reference file, classifier logits?)
plan_a = json.load(open(fixture("fixtures.json")))["plan_timm_a"]
plan_tr = json.load(open(fixture("transreid.json")))["jpm_sie_plan"]
tr_jpm = ["--from", "transreid", fixture("ckpt_transreid_jpm_sie.pth"), "--checkpoint-img-size", "64x40", "--stride", "12", "--heads", "2"]
cases = [
    ("timm .safetensors 64x64", ["--from", "timm", fixture("ckpt_timm_a.safetensors")], None, "ref_timm_a", False),
    ("timm, position embedding resampled to 80x48", ["--from", "timm", fixture("ckpt_timm_a.safetensors"), "--img-size", "80x48"], None, "ref_timm_a_80x48", False),
    ("timm .pth 64x32, 2 heads of 32", ["--from", "timm", fixture("ckpt_timm_b.pth"), "--checkpoint-img-size", "64x32", "--heads", "2"], None, "ref_timm_b", False),
    ("timm with a head + token plan", ["--from", "timm", fixture("ckpt_timm_a.safetensors")], plan_a, "ref_timm_a_plan", False),
    ("LA-Transformer .pth (fp16)", ["--from", "la-transformer", fixture("ckpt_la.pth")], None, "ref_la", True),
    ("AMG reference .pth (heads + tokens pruned)", ["--from", "amg", fixture("ckpt_amg.pth")], None, "ref_amg", True),
    ("TransReID JPM + SIE, stride 12, 64x40", tr_jpm, None, "ref_transreid_jpm_sie", True),
    ("TransReID JPM + SIE, pruned (trunk, b1, b2)", tr_jpm, plan_tr, "ref_transreid_jpm_sie:pruned.", True),
    ("TransReID 256x128 stride 12 (211 tokens), BN feature", ["--from", "transreid", fixture("ckpt_transreid_stride12_256x128.pth"), "--neck-feat", "after"], None,
     "ref_transreid_stride12_256x128", True),
    ("TransReID ViT-S style (no qkv bias)", ["--from", "transreid", fixture("ckpt_transreid_small.safetensors"), "--checkpoint-img-size", "64x32", "--heads", "2"], None,
     "ref_transreid_small", True),
]

rows, worst = [], 0.0
for i, (name, imp, plan, ref, la) in enumerate(cases):
    model_dir = os.path.join(args.work, f"m{i}")
    amg("import", *imp, "--out", model_dir, "--force")
    if plan is not None:
        plan_path = os.path.join(args.work, f"plan{i}.json")
        json.dump(plan, open(plan_path, "w"))
        amg("prune", "--model", model_dir, "--plan", plan_path, "--out", model_dir + "-pruned", "--force")
        model_dir += "-pruned"
    path = os.path.join(args.work, f"m{i}.onnx")
    amg("export", "--model", model_dir, "--format", "onnx", "--out", path, "--outputs", "features,logits" if la else "features", "--force")
    onnx.checker.check_model(path, full_check=True)
    ref, _, pre = ref.partition(":")
    r = load_file(fixture(ref + ".safetensors"))
    feeds = {"images": r["input"]}
    if any(i.name == "cameras" for i in onnx.load(path).graph.input):
        feeds["cameras"] = r["cameras"].astype(np.int64)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    d_feat = float(np.abs(out["features"] - r[pre + "features"]).max())
    d_logits = float("nan")
    if la:
        want = np.stack([r[f"{pre}logits.{p}"] for p in range(out["logits"].shape[1])], axis=1)
        d_logits = float(np.abs(out["logits"] - want).max())
    worst = max(worst, d_feat, 0.0 if np.isnan(d_logits) else d_logits)
    d_ov = float("nan")
    if openvino is not None:
        # float32 throughout: on CPUs with AVX-512 BF16 OpenVINO would otherwise compute in bfloat16.
        compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        d_ov = float(np.abs(compiled(feeds)[compiled.output("features")] - r[pre + "features"]).max())
        worst = max(worst, d_ov)
    b, _, h, w = r["input"].shape
    rows.append((name, f"{b}x3x{h}x{w}", d_feat, d_logits, d_ov))

ov = f", openvino {openvino.__version__}" if openvino is not None else ""
print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}{ov}; every model passes onnx.checker.check_model(full_check=True)\n")
print("| fixture | input | ONNX Runtime features: max abs diff to PyTorch | ONNX Runtime logits | OpenVINO (CPU) features |")
print("|---|---|---|---|---|")
fmt = lambda v: "–" if np.isnan(v) else f"{v:.1e}"
for name, shape, f, l, o in rows:
    print(f"| {name} | {shape} | {fmt(f)} | {fmt(l)} | {fmt(o)} |")
sys.exit(0 if worst <= 1e-4 else 1)
