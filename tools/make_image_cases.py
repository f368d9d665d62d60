#!/usr/bin/env python3
"""Small images written by Pillow for the image-reading tests (tests/fixtures/image_cases/): JPEGs as
cameras and PIL write them — baseline, progressive, with restart markers, with bytes after the
end-of-image marker — and a PNG, so the tests can check that every truncation of each is refused
and every complete file is read.

    python3 -m venv .peers && .peers/bin/pip install pillow numpy
    .peers/bin/python tools/make_image_cases.py
"""
import os

import numpy as np
from PIL import Image

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "image_cases")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)
# A smooth picture with some noise: realistic entropy-coded data (stuffed 0xFF00 bytes appear).
y, x = np.mgrid[0:48, 0:24]
img = np.stack([x * 10, y * 5, (x + y) * 4], -1) + rng.integers(0, 40, (48, 24, 3))
im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
im.save(os.path.join(out, "baseline.jpg"), quality=90)
im.save(os.path.join(out, "progressive.jpg"), quality=90, progressive=True)
# Restart markers every MCU row (RSTn inside the entropy-coded data).
im.save(os.path.join(out, "restart.jpg"), quality=90, restart_marker_rows=1)
with open(os.path.join(out, "trailing.jpg"), "wb") as f:
    f.write(open(os.path.join(out, "baseline.jpg"), "rb").read() + b"\x00\x00camera-trailer")
im.save(os.path.join(out, "plain.png"))
for n in sorted(os.listdir(out)):
    print(n, os.path.getsize(os.path.join(out, n)))
