#!/usr/bin/env python3
"""PyTorch's float32 matrix product on this CPU: the check beside `amg bench --gemm` for the
machine's ceiling (tools/bench/peers.py runs both).

Usage: python tools/bench/peer_sgemm.py [SIZE=2048] [ITERS=10]
Prints: "torch <version> sgemm <n>x<n>x<n>, <threads> threads: <best> GFLOP/s best, <median> median".
"""
import sys
import time

import torch

n = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
iters = int(sys.argv[2]) if len(sys.argv) > 2 else 10
torch.manual_seed(0)
a, b = torch.randn(n, n), torch.randn(n, n)
out = torch.empty(n, n)
torch.mm(a, b, out=out)
rates = []
for _ in range(iters):
    t = time.perf_counter()
    torch.mm(a, b, out=out)
    rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
rates.sort()
print(f"torch {torch.__version__} sgemm {n}x{n}x{n}, {torch.get_num_threads()} threads: {rates[-1]:.1f} GFLOP/s best, {rates[len(rates) // 2]:.1f} median")
