#!/usr/bin/env python3
"""amg vs PyTorch vs ONNX Runtime inference throughput, measured in one run on this machine.

Usage:
    python3 -m venv .peers && .peers/bin/pip install torch timm onnxruntime onnx
    cargo build --release
    .peers/bin/python tools/bench/peers.py [--archs tiny,small,base] [--batches 1,16] [--baseline OTHER_AMG] [--precision bf16]

For each (arch, batch) it runs `amg bench --arch A --batch-size B --json` and tools/bench/peer_infer.py
(timm ViT at 224x224, PyTorch eager and ONNX Runtime), alternating them --rounds times and keeping
each one's best, and prints img/s and amg's ratio to the faster peer as a Markdown table, under the
CPU's model name, with the machine's ceiling for float32 products (`amg bench --gemm` and
tools/bench/peer_sgemm.py, measured before each model and kept at their best) and amg's fraction of it.
With --baseline, a second amg binary (an earlier build, say) is measured in the same alternation
and gets its own columns. With --precision bf16, amg runs `--precision bf16` and PyTorch runs under
bfloat16 autocast (tools/bench/peer_infer.py, PEER_PRECISION=bf16); ONNX Runtime stays float32.
With --precision int8, amg's INT8 (`amg bench --precision int8`: dynamic per-token scales) and
float32 run against ONNX Runtime's float32 model and its own INT8 models of it, `quantize_static`
(QDQ, per channel) and `quantize_dynamic` (tools/bench/peer_int8.py), at 224x224 and, for ViT-S,
256x128 too; the table adds amg's int8/float32 speed-up and its ratio to the faster ONNX Runtime
INT8 model, with the machine's int8 ceiling (`amg bench --gemm --precision int8`).

Each round also gives a paired ratio — amg against the faster peer measured right after it in the
same round — and the tables add the median and range of those: the neighbours of this project's
VMs slow whole minutes at a time, and a slow minute can land on one program's best-of-rounds but
seldom on both halves of one round, so the paired ratios show how far a cell's ratio can be
trusted (a range that spans 1.0 means that run cannot tell the two apart).

With --train it compares training steps instead: tools/bench/peer_train_toy.py against
`amg bench --train --toy`, and an LA-Transformer step (tools/bench/peer_train_la.py) against
`amg bench --train --arch tiny --img-size 128x64 --batch-size 32`, alternating likewise (best of
--rounds; --baseline works here too).
"""
import argparse
import json
import os
import re
import subprocess
import sys

from common import cpu_model, paired

ap = argparse.ArgumentParser()
ap.add_argument("--peer", default=os.path.join(os.path.dirname(__file__), "peer_infer.py"))
ap.add_argument("--amg", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "release", "amg"))
ap.add_argument("--baseline", help="a second amg binary to measure in the same run")
ap.add_argument("--archs", default="tiny,small,base")
ap.add_argument("--batches", default="1,16")
ap.add_argument("--iters", type=int, default=0, help="amg timed iterations (default: scaled to the model)")
ap.add_argument("--rounds", type=int, default=3, help="alternate amg and the peers this many times and keep each one's best (this VM's neighbours make single runs vary by ±10 %%)")
ap.add_argument("--train", action="store_true", help="compare training steps instead of inference")
ap.add_argument("--precision", default="f32", choices=["f32", "bf16", "int8"],
                help="inference: amg with this --precision, and PyTorch under bfloat16 autocast for bf16 (ONNX Runtime stays float32); "
                     "int8: amg's INT8 and float32 against ONNX Runtime's own INT8 models (tools/bench/peer_int8.py)")
args = ap.parse_args()
if args.train and args.precision != "f32":
    ap.error("--precision measures inference; training runs in float32")


print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores\n")
if args.precision == "bf16" and not args.train:
    print("Precision: amg --precision bf16 and PyTorch under bfloat16 autocast; ONNX Runtime float32.\n")


if args.train:
    # Each step alternates amg (and the baseline build, if given) with PyTorch --rounds times and
    # keeps each one's best (lowest) time.
    here = os.path.dirname(__file__)
    binaries = [args.amg] + ([args.baseline] if args.baseline else [])

    def amg_step(binary, extra):
        return json.loads(subprocess.run([binary, "bench", "--train", *extra, "--json"], check=True, capture_output=True, text=True).stdout)["ms_per_step"]

    def torch_toy():
        out = subprocess.run([sys.executable, os.path.join(here, "peer_train_toy.py")], check=True, capture_output=True, text=True).stdout
        totals = sorted(float(m) for m in re.findall(r"total ([\d.]+)s", out)[2:])
        return totals[len(totals) // 2] * 1e3

    def torch_la(arch, size, b):
        out = subprocess.run([sys.executable, os.path.join(here, "peer_train_la.py"), arch, size, str(b)], check=True, capture_output=True, text=True).stdout
        return float(re.search(r": ([\d.]+) ms/step", out).group(1))

    steps = [("toy 6-block step (B=32, N=33, D=192)", ["--toy", "--iters", "10"], torch_toy)]
    for arch, size, b in [("tiny", "128x64", 32)]:
        steps.append((f"LA ViT-{arch} {size} step, batch {b}", ["--arch", arch, "--img-size", size, "--batch-size", str(b), "--iters", "6"],
                      lambda arch=arch, size=size, b=b: torch_la(arch, size, b)))
    rows = []
    for name, extra, peer in steps:
        best = {k: float("inf") for k in binaries + ["torch"]}
        ratios = []
        for r in range(args.rounds):
            now = {k: amg_step(k, extra) for k in binaries}
            now["torch"] = peer()
            ratios.append(now["torch"] / now[args.amg])
            for k, v in now.items():
                best[k] = min(best[k], v)
            print(f"  {name} round {r + 1}: amg {best[args.amg]:.1f} ms, PyTorch {best['torch']:.1f} ms"
                  + (f", baseline {best[args.baseline]:.1f} ms" if args.baseline else ""), file=sys.stderr, flush=True)
        rows.append((name, best, ratios))
    base_cols = " baseline ms/step | amg / baseline |" if args.baseline else ""
    print(f"| training step | amg ms/step |{base_cols} PyTorch ms/step | amg / PyTorch throughput | per round, median (range) |")
    print("|---|---|" + ("---|---|" if args.baseline else "") + "---|---|---|")
    for name, best, ratios in rows:
        a, t = best[args.amg], best["torch"]
        mid = f" {best[args.baseline]:.1f} | {best[args.baseline] / a:.2f}× |" if args.baseline else ""
        print(f"| {name} | {a:.1f} |{mid} {t:.1f} | {t / a:.2f}× | {paired(ratios)} |")
    sys.exit(0)

if args.precision == "int8":
    here = os.path.dirname(os.path.abspath(__file__))
    cells = [(a, "224x224") for a in args.archs.split(",")] + ([("small", "256x128")] if "small" in args.archs.split(",") else [])

    def amg_run(arch, size, b, iters, precision):
        cmd = [args.amg, "bench", "--arch", arch, "--img-size", size, "--batch-size", str(b), "--iters", str(iters), "--precision", precision, "--json"]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["img_per_s"]

    ceil = {"f32": 0.0, "int8": 0.0}
    rows = []
    for arch, size in cells:
        g = json.loads(subprocess.run([args.amg, "bench", "--gemm", "--json"], check=True, capture_output=True, text=True).stdout)
        ceil["f32"] = max(ceil["f32"], g["general_best_gflops"], g["packed_best_gflops"])
        g = json.loads(subprocess.run([args.amg, "bench", "--gemm", "--precision", "int8", "--json"], check=True, capture_output=True, text=True).stdout)
        ceil["int8"] = max(ceil["int8"], g["best_gops"])
        unit = g["unit"]
        for b in [int(x) for x in args.batches.split(",")]:
            iters = args.iters or max(5, {"tiny": 60, "small": 30, "base": 10}[arch] // max(1, b // 4))
            best = {"int8": 0.0, "f32": 0.0, "float32": 0.0, "quantize_static": 0.0, "quantize_dynamic": 0.0}
            ratios = []
            for _ in range(args.rounds):
                q = amg_run(arch, size, b, iters, "int8")
                best["int8"] = max(best["int8"], q)
                best["f32"] = max(best["f32"], amg_run(arch, size, b, iters, "f32"))
                out = subprocess.run([sys.executable, os.path.join(here, "peer_int8.py"), f"vit_{arch}_patch16_224", str(b), size],
                                     check=True, capture_output=True, text=True).stdout
                got = {k: float(v) for k, v in re.findall(r"onnxruntime \S+ (\w+) .*?([\d.]+) img/s", out)}
                for k, v in got.items():
                    best[k] = max(best[k], v)
                ratios.append(q / max(got["quantize_static"], got["quantize_dynamic"]))
            rows.append((arch, size, b, best, ratios))
            print(f"{arch} {size} b={b}: {best}", file=sys.stderr, flush=True)
    print(f"Ceilings: float32 products {ceil['f32']:.0f} GFLOP/s (`amg bench --gemm`), int8 products {ceil['int8']:.0f} GOP/s on {unit} "
          f"(`amg bench --gemm --precision int8`), best of {len(cells)} measurements each.\n")
    print("| model | input | batch | amg INT8 img/s | amg f32 img/s | INT8 / f32 | ORT f32 | ORT quantize_static | ORT quantize_dynamic | amg INT8 / faster ORT INT8 | per round, median (range) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arch, size, b, best, ratios in rows:
        ort_best = max(best["quantize_static"], best["quantize_dynamic"])
        print(f"| ViT-{arch}/16 | {size} | {b} | {best['int8']:.2f} | {best['f32']:.2f} | {best['int8'] / best['f32']:.2f}× | {best['float32']:.2f} | "
              f"{best['quantize_static']:.2f} | {best['quantize_dynamic']:.2f} | {best['int8'] / ort_best:.2f}× | {paired(ratios)} |")
    sys.exit(0)


def amg_bench(binary, arch, b, iters):
    cmd = [binary, "bench", "--arch", arch, "--batch-size", str(b), "--iters", str(iters), "--precision", args.precision, "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    return r["img_per_s"], 2 * r["gmacs_per_image"]


def amg_ips(binary, arch, b, iters):
    return amg_bench(binary, arch, b, iters)[0]


# The machine's ceiling for float32 products: amg's kernels (`amg bench --gemm`) and PyTorch's
# sgemm on 2048³ products, measured before each model and kept at their best, like the cells.
ceiling = {"amg": 0.0, "torch": 0.0}


def measure_ceiling():
    r = json.loads(subprocess.run([args.amg, "bench", "--gemm", "--json"], check=True, capture_output=True, text=True).stdout)
    ceiling["amg"] = max(ceiling["amg"], r["general_best_gflops"], r["packed_best_gflops"])
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "peer_sgemm.py")], check=True, capture_output=True, text=True).stdout
    ceiling["torch"] = max(ceiling["torch"], float(re.search(r"([\d.]+) GFLOP/s best", out).group(1)))


rows = []
gflop = {}
for arch in args.archs.split(","):
    measure_ceiling()
    for b in [int(x) for x in args.batches.split(",")]:
        iters = args.iters or max(5, {"tiny": 60, "small": 30, "base": 10}[arch] // max(1, b // 4))
        amg, base, torch_ips, ort_ips = 0.0, 0.0, 0.0, 0.0
        ratios = []
        for _ in range(args.rounds):
            ips, gflop[arch] = amg_bench(args.amg, arch, b, iters)
            amg = max(amg, ips)
            if args.baseline:
                base = max(base, amg_ips(args.baseline, arch, b, iters))
            env = dict(os.environ, PEER_PRECISION=args.precision)
            out = subprocess.run([sys.executable, args.peer, f"vit_{arch}_patch16_224", str(b)], check=True, capture_output=True, text=True, env=env).stdout
            t = float(re.search(r"torch .*?([\d.]+) img/s", out).group(1))
            m = re.search(r"onnxruntime .*?([\d.]+) img/s", out)
            o = float(m.group(1)) if m else float("nan")
            ratios.append(ips / max(t, o) if m else ips / t)
            torch_ips, ort_ips = max(torch_ips, t), max(ort_ips, o)
        rows.append((arch, b, amg, base, torch_ips, ort_ips, ratios))
        extra = f"  baseline {base:.2f}" if args.baseline else ""
        print(f"{arch} b={b}: amg {amg:.2f}{extra}  torch {torch_ips:.2f}  ort {ort_ips:.2f} img/s (best of {args.rounds})", file=sys.stderr, flush=True)

top = max(ceiling.values())
print(f"Ceiling: float32 2048³ products reach {ceiling['amg']:.0f} GFLOP/s with amg's kernels (`amg bench --gemm`) and "
      f"{ceiling['torch']:.0f} with PyTorch's sgemm (tools/bench/peer_sgemm.py), best of {len(args.archs.split(','))} measurements each; "
      f"the last column is amg's GFLOP/s as a fraction of the higher, {top:.0f}.\n")
if args.baseline:
    print("| model | batch | amg img/s | baseline img/s | amg / baseline | PyTorch img/s | ONNX Runtime img/s | amg / faster peer | per round, median (range) | baseline / faster peer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arch, b, a, base, t, o, ratios in rows:
        best = max(t, o)
        print(f"| ViT-{arch}/16 | {b} | {a:.2f} | {base:.2f} | {a / base:.2f}× | {t:.2f} | {o:.2f} | {a / best:.2f}× | {paired(ratios)} | {base / best:.2f}× |")
else:
    print("| model | batch | amg img/s | PyTorch img/s | ONNX Runtime img/s | amg / faster peer | per round, median (range) | amg / ORT | amg GFLOP/s (of ceiling) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch, b, a, _, t, o, ratios in rows:
        g = a * gflop[arch]
        print(f"| ViT-{arch}/16 | {b} | {a:.2f} | {t:.2f} | {o:.2f} | {a / max(t, o):.2f}× | {paired(ratios)} | {a / o:.2f}× | {g:.0f} ({100 * g / top:.0f} %) |")
