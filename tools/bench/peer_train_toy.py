#!/usr/bin/env python3
"""PyTorch's time for the step `amg bench --train --toy` times: six pre-norm ViT blocks (B=32, N=33,
D=192, 3 heads, MLP 768, exact GELU), loss mean(y²), AdamW, on the CPU.

Usage: python tools/bench/peer_train_toy.py
Prints one line per step: "step <i>: fwd <s>s total <s>s" (tools/bench/peers.py takes the median of
the totals after two warm-up steps).
"""
import time

import torch
import torch.nn as nn

torch.manual_seed(0)
B, N, D, H, DEPTH = 32, 33, 192, 3, 6


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(D, eps=1e-6)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.norm2 = nn.LayerNorm(D, eps=1e-6)
        self.fc1 = nn.Linear(D, 4 * D)
        self.fc2 = nn.Linear(4 * D, D)

    def forward(self, x):
        q, k, v = self.qkv(self.norm1(x)).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-1, -2)) * (D // H) ** -0.5).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(B, N, D))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


model = nn.Sequential(*[Block() for _ in range(DEPTH)])
opt = torch.optim.AdamW(model.parameters(), 1e-4)
x = torch.randn(B, N, D)
for i in range(8):
    t = time.perf_counter()
    y = model(x)
    loss = (y * y).mean()
    forward = time.perf_counter() - t
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(f"step {i}: fwd {forward:.3f}s total {time.perf_counter() - t:.3f}s")
