#!/usr/bin/env python3
"""The peers amg is measured against: a timm ViT at 224x224 (random weights) in PyTorch eager mode
and exported to ONNX Runtime, on the CPU, timed the way `amg bench` times itself (two warm-up
passes, then the median of several).

Usage: [PEER_PRECISION=bf16] python tools/bench/peer_infer.py vit_small_patch16_224 16
Prints one line per runtime: "<runtime> <version> <arch> b=<batch>: <ms> ms/batch, <img/s> img/s".
With PEER_PRECISION=bf16, PyTorch runs under CPU autocast to bfloat16 (oneDNN's AMX or AVX-512
BF16 kernels on CPUs that have them: the peer for `amg --precision bf16`); ONNX Runtime stays
float32.
"""
import os
import sys
import tempfile

import torch
import timm

from common import median_time

arch, batch = sys.argv[1], int(sys.argv[2])
reps = int(os.environ.get("PEER_REPS", "7"))
torch.manual_seed(0)
model = timm.create_model(arch, pretrained=False, num_classes=0).eval()
x = torch.randn(batch, 3, 224, 224)


bf16 = os.environ.get("PEER_PRECISION", "f32") == "bf16"
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
    t = median_time(lambda: model(x), reps)
print(f"torch {torch.__version__}{' bf16-autocast' if bf16 else ''} {arch} b={batch}: {t * 1e3:.1f} ms/batch, {batch / t:.2f} img/s")

try:
    import onnxruntime as ort

    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    torch.onnx.export(model, x, path, input_names=["images"], output_names=["features"], opset_version=17, dynamo=False)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    t = median_time(lambda: session.run(None, {"images": xn}), reps)
    print(f"onnxruntime {ort.__version__} {arch} b={batch}: {t * 1e3:.1f} ms/batch, {batch / t:.2f} img/s")
except Exception as e:  # the table then shows ORT as nan
    print("onnxruntime failed:", e)
