#!/usr/bin/env python3
"""A ViT-B/16 TransReID checkpoint's layout with random weights, to try `amg import --from transreid`
at full size without a trained model: JPM and SIE at 256x128, stride 12, Market-1501's 6 cameras and
751 identities, keys as TransReID's training saves them (under nn.DataParallel's `module.`).

    .peers/bin/python tools/transreid_vitb_layout.py transformer_120.pth
"""
import sys

import torch

D, M = 768, 3072
sd = {}
def lin(k, o, i, bias=True):
    sd[k + ".weight"] = torch.randn(o, i) * 0.02
    if bias: sd[k + ".bias"] = torch.zeros(o)
def ln(k):
    sd[k + ".weight"] = torch.ones(D); sd[k + ".bias"] = torch.zeros(D)
def block(k):
    ln(k + ".norm1"); lin(k + ".attn.qkv", 3 * D, D); lin(k + ".attn.proj", D, D); ln(k + ".norm2"); lin(k + ".mlp.fc1", M, D); lin(k + ".mlp.fc2", D, M)
sd["base.patch_embed.proj.weight"] = torch.randn(D, 3, 16, 16) * 0.02; sd["base.patch_embed.proj.bias"] = torch.zeros(D)
sd["base.cls_token"] = torch.randn(1, 1, D) * 0.02; sd["base.pos_embed"] = torch.randn(1, 211, D) * 0.02
sd["base.sie_embed"] = torch.randn(6, 1, D) * 0.02
for i in range(12): block(f"base.blocks.{i}")
ln("base.norm"); lin("base.fc", 1000, D)
block("b1.0"); ln("b1.1"); block("b2.0"); ln("b2.1")
for s in ["", "_1", "_2", "_3", "_4"]:
    sd[f"bottleneck{s}.weight"] = torch.ones(D); sd[f"bottleneck{s}.bias"] = torch.zeros(D)
    sd[f"bottleneck{s}.running_mean"] = torch.zeros(D); sd[f"bottleneck{s}.running_var"] = torch.ones(D)
    sd[f"bottleneck{s}.num_batches_tracked"] = torch.tensor(0)
    sd[f"classifier{s}.weight"] = torch.randn(751, D) * 0.001
torch.save({("module." + k): v for k, v in sd.items()}, sys.argv[1] if len(sys.argv) > 1 else "transformer_120.pth")
