#!/usr/bin/env python3
"""The PyTorch round trip, checked in PyTorch: each test fixture is imported and exported with
`amg export --format pytorch`, loaded with torch.load(weights_only=True) into tools/amg_torch.py's
module, and
  1. run on the fixture's reference input: its features (and logits) must equal the PyTorch
     references tools/make_fixtures.py and tools/make_transreid_fixtures.py recorded, within 1e-4;
  2. run on the fixture images, preprocessed as amg does (Pillow bicubic resize, /255, mean/std):
     its features must equal `amg embed`'s, within 1e-4;
  3. saved back with amg_torch.save and imported again: `amg embed` must give the same features.

Usage:
    python3 -m venv .peers && .peers/bin/pip install torch safetensors numpy pillow
    cargo build --release
    .peers/bin/python tools/torch_roundtrip.py [--amg target/release/amg] [--work /tmp/amg-torch-roundtrip]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import amg_torch  # noqa: E402

fixtures = os.path.join(here, "..", "tests", "fixtures")
ap = argparse.ArgumentParser()
ap.add_argument("--amg", default=os.path.join(here, "..", "target", "release", "amg"))
ap.add_argument("--work", default="/tmp/amg-torch-roundtrip")
args = ap.parse_args()
os.makedirs(args.work, exist_ok=True)
W = lambda *p: os.path.join(args.work, *p)
F = lambda name: os.path.join(fixtures, name)


def amg(*a):
    subprocess.run([args.amg, *a], check=True, capture_output=True, text=True)


def embed(model_dir, out, sie=False):
    # The fixture images' names give no camera: a model with SIE gets camera index 0 for all.
    amg("embed", "--model", model_dir, "--images", F("images"), "--out", out, "--force", *(["--camera", "0"] if sie else []))
    return load_file(out)["features"]


def images_as_amg_reads_them(cfg):
    h, w = cfg["input"]["height"], cfg["input"]["width"]
    mean, std = np.array(cfg["input"]["mean"], np.float32), np.array(cfg["input"]["std"], np.float32)
    names = sorted(n for n in os.listdir(F("images")) if n.lower().endswith((".png", ".jpg", ".jpeg")))
    xs = []
    for n in names:
        img = Image.open(os.path.join(F("images"), n)).convert("RGB").resize((w, h), Image.BICUBIC)
        x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        xs.append(((x - mean) / std).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(xs))


plan_a = json.load(open(F("fixtures.json")))["plan_timm_a"]
plan_tr = json.load(open(F("transreid.json")))["jpm_sie_plan"]
tr_jpm = ["--from", "transreid", F("ckpt_transreid_jpm_sie.pth"), "--checkpoint-img-size", "64x40", "--stride", "12", "--heads", "2"]
cases = [
    ("timm .safetensors 64x64", ["--from", "timm", F("ckpt_timm_a.safetensors")], None, "ref_timm_a"),
    ("timm .pth 64x32, 2 heads of 32", ["--from", "timm", F("ckpt_timm_b.pth"), "--checkpoint-img-size", "64x32", "--heads", "2"], None, "ref_timm_b"),
    ("timm with a head + token plan", ["--from", "timm", F("ckpt_timm_a.safetensors")], plan_a, "ref_timm_a_plan"),
    ("LA-Transformer .pth (fp16)", ["--from", "la-transformer", F("ckpt_la.pth")], None, "ref_la"),
    ("AMG reference .pth (heads + tokens pruned)", ["--from", "amg", F("ckpt_amg.pth")], None, "ref_amg"),
    ("TransReID JPM + SIE, stride 12, 64x40", tr_jpm, None, "ref_transreid_jpm_sie"),
    ("TransReID JPM + SIE, pruned (trunk, b1, b2)", tr_jpm, plan_tr, "ref_transreid_jpm_sie:pruned."),
    ("TransReID 256x128 stride 12, BN feature", ["--from", "transreid", F("ckpt_transreid_stride12_256x128.pth"), "--neck-feat", "after"], None,
     "ref_transreid_stride12_256x128"),
]
rows, worst = [], 0.0
with torch.no_grad():
    for i, (name, imp, plan, ref) in enumerate(cases):
        d = W(f"m{i}")
        amg("import", *imp, "--out", d, "--force")
        if plan is not None:
            json.dump(plan, open(W(f"plan{i}.json"), "w"))
            amg("prune", "--model", d, "--plan", W(f"plan{i}.json"), "--out", d + "-pruned", "--force")
            d += "-pruned"
        pth = W(f"m{i}.pth")
        amg("export", "--model", d, "--format", "pytorch", "--out", pth, "--force")
        model, cfg = amg_torch.load(pth)
        ref, _, pre = ref.partition(":")
        r = load_file(F(ref + ".safetensors"))
        sie = bool(cfg["arch"].get("sie"))
        cams = torch.from_numpy(r["cameras"]).long() if sie else None
        feats, logits = model(torch.from_numpy(r["input"]), cams)
        d_ref = float(np.abs(feats.numpy() - r[pre + "features"]).max())
        for p, l in enumerate(logits):
            d_ref = max(d_ref, float(np.abs(l.numpy() - r[f"{pre}logits.{p}"]).max()))
        want = embed(d, W(f"m{i}.embed.safetensors"), sie)
        x = images_as_amg_reads_them(cfg)
        got, _ = model(x, torch.zeros(len(x), dtype=torch.long) if sie else None)
        d_amg = float(np.abs(got.numpy() - want).max())
        amg_torch.save(model, cfg, W(f"m{i}-back.pth"))
        fmt = "transreid" if cfg["head"]["type"] == "bnneck" else "amg"
        amg("import", "--from", fmt, W(f"m{i}-back.pth"), "--out", d + "-back", "--force")
        d_back = float(np.abs(embed(d + "-back", W(f"m{i}.back.embed.safetensors"), sie) - want).max())
        worst = max(worst, d_ref, d_amg, d_back)
        rows.append((name, d_ref, d_amg, d_back))

print(f"torch {torch.__version__}; every checkpoint loads with torch.load(weights_only=True)\n")
print("| fixture | module vs PyTorch reference | module vs `amg embed` | saved back, re-imported: `amg embed` vs before |")
print("|---|---|---|---|")
for name, a, b, c in rows:
    print(f"| {name} | {a:.1e} | {b:.1e} | {c:.1e} |")
sys.exit(0 if worst <= 1e-4 else 1)
