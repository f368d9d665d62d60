#!/usr/bin/env python3
"""Peer anchor: one PyTorch CPU training step of an LA-Transformer on a timm ViT, as `amg bench
--train --arch A --img-size HxW --batch-size B` runs it (training mode, dropout 0.5 in the part
classifiers, sum of part cross-entropies, AdamW).

Usage: python tools/bench/peer_train_la.py [ARCH=tiny] [HxW=128x64] [BATCH=32] [CLASSES=751] [STEPS=6] [profile]

With `profile` last, the steps after the first two also run under torch.profiler and its table of
operators by self time follows (how PyTorch's step divides between products and the rest).
"""
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import timm

arch = sys.argv[1] if len(sys.argv) > 1 else "tiny"
h, w = map(int, (sys.argv[2] if len(sys.argv) > 2 else "128x64").split("x"))
B = int(sys.argv[3]) if len(sys.argv) > 3 else 32
C = int(sys.argv[4]) if len(sys.argv) > 4 else 751
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 6
profile = len(sys.argv) > 6 and sys.argv[6] == "profile"
torch.manual_seed(0)


class LA(nn.Module):
    def __init__(self):
        super().__init__()
        self.vit = timm.create_model(f"vit_{arch}_patch16_224", pretrained=False, num_classes=0, img_size=(h, w))
        D = self.vit.embed_dim
        self.parts = h // 16
        self.heads = nn.ModuleList([nn.Sequential(nn.Linear(D, 256), nn.BatchNorm1d(256), nn.Dropout(0.5), nn.Linear(256, C)) for _ in range(self.parts)])

    def forward(self, x):
        t = self.vit.forward_features(x)
        cls = t[:, 0]
        p = t[:, 1:].reshape(x.shape[0], self.parts, -1, t.shape[-1]).mean(dim=2)
        return [hd((cls + 8 * p[:, i]) / 9) for i, hd in enumerate(self.heads)]


m = LA().train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=1e-3)
x = torch.randn(B, 3, h, w)
y = torch.randint(0, C, (B,))
times = []
for i in range(steps):
    t = time.perf_counter()
    out = m(x)
    tf = time.perf_counter() - t
    loss = sum(F.cross_entropy(o, y) for o in out)
    opt.zero_grad()
    loss.backward()
    opt.step()
    dt = time.perf_counter() - t
    times.append(dt)
    print(f"step {i}: fwd {tf:.3f}s total {dt:.3f}s")
if profile:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps - 2):
            out = m(x)
            loss = sum(F.cross_entropy(o, y) for o in out)
            opt.zero_grad()
            loss.backward()
            opt.step()
    print(f"torch.profiler over {steps - 2} steps:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
med = sorted(times[2:])[len(times[2:]) // 2]
print(f"torch {torch.__version__} LA ViT-{arch} {h}x{w} b={B}: {med * 1e3:.1f} ms/step, {B / med:.1f} img/s")
