#!/usr/bin/env python3
"""Small torch.save files for the .pth reader's unit tests (src/import/pth.rs), one per feature
the reader claims: pickle protocols 2, 4 and 5, `_codecs.encode` (protocol 2's bytes), strided and
offset views of a shared storage, float16/bfloat16/int64 tensors, NumPy scalars and arrays,
a big-endian NumPy array (to be refused), and state dicts nested under `state_dict` / `model`.
Writes tests/fixtures/pth_cases/<case>.pth and expected.json (each tensor's dtype, shape and
values as torch reads them back).

Usage:
    .peers/bin/python tools/make_pth_cases.py
"""
import json
import os

import numpy as np
import torch

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "pth_cases")
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8

cases = {
    "proto2": ({"w": base.clone(), "b": torch.tensor([1.5, -2.0])}, 2),
    "proto4": ({"w": base.clone()}, 4),
    "proto5": ({"w": base.clone()}, 5),
    # Views share one storage: torch.save writes the storage once, each view with its offset/stride.
    "views": ({"full": base, "t": base.t(), "slice": base[1:, ::2], "row": base[2], "scalar": base[3, 4]}, 2),
    "dtypes": ({"h": base.half(), "bf": base.bfloat16(), "i": torch.arange(5, dtype=torch.int64), "m": torch.tensor([True, False, True])}, 2),
    # NumPy values beside the tensors, as the AMG reference code saves `heads`/`channels` lists.
    "numpy": ({"state_dict": {"w": base.clone()}, "heads": [np.int64(3), np.int64(2)], "ratio": np.float32(0.5),
               "arr": np.arange(6, dtype=np.float32).reshape(2, 3)}, 2),
    "numpy_proto4": ({"state_dict": {"w": base.clone()}, "heads": [np.int64(3), np.int64(2)]}, 4),
    "big_endian": ({"w": np.arange(4, dtype=">f4")}, 2),
    "nested_model": ({"model": {"w": base.clone()}, "epoch": 7}, 2),
}

expected = {}
for name, (obj, proto) in cases.items():
    path = os.path.join(out, f"{name}.pth")
    torch.save(obj, path, pickle_protocol=proto)
    back = torch.load(path, weights_only=False)
    sd = back.get("state_dict", back.get("model", back))
    tensors = {}
    for k, v in sd.items():
        if isinstance(v, np.ndarray):
            if v.dtype.byteorder == ">":
                continue
            v = torch.from_numpy(v)
        if isinstance(v, torch.Tensor):
            tensors[k] = {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape), "values": v.float().flatten().tolist()}
    expected[name] = {"protocol": proto, "tensors": tensors}
    if name.startswith("numpy"):
        expected[name]["heads"] = [int(h) for h in back["heads"]]
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
print("wrote", len(cases), "cases to", out)
