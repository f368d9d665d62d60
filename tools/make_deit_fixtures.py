#!/usr/bin/env python3
"""DeiT reference fixtures for amg's tests (tests/fixtures/): a small random-weight distilled DeiT
(timm's VisionTransformerDistilled: class and distillation tokens, `head` and `head_dist`
classifiers), its checkpoint as timm saves it, and timm's outputs for a random batch — the
normalised tokens and the row-part retrieval feature of docs/method.md §1 over the patch tokens
(both prefix tokens left out).

    python3 -m venv .peers && .peers/bin/pip install torch timm safetensors numpy
    .peers/bin/python tools/make_deit_fixtures.py [OUT_DIR]
"""
import os
import sys

import torch
from safetensors.torch import save_file
from timm.models.deit import VisionTransformerDistilled

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
torch.manual_seed(5)


def part_features(tokens, prefix, grid_w):
    """Row-averaged patch tokens, each part scaled to norm 1/sqrt(P), concatenated."""
    B, N, D = tokens.shape
    parts = tokens[:, prefix:].reshape(B, -1, grid_w, D).mean(dim=2)
    P = parts.shape[1]
    parts = parts / (parts.norm(dim=2, keepdim=True) * P ** 0.5)
    return parts.reshape(B, P * D)


with torch.no_grad():
    # Non-square 64x32 input (a 4x2 grid), 2 heads of 64, ImageNet classes cut to 7.
    m = VisionTransformerDistilled(img_size=(64, 32), patch_size=16, embed_dim=128, depth=2, num_heads=2, num_classes=7).eval()
    g = torch.Generator().manual_seed(77)
    for name, p in m.named_parameters():
        # Weights well away from timm's init so that every term of the forward pass matters.
        p.copy_((1.0 + 0.2 * torch.randn(p.shape, generator=g)) if name.endswith(".weight") and p.dim() == 1 else 0.08 * torch.randn(p.shape, generator=g))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, os.path.join(OUT, "ckpt_deit_distilled.safetensors"))
    x = torch.randn(2, 3, 64, 32)
    t = m.forward_features(x)
    save_file({"input": x, "tokens": t.contiguous(), "features": part_features(t, 2, 2).contiguous()},
              os.path.join(OUT, "ref_deit_distilled.safetensors"))
    print("tokens", tuple(t.shape), "->", OUT)
