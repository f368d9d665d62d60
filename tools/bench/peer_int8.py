#!/usr/bin/env python3
"""ONNX Runtime's INT8 models, the peers of amg's INT8 models: a timm ViT (random weights) exported
to ONNX, then quantized by ONNX Runtime itself — `quantize_static` (QDQ format, int8 weights per
channel, int8 activations, calibrated on 8 random batches with its default MinMax calibrator) and
`quantize_dynamic` (int8 weights per channel, activations quantized at run time) — each timed the
way `amg bench` times itself (two warm-up runs, then the median), with the float32 model beside.

Usage: python tools/bench/peer_int8.py vit_small_patch16_224 16 [224x224]
Prints one line per model: "onnxruntime <version> <kind> <arch> <size> b=<batch>: <ms> ms/batch, <img/s> img/s".
"""
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import timm
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

from common import median_time

arch, batch = sys.argv[1], int(sys.argv[2])
h, w = (int(v) for v in (sys.argv[3] if len(sys.argv) > 3 else "224x224").split("x"))
reps = int(os.environ.get("PEER_REPS", "7"))
torch.manual_seed(0)
model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=(h, w)).eval()
x = torch.randn(batch, 3, h, w)
work = tempfile.mkdtemp()
f32 = os.path.join(work, "f32.onnx")
torch.onnx.export(model, x, f32, input_names=["images"], output_names=["features"], opset_version=17, dynamo=False,
                  dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})


class Batches(CalibrationDataReader):
    def __init__(self):
        g = np.random.default_rng(0)
        self.left = [{"images": g.standard_normal((1, 3, h, w), dtype=np.float32)} for _ in range(8)]

    def get_next(self):
        return self.left.pop() if self.left else None


static = os.path.join(work, "static.onnx")
quantize_static(f32, static, Batches(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
dynamic = os.path.join(work, "dynamic.onnx")
quantize_dynamic(f32, dynamic, per_channel=True, weight_type=QuantType.QInt8)


xn = x.numpy()
for kind, path in [("float32", f32), ("quantize_static", static), ("quantize_dynamic", dynamic)]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    t = median_time(lambda: session.run(None, {"images": xn}), reps)
    print(f"onnxruntime {ort.__version__} {kind} {arch} {h}x{w} b={batch}: {t * 1e3:.1f} ms/batch, {batch / t:.2f} img/s")
